//! Topic names and cursors: the two pieces of text every transport parses.
//!
//! Both are newtypes whose constructors reject bad input, so code past the
//! edge never re-checks them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest topic, in bytes.
pub const MAX_TOPIC_BYTES: usize = 255;

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("a topic must not be empty")]
    Empty,
    #[error("a topic is at most {MAX_TOPIC_BYTES} bytes, this one is {0}")]
    TooLong(usize),
    #[error("a topic is dot-separated segments of [A-Za-z0-9_-]; {0:?} has an empty segment")]
    EmptySegment(String),
    #[error("a topic is dot-separated segments of [A-Za-z0-9_-]; {0:?} has the character {1:?}")]
    BadChar(String, char),
}

/// A validated topic name: 1 to 255 bytes of dot-separated `[A-Za-z0-9_-]+`
/// segments. Cheap to clone (shared text).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Parses a topic name.
    pub fn parse(text: &str) -> Result<Topic, TopicError> {
        if text.is_empty() {
            return Err(TopicError::Empty);
        }
        if text.len() > MAX_TOPIC_BYTES {
            return Err(TopicError::TooLong(text.len()));
        }
        for segment in text.split('.') {
            if segment.is_empty() {
                return Err(TopicError::EmptySegment(shorten(text)));
            }
            if let Some(c) = segment.chars().find(|c| !is_segment_char(*c)) {
                return Err(TopicError::BadChar(shorten(text), c));
            }
        }
        Ok(Topic(Arc::from(text)))
    }

    /// The topic's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic's dot-separated segments.
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }
}

/// Whether `c` may appear in a topic segment.
pub fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Error messages quote bad input; keep them short.
fn shorten(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::parse(s)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Topic::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("a cursor is topic:seq pairs joined by commas; {0:?} has no ':'")]
    MissingColon(String),
    #[error("cursor entry {0:?}: {1}")]
    Topic(String, TopicError),
    #[error("cursor entry {0:?}: the seq must be a whole number from 0 up")]
    Seq(String),
    #[error("cursor names topic {0:?} twice")]
    Repeated(String),
    #[error("a cursor is at most {MAX_CURSOR_BYTES} bytes")]
    TooLong,
}

/// Longest cursor text accepted, in bytes (256 topics of 255 bytes with a seq each).
pub const MAX_CURSOR_BYTES: usize = 72 * 1024;

/// How far a client has read, per topic: "I have every event up to and
/// including that seq". Text form `orders.42:17,user.7:3`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<Topic, u64>);

impl Cursor {
    /// An empty cursor.
    pub fn new() -> Cursor {
        Cursor::default()
    }

    /// Parses cursor text. Empty text is an empty cursor.
    pub fn parse(text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR_BYTES {
            return Err(CursorError::TooLong);
        }
        let mut map = BTreeMap::new();
        let text = text.trim();
        if text.is_empty() {
            return Ok(Cursor(map));
        }
        for entry in text.split(',') {
            let entry = entry.trim();
            let (topic, seq) = entry
                .rsplit_once(':')
                .ok_or_else(|| CursorError::MissingColon(shorten(entry)))?;
            let topic = Topic::parse(topic).map_err(|e| CursorError::Topic(shorten(entry), e))?;
            if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CursorError::Seq(shorten(entry)));
            }
            let seq: u64 = seq.parse().map_err(|_| CursorError::Seq(shorten(entry)))?;
            if seq > i64::MAX as u64 {
                return Err(CursorError::Seq(shorten(entry)));
            }
            if map.insert(topic.clone(), seq).is_some() {
                return Err(CursorError::Repeated(topic.to_string()));
            }
        }
        Ok(Cursor(map))
    }

    /// The position for `topic`, if the cursor names it.
    pub fn get(&self, topic: &Topic) -> Option<u64> {
        self.0.get(topic).copied()
    }

    /// Sets the position for `topic`.
    pub fn set(&mut self, topic: Topic, seq: u64) {
        self.0.insert(topic, seq);
    }

    /// Forgets `topic`.
    pub fn remove(&mut self, topic: &Topic) {
        self.0.remove(topic);
    }

    /// Whether the cursor names no topic.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `(topic, seq)` pairs in topic order.
    pub fn iter(&self) -> impl Iterator<Item = (&Topic, u64)> {
        self.0.iter().map(|(t, s)| (t, *s))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (topic, seq)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{topic}:{seq}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({self})")
    }
}

impl FromStr for Cursor {
    type Err = CursorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cursor::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_topics_parse() {
        for t in [
            "a",
            "orders.42",
            "user.7.inbox",
            "A_b-c.D",
            &"x".repeat(255),
        ] {
            assert_eq!(Topic::parse(t).map(|t| t.to_string()), Ok(t.to_string()));
        }
    }

    #[test]
    fn invalid_topics_are_refused() {
        let long = "x".repeat(256);
        for t in [
            "", "a..b", ".a", "a.", "a b", "a:b", "a,b", "a*", "a.>", "é", &long,
        ] {
            assert!(Topic::parse(t).is_err(), "{t:?} should be refused");
        }
    }

    #[test]
    fn cursor_round_trips_in_topic_order() {
        let c = Cursor::parse("user.7:3,orders.42:17").expect("valid cursor");
        assert_eq!(c.to_string(), "orders.42:17,user.7:3");
        assert_eq!(c.get(&Topic::parse("user.7").expect("valid")), Some(3));
        assert!(Cursor::parse("").expect("empty is valid").is_empty());
    }

    #[test]
    fn malformed_cursors_are_refused() {
        for c in [
            "orders",
            "orders:",
            "orders:-1",
            "orders:1x",
            "a..b:1",
            "a:1,a:2",
            "a:1,,b:2",
            "a:99999999999999999999",
            "a:+1",
        ] {
            assert!(Cursor::parse(c).is_err(), "{c:?} should be refused");
        }
    }
}
