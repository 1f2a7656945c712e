//! Evaluation: run a program over examples concurrently, score each one with
//! the metric and keep its trace; [`compare`] pairs two evaluations, [`gate`]
//! decides on the comparison.

pub mod compare;
pub mod gate;
pub mod recorded;

use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::dataset::Example;
use crate::lm::LmError;
use crate::metric::Metric;
use crate::program::predictor::PredictSettings;
use crate::program::{Program, RunStats, TraceStep};

/// Everything evaluation needs besides the program and the examples.
#[derive(Clone)]
pub struct EvalContext {
    pub settings: PredictSettings,
    pub metric: Arc<dyn Metric>,
    /// Examples in flight at once (the LM handle limits calls separately).
    pub concurrency: usize,
    /// Draw a progress bar (only ever on a terminal).
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ExampleResult {
    pub example_id: String,
    pub prediction: Option<Map<String, Value>>,
    pub score: f64,
    pub feedback: String,
    /// The metric failed on this example (scored 0, `feedback` says why).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metric_error: bool,
    #[serde(flatten)]
    pub stats: RunStats,
    /// What each predictor was sent and replied: the material of reflection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<TraceStep>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EvalSummary {
    pub n: usize,
    /// Mean score; failed predictions count as 0.
    pub mean: f64,
    /// Predictions that failed (LM error or unparseable reply).
    pub failed: usize,
    /// Of those, replies that could not be parsed.
    pub format_errors: usize,
    /// Of those, replies `max_tokens` cut before they were complete.
    #[serde(default)]
    pub cut: usize,
    /// The `max_tokens` the replies were asked with.
    #[serde(default)]
    pub max_tokens: u32,
    /// Predictions the metric could not score (counted as 0).
    #[serde(default)]
    pub metric_errors: usize,
    /// Replies that did not parse at first and were asked again in the other format.
    pub format_retries: u64,
    pub lm_calls: u64,
    pub cache_hits: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub wall_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub summary: EvalSummary,
    pub results: Vec<ExampleResult>,
}

impl EvalSummary {
    /// `12 of 162 replies cut at max_tokens = 16; raise [lm] max_tokens`,
    /// when any reply was cut.
    pub fn cut_text(&self) -> Option<String> {
        (self.cut > 0).then(|| cut_text(self.cut, self.n, self.max_tokens))
    }

    /// `14 failed predictions (2 unparseable replies); 3 replies re-asked in
    /// the other format`, and the cut replies when there were any.
    pub fn failures_text(&self) -> String {
        let mut text = format!(
            "{} failed predictions ({} unparseable replies); {} replies re-asked in the other format",
            self.failed, self.format_errors, self.format_retries
        );
        if let Some(cut) = self.cut_text() {
            text.push_str("; ");
            text.push_str(&cut);
        }
        text
    }
}

/// `12 of 162 replies cut at max_tokens = 16; raise [lm] max_tokens`.
pub fn cut_text(cut: usize, n: usize, max_tokens: u32) -> String {
    let replies = if n == 1 { "reply" } else { "replies" };
    format!("{cut} of {n} {replies} cut at max_tokens = {max_tokens}; raise [lm] max_tokens")
}

impl Evaluation {
    pub fn scores(&self) -> Vec<f64> {
        self.results.iter().map(|r| r.score).collect()
    }
}

/// Scores `program` on `examples`. Stops at the first LM failure (after the
/// client's retries): an outage is an error, not a row of zeros.
pub async fn evaluate(
    program: &Program,
    examples: &[Example],
    ctx: &EvalContext,
    label: &str,
) -> Result<Evaluation, LmError> {
    let started = Instant::now();
    let bar = progress_bar(ctx.progress, examples.len(), label);
    // The futures are built first: a stream mapping borrowed examples through a
    // closure would not be `Send` for every lifetime, which optimizers (async traits) need.
    let runs: Vec<_> = examples
        .iter()
        .map(|example| {
            let bar = bar.clone();
            async move {
                let result = evaluate_one(program, example, ctx).await;
                bar.inc(1);
                result
            }
        })
        .collect();
    let results: Vec<ExampleResult> = futures::stream::iter(runs)
        .buffered(ctx.concurrency.max(1))
        .try_collect()
        .await
        .inspect_err(|_| bar.abandon())?;
    bar.finish_and_clear();
    Ok(summarize(results, ctx.settings.max_tokens, started))
}

/// Scores predictions another system recorded ([`recorded`]) with the
/// metric, as [`evaluate`] scores a program's: an example the file has no
/// line for, or a line with an `error`, is a failed prediction scored 0.
/// No LM runs except the metric's own (a judge).
pub async fn evaluate_recorded(
    predictions: &recorded::RecordedPredictions,
    examples: &[Example],
    metric: &dyn Metric,
    concurrency: usize,
) -> Evaluation {
    let started = Instant::now();
    let runs: Vec<_> = examples
        .iter()
        .map(|example| async move {
            let mut stats = RunStats::default();
            let (prediction, score, feedback, metric_error) = match predictions.by_id.get(&example.id) {
                Some(recorded::Recorded::Outputs(outputs)) => {
                    let (score, feedback, metric_error) = score_with(metric, example, outputs).await;
                    (Some(outputs.clone()), score, feedback, metric_error)
                }
                Some(recorded::Recorded::Failed { reason, format_error }) => {
                    stats.error = Some(reason.clone());
                    stats.format_error = *format_error;
                    (None, 0.0, reason.clone(), false)
                }
                None => {
                    let reason = format!("no prediction for `{}` in {}", example.id, predictions.path.display());
                    stats.error = Some(reason.clone());
                    (None, 0.0, reason, false)
                }
            };
            ExampleResult {
                example_id: example.id.clone(),
                prediction,
                score,
                feedback,
                metric_error,
                stats,
                trace: Vec::new(),
            }
        })
        .collect();
    let results: Vec<ExampleResult> = futures::stream::iter(runs).buffered(concurrency.max(1)).collect().await;
    summarize(results, 0, started)
}

fn summarize(results: Vec<ExampleResult>, max_tokens: u32, started: Instant) -> Evaluation {
    let mut summary = EvalSummary { n: results.len(), max_tokens, ..Default::default() };
    for r in &results {
        let stats = &r.stats;
        summary.mean += r.score;
        summary.failed += usize::from(stats.error.is_some());
        summary.format_errors += usize::from(stats.format_error);
        summary.cut += usize::from(stats.cut);
        summary.metric_errors += usize::from(r.metric_error);
        summary.format_retries += u64::from(stats.format_retries);
        summary.lm_calls += u64::from(stats.lm_calls);
        summary.cache_hits += u64::from(stats.cache_hits);
        summary.prompt_tokens += stats.usage.prompt_tokens;
        summary.completion_tokens += stats.usage.completion_tokens;
    }
    if summary.n > 0 {
        summary.mean /= summary.n as f64;
    }
    summary.wall_secs = started.elapsed().as_secs_f64();
    Evaluation { summary, results }
}

async fn evaluate_one(program: &Program, example: &Example, ctx: &EvalContext) -> Result<ExampleResult, LmError> {
    let run = program.run(&ctx.settings, &example.inputs, None).await?;
    let (score, feedback, metric_error) = match &run.prediction {
        Some(prediction) => score_with(ctx.metric.as_ref(), example, prediction).await,
        None => (0.0, run.stats.error.clone().unwrap_or_default(), false),
    };
    Ok(ExampleResult {
        example_id: example.id.clone(),
        prediction: run.prediction,
        score,
        feedback,
        metric_error,
        stats: run.stats,
        trace: run.trace,
    })
}

/// The metric's score in [0, 1] and feedback, or 0 with why the metric failed
/// (the last flag).
async fn score_with(metric: &dyn Metric, example: &Example, prediction: &Map<String, Value>) -> (f64, String, bool) {
    match metric.score(example, prediction).await {
        Ok(s) => (s.value.clamp(0.0, 1.0), s.feedback, false),
        Err(e) => (0.0, format!("the metric failed: {e}"), true),
    }
}

fn progress_bar(enabled: bool, len: usize, label: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}
