//! The artifact: the compiled program as canonical, pretty JSON — what
//! production loads and what reviewers diff.
//!
//! Canonical means the same program always serializes to the same bytes:
//! fixed key order (struct order, predictors in program order, fields in
//! signature order), two-space indentation, instructions as a list of lines
//! so a changed sentence is a changed line in `git diff`, no timestamps.
//! Secrets never enter it: the LM is described by [`LmDescription`].

use std::path::Path;

use anyhow::{Context, Result, bail};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lm::LmDescription;
use crate::program::Program;
use crate::program::adapter::AdapterFormat;
use crate::program::module::Module;
use crate::program::predictor::Demo;
use crate::program::signature::Signature;

pub const FORMAT_V1: &str = "promptloop.artifact/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub format: String,
    pub pipeline: String,
    pub predictors: IndexMap<String, PredictorState>,
    pub lm: LmSettings,
    pub provenance: Provenance,
    pub scores: Scores,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictorState {
    pub module: Module,
    /// One string per line.
    pub instructions: Vec<String>,
    pub signature: Signature,
    pub demos: Vec<Demo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmSettings {
    #[serde(flatten)]
    pub model: LmDescription,
    pub temperature: f32,
    pub max_tokens: u32,
    pub adapter: AdapterFormat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// `promptloop <version>`.
    pub tool: String,
    pub seed: u64,
    /// The optimizer's kind and settings as configured.
    pub optimizer: Value,
    pub dataset: DatasetProvenance,
    /// Every candidate the optimizer scored on dev, in the order tried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CandidateScore>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetProvenance {
    /// Relative to the repository root.
    pub path: String,
    pub sha256: String,
    pub examples: usize,
    pub train: usize,
    pub dev: usize,
    pub test: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateScore {
    pub name: String,
    pub demos: usize,
    /// The mean on the dev examples it was scored on.
    pub dev_score: f64,
    /// How many dev examples that was, when not all of them (a candidate
    /// dropped early in the search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_on: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Scores {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<SplitScore>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<SplitScore>,
}

/// The compiled program and the hand-written baseline on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitScore {
    pub n: usize,
    pub baseline: f64,
    pub compiled: f64,
}

impl Artifact {
    pub fn from_program(
        program: &Program,
        pipeline: &str,
        lm: LmSettings,
        provenance: Provenance,
        scores: Scores,
    ) -> Self {
        let predictors = program
            .predictors
            .iter()
            .map(|p| {
                let state = PredictorState {
                    module: p.module,
                    instructions: p.instructions.lines().map(str::to_string).collect(),
                    signature: p.signature.clone(),
                    demos: p.demos.clone(),
                };
                (p.name.clone(), state)
            })
            .collect();
        Artifact { format: FORMAT_V1.into(), pipeline: pipeline.into(), predictors, lm, provenance, scores }
    }

    /// The artifact's state on a program's graph: each predictor of `declared`
    /// takes the artifact's module, signature, instructions and demos under its
    /// path; a predictor the artifact lacks stays as declared. Predictors the
    /// artifact has and the graph no longer does are left out, with a warning.
    pub fn program_on(&self, declared: &Program) -> Program {
        let mut program = declared.clone();
        for predictor in &mut program.predictors {
            if let Some(state) = self.predictors.get(&predictor.name) {
                predictor.module = state.module;
                predictor.signature = state.signature.clone();
                predictor.instructions = state.instructions.join("\n");
                predictor.demos = state.demos.clone();
            }
        }
        for name in self.predictors.keys() {
            if declared.predictor(name).is_none() {
                tracing::warn!(
                    predictor = %name,
                    "the artifact has a predictor the pipeline no longer declares; it is left out"
                );
            }
        }
        program
    }

    /// The canonical text: pretty JSON, scores rounded to 4 places, a final newline.
    pub fn to_canonical_json(&self) -> String {
        let mut copy = self.clone();
        let round = |x: f64| (x * 10_000.0).round() / 10_000.0;
        for score in [&mut copy.scores.dev, &mut copy.scores.test].into_iter().flatten() {
            score.baseline = round(score.baseline);
            score.compiled = round(score.compiled);
        }
        for c in &mut copy.provenance.candidates {
            c.dev_score = round(c.dev_score);
        }
        let mut text = serde_json::to_string_pretty(&copy).expect("an artifact always serializes");
        text.push('\n');
        text
    }

    pub fn parse(text: &str, path: &Path) -> Result<Artifact> {
        let value: Value = serde_json::from_str(text)
            .with_context(|| format!("{}: not valid JSON; restore it from git or recompile", path.display()))?;
        match value.get("format").and_then(Value::as_str) {
            Some(FORMAT_V1) => {}
            Some(other) => bail!(
                "{}: artifact format `{other}` is not supported by promptloop {}; this version reads `{FORMAT_V1}`",
                path.display(),
                env!("CARGO_PKG_VERSION")
            ),
            None => bail!("{}: no `format` key; is this a promptloop artifact?", path.display()),
        }
        serde_json::from_value(value).with_context(|| format!("{}: not a valid {FORMAT_V1} artifact", path.display()))
    }

    pub fn load(path: &Path) -> Result<Artifact> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read artifact {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Writes to a temporary file next to `path`, then renames it into place,
    /// so a crash never leaves a half-written artifact.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomically(path, self.to_canonical_json().as_bytes())
    }
}

/// Write-then-rename in the target's own directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} into place at {}", tmp.display(), path.display()))?;
    Ok(())
}
