//! [`Utf8Bytes`]: text held in [`Bytes`], so that a text field decoded from a received buffer
//! shares that buffer instead of being copied into a new `String`.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;

/// UTF-8 text in [`Bytes`]. A channel name decoded from a frame is a slice of the frame's buffer
/// (no allocation, no copy); one made from a `String` takes over its allocation.
///
/// It reads as a `str` (`Deref`, `as_str`); equality, order and hashing are those of the text, so
/// a map keyed by `Utf8Bytes` can be searched with a `&str`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Utf8Bytes {
    /// INVARIANT: valid UTF-8 (checked by every constructor).
    bytes: Bytes,
}

impl Utf8Bytes {
    /// Text that lives for the whole program, without allocating.
    pub const fn from_static(text: &'static str) -> Utf8Bytes {
        Utf8Bytes {
            bytes: Bytes::from_static(text.as_bytes()),
        }
    }

    /// `bytes` that the caller checked to be UTF-8 (a decoder's field).
    pub(crate) fn from_checked(bytes: Bytes) -> Utf8Bytes {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Utf8Bytes { bytes }
    }

    /// `bytes` if they are UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Utf8Bytes, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Utf8Bytes { bytes })
    }

    /// The text. Checks the UTF-8 again (this crate has no `unsafe`): a few nanoseconds for a
    /// channel name, against an allocation and a free for a `String`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes).expect("Utf8Bytes holds UTF-8 (checked when made)")
    }

    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

impl Deref for Utf8Bytes {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Utf8Bytes {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// Hashes as the `str` does, as `Borrow<str>` requires.
impl Hash for Utf8Bytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl From<String> for Utf8Bytes {
    fn from(text: String) -> Utf8Bytes {
        Utf8Bytes {
            bytes: Bytes::from(text.into_bytes()),
        }
    }
}

impl From<&str> for Utf8Bytes {
    fn from(text: &str) -> Utf8Bytes {
        Utf8Bytes {
            bytes: Bytes::copy_from_slice(text.as_bytes()),
        }
    }
}

impl From<Utf8Bytes> for String {
    fn from(text: Utf8Bytes) -> String {
        text.as_str().to_owned()
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<String> for Utf8Bytes {
    fn eq(&self, other: &String) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn reads_compares_and_hashes_as_its_text() {
        let shared = Bytes::from_static(b"xxgeneral/roomxx");
        let text = Utf8Bytes::from_utf8(shared.slice(2..14)).unwrap();
        assert_eq!(text.as_str(), "general/room");
        assert_eq!(text, "general/room");
        assert_eq!(text, Utf8Bytes::from("general/room".to_string()));
        assert_eq!(format!("{text} {text:?}"), "general/room \"general/room\"");
        let mut map: HashMap<Utf8Bytes, u32> = HashMap::new();
        map.insert(text, 1);
        assert_eq!(map.get("general/room"), Some(&1));
    }

    #[test]
    fn refuses_bytes_that_are_not_utf8() {
        assert!(Utf8Bytes::from_utf8(Bytes::from_static(b"\xff\xfe")).is_err());
    }
}
