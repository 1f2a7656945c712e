//! `pipelines/<name>.toml` → [`PipelineConfig`], validated. Every error names
//! the file, the key and what to write instead.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;

pub use crate::dataset::SplitFractions;
use crate::lm::local::constrain::validate_schema;
pub use crate::logs::signals::SignalsConfig;
pub use crate::program::adapter::AdapterFormat;
pub use crate::program::graph::PredictorConfig;
pub use crate::program::module::Module;
pub use crate::program::signature::SignatureConfig;
use crate::program::signature::{Field, FieldType, Signature};

/// A pipeline as the rest of the program sees it: paths resolved, types parsed.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub name: String,
    pub description: String,
    pub seed: u64,
    /// The file it was read from.
    pub file: PathBuf,
    /// The directory relative paths in the file are resolved against: the
    /// repository root when the file sits in `pipelines/`, else its directory.
    pub root: PathBuf,
    pub lm: LmConfig,
    pub adapter: AdapterFormat,
    pub dataset: DatasetConfig,
    pub signatures: IndexMap<String, SignatureConfig>,
    /// Every predictor of the program, named by its dotted path, in graph order.
    pub predictors: Vec<PredictorConfig>,
    /// How the predictors are wired: stages and routers over `predictors`.
    pub graph: crate::program::graph::Graph,
    /// `[tools.*]`: what react stages may call.
    pub tools: Vec<crate::program::tool::ToolSpec>,
    /// The fields the program writes whatever branch runs (an intermediate
    /// field, read only by a later stage, is not one): what a reference holds.
    pub outputs: Vec<String>,
    pub metric: MetricConfig,
    pub optimizer: OptimizerConfig,
    /// `[budget]`: the most LM use a run may take.
    pub budget: BudgetConfig,
    /// When the weekly workflow runs it: 5-field POSIX cron, as in GitHub Actions.
    pub schedule: Option<crate::schedule::CronSchedule>,
    /// `[source]`: where production logs come from (needed by `pull` only).
    pub source: Option<SourceConfig>,
    pub anonymize: AnonymizeConfig,
    pub signals: SignalsConfig,
    pub dedup: DedupConfig,
    pub sample: SampleConfig,
    /// `[gate]`: when a candidate is proposed for production.
    pub gate: crate::eval::gate::GateConfig,
    /// `[publish]`: the bot branch, the pull request and the Slack message.
    pub publish: PublishConfig,
}

/// `[publish]`: where a run's result goes. Tokens are named by environment
/// variable, never written here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// The branch production lives on [default: the workflow's base ref, else `main`].
    pub base: Option<String>,
    /// The git remote to push to.
    pub remote: String,
    /// `owner/name` [default: GITHUB_REPOSITORY, else read from the remote's URL].
    pub repository: Option<String>,
    /// GitHub's REST API [default: GITHUB_API_URL, else https://api.github.com];
    /// GitHub Enterprise: `https://HOST/api/v3`.
    pub api_url: Option<String>,
    /// The variable holding a token with `contents: write` and `pull-requests: write`.
    pub token_env: String,
    /// Labels put on the pull request.
    pub labels: Vec<String>,
    pub slack: SlackConfig,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            base: None,
            remote: "origin".into(),
            repository: None,
            api_url: None,
            token_env: "GITHUB_TOKEN".into(),
            labels: vec!["promptloop".into()],
            slack: SlackConfig::default(),
        }
    }
}

/// `[publish.slack]`: a bot token and channel, or an incoming webhook.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// The channel chat.postMessage posts to (with a bot token).
    pub channel: Option<String>,
    /// The variable holding a bot token (`xoxb-…`, scope `chat:write`).
    pub token_env: String,
    /// The variable holding an incoming-webhook URL (used when there is no bot token).
    pub webhook_env: String,
    /// Slack's Web API [default: https://slack.com/api/].
    pub api_url: String,
}

impl Default for SlackConfig {
    fn default() -> Self {
        SlackConfig {
            channel: None,
            token_env: "SLACK_BOT_TOKEN".into(),
            webhook_env: "SLACK_WEBHOOK_URL".into(),
            api_url: "https://slack.com/api/".into(),
        }
    }
}

/// `[source]`: where the logs are, their shape, and the limits of one line.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub location: SourceLocation,
    pub format: FormatConfig,
    /// A longer line is skipped and reported, never held in memory whole.
    pub max_line_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceLocation {
    /// Files and glob patterns, resolved against the repository root; `.gz`
    /// (or any gzip content) is decompressed while reading.
    Files {
        patterns: Vec<String>,
    },
    Http(HttpSource),
    S3(S3Source),
}

/// An HTTP(S) endpoint that answers with JSONL.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSource {
    pub url: String,
    /// The environment variable holding the bearer token (never the token).
    pub token_env: Option<String>,
    /// Query parameters that carry the window (RFC 3339), when the endpoint takes them.
    pub since_param: Option<String>,
    pub until_param: Option<String>,
    pub paging: Paging,
    pub timeout_secs: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Paging {
    /// One response holds everything.
    None,
    /// `Link: <url>; rel="next"` (RFC 8288), as GitHub pages.
    Link,
    /// The next page's cursor comes in a response header and goes back as a query parameter.
    Cursor { param: String, header: String },
}

/// An S3-compatible object store: every object under `prefix`.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Source {
    pub bucket: String,
    pub prefix: String,
    /// For S3-compatible stores (MinIO, R2, ...); AWS when absent.
    pub endpoint: Option<String>,
    pub region: String,
    /// Environment variables holding the credentials.
    pub access_key_env: String,
    pub secret_key_env: String,
    /// Temporary credentials (an assumed role, GitHub's OIDC) also need a
    /// session token; used when this variable is set.
    pub session_token_env: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// promptloop's own record, one JSON object a line (see `logs::record`).
    Native,
    /// OpenAI chat-completion request/response logs.
    Openai,
    /// OpenTelemetry GenAI spans exported as OTLP JSON.
    Otel,
}

/// How a log shape maps onto the program's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatConfig {
    pub format: LogFormat,
    /// Chat-shaped logs: the input field the user's message fills.
    pub input_field: String,
    /// The program's output fields (a chat reply is read into these).
    pub output_fields: Vec<String>,
}

/// `[anonymize]`: patterns the pipeline adds to the built-in ones.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnonymizeConfig {
    pub patterns: Vec<CustomPattern>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    /// The placeholder's type, upper case: `ORDER_ID` gives `<ORDER_ID_1>`.
    pub name: String,
    pub regex: String,
}

/// `[dedup]`: exact and MinHash/LSH near-duplicate detection.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Estimated Jaccard similarity at or above which two messages are near-duplicates.
    #[serde(default = "default_dedup_threshold")]
    pub threshold: f64,
    /// A record this similar to a test example never enters train or dev (and
    /// the other way round); at most `threshold`.
    #[serde(default = "default_leak_threshold")]
    pub leak_threshold: f64,
    #[serde(default = "default_num_perm")]
    pub num_perm: usize,
    /// Shingle length in characters.
    #[serde(default = "default_shingle")]
    pub shingle: usize,
}

fn default_dedup_threshold() -> f64 {
    0.8
}
fn default_leak_threshold() -> f64 {
    0.6
}
fn default_num_perm() -> usize {
    128
}
fn default_shingle() -> usize {
    5
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            threshold: default_dedup_threshold(),
            leak_threshold: default_leak_threshold(),
            num_perm: default_num_perm(),
            shingle: default_shingle(),
        }
    }
}

/// `[sample]`: how many new examples one pull may add, per signal.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Seed of the sample [default: the pipeline's seed].
    #[serde(default)]
    pub seed: Option<u64>,
    /// At most this many new examples per pull.
    #[serde(default = "default_sample_total")]
    pub total: usize,
    /// At most this many per signal (`routine`, `urgent`, `escalating`).
    #[serde(default = "default_caps")]
    pub caps: std::collections::BTreeMap<String, usize>,
    /// At most this many records without a reference go to the inbox per pull.
    #[serde(default = "default_inbox_total")]
    pub inbox_total: usize,
}

fn default_sample_total() -> usize {
    300
}
fn default_caps() -> std::collections::BTreeMap<String, usize> {
    [("routine", 200), ("urgent", 100), ("escalating", 100)].into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
fn default_inbox_total() -> usize {
    100
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self { seed: None, total: default_sample_total(), caps: default_caps(), inbox_total: default_inbox_total() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Embedded,
    Openai,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormatStyle {
    /// OpenAI's `{"type": "json_schema", ...}`.
    JsonSchema,
    /// llama.cpp's `{"type": "json_object", "schema": ...}`.
    JsonObject,
    None,
}

/// `[lm]`: which model answers, and how.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmConfig {
    pub provider: Provider,
    /// Embedded: path of the GGUF file. OpenAI: the model name.
    pub model: String,
    #[serde(default)]
    pub base_url: Option<String>,
    /// The environment variable that holds the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default = "default_response_format")]
    pub response_format: ResponseFormatStyle,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Embedded: CPU threads (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Embedded: constrain decoding to the reply's shape (default on).
    #[serde(default = "yes")]
    pub constrained: bool,
    /// Embedded: memory for the attention state of recent prompt prefixes, in
    /// MiB (0 turns prefix reuse off).
    #[serde(default = "default_prefix_cache_mb")]
    pub prefix_cache_mb: usize,
    /// Dollars per million prompt tokens, for the report's cost line.
    #[serde(default)]
    pub input_price: Option<f64>,
    /// Dollars per million completion tokens.
    #[serde(default)]
    pub output_price: Option<f64>,
}

fn default_prefix_cache_mb() -> usize {
    256
}

fn default_max_tokens() -> u32 {
    256
}
fn default_response_format() -> ResponseFormatStyle {
    ResponseFormatStyle::JsonSchema
}
fn default_concurrency() -> usize {
    4
}
fn default_timeout() -> f64 {
    120.0
}
fn default_retries() -> u32 {
    4
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatasetConfig {
    pub path: PathBuf,
    pub split: SplitFractions,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricConfig {
    /// Mean over `fields` of normalized exact match.
    ExactMatch { fields: Vec<String> },
    /// SQuAD-style token F1 on one free-text field.
    TokenF1 { field: String },
    /// A JSON value (an object, or a list of objects matched one to one)
    /// compared key by key: F1 over the matched items.
    JsonMatch {
        field: String,
        /// The field's JSON Schema from the signature, when it has one: the
        /// keys it requires and their types.
        schema: Option<Value>,
        /// Weight per key (default 1 each).
        weights: IndexMap<String, f64>,
    },
    /// An LM grades the prediction against a rubric.
    Judge {
        /// The output field judged; none: the whole prediction.
        field: Option<String>,
        rubric: String,
        scale: JudgeScale,
        /// `[metric.lm]`: the judge's own model.
        #[serde(skip)]
        lm: Box<LmConfig>,
    },
    /// A program reads the example and the prediction as JSON on stdin and
    /// writes `{"score": x, "feedback": "..."}` on stdout.
    Command {
        /// The output field it scores, which must then be present; none: any.
        field: Option<String>,
        /// argv, run without a shell; a relative program path resolves from `dir`.
        command: Vec<String>,
        /// Where it runs: the pipeline's root (the repository root).
        dir: PathBuf,
        timeout_secs: f64,
    },
    /// The weighted mean of other metrics.
    Weighted { parts: Vec<MetricPart> },
}

/// One part of a weighted metric.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricPart {
    /// What its feedback is headed with (default: the metric's name).
    pub name: Option<String>,
    pub weight: f64,
    pub metric: MetricConfig,
}

/// The scale a judge answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum JudgeScale {
    /// A number from 0 to 1.
    #[serde(rename = "0-1")]
    Unit,
    /// An integer from 1 to 5, mapped to 0, 0.25, ..., 1.
    #[serde(rename = "1-5")]
    FivePoint,
}

impl MetricConfig {
    /// The output fields the metric scores: every prediction must carry them,
    /// and some example of the dataset must.
    pub fn fields(&self) -> Vec<&str> {
        let mut fields: Vec<&str> = match self {
            MetricConfig::ExactMatch { fields } => fields.iter().map(String::as_str).collect(),
            MetricConfig::TokenF1 { field } | MetricConfig::JsonMatch { field, .. } => vec![field.as_str()],
            MetricConfig::Judge { field, .. } | MetricConfig::Command { field, .. } => {
                field.iter().map(String::as_str).collect()
            }
            MetricConfig::Weighted { parts } => parts.iter().flat_map(|p| p.metric.fields()).collect(),
        };
        let mut seen = std::collections::HashSet::new();
        fields.retain(|f| seen.insert(*f));
        fields
    }

    /// The judges' LM tables, nested parts included.
    pub fn judge_lms(&self) -> Vec<&LmConfig> {
        match self {
            MetricConfig::Judge { lm, .. } => vec![lm],
            MetricConfig::Weighted { parts } => parts.iter().flat_map(|p| p.metric.judge_lms()).collect(),
            _ => Vec::new(),
        }
    }
}

/// The longest a metric command may be given per example: an hour.
pub const MAX_METRIC_COMMAND_SECS: f64 = 3600.0;
/// A metric command's time limit unless `timeout_secs` says otherwise.
pub const DEFAULT_METRIC_COMMAND_SECS: f64 = 30.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Keep production's program as it is.
    None,
    /// One bootstrapped demo set per predictor.
    BootstrapFewShot,
    /// Label-covering and bootstrapped demo sets, raced on dev minibatches.
    BootstrapRandomSearch,
    /// Instructions and demo sets searched jointly with a Parzen estimator.
    MiproV2,
    /// Reflective evolution of instructions and demo sets on a per-example Pareto front.
    Gepa,
}

impl OptimizerKind {
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::None => "none",
            OptimizerKind::BootstrapFewShot => "bootstrap_few_shot",
            OptimizerKind::BootstrapRandomSearch => "bootstrap_random_search",
            OptimizerKind::MiproV2 => "mipro_v2",
            OptimizerKind::Gepa => "gepa",
        }
    }
}

/// `[optimizer.mipro_v2]`: MIPROv2's settings. `auto` picks the numbers
/// below unless they are set.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MiproConfig {
    #[serde(default = "default_auto")]
    pub auto: MiproAuto,
    /// Instruction candidates per predictor (production's and the declared one included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_instructions: Option<usize>,
    /// Search trials, each scored on one minibatch of dev.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_trials: Option<usize>,
    /// Dev examples per trial.
    #[serde(default = "default_minibatch")]
    pub minibatch_size: usize,
    /// Every this many trials, the best combination so far is scored on all of dev.
    #[serde(default = "default_full_eval_steps")]
    pub full_eval_steps: usize,
    /// Ask the proposer LM for instructions (besides the drafts written from the data).
    #[serde(default = "yes")]
    pub lm_proposals: bool,
}

impl MiproConfig {
    fn is_default(&self) -> bool {
        *self == MiproConfig::default()
    }
}

impl Default for MiproConfig {
    fn default() -> Self {
        MiproConfig {
            auto: default_auto(),
            num_instructions: None,
            num_trials: None,
            minibatch_size: default_minibatch(),
            full_eval_steps: default_full_eval_steps(),
            lm_proposals: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MiproAuto {
    Light,
    Medium,
    Heavy,
}

fn default_auto() -> MiproAuto {
    MiproAuto::Light
}
fn default_minibatch() -> usize {
    25
}
fn default_full_eval_steps() -> usize {
    5
}

/// `[budget]`: the most a run may use, in all and per role. Unset limits are
/// no limit. The run sets aside what scoring both programs on dev and test
/// takes; the optimizer gets the rest and stops when it is spent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dollars: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<crate::lm::budget::Budget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<crate::lm::budget::Budget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposer: Option<crate::lm::budget::Budget>,
}

impl BudgetConfig {
    pub fn total(&self) -> crate::lm::budget::Budget {
        crate::lm::budget::Budget {
            max_calls: self.max_calls,
            max_tokens: self.max_tokens,
            max_dollars: self.max_dollars,
        }
    }

    /// The limits per role that are set.
    pub fn roles(&self) -> Vec<(crate::lm::budget::LmRole, crate::lm::budget::Budget)> {
        use crate::lm::budget::LmRole;
        [(LmRole::Task, self.task), (LmRole::Teacher, self.teacher), (LmRole::Proposer, self.proposer)]
            .into_iter()
            .filter_map(|(role, budget)| budget.map(|b| (role, b)))
            .collect()
    }

    pub fn is_unlimited(&self) -> bool {
        self.total().is_unlimited() && self.roles().iter().all(|(_, b)| b.is_unlimited())
    }
}

/// `[optimizer]`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    #[serde(default = "default_bootstrapped")]
    pub max_bootstrapped_demos: usize,
    #[serde(default = "default_labeled")]
    pub max_labeled_demos: usize,
    #[serde(default = "default_rounds")]
    pub max_rounds: usize,
    /// Random search: candidate programs besides the three fixed ones
    /// (zero-shot, labeled only, bootstrapped in order).
    #[serde(default = "default_candidates")]
    pub num_candidates: usize,
    /// A trace becomes a demo when its score reaches this.
    #[serde(default = "default_threshold")]
    pub metric_threshold: f64,
    /// Bootstrap demos with another model (e.g. a larger one).
    #[serde(default, skip_serializing)]
    pub teacher: Option<LmConfig>,
    /// The model that writes instructions and reflects on failures (in
    /// production, a strong hosted model); the task LM unless set.
    #[serde(default, skip_serializing)]
    pub proposer: Option<LmConfig>,
    #[serde(default, skip_serializing_if = "MiproConfig::is_default")]
    pub mipro_v2: MiproConfig,
    #[serde(default, skip_serializing_if = "GepaConfig::is_default")]
    pub gepa: GepaConfig,
    /// A handler behind a router is optimized only when at least this many
    /// train examples are routed to it; otherwise it is kept as it is.
    #[serde(default = "default_min_slice", skip_serializing_if = "is_default_min_slice")]
    pub min_slice_examples: usize,
}

fn default_min_slice() -> usize {
    10
}
fn is_default_min_slice(n: &usize) -> bool {
    *n == default_min_slice()
}

/// `[optimizer.gepa]`: GEPA's settings.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GepaConfig {
    /// Mutation rounds: light 12, medium 30, heavy 60, unless `iterations` or
    /// `max_metric_calls` is set (then the rounds go on until that budget).
    #[serde(default = "default_auto")]
    pub auto: MiproAuto,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
    /// The most example evaluations (metric calls) the search may run, dev and train together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_metric_calls: Option<u64>,
    /// Training examples a mutation reflects on, and is accepted on.
    #[serde(default = "default_reflection_minibatch")]
    pub minibatch_size: usize,
    /// Ask the proposer LM to reflect (besides the reflection written from the failures' data).
    #[serde(default = "yes")]
    pub lm_reflection: bool,
    /// Merge candidates that improved different predictors.
    #[serde(default = "yes")]
    pub merge: bool,
}

fn default_reflection_minibatch() -> usize {
    4
}

impl GepaConfig {
    fn is_default(&self) -> bool {
        *self == GepaConfig::default()
    }

    /// The most mutation rounds: `iterations`; else, with `max_metric_calls`,
    /// as many as that budget allows (a round that runs costs at least one
    /// evaluation); else `auto`'s.
    pub fn iterations(&self) -> usize {
        match (self.iterations, self.max_metric_calls) {
            (Some(i), _) => i,
            (None, Some(calls)) => usize::try_from(calls).unwrap_or(usize::MAX),
            (None, None) => match self.auto {
                MiproAuto::Light => 12,
                MiproAuto::Medium => 30,
                MiproAuto::Heavy => 60,
            },
        }
    }
}

impl Default for GepaConfig {
    fn default() -> Self {
        GepaConfig {
            auto: default_auto(),
            iterations: None,
            max_metric_calls: None,
            minibatch_size: default_reflection_minibatch(),
            lm_reflection: true,
            merge: true,
        }
    }
}

fn default_bootstrapped() -> usize {
    4
}
fn default_labeled() -> usize {
    16
}
fn default_rounds() -> usize {
    1
}
fn default_candidates() -> usize {
    8
}
fn default_threshold() -> f64 {
    1.0
}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    schedule: Option<String>,
    lm: LmConfig,
    #[serde(default)]
    adapter: RawAdapter,
    dataset: RawDataset,
    signatures: IndexMap<String, RawSignature>,
    program: RawProgram,
    /// `[tools.<name>]`: what react stages may call.
    #[serde(default)]
    tools: IndexMap<String, crate::program::tool::RawTool>,
    metric: RawMetric,
    optimizer: OptimizerConfig,
    #[serde(default)]
    budget: BudgetConfig,
    #[serde(default)]
    source: Option<RawSource>,
    #[serde(default)]
    anonymize: RawAnonymize,
    #[serde(default)]
    signals: SignalsConfig,
    #[serde(default)]
    dedup: DedupConfig,
    #[serde(default)]
    sample: SampleConfig,
    #[serde(default)]
    gate: crate::eval::gate::GateConfig,
    #[serde(default)]
    publish: PublishConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: String,
    #[serde(default = "default_log_format")]
    format: LogFormat,
    #[serde(default)]
    input_field: Option<String>,
    #[serde(default = "default_max_line_bytes")]
    max_line_bytes: usize,
    // files
    #[serde(default)]
    paths: Vec<String>,
    // http
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    since_param: Option<String>,
    #[serde(default)]
    until_param: Option<String>,
    #[serde(default)]
    paging: Option<String>,
    #[serde(default)]
    cursor_param: Option<String>,
    #[serde(default)]
    cursor_header: Option<String>,
    #[serde(default)]
    timeout_secs: Option<f64>,
    // s3
    #[serde(default)]
    bucket: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    access_key_env: Option<String>,
    #[serde(default)]
    secret_key_env: Option<String>,
    #[serde(default)]
    session_token_env: Option<String>,
}

fn default_log_format() -> LogFormat {
    LogFormat::Native
}
fn default_max_line_bytes() -> usize {
    1 << 20
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAnonymize {
    #[serde(default)]
    patterns: Vec<CustomPattern>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdapter {
    format: AdapterFormat,
}

impl Default for RawAdapter {
    fn default() -> Self {
        Self { format: AdapterFormat::Chat }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    path: PathBuf,
    #[serde(default)]
    split: SplitFractions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    instructions: String,
    inputs: IndexMap<String, RawField>,
    outputs: IndexMap<String, RawField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    values: Option<Vec<String>>,
    #[serde(default)]
    schema: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProgram {
    /// Predictors in sequence: the short form of `stages` without routers.
    #[serde(default)]
    predictors: Vec<RawPredictor>,
    #[serde(default)]
    stages: Vec<crate::program::graph::StageDecl>,
    /// The fields a stage may read besides earlier outputs [default: any field no stage writes].
    #[serde(default)]
    inputs: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPredictor {
    name: String,
    signature: String,
    #[serde(default = "default_module")]
    module: Module,
}

fn default_module() -> Module {
    Module::Predict
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    kind: String,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    field: Option<String>,
    // json_match
    #[serde(default)]
    weights: Option<IndexMap<String, f64>>,
    // judge
    #[serde(default)]
    rubric: Option<String>,
    #[serde(default)]
    scale: Option<String>,
    #[serde(default)]
    lm: Option<LmConfig>,
    // command
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    timeout_secs: Option<f64>,
    // weighted, and its parts
    #[serde(default)]
    parts: Vec<RawMetric>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    weight: Option<f64>,
}

const METRIC_KINDS: &str = "exact_match, token_f1, json_match, judge, command or weighted";

/// `[metric]` (or one of its `[[metric.parts]]`, at `key`) checked and
/// resolved; errors are `(key, message)`.
fn parse_metric(
    raw: RawMetric,
    key: &str,
    root: &Path,
    output_type: &dyn Fn(&str) -> Option<FieldType>,
) -> std::result::Result<MetricConfig, (String, String)> {
    let at = |sub: &str| format!("{key}.{sub}");
    let fail = |k: String, m: String| Err((k, m));
    let kind = raw.kind.as_str();
    // Settings that belong to other kinds are refused rather than ignored.
    let set: [(&str, bool, &[&str]); 9] = [
        ("fields", !raw.fields.is_empty(), &["exact_match"]),
        ("field", raw.field.is_some(), &["exact_match", "token_f1", "json_match", "judge", "command"]),
        ("weights", raw.weights.is_some(), &["json_match"]),
        ("rubric", raw.rubric.is_some(), &["judge"]),
        ("scale", raw.scale.is_some(), &["judge"]),
        ("lm", raw.lm.is_some(), &["judge"]),
        ("command", raw.command.is_some(), &["command"]),
        ("timeout_secs", raw.timeout_secs.is_some(), &["command"]),
        ("parts", !raw.parts.is_empty(), &["weighted"]),
    ];
    let known = ["exact_match", "token_f1", "json_match", "judge", "command", "weighted"];
    if !known.contains(&kind) {
        return fail(at("kind"), format!("unknown metric `{kind}`; use {METRIC_KINDS}"));
    }
    for (name, is_set) in [("name", raw.name.is_some()), ("weight", raw.weight.is_some())] {
        if is_set {
            return fail(
                at(name),
                format!("`{name}` belongs to the parts of a weighted metric ([[metric.parts]]); remove it here"),
            );
        }
    }
    for (name, is_set, kinds) in set {
        if is_set && !kinds.contains(&kind) {
            return fail(
                at(name),
                format!(
                    "`{name}` is not a setting of kind = \"{kind}\" (it belongs to {}); remove it",
                    kinds.join(", ")
                ),
            );
        }
    }
    let need_field = |example: &str| -> std::result::Result<String, (String, String)> {
        match &raw.field {
            Some(f) if !f.trim().is_empty() => Ok(f.clone()),
            _ => Err((at("field"), format!("{kind} needs the output field it scores, e.g. field = \"{example}\""))),
        }
    };
    Ok(match kind {
        "exact_match" => {
            let fields = if raw.fields.is_empty() { raw.field.into_iter().collect() } else { raw.fields };
            if fields.is_empty() {
                return fail(
                    at("fields"),
                    "exact_match needs the output fields to compare, e.g. fields = [\"label\"]".into(),
                );
            }
            MetricConfig::ExactMatch { fields }
        }
        "token_f1" => MetricConfig::TokenF1 { field: need_field("answer")? },
        "json_match" => {
            let field = need_field("action_items")?;
            let schema = match output_type(&field) {
                Some(FieldType::Json { schema }) => Some(schema),
                Some(FieldType::List { items }) => match *items {
                    FieldType::Json { schema } => Some(serde_json::json!({"type": "array", "items": schema})),
                    _ => None,
                },
                _ => None,
            };
            let weights = raw.weights.unwrap_or_default();
            for (k, w) in &weights {
                if !(w.is_finite() && *w > 0.0) {
                    return fail(
                        at(&format!("weights.{k}")),
                        format!("weight {w} must be a number above 0; leave the key out for the default 1"),
                    );
                }
            }
            MetricConfig::JsonMatch { field, schema, weights }
        }
        "judge" => {
            let rubric = raw.rubric.unwrap_or_default();
            if rubric.trim().is_empty() {
                return fail(at("rubric"), "a judge needs the rubric it grades by, e.g. rubric = \"Score 1 when the reply answers the question and cites the policy\"".into());
            }
            let scale = match raw.scale.as_deref() {
                None | Some("0-1") => JudgeScale::Unit,
                Some("1-5") => JudgeScale::FivePoint,
                Some(other) => {
                    return fail(at("scale"), format!("unknown scale `{other}`; use \"0-1\" (the default) or \"1-5\""));
                }
            };
            let Some(mut lm) = raw.lm else {
                return fail(
                    at("lm"),
                    format!("a judge needs its own model: add a [{key}.lm] table, shaped like [lm]"),
                );
            };
            let lm_key = at("lm");
            validate_lm(&lm, &lm_key).map_err(|m| (lm_key.clone(), m))?;
            if lm.provider == Provider::Embedded {
                lm.model = root.join(&lm.model).to_string_lossy().into_owned();
            }
            MetricConfig::Judge { field: raw.field, rubric, scale, lm: Box::new(lm) }
        }
        "command" => {
            let command = raw.command.unwrap_or_default();
            if command.first().is_none_or(|p| p.trim().is_empty()) {
                return fail(
                    at("command"),
                    "command needs the program and its arguments, e.g. command = [\"python3\", \"scripts/rubric.py\"]"
                        .into(),
                );
            }
            let timeout_secs = raw.timeout_secs.unwrap_or(DEFAULT_METRIC_COMMAND_SECS);
            if !(timeout_secs > 0.0 && timeout_secs <= MAX_METRIC_COMMAND_SECS) {
                return fail(
                    at("timeout_secs"),
                    format!(
                        "timeout_secs = {timeout_secs} is outside (0, {MAX_METRIC_COMMAND_SECS}] (seconds per example); leave it out for {DEFAULT_METRIC_COMMAND_SECS}"
                    ),
                );
            }
            MetricConfig::Command { field: raw.field, command, dir: root.to_path_buf(), timeout_secs }
        }
        _ => {
            if raw.parts.is_empty() {
                return fail(
                    at("parts"),
                    format!(
                        "weighted needs its parts: one [[{key}.parts]] table per metric, each with a weight and a kind"
                    ),
                );
            }
            let mut parts = Vec::new();
            for (i, mut part) in raw.parts.into_iter().enumerate() {
                let part_key = format!("{key}.parts[{i}]");
                if part.kind == "weighted" {
                    return fail(
                        format!("{part_key}.kind"),
                        "a part cannot itself be weighted; list its parts here instead".into(),
                    );
                }
                let weight = part.weight.take();
                let name = part.name.take();
                let weight = match weight {
                    Some(w) if w.is_finite() && w > 0.0 => w,
                    Some(w) => {
                        return fail(format!("{part_key}.weight"), format!("weight {w} must be a number above 0"));
                    }
                    None => {
                        return fail(
                            format!("{part_key}.weight"),
                            "each part needs a weight above 0, e.g. weight = 1.0".into(),
                        );
                    }
                };
                let metric = parse_metric(part, &part_key, root, output_type)?;
                parts.push(MetricPart { name, weight, metric });
            }
            MetricConfig::Weighted { parts }
        }
    })
}

/// The largest pipeline file read: a few kilobytes is typical.
pub const MAX_PIPELINE_BYTES: u64 = 1024 * 1024;

/// A pipeline file's text: a regular file (a device, a pipe or a directory
/// named `.toml` is refused before it is read) of at most
/// [`MAX_PIPELINE_BYTES`].
fn read_pipeline_text(file: &Path) -> Result<String> {
    use std::io::Read;
    let shown = file.display();
    let opened = std::fs::File::open(file).with_context(|| format!("cannot read pipeline file {shown}"))?;
    let metadata = opened.metadata().with_context(|| format!("cannot read pipeline file {shown}"))?;
    if !metadata.is_file() {
        bail!("{shown} is not a regular file; a pipeline is a TOML file, `pipelines/<name>.toml`");
    }
    let mut bytes = Vec::new();
    opened
        .take(MAX_PIPELINE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read pipeline file {shown}"))?;
    if bytes.len() as u64 > MAX_PIPELINE_BYTES {
        bail!(
            "{shown} is larger than {} KiB; a pipeline file is a few kilobytes of TOML, so check that this is the file you meant",
            MAX_PIPELINE_BYTES / 1024
        );
    }
    String::from_utf8(bytes).map_err(|error| {
        anyhow::anyhow!(
            "{shown} is not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
            error.utf8_error().valid_up_to()
        )
    })
}

impl PipelineConfig {
    /// The hand-written program the file declares: its instructions, no demos.
    pub fn baseline(&self) -> crate::program::Program {
        crate::program::Program::declared(&self.predictors, &self.signatures, &self.tools, &self.graph)
    }

    /// Finds a pipeline by name (`pipelines/<name>.toml` under `root`) or path.
    pub fn locate(name_or_path: &str, root: &Path) -> Result<PathBuf> {
        let direct = PathBuf::from(name_or_path);
        if direct.extension().is_some_and(|e| e == "toml") || direct.components().count() > 1 {
            return Ok(direct);
        }
        let by_name = root.join("pipelines").join(format!("{name_or_path}.toml"));
        if by_name.exists() {
            return Ok(by_name);
        }
        bail!(
            "no pipeline named `{name_or_path}`: expected {}; pass a path to a .toml file or create it",
            by_name.display()
        )
    }

    /// Every pipeline in `<root>/pipelines/`, by file name; one that does not
    /// load is an error naming it.
    pub fn load_all(root: &Path) -> Result<Vec<PipelineConfig>> {
        Self::load_each(root)?.into_iter().map(|(_, loaded)| loaded).collect()
    }

    /// Every `pipelines/*.toml` under `root`, in file order, each loaded on its
    /// own: one broken file does not hide the others.
    pub fn load_each(root: &Path) -> Result<Vec<(PathBuf, Result<PipelineConfig>)>> {
        let dir = root.join("pipelines");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}; run from the repository root or pass --root", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        Ok(files
            .into_iter()
            .map(|file| {
                let loaded = Self::load(&file);
                (file, loaded)
            })
            .collect())
    }

    pub fn load(file: &Path) -> Result<PipelineConfig> {
        // Anything else given by mistake (`.env`, a key file) is not read, so
        // no line of it can be echoed in a parse error.
        if file.extension().and_then(|e| e.to_str()) != Some("toml") {
            bail!(
                "{} is not a pipeline file: pipelines are TOML files, `pipelines/<name>.toml`; give the pipeline's name or the path of its .toml file",
                file.display()
            );
        }
        let text = read_pipeline_text(file)?;
        let config = Self::parse(&text, file)?;
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if config.name != stem {
            bail!(
                "{}: [name] `{}` differs from the file's name `{stem}`: a pipeline is found by its name as pipelines/<name>.toml, so rename the file or set name = \"{stem}\"",
                file.display(),
                config.name
            );
        }
        Ok(config)
    }

    /// Parses and validates a pipeline file's text; `file` is only used for
    /// messages and to resolve relative paths.
    pub fn parse(text: &str, file: &Path) -> Result<PipelineConfig> {
        let shown = file.display();
        let raw: RawPipeline = toml::from_str(text).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
        let root = project_root(file);
        let err = |key: &str, msg: String| anyhow::anyhow!("{shown}: [{key}] {msg}");

        let slug = raw.name.len() <= 64
            && raw.name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && raw.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !slug {
            return Err(err(
                "name",
                format!(
                    "{:?} is not a usable pipeline name: up to 64 letters, digits, `-` and `_`, starting with a letter or digit (it names folders, a branch and the workflow's jobs)",
                    raw.name.chars().take(80).collect::<String>()
                ),
            ));
        }

        let split = raw.dataset.split;
        let total = split.train + split.dev + split.test;
        if [split.train, split.dev, split.test].iter().any(|f| !(0.0..=1.0).contains(f)) || (total - 1.0).abs() > 1e-6 {
            return Err(err(
                "dataset.split",
                format!(
                    "fractions must be between 0 and 1 and add up to 1 (they add up to {total}); e.g. {{ train = 0.70, dev = 0.15, test = 0.15 }}"
                ),
            ));
        }
        if split.test <= 0.0 {
            return Err(err(
                "dataset.split",
                "test must be above 0: without a held-out test split nothing can be proven".into(),
            ));
        }

        let mut signatures = IndexMap::new();
        for (sig_name, raw_sig) in raw.signatures {
            let fields = |side: &str, raw_fields: IndexMap<String, RawField>| -> Result<Vec<Field>> {
                let mut out = Vec::new();
                for (field_name, f) in raw_fields {
                    let key = format!("signatures.{sig_name}.{side}.{field_name}");
                    let ty =
                        FieldType::parse(&f.ty, f.values.as_deref(), f.schema.as_ref()).map_err(|m| err(&key, m))?;
                    if let FieldType::Json { schema } = &ty {
                        jsonschema::validator_for(schema)
                            .map_err(|e| err(&format!("{key}.schema"), format!("not a valid JSON Schema: {e}")))?;
                    }
                    if !field_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(err(&key, "field names may use letters, digits and `_` only".into()));
                    }
                    out.push(Field::new(field_name, ty, f.description));
                }
                Ok(out)
            };
            let inputs = fields("inputs", raw_sig.inputs)?;
            let outputs = fields("outputs", raw_sig.outputs)?;
            if outputs.is_empty() {
                return Err(err(
                    &format!("signatures.{sig_name}.outputs"),
                    "a signature needs at least one output field".into(),
                ));
            }
            signatures.insert(
                sig_name,
                SignatureConfig {
                    instructions: raw_sig.instructions.trim().to_string(),
                    signature: Signature { inputs, outputs },
                },
            );
        }

        // The embedded model enforces each output's JSON Schema while decoding, so
        // every schema must be one its grammar can enforce.
        let enforces_schemas = |lm: &LmConfig| lm.provider == Provider::Embedded && lm.constrained;
        if enforces_schemas(&raw.lm)
            || raw.optimizer.teacher.as_ref().is_some_and(enforces_schemas)
            || raw.optimizer.proposer.as_ref().is_some_and(enforces_schemas)
        {
            for (sig_name, sig) in &signatures {
                for field in &sig.signature.outputs {
                    if let Some(schema) = output_schema(&field.ty) {
                        validate_schema(schema)
                            .map_err(|m| err(&format!("signatures.{sig_name}.outputs.{}.schema", field.name), m))?;
                    }
                }
            }
        }

        let mut tools = Vec::new();
        for (name, tool) in raw.tools {
            let spec = crate::program::tool::ToolSpec::from_raw(&name, tool, &root)
                .map_err(|m| err(&format!("tools.{name}"), m))?;
            tools.push(spec);
        }
        let program = raw.program;
        let (stages, key) = match (program.predictors.is_empty(), program.stages.is_empty()) {
            (false, false) => {
                return Err(err(
                    "program",
                    "declare the program as `predictors` (a sequence) or `stages`, not both".into(),
                ));
            }
            (false, true) => {
                let stages = program
                    .predictors
                    .into_iter()
                    .map(|p| crate::program::graph::StageDecl {
                        name: p.name,
                        signature: Some(p.signature),
                        module: Some(p.module),
                        route_by: None,
                        message: None,
                        history: None,
                        default: None,
                        tools: None,
                        max_steps: None,
                        branches: IndexMap::new(),
                    })
                    .collect::<Vec<_>>();
                (stages, "program.predictors")
            }
            (true, _) => (program.stages, "program.stages"),
        };
        let declared =
            crate::program::graph::declare(&stages, key, &signatures, program.inputs.as_deref(), &raw.signals, &tools)
                .map_err(|(key, m)| err(&key, m))?;
        let predictors = declared.predictors;
        let graph = declared.graph;
        let program_outputs = declared.written;
        let final_outputs = declared.outputs;

        let all_outputs: Vec<&str> = predictors
            .iter()
            .flat_map(|p| signatures[&p.signature].signature.outputs.iter().map(|f| f.name.as_str()))
            .collect();
        let output_type = |name: &str| -> Option<FieldType> {
            predictors
                .iter()
                .flat_map(|p| signatures[&p.signature].signature.outputs.iter())
                .find(|f| f.name == name)
                .map(|f| f.ty.clone())
        };
        let metric = parse_metric(raw.metric, "metric", &root, &output_type).map_err(|(key, m)| err(&key, m))?;
        for field in metric.fields() {
            if !program_outputs.iter().any(|o| o == field) {
                let why = if all_outputs.contains(&field) { " whatever branch runs" } else { "" };
                return Err(err(
                    "metric",
                    format!(
                        "`{field}` is not an output field of the program{why}; outputs: {}",
                        program_outputs.join(", ")
                    ),
                ));
            }
        }

        validate_lm(&raw.lm, "lm").map_err(|m| err("lm", m))?;
        let mut optimizer = raw.optimizer;
        for (key, role) in
            [("optimizer.teacher", &mut optimizer.teacher), ("optimizer.proposer", &mut optimizer.proposer)]
        {
            if let Some(lm) = role {
                validate_lm(lm, key).map_err(|m| err(key, m))?;
                if lm.provider == Provider::Embedded {
                    lm.model = root.join(&lm.model).to_string_lossy().into_owned();
                }
            }
        }
        let mut lm = raw.lm;
        if lm.provider == Provider::Embedded {
            lm.model = root.join(&lm.model).to_string_lossy().into_owned();
        }
        for (key, role) in [("lm", Some(&lm)), ("optimizer.teacher", optimizer.teacher.as_ref())] {
            if let Some(role) = role {
                check_reply_budget(role, raw.adapter.format, &predictors, &signatures, &tools)
                    .map_err(|m| err(key, m))?;
            }
        }
        if !(0.0..=1.0).contains(&optimizer.metric_threshold) {
            return Err(err("optimizer.metric_threshold", "must be between 0 and 1".into()));
        }
        // Each of these multiplies LM calls and memory: bounded so a typo cannot run for ever.
        let gepa_calls = optimizer.gepa.max_metric_calls.map(|c| usize::try_from(c).unwrap_or(usize::MAX));
        for (key, value, max) in [
            ("optimizer.num_candidates", Some(optimizer.num_candidates), 1_000),
            ("optimizer.max_bootstrapped_demos", Some(optimizer.max_bootstrapped_demos), 100),
            ("optimizer.max_labeled_demos", Some(optimizer.max_labeled_demos), 100),
            ("optimizer.max_rounds", Some(optimizer.max_rounds), 20),
            ("optimizer.mipro_v2.num_trials", optimizer.mipro_v2.num_trials, 10_000),
            ("optimizer.mipro_v2.num_instructions", optimizer.mipro_v2.num_instructions, 100),
            ("optimizer.mipro_v2.minibatch_size", Some(optimizer.mipro_v2.minibatch_size), 10_000),
            ("optimizer.gepa.iterations", optimizer.gepa.iterations, 10_000),
            ("optimizer.gepa.max_metric_calls", gepa_calls, 10_000_000),
            ("optimizer.gepa.minibatch_size", Some(optimizer.gepa.minibatch_size), 1_000),
        ] {
            if let Some(value) = value
                && value > max
            {
                return Err(err(key, format!("{value} is above the most allowed, {max}")));
            }
        }
        let mipro = &optimizer.mipro_v2;
        if mipro.minibatch_size == 0 || mipro.full_eval_steps == 0 {
            return Err(err("optimizer.mipro_v2", "minibatch_size and full_eval_steps must be at least 1".into()));
        }
        if mipro.num_trials == Some(0) || mipro.num_instructions == Some(0) {
            return Err(err("optimizer.mipro_v2", "num_trials and num_instructions must be at least 1".into()));
        }
        let gepa = &optimizer.gepa;
        if gepa.minibatch_size == 0 || gepa.iterations == Some(0) || gepa.max_metric_calls == Some(0) {
            return Err(err(
                "optimizer.gepa",
                "minibatch_size, iterations and max_metric_calls must be at least 1 (leave one out for its default)"
                    .into(),
            ));
        }
        let budget = raw.budget;
        let limits = std::iter::once(("budget", budget.total()))
            .chain(budget.roles().into_iter().map(|(role, b)| (role.name(), b)));
        for (key, b) in limits {
            if b.max_calls == Some(0)
                || b.max_tokens == Some(0)
                || b.max_dollars.is_some_and(|d| !(d > 0.0) || !d.is_finite())
            {
                let key = if key == "budget" { key.to_string() } else { format!("budget.{key}") };
                return Err(err(&key, "limits must be above zero; leave a limit out for no limit".into()));
            }
        }

        let first_input = predictors
            .first()
            .and_then(|p| signatures[&p.signature].signature.inputs.first())
            .map(|f| f.name.clone())
            .unwrap_or_default();
        let output_fields: Vec<String> = all_outputs.iter().map(|s| s.to_string()).collect();
        let source = match raw.source {
            Some(source) => Some(parse_source(source, &first_input, output_fields, &root).map_err(|(k, m)| err(k, m))?),
            None => None,
        };
        for (i, pattern) in raw.anonymize.patterns.iter().enumerate() {
            let key = format!("anonymize.patterns[{i}]");
            if pattern.name.is_empty()
                || !pattern.name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(err(
                    &key,
                    format!("name `{}` must be upper case letters, digits and `_`, e.g. ORDER_ID", pattern.name),
                ));
            }
            if let Err(e) = regex::Regex::new(&pattern.regex) {
                return Err(err(&format!("{key}.regex"), format!("not a valid regular expression: {e}")));
            }
        }
        let mut signals = raw.signals;
        if signals.field.is_empty() {
            signals.field = first_input.clone();
        }
        let program_inputs: Vec<&str> = predictors
            .iter()
            .flat_map(|p| signatures[&p.signature].signature.inputs.iter().map(|f| f.name.as_str()))
            .collect();
        if !program_inputs.contains(&signals.field.as_str()) {
            return Err(err(
                "signals.field",
                format!("`{}` is not an input field; inputs: {}", signals.field, program_inputs.join(", ")),
            ));
        }
        if let Some(source) = &source {
            if !program_inputs.contains(&source.format.input_field.as_str()) {
                return Err(err(
                    "source.input_field",
                    format!(
                        "`{}` is not an input field; inputs: {}",
                        source.format.input_field,
                        program_inputs.join(", ")
                    ),
                ));
            }
        }
        if !(0.0..=1.0).contains(&signals.caps_share) {
            return Err(err("signals.caps_share", "must be between 0 and 1".into()));
        }
        let dedup = raw.dedup;
        if !(0.0 < dedup.threshold && dedup.threshold <= 1.0) {
            return Err(err("dedup.threshold", "must be above 0 and at most 1, e.g. 0.8".into()));
        }
        if !(0.0 < dedup.leak_threshold && dedup.leak_threshold <= dedup.threshold) {
            return Err(err(
                "dedup.leak_threshold",
                format!("must be above 0 and at most threshold ({})", dedup.threshold),
            ));
        }
        if dedup.num_perm < 16 || dedup.num_perm > 1024 {
            return Err(err("dedup.num_perm", "must be between 16 and 1024 (128 is a good default)".into()));
        }
        if dedup.shingle == 0 || dedup.shingle > 32 {
            return Err(err("dedup.shingle", "must be between 1 and 32 characters".into()));
        }
        let sample = raw.sample;
        for label in sample.caps.keys() {
            if !["routine", "urgent", "escalating"].contains(&label.as_str()) {
                return Err(err("sample.caps", format!("unknown signal `{label}`; use routine, urgent or escalating")));
            }
        }

        let gate = raw.gate;
        if !(gate.min_delta > -1.0 && gate.min_delta < 1.0) {
            return Err(err("gate.min_delta", "must be between -1 and 1 (scores are 0..1), e.g. 0.02".into()));
        }
        if gate.min_test_n == 0 {
            return Err(err("gate.min_test_n", "must be at least 1, e.g. 30".into()));
        }
        if !(gate.max_mcnemar_p > 0.0 && gate.max_mcnemar_p <= 1.0) {
            return Err(err(
                "gate.max_mcnemar_p",
                "must be above 0 and at most 1 (1 turns the check off), e.g. 0.05".into(),
            ));
        }
        if !(0.5..1.0).contains(&gate.confidence) {
            return Err(err("gate.confidence", "must be at least 0.5 and below 1, e.g. 0.95".into()));
        }
        let publish = raw.publish;
        if let Some(repository) = &publish.repository
            && repository.split('/').filter(|part| !part.is_empty()).count() != 2
        {
            return Err(err("publish.repository", format!("`{repository}` is not `owner/name`")));
        }
        for (key, var) in [
            ("publish.token_env", &publish.token_env),
            ("publish.slack.token_env", &publish.slack.token_env),
            ("publish.slack.webhook_env", &publish.slack.webhook_env),
        ] {
            env_var_name(var).map_err(|m| err(key, m))?;
        }
        for (key, price) in [("lm.input_price", lm.input_price), ("lm.output_price", lm.output_price)] {
            if price.is_some_and(|p| !(p >= 0.0 && p.is_finite())) {
                return Err(err(key, "must be a price in dollars per million tokens, 0 or more".into()));
            }
        }

        let schedule = match &raw.schedule {
            Some(text) => Some(crate::schedule::CronSchedule::parse(text).map_err(|m| err("schedule", m))?),
            None => None,
        };

        Ok(PipelineConfig {
            schedule,
            source,
            anonymize: AnonymizeConfig { patterns: raw.anonymize.patterns },
            signals,
            dedup,
            sample,
            gate,
            publish,
            name: raw.name,
            description: raw.description,
            seed: raw.seed,
            file: file.to_path_buf(),
            dataset: DatasetConfig { path: root.join(raw.dataset.path), split },
            root,
            lm,
            adapter: raw.adapter.format,
            signatures,
            predictors,
            graph,
            tools,
            outputs: final_outputs,
            metric,
            optimizer,
            budget,
        })
    }

    /// The pipeline's artifact path: `artifacts/<name>/program.json`.
    pub fn artifact_path(&self) -> PathBuf {
        self.root.join("artifacts").join(&self.name).join("program.json")
    }

    /// Local state: `.promptloop/` next to `pipelines/`.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(".promptloop")
    }
}

/// `[source]` as written → [`SourceConfig`]; an error is (key, message).
fn parse_source(
    raw: RawSource,
    first_input: &str,
    output_fields: Vec<String>,
    root: &Path,
) -> std::result::Result<SourceConfig, (&'static str, String)> {
    let need = |value: Option<String>, key: &'static str, example: &str| {
        let short = key.trim_start_matches("source.");
        value
            .filter(|v| !v.trim().is_empty())
            .ok_or((key, format!("kind = \"{}\" needs {short}, e.g. {short} = {example}", raw.kind)))
    };
    let location = match raw.kind.as_str() {
        "files" => {
            if raw.paths.is_empty() {
                return Err((
                    "source.paths",
                    "kind = \"files\" needs paths, e.g. paths = [\"logs/*.jsonl.gz\"]".into(),
                ));
            }
            let patterns =
                raw.paths
                    .iter()
                    .map(|p| {
                        if Path::new(p).is_absolute() { p.clone() } else { root.join(p).to_string_lossy().into_owned() }
                    })
                    .collect();
            SourceLocation::Files { patterns }
        }
        "http" => {
            let url = need(raw.url.clone(), "source.url", "\"https://logs.example.com/export\"")?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(("source.url", format!("`{url}` must start with http:// or https://")));
            }
            let paging = match raw.paging.as_deref().unwrap_or("none") {
                "none" => Paging::None,
                "link" => Paging::Link,
                "cursor" => Paging::Cursor {
                    param: raw.cursor_param.clone().unwrap_or_else(|| "cursor".into()),
                    header: raw.cursor_header.clone().unwrap_or_else(|| "x-next-cursor".into()),
                },
                other => return Err(("source.paging", format!("unknown paging `{other}`; use none, link or cursor"))),
            };
            if let Some(var) = &raw.token_env {
                env_var_name(var).map_err(|m| ("source.token_env", m))?;
            }
            let timeout_secs = raw.timeout_secs.unwrap_or(60.0);
            if !(timeout_secs > 0.0 && timeout_secs <= MAX_TIMEOUT_SECS) {
                return Err((
                    "source.timeout_secs",
                    format!("{timeout_secs} is outside (0, {MAX_TIMEOUT_SECS}] (seconds)"),
                ));
            }
            SourceLocation::Http(HttpSource {
                url,
                token_env: raw.token_env.clone(),
                since_param: raw.since_param.clone(),
                until_param: raw.until_param.clone(),
                paging,
                timeout_secs,
            })
        }
        "s3" => {
            for (key, var) in [
                ("source.access_key_env", &raw.access_key_env),
                ("source.secret_key_env", &raw.secret_key_env),
                ("source.session_token_env", &raw.session_token_env),
            ] {
                if let Some(var) = var {
                    env_var_name(var).map_err(|m| (key, m))?;
                }
            }
            SourceLocation::S3(S3Source {
                bucket: need(raw.bucket.clone(), "source.bucket", "\"my-llm-logs\"")?,
                prefix: raw.prefix.clone().unwrap_or_default(),
                endpoint: raw.endpoint.clone(),
                region: raw.region.clone().unwrap_or_else(|| "us-east-1".into()),
                access_key_env: raw.access_key_env.clone().unwrap_or_else(|| "AWS_ACCESS_KEY_ID".into()),
                secret_key_env: raw.secret_key_env.clone().unwrap_or_else(|| "AWS_SECRET_ACCESS_KEY".into()),
                session_token_env: raw.session_token_env.clone().unwrap_or_else(|| "AWS_SESSION_TOKEN".into()),
            })
        }
        other => return Err(("source.kind", format!("unknown source `{other}`; use files, http or s3"))),
    };
    if raw.max_line_bytes < 1024 {
        return Err(("source.max_line_bytes", "must be at least 1024".into()));
    }
    Ok(SourceConfig {
        location,
        format: FormatConfig {
            format: raw.format,
            input_field: raw.input_field.unwrap_or_else(|| first_input.to_string()),
            output_fields,
        },
        max_line_bytes: raw.max_line_bytes,
    })
}

/// The JSON Schema a field's type carries, also inside `list<json>`.
fn output_schema(ty: &FieldType) -> Option<&Value> {
    match ty {
        FieldType::Json { schema } => Some(schema),
        FieldType::List { items } => output_schema(items),
        _ => None,
    }
}

/// Refuses a `max_tokens` too small for any complete reply of a predictor,
/// which would cut every one of them. Only the embedded engine with
/// constrained decoding writes the reply template's field markers for certain;
/// a remote model (or unconstrained decoding) may answer a one-field
/// signature with the bare value, so no larger minimum holds there. The count
/// uses the model's tokenizer when the model file is there, else a byte-based
/// lower bound ([`crate::lm::local::min_reply_tokens`]).
fn check_reply_budget(
    lm: &LmConfig,
    format: AdapterFormat,
    predictors: &[PredictorConfig],
    signatures: &IndexMap<String, SignatureConfig>,
    tools: &[crate::program::tool::ToolSpec],
) -> std::result::Result<(), String> {
    if lm.provider != Provider::Embedded || !lm.constrained {
        return Ok(());
    }
    let tokenizer = crate::lm::local::read_tokenizer(Path::new(&lm.model));
    for p in predictors {
        let fields = crate::program::graph::build_predictor(p, signatures, tools).reply_fields();
        let Some(template) = crate::program::adapter::template(format, &fields) else { continue };
        let needed = crate::lm::local::min_reply_tokens(&template, tokenizer.as_deref());
        if (lm.max_tokens as usize) < needed {
            return Err(format!(
                "max_tokens = {} is too small for the reply of predictor `{}` (needs at least {needed} tokens); raise it to at least {needed}",
                lm.max_tokens, p.name
            ));
        }
    }
    Ok(())
}

/// The most requests in flight to one LM.
const MAX_CONCURRENCY: usize = 256;
/// The longest wait for one request or page: a day.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;
/// The most CPU threads for the embedded model.
const MAX_THREADS: usize = 1024;

fn validate_lm(lm: &LmConfig, key: &str) -> std::result::Result<(), String> {
    match lm.provider {
        Provider::Openai => {
            if lm.base_url.as_deref().is_none_or(|u| u.trim().is_empty()) {
                return Err(format!(
                    "provider = \"openai\" needs base_url, e.g. base_url = \"https://api.openai.com/v1\" in [{key}]"
                ));
            }
            if let Some(url) = &lm.base_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!("base_url `{url}` must start with http:// or https://"));
                }
            }
        }
        Provider::Embedded => {
            if lm.base_url.is_some() {
                return Err("base_url is only for provider = \"openai\"; remove it or change the provider".into());
            }
        }
    }
    if !(0.0..=2.0).contains(&lm.temperature) {
        return Err(format!("temperature {} is outside 0..=2", lm.temperature));
    }
    if lm.max_tokens == 0 {
        return Err("max_tokens must be at least 1".into());
    }
    if !(1..=MAX_CONCURRENCY).contains(&lm.concurrency) {
        return Err(format!("concurrency = {} is outside 1..={MAX_CONCURRENCY}", lm.concurrency));
    }
    if !(lm.timeout_secs > 0.0 && lm.timeout_secs <= MAX_TIMEOUT_SECS) {
        return Err(format!("timeout_secs = {} is outside (0, {MAX_TIMEOUT_SECS}] (seconds)", lm.timeout_secs));
    }
    if let Some(threads) = lm.threads
        && !(1..=MAX_THREADS).contains(&threads)
    {
        return Err(format!("threads = {threads} is outside 1..={MAX_THREADS}"));
    }
    if let Some(var) = &lm.api_key_env {
        env_var_name(var).map_err(|m| format!("api_key_env {m}"))?;
    }
    Ok(())
}

/// Checks that an `*_env` setting names an environment variable, without ever
/// repeating its value: a secret pasted there by mistake must not reach an
/// error message, a log or CI output.
fn env_var_name(value: &str) -> std::result::Result<(), String> {
    const SECRET_PREFIXES: [&str; 12] =
        ["sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xoxb-", "xoxp-", "xapp-", "AKIA", "ASIA"];
    let has = |f: fn(char) -> bool| value.chars().any(f);
    let looks_like_a_secret = SECRET_PREFIXES.iter().any(|p| value.starts_with(p))
        || value.starts_with("https://")
        || value.len() > 64
        // Random tokens mix cases and digits; names are upper or lower snake case.
        || (value.len() >= 20
            && has(|c| c.is_ascii_lowercase())
            && has(|c| c.is_ascii_uppercase())
            && has(|c| c.is_ascii_digit()));
    if looks_like_a_secret {
        return Err("looks like a token, not the name of an environment variable: put the secret in an environment variable (or a CI secret) and write its name here, e.g. \"OPENAI_API_KEY\"; the value is not repeated here".into());
    }
    let valid = value.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err("must name an environment variable: letters, digits and `_`, not starting with a digit, e.g. \"OPENAI_API_KEY\"".into());
    }
    Ok(())
}

fn project_root(file: &Path) -> PathBuf {
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|n| n == "pipelines") {
        dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}
