//! Median, p90 and the like over a handful of samples.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min: Duration,
    pub median: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// `None` for no samples. The median of an even count is the mean of the two middle samples; p90 and p99 are
/// nearest-rank percentiles.
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    let mut s = samples.to_vec();
    s.sort();
    let n = s.len();
    let (first, last) = (*s.first()?, *s.last()?);
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2 };
    let percentile = |p: f64| s[(((n as f64) * p).ceil() as usize).clamp(1, n) - 1];
    Some(Summary { n, min: first, median, p90: percentile(0.9), p99: percentile(0.99), max: last })
}

pub fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p90() {
        let ms = |v: &[u64]| v.iter().map(|m| Duration::from_millis(*m)).collect::<Vec<_>>();
        let s = summarize(&ms(&[5, 1, 4, 2, 3])).unwrap();
        assert_eq!((s.min, s.median, s.p90, s.max), (ms(&[1])[0], ms(&[3])[0], ms(&[5])[0], ms(&[5])[0]));
        let s = summarize(&ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])).unwrap();
        assert_eq!(
            (s.median, s.p90, s.p99),
            (Duration::from_micros(5500), Duration::from_millis(9), Duration::from_millis(10))
        );
        assert_eq!(summarize(&[]), None);
    }
}
