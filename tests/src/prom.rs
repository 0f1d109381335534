//! A strict enough parser of the Prometheus text exposition format, for
//! checking `/metrics`: every sample line must parse, and every sample must
//! belong to a family announced by a `# TYPE` line.

use std::collections::BTreeMap;

/// Samples by `name{label="value",...}` (labels sorted by name, as written
/// by the server), with the family types.
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: BTreeMap<String, f64>,
    pub types: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses `text`; an error names the first line that is not valid.
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let mut metrics = Metrics::default();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| format!("bad TYPE line: {line}"))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(format!("unknown type in: {line}"));
                }
                metrics.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| format!("no value: {line}"))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().map_err(|_| format!("bad value: {line}"))?,
            };
            let name = series.split('{').next().unwrap_or_default();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            {
                return Err(format!("bad metric name: {line}"));
            }
            let labels = &series[name.len()..];
            if !labels.is_empty() && !valid_labels(labels) {
                return Err(format!("bad labels: {line}"));
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| metrics.types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            if !metrics.types.contains_key(family) {
                return Err(format!("sample without a TYPE line: {line}"));
            }
            metrics.samples.insert(series.to_owned(), value);
        }
        Ok(metrics)
    }

    /// The value of `series` (`name` or `name{labels}`). Panics when the
    /// series is absent, naming the series of the same family that exist: a
    /// misspelt name or label must fail a test, not read as 0.
    pub fn get(&self, series: &str) -> f64 {
        match self.value(series) {
            Some(value) => value,
            None => {
                let name = series.split('{').next().unwrap_or_default();
                let family: Vec<&String> = self
                    .samples
                    .keys()
                    .filter(|k| k.split('{').next() == Some(name))
                    .collect();
                panic!("no series {series} in /metrics; series of {name}: {family:?}")
            }
        }
    }

    /// The value of `series`, `None` when absent: for tests that assert a
    /// series does not exist (`assert_eq!(m.value(s), None)`).
    pub fn value(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }
}

impl crate::app::TestApp {
    /// Scrapes `/metrics`; panics unless it answers Prometheus text.
    pub async fn metrics(&self) -> Metrics {
        let text = self
            .http
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics has a body");
        Metrics::parse(&text).unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}"))
    }

    /// Scrapes until `series` exists and equals `value`; panics after `within`.
    pub async fn wait_for_metric(&self, series: &str, value: f64, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let metrics = self.metrics().await;
            let now = metrics.value(series);
            if now == Some(value) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} is {now:?}, not {value}, after {within:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Whether `text` is `{name="value",...}` with valid names and escapes.
fn valid_labels(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return false;
    };
    let mut rest = inner;
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once("=\"") else {
            return false;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return false;
        }
        // The value runs to the first quote that is not escaped.
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' if !matches!(chars.next(), Some((_, '\\' | '"' | 'n'))) => return false,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else { return false };
        rest = &after[end + 1..];
        if let Some(next) = rest.strip_prefix(',') {
            rest = next;
        } else if !rest.is_empty() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_and_malformed_lines_are_refused() {
        let good = "# TYPE a_total counter\na_total{x=\"1\",y=\"a\\\"b\"} 3\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n";
        let m = Metrics::parse(good).expect("valid");
        assert_eq!(m.get("h_count"), 1.0);
        assert_eq!(m.get("a_total{x=\"1\",y=\"a\\\"b\"}"), 3.0);
        assert!(Metrics::parse("a_total 1\n").is_err(), "no TYPE line");
        assert!(
            Metrics::parse("# TYPE a gauge\na{x=1} 1\n").is_err(),
            "unquoted"
        );
        assert!(
            Metrics::parse("# TYPE a gauge\na one\n").is_err(),
            "bad value"
        );
    }

    #[test]
    fn a_missing_series_is_an_error_not_zero() {
        let m = Metrics::parse("# TYPE a_total counter\na_total{x=\"1\"} 0\n").expect("valid");
        assert_eq!(m.get("a_total{x=\"1\"}"), 0.0);
        assert_eq!(m.value("a_total{x=\"2\"}"), None);
        let misspelt = std::panic::catch_unwind(|| m.get("a_totl{x=\"1\"}"));
        assert!(misspelt.is_err(), "a misspelt series fails");
        let wrong_label = std::panic::catch_unwind(|| m.get("a_total{x=\"2\"}"));
        assert!(wrong_label.is_err(), "a series with other labels fails");
    }
}
