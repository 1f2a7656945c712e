//! Programs: predictors wired by a graph ([`graph`]) — stages in order, each
//! reading the example's inputs and the outputs of the stages before it, and
//! routers that send each input to one handler.

pub mod adapter;
pub mod artifact;
pub mod graph;
pub mod module;
pub mod predictor;
pub mod react;
pub mod signature;
pub mod tool;

use serde_json::{Map, Value};

use crate::lm::{ChatMessage, LmError, TokenUsage};
use graph::{Graph, Route, Stage};
use predictor::{PredictSettings, Predictor};

#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// Every predictor, in graph order; each has a unique dotted path as its name.
    pub predictors: Vec<Predictor>,
    /// How they are wired: stages and routers over indices into `predictors`.
    pub graph: Graph,
}

/// What one predictor saw and said during a run: the raw material of demos
/// and of reflection.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TraceStep {
    pub predictor: String,
    pub inputs: Map<String, Value>,
    /// The messages as rendered and sent (of the last attempt).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<ChatMessage>,
    /// The model's reply as written (of the last attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The parsed outputs; empty when the step failed.
    pub outputs: Map<String, Value>,
    /// Why the step failed: the reply did not parse, the prompt did not fit,
    /// or `max_tokens` cut the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The reply was cut by `max_tokens` before it was complete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

/// One run of the program on one example.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Every output field of every predictor, by name (when all succeeded).
    pub prediction: Option<Map<String, Value>>,
    pub trace: Vec<TraceStep>,
    pub stats: RunStats,
}

/// How a run went: why it failed, if it did, and what it cost.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RunStats {
    pub error: Option<String>,
    pub format_error: bool,
    /// The failing reply was cut by `max_tokens` before it was complete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
    /// Predictor calls whose first reply did not parse.
    pub format_retries: u32,
    pub usage: TokenUsage,
    pub lm_calls: u32,
    pub cache_hits: u32,
    /// Tool calls of react stages, and of those answered from the tool cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tool_calls: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tool_cache_hits: u32,
    /// The branch each router took, outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Program {
    /// The program as declared: each predictor with its signature's
    /// instructions and no demos, wired by `graph`.
    pub fn declared(
        predictors: &[graph::PredictorConfig],
        signatures: &indexmap::IndexMap<String, signature::SignatureConfig>,
        tools: &[tool::ToolSpec],
        graph: &Graph,
    ) -> Program {
        let predictors = predictors.iter().map(|p| graph::build_predictor(p, signatures, tools)).collect();
        Program { predictors, graph: graph.clone() }
    }

    /// Predictors run one after the other.
    pub fn sequence(predictors: Vec<Predictor>) -> Program {
        let graph = Graph::sequence(predictors.len());
        Program { predictors, graph }
    }

    /// The most predictor calls one run makes (without format retries): a
    /// stage one, a react stage its steps and the answer, a router its
    /// costliest branch. What projections and budget reservations count per example.
    pub fn calls_per_run(&self) -> usize {
        fn most(stages: &[Stage]) -> usize {
            stages
                .iter()
                .map(|stage| match stage {
                    Stage::Predict(_) => 1,
                    Stage::React(r) => r.max_steps + 1,
                    Stage::Router(r) => r.branches.iter().map(|b| most(&b.stages)).max().unwrap_or(0),
                })
                .sum()
        }
        most(&self.graph.stages).max(1)
    }

    /// The predictor at a dotted path.
    pub fn predictor(&self, path: &str) -> Option<&Predictor> {
        self.predictors.iter().find(|p| p.name == path)
    }

    /// Runs the stages in order, each router's one branch included. `Err` only when the LM fails; a reply that
    /// cannot be parsed is a failed run with the reason kept.
    pub async fn run(
        &self,
        settings: &PredictSettings,
        inputs: &Map<String, Value>,
        rollout: Option<u32>,
    ) -> Result<Run, LmError> {
        let mut run = Run::default();
        let mut known = inputs.clone();
        let mut prediction = Map::new();
        // The stages still to run, innermost branch last: a router pushes the
        // stages of the branch it picks.
        let mut pending: Vec<std::slice::Iter<'_, Stage>> = vec![self.graph.stages.iter()];
        while let Some(next) = pending.last_mut() {
            let Some(stage) = next.next() else {
                pending.pop();
                continue;
            };
            let predictor = match stage {
                Stage::Predict(i) => &self.predictors[*i],
                Stage::React(stage) => {
                    if !self.run_react(stage, settings, &mut known, &mut prediction, &mut run, rollout).await? {
                        return Ok(run);
                    }
                    continue;
                }
                Stage::Router(router) => {
                    let picked = router.value(&known).and_then(|value| {
                        router
                            .pick(&value)
                            .ok_or_else(|| format!("router `{}`: no branch for `{value}` and no default", router.path))
                    });
                    match picked {
                        Ok(branch) => {
                            let branch = &router.branches[branch];
                            run.stats.routes.push(Route { router: router.path.clone(), branch: branch.label.clone() });
                            pending.push(branch.stages.iter());
                        }
                        Err(reason) => {
                            run.stats.error = Some(reason);
                            return Ok(run);
                        }
                    }
                    continue;
                }
            };
            let mut step_inputs = Map::new();
            for field in &predictor.signature.inputs {
                match known.get(&field.name) {
                    Some(v) => {
                        step_inputs.insert(field.name.clone(), v.clone());
                    }
                    None => {
                        run.stats.error = Some(format!(
                            "predictor `{}` needs input `{}`, which is neither an example input nor an earlier output",
                            predictor.name, field.name
                        ));
                        return Ok(run);
                    }
                }
            }
            let call = predictor.call(settings, &step_inputs, rollout).await?;
            let stats = &mut run.stats;
            stats.usage.prompt_tokens += call.usage.prompt_tokens;
            stats.usage.completion_tokens += call.usage.completion_tokens;
            stats.lm_calls += call.lm_calls;
            stats.cache_hits += call.cache_hits;
            stats.format_retries += u32::from(call.format_retried);
            let Some(outputs) = call.outputs else {
                stats.error = call.error.as_ref().map(|e| format!("{}: {e}", predictor.name));
                stats.format_error = call.format_error;
                stats.cut = call.cut;
                run.trace.push(TraceStep {
                    predictor: predictor.name.clone(),
                    inputs: step_inputs,
                    messages: call.messages,
                    reply: call.reply,
                    outputs: Map::new(),
                    error: call.error,
                    cut: call.cut,
                });
                return Ok(run);
            };
            for (k, v) in &outputs {
                known.insert(k.clone(), v.clone());
                prediction.insert(k.clone(), v.clone());
            }
            run.trace.push(TraceStep {
                predictor: predictor.name.clone(),
                inputs: step_inputs,
                messages: call.messages,
                reply: call.reply,
                outputs,
                error: None,
                cut: false,
            });
        }
        run.prediction = Some(prediction);
        Ok(run)
    }

    /// Runs a react stage, adding its outputs to `known` and `prediction`;
    /// `false` when it failed (the reason in `run`).
    async fn run_react(
        &self,
        stage: &graph::ReactStage,
        settings: &PredictSettings,
        known: &mut Map<String, Value>,
        prediction: &mut Map<String, Value>,
        run: &mut Run,
        rollout: Option<u32>,
    ) -> Result<bool, LmError> {
        let (react, extract) = (&self.predictors[stage.react], &self.predictors[stage.extract]);
        let Some(tools) = settings.tools.as_deref() else {
            run.stats.error = Some(format!("`{}`: no tools were given to run it with", stage.path));
            return Ok(false);
        };
        let done = react::run(react, extract, tools, settings, known, stage.max_steps, rollout).await?;
        let stats = &mut run.stats;
        stats.usage.prompt_tokens += done.usage.prompt_tokens;
        stats.usage.completion_tokens += done.usage.completion_tokens;
        stats.lm_calls += done.lm_calls;
        stats.cache_hits += done.cache_hits;
        stats.format_retries += done.format_retries;
        stats.tool_calls += done.tool_calls;
        stats.tool_cache_hits += done.tool_cache_hits;
        run.trace.extend(done.trace);
        let Some(outputs) = done.outputs else {
            stats.error = Some(done.error.unwrap_or_else(|| format!("`{}` gave no outputs", stage.path)));
            stats.format_error = done.format_error;
            stats.cut = done.cut;
            return Ok(false);
        };
        for (k, v) in outputs {
            known.insert(k.clone(), v.clone());
            prediction.insert(k, v);
        }
        Ok(true)
    }

    pub fn demo_count(&self) -> usize {
        self.predictors.iter().map(|p| p.demos.len()).sum()
    }
}
