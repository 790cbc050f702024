//! [`Utf8Bytes`]: text held in [`Bytes`], so that a text field decoded from a received buffer
//! shares that buffer instead of being copied into a new `String`.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

/// UTF-8 text in [`Bytes`]. A channel name decoded from a frame is a slice of the frame's buffer
/// (no allocation, no copy); one made from a `String` takes over its allocation.
///
/// It reads as a `str` (`Deref`, `as_str`) at no cost: the UTF-8 is checked once, when it is
/// made (`bytestring::ByteString` holds it). Equality, order and hashing are those of the text,
/// so a map keyed by `Utf8Bytes` can be searched with a `&str`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Utf8Bytes {
    text: ByteString,
}

impl Utf8Bytes {
    /// Text that lives for the whole program, without allocating.
    pub const fn from_static(text: &'static str) -> Utf8Bytes {
        Utf8Bytes {
            text: ByteString::from_static(text),
        }
    }

    /// `bytes` if they are UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Utf8Bytes, std::str::Utf8Error> {
        Ok(Utf8Bytes {
            text: ByteString::try_from(bytes)?,
        })
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    /// The underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.text.into_bytes()
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
            text: ByteString::from(text),
        }
    }
}

impl From<&str> for Utf8Bytes {
    fn from(text: &str) -> Utf8Bytes {
        Utf8Bytes {
            text: ByteString::from(text),
        }
    }
}

impl From<Utf8Bytes> for String {
    fn from(text: Utf8Bytes) -> String {
        String::from(text.text)
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Utf8Bytes {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
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
        let text = Utf8Bytes::from_utf8(Bytes::from_static("é/ß".as_bytes())).unwrap();
        assert_eq!(text, "é/ß");
    }
}
