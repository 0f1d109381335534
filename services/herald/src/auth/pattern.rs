//! Topic patterns from token claims: NATS-style `*` (one segment) and `>`
//! (one or more trailing segments), with `{sub}` replaced by the token's
//! subject.
//!
//! `{sub}` is substituted into a *literal* segment and compared as text, never
//! re-parsed: a subject such as `7.>` or `*` cannot widen what a token allows,
//! because no topic segment can contain `.`, `*` or `>`.

use serde::{Deserialize, Serialize};

use crate::topic::{Topic, is_segment_char};

/// The placeholder replaced by the token's `sub` claim.
pub const SUB_PLACEHOLDER: &str = "{sub}";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Any,
    /// `>`: one or more trailing segments.
    Tail,
}

/// A compiled pattern, with `{sub}` already substituted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pattern {
    segments: Vec<Segment>,
}

/// Why a pattern in a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic pattern {0:?}")]
pub struct PatternError(pub String);

impl Pattern {
    /// Compiles `text`, substituting `sub` for every `{sub}`.
    pub fn compile(text: &str, sub: &str) -> Result<Pattern, PatternError> {
        let bad = || PatternError(text.to_owned());
        if text.is_empty() || text.len() > 1024 {
            return Err(bad());
        }
        let parts: Vec<&str> = text.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "*" => Segment::Any,
                ">" if i == parts.len() - 1 => Segment::Tail,
                _ => {
                    let without = part.replace(SUB_PLACEHOLDER, "");
                    if part.is_empty() || !without.chars().all(is_segment_char) {
                        return Err(bad());
                    }
                    Segment::Literal(part.replace(SUB_PLACEHOLDER, sub))
                }
            };
            segments.push(segment);
        }
        Ok(Pattern { segments })
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut topic_segments = topic.segments();
        for segment in &self.segments {
            match segment {
                Segment::Tail => return topic_segments.next().is_some(),
                Segment::Any => {
                    if topic_segments.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if topic_segments.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        topic_segments.next().is_none()
    }
}

/// A set of patterns: a topic is allowed when any of them matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatternSet(Vec<Pattern>);

impl PatternSet {
    /// Compiles every pattern; invalid ones are skipped (they allow nothing)
    /// and returned so the caller can say so.
    pub fn compile<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        sub: &str,
    ) -> (PatternSet, Vec<PatternError>) {
        let mut patterns = Vec::new();
        let mut errors = Vec::new();
        for text in texts {
            match Pattern::compile(text, sub) {
                Ok(p) => patterns.push(p),
                Err(e) => errors.push(e),
            }
        }
        (PatternSet(patterns), errors)
    }

    /// Whether any pattern matches `topic`.
    pub fn allows(&self, topic: &Topic) -> bool {
        self.0.iter().any(|p| p.matches(topic))
    }

    /// Whether the set allows nothing at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::parse(s).expect("test topic is valid")
    }

    fn allows(pattern: &str, sub: &str, topic: &str) -> bool {
        Pattern::compile(pattern, sub)
            .expect("test pattern is valid")
            .matches(&t(topic))
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        assert!(allows("broadcast.*", "", "broadcast.news"));
        assert!(!allows("broadcast.*", "", "broadcast"));
        assert!(!allows("broadcast.*", "", "broadcast.news.eu"));
        assert!(allows("a.*.c", "", "a.b.c"));
    }

    #[test]
    fn tail_matches_one_or_more_trailing_segments() {
        assert!(allows("orders.>", "", "orders.42"));
        assert!(allows("orders.>", "", "orders.42.items.3"));
        assert!(!allows("orders.>", "", "orders"));
        assert!(allows(">", "", "anything.at.all"));
    }

    #[test]
    fn literal_patterns_match_only_themselves() {
        assert!(allows("orders.42", "", "orders.42"));
        assert!(!allows("orders.42", "", "orders.420"));
        assert!(!allows("orders.42", "", "orders.42.x"));
    }

    #[test]
    fn sub_placeholder_is_replaced_by_the_subject() {
        assert!(allows("user.{sub}.>", "7", "user.7.inbox"));
        assert!(!allows("user.{sub}.>", "7", "user.8.inbox"));
        assert!(allows("user-{sub}", "7", "user-7"));
    }

    #[test]
    fn a_subject_with_dots_or_wildcards_cannot_widen_access() {
        for sub in ["7.>", ">", "*", "7.inbox", "", "7 8"] {
            for topic in ["user.7.inbox", "user.8.inbox", "user.x.y", "user"] {
                assert!(
                    !allows("user.{sub}.inbox", sub, topic)
                        || sub == "7" && topic == "user.7.inbox",
                    "sub {sub:?} widened access to {topic}"
                );
            }
        }
        assert!(!allows("user.{sub}", "*", "user.7"));
        assert!(!allows("user.{sub}", ">", "user.7"));
        assert!(!allows("user.{sub}", "7.inbox", "user.7.inbox"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for p in ["", "a..b", "a.>.b", "a*", "a b", "a.*x"] {
            assert!(Pattern::compile(p, "7").is_err(), "{p:?} should be refused");
        }
    }
}
