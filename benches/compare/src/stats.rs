//! Medians and percentiles.

/// The median of `values` (the mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The `p`th percentile (0 < p <= 100) of ascending `sorted` samples, by nearest rank: the
/// smallest sample with at least `p`% of the samples at or below it.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    assert!(!sorted.is_empty(), "percentile of nothing");
    // The epsilon keeps 99.9% of 1000 at rank 999 despite 99.9 having no exact binary form.
    let rank = (p / 100.0 * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Checks the rank arithmetic above; run at the start of every bench run (benches built with
/// `harness = false` have no test harness).
pub fn self_check() {
    let v: Vec<u64> = (1..=1000).collect();
    assert_eq!(percentile(&v, 50.0), 500);
    assert_eq!(percentile(&v, 99.0), 990);
    assert_eq!(percentile(&v, 99.9), 999);
    assert_eq!(percentile(&v, 100.0), 1000);
    assert_eq!(percentile(&[7], 99.9), 7);
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
}
