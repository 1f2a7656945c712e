//! Per-slice optimization: a handler behind a router learns only from the
//! examples routed to it, and keeps the state that scored best on the dev
//! examples routed to it.
//!
//! An example's slice is known before any LM runs: the detector's reading of
//! its inputs, or its reference value of the field a router routes by (see
//! [`crate::program::graph::Router::branch_of_example`]). Every optimizer draws
//! a predictor's labeled demos and instruction drafts from
//! [`examples_for`] that predictor; bootstrapped demos come from traces, which
//! only pass through the handler an example was routed to. After the search,
//! [`compose`] puts together, handler by handler, the candidate best on that
//! handler's dev slice (the branch each dev example actually took), keeping
//! production's handler where the slice is too small to learn from.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::scorer::FullScore;
use crate::dataset::Example;
use crate::eval::ExampleResult;
use crate::program::Program;
use crate::program::graph::Route;

/// The examples that reach predictor `index` of `program`: all of them for a
/// predictor outside every router.
pub fn examples_for<'a>(program: &Program, index: usize, examples: &'a [Example]) -> Cow<'a, [Example]> {
    if program.graph.branches_of(index).is_empty() {
        return Cow::Borrowed(examples);
    }
    Cow::Owned(examples.iter().filter(|e| program.graph.reaches(index, e)).cloned().collect())
}

/// One branch of a router as the search saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    pub router: String,
    pub branch: String,
    /// The predictors of the branch (dotted paths).
    pub predictors: Vec<String>,
    /// Train examples routed to it.
    pub train: usize,
    /// Dev examples production routed to it.
    pub dev: usize,
    /// Optimized; `false` when the slice was too small and the handler kept as it is.
    pub optimized: bool,
    /// Production's and the proposal's dev mean on the slice, when it has dev examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_dev: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposed_dev: Option<f64>,
    /// The candidate the handler's state was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// The indices of the predictors under one branch, with the router's path and the label.
pub fn branches(program: &Program) -> Vec<(String, String, Vec<usize>)> {
    let mut out = Vec::new();
    for router in program.graph.routers() {
        for (b, branch) in router.branches.iter().enumerate() {
            let members: Vec<usize> = (0..program.predictors.len())
                .filter(|&i| {
                    let under = program.graph.branches_of(i);
                    under.iter().any(|(r, bi)| r.path == router.path && *bi == b)
                })
                .collect();
            out.push((router.path.clone(), branch.label.clone(), members));
        }
    }
    out
}

/// The mean over the results that went through `router`'s branch `label`.
pub fn branch_mean(results: &[ExampleResult], router: &str, label: &str) -> (usize, Option<f64>) {
    let route = Route { router: router.to_string(), branch: label.to_string() };
    let on: Vec<f64> = results.iter().filter(|r| r.stats.routes.contains(&route)).map(|r| r.score).collect();
    let n = on.len();
    (n, (n > 0).then(|| on.iter().sum::<f64>() / n as f64))
}

/// The program made of `best` with each handler taken from the candidate
/// that scored best on the dev examples routed to it (production's on a tie),
/// and production's handler wherever fewer than `min_train` train examples
/// (or no dev example) reach it. Returns the program and one [`Slice`] per branch.
pub fn compose(
    production: &FullScore,
    best: &FullScore,
    candidates: &[FullScore],
    train: &[Example],
    min_train: usize,
) -> (Program, Vec<Slice>) {
    let mut program = best.program.clone();
    let mut slices = Vec::new();
    for (router, label, members) in branches(&best.program) {
        let train_n = members.first().map_or(0, |&i| train.iter().filter(|e| best.program.graph.reaches(i, e)).count());
        let (dev_n, production_dev) = branch_mean(&production.results, &router, &label);
        let enough = train_n >= min_train && dev_n > 0;
        let mut slice = Slice {
            router: router.clone(),
            branch: label.clone(),
            predictors: members.iter().map(|&i| best.program.predictors[i].name.clone()).collect(),
            train: train_n,
            dev: dev_n,
            optimized: enough,
            production_dev,
            proposed_dev: None,
            from: None,
        };
        let source = if enough {
            let mut chosen: (&FullScore, f64) = (production, production_dev.unwrap_or(0.0));
            for c in candidates {
                if let (_, Some(m)) = branch_mean(&c.results, &router, &label)
                    && m > chosen.1
                {
                    chosen = (c, m);
                }
            }
            slice.proposed_dev = Some(chosen.1);
            chosen.0
        } else {
            slice.proposed_dev = production_dev;
            production
        };
        slice.from = Some(source.name.clone());
        for &i in &members {
            let name = &program.predictors[i].name;
            if let Some(p) = source.program.predictor(name) {
                program.predictors[i] = p.clone();
            }
        }
        slices.push(slice);
    }
    (program, slices)
}
