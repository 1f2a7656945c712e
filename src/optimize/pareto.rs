//! The per-example Pareto front used by GEPA.
//!
//! GEPA (Agrawal et al. 2025, "GEPA: Reflective Prompt Evolution Can
//! Outperform Reinforcement Learning") keeps a pool of candidate programs,
//! each evaluated on every dev example. Instead of always mutating the
//! candidate with the best mean, it picks parents from the per-example Pareto
//! front: a candidate that is best on even one example may hold a strategy the
//! mean-best candidate lacks, and keeping such candidates in play preserves
//! diversity and avoids premature convergence.
//!
//! For each dev example, the candidates with the highest score on it form that
//! example's front. A candidate "leads" on the examples whose front it is on.
//! Parent selection keeps the candidates that lead somewhere, drops those
//! dominated by another (whose led examples are a superset), and samples among
//! the rest with probability proportional to how many examples each leads on.
//!
//! Scores are compared exactly: two candidates tie on an example only if their
//! scores are equal, which is what discrete metrics (exact match, 0/1 checks,
//! fractions of a fixed number of fields) produce.

use std::fmt;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A candidate's index in the pool, in order of admission.
pub type CandidateId = usize;

/// Why a candidate's scores were rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum ParetoError {
    /// The candidate has a different number of scores than there are examples.
    WrongLength { expected: usize, got: usize },
    /// The score on `example` is NaN or infinite, so it cannot be ranked.
    NonFiniteScore { example: usize, score: f64 },
}

impl fmt::Display for ParetoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParetoError::WrongLength { expected, got } => {
                write!(f, "candidate has {got} scores, expected one per example ({expected})")
            }
            ParetoError::NonFiniteScore { example, score } => {
                write!(f, "score {score} on example {example} is not finite")
            }
        }
    }
}

impl std::error::Error for ParetoError {}

/// The candidate pool with every candidate's per-example scores.
///
/// Serializes as `{n_examples, scores}`; deserializing validates the scores
/// exactly like [`ParetoFront::add`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ParetoRepr")]
pub struct ParetoFront {
    n_examples: usize,
    scores: Vec<Vec<f64>>,
}

/// The unvalidated serialized form of [`ParetoFront`].
#[derive(Deserialize)]
struct ParetoRepr {
    n_examples: usize,
    scores: Vec<Vec<f64>>,
}

impl TryFrom<ParetoRepr> for ParetoFront {
    type Error = ParetoError;

    fn try_from(repr: ParetoRepr) -> Result<Self, Self::Error> {
        let mut front = ParetoFront::new(repr.n_examples);
        for scores in repr.scores {
            front.add(scores)?;
        }
        Ok(front)
    }
}

impl ParetoFront {
    /// An empty pool for a dev set of `n_examples` examples.
    pub fn new(n_examples: usize) -> Self {
        ParetoFront { n_examples, scores: Vec::new() }
    }

    /// Admits a fully evaluated candidate: one score per dev example, in the
    /// same example order for every candidate. Returns its id. Rejects a
    /// wrong number of scores or a non-finite score, leaving the pool unchanged.
    pub fn add(&mut self, scores: Vec<f64>) -> Result<CandidateId, ParetoError> {
        if scores.len() != self.n_examples {
            return Err(ParetoError::WrongLength { expected: self.n_examples, got: scores.len() });
        }
        if let Some((example, &score)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            return Err(ParetoError::NonFiniteScore { example, score });
        }
        self.scores.push(scores);
        Ok(self.scores.len() - 1)
    }

    /// The per-example scores of a candidate, `None` for an unknown id.
    pub fn scores(&self, id: CandidateId) -> Option<&[f64]> {
        self.scores.get(id).map(Vec::as_slice)
    }

    /// A candidate's mean score over the dev examples, `None` for an unknown
    /// id. With zero examples the mean is defined as 0.
    pub fn mean(&self, id: CandidateId) -> Option<f64> {
        let scores = self.scores.get(id)?;
        if scores.is_empty() { Some(0.0) } else { Some(scores.iter().sum::<f64>() / scores.len() as f64) }
    }

    /// Number of candidates in the pool.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// Number of dev examples every candidate is scored on.
    pub fn n_examples(&self) -> usize {
        self.n_examples
    }

    /// For each example, the ids (ascending) of the candidates with the best
    /// score on it; all tied candidates are kept. Every front is empty when
    /// the pool is.
    pub fn fronts(&self) -> Vec<Vec<CandidateId>> {
        (0..self.n_examples)
            .map(|e| {
                let best = self.scores.iter().map(|s| s[e]).fold(f64::NEG_INFINITY, f64::max);
                (0..self.scores.len()).filter(|&id| self.scores[id][e] == best).collect()
            })
            .collect()
    }

    /// The candidates that lead on at least one example and are not
    /// dominated, each with the number of examples it leads on, by ascending
    /// id.
    ///
    /// B dominates A when B leads on every example A leads on. When two
    /// candidates lead on exactly the same examples, the earlier one is kept.
    /// Dominance is transitive, so every removed candidate is dominated by one
    /// that is kept.
    pub fn non_dominated(&self) -> Vec<(CandidateId, usize)> {
        let leads = self.leads();
        let on_front: Vec<CandidateId> = (0..leads.len()).filter(|&id| leads[id].iter().any(|&l| l)).collect();
        on_front
            .iter()
            .copied()
            .filter(|&a| {
                !on_front
                    .iter()
                    .any(|&b| b != a && is_subset(&leads[a], &leads[b]) && (b < a || !is_subset(&leads[b], &leads[a])))
            })
            .map(|id| (id, leads[id].iter().filter(|&&l| l).count()))
            .collect()
    }

    /// Samples a parent among the non-dominated candidates, with probability
    /// proportional to the number of examples each leads on. Returns `None`
    /// for an empty pool. With zero dev examples no candidate leads anywhere,
    /// and the best candidate by mean (the earliest) is returned instead.
    pub fn sample_parent(&self, rng: &mut ChaCha8Rng) -> Option<CandidateId> {
        let candidates = self.non_dominated();
        let total: usize = candidates.iter().map(|&(_, count)| count).sum();
        if total == 0 {
            return self.best();
        }
        let mut r = rng.random_range(0..total);
        for &(id, count) in &candidates {
            if r < count {
                return Some(id);
            }
            r -= count;
        }
        // Unreachable: `r < total` is the sum of the counts.
        self.best()
    }

    /// The candidate with the highest mean score, the earliest on ties;
    /// `None` for an empty pool.
    pub fn best(&self) -> Option<CandidateId> {
        let mut best: Option<(CandidateId, f64)> = None;
        for id in 0..self.scores.len() {
            let mean = self.mean(id).unwrap_or(0.0);
            if best.is_none_or(|(_, best_mean)| mean > best_mean) {
                best = Some((id, mean));
            }
        }
        best.map(|(id, _)| id)
    }

    /// Pairs `(a, b)` with `a < b` of non-dominated candidates where each
    /// leads on an example the other does not: their strengths are
    /// complementary, so merging them may combine both. Ordered by the number
    /// of examples the two lead on together (most first), then by ids.
    /// Whether a pair shares an ancestor to merge from is up to the caller.
    pub fn merge_pairs(&self) -> Vec<(CandidateId, CandidateId)> {
        let leads = self.leads();
        let ids: Vec<CandidateId> = self.non_dominated().into_iter().map(|(id, _)| id).collect();
        let mut pairs: Vec<(usize, CandidateId, CandidateId)> = Vec::new();
        for (i, &a) in ids.iter().enumerate() {
            for &b in &ids[i + 1..] {
                if is_subset(&leads[a], &leads[b]) || is_subset(&leads[b], &leads[a]) {
                    continue;
                }
                let union = leads[a].iter().zip(&leads[b]).filter(|&(&x, &y)| x || y).count();
                pairs.push((union, a, b));
            }
        }
        pairs.sort_by(|x, y| y.0.cmp(&x.0).then((x.1, x.2).cmp(&(y.1, y.2))));
        pairs.into_iter().map(|(_, a, b)| (a, b)).collect()
    }

    /// `leads[id][e]`: whether candidate `id` is on example `e`'s front.
    fn leads(&self) -> Vec<Vec<bool>> {
        let mut leads = vec![vec![false; self.n_examples]; self.scores.len()];
        for (e, front) in self.fronts().into_iter().enumerate() {
            for id in front {
                leads[id][e] = true;
            }
        }
        leads
    }
}

/// Whether every example set in `a` is also set in `b`.
fn is_subset(a: &[bool], b: &[bool]) -> bool {
    a.iter().zip(b).all(|(&x, &y)| !x || y)
}

/// Merges two descendants of a common ancestor, predictor by predictor
/// (GEPA's system-aware merge).
///
/// `ancestor`, `a` and `b` hold one value per predictor (e.g. its
/// instruction). For each predictor the merge takes the value a parent
/// changed relative to the ancestor; if both changed it, the value from the
/// parent with the higher mean score (`a` on ties or incomparable means);
/// if neither did, the ancestor's value.
///
/// Returns `None` when the slices differ in length, or when the merge would
/// equal `a` or `b`, since evaluating it would gain nothing.
pub fn merge_components<T: PartialEq + Clone>(
    ancestor: &[T],
    a: &[T],
    b: &[T],
    mean_a: f64,
    mean_b: f64,
) -> Option<Vec<T>> {
    if a.len() != ancestor.len() || b.len() != ancestor.len() {
        return None;
    }
    let merged: Vec<T> = ancestor
        .iter()
        .zip(a.iter().zip(b))
        .map(|(base, (va, vb))| match (va != base, vb != base) {
            (true, true) if mean_b > mean_a => vb.clone(),
            (true, _) => va.clone(),
            (false, true) => vb.clone(),
            (false, false) => base.clone(),
        })
        .collect();
    if merged.as_slice() == a || merged.as_slice() == b { None } else { Some(merged) }
}
