//! Is the candidate better than the baseline, or is it noise? Paired
//! comparisons on the same test examples: the mean delta with a paired
//! bootstrap interval, the exact McNemar test for pass/fail scores, and the
//! examples that flipped.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// One test example scored by both programs.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub id: String,
    pub baseline: f64,
    pub candidate: f64,
}

/// A two-sided interval around a point estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
    /// e.g. 0.95.
    pub confidence: f64,
}

/// Everything the gate and the report need to know about a paired comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub n: usize,
    pub baseline_mean: f64,
    pub candidate_mean: f64,
    /// candidate − baseline, with its paired-bootstrap interval.
    pub delta: Interval,
    /// Exact McNemar p-value (two-sided), when every score is 0 or 1.
    pub mcnemar_p: Option<f64>,
    /// Ids the candidate gets right and the baseline wrong (score rose), and the reverse.
    pub fixed: Vec<String>,
    pub broken: Vec<String>,
}

/// Bootstrap resamples: enough that the 2.5% and 97.5% percentiles move by
/// less than a thousandth between seeds on a test set of a few hundred.
pub const RESAMPLES: usize = 10_000;

impl Comparison {
    pub fn of(pairs: &[Pair], confidence: f64, seed: u64) -> Comparison {
        let n = pairs.len();
        let mean = |f: fn(&Pair) -> f64| if n == 0 { 0.0 } else { pairs.iter().map(f).sum::<f64>() / n as f64 };
        let baseline_mean = mean(|p| p.baseline);
        let candidate_mean = mean(|p| p.candidate);
        let deltas: Vec<f64> = pairs.iter().map(|p| p.candidate - p.baseline).collect();
        let delta = paired_bootstrap(&deltas, RESAMPLES, confidence, seed);
        let binary = pairs.iter().all(|p| is_pass_fail(p.baseline) && is_pass_fail(p.candidate));
        let fixed: Vec<String> = pairs.iter().filter(|p| p.candidate > p.baseline).map(|p| p.id.clone()).collect();
        let broken: Vec<String> = pairs.iter().filter(|p| p.candidate < p.baseline).map(|p| p.id.clone()).collect();
        let mcnemar_p = (binary && n > 0).then(|| mcnemar_exact(fixed.len() as u64, broken.len() as u64));
        Comparison { n, baseline_mean, candidate_mean, delta, mcnemar_p, fixed, broken }
    }
}

/// Pairs two programs' scores by example id (examples only one side scored are left out).
pub fn pair_by_id<'a>(
    baseline: impl IntoIterator<Item = (&'a str, f64)>,
    candidate: impl IntoIterator<Item = (&'a str, f64)>,
) -> Vec<Pair> {
    let candidate: std::collections::HashMap<&str, f64> = candidate.into_iter().collect();
    baseline
        .into_iter()
        .filter_map(|(id, b)| candidate.get(id).map(|&c| Pair { id: id.to_string(), baseline: b, candidate: c }))
        .collect()
}

fn is_pass_fail(score: f64) -> bool {
    score == 0.0 || score == 1.0
}

/// Percentile bootstrap of the mean of per-example deltas: resample the
/// examples (not the two programs separately), so the interval reflects the
/// pairing. Deterministic for a seed.
pub fn paired_bootstrap(deltas: &[f64], resamples: usize, confidence: f64, seed: u64) -> Interval {
    let n = deltas.len();
    if n == 0 {
        return Interval { estimate: 0.0, low: 0.0, high: 0.0, confidence };
    }
    let estimate = deltas.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> =
        (0..resamples.max(1)).map(|_| (0..n).map(|_| deltas[rng.random_range(0..n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    Interval { estimate, low: at(tail), high: at(1.0 - tail), confidence }
}

/// Exact two-sided McNemar test: under "no difference" each discordant pair is
/// a fair coin, so p = P(X ≤ min(b, c)) × 2 for X ~ Binomial(b + c, ½), at most 1.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // Sum in log space: C(n, i) / 2^n overflows f64 long before n is large.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(scores: &[(f64, f64)]) -> Vec<Pair> {
        scores.iter().enumerate().map(|(i, &(b, c))| Pair { id: format!("e{i}"), baseline: b, candidate: c }).collect()
    }

    #[test]
    fn mcnemar_matches_the_binomial_by_hand() {
        // b = 1, c = 6: 2 × (C(7,0) + C(7,1)) / 2^7 = 16/128.
        assert!((mcnemar_exact(1, 6) - 0.125).abs() < 1e-12);
        assert!((mcnemar_exact(6, 1) - 0.125).abs() < 1e-12);
        // All ten discordant pairs one way: 2 / 2^10.
        assert!((mcnemar_exact(0, 10) - 2.0 / 1024.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // Large n stays finite and tiny: 0 vs 2000.
        let p = mcnemar_exact(0, 2000);
        assert!((0.0..1e-300).contains(&p), "{p}");
        // 40 vs 60 (n = 100): 2 × P(X ≤ 40) = 0.05689 (binomial tables).
        assert!((mcnemar_exact(40, 60) - 0.056_887_934).abs() < 1e-9, "{}", mcnemar_exact(40, 60));
    }

    #[test]
    fn the_bootstrap_interval_is_deterministic_and_holds_the_estimate() {
        let deltas: Vec<f64> = (0..139)
            .map(|i| {
                if i % 5 == 0 {
                    1.0
                } else if i % 13 == 0 {
                    -1.0
                } else {
                    0.0
                }
            })
            .collect();
        let a = paired_bootstrap(&deltas, 2000, 0.95, 7);
        let b = paired_bootstrap(&deltas, 2000, 0.95, 7);
        assert_eq!(a, b);
        assert!(a.low < a.estimate && a.estimate < a.high, "{a:?}");
        assert!(a.low > 0.0, "28 gains against 10 losses in 139 is clearly positive: {a:?}");
        let wider = paired_bootstrap(&deltas, 2000, 0.99, 7);
        assert!(wider.low <= a.low && wider.high >= a.high);
        // No difference at all: a zero-width interval at zero.
        let none = paired_bootstrap(&[0.0; 50], 500, 0.95, 1);
        assert_eq!((none.low, none.estimate, none.high), (0.0, 0.0, 0.0));
    }

    #[test]
    fn a_comparison_names_what_flipped() {
        let c = Comparison::of(&pairs(&[(0.0, 1.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0)]), 0.95, 3);
        assert_eq!(c.n, 5);
        assert_eq!(c.fixed, ["e0", "e3"]);
        assert_eq!(c.broken, ["e2"]);
        assert!((c.delta.estimate - 0.2).abs() < 1e-12);
        assert!((c.baseline_mean - 0.4).abs() < 1e-12 && (c.candidate_mean - 0.6).abs() < 1e-12);
        assert_eq!(c.mcnemar_p, Some(1.0));
        // Graded scores have no McNemar test.
        let graded = Comparison::of(&pairs(&[(0.5, 0.75), (0.2, 0.1)]), 0.95, 3);
        assert_eq!(graded.mcnemar_p, None);
        assert_eq!(graded.fixed, ["e0"]);
    }
}
