//! The gate: does the candidate go to production? A pure function of the
//! paired comparison and the pipeline's `[gate]` settings; a hold still
//! reports, and says why.

use serde::{Deserialize, Serialize};

use crate::eval::compare::Comparison;

/// `[gate]` in a pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// The smallest test-set delta (candidate − production) worth shipping.
    pub min_delta: f64,
    /// Also require the delta's interval to lie above zero: the gain is not noise.
    pub require_interval_above_zero: bool,
    /// The interval's confidence level.
    pub confidence: f64,
    /// The fewest test examples a promotion may rest on.
    pub min_test_n: usize,
    /// For pass/fail metrics, the largest exact McNemar p-value that promotes:
    /// above it, the examples fixed and broken may be chance.
    pub max_mcnemar_p: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            min_delta: 0.0,
            require_interval_above_zero: true,
            confidence: 0.95,
            min_test_n: 30,
            max_mcnemar_p: 0.05,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The candidate beats production by the configured margin: propose it.
    Promote,
    /// Keep production; the report says why.
    Hold,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Promote => "promote",
            Decision::Hold => "hold",
        }
    }
}

/// The gate's verdict with its reasons, one sentence each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub decision: Decision,
    pub reasons: Vec<String>,
}

pub fn decide(comparison: &Comparison, config: &GateConfig) -> Verdict {
    let mut reasons = Vec::new();
    let delta = comparison.delta;
    if comparison.n == 0 {
        reasons.push("the test split is empty: nothing to compare on".to_string());
    } else if comparison.n < config.min_test_n {
        reasons.push(format!(
            "only {} test examples: a promotion needs at least {} ([gate] min_test_n)",
            comparison.n, config.min_test_n
        ));
    }
    if delta.estimate < config.min_delta || (config.min_delta == 0.0 && delta.estimate <= 0.0) {
        reasons.push(format!("the delta {:+.3} is not above the minimum of {:+.3}", delta.estimate, config.min_delta));
    }
    if config.require_interval_above_zero && delta.low <= 0.0 {
        reasons.push(format!(
            "the {:.0}% interval [{:+.3}, {:+.3}] reaches zero: the difference may be noise",
            delta.confidence * 100.0,
            delta.low,
            delta.high
        ));
    }
    if let Some(p) = comparison.mcnemar_p
        && p > config.max_mcnemar_p
    {
        reasons.push(format!(
            "McNemar p = {p:.4} is above {}: the examples fixed and broken may be chance",
            config.max_mcnemar_p
        ));
    }
    if reasons.is_empty() {
        reasons.push(format!(
            "the delta {:+.3} clears the minimum of {:+.3}{}{}",
            delta.estimate,
            config.min_delta,
            if config.require_interval_above_zero { " and its interval lies above zero" } else { "" },
            match comparison.mcnemar_p {
                Some(p) => format!(" (McNemar p = {p:.4})"),
                None => String::new(),
            }
        ));
        Verdict { decision: Decision::Promote, reasons }
    } else {
        Verdict { decision: Decision::Hold, reasons }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::compare::Interval;

    fn comparison(estimate: f64, low: f64, high: f64) -> Comparison {
        Comparison {
            n: 100,
            baseline_mean: 0.5,
            candidate_mean: 0.5 + estimate,
            delta: Interval { estimate, low, high, confidence: 0.95 },
            mcnemar_p: None,
            fixed: vec![],
            broken: vec![],
        }
    }

    #[test]
    fn a_clear_gain_is_promoted() {
        let verdict = decide(&comparison(0.1, 0.03, 0.17), &GateConfig::default());
        assert_eq!(verdict.decision, Decision::Promote);
        assert_eq!(verdict.reasons.len(), 1);
    }

    #[test]
    fn a_gain_whose_interval_reaches_zero_is_held_and_says_so() {
        let verdict = decide(&comparison(0.05, -0.01, 0.11), &GateConfig::default());
        assert_eq!(verdict.decision, Decision::Hold);
        assert!(verdict.reasons[0].contains("reaches zero"), "{:?}", verdict.reasons);
        let lenient = GateConfig { require_interval_above_zero: false, ..GateConfig::default() };
        assert_eq!(decide(&comparison(0.05, -0.01, 0.11), &lenient).decision, Decision::Promote);
    }

    #[test]
    fn no_change_or_a_loss_is_held_and_every_reason_is_given() {
        assert_eq!(decide(&comparison(0.0, 0.0, 0.0), &GateConfig::default()).decision, Decision::Hold);
        let verdict = decide(&comparison(-0.07, -0.14, 0.01), &GateConfig::default());
        assert_eq!(verdict.decision, Decision::Hold);
        assert_eq!(verdict.reasons.len(), 2, "{:?}", verdict.reasons);
    }

    #[test]
    fn the_minimum_delta_is_a_floor() {
        let strict = GateConfig { min_delta: 0.05, ..GateConfig::default() };
        assert_eq!(decide(&comparison(0.04, 0.01, 0.07), &strict).decision, Decision::Hold);
        assert_eq!(decide(&comparison(0.05, 0.01, 0.09), &strict).decision, Decision::Promote);
    }

    #[test]
    fn one_example_or_a_chance_split_of_flips_never_promotes() {
        // The whole test split is one example it fixed: the interval is [+1, +1].
        let one = Comparison { n: 1, ..comparison(1.0, 1.0, 1.0) };
        let verdict = decide(&Comparison { mcnemar_p: Some(1.0), ..one }, &GateConfig::default());
        assert_eq!(verdict.decision, Decision::Hold);
        assert!(verdict.reasons.iter().any(|r| r.contains("only 1 test examples") && r.contains("min_test_n")));
        assert!(verdict.reasons.iter().any(|r| r.contains("McNemar p = 1.0000 is above 0.05")));
        // A clear interval with a McNemar p above the bar holds on the p alone.
        let verdict =
            decide(&Comparison { mcnemar_p: Some(0.08), ..comparison(0.1, 0.01, 0.19) }, &GateConfig::default());
        assert_eq!(verdict.decision, Decision::Hold);
        assert_eq!(verdict.reasons.len(), 1, "{:?}", verdict.reasons);
        let verdict =
            decide(&Comparison { mcnemar_p: Some(0.01), ..comparison(0.1, 0.01, 0.19) }, &GateConfig::default());
        assert_eq!(verdict.decision, Decision::Promote);
        assert!(verdict.reasons[0].contains("McNemar p = 0.0100"), "{:?}", verdict.reasons);
    }
}
