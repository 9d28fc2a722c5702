//! Prometheus text as the daemon's `/metrics` serves it: the sum of the series a selector
//! matches.

use std::collections::BTreeMap;

/// Splits `name{a="x",b="y"}` into its name and labels.
fn parse_series(series: &str) -> (&str, BTreeMap<String, String>) {
    let mut labels = BTreeMap::new();
    let Some((name, rest)) = series.split_once('{') else {
        return (series, labels);
    };
    let inner = rest.trim_end_matches('}');
    // Label values in our metrics never contain `",` so a split is enough.
    for pair in inner.split("\",") {
        if let Some((k, v)) = pair.split_once('=') {
            labels.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    (name, labels)
}

/// Sum of the values of series in Prometheus text `text` that match `selector`
/// (see [`Daemon::metric`]).
pub fn metric_sum(text: &str, selector: &str) -> f64 {
    let (want_name, want_labels) = parse_series(selector.trim());
    let mut sum = 0.0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The series ends at the closing brace if there are labels, else at whitespace.
        let split_at = match line.find('{') {
            Some(_) => line.rfind('}').map(|i| i + 1),
            None => line.find(char::is_whitespace),
        };
        let Some(split_at) = split_at else { continue };
        let (series, rest) = line.split_at(split_at);
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let (name, labels) = parse_series(series);
        if name == want_name && want_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            sum += value;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_matches_name_and_label_subset() {
        let text = "# HELP x\n# TYPE loaderd_ufs_requests_total counter\n\
            loaderd_ufs_requests_total{op=\"get\"} 3\n\
            loaderd_ufs_requests_total{mount=\"/data\",op=\"get\"} 2\n\
            loaderd_ufs_requests_total{op=\"list\"} 5\n\
            loaderd_cache_misses_total 7\n\
            loaderd_cache_misses_total_extra 100\n";
        assert_eq!(
            metric_sum(text, "loaderd_ufs_requests_total{op=\"get\"}"),
            5.0
        );
        assert_eq!(metric_sum(text, "loaderd_ufs_requests_total"), 10.0);
        assert_eq!(metric_sum(text, "loaderd_cache_misses_total"), 7.0);
        assert_eq!(metric_sum(text, "loaderd_cache_hits_total"), 0.0);
    }
}
