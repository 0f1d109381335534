//! Which topics reach a device: a topic or a NATS-style pattern (`*` one
//! segment, `>` one or more trailing ones, `{sub}` the registering
//! subject), within what the registering token may subscribe to.
//!
//! A filter is stored with its *prefix*: its literal segments before the
//! first wildcard (`user.7` for `user.7.>`, the whole topic for a plain
//! topic, empty for `*.alerts`). The devices a committed topic may reach
//! are then found by the topic's own prefixes (`store::outbox`), and the
//! pattern decides.

use serde::Deserialize;

use crate::auth::{Pattern, PatternSet, Principal};
use crate::topic::Topic;

/// Most topics or patterns one device may follow.
pub const MAX_DEVICE_TOPICS: usize = 64;

/// A device's topic filter, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The filter with `{sub}` replaced.
    pub text: String,
    /// Its literal segments before the first wildcard.
    pub prefix: String,
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("{0:?} is neither a topic nor a pattern")]
    Invalid(String),
    #[error("the token may not subscribe to all of {}", .0.join(", "))]
    Forbidden(Vec<String>),
}

/// One segment, as [`Pattern`]'s serialized form spells it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
enum Segment {
    Literal(String),
    Any,
    Tail,
}

#[derive(Debug, Deserialize)]
struct Segments {
    segments: Vec<Segment>,
}

/// The segments of a compiled pattern (its public serialized form: the
/// auth module keeps them private, and tickets store them this way too).
fn segments(pattern: &Pattern) -> Option<Vec<Segment>> {
    let value = serde_json::to_value(pattern).ok()?;
    serde_json::from_value::<Segments>(value)
        .ok()
        .map(|s| s.segments)
}

fn grant_segments(grants: &PatternSet) -> Vec<Vec<Segment>> {
    serde_json::to_value(grants)
        .ok()
        .and_then(|v| serde_json::from_value::<Vec<Segments>>(v).ok())
        .map(|all| all.into_iter().map(|s| s.segments).collect())
        .unwrap_or_default()
}

/// Whether grant `g` allows every topic filter `f` matches.
fn covers(g: &[Segment], f: &[Segment]) -> bool {
    match (g.first(), f.first()) {
        (None, None) => true,
        // `>` takes one or more segments: anything left of the filter.
        (Some(Segment::Tail), Some(_)) => true,
        (Some(Segment::Any), Some(Segment::Literal(_) | Segment::Any)) => covers(&g[1..], &f[1..]),
        (Some(Segment::Literal(a)), Some(Segment::Literal(b))) if a == b => {
            covers(&g[1..], &f[1..])
        }
        _ => false,
    }
}

impl Filter {
    /// Parses `text` for `principal`, and checks that its token may
    /// subscribe to every topic the filter matches.
    pub fn parse(text: &str, principal: &Principal) -> Result<Filter, FilterError> {
        let invalid = || FilterError::Invalid(text.to_owned());
        let pattern = Pattern::compile(text, &principal.sub).map_err(|_| invalid())?;
        let substituted = text.replace(crate::auth::pattern::SUB_PLACEHOLDER, &principal.sub);
        let segs = segments(&pattern).ok_or_else(invalid)?;
        let literal: Vec<&str> = segs
            .iter()
            .map_while(|s| match s {
                Segment::Literal(l) => Some(l.as_str()),
                _ => None,
            })
            .collect();
        let prefix = literal.join(".");
        let allowed = if literal.len() == segs.len() {
            // A plain topic: the token's own check.
            let topic = Topic::parse(&substituted).map_err(|_| invalid())?;
            principal.may_subscribe(&topic)
        } else {
            grant_segments(&principal.subscribe)
                .iter()
                .any(|g| covers(g, &segs))
        };
        if !allowed {
            return Err(FilterError::Forbidden(vec![substituted]));
        }
        Ok(Filter {
            text: substituted,
            prefix,
        })
    }

    /// Whether `topic` reaches a device with this filter (`text` as stored).
    pub fn matches(text: &str, topic: &Topic) -> bool {
        // `{sub}` was replaced at registration; the text is a plain pattern.
        Pattern::compile(text, "").is_ok_and(|p| p.matches(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(sub: &str, grants: &[&str]) -> Principal {
        let (subscribe, _) = PatternSet::compile(grants.iter().copied(), sub);
        Principal {
            sub: sub.into(),
            exp: u64::MAX,
            iat: None,
            jti: None,
            subscribe: subscribe.into(),
            publish: Default::default(),
            admin: false,
        }
    }

    #[test]
    fn the_serialized_form_of_patterns_is_what_this_module_reads() {
        let p = Pattern::compile("a.*.>", "").expect("a valid pattern");
        assert_eq!(
            segments(&p),
            Some(vec![
                Segment::Literal("a".into()),
                Segment::Any,
                Segment::Tail
            ])
        );
        let (set, _) = PatternSet::compile(["x", "y.>"], "");
        assert_eq!(grant_segments(&set).len(), 2);
    }

    #[test]
    fn filters_within_the_grants_are_taken_with_their_prefix() {
        let alice = principal("42", &["user.{sub}.>", "broadcast.*"]);
        let f = Filter::parse("user.{sub}.>", &alice).expect("within user.42.>");
        assert_eq!(
            (f.text.as_str(), f.prefix.as_str()),
            ("user.42.>", "user.42")
        );
        let f = Filter::parse("user.42.inbox", &alice).expect("a topic it may read");
        assert_eq!(f.prefix, "user.42.inbox");
        let f = Filter::parse("broadcast.*", &alice).expect("the same pattern");
        assert_eq!(f.prefix, "broadcast");
        assert!(Filter::parse("user.42.*.x", &alice).is_ok());
    }

    #[test]
    fn filters_wider_than_the_grants_or_malformed_are_refused() {
        let alice = principal("42", &["user.{sub}.>", "broadcast.*"]);
        for wide in [
            "user.>",
            "user.*.inbox",
            "broadcast.>",
            "*",
            ">",
            "user.43.x",
        ] {
            assert!(
                matches!(Filter::parse(wide, &alice), Err(FilterError::Forbidden(_))),
                "{wide} is wider than the grants"
            );
        }
        for bad in ["", "a..b", "a.>.b", "a b"] {
            assert!(
                matches!(Filter::parse(bad, &alice), Err(FilterError::Invalid(_))),
                "{bad:?} is not a filter"
            );
        }
    }

    #[test]
    fn a_stored_filter_matches_topics() {
        let topic = Topic::parse("user.42.inbox").expect("a valid topic");
        assert!(Filter::matches("user.42.>", &topic));
        assert!(Filter::matches("user.*.inbox", &topic));
        assert!(!Filter::matches("user.42", &topic));
    }
}
