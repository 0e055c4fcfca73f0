//! [`Utf8Bytes`]: text that is a shared, reference-counted view, like [`Bytes`] for binary.
//!
//! An inbound text message is validated once, on the reader thread, and handed to the
//! application as a view of the read buffer; keeping it, cloning it or sending it on costs a
//! reference count, never a copy. Outbound text built from a `String` is moved in, not copied.
//!
//! ```
//! use syncws::Utf8Bytes;
//!
//! let t = Utf8Bytes::from("hello");
//! assert_eq!(t, "hello");
//! assert_eq!(t.len(), 5);
//! let upper = t.to_uppercase(); // every `str` method, through `Deref`
//! assert_eq!(upper, "HELLO");
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// UTF-8 text in a [`Bytes`] buffer: cheap to clone and to keep, dereferences to `str`.
///
/// It can only be built from text that is known to be valid (a `String`, a `&str`, or
/// [`Bytes`] checked by [`TryFrom`]), so reading it as `str` never checks again.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Text from a static string, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Utf8Bytes(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps bytes the caller has validated as UTF-8 (the frame decoder does, for every text
    /// message).
    #[inline]
    pub(crate) fn from_validated(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Utf8Bytes(bytes)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor takes valid UTF-8 (a `str`, a `String`, bytes checked by
        // `TryFrom`, or text the decoder validated), and the bytes are immutable.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes (a reference count, not a copy).
    pub fn as_bytes_shared(&self) -> &Bytes {
        &self.0
    }

    /// The underlying bytes, giving up the UTF-8 guarantee.
    pub fn into_bytes(self) -> Bytes {
        self.0
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

impl AsRef<[u8]> for Utf8Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<str> for Utf8Bytes {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<String> for Utf8Bytes {
    /// Moves the string's buffer in. An exact-capacity string costs nothing; one with spare
    /// capacity costs one small allocation (the shared header of [`Bytes`]).
    fn from(s: String) -> Self {
        Utf8Bytes(Bytes::from(s))
    }
}

impl From<&str> for Utf8Bytes {
    /// Copies the text.
    fn from(s: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<&String> for Utf8Bytes {
    /// Copies the text.
    fn from(s: &String) -> Self {
        Utf8Bytes::from(s.as_str())
    }
}

impl From<Box<str>> for Utf8Bytes {
    fn from(s: Box<str>) -> Self {
        Utf8Bytes(Bytes::from(s.into_boxed_bytes()))
    }
}

impl From<Utf8Bytes> for Bytes {
    fn from(t: Utf8Bytes) -> Bytes {
        t.0
    }
}

impl From<Utf8Bytes> for String {
    /// Copies the text into a `String`.
    fn from(t: Utf8Bytes) -> String {
        t.as_str().to_owned()
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = std::str::Utf8Error;

    /// Checks the bytes once; no copy.
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Utf8Bytes(bytes))
    }
}

impl TryFrom<Vec<u8>> for Utf8Bytes {
    type Error = std::str::Utf8Error;

    fn try_from(v: Vec<u8>) -> Result<Self, Self::Error> {
        Utf8Bytes::try_from(Bytes::from(v))
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
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Utf8Bytes> for str {
    fn eq(&self, other: &Utf8Bytes) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Utf8Bytes> for &str {
    fn eq(&self, other: &Utf8Bytes) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Utf8Bytes> for String {
    fn eq(&self, other: &Utf8Bytes) -> bool {
        self.as_str() == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_bytes_and_compares_as_text() {
        assert!(Utf8Bytes::try_from(Bytes::from_static(b"\xff")).is_err());
        let t = Utf8Bytes::try_from(Bytes::from_static("é".as_bytes())).unwrap();
        assert_eq!(t, "é");
        assert_eq!(String::from(t.clone()), "é");
        assert_eq!(format!("{t} {t:?}"), "é \"é\"");
        assert_eq!(
            Utf8Bytes::from(String::from("a")),
            Utf8Bytes::from_static("a")
        );
    }
}
