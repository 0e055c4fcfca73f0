//! Results, the table and the machine-readable lines.
//!
//! A run prints one `RESULT <mode> <metric> <client> <value> <round,round,...>` line per
//! measured figure (the per-round values are what paired ratios and spreads are made of). The
//! table and the comparison lines are made from such lines, so `--combine` can merge the pinned
//! and the unpinned runs (two processes) into one table:
//!
//! ```text
//! RATIO <metric> <pinned|unpinned> <syncws / raw>
//! VS_TOKIO <metric> <pinned|unpinned> <syncws / tokio-tungstenite>
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Record {
    pub mode: String,
    pub metric: String,
    pub client: String,
    pub value: f64,
    /// The value in each round, in round order (may be empty).
    pub rounds: Vec<f64>,
}

impl Record {
    pub fn line(&self) -> String {
        let rounds: Vec<String> = self.rounds.iter().map(|v| format!("{v:.3}")).collect();
        format!(
            "RESULT {} {} {} {} {}",
            self.mode,
            self.metric,
            self.client,
            self.value,
            rounds.join(",")
        )
    }

    pub fn parse(line: &str) -> Option<Record> {
        let mut it = line.split_whitespace();
        if it.next()? != "RESULT" {
            return None;
        }
        Some(Record {
            mode: it.next()?.to_string(),
            metric: it.next()?.to_string(),
            client: it.next()?.to_string(),
            value: it.next()?.parse().ok()?,
            rounds: it
                .next()
                .map(|r| r.split(',').filter_map(|v| v.parse().ok()).collect())
                .unwrap_or_default(),
        })
    }
}

/// True when a bigger value is better (throughput), false for latencies.
fn higher_is_better(metric: &str) -> bool {
    metric.contains("per_s")
}

/// The issue's goal for syncws / raw on this metric: (at least?, bound).
fn goal(metric: &str) -> Option<(bool, f64)> {
    if metric.starts_with("inbound_") {
        Some((true, 0.95))
    } else if metric.starts_with("outbound_") {
        Some((true, 1.0))
    } else if metric.starts_with("rtt_p50_") && metric.ends_with("_actor") {
        Some((false, 2.0))
    } else if metric.starts_with("rtt_p50_") {
        Some((false, 1.5))
    } else if metric.starts_with("rtt_p99_") {
        Some((false, 2.0))
    } else {
        None
    }
}

fn human(metric: &str, v: f64) -> String {
    if !higher_is_better(metric) {
        format!("{v:.1}")
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// One row: a metric in a mode, with each client's value.
struct Row<'a> {
    metric: &'a str,
    mode: &'a str,
    values: HashMap<&'a str, &'a Record>,
}

impl Row<'_> {
    fn value(&self, client: &str) -> Option<f64> {
        self.values.get(client).map(|r| r.value)
    }

    /// syncws / `other`: for throughput the median of the per-round ratios (each pairs two runs
    /// seconds apart), for latency the ratio of the (median per-round) percentiles; with the lowest and
    /// highest per-round ratio when both sides have the same rounds.
    fn ratio(&self, other: &str) -> Option<(f64, Option<(f64, f64)>)> {
        let (s, o) = (self.values.get("syncws")?, self.values.get(other)?);
        if o.value <= 0.0 {
            return None;
        }
        let paired: Vec<f64> = if s.rounds.len() == o.rounds.len() {
            s.rounds
                .iter()
                .zip(&o.rounds)
                .filter(|(_, o)| **o > 0.0)
                .map(|(s, o)| s / o)
                .collect()
        } else {
            Vec::new()
        };
        let spread = (!paired.is_empty()).then(|| {
            let lo = paired.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = paired.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        });
        let ratio = if higher_is_better(self.metric) && !paired.is_empty() {
            crate::stats::median(&paired)
        } else {
            s.value / o.value
        };
        Some((ratio, spread))
    }
}

fn rows(records: &[Record]) -> Vec<Row<'_>> {
    let mut rows: Vec<Row<'_>> = Vec::new();
    for r in records {
        let pos = rows
            .iter()
            .position(|row| row.metric == r.metric && row.mode == r.mode);
        let i = pos.unwrap_or_else(|| {
            rows.push(Row {
                metric: &r.metric,
                mode: &r.mode,
                values: HashMap::new(),
            });
            rows.len() - 1
        });
        rows[i].values.insert(&r.client, r);
    }
    // Metric order as first measured, then pinned before unpinned.
    let order: Vec<&str> = {
        let mut seen = Vec::new();
        for r in records {
            if !seen.contains(&r.metric.as_str()) {
                seen.push(r.metric.as_str());
            }
        }
        seen
    };
    rows.sort_by_key(|row| {
        (
            order.iter().position(|m| *m == row.metric),
            row.mode.to_string(),
        )
    });
    rows
}

/// `lo–hi` of a ratio's per-round spread, or `-`.
fn spread_text(spread: Option<(f64, f64)>) -> String {
    spread.map_or("-".into(), |(lo, hi)| format!("{lo:.2}-{hi:.2}"))
}

/// The table, then one `RATIO` line per (metric, mode) with syncws and raw values and one
/// `VS_TOKIO` line per (metric, mode) with syncws and tokio values.
pub fn render(records: &[Record]) -> String {
    let rows = rows(records);
    let mut out = String::new();
    let w = rows
        .iter()
        .map(|r| r.metric.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        out,
        "{:<w$}  {:<8}  {:>9}  {:>9}  {:>9}  {:>10}  {:>9}  {:<10}  {:>12}  {:>9}  {:<6}",
        "metric",
        "mode",
        "syncws",
        "raw",
        "tokio",
        "syncws/raw",
        "spread",
        "goal",
        "syncws/tokio",
        "spread",
        ""
    );
    let _ = writeln!(out, "{}", "-".repeat(w + 112));
    for row in &rows {
        let cell = |c: &str| row.value(c).map_or("-".into(), |x| human(row.metric, x));
        let (ratio, raw_spread, goal_text) = match row.ratio("raw") {
            Some((ratio, spread)) => {
                let text = match goal(row.metric) {
                    Some((at_least, bound)) => {
                        let met = if at_least {
                            ratio >= bound
                        } else {
                            ratio <= bound
                        };
                        let sign = if at_least { ">=" } else { "<=" };
                        format!("{sign}{bound:.2} {}", if met { "ok" } else { "MISS" })
                    }
                    None => String::new(),
                };
                (format!("{ratio:.3}"), spread_text(spread), text)
            }
            None => ("-".into(), "-".into(), String::new()),
        };
        let (vs_tokio, tokio_spread, verdict) = match row.ratio("tokio") {
            Some((ratio, spread)) => {
                let ahead = if higher_is_better(row.metric) {
                    ratio > 1.0
                } else {
                    ratio < 1.0
                };
                (
                    format!("{ratio:.3}"),
                    spread_text(spread),
                    if ahead { "ahead" } else { "BEHIND" },
                )
            }
            None => ("-".into(), "-".into(), ""),
        };
        let _ = writeln!(
            out,
            "{:<w$}  {:<8}  {:>9}  {:>9}  {:>9}  {:>10}  {:>9}  {:<10}  {:>12}  {:>9}  {:<6}",
            row.metric,
            row.mode,
            cell("syncws"),
            cell("raw"),
            cell("tokio"),
            ratio,
            raw_spread,
            goal_text,
            vs_tokio,
            tokio_spread,
            verdict
        );
    }
    let _ = writeln!(
        out,
        "\nthroughput in messages/s (median of the rounds), round trips in microseconds; \
         ratios are syncws / other (above 1 is better for throughput, below 1 for latency): \
         for throughput the median of the per-round ratios, for round trips the ratio of the \
         median per-round percentiles; spread = lowest-highest per-round ratio\n"
    );
    for row in &rows {
        if let Some((ratio, _)) = row.ratio("raw") {
            let _ = writeln!(out, "RATIO {} {} {:.4}", row.metric, row.mode, ratio);
        }
    }
    for row in &rows {
        if let Some((ratio, _)) = row.ratio("tokio") {
            let _ = writeln!(out, "VS_TOKIO {} {} {:.4}", row.metric, row.mode, ratio);
        }
    }
    out
}
