//! `eval --predictions`: predictions another system made (production, a peer
//! tool) scored with the pipeline's own metric on the same split, without
//! an LM.

use std::collections::HashMap;

use assert_cmd::Command;
use serde_json::{Value, json};

mod common;

/// A project whose LM is a model file that does not exist: scoring recorded
/// predictions must never load it.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    std::fs::create_dir_all(dir.path().join("datasets")).unwrap();
    std::fs::copy("tests/data/mini-triage.jsonl", dir.path().join("datasets/mini-triage.jsonl")).unwrap();
    let lm = "provider = \"embedded\"\nmodel = \"no-such-model.gguf\"";
    let toml = common::triage_toml("datasets/mini-triage.jsonl", lm, "kind = \"bootstrap_few_shot\"");
    std::fs::write(dir.path().join("pipelines/mini-triage.toml"), toml).unwrap();
    dir
}

fn promptloop(dir: &tempfile::TempDir, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--root", dir.path().to_str().unwrap()];
    all.extend_from_slice(args);
    let out = Command::cargo_bin("promptloop").unwrap().current_dir(dir.path()).args(&all).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the file says for each example: right, wrong, a lost reply, or nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Said {
    Right,
    Wrong,
    Lost,
    Missing,
}

fn write_predictions(dir: &tempfile::TempDir) -> HashMap<String, Said> {
    let text = std::fs::read_to_string(dir.path().join("datasets/mini-triage.jsonl")).unwrap();
    let mut said = HashMap::new();
    let mut lines = String::new();
    for (i, line) in text.lines().enumerate() {
        let example: Value = serde_json::from_str(line).unwrap();
        let id = example["id"].as_str().unwrap().to_string();
        let reference = example["outputs"]["queue"].as_str().unwrap();
        let kind = match i % 4 {
            0 | 1 => Said::Right,
            2 if i % 8 == 2 => Said::Wrong,
            2 => Said::Lost,
            _ if i % 8 == 3 => Said::Missing,
            _ => Said::Wrong,
        };
        let record = match kind {
            Said::Right => json!({"id": id, "outputs": {"queue": reference}}),
            Said::Wrong => {
                let other = if reference == "cards" { "transfers" } else { "cards" };
                json!({"id": id, "outputs": {"queue": other}})
            }
            Said::Lost => json!({"id": id, "error": "the reply did not parse: `queue: card`", "format_error": true}),
            Said::Missing => {
                said.insert(id, kind);
                continue;
            }
        };
        lines.push_str(&record.to_string());
        lines.push('\n');
        said.insert(id, kind);
    }
    std::fs::write(dir.path().join("preds.jsonl"), lines).unwrap();
    said
}

#[test]
fn recorded_predictions_are_scored_with_the_pipeline_metric_and_lost_ones_count_as_failures() {
    let dir = project();
    let said = write_predictions(&dir);
    let (ok, stdout, stderr) = promptloop(
        &dir,
        &["eval", "mini-triage", "--predictions", "preds.jsonl", "--split", "train", "--results", "results.jsonl"],
    );
    assert!(ok, "{stdout}\n{stderr}");

    let results: Vec<Value> = std::fs::read_to_string(dir.path().join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(results.len() >= 30, "the train split has {} examples", results.len());
    let mut expected_sum = 0.0;
    let (mut failed, mut lost) = (0, 0);
    for r in &results {
        let id = r["example_id"].as_str().unwrap();
        let score = r["score"].as_f64().unwrap();
        match said[id] {
            Said::Right => {
                assert_eq!(score, 1.0, "{r}");
                expected_sum += 1.0;
            }
            Said::Wrong => assert_eq!(score, 0.0, "{r}"),
            Said::Lost => {
                assert_eq!(score, 0.0, "{r}");
                assert_eq!(r["format_error"], true, "{r}");
                assert!(r["feedback"].as_str().unwrap().contains("did not parse"), "{r}");
                failed += 1;
                lost += 1;
            }
            Said::Missing => {
                assert_eq!(score, 0.0, "{r}");
                assert!(r["error"].as_str().unwrap().contains("no prediction for"), "{r}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0 && lost > 0 && lost < failed, "the split must hold every kind: {said:?}");
    let mean = expected_sum / results.len() as f64;
    // The timing at the end of the LM line is left out of the snapshot.
    let shown: String = stdout
        .lines()
        .map(|l| if l.trim_start().starts_with("LM use:") { l.rsplit_once("  (").unwrap().0 } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(shown.contains(&format!("(n={}): {mean:.3}", results.len())), "{shown}");
    assert!(shown.contains(&format!("{failed} failed predictions ({lost} unparseable replies)")), "{shown}");
    insta::assert_snapshot!(shown);
}

#[test]
fn a_predictions_file_that_does_not_fit_is_an_error_with_file_and_line() {
    let dir = project();
    std::fs::write(
        dir.path().join("bad.jsonl"),
        "{\"id\": \"b77-10020\", \"outputs\": {\"queue\": \"cards\"}}\nnot json\n",
    )
    .unwrap();
    let (ok, _, stderr) = promptloop(&dir, &["eval", "mini-triage", "--predictions", "bad.jsonl"]);
    assert!(!ok);
    assert!(stderr.contains("bad.jsonl:2: not a JSON object"), "{stderr}");

    std::fs::write(dir.path().join("other.jsonl"), "{\"id\": \"reply-0001\", \"outputs\": {\"queue\": \"cards\"}}\n")
        .unwrap();
    let (ok, _, stderr) = promptloop(&dir, &["eval", "mini-triage", "--predictions", "other.jsonl"]);
    assert!(!ok);
    assert!(stderr.contains("1 of its ids are not in") && stderr.contains("`reply-0001`"), "{stderr}");

    // Every prediction lost: a score of 0 with the reasons, not an error;
    // a file with nothing for the split is one.
    let text = std::fs::read_to_string(dir.path().join("datasets/mini-triage.jsonl")).unwrap();
    let lost: String = text
        .lines()
        .map(|l| {
            let id = serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_string();
            format!("{}\n", json!({"id": id, "error": "timed out"}))
        })
        .collect();
    std::fs::write(dir.path().join("lost.jsonl"), lost).unwrap();
    let (ok, stdout, stderr) =
        promptloop(&dir, &["eval", "mini-triage", "--predictions", "lost.jsonl", "--results", "lost-results.jsonl"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("on test (n=") && stdout.contains("): 0.000"), "{stdout}");
    let results = std::fs::read_to_string(dir.path().join("lost-results.jsonl")).unwrap();
    assert!(results.lines().all(|l| l.contains("\"error\":\"timed out\"")), "{results}");

    let first = text.lines().next().unwrap();
    let id = serde_json::from_str::<Value>(first).unwrap()["id"].as_str().unwrap().to_string();
    std::fs::write(dir.path().join("one.jsonl"), format!("{}\n", json!({"id": id, "outputs": {"queue": "cards"}})))
        .unwrap();
    let split_of_first = if results.contains(&id) { "train" } else { "test" };
    let (ok, _, stderr) =
        promptloop(&dir, &["eval", "mini-triage", "--predictions", "one.jsonl", "--split", split_of_first]);
    assert!(!ok, "a file with nothing for the split was scored");
    assert!(stderr.contains("no line for any of the") && stderr.contains("pick the split"), "{stderr}");

    let (ok, _, stderr) = promptloop(&dir, &["eval", "mini-triage", "--predictions", "lost.jsonl", "--baseline"]);
    assert!(!ok);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
