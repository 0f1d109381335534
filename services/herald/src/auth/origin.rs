//! Which web origins may act for a user: the entries of
//! `HERALD_ALLOWED_ORIGINS` and the rule that applies them.
//!
//! A request without an `Origin` header (a server, a CLI, a mobile app) is
//! not a browser page acting for someone else. With one, the page's origin
//! must be the server's own (the `Origin`'s scheme is the one the server was
//! reached by, and its host and port are the request's `Host`), one listed,
//! or anything under `--dev`. The HTTP layer applies it (`http::origin`),
//! and says which scheme the server was reached by.

use std::fmt;
use std::str::FromStr;

/// One entry of `HERALD_ALLOWED_ORIGINS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    /// `scheme://host[:port]`, compared exactly (case-insensitively).
    Exact(String),
    /// `scheme://*.domain[:port]`: any subdomain of `domain` (not `domain`
    /// itself), on that scheme and port.
    Subdomains {
        scheme: String,
        /// `.domain`, with its leading dot.
        suffix: String,
        /// `:port`, or empty.
        port: String,
    },
}

/// Why an entry of `HERALD_ALLOWED_ORIGINS` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an origin: write scheme://host[:port] (http or https, no path), or https://*.example.com for every subdomain"
)]
pub struct OriginRuleError(pub String);

impl FromStr for OriginRule {
    type Err = OriginRuleError;

    fn from_str(text: &str) -> Result<OriginRule, OriginRuleError> {
        let bad = || OriginRuleError(text.to_owned());
        let lower = text.trim().to_ascii_lowercase();
        let (scheme, authority) = lower.split_once("://").ok_or_else(bad)?;
        if !matches!(scheme, "http" | "https") {
            return Err(bad());
        }
        let (host, port) = split_port(authority).ok_or_else(bad)?;
        let valid_host = |h: &str| {
            !h.is_empty()
                && h.split('.').all(|label| {
                    !label.is_empty()
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        };
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        match host.strip_prefix("*.") {
            Some(domain) if valid_host(domain) => Ok(OriginRule::Subdomains {
                scheme: scheme.to_owned(),
                suffix: format!(".{domain}"),
                port,
            }),
            Some(_) => Err(bad()),
            None if valid_host(host) || is_ipv6_literal(host) => {
                Ok(OriginRule::Exact(format!("{scheme}://{host}{port}")))
            }
            None => Err(bad()),
        }
    }
}

impl fmt::Display for OriginRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginRule::Exact(origin) => f.write_str(origin),
            OriginRule::Subdomains {
                scheme,
                suffix,
                port,
            } => write!(f, "{scheme}://*{suffix}{port}"),
        }
    }
}

fn is_ipv6_literal(host: &str) -> bool {
    host.starts_with('[') && host.ends_with(']') && host.len() > 2
}

/// `host[:port]` into its parts; `None` when there is a path, a user or an
/// empty or non-numeric port.
fn split_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.contains(['/', '?', '#', '@']) || authority.is_empty() {
        return None;
    }
    // An IPv6 literal keeps its colons inside brackets.
    let after_host = authority.rfind(']').map_or(0, |i| i + 1);
    match authority[after_host..].rfind(':') {
        Some(i) => {
            let (host, port) = authority.split_at(after_host + i);
            let port = &port[1..];
            (!port.is_empty() && port.len() <= 5 && port.chars().all(|c| c.is_ascii_digit()))
                .then_some((host, Some(port)))
        }
        None => Some((authority, None)),
    }
}

/// The origins this node serves besides its own.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// `--dev`: any origin.
    pub any: bool,
    pub rules: Vec<OriginRule>,
}

impl OriginPolicy {
    /// Whether a page on `origin` may use the subscriber endpoints of a
    /// server it reached as `scheme://host` (`http` or `https`, and the
    /// request's `Host` header).
    pub fn allows(&self, origin: &str, host: Option<&str>, scheme: &str) -> bool {
        if self.any {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        let Some((origin_scheme, authority)) = origin.split_once("://") else {
            // `null` (sandboxed frames, files) and anything malformed.
            return false;
        };
        // Same origin is the same scheme, host and port: `http://H` (a page
        // any network hop could have written) or `chrome-extension://H` is
        // not the page of a server reached as `https://H`.
        if origin_scheme.eq_ignore_ascii_case(scheme)
            && host.is_some_and(|host| host.eq_ignore_ascii_case(authority))
        {
            return true;
        }
        let scheme = origin_scheme;
        self.rules.iter().any(|rule| match rule {
            OriginRule::Exact(allowed) => *allowed == origin,
            OriginRule::Subdomains {
                scheme: rule_scheme,
                suffix,
                port,
            } => {
                let Some((host, origin_port)) = split_port(authority) else {
                    return false;
                };
                let origin_port = origin_port.map(|p| format!(":{p}")).unwrap_or_default();
                scheme == rule_scheme
                    && origin_port == *port
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> OriginPolicy {
        OriginPolicy {
            any: false,
            rules: rules
                .iter()
                .map(|r| r.parse().expect("valid rule"))
                .collect(),
        }
    }

    #[test]
    fn rules_parse_or_say_why_not() {
        assert_eq!(
            "https://App.Example.com".parse(),
            Ok(OriginRule::Exact("https://app.example.com".into()))
        );
        assert_eq!(
            "http://localhost:5173".parse(),
            Ok(OriginRule::Exact("http://localhost:5173".into()))
        );
        assert!(matches!(
            "https://*.example.com".parse::<OriginRule>(),
            Ok(OriginRule::Subdomains { .. })
        ));
        for bad in [
            "",
            "example.com",
            "ftp://example.com",
            "https://example.com/",
            "https://example.com/app",
            "https://*.",
            "https://a.*.example.com",
            "https://example.com:",
            "https://example.com:80a",
            "https://user@example.com",
            "*",
        ] {
            assert!(bad.parse::<OriginRule>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn listed_origins_and_the_servers_own_are_allowed() {
        let p = policy(&["https://app.example.com", "http://localhost:5173"]);
        let herald = Some("herald.example.com");
        assert!(p.allows("https://app.example.com", herald, "https"));
        assert!(p.allows("HTTPS://APP.example.com", None, "http"));
        assert!(p.allows("http://localhost:5173", Some("127.0.0.1:8080"), "http"));
        assert!(!p.allows("http://localhost:5174", Some("127.0.0.1:8080"), "http"));
        assert!(!p.allows("http://app.example.com", herald, "https"));
        assert!(!p.allows("https://evil.example", herald, "https"));
        assert!(!p.allows("null", herald, "https"));
        // Same origin: the page was served by this scheme, host and port.
        assert!(p.allows("http://127.0.0.1:8080", Some("127.0.0.1:8080"), "http"));
        assert!(!p.allows("http://127.0.0.1:8081", Some("127.0.0.1:8080"), "http"));
        assert!(p.allows("https://herald.example.com", herald, "https"));
        assert!(!p.allows("http://herald.example.com", herald, "https"));
        assert!(!p.allows("https://herald.example.com", herald, "http"));
        assert!(!p.allows("chrome-extension://herald.example.com", herald, "https"));
        assert!(!p.allows("ws://herald.example.com", herald, "http"));
    }

    #[test]
    fn a_wildcard_covers_subdomains_on_its_scheme_and_port_only() {
        let p = policy(&["https://*.example.com"]);
        let allows = |origin: &str| p.allows(origin, None, "https");
        assert!(allows("https://app.example.com"));
        assert!(allows("https://a.b.example.com"));
        assert!(!allows("https://example.com"));
        assert!(!allows("https://evilexample.com"));
        assert!(!allows("http://app.example.com"));
        assert!(!allows("https://app.example.com:8443"));
        assert!(!allows("https://app.example.com.evil.net"));
    }

    #[test]
    fn dev_allows_any_origin() {
        let p = OriginPolicy {
            any: true,
            rules: Vec::new(),
        };
        assert!(p.allows("https://anything.example", Some("127.0.0.1:8080"), "http"));
    }
}
