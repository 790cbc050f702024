//! Topic names, topic filters and MQTT matching, through the public API.

mod mqtt_common;

use mqtt_common::Rng;
use starling_protocol::mqtt::{
    topic_matches, validate_topic_filter, validate_topic_name, SharedSubscription, TopicError,
};

#[test]
fn topic_matches_follows_the_specification() {
    let table = [
        // Section 4.7.1.2: `#` matches the parent level and any number of levels below.
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking",
            true,
        ),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon",
            true,
        ),
        ("sport/#", "sport", true),
        ("sport/#", "sports", false),
        ("#", "sport/tennis", true),
        ("#", "/", true),
        // Section 4.7.1.3: `+` matches exactly one level, possibly empty.
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+/+/+", "a/b", false),
        ("a/+/c", "a//c", true),
        ("+/tennis/#", "sport/tennis/player1", true),
        // Section 4.7.2: a filter starting with a wildcard does not match a `$` topic.
        ("#", "$SYS/x", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("+", "$SYS", false),
        ("$SYS/#", "$SYS/x", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("a/$SYS/+", "a/$SYS/b", true),
        // Exact matches are case and separator sensitive.
        ("sport/tennis", "sport/tennis", true),
        ("sport/tennis", "sport/Tennis", false),
        ("sport/tennis", "sport/tennis/", false),
        ("/finance", "finance", false),
        // A shared subscription's filter is matched only after its prefix is removed.
        ("$share/group/sport/#", "sport/x", false),
    ];
    for (filter, name, expected) in table {
        assert_eq!(validate_topic_filter(filter), Ok(()), "{filter}");
        assert_eq!(validate_topic_name(name), Ok(()), "{name}");
        assert_eq!(
            topic_matches(filter, name),
            expected,
            "{filter:?} against {name:?}"
        );
    }
    let shared = SharedSubscription::parse("$share/group/sport/#").expect("shared");
    assert_eq!(shared.group, "group");
    assert!(topic_matches(shared.filter, "sport/x"));
}

#[test]
fn matching_properties_hold_for_random_names() {
    let mut rng = Rng::new(0x746F_7069_6373);
    for _ in 0..2000 {
        let name = rng.topic();
        let levels: Vec<&str> = name.split('/').collect();
        let dollar = name.starts_with('$');
        assert!(topic_matches(&name, &name), "{name:?}");
        assert_eq!(topic_matches("#", &name), !dollar, "{name:?}");
        assert!(topic_matches(&format!("{name}/#"), &name), "{name:?}");
        // Replacing any level with `+` still matches, except the first of a `$` topic.
        let index = rng.below(levels.len() as u64) as usize;
        let mut filter_levels = levels.clone();
        filter_levels[index] = "+";
        let filter = filter_levels.join("/");
        assert_eq!(validate_topic_filter(&filter), Ok(()), "{filter:?}");
        assert_eq!(
            topic_matches(&filter, &name),
            !(dollar && index == 0),
            "{filter:?} against {name:?}"
        );
        // Cutting the filter after that level and adding `#` matches too.
        let prefix = levels[..index].join("/");
        let hash_filter = if index == 0 {
            "#".to_owned()
        } else {
            format!("{prefix}/#")
        };
        assert_eq!(
            topic_matches(&hash_filter, &name),
            !(dollar && index == 0),
            "{hash_filter:?} against {name:?}"
        );
        // One more level never matches without a wildcard.
        assert!(!topic_matches(&format!("{name}/x"), &name));
    }
}

#[test]
fn validation_errors_say_what_is_wrong() {
    assert_eq!(
        validate_topic_name("a/#"),
        Err(TopicError::WildcardInTopicName)
    );
    assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    assert_eq!(
        validate_topic_filter("a/b#"),
        Err(TopicError::MultiLevelWildcardMisplaced)
    );
    assert_eq!(
        validate_topic_filter("a/+b"),
        Err(TopicError::SingleLevelWildcardNotAlone)
    );
    assert_eq!(
        validate_topic_filter("$share//a"),
        Err(TopicError::ShareNameEmpty)
    );
    assert_eq!(
        validate_topic_filter("$share/a+/b"),
        Err(TopicError::ShareNameWildcard)
    );
    assert_eq!(
        validate_topic_filter("$share/group"),
        Err(TopicError::SharedFilterMissing)
    );
    assert_eq!(validate_topic_filter("$share/group/+"), Ok(()));
}
