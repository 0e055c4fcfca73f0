//! Results, the table and the machine-readable lines.
//!
//! A run prints one `RESULT <mode> <metric> <client> <value>` line per measured figure. The
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
}

impl Record {
    pub fn line(&self) -> String {
        format!(
            "RESULT {} {} {} {}",
            self.mode, self.metric, self.client, self.value
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
    values: HashMap<&'a str, f64>,
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
        rows[i].values.insert(&r.client, r.value);
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
        "{:<w$}  {:<8}  {:>9}  {:>9}  {:>9}  {:>10}  {:<10}  {:>12}  {:<6}",
        "metric", "mode", "syncws", "raw", "tokio", "syncws/raw", "goal", "syncws/tokio", ""
    );
    let _ = writeln!(out, "{}", "-".repeat(w + 90));
    for row in &rows {
        let v = |c: &str| row.values.get(c).copied();
        let cell = |c: &str| v(c).map_or("-".into(), |x| human(row.metric, x));
        let (ratio, goal_text) = match (v("syncws"), v("raw")) {
            (Some(s), Some(r)) if r > 0.0 => {
                let ratio = s / r;
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
                (format!("{ratio:.3}"), text)
            }
            _ => ("-".into(), String::new()),
        };
        let (vs_tokio, verdict) = match (v("syncws"), v("tokio")) {
            (Some(s), Some(t)) if t > 0.0 => {
                let ratio = s / t;
                let ahead = if higher_is_better(row.metric) {
                    ratio > 1.0
                } else {
                    ratio < 1.0
                };
                (
                    format!("{ratio:.3}"),
                    if ahead { "ahead" } else { "BEHIND" },
                )
            }
            _ => ("-".into(), ""),
        };
        let _ = writeln!(
            out,
            "{:<w$}  {:<8}  {:>9}  {:>9}  {:>9}  {:>10}  {:<10}  {:>12}  {:<6}",
            row.metric,
            row.mode,
            cell("syncws"),
            cell("raw"),
            cell("tokio"),
            ratio,
            goal_text,
            vs_tokio,
            verdict
        );
    }
    let _ = writeln!(
        out,
        "\nthroughput in messages/s (median of the rounds), round trips in microseconds; \
         ratios are syncws / other (above 1 is better for throughput, below 1 for latency)\n"
    );
    for row in &rows {
        if let (Some(s), Some(r)) = (row.values.get("syncws"), row.values.get("raw")) {
            let _ = writeln!(out, "RATIO {} {} {:.4}", row.metric, row.mode, s / r);
        }
    }
    for row in &rows {
        if let (Some(s), Some(t)) = (row.values.get("syncws"), row.values.get("tokio")) {
            let _ = writeln!(out, "VS_TOKIO {} {} {:.4}", row.metric, row.mode, s / t);
        }
    }
    out
}
