//! One end-to-end compile on the embedded model, as a user runs it: the CLI
//! compiles a small triage pipeline, writes the artifact, and a rerun is
//! served entirely from the response cache.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use promptloop::program::artifact::Artifact;

mod common;

fn model() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".promptloop/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "the embedded model is missing at {}; run scripts/setup-model.sh", path.display());
    path
}

fn project(optimizer: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    std::fs::create_dir_all(dir.path().join("datasets")).unwrap();
    std::fs::copy("tests/data/mini-triage.jsonl", dir.path().join("datasets/mini-triage.jsonl")).unwrap();
    let lm = format!(
        "provider = \"embedded\"\nmodel = {:?}\nmax_tokens = 32\nconcurrency = 2",
        model().display().to_string()
    );
    std::fs::write(
        dir.path().join("pipelines/mini-triage.toml"),
        common::triage_toml("datasets/mini-triage.jsonl", &lm, optimizer),
    )
    .unwrap();
    dir
}

fn compile(dir: &Path) -> String {
    let out = Command::cargo_bin("promptloop")
        .unwrap()
        .args(["--root", dir.to_str().unwrap(), "compile", "mini-triage"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "compile failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn compile_on_the_embedded_model_writes_the_artifact_and_reruns_from_cache() {
    let dir = project(
        "kind = \"bootstrap_random_search\"\nmax_bootstrapped_demos = 2\nmax_labeled_demos = 3\nnum_candidates = 1",
    );
    let first = compile(dir.path());
    let artifact_path = dir.path().join("artifacts/mini-triage/program.json");
    let artifact = Artifact::load(&artifact_path).unwrap();
    let text = std::fs::read_to_string(&artifact_path).unwrap();

    // The artifact is complete and canonical.
    assert_eq!(artifact.format, "promptloop.artifact/v1");
    assert_eq!(artifact.lm.model.provider, "embedded");
    assert!(artifact.lm.model.constrained_decoding);
    let names: Vec<&str> = artifact.provenance.candidates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["production", "production + missing labels", "bootstrapped-1"], "the declared program first");
    assert_eq!(artifact.provenance.dataset.examples, 60);
    let test = artifact.scores.test.as_ref().unwrap();
    assert_eq!(test.n, artifact.provenance.dataset.test);
    assert!((0.0..=1.0).contains(&test.baseline) && (0.0..=1.0).contains(&test.compiled));
    assert_eq!(text, artifact.to_canonical_json());
    assert!(!text.contains(&model().display().to_string()), "the artifact names the weights file, not a local path");

    // With constrained decoding, no prediction is lost to the format.
    assert!(first.contains("baseline: 0 failed predictions (0 unparseable replies)"), "{first}");
    assert!(first.contains("compiled: 0 failed predictions (0 unparseable replies)"), "{first}");
    // The delta comes with its noise: a paired-bootstrap interval and McNemar's p.
    let noise = regex::Regex::new(
        r"delta [+-]\d\.\d{3}, 95% CI \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] \(paired bootstrap\); McNemar p = \d\.\d{4}; \d+ fixed, \d+ broken",
    )
    .unwrap();
    assert!(noise.is_match(&first), "{first}");
    assert!(!first.contains("calls (0 to the model"), "the first compile asks the model:\n{first}");

    // The rerun asks the model nothing and reproduces the artifact byte for byte.
    let second = compile(dir.path());
    assert!(second.contains("to the model") && second.contains("total LM use:"), "{second}");
    let total = second.lines().find(|l| l.starts_with("total LM use:")).unwrap();
    assert!(total.contains("(0 to the model"), "{total}");
    assert_eq!(std::fs::read_to_string(&artifact_path).unwrap(), text);
}

#[test]
fn eval_scores_the_baseline_and_reports_a_missing_artifact() {
    let dir = project("kind = \"none\"");
    let root = dir.path().to_str().unwrap();
    let out = Command::cargo_bin("promptloop").unwrap().args(["--root", root, "eval", "mini-triage"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no artifact at") && err.contains("promptloop compile mini-triage"), "{err}");

    let results = dir.path().join("results.jsonl");
    let out = Command::cargo_bin("promptloop")
        .unwrap()
        .args([
            "--root",
            root,
            "eval",
            "mini-triage",
            "--baseline",
            "--split",
            "dev",
            "--results",
            results.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hand-written baseline on dev"), "{stdout}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&results).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let queue = line["prediction"]["queue"].as_str().expect("every prediction parsed");
        assert!(["cards", "transfers", "top_ups"].contains(&queue));
    }
}
