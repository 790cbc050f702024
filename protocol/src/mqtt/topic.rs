//! Topic names, topic filters and how they match (section 4.7 of v5, 4.7 of v3.1.1).

use crate::mqtt::error::TopicError;
use crate::mqtt::wire::FIELD_BYTES_MAX;

/// The prefix of a shared subscription's filter (section 4.8.2 of v5).
const SHARE_PREFIX: &str = "$share/";

/// Checks a topic name, the topic of a PUBLISH or a will: at least one character, at most 65535
/// bytes, no U+0000 and no wildcard.
///
/// (A v5 PUBLISH may have an empty topic name when it carries a Topic Alias; the decoder allows
/// that case before calling this.)
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_string(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInTopicName);
    }
    Ok(())
}

/// Checks a topic filter, the subject of a SUBSCRIBE or UNSUBSCRIBE: at least one character, at
/// most 65535 bytes, no U+0000; `#` only alone in the last level; `+` only alone in its level.
///
/// A filter starting with `$share/` is a shared subscription, `$share/{share name}/{filter}`: the
/// share name is not empty and holds no wildcard, and the filter after it is a valid non-empty
/// filter. The same rules apply to both protocol versions, so a v3.1.1 client can use shared
/// subscriptions too.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_string(filter)?;
    if let Some(rest) = filter.strip_prefix(SHARE_PREFIX) {
        let Some((share_name, shared_filter)) = rest.split_once('/') else {
            return Err(if rest.is_empty() {
                TopicError::ShareNameEmpty
            } else {
                TopicError::SharedFilterMissing
            });
        };
        if share_name.is_empty() {
            return Err(TopicError::ShareNameEmpty);
        }
        if share_name.contains(['+', '#']) {
            return Err(TopicError::ShareNameWildcard);
        }
        if shared_filter.is_empty() {
            return Err(TopicError::SharedFilterMissing);
        }
        return check_filter_levels(shared_filter);
    }
    check_filter_levels(filter)
}

/// The level rules of a filter: `#` alone and last, `+` alone.
fn check_filter_levels(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MultiLevelWildcardMisplaced);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelWildcardNotAlone);
        }
    }
    Ok(())
}

/// The rules every MQTT string follows.
fn check_string(text: &str) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > FIELD_BYTES_MAX {
        return Err(TopicError::TooLong {
            length_bytes: text.len(),
        });
    }
    if text.as_bytes().contains(&0) {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Whether the topic filter `filter` matches the topic name `name`.
///
/// `+` matches exactly one level (which may be empty), `#` matches the rest of the name including
/// its parent level (`sport/#` matches `sport`), and a filter starting with a wildcard does not
/// match a name starting with `$` (so `#` does not see `$SYS/...`). Both arguments are assumed
/// valid; a shared subscription's filter is matched after [`SharedSubscription::parse`] removed
/// its `$share/{share name}/` prefix.
pub fn topic_matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    loop {
        match (filter_levels.next(), name_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(filter_level), Some(name_level)) => {
                if filter_level != name_level {
                    return false;
                }
            }
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
        }
    }
}

/// The parts of a shared subscription's filter, `$share/{share name}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedSubscription<'a> {
    /// The share name: the subscribers sharing it receive each message once between them.
    pub group: &'a str,
    /// The topic filter the group subscribes to.
    pub filter: &'a str,
}

impl<'a> SharedSubscription<'a> {
    /// Splits `$share/{group}/{filter}`; `None` for a filter that is not a shared subscription.
    /// It does not validate the parts: call [`validate_topic_filter`] first.
    pub fn parse(filter: &'a str) -> Option<SharedSubscription<'a>> {
        let (group, filter) = filter.strip_prefix(SHARE_PREFIX)?.split_once('/')?;
        Some(SharedSubscription { group, filter })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_refuse_wildcards_and_emptiness() {
        assert_eq!(validate_topic_name("sport/tennis"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("$SYS/uptime"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_name("sport/+"),
            Err(TopicError::WildcardInTopicName)
        );
        assert_eq!(
            validate_topic_name("sport#"),
            Err(TopicError::WildcardInTopicName)
        );
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(
            validate_topic_name(&"a".repeat(65_536)),
            Err(TopicError::TooLong {
                length_bytes: 65_536
            })
        );
    }

    #[test]
    fn topic_filters_follow_the_wildcard_rules() {
        for valid in [
            "#",
            "+",
            "sport/#",
            "sport/+/player1",
            "+/+",
            "/+",
            "sport/tennis/#",
            "$share/group/sport/#",
            "$share/g/+",
            "$SYS/#",
            "sport//x",
        ] {
            assert_eq!(validate_topic_filter(valid), Ok(()), "{valid}");
        }
        let invalid = [
            ("", TopicError::Empty),
            ("sport/tennis#", TopicError::MultiLevelWildcardMisplaced),
            ("sport/#/ranking", TopicError::MultiLevelWildcardMisplaced),
            ("##", TopicError::MultiLevelWildcardMisplaced),
            ("sport+", TopicError::SingleLevelWildcardNotAlone),
            ("sport/+x/a", TopicError::SingleLevelWildcardNotAlone),
            ("$share/", TopicError::ShareNameEmpty),
            ("$share//a", TopicError::ShareNameEmpty),
            ("$share/group", TopicError::SharedFilterMissing),
            ("$share/group/", TopicError::SharedFilterMissing),
            ("$share/gr+/a", TopicError::ShareNameWildcard),
            ("$share/#/a", TopicError::ShareNameWildcard),
            ("$share/g/a/#/b", TopicError::MultiLevelWildcardMisplaced),
            ("a\0", TopicError::NullCharacter),
        ];
        for (filter, error) in invalid {
            assert_eq!(validate_topic_filter(filter), Err(error), "{filter:?}");
        }
    }

    #[test]
    fn shared_subscriptions_split_into_group_and_filter() {
        assert_eq!(
            SharedSubscription::parse("$share/consumers/sport/#"),
            Some(SharedSubscription {
                group: "consumers",
                filter: "sport/#"
            })
        );
        assert_eq!(SharedSubscription::parse("sport/#"), None);
        assert_eq!(SharedSubscription::parse("$share/group"), None);
        assert_eq!(SharedSubscription::parse("$SHARE/group/a"), None);
    }
}
