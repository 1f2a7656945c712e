//! The stages as library operations: each takes a typed request and returns
//! a typed outcome; `cli.rs` only builds requests and prints outcomes.
//! `compile` and `eval` are here; the weekly run's evaluation is in `run`,
//! its publishing in `publish`.

pub mod optimize;
pub mod publish;
pub mod run;

pub use publish::{PublishContext, PublishOutcome, PublishRequest};
pub use run::{EvaluateRequest, SavedRun};

/// `promptloop run`: the whole weekly loop for one pipeline.
pub struct RunRequest {
    pub pipeline: PathBuf,
    /// Discard the search's checkpoint instead of resuming from it.
    pub fresh: bool,
    pub optimizer: Option<crate::config::OptimizerKind>,
    /// Where the pull's window starts and ends; `None` skips the pull.
    pub pull: Option<(crate::logs::pull::Since, Option<chrono::DateTime<chrono::Utc>>)>,
    pub dry_run: bool,
    pub use_cache: bool,
    pub progress: bool,
    pub context: PublishContext,
}

pub struct RunOutcome {
    pub run: SavedRun,
    pub published: PublishOutcome,
}

/// Pull → evaluate against production → report → publish.
pub async fn run(request: RunRequest) -> Result<RunOutcome> {
    let config = PipelineConfig::load(&request.pipeline)?;
    let base = publish::base_branch(&config, &request.context);
    // Production is read from the base branch: bring it up to date first, and
    // find out now, not after the optimizer, if the remote cannot be reached.
    if !request.dry_run
        && let Some(token) = &request.context.github_token
    {
        let remote = crate::publish::git::Remote::new(config.publish.remote.clone(), Some(token.clone()));
        crate::publish::git::fetch(&config.root, &remote, &base, &publish::branch_name(&config.name))
            .context("cannot fetch the base branch before the run")?;
    }
    let saved = run::evaluate_run(&EvaluateRequest {
        pipeline: request.pipeline.clone(),
        optimizer: request.optimizer,
        pull: request.pull.clone(),
        base,
        remote: Some(config.publish.remote.clone()),
        use_cache: request.use_cache,
        progress: request.progress,
        fresh: request.fresh,
    })
    .await?;
    let published = publish::publish(&PublishRequest {
        pipeline: request.pipeline,
        dry_run: request.dry_run,
        context: request.context,
    })
    .await?;
    Ok(RunOutcome { run: saved, published })
}

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::config::{LmConfig, PipelineConfig, Provider, ResponseFormatStyle};
use crate::dataset::{Dataset, Split};
use crate::eval::{EvalContext, Evaluation, evaluate};
use crate::lm::cache::ResponseCache;
use crate::lm::local::{LocalEngine, LocalOptions};
use crate::lm::openai::{OpenAiClient, OpenAiConfig, SchemaStyle};
use crate::lm::{LanguageModel, Lm, UsageSummary};
use crate::metric;
use crate::program::artifact::{Artifact, DatasetProvenance, LmSettings, Provenance, Scores, SplitScore};
use crate::program::predictor::PredictSettings;

/// Builds the LM a pipeline names, behind the response cache in `state_dir`.
pub fn build_lm(config: &LmConfig, state_dir: &Path, use_cache: bool) -> Result<Lm> {
    let model: Arc<dyn LanguageModel> = match config.provider {
        Provider::Embedded => {
            let options = LocalOptions {
                threads: config.threads,
                constrained: config.constrained,
                prefix_cache_mb: config.prefix_cache_mb,
            };
            Arc::new(LocalEngine::load(Path::new(&config.model), options)?)
        }
        Provider::Openai => {
            let api_key = match &config.api_key_env {
                Some(var) => Some(std::env::var(var).map_err(|_| {
                    anyhow::anyhow!("the environment variable {var} (named by api_key_env in [lm]) is not set; export it or remove api_key_env")
                })?),
                None => None,
            };
            let schema_style = match config.response_format {
                ResponseFormatStyle::JsonSchema => SchemaStyle::OpenAi,
                ResponseFormatStyle::JsonObject => SchemaStyle::JsonObject,
                ResponseFormatStyle::None => SchemaStyle::None,
            };
            Arc::new(OpenAiClient::new(OpenAiConfig {
                base_url: config.base_url.clone().unwrap_or_default(),
                model: config.model.clone(),
                api_key,
                timeout_secs: config.timeout_secs,
                max_retries: config.max_retries,
                initial_backoff_ms: 500,
                max_backoff_ms: 20_000,
                schema_style,
            })?)
        }
    };
    let cache = if use_cache {
        let path = state_dir.join("cache.sqlite");
        Some(Arc::new(
            ResponseCache::open(&path).with_context(|| format!("cannot open the LM cache {}", path.display()))?,
        ))
    } else {
        None
    };
    Ok(Lm::new(model, cache, config.concurrency))
}

pub(crate) fn predict_settings(config: &LmConfig, lm: Lm, format: crate::config::AdapterFormat) -> PredictSettings {
    PredictSettings { lm, format, temperature: config.temperature, max_tokens: config.max_tokens, tools: None }
}

pub struct CompileRequest {
    pub pipeline: PathBuf,
    /// Where to write the artifact (default: `artifacts/<name>/program.json`).
    pub out: Option<PathBuf>,
    pub use_cache: bool,
    pub progress: bool,
    /// Discard the search's checkpoint instead of resuming from it.
    pub fresh: bool,
}

pub struct CompileOutcome {
    pub artifact: Artifact,
    pub artifact_path: PathBuf,
    pub baseline_test: Evaluation,
    pub compiled_test: Evaluation,
    /// LM use of the optimizer alone (bootstrapping and dev selection).
    pub compile_usage: UsageSummary,
    pub compile_secs: f64,
    /// LM use of the whole command.
    pub total_usage: UsageSummary,
    /// How the optimizer searched.
    pub search: crate::report::SearchSummary,
}

/// Optimizes the pipeline's program on train (selecting on dev), scores it and
/// the hand-written baseline on test, and writes the artifact.
pub async fn compile(request: &CompileRequest) -> Result<CompileOutcome> {
    let config = PipelineConfig::load(&request.pipeline)?;
    let dataset = Dataset::load(&config.dataset.path, &config.dataset.split)?;
    if dataset.train().is_empty() || dataset.test().is_empty() {
        bail!(
            "{}: the dataset has {} train and {} test examples; both must be non-empty to compile",
            config.dataset.path.display(),
            dataset.train().len(),
            dataset.test().len()
        );
    }
    check_outputs_scored(&config, &dataset)?;
    let models = optimize::models(&config, request.use_cache, request.progress)?;
    let lm = models.task.clone();
    let eval_ctx = models.eval.clone();
    let baseline = config.baseline();
    // compile starts from the program as declared: it is what the scores compare with.
    let start = crate::optimize::Start { production: baseline.clone(), declared: baseline.clone() };
    let optimizer = crate::optimize::build(&config.optimizer);

    let started = Instant::now();
    let before = lm.usage();
    tracing::info!(pipeline = %config.name, train = dataset.train().len(), dev = dataset.dev().len(), "optimizing");
    let optimize::OptimizerRun { optimized, search, checkpoint } =
        optimize::run_optimizer(&config, &dataset, &start, &*optimizer, &models, request.fresh).await?;
    let compile_secs = started.elapsed().as_secs_f64();
    let compile_usage = lm.usage().since(&before);

    // Test is read here for the first time, after the optimizer has returned.
    let baseline_test = evaluate(&baseline, dataset.test(), &eval_ctx, "test: baseline")
        .await
        .context("the LM failed while scoring")?;
    let compiled_test = if optimized.improved() {
        evaluate(&optimized.program, dataset.test(), &eval_ctx, "test: compiled")
            .await
            .context("the LM failed while scoring")?
    } else {
        baseline_test.clone()
    };
    for (evaluation, which) in [(&baseline_test, "the declared program"), (&compiled_test, "the compiled program")] {
        check_predictions(evaluation, &format!("{which} on test"))?;
    }

    let scores = Scores {
        metric: metric::name(&config.metric),
        dev: (!dataset.dev().is_empty()).then(|| SplitScore {
            n: dataset.dev().len(),
            baseline: optimized.production_dev.unwrap_or(0.0),
            compiled: optimized.dev_score.unwrap_or(0.0),
        }),
        test: Some(SplitScore {
            n: dataset.test().len(),
            baseline: baseline_test.summary.mean,
            compiled: compiled_test.summary.mean,
        }),
    };
    let artifact = build_artifact(&config, &lm, &dataset, &optimized, scores);
    let artifact_path = request.out.clone().unwrap_or_else(|| config.artifact_path());
    artifact.save(&artifact_path)?;
    checkpoint.finish();
    Ok(CompileOutcome {
        artifact,
        artifact_path,
        baseline_test,
        compiled_test,
        compile_usage,
        compile_secs,
        total_usage: lm.usage(),
        search,
    })
}

/// The artifact for an optimized program: its LM settings (no secrets), provenance and scores.
pub(crate) fn build_artifact(
    config: &PipelineConfig,
    lm: &Lm,
    dataset: &Dataset,
    optimized: &crate::optimize::Optimized,
    scores: Scores,
) -> Artifact {
    let lm_settings = LmSettings {
        model: lm.description().clone(),
        temperature: config.lm.temperature,
        max_tokens: config.lm.max_tokens,
        adapter: config.adapter,
    };
    let provenance = Provenance {
        tool: format!("promptloop {}", env!("CARGO_PKG_VERSION")),
        seed: config.seed,
        optimizer: serde_json::to_value(&config.optimizer).expect("optimizer settings serialize"),
        dataset: DatasetProvenance {
            path: relative_to(&config.dataset.path, &config.root),
            sha256: dataset.content_hash.clone(),
            examples: dataset.len(),
            train: dataset.train().len(),
            dev: dataset.dev().len(),
            test: dataset.test().len(),
        },
        candidates: optimized.candidates.clone(),
    };
    Artifact::from_program(&optimized.program, &config.name, lm_settings, provenance, scores)
}

/// Which program `eval` scores.
pub enum EvalTarget {
    /// The hand-written program from the pipeline file.
    Baseline,
    /// A compiled artifact.
    Artifact(PathBuf),
    /// Predictions another system recorded (production, a peer tool), one
    /// JSON line per example; see [`crate::eval::recorded`].
    Predictions(PathBuf),
}

pub struct EvalRequest {
    pub pipeline: PathBuf,
    pub target: EvalTarget,
    pub split: Split,
    /// Score only the first `limit` examples of the split.
    pub limit: Option<usize>,
    pub use_cache: bool,
    pub progress: bool,
    /// Decode without enforcing the reply's shape (embedded model), to measure
    /// what constrained decoding changes.
    pub unconstrained: bool,
}

pub struct EvalOutcome {
    pub evaluation: Evaluation,
    pub usage: UsageSummary,
    pub program_label: String,
}

pub async fn eval(request: &EvalRequest) -> Result<EvalOutcome> {
    let mut config = PipelineConfig::load(&request.pipeline)?;
    if request.unconstrained {
        config.lm.constrained = false;
    }
    let dataset = Dataset::load(&config.dataset.path, &config.dataset.split)?;
    if dataset.split(request.split).is_empty() {
        bail!(
            "{}: the {} split is empty ({} examples in all); pick another --split or change [dataset] split",
            config.dataset.path.display(),
            request.split.name(),
            dataset.len()
        );
    }
    check_outputs_scored(&config, &dataset)?;
    let examples = dataset.split(request.split);
    let examples = &examples[..request.limit.unwrap_or(examples.len()).min(examples.len())];
    let (program, label) = match &request.target {
        EvalTarget::Baseline => (config.baseline(), "hand-written baseline".to_string()),
        EvalTarget::Artifact(path) => {
            (Artifact::load(path)?.program_on(&config.baseline()), path.display().to_string())
        }
        EvalTarget::Predictions(path) => return eval_recorded(&config, &dataset, examples, path, request).await,
    };
    let lm = build_lm(&config.lm, &config.state_dir(), request.use_cache)?;
    let ctx = eval_context(&config, lm.clone(), request.use_cache, request.progress)?;
    let evaluation = evaluate(&program, examples, &ctx, &format!("{}: {label}", request.split.name()))
        .await
        .context("the LM failed while scoring")?;
    check_predictions(&evaluation, &format!("{label} on {}", request.split.name()))?;
    Ok(EvalOutcome { evaluation, usage: lm.usage(), program_label: label })
}

/// `eval --predictions`: the metric scores what the file recorded; only a
/// judge metric calls an LM. An id the dataset does not have is an error (the
/// file belongs to another dataset, or the ids were rewritten), and so is a
/// file with no line for the split.
async fn eval_recorded(
    config: &PipelineConfig,
    dataset: &Dataset,
    examples: &[crate::dataset::Example],
    path: &Path,
    request: &EvalRequest,
) -> Result<EvalOutcome> {
    let predictions = crate::eval::recorded::RecordedPredictions::load(path)?;
    let known: std::collections::HashSet<&str> = dataset.iter().map(|e| e.id.as_str()).collect();
    let unknown = predictions.unknown_ids(&known);
    if let Some(first) = unknown.first() {
        bail!(
            "{}: {} of its ids are not in {} (the first: `{first}`); predictions must use the dataset's example ids",
            path.display(),
            unknown.len(),
            config.dataset.path.display()
        );
    }
    let meter = Arc::new(crate::lm::budget::Meter::new());
    let metric = metric_of(config, &meter, request.use_cache)?;
    // A file with nothing for this split was meant for another one; a file
    // that says every prediction was lost is a score of 0, honestly earned.
    if !examples.iter().any(|e| predictions.by_id.contains_key(&e.id)) {
        bail!(
            "{}: no line for any of the {} examples of the {} split; pick the split the file was made for (--split)",
            path.display(),
            examples.len(),
            request.split.name()
        );
    }
    let evaluation =
        crate::eval::evaluate_recorded(&predictions, examples, metric.as_ref(), config.lm.concurrency).await;
    let label = format!("predictions in {}", path.display());
    Ok(EvalOutcome { evaluation, usage: meter.usage().total().into(), program_label: label })
}

/// The metric scores fields the dataset's examples must carry: a dataset whose
/// outputs are named otherwise would score 0 everywhere, which is an error, not a score.
pub(crate) fn check_outputs_scored(config: &PipelineConfig, dataset: &Dataset) -> Result<()> {
    let all = || dataset.iter();
    for field in config.metric.fields() {
        if !all().any(|e| e.outputs.contains_key(field)) {
            let mut found: Vec<&str> = all().flat_map(|e| e.outputs.keys().map(String::as_str)).collect();
            found.sort_unstable();
            found.dedup();
            bail!(
                "{}: no example has the output `{field}` that [metric] scores (the examples' outputs are {}); rename the field in the dataset or in the signature and [metric]",
                config.dataset.path.display(),
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
                }
            );
        }
    }
    Ok(())
}

/// Every prediction failing is an error with its first reason, not a score of 0.
pub(crate) fn check_predictions(evaluation: &crate::eval::Evaluation, what: &str) -> Result<()> {
    let s = &evaluation.summary;
    if s.n > 0 && s.failed == s.n {
        let reason = evaluation
            .results
            .iter()
            .flat_map(|r| r.trace.iter())
            .find_map(|step| step.error.clone())
            .or_else(|| evaluation.results.iter().find_map(|r| r.stats.error.clone()))
            .unwrap_or_else(|| "no reason recorded".into());
        let cut = if s.cut > 0 { format!(", {} cut at max_tokens = {}", s.cut, s.max_tokens) } else { String::new() };
        bail!(
            "every prediction of {what} failed ({} of {}, {} unparseable{cut}); the first: {reason}",
            s.failed,
            s.n,
            s.format_errors
        );
    }
    Ok(())
}

/// How the pipeline's program is scored: its LM and adapter, its metric. A
/// judge's LM records into the task LM's meter, in the judge role.
pub(crate) fn eval_context(config: &PipelineConfig, lm: Lm, use_cache: bool, progress: bool) -> Result<EvalContext> {
    let metric = metric_of(config, lm.meter(), use_cache)?;
    let mut settings = predict_settings(&config.lm, lm, config.adapter);
    settings.tools = tools(config, use_cache)?;
    Ok(EvalContext { settings, metric, concurrency: config.lm.concurrency, progress })
}

/// The pipeline's metric; a judge's LM calls are counted on `meter` as the judge's.
fn metric_of(
    config: &PipelineConfig,
    meter: &Arc<crate::lm::budget::Meter>,
    use_cache: bool,
) -> Result<Arc<dyn crate::metric::Metric>> {
    let state = config.state_dir();
    let judge_lm = |table: &crate::config::LmConfig| -> Result<Lm> {
        let prices = crate::lm::budget::Prices { input: table.input_price, output: table.output_price };
        Ok(build_lm(table, &state, use_cache)
            .with_context(|| format!("{}: [metric.lm]", config.file.display()))?
            .metered(meter.clone(), crate::lm::budget::LmRole::Judge, prices))
    };
    metric::build_with(&config.metric, &judge_lm)
}

/// The pipeline's tools, with the tool cache (`.promptloop/tools.sqlite`)
/// unless `use_cache` is off; `None` when it declares none.
pub(crate) fn tools(
    config: &PipelineConfig,
    use_cache: bool,
) -> Result<Option<std::sync::Arc<crate::program::tool::Tools>>> {
    if config.tools.is_empty() {
        return Ok(None);
    }
    let cache = if use_cache {
        let path = config.state_dir().join("tools.sqlite");
        Some(crate::program::tool::ToolCache::open(&path).with_context(|| format!("cannot open {}", path.display()))?)
    } else {
        None
    };
    let tools = crate::program::tool::Tools::new(config.tools.clone(), cache)
        .map_err(|m| anyhow::anyhow!("{}: [tools]: {m}", config.file.display()))?;
    Ok(Some(std::sync::Arc::new(tools)))
}

pub(crate) fn relative_to(path: &Path, root: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().replace('\\', "/")
}
