//! The weekly run's evaluation: pull, read production from the base branch,
//! optimize, score both programs on the same test examples, compare, gate,
//! and write what the bot branch will carry.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};

use super::{build_artifact, relative_to};
use crate::config::{LmConfig, OptimizerKind, PipelineConfig};
use crate::dataset::store::DatasetStore;
use crate::dataset::{Dataset, Example};
use crate::eval::compare::{Comparison, Pair};
use crate::eval::gate::Decision;
use crate::eval::{Evaluation, ExampleResult, evaluate};
use crate::logs::pull::{PullRequest, Since};
use crate::metric;
use crate::program::Program;
use crate::program::artifact::{Artifact, Scores as ArtifactScores, SplitScore, write_atomically};
use crate::report::{Cost, DatasetSize, Failures, Flip, Headline, Outcome, RunReport, Scores, Slice, history};

/// `.promptloop/runs/<name>/`: what a run leaves for the stages after it
/// (`report`, `publish`) and for people when nothing was published.
pub fn run_dir(config: &PipelineConfig) -> PathBuf {
    config.state_dir().join("runs").join(&config.name)
}

/// A run's result as saved in `run_dir/run.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SavedRun {
    pub report: RunReport,
    /// The repository-relative files the run wrote: what the bot branch carries.
    pub files: Vec<String>,
    /// The branch production was read from.
    pub base: String,
}

pub struct EvaluateRequest {
    pub pipeline: PathBuf,
    /// Use this optimizer instead of the pipeline's.
    pub optimizer: Option<OptimizerKind>,
    /// Pull logs first (when the pipeline has a `[source]`).
    pub pull: Option<(Since, Option<DateTime<Utc>>)>,
    /// The branch production lives on.
    pub base: String,
    /// The git remote whose base branch is production (read without checking it out).
    pub remote: Option<String>,
    pub use_cache: bool,
    pub progress: bool,
    /// Discard the search's checkpoint instead of resuming from it.
    pub fresh: bool,
}

/// Pull → production's program → optimize → score both on test → compare →
/// gate → write `artifacts/<name>/{program.json, history.jsonl, REPORT.md}`
/// and the saved run. The candidate replaces `program.json` only on promote.
pub async fn evaluate_run(request: &EvaluateRequest) -> Result<SavedRun> {
    let mut config = PipelineConfig::load(&request.pipeline)?;
    if let Some(kind) = request.optimizer {
        config.optimizer.kind = kind;
    }
    let pulled = match (&request.pull, &config.source) {
        (Some((since, until)), Some(_)) => {
            let pull_request =
                PullRequest { config: config.clone(), since: since.clone(), until: *until, dry_run: false };
            Some(crate::logs::pull::pull(pull_request).await.context("the pull failed")?)
        }
        _ => None,
    };
    // The dataset the scores are on travels with them, pulled this run or not.
    let store = DatasetStore::new(&config.dataset.path, config.dataset.split);
    let mut files: Vec<String> = [&store.examples, &store.inbox, &store.manifest]
        .into_iter()
        .filter(|path| path.exists())
        .map(|path| relative_to(path, &config.root))
        .collect();

    let dataset = Dataset::load(&config.dataset.path, &config.dataset.split)?;
    if dataset.train().is_empty() || dataset.test().is_empty() {
        bail!(
            "{}: the dataset has {} train and {} test examples; both must be non-empty for a run",
            config.dataset.path.display(),
            dataset.train().len(),
            dataset.test().len()
        );
    }
    super::check_outputs_scored(&config, &dataset)?;
    let (production, production_label) = production_program(&config, request)?;

    let models = super::optimize::models(&config, request.use_cache, request.progress)?;
    let lm = models.task.clone();
    let eval_ctx = models.eval.clone();
    // The search starts from production (warm start) and proposes only what beats it on dev.
    let start = crate::optimize::Start { production: production.clone(), declared: config.baseline() };
    let optimizer = crate::optimize::build(&config.optimizer);
    tracing::info!(pipeline = %config.name, train = dataset.train().len(), dev = dataset.dev().len(), "optimizing");
    let super::optimize::OptimizerRun { optimized, search, checkpoint } =
        super::optimize::run_optimizer(&config, &dataset, &start, &*optimizer, &models, request.fresh).await?;
    let candidate = &optimized.program;
    let scoring = "the LM failed while scoring";
    // Test is read here for the first time, by both programs alike.
    let production_test =
        evaluate(&production, dataset.test(), &eval_ctx, "test: production").await.context(scoring)?;
    let candidate_test = if optimized.improved() {
        evaluate(candidate, dataset.test(), &eval_ctx, "test: candidate").await.context(scoring)?
    } else {
        production_test.clone()
    };
    super::check_predictions(&production_test, "production on test")?;
    super::check_predictions(&candidate_test, "the candidate on test")?;

    let pairs = crate::eval::compare::pair_by_id(
        production_test.results.iter().map(|r| (r.example_id.as_str(), r.score)),
        candidate_test.results.iter().map(|r| (r.example_id.as_str(), r.score)),
    );
    let comparison = Comparison::of(&pairs, config.gate.confidence, config.seed);
    let verdict = if optimized.improved() {
        crate::eval::gate::decide(&comparison, &config.gate)
    } else {
        crate::eval::gate::Verdict { decision: Decision::Hold, reasons: vec![no_better_reason(&search)] }
    };
    let usage = lm.usage();
    let cost = Cost {
        lm_calls: usage.calls,
        cache_hits: usage.cache_hits,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        dollars: dollars(&config, &models.meter.usage()),
    };
    let headline = Headline {
        pipeline: config.name.clone(),
        metric: metric::name(&config.metric),
        n: comparison.n,
        baseline: comparison.baseline_mean,
        candidate: comparison.candidate_mean,
        delta: comparison.delta.estimate,
        low: comparison.delta.low,
        high: comparison.delta.high,
        confidence: comparison.delta.confidence,
        // Production against itself is no test: no p-value without a candidate.
        mcnemar_p: comparison.mcnemar_p.filter(|_| optimized.improved()),
        decision: verdict.decision,
        reasons: verdict.reasons.clone(),
        no_candidate: !optimized.improved(),
    };

    let artifact_dir = config.root.join("artifacts").join(&config.name);
    let history_path = artifact_dir.join("history.jsonl");
    let date = crate::clock::now()?;
    let entry = history::Entry {
        date,
        examples: dataset.len(),
        test_n: comparison.n,
        baseline: comparison.baseline_mean,
        candidate: optimized.improved().then_some(comparison.candidate_mean),
        delta: optimized.improved().then_some(comparison.delta.estimate),
        low: optimized.improved().then_some(comparison.delta.low),
        high: optimized.improved().then_some(comparison.delta.high),
        decision: verdict.decision,
        lm_calls: cost.lm_calls,
        tokens: cost.prompt_tokens + cost.completion_tokens,
        dollars: cost.dollars,
    };
    let existing = history::read_bytes(&history_path)?;
    let mut past = history::parse(&existing, &history_path);
    past.push(entry.clone());

    let signals = Signals::new(&config, &production);
    let report = RunReport {
        headline,
        date,
        production: production_label,
        optimizer: optimizer.describe(),
        dev: (!dataset.dev().is_empty()).then(|| Scores {
            n: dataset.dev().len(),
            baseline: search.production_dev,
            candidate: search.candidate_dev,
        }),
        slices: slices(&dataset, &pairs, &signals),
        branches: crate::report::branches(&production_test, &candidate_test, &pairs),
        flipped: flips(&dataset, &production_test, &candidate_test, &signals),
        program_diff: crate::report::diff::unified(
            &crate::report::diff::program_text(&production),
            &crate::report::diff::program_text(candidate),
        ),
        dataset: pulled,
        examples: DatasetSize {
            examples: dataset.len(),
            train: dataset.train().len(),
            dev: dataset.dev().len(),
            test: dataset.test().len(),
        },
        cost,
        history: past,
        search: Some(search),
        failures: Failures::of("production", &production_test.summary)
            .into_iter()
            .chain(optimized.improved().then(|| Failures::of("candidate", &candidate_test.summary)).flatten())
            .collect(),
    };

    // The artifact: the candidate on promote; production stays otherwise.
    if verdict.decision == Decision::Promote {
        let scores = ArtifactScores {
            metric: metric::name(&config.metric),
            dev: report.dev.map(|d| SplitScore { n: d.n, baseline: d.baseline, compiled: d.candidate }),
            test: Some(SplitScore {
                n: comparison.n,
                baseline: comparison.baseline_mean,
                compiled: comparison.candidate_mean,
            }),
        };
        let artifact = build_artifact(&config, &lm, &dataset, &optimized, scores);
        artifact.save(&config.artifact_path())?;
        files.push(relative_to(&config.artifact_path(), &config.root));
    }
    write_atomically(&history_path, &history::appended(&existing, &entry))?;
    files.push(relative_to(&history_path, &config.root));
    let report_path = artifact_dir.join("REPORT.md");
    write_atomically(&report_path, crate::report::markdown::report(&report).as_bytes())?;
    files.push(relative_to(&report_path, &config.root));

    let saved = SavedRun { report, files, base: request.base.clone() };
    save_run(&config, &saved)?;
    checkpoint.finish();
    Ok(saved)
}

pub fn save_run(config: &PipelineConfig, run: &SavedRun) -> Result<()> {
    let mut text = serde_json::to_string_pretty(run).expect("a run serializes");
    text.push('\n');
    write_atomically(&run_dir(config).join("run.json"), text.as_bytes())
}

pub fn load_run(config: &PipelineConfig) -> Result<SavedRun> {
    let path = run_dir(config).join("run.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("no saved run at {}; run `promptloop run {}` (or `--dry-run`) first", path.display(), config.name)
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a run promptloop saved", path.display()))
}

/// Production: the artifact on the base branch (read from git, not the work
/// tree), else the artifact in the work tree when this is not a repository,
/// else the program as declared.
fn production_program(config: &PipelineConfig, request: &EvaluateRequest) -> Result<(Program, String)> {
    let relative = relative_to(&config.artifact_path(), &config.root);
    // The artifact's path in the repository, which may hold the project in a subdirectory.
    let (bytes, label) = match crate::publish::git::repository_path(&config.root) {
        Some((_, prefix)) => {
            let in_repo = if prefix.is_empty() { relative.clone() } else { format!("{prefix}/{relative}") };
            let remote = request.remote.as_deref().unwrap_or("origin");
            let bytes = crate::publish::git::read_base_file(&config.root, remote, &request.base, &in_repo)
                .with_context(|| format!("cannot read production's artifact from {}", request.base))?;
            let commit = crate::publish::git::base_commit(&config.root, remote, &request.base)?;
            (bytes, format!("`{relative}` on {} ({})", request.base, &commit.to_string()[..7]))
        }
        None => match std::fs::read(config.artifact_path()) {
            Ok(bytes) => (Some(bytes), format!("`{relative}` in the work tree (not a git repository)")),
            Err(_) => (None, String::new()),
        },
    };
    match bytes {
        Some(bytes) => {
            let text =
                String::from_utf8(bytes).with_context(|| format!("{relative} on {} is not UTF-8", request.base))?;
            let artifact = Artifact::parse(&text, Path::new(&relative))?;
            Ok((artifact.program_on(&config.baseline()), label))
        }
        None => Ok((
            config.baseline(),
            format!(
                "the program as declared in `{}` (no artifact on {} yet)",
                relative_to(&config.file, &config.root),
                request.base
            ),
        )),
    }
}

/// The hold's reason when the search found nothing better than production on dev.
fn no_better_reason(search: &crate::report::SearchSummary) -> String {
    let tried = search.candidates.len().saturating_sub(1);
    let candidates = crate::report::count(tried, "candidate");
    let best = search
        .candidates
        .iter()
        .skip(1)
        .filter(|c| c.scored_on.is_none())
        .max_by(|a, b| a.dev_score.total_cmp(&b.dev_score));
    let mut reason = match best {
        _ if tried == 0 => format!(
            "no candidate tried (the optimizer is `none`): production stays, scored {:.3} on dev",
            search.production_dev
        ),
        Some(best) => format!(
            "no better program found: of {candidates} tried, the best on dev (`{}`, {:.3}) does not beat production's {:.3}",
            best.name, best.dev_score, search.production_dev
        ),
        None => format!(
            "no better program found: {candidates} tried, none scored on all of dev above production's {:.3}",
            search.production_dev
        ),
    };
    if let Some(stop) = &search.stopped_early {
        reason.push_str(&format!(" (the search stopped early: {stop})"));
    }
    reason
}

/// Dollars the providers billed (cached replies cost nothing), when any role's `[lm]` table has prices.
fn dollars(config: &PipelineConfig, usage: &crate::lm::budget::UsageByRole) -> Option<f64> {
    let priced = |lm: &LmConfig| lm.input_price.is_some() || lm.output_price.is_some();
    let any = priced(&config.lm)
        || config.optimizer.teacher.as_ref().is_some_and(priced)
        || config.optimizer.proposer.as_ref().is_some_and(priced)
        || config.metric.judge_lms().into_iter().any(priced);
    any.then(|| usage.total().dollars)
}

/// Reads an example's signal: the label the pull stored with it, else what
/// the detector reads from its inputs (a built dataset's examples were never
/// pulled) — through the program's detector router when it has one, which
/// also reads the history, else from `[signals] field` alone.
struct Signals(crate::program::graph::Detector);

impl Signals {
    fn new(config: &PipelineConfig, program: &Program) -> Signals {
        let router = program.graph.routers().into_iter().find_map(|r| match &r.by {
            crate::program::graph::RouteBy::Detector(d) => Some(d.clone()),
            crate::program::graph::RouteBy::Field(_) => None,
        });
        Signals(router.unwrap_or_else(|| {
            crate::program::graph::Detector::new(config.signals.field.clone(), None, config.signals.clone())
        }))
    }

    fn of(&self, example: &Example) -> String {
        let stored = example.extra.get("signal").and_then(|s| s.get("label")).and_then(|l| l.as_str());
        match stored {
            Some(label) => label.to_string(),
            None => self.0.read(&example.inputs).map_or_else(|_| "unlabeled".to_string(), |s| s.name().to_string()),
        }
    }
}

/// The test comparison per signal, in a fixed order.
fn slices(dataset: &Dataset, pairs: &[Pair], signals: &Signals) -> Vec<Slice> {
    let signals: std::collections::HashMap<&str, String> =
        dataset.test().iter().map(|e| (e.id.as_str(), signals.of(e))).collect();
    let mut by_signal: std::collections::BTreeMap<String, Vec<&Pair>> = Default::default();
    for pair in pairs {
        let signal = signals.get(pair.id.as_str()).cloned().unwrap_or_else(|| "unlabeled".into());
        by_signal.entry(signal).or_default().push(pair);
    }
    let order = |s: &str| ["routine", "urgent", "escalating", "unlabeled"].iter().position(|x| *x == s).unwrap_or(9);
    let mut slices: Vec<Slice> = by_signal.into_iter().map(|(signal, pairs)| Slice::of(signal, &pairs)).collect();
    slices.sort_by_key(|s| order(&s.signal));
    slices
}

/// The test examples whose score changed, fixed first, in test order.
fn flips(dataset: &Dataset, production: &Evaluation, candidate: &Evaluation, signals: &Signals) -> Vec<Flip> {
    let by_id: std::collections::HashMap<&str, &ExampleResult> =
        candidate.results.iter().map(|r| (r.example_id.as_str(), r)).collect();
    let examples: std::collections::HashMap<&str, &Example> =
        dataset.test().iter().map(|e| (e.id.as_str(), e)).collect();
    let outcome = |r: &ExampleResult| match &r.prediction {
        Some(outputs) => Outcome::Outputs(outputs.clone()),
        None => Outcome::Failed(r.feedback.clone()),
    };
    let mut flips: Vec<Flip> = production
        .results
        .iter()
        .filter_map(|before| {
            let after = by_id.get(before.example_id.as_str())?;
            let example = examples.get(before.example_id.as_str())?;
            (after.score != before.score).then(|| Flip {
                id: example.id.clone(),
                fixed: after.score > before.score,
                signal: signals.of(example),
                inputs: example.inputs.clone(),
                reference: example.outputs.clone(),
                production: outcome(before),
                candidate: outcome(after),
            })
        })
        .collect();
    flips.sort_by_key(|f| !f.fixed);
    flips
}

/// `promptloop report`: REPORT.md again from the saved run.
pub fn write_report(config: &PipelineConfig) -> Result<PathBuf> {
    let run = load_run(config)?;
    let path = config.root.join("artifacts").join(&config.name).join("REPORT.md");
    write_atomically(&path, crate::report::markdown::report(&run.report).as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::no_better_reason;
    use crate::program::artifact::CandidateScore;
    use crate::report::SearchSummary;

    fn candidate(name: &str, dev_score: f64, scored_on: Option<usize>) -> CandidateScore {
        CandidateScore { name: name.into(), demos: 0, dev_score, scored_on }
    }

    fn summary(candidates: Vec<CandidateScore>, stopped_early: Option<&str>) -> SearchSummary {
        SearchSummary {
            improved: false,
            production_dev: 0.5,
            candidate_dev: 0.5,
            chosen: "production".into(),
            candidates,
            stopped_early: stopped_early.map(String::from),
            evaluations: 0,
            notes: vec![],
            proposals: vec![],
            reflections: vec![],
            slices: vec![],
            usage: vec![],
        }
    }

    #[test]
    fn the_hold_says_what_was_tried() {
        let production = || candidate("production", 0.5, None);
        assert_eq!(
            no_better_reason(&summary(vec![production()], None)),
            "no candidate tried (the optimizer is `none`): production stays, scored 0.500 on dev"
        );
        assert_eq!(
            no_better_reason(&summary(
                vec![production(), candidate("a", 0.4, None), candidate("b", 0.9, Some(8)), candidate("c", 0.45, None)],
                None
            )),
            "no better program found: of 3 candidates tried, the best on dev (`c`, 0.450) does not beat production's 0.500"
        );
        assert_eq!(
            no_better_reason(&summary(
                vec![production(), candidate("b", 0.9, Some(8))],
                Some("the budget of 10 calls")
            )),
            "no better program found: 1 candidate tried, none scored on all of dev above production's 0.500 (the search stopped early: the budget of 10 calls)"
        );
    }

    #[test]
    fn an_examples_signal_is_the_stored_one_else_what_the_detector_reads() {
        use super::{PipelineConfig, Signals};
        use serde_json::json;
        let example = |message: &str, history: &[&str], stored: Option<&str>| {
            let mut extra = serde_json::Map::new();
            if let Some(label) = stored {
                extra.insert("signal".into(), json!({"label": label, "evidence": []}));
            }
            crate::dataset::Example {
                id: "e".into(),
                inputs: json!({"message": message, "history": history}).as_object().unwrap().clone(),
                outputs: serde_json::Map::new(),
                extra,
            }
        };
        let urgent = "URGENT: my card is blocked, help now!!";
        // A router by the detector reads the history too: three messages make it escalating.
        let routed = PipelineConfig::load(std::path::Path::new("pipelines/support-reply.toml")).unwrap();
        let signals = Signals::new(&routed, &routed.baseline());
        assert_eq!(signals.of(&example("How do I top up?", &[], None)), "routine");
        assert_eq!(signals.of(&example(urgent, &[], None)), "urgent");
        assert_eq!(signals.of(&example(urgent, &["card blocked", "still blocked"], None)), "escalating");
        assert_eq!(signals.of(&example("How do I top up?", &[], Some("escalating"))), "escalating", "the pull's label");
        // Without a router, `[signals] field` alone.
        let flat = PipelineConfig::load(std::path::Path::new("pipelines/support-triage.toml")).unwrap();
        let signals = Signals::new(&flat, &flat.baseline());
        assert_eq!(signals.of(&example(urgent, &["card blocked", "still blocked"], None)), "urgent");
    }
}
