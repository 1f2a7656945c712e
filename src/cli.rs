//! Subcommands and their flags. Each builds a typed request, calls one library
//! operation and prints its outcome.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::PipelineConfig;
use crate::dataset::Split;
use crate::lm::UsageSummary;
use crate::optimize::evaluate::EvalSummary;
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
        #[arg(long, default_value = "test")]
        split: Split,
        /// Score only the first N examples of the split.
        #[arg(long)]
        limit: Option<usize>,
        /// Write one JSON line per example (prediction, score, error, usage) here.
        #[arg(long)]
        results: Option<PathBuf>,
        #[arg(long)]
        no_cache: bool,
        /// Let the embedded model decode freely instead of constraining its
        /// reply to the expected shape (to measure what constraining changes).
        #[arg(long)]
        unconstrained: bool,
    },
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compile { pipeline, out, no_cache } => {
            let file = PipelineConfig::locate(&pipeline, &cli.root)?;
            let request = CompileRequest { pipeline: file, out, use_cache: !no_cache, progress: true };
            let outcome = pipeline::compile(&request).await?;
            let test = outcome.artifact.scores.test.as_ref().expect("compile scores test");
            println!("compiled {} in {:.1}s", outcome.artifact.pipeline, outcome.compile_secs);
            println!("  optimizer LM use: {}", usage_line(&outcome.compile_usage));
            for c in &outcome.artifact.provenance.candidates {
                println!("  candidate {:<14} demos {:>2}  dev {:.3}", c.name, c.demos, c.dev_score);
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
            println!("  baseline: {}", failures_line(&outcome.baseline_test.summary));
            println!("  compiled: {}", failures_line(&outcome.compiled_test.summary));
            println!("total LM use: {}", usage_line(&outcome.total_usage));
            println!("wrote {}", outcome.artifact_path.display());
        }
        Command::Eval { pipeline, artifact, baseline, split, limit, results, no_cache, unconstrained } => {
            let file = PipelineConfig::locate(&pipeline, &cli.root)?;
            let target = if baseline {
                EvalTarget::Baseline
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
    }
    Ok(())
}

fn usage_line(u: &UsageSummary) -> String {
    format!(
        "{} calls ({} to the model, {} from cache), {} prompt + {} completion tokens",
        u.calls, u.provider_calls, u.cache_hits, u.prompt_tokens, u.completion_tokens
    )
}

fn failures_line(s: &EvalSummary) -> String {
    format!(
        "{} failed predictions ({} unparseable replies); {} replies re-asked in the other format",
        s.failed, s.format_errors, s.format_retries
    )
}
