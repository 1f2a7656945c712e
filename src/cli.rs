//! Subcommands and their flags. Each builds a typed request, calls one library
//! operation and prints its outcome.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::PipelineConfig;
use crate::dataset::Split;
use crate::eval::EvalSummary;
use crate::lm::UsageSummary;
use crate::lm::local::{LocalEngine, LocalOptions};
use crate::logs::pull::PullRequest;
use crate::pipeline::{self, CompileRequest, EvalRequest, EvalTarget};

#[derive(Parser)]
#[command(name = "promptloop", version, about = "Prompt engineering as a weekly, measured build.")]
pub struct Cli {
    /// Repository root: where pipelines/, datasets/ and artifacts/ live.
    #[arg(long, global = true, default_value = ".")]
    pub root: PathBuf,
    /// More logging (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Optimize a pipeline's program, score it against the hand-written
    /// baseline on the held-out test split, and write the artifact.
    Compile {
        /// A pipeline name (pipelines/<name>.toml) or a path to its file.
        pipeline: String,
        /// Where to write the artifact [default: artifacts/<name>/program.json].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Ask the model every time instead of reusing cached replies.
        #[arg(long)]
        no_cache: bool,
        /// Start the optimization over instead of resuming from its checkpoint
        /// (.promptloop/checkpoints/<name>.json).
        #[arg(long)]
        fresh: bool,
    },
    /// Score the hand-written baseline or an artifact on a split.
    Eval {
        pipeline: String,
        /// The artifact to score [default: artifacts/<name>/program.json].
        #[arg(long, conflicts_with = "baseline")]
        artifact: Option<PathBuf>,
        /// Score the hand-written program from the pipeline file.
        #[arg(long)]
        baseline: bool,
        /// Score predictions another system made (production, a peer tool)
        /// with the pipeline's metric: one JSON line per example,
        /// {"id": …, "outputs": {…}} or {"id": …, "error": "…"}.
        #[arg(long, conflicts_with_all = ["artifact", "baseline", "unconstrained"])]
        predictions: Option<PathBuf>,
        #[arg(long, default_value = "test")]
        split: Split,
        /// Score only the first N examples of the split.
        #[arg(long)]
        limit: Option<usize>,
        /// Write one JSON line per example (prediction, score, error, usage) here.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Ask the model (or, with --predictions, a judge metric) every time
        /// instead of reusing cached replies.
        #[arg(long)]
        no_cache: bool,
        /// Let the embedded model decode freely instead of constraining its
        /// reply to the expected shape (to measure what constraining changes).
        #[arg(long)]
        unconstrained: bool,
    },
    /// Pull production logs into the dataset: read the source, anonymize,
    /// read signals, deduplicate, sample, and merge into examples.jsonl (new
    /// records without a reference go to inbox.jsonl).
    Pull {
        pipeline: String,
        /// Where the window starts: `last` (where the last pull ended; everything
        /// on the first pull), a span before its end (7d, 36h, 2w), a date
        /// (2026-11-01), an RFC 3339 time, or `all`.
        #[arg(long, default_value = "last")]
        since: crate::logs::pull::Since,
        /// Where the window ends (a date or RFC 3339 time) [default: now].
        #[arg(long, value_parser = parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Read, clean and report, but write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The weekly loop for one pipeline: pull the logs, optimize, score the
    /// candidate and production on the held-out test split, gate, write
    /// artifacts/<name>/{program.json, history.jsonl, REPORT.md}, commit them
    /// to the branch promptloop/<name>, push, open or update the pull request
    /// and post to Slack.
    Run {
        pipeline: String,
        /// Use this optimizer instead of the pipeline's (e.g. bootstrap_few_shot).
        #[arg(long, value_parser = parse_optimizer)]
        optimizer: Option<crate::config::OptimizerKind>,
        /// Where the pull's window starts (as for `pull`); `last` is where the
        /// dataset's last merged pull ended.
        #[arg(long, default_value = "last")]
        since: crate::logs::pull::Since,
        #[arg(long, value_parser = parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Skip the pull: optimize on the dataset as it is.
        #[arg(long)]
        no_pull: bool,
        /// Publish nothing (no commit, push, GitHub or Slack call): the PR body
        /// and the Slack message are written under .promptloop/runs/<name>/.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        no_cache: bool,
        /// Start the optimization over instead of resuming from its checkpoint
        /// (.promptloop/checkpoints/<name>.json).
        #[arg(long)]
        fresh: bool,
    },
    /// Render the last run's report again (artifacts/<name>/REPORT.md) and its
    /// PR body, from the run saved in .promptloop/runs/<name>/.
    Report { pipeline: String },
    /// Publish the last run: commit, push, pull request, Slack.
    Publish {
        pipeline: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// List the pipelines in pipelines/ (with --json: for a workflow matrix).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check each pipeline's schedule and print its next runs (UTC).
    Schedule {
        /// One pipeline [default: all in pipelines/].
        pipeline: Option<String>,
        /// How many runs to show.
        #[arg(long, default_value_t = 3)]
        count: usize,
    },
    /// Work with the embedded model directly.
    Lm {
        #[command(subcommand)]
        command: LmCommand,
    },
}

#[derive(Subcommand)]
pub enum LmCommand {
    /// Serve the embedded model over an OpenAI-compatible HTTP API
    /// (`/v1/chat/completions`, `/v1/models`) until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The GGUF model file [default: <root>/.promptloop/models/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Address to listen on. Only loopback addresses unless --allow-remote.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the listening line shows which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Listen on a non-loopback address. The server has no authentication:
    /// anyone who can reach the address can use it.
    #[arg(long)]
    pub allow_remote: bool,
    /// CPU threads for the model [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Memory for the attention state of recent prompt prefixes, in MiB (0 turns prefix reuse off).
    #[arg(long, default_value_t = 256)]
    pub prefix_cache_mb: usize,
    /// Do not constrain decoding: JSON response formats are then not enforced.
    #[arg(long)]
    pub no_constrain: bool,
    /// The model's name in /v1/models and in replies.
    #[arg(long, default_value = "smollm2")]
    pub model_id: String,
    /// Most requests waiting behind the one being generated; one more gets 503 with Retry-After.
    #[arg(long, default_value_t = 32)]
    pub max_queue: usize,
    /// A host name accepted in the Host header besides localhost, loopback addresses and the
    /// listening address (a proxy's or the machine's name); repeat for more.
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
}

impl Cli {
    /// Whether the command runs a server (whose request log is on by default).
    pub fn is_server(&self) -> bool {
        matches!(self.command, Command::Lm { command: LmCommand::Serve(_) })
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compile { pipeline, out, no_cache, fresh } => {
            let file = PipelineConfig::locate(&pipeline, &cli.root)?;
            let request = CompileRequest { pipeline: file, out, use_cache: !no_cache, progress: true, fresh };
            let outcome = pipeline::compile(&request).await?;
            let test = outcome.artifact.scores.test.as_ref().expect("compile scores test");
            println!("compiled {} in {:.1}s", outcome.artifact.pipeline, outcome.compile_secs);
            println!("  optimizer LM use: {}", usage_line(&outcome.compile_usage));
            for role in &outcome.search.usage {
                println!(
                    "    {:<8} {} calls ({} cached), {} tokens; projected {} calls; budget: {}",
                    role.role,
                    crate::report::thousands(role.used.calls),
                    crate::report::thousands(role.used.cache_hits),
                    crate::report::thousands(role.used.tokens()),
                    crate::report::thousands(role.projected_calls),
                    crate::report::budget_text(&role.budget)
                );
            }
            for c in &outcome.artifact.provenance.candidates {
                let on = c.scored_on.map_or_else(String::new, |n| format!("  (on {n} dev examples)"));
                println!("  candidate {:<28} demos {:>2}  dev {:.3}{on}", c.name, c.demos, c.dev_score);
            }
            let search = &outcome.search;
            if let Some(stop) = &search.stopped_early {
                println!("  stopped early: {stop}");
            }
            if search.improved {
                println!(
                    "  chosen: {} (dev {:.3} vs the declared program's {:.3})",
                    search.chosen, search.candidate_dev, search.production_dev
                );
            } else {
                println!(
                    "  no better program found: nothing beat the declared program's dev {:.3}; it is kept",
                    search.production_dev
                );
            }
            for s in &search.slices {
                let score = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.3}"));
                let what = if s.optimized {
                    format!("dev {} -> {}", score(s.production_dev), score(s.proposed_dev))
                } else {
                    "kept as it is (too few examples)".to_string()
                };
                println!("  slice {} = {}: {} train, {} dev; {what}", s.router, s.branch, s.train, s.dev);
            }
            for note in &search.notes {
                println!("  note: {note}");
            }
            if let Some(dev) = &outcome.artifact.scores.dev {
                println!("dev  (n={}): baseline {:.3}  compiled {:.3}", dev.n, dev.baseline, dev.compiled);
            }
            println!(
                "test (n={}): baseline {:.3}  compiled {:.3}  delta {:+.3}",
                test.n,
                test.baseline,
                test.compiled,
                test.compiled - test.baseline
            );
            let pairs = crate::eval::compare::pair_by_id(
                outcome.baseline_test.results.iter().map(|r| (r.example_id.as_str(), r.score)),
                outcome.compiled_test.results.iter().map(|r| (r.example_id.as_str(), r.score)),
            );
            let comparison = crate::eval::compare::Comparison::of(&pairs, 0.95, outcome.artifact.provenance.seed);
            println!("  {}", comparison_line(&comparison));
            for b in crate::report::branches(&outcome.baseline_test, &outcome.compiled_test, &pairs) {
                println!(
                    "  {} (n={}): baseline {:.3}  compiled {:.3}  delta {:+.3}",
                    b.signal,
                    b.scores.n,
                    b.scores.baseline,
                    b.scores.candidate,
                    b.scores.candidate - b.scores.baseline
                );
            }
            println!("  baseline: {}", failures_line(&outcome.baseline_test.summary));
            println!("  compiled: {}", failures_line(&outcome.compiled_test.summary));
            println!("total LM use: {}", usage_line(&outcome.total_usage));
            println!("wrote {}", outcome.artifact_path.display());
        }
        Command::Eval { pipeline, artifact, baseline, predictions, split, limit, results, no_cache, unconstrained } => {
            let file = PipelineConfig::locate(&pipeline, &cli.root)?;
            let target = if baseline {
                EvalTarget::Baseline
            } else if let Some(path) = predictions {
                EvalTarget::Predictions(path)
            } else {
                let path = match artifact {
                    Some(path) => path,
                    None => PipelineConfig::load(&file)?.artifact_path(),
                };
                if !path.exists() {
                    anyhow::bail!(
                        "no artifact at {}; run `promptloop compile {pipeline}` first, or pass --baseline",
                        path.display()
                    );
                }
                EvalTarget::Artifact(path)
            };
            let request = EvalRequest {
                pipeline: file,
                target,
                split,
                limit,
                use_cache: !no_cache,
                progress: true,
                unconstrained,
            };
            let outcome = pipeline::eval(&request).await?;
            let s = &outcome.evaluation.summary;
            println!("{} on {} (n={}): {:.3}", outcome.program_label, split.name(), s.n, s.mean);
            println!("  {}", failures_line(s));
            println!("  LM use: {}  ({:.1}s)", usage_line(&outcome.usage), s.wall_secs);
            if let Some(path) = results {
                let mut lines = String::new();
                for r in &outcome.evaluation.results {
                    lines.push_str(&serde_json::to_string(r)?);
                    lines.push('\n');
                }
                crate::program::artifact::write_atomically(&path, lines.as_bytes())?;
                println!("wrote per-example results to {}", path.display());
            }
        }
        Command::Pull { pipeline, since, until, dry_run, json } => {
            let file = PipelineConfig::locate(&pipeline, &cli.root)?;
            let config = PipelineConfig::load(&file)?;
            let report = crate::logs::pull::pull(PullRequest { config, since, until, dry_run }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
        }
        Command::Run { pipeline, optimizer, since, until, no_pull, dry_run, no_cache, fresh } => {
            let file = PipelineConfig::locate(&pipeline, &cli.root)?;
            let config = PipelineConfig::load(&file)?;
            let request = pipeline::RunRequest {
                pipeline: file,
                fresh,
                optimizer,
                pull: (!no_pull).then_some((since, until)),
                dry_run,
                use_cache: !no_cache,
                progress: true,
                context: pipeline::PublishContext::from_env(&config),
            };
            let outcome = pipeline::run(request).await?;
            print_run(&outcome.run);
            print_published(&outcome.published);
            if outcome.published.failed() {
                anyhow::bail!("the run's result was not published in full; see above");
            }
        }
        Command::Report { pipeline } => {
            let file = PipelineConfig::locate(&pipeline, &cli.root)?;
            let config = PipelineConfig::load(&file)?;
            let path = pipeline::run::write_report(&config)?;
            println!("wrote {}", path.display());
        }
        Command::Publish { pipeline, dry_run } => {
            let file = PipelineConfig::locate(&pipeline, &cli.root)?;
            let config = PipelineConfig::load(&file)?;
            let request = pipeline::PublishRequest {
                pipeline: file,
                dry_run,
                context: pipeline::PublishContext::from_env(&config),
            };
            let outcome = pipeline::publish::publish(&request).await?;
            print_published(&outcome);
            if outcome.failed() {
                anyhow::bail!("the run's result was not published in full; see above");
            }
        }
        Command::List { json } => {
            // A broken pipeline is reported (and listed with its error) without hiding the others.
            let pipelines = PipelineConfig::load_each(&cli.root)?;
            for (file, loaded) in &pipelines {
                if let Err(e) = loaded {
                    eprintln!("warning: {} is broken and will not run: {e:#}", file.display());
                }
            }
            if json {
                let rows: Vec<serde_json::Value> = pipelines
                    .iter()
                    .map(|(file, loaded)| {
                        let shown = file.strip_prefix(&cli.root).unwrap_or(file);
                        match loaded {
                            Ok(p) => serde_json::json!({
                                "name": p.name,
                                "file": shown,
                                "schedule": p.schedule.as_ref().map(|s| s.expression.clone()),
                                "description": p.description,
                            }),
                            Err(e) => serde_json::json!({
                                "name": file.file_stem().map(|s| s.to_string_lossy()),
                                "file": shown,
                                "schedule": null,
                                "description": "",
                                "error": format!("{e:#}"),
                            }),
                        }
                    })
                    .collect();
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                for (file, loaded) in &pipelines {
                    match loaded {
                        Ok(p) => {
                            let schedule = p.schedule.as_ref().map_or("no schedule", |s| s.expression.as_str());
                            println!("{:<24} {:<16} {}", p.name, schedule, p.description);
                        }
                        Err(_) => {
                            let stem = file.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default();
                            println!("{stem:<24} {:<16} (broken: see the warning above)", "-");
                        }
                    }
                }
            }
        }
        Command::Schedule { pipeline, count } => {
            let pipelines = match pipeline {
                Some(name) => vec![PipelineConfig::load(&PipelineConfig::locate(&name, &cli.root)?)?],
                None => PipelineConfig::load_all(&cli.root)?,
            };
            let now = chrono::Utc::now();
            for p in &pipelines {
                match &p.schedule {
                    None => println!(
                        "{}: no schedule (add schedule = \"0 6 * * 5\" to run it Fridays at 06:00 UTC)",
                        p.name
                    ),
                    Some(schedule) => {
                        println!("{}: \"{}\"", p.name, schedule.expression);
                        for run in schedule.upcoming(now, count) {
                            println!("  {}", run.format("%a %Y-%m-%d %H:%M UTC"));
                        }
                    }
                }
            }
        }
        Command::Lm { command: LmCommand::Serve(args) } => serve(&cli.root, args).await?,
    }
    Ok(())
}

async fn serve(root: &std::path::Path, args: ServeArgs) -> Result<()> {
    use std::io::Write;

    // Check the address before the slow part, loading the model.
    let address = crate::serve::bind_address(&args.host, args.port, args.allow_remote)?;
    let model = args.model.unwrap_or_else(|| crate::lm::local::default_model_path(root));
    let options =
        LocalOptions { threads: args.threads, constrained: !args.no_constrain, prefix_cache_mb: args.prefix_cache_mb };
    let engine = tokio::task::spawn_blocking(move || LocalEngine::load(&model, options)).await??;
    let listener =
        tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(
            "listening on {local}, which is not a loopback address: anyone who can reach it can use the model"
        );
    }
    let serve_options = crate::serve::ServeOptions {
        model_id: args.model_id,
        max_queue: args.max_queue,
        allowed_hosts: args.allowed_hosts,
        ..Default::default()
    };
    println!("listening on http://{local}/v1");
    std::io::stdout().flush()?;
    // The first Ctrl-C or SIGTERM stops taking requests and lets those in
    // flight finish; a second one stops at once.
    let shutdown = async {
        crate::serve::shutdown_signal().await;
        tokio::spawn(async {
            crate::serve::shutdown_signal().await;
            eprintln!("stopping without waiting for the requests in flight");
            std::process::exit(130);
        });
    };
    crate::serve::serve_with_shutdown(listener, std::sync::Arc::new(engine), serve_options, shutdown).await
}

fn print_run(run: &pipeline::SavedRun) {
    let r = &run.report;
    let h = &r.headline;
    println!("{}: {}", h.pipeline, h.decision_text());
    if h.no_candidate {
        println!("  test {}: production {:.3} (n = {}); no candidate was scored on test", h.metric, h.baseline, h.n);
    } else {
        println!("  test {}: production {:.3} → candidate {:.3}", h.metric, h.baseline, h.candidate);
        println!("  delta {}", h.delta_text());
    }
    if let Some(p) = h.mcnemar_p {
        let fixed = r.flipped.iter().filter(|f| f.fixed).count();
        println!("  McNemar p = {p:.4}; {fixed} fixed, {} broken", r.flipped.len() - fixed);
    }
    println!("  production: {}", r.production);
    for failures in &r.failures {
        println!("  failed on test: {}", failures.text());
    }
    println!("  cost: {}", r.cost.text());
    for file in &run.files {
        println!("  wrote {file}");
    }
}

fn print_published(outcome: &pipeline::PublishOutcome) {
    println!("publish {}:", outcome.branch);
    println!("  commit        {}", outcome.commit);
    println!("  push          {}", outcome.push);
    println!("  pull request  {}", outcome.pull_request);
    println!("  slack         {}", outcome.slack);
    if let Some(text) = &outcome.slack_text {
        println!("\n{text}");
    }
}

fn parse_optimizer(s: &str) -> std::result::Result<crate::config::OptimizerKind, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("`{s}` is not an optimizer; use none, bootstrap_few_shot or bootstrap_random_search"))
}

fn parse_time(s: &str) -> std::result::Result<chrono::DateTime<chrono::Utc>, String> {
    match s.parse::<crate::logs::pull::Since>()? {
        crate::logs::pull::Since::Time(time) => Ok(time),
        _ => Err(format!("`{s}`: give a date (2026-11-01) or an RFC 3339 time")),
    }
}

/// "delta +0.194, 95% CI [+0.129, +0.259] (paired bootstrap); McNemar p = 0.0002; 38 fixed, 11 broken"
fn comparison_line(c: &crate::eval::compare::Comparison) -> String {
    let d = &c.delta;
    let mut line = format!(
        "delta {:+.3}, {:.0}% CI [{:+.3}, {:+.3}] (paired bootstrap)",
        d.estimate,
        d.confidence * 100.0,
        d.low,
        d.high
    );
    if let Some(p) = c.mcnemar_p {
        line.push_str(&format!("; McNemar p = {p:.4}"));
    }
    line.push_str(&format!("; {} fixed, {} broken", c.fixed.len(), c.broken.len()));
    line
}

fn usage_line(u: &UsageSummary) -> String {
    format!(
        "{} calls ({} to the model, {} from cache), {} prompt + {} completion tokens",
        u.calls, u.provider_calls, u.cache_hits, u.prompt_tokens, u.completion_tokens
    )
}

fn failures_line(s: &EvalSummary) -> String {
    s.failures_text()
}
