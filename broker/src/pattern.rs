//! Channel patterns for live subscriptions to many channels at once.
//!
//! A channel name is read as levels separated by `/`. In a pattern, a level
//! `+` matches exactly one level, and a last level `#` matches any number of
//! levels, none included (`news/#` matches `news`, `news/a` and `news/a/b`).
//! A pattern that starts with a wildcard does not match a channel whose name
//! starts with `$` (the server's own channels). These are MQTT's topic-filter
//! rules, so an MQTT filter is a pattern as it stands.

use crate::command::{BrokerError, CHANNEL_BYTES_MAX};

/// True when the name has a wildcard level and so is a pattern, not a
/// channel.
pub fn is_pattern(name: &str) -> bool {
    name.split('/').any(|level| level == "+" || level == "#")
}

/// Checks a pattern: `#` only as the last level, wildcards alone in their
/// level.
pub fn validate(pattern: &str) -> Result<(), BrokerError> {
    let invalid = |why: &str| {
        Err(BrokerError::InvalidArgument(format!(
            "channel pattern {pattern:?} is not valid: {why}"
        )))
    };
    if pattern.is_empty() {
        return invalid("it is empty");
    }
    if pattern.len() > CHANNEL_BYTES_MAX {
        return Err(BrokerError::TooLarge {
            what: "channel pattern",
            size: pattern.len(),
            limit: CHANNEL_BYTES_MAX,
        });
    }
    let levels: Vec<&str> = pattern.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || index + 1 != levels.len()) {
            return invalid("'#' must be a whole level, and the last one");
        }
        if level.contains('+') && *level != "+" {
            return invalid("'+' must be a whole level");
        }
    }
    Ok(())
}

/// True when `pattern` matches `channel`.
pub fn matches(pattern: &str, channel: &str) -> bool {
    if channel.starts_with('$') && (pattern.starts_with('+') || pattern.starts_with('#')) {
        return false;
    }
    let mut levels = channel.split('/');
    for wanted in pattern.split('/') {
        match wanted {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

/// Whether every channel that pattern `inner` matches is matched by
/// `outer` too (what a role's pattern must say of a requested pattern: a `+`
/// of the role does not cover a requested `#`).
pub fn covers(outer: &str, inner: &str) -> bool {
    let inner_is_reserved = inner.starts_with('$');
    if inner_is_reserved && (outer.starts_with('+') || outer.starts_with('#')) {
        return false;
    }
    let (mut outer, mut inner) = (outer.split('/'), inner.split('/'));
    loop {
        match (outer.next(), inner.next()) {
            // `#` matches the rest, its parent level too.
            (Some("#"), _) => return true,
            // Any depth, which only `#` covers.
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(exact), Some(level)) if exact == level && level != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_patterns() {
        let table = [
            ("team/+", "team/+", true),
            ("team/+", "team/a", true),
            ("team/+", "team/#", false),
            ("team/+", "team/+/x", false),
            ("team/#", "team/+/x", true),
            ("team/#", "team/#", true),
            ("team/#", "team", true),
            ("team/+", "team", false),
            ("team/a", "team/+", false),
            ("+", "#", false),
            ("#", "#", true),
            ("#", "a/+/b", true),
            ("+/+", "a/+", true),
            ("+/+", "$sys/+", false),
            ("#", "$sys/#", false),
            ("$sys/#", "$sys/+", true),
            ("a/+/c", "a/b/+", false),
        ];
        for (outer, inner, expected) in table {
            assert_eq!(covers(outer, inner), expected, "{outer} covers {inner}");
            // What it covers, it matches.
            if expected && !is_pattern(inner) {
                assert!(matches(outer, inner));
            }
        }
    }

    #[test]
    fn matching_follows_mqtt_filters() {
        let table = [
            ("sport/tennis/#", "sport/tennis", true),
            ("sport/tennis/#", "sport/tennis/player1/ranking", true),
            ("sport/#", "sport", true),
            ("#", "anything/at/all", true),
            ("#", "$SYS/x", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor", true),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("dm/+", "dm/alice+bob", true),
        ];
        for (pattern, channel, expected) in table {
            assert_eq!(
                matches(pattern, channel),
                expected,
                "{pattern} vs {channel}"
            );
        }
    }

    #[test]
    fn validation() {
        for good in ["#", "+", "a/#", "a/+/b", "+/+", "a"] {
            assert!(validate(good).is_ok(), "{good}");
        }
        for bad in ["", "a/#/b", "a#", "a+/b", "#/a", "a/b+"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        assert!(is_pattern("a/+/b"));
        assert!(is_pattern("#"));
        assert!(!is_pattern("dm/alice+bob"));
    }
}
