//! Optimizers: `(program, train, dev, metric, lm) -> program`.
//!
//! Architecture invariant: nothing in this module is handed the test split;
//! [`optimize`] takes train and dev only.

pub mod bootstrap;
pub mod evaluate;

use crate::config::{OptimizerConfig, OptimizerKind};
use crate::dataset::Example;
use crate::lm::LmError;
use crate::program::Program;
use bootstrap::{BootstrapSettings, OptimizeContext, Optimized};

pub async fn optimize(
    student: &Program,
    train: &[Example],
    dev: &[Example],
    ctx: &OptimizeContext,
    config: &OptimizerConfig,
    seed: u64,
) -> Result<Optimized, LmError> {
    let settings = BootstrapSettings {
        max_bootstrapped_demos: config.max_bootstrapped_demos,
        max_labeled_demos: config.max_labeled_demos,
        max_rounds: config.max_rounds,
        metric_threshold: config.metric_threshold,
    };
    match config.kind {
        OptimizerKind::None => Ok(Optimized { program: student.clone(), candidates: Vec::new(), dev_score: None }),
        OptimizerKind::BootstrapFewShot => bootstrap::bootstrap_once(student, train, ctx, &settings, seed).await,
        OptimizerKind::BootstrapRandomSearch => {
            bootstrap::bootstrap_random_search(student, train, dev, ctx, &settings, config.num_candidates, seed).await
        }
    }
}
