//! A Tree-structured Parzen Estimator over categorical parameters.
//!
//! MIPROv2 searches over discrete choices: for every predictor, which
//! instruction candidate and which demo-set candidate to use. Each choice is a
//! categorical dimension with its own number of options, and a trial's score
//! is a metric mean where higher is better. This module proposes the next
//! point to evaluate, following Bergstra et al. (2011), "Algorithms for
//! Hyper-Parameter Optimization":
//!
//! 1. Until `n_startup` trials have been observed, points are drawn uniformly
//!    at random, so the model starts from an unbiased sample.
//! 2. Afterwards the observed trials are split into a "good" group (the top
//!    `gamma` fraction by score) and a "bad" group (the rest). Each group gets
//!    a per-dimension categorical density `l(x)` (good) and `g(x)` (bad):
//!    choice counts plus a small uniform prior, normalized.
//! 3. Candidates are drawn from `l`, and the one maximizing
//!    `sum_d log l_d(x_d) - log g_d(x_d)` is suggested. Maximizing `l/g` is
//!    equivalent to maximizing expected improvement under the TPE model.
//!
//! One departure from the paper: a candidate that has not been evaluated yet
//! is always preferred over one that has, whatever their `l/g`. On a small
//! categorical space plain TPE soon concentrates its good density on a few
//! points and spends most of its remaining trials re-evaluating them. With
//! deterministic evaluation that only repeats a known score; with minibatch
//! evaluation it refines an estimate that a full evaluation of the best
//! points settles anyway. Trying an untried point near the good ones is the
//! better use of a trial. An evaluated point is suggested again only when
//! every drawn candidate has been evaluated, e.g. in an exhausted space.
//!
//! Everything is deterministic given the random generator passed in, and the
//! suggestion depends on scores only through their ranking, so a state rebuilt
//! from a checkpoint suggests exactly what the original would have.

use std::collections::HashSet;
use std::fmt;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The search space: one categorical dimension per entry, holding its number
/// of choices. A point assigns each dimension a choice index in
/// `0..dims[d]`. Every dimension needs at least one choice; a space with no
/// dimensions is allowed and has exactly one point, the empty one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    pub dims: Vec<usize>,
}

impl Space {
    /// Checks that `point` belongs to this space.
    pub fn validate(&self, point: &[usize]) -> Result<(), TpeError> {
        if point.len() != self.dims.len() {
            return Err(TpeError::WrongLength { expected: self.dims.len(), got: point.len() });
        }
        for (dim, (&index, &choices)) in point.iter().zip(&self.dims).enumerate() {
            if index >= choices {
                return Err(TpeError::OutOfRange { dim, index, choices });
            }
        }
        Ok(())
    }
}

/// One evaluated point and its score (higher is better).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub point: Vec<usize>,
    pub score: f64,
}

/// Knobs of the estimator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TpeSettings {
    /// Trials drawn uniformly at random before the model is used. At least
    /// one random trial is always made, since the model needs data.
    pub n_startup: usize,
    /// Fraction of trials, by rank, that form the "good" group: the top
    /// `ceil(gamma * n)` trials, at least one. Must be in `(0, 1]`.
    pub gamma: f64,
    /// Candidates drawn from the good density per suggestion; the best of them
    /// by `l/g` is returned. More candidates means more exploitation. At
    /// least 1.
    pub n_ei_candidates: usize,
    /// Pseudo-count mass spread uniformly over a dimension's choices in both
    /// densities, so unseen choices keep a nonzero probability. Must be finite
    /// and positive.
    pub prior_weight: f64,
}

impl Default for TpeSettings {
    /// Ten random trials (a common default for TPE), the top quarter as the
    /// good group, 24 candidates per suggestion and a prior worth one
    /// observation.
    fn default() -> Self {
        TpeSettings { n_startup: 10, gamma: 0.25, n_ei_candidates: 24, prior_weight: 1.0 }
    }
}

impl TpeSettings {
    fn validate(&self) -> Result<(), TpeError> {
        if !(self.gamma > 0.0 && self.gamma <= 1.0) {
            return Err(TpeError::InvalidSetting { name: "gamma", reason: "must be in (0, 1]" });
        }
        if self.n_ei_candidates == 0 {
            return Err(TpeError::InvalidSetting { name: "n_ei_candidates", reason: "must be at least 1" });
        }
        if !(self.prior_weight.is_finite() && self.prior_weight > 0.0) {
            return Err(TpeError::InvalidSetting { name: "prior_weight", reason: "must be finite and positive" });
        }
        Ok(())
    }
}

/// Why a space, setting, point or score was rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum TpeError {
    /// Dimension `dim` of the space has no choices.
    EmptyDimension { dim: usize },
    /// A setting is outside its valid range.
    InvalidSetting { name: &'static str, reason: &'static str },
    /// A point has a different number of coordinates than the space has dimensions.
    WrongLength { expected: usize, got: usize },
    /// A point's coordinate is not a valid choice for its dimension.
    OutOfRange { dim: usize, index: usize, choices: usize },
    /// A score is NaN or infinite; such scores carry no ranking information.
    NonFiniteScore { score: f64 },
}

impl fmt::Display for TpeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpeError::EmptyDimension { dim } => write!(f, "dimension {dim} has no choices"),
            TpeError::InvalidSetting { name, reason } => write!(f, "invalid TPE setting {name}: {reason}"),
            TpeError::WrongLength { expected, got } => {
                write!(f, "point has {got} coordinates, the space has {expected} dimensions")
            }
            TpeError::OutOfRange { dim, index, choices } => {
                write!(f, "choice {index} is out of range for dimension {dim} with {choices} choices")
            }
            TpeError::NonFiniteScore { score } => write!(f, "score {score} is not finite"),
        }
    }
}

impl std::error::Error for TpeError {}

/// The estimator: the search space, its settings and every observed trial.
///
/// Serializes as `{space, settings, trials}`; deserializing validates all of
/// it exactly like [`Tpe::from_trials`], so a checkpoint resumes with the same
/// suggestions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TpeRepr")]
pub struct Tpe {
    space: Space,
    settings: TpeSettings,
    trials: Vec<Trial>,
}

/// The unvalidated serialized form of [`Tpe`].
#[derive(Deserialize)]
struct TpeRepr {
    space: Space,
    settings: TpeSettings,
    trials: Vec<Trial>,
}

impl TryFrom<TpeRepr> for Tpe {
    type Error = TpeError;

    fn try_from(repr: TpeRepr) -> Result<Self, Self::Error> {
        Tpe::from_trials(repr.space, repr.settings, repr.trials)
    }
}

/// Retries for a startup draw that hits an already evaluated point. Bounded so
/// a nearly exhausted space costs little; the last draw is used regardless.
const STARTUP_RETRIES: usize = 32;

impl Tpe {
    /// An estimator with no observations. Fails if a dimension has no choices
    /// or a setting is out of range.
    pub fn new(space: Space, settings: TpeSettings) -> Result<Tpe, TpeError> {
        if let Some(dim) = space.dims.iter().position(|&choices| choices == 0) {
            return Err(TpeError::EmptyDimension { dim });
        }
        settings.validate()?;
        Ok(Tpe { space, settings, trials: Vec::new() })
    }

    /// Rebuilds an estimator from previously observed trials, in their
    /// original order (order breaks ties between equal scores). Every trial is
    /// validated as by [`Tpe::observe`].
    pub fn from_trials(space: Space, settings: TpeSettings, trials: Vec<Trial>) -> Result<Tpe, TpeError> {
        let mut tpe = Tpe::new(space, settings)?;
        for trial in trials {
            tpe.observe(trial.point, trial.score)?;
        }
        Ok(tpe)
    }

    /// Records the score of an evaluated point. The point must belong to the
    /// space and the score must be finite (NaN and infinities are rejected
    /// and leave the history unchanged). The same point may be observed more
    /// than once, e.g. when it is re-evaluated on another minibatch.
    pub fn observe(&mut self, point: Vec<usize>, score: f64) -> Result<(), TpeError> {
        self.space.validate(&point)?;
        if !score.is_finite() {
            return Err(TpeError::NonFiniteScore { score });
        }
        self.trials.push(Trial { point, score });
        Ok(())
    }

    /// The next point to evaluate, always a valid point of the space.
    ///
    /// During the startup phase it is drawn uniformly at random (redrawn a
    /// few times if it was already evaluated). Afterwards it is the drawn
    /// candidate with the highest `l/g` ratio among those not yet evaluated,
    /// or among all candidates if each was evaluated already (so an exhausted
    /// space still yields a point). Equal ratios go to the earlier candidate.
    pub fn suggest(&self, rng: &mut ChaCha8Rng) -> Vec<usize> {
        let tried: HashSet<&[usize]> = self.trials.iter().map(|t| t.point.as_slice()).collect();
        if self.trials.len() < self.settings.n_startup.max(1) {
            return self.suggest_random(&tried, rng);
        }
        let (good, bad) = self.split();
        let l = self.densities(&good);
        let g = self.densities(&bad);

        let mut best: Option<(Vec<usize>, f64, bool)> = None;
        for _ in 0..self.settings.n_ei_candidates {
            let point: Vec<usize> = l.iter().map(|density| sample_categorical(density, rng)).collect();
            let acquisition: f64 = point.iter().enumerate().map(|(d, &x)| l[d][x].ln() - g[d][x].ln()).sum();
            let untried = !tried.contains(point.as_slice());
            let better = match &best {
                None => true,
                Some((_, best_acq, best_untried)) if untried == *best_untried => acquisition > *best_acq,
                Some((_, _, best_untried)) => untried && !best_untried,
            };
            if better {
                best = Some((point, acquisition, untried));
            }
        }
        // n_ei_candidates >= 1 is enforced by validation, so `best` is set.
        best.map(|(point, _, _)| point).unwrap_or_else(|| self.suggest_random(&tried, rng))
    }

    /// The highest-scoring trial, earliest on ties; `None` before any observation.
    pub fn best(&self) -> Option<&Trial> {
        self.trials.iter().reduce(|best, t| if t.score > best.score { t } else { best })
    }

    /// Every observed trial, in observation order.
    pub fn trials(&self) -> &[Trial] {
        &self.trials
    }

    pub fn space(&self) -> &Space {
        &self.space
    }

    pub fn settings(&self) -> &TpeSettings {
        &self.settings
    }

    /// A uniform random point, redrawn a bounded number of times while it
    /// hits an evaluated point. Single-choice dimensions consume no randomness.
    fn suggest_random(&self, tried: &HashSet<&[usize]>, rng: &mut ChaCha8Rng) -> Vec<usize> {
        let mut point = self.random_point(rng);
        for _ in 0..STARTUP_RETRIES {
            if !tried.contains(point.as_slice()) {
                break;
            }
            point = self.random_point(rng);
        }
        point
    }

    fn random_point(&self, rng: &mut ChaCha8Rng) -> Vec<usize> {
        self.space.dims.iter().map(|&choices| if choices > 1 { rng.random_range(0..choices) } else { 0 }).collect()
    }

    /// Splits trials into the good group (top `ceil(gamma * n)`, at least one)
    /// and the rest. Sorting is stable, so equal scores rank the earlier trial
    /// first and the split is deterministic.
    fn split(&self) -> (Vec<&Trial>, Vec<&Trial>) {
        let mut ranked: Vec<&Trial> = self.trials.iter().collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        let n = ranked.len();
        let n_good = ((self.settings.gamma * n as f64).ceil() as usize).clamp(1.min(n), n);
        let bad = ranked.split_off(n_good);
        (ranked, bad)
    }

    /// Per-dimension categorical densities of a group: choice counts plus
    /// `prior_weight` spread uniformly over the choices, normalized. Every
    /// probability is strictly positive, so logarithms are finite.
    fn densities(&self, group: &[&Trial]) -> Vec<Vec<f64>> {
        let prior = self.settings.prior_weight;
        let total = group.len() as f64 + prior;
        self.space
            .dims
            .iter()
            .enumerate()
            .map(|(d, &choices)| {
                let mut weights = vec![prior / choices as f64; choices];
                for trial in group {
                    weights[trial.point[d]] += 1.0;
                }
                weights.iter_mut().for_each(|w| *w /= total);
                weights
            })
            .collect()
    }
}

/// Draws an index with probability proportional to `weights` (all positive).
/// A single-choice density consumes no randomness.
fn sample_categorical(weights: &[f64], rng: &mut ChaCha8Rng) -> usize {
    if weights.len() <= 1 {
        return 0;
    }
    let total: f64 = weights.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (i, &w) in weights.iter().enumerate() {
        if r < w {
            return i;
        }
        r -= w;
    }
    // Rounding can leave `r` marginally above the last weight.
    weights.len() - 1
}
