//! What a run found, written for people: the Markdown report and PR body, the
//! score history, and the one-line headline every channel (PR, Slack, the
//! Actions summary) repeats word for word.

pub mod chart;
pub mod diff;
pub mod history;
pub mod markdown;
pub mod untrusted;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::eval::gate::Decision;
use crate::logs::pull::PullReport;

/// The run's result in one glance. Every channel formats the delta through
/// [`Headline::delta_text`], so the PR and Slack never disagree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Headline {
    pub pipeline: String,
    /// The metric's name, e.g. `exact_match(queue)`.
    pub metric: String,
    /// Test examples both programs were scored on.
    pub n: usize,
    /// Production's test score (the artifact on the base branch, or the hand-written program).
    pub baseline: f64,
    pub candidate: f64,
    pub delta: f64,
    pub low: f64,
    pub high: f64,
    /// e.g. 0.95.
    pub confidence: f64,
    /// Exact McNemar p-value, for pass/fail metrics.
    pub mcnemar_p: Option<f64>,
    pub decision: Decision,
    /// Why the gate decided so, one sentence each.
    pub reasons: Vec<String>,
    /// Nothing beat production on dev, so no candidate was scored on test:
    /// `candidate` and the delta then only repeat production's score.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_candidate: bool,
}

impl Headline {
    /// `+0.194 (95% CI +0.094 to +0.295, n = 139)`, or, when no candidate
    /// was scored, `no candidate: none beat production on dev (n = 139)`.
    pub fn delta_text(&self) -> String {
        if self.no_candidate {
            return format!("no candidate: none beat production on dev (n = {})", self.n);
        }
        format!(
            "{:+.3} ({:.0}% CI {:+.3} to {:+.3}, n = {})",
            self.delta,
            self.confidence * 100.0,
            self.low,
            self.high,
            self.n
        )
    }

    /// `0.266 → 0.460`, or `0.444 → no candidate`.
    pub fn scores_text(&self) -> String {
        if self.no_candidate {
            return format!("{:.3} → no candidate", self.baseline);
        }
        format!("{:.3} → {:.3}", self.baseline, self.candidate)
    }

    /// `promote` or `hold`, with the first reason for a hold.
    pub fn decision_text(&self) -> String {
        match self.decision {
            Decision::Promote => "promote".to_string(),
            Decision::Hold => match self.reasons.first() {
                Some(reason) => format!("hold: {reason}"),
                None => "hold".to_string(),
            },
        }
    }
}

/// Everything a run found, as data: what `report` renders and `publish`
/// sends. Saved beside the run's files so each stage can run alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub headline: Headline,
    pub date: DateTime<Utc>,
    /// What production is: `artifacts/<name>/program.json on main (abc1234)`,
    /// or the hand-written program when the base branch has no artifact.
    pub production: String,
    /// The optimizer and its main settings, e.g. `bootstrap_random_search (6 candidates)`.
    pub optimizer: String,
    /// Dev scores (selection only: the optimizer saw dev, so it is not evidence).
    pub dev: Option<Scores>,
    /// The test comparison per signal (routine, urgent, escalating, unlabeled).
    pub slices: Vec<Slice>,
    /// The test comparison per router branch (`handlers = escalating`), for a program with routers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<Slice>,
    /// Test examples whose score changed, fixed first.
    pub flipped: Vec<Flip>,
    /// Reviewer-readable unified diff of instructions and demos (production → candidate).
    pub program_diff: String,
    /// What the pull did this run, when it ran.
    pub dataset: Option<PullReport>,
    /// The dataset the scores are on.
    pub examples: DatasetSize,
    pub cost: Cost,
    /// Earlier runs from history.jsonl, oldest first, and this one last.
    pub history: Vec<history::Entry>,
    /// How the optimizer searched (absent from runs saved before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchSummary>,
    /// Each program's failed test predictions, when it had any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failures>,
}

/// How many of one program's test predictions failed, and why: a score with
/// many failures is not the model's answers, and a reply cut by `max_tokens`
/// is fixed in the pipeline file, not in the prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failures {
    /// `production` or `candidate`.
    pub program: String,
    /// Predictions made.
    pub n: usize,
    pub failed: usize,
    /// Of those, replies that could not be parsed.
    pub unparseable: usize,
    /// Of those, replies `max_tokens` cut before they were complete.
    pub cut: usize,
    pub max_tokens: u32,
}

impl Failures {
    /// The failures of one evaluation, or `None` when nothing failed.
    pub fn of(program: &str, summary: &crate::eval::EvalSummary) -> Option<Failures> {
        (summary.failed > 0).then(|| Failures {
            program: program.to_string(),
            n: summary.n,
            failed: summary.failed,
            unparseable: summary.format_errors,
            cut: summary.cut,
            max_tokens: summary.max_tokens,
        })
    }

    /// `production: 12 of 162 replies cut at max_tokens = 16; raise [lm]
    /// max_tokens; 2 more of 162 predictions failed (1 unparseable reply)`.
    pub fn text(&self) -> String {
        let mut parts = Vec::new();
        if self.cut > 0 {
            parts.push(crate::eval::cut_text(self.cut, self.n, self.max_tokens));
        }
        let other = self.failed - self.cut.min(self.failed);
        if other > 0 {
            let more = if self.cut > 0 { " more" } else { "" };
            let predictions = if other == 1 { "prediction" } else { "predictions" };
            let mut text = format!("{other}{more} of {} {predictions} failed", self.n);
            match self.unparseable {
                0 => {}
                1 => text.push_str(" (1 unparseable reply)"),
                k => text.push_str(&format!(" ({k} unparseable replies)")),
            }
            parts.push(text);
        }
        format!("{}: {}", self.program, parts.join("; "))
    }
}

/// How the optimizer searched: what it tried, what it concluded, what it used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSummary {
    /// Whether it found a program that beats production on dev.
    pub improved: bool,
    pub production_dev: f64,
    /// The proposed program's dev score (production's when nothing beat it).
    pub candidate_dev: f64,
    /// The proposed candidate's name (`production` when nothing beat it).
    pub chosen: String,
    /// Every candidate scored on dev, production first.
    pub candidates: Vec<crate::program::artifact::CandidateScore>,
    /// Why the search ended early (its budget), if it did.
    pub stopped_early: Option<String>,
    /// Dev example evaluations the search ran.
    pub evaluations: u64,
    pub notes: Vec<String>,
    pub proposals: Vec<crate::optimize::ProposalRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reflections: Vec<crate::optimize::ReflectionRecord>,
    /// LM use per role: budget, projection, use.
    pub usage: Vec<RoleUse>,
    /// Per router branch: the slice each handler was optimized on, and its dev scores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<crate::optimize::slices::Slice>,
}

/// One LM role's use in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleUse {
    pub role: String,
    /// The optimizer's budget for the role, if any.
    pub budget: crate::lm::budget::Budget,
    /// Calls the optimizer was projected to make in this role.
    pub projected_calls: u64,
    /// What the optimizer used in this role (production's scoring on dev included).
    pub used: crate::lm::budget::RoleUsage,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub n: usize,
    pub baseline: f64,
    pub candidate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DatasetSize {
    pub examples: usize,
    pub train: usize,
    pub dev: usize,
    pub test: usize,
}

/// The test comparison per router branch, by the branch the candidate's run
/// took (production's when the candidate failed before routing); empty
/// without routers.
pub fn branches(
    production: &crate::eval::Evaluation,
    candidate: &crate::eval::Evaluation,
    pairs: &[crate::eval::compare::Pair],
) -> Vec<Slice> {
    let route_of = |e: &crate::eval::Evaluation| -> std::collections::HashMap<String, String> {
        e.results
            .iter()
            .filter_map(|r| {
                let routes: Vec<String> =
                    r.stats.routes.iter().map(|route| format!("{} = {}", route.router, route.branch)).collect();
                (!routes.is_empty()).then(|| (r.example_id.clone(), routes.join(", ")))
            })
            .collect()
    };
    let (by_candidate, by_production) = (route_of(candidate), route_of(production));
    if by_candidate.is_empty() && by_production.is_empty() {
        return Vec::new();
    }
    let mut by_branch: std::collections::BTreeMap<String, Vec<&crate::eval::compare::Pair>> = Default::default();
    for pair in pairs {
        let branch = by_candidate.get(&pair.id).or_else(|| by_production.get(&pair.id)).cloned();
        by_branch.entry(branch.unwrap_or_else(|| "not routed (failed before a router)".into())).or_default().push(pair);
    }
    by_branch.into_iter().map(|(branch, pairs)| Slice::of(branch, &pairs)).collect()
}

/// The test comparison restricted to one signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    pub signal: String,
    pub scores: Scores,
    pub fixed: usize,
    pub broken: usize,
}

impl Slice {
    /// The comparison on `pairs` (not empty), labelled `label`.
    pub fn of(label: String, pairs: &[&crate::eval::compare::Pair]) -> Slice {
        let n = pairs.len();
        let mean = |f: fn(&crate::eval::compare::Pair) -> f64| pairs.iter().map(|p| f(p)).sum::<f64>() / n as f64;
        Slice {
            scores: Scores { n, baseline: mean(|p| p.baseline), candidate: mean(|p| p.candidate) },
            fixed: pairs.iter().filter(|p| p.candidate > p.baseline).count(),
            broken: pairs.iter().filter(|p| p.candidate < p.baseline).count(),
            signal: label,
        }
    }
}

/// A test example on which production and the candidate disagree in score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    pub id: String,
    /// true: the candidate fixed it; false: the candidate broke it.
    pub fixed: bool,
    pub signal: String,
    /// The example's inputs, as stored (anonymized when pulled).
    pub inputs: Map<String, Value>,
    pub reference: Map<String, Value>,
    /// Each program's outputs, or why it had none.
    pub production: Outcome,
    pub candidate: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Outputs(Map<String, Value>),
    Failed(String),
}

/// What the run cost in LM use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Completions asked for, cache hits included.
    pub lm_calls: u64,
    pub cache_hits: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Dollars, where the pipeline configures a price.
    pub dollars: Option<f64>,
}

impl Cost {
    /// `1,498 LM calls (312 cached) · 412,003 tokens · $0.41`.
    pub fn text(&self) -> String {
        let mut text = format!(
            "{} LM calls ({} cached) · {} tokens",
            thousands(self.lm_calls),
            thousands(self.cache_hits),
            thousands(self.prompt_tokens + self.completion_tokens)
        );
        if let Some(dollars) = self.dollars {
            text.push_str(&format!(" · ${dollars:.2}"));
        }
        text
    }
}

/// `1 candidate`, `7 candidates`: a count with its noun (plural by `s`).
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// A budget in words: `2,000 calls, $1.50`, or `none`.
pub fn budget_text(budget: &crate::lm::budget::Budget) -> String {
    let mut parts = Vec::new();
    if let Some(c) = budget.max_calls {
        parts.push(format!("{} calls", thousands(c)));
    }
    if let Some(t) = budget.max_tokens {
        parts.push(format!("{} tokens", thousands(t)));
    }
    if let Some(d) = budget.max_dollars {
        parts.push(format!("${d:.2}"));
    }
    if parts.is_empty() { "none".to_string() } else { parts.join(", ") }
}

/// `1498` → `1,498`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1498), "1,498");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
