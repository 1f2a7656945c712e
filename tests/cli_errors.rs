//! The CLI as a user meets its errors: a down endpoint, a broken pipeline file.

use assert_cmd::Command;

mod common;

fn project(lm: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    std::fs::create_dir_all(dir.path().join("datasets")).unwrap();
    std::fs::copy("tests/data/mini-triage.jsonl", dir.path().join("datasets/mini-triage.jsonl")).unwrap();
    let toml = common::triage_toml("datasets/mini-triage.jsonl", lm, "kind = \"bootstrap_few_shot\"");
    std::fs::write(dir.path().join("pipelines/mini-triage.toml"), toml).unwrap();
    dir
}

fn closed_port() -> u16 {
    // Bind, read the port, close: nothing listens there afterwards.
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_down_endpoint_stops_the_compile_with_a_clear_error_and_writes_nothing() {
    let lm = format!(
        "provider = \"openai\"\nbase_url = \"http://127.0.0.1:{}/v1\"\nmodel = \"m\"\nmax_retries = 1\ntimeout_secs = 5",
        closed_port()
    );
    let dir = project(&lm);
    let out = Command::cargo_bin("promptloop")
        .unwrap()
        .args(["--root", dir.path().to_str().unwrap(), "compile", "mini-triage"])
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("optimizing stopped: the LM failed"), "{err}");
    assert!(err.contains("cannot reach") && err.contains("2 attempts"), "{err}");
    assert!(!dir.path().join("artifacts").exists(), "a failed compile writes no artifact");
}

#[test]
fn a_broken_pipeline_file_is_reported_with_file_and_line() {
    let dir = project("provider = \"embedded\"\nmodel = \"m.gguf\"");
    let file = dir.path().join("pipelines/mini-triage.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace("[metric]", "[metric");
    std::fs::write(&file, text).unwrap();
    let out = Command::cargo_bin("promptloop")
        .unwrap()
        .args(["--root", dir.path().to_str().unwrap(), "eval", "mini-triage", "--baseline"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mini-triage.toml") && err.contains("line"), "{err}");
}

#[test]
fn a_missing_embedded_model_says_how_to_fetch_it() {
    let dir = project("provider = \"embedded\"\nmodel = \"nowhere/model.gguf\"");
    let out = Command::cargo_bin("promptloop")
        .unwrap()
        .args(["--root", dir.path().to_str().unwrap(), "eval", "mini-triage", "--baseline"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nowhere/model.gguf") && err.contains("scripts/setup-model.sh"), "{err}");
}

#[test]
fn a_json_schema_the_embedded_model_cannot_enforce_stops_the_load() {
    let dir = project("provider = \"embedded\"\nmodel = \"m.gguf\"");
    let file = dir.path().join("pipelines/mini-triage.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "[signatures.triage.outputs]\n",
        "[signatures.triage.outputs]\nrefund = { type = \"json\", schema = { type = \"object\", properties = { iban = { type = \"string\", pattern = \"^[A-Z]{2}\" } } } }\n",
    );
    std::fs::write(&file, text).unwrap();
    let out = Command::cargo_bin("promptloop")
        .unwrap()
        .args(["--root", dir.path().to_str().unwrap(), "eval", "mini-triage", "--baseline"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mini-triage.toml"), "{err}");
    assert!(err.contains("signatures.triage.outputs.refund.schema"), "{err}");
    assert!(err.contains("`pattern` at /properties/iban"), "{err}");
}

fn promptloop(dir: &tempfile::TempDir, args: &[&str]) -> (bool, String) {
    let mut all = vec!["--root", dir.path().to_str().unwrap()];
    all.extend_from_slice(args);
    let out = Command::cargo_bin("promptloop").unwrap().args(&all).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn outputs_the_metric_cannot_find_and_an_empty_split_are_errors_not_scores() {
    let dir = project("provider = \"embedded\"\nmodel = \"m.gguf\"");
    // The dataset names its output `label`; the signature and [metric] say `queue`.
    let data = dir.path().join("datasets/mini-triage.jsonl");
    let renamed = std::fs::read_to_string(&data).unwrap().replace("\"queue\"", "\"label\"");
    std::fs::write(&data, renamed).unwrap();
    for args in [&["eval", "mini-triage", "--baseline"][..], &["compile", "mini-triage"][..]] {
        let (ok, said) = promptloop(&dir, args);
        assert!(!ok, "{args:?} scored a dataset without the metric's field:\n{said}");
        assert!(said.contains("no example has the output `queue` that [metric] scores"), "{said}");
        assert!(said.contains("the examples' outputs are `label`"), "{said}");
    }
    assert!(!dir.path().join("artifacts").exists(), "an artifact was written");

    let dir = project("provider = \"embedded\"\nmodel = \"m.gguf\"");
    let file = dir.path().join("pipelines/mini-triage.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "path = \"datasets/mini-triage.jsonl\"",
        "path = \"datasets/mini-triage.jsonl\"\nsplit = { train = 0.8, dev = 0.0, test = 0.2 }",
    );
    std::fs::write(&file, text).unwrap();
    let (ok, said) = promptloop(&dir, &["eval", "mini-triage", "--baseline", "--split", "dev"]);
    assert!(!ok, "an empty split was scored:\n{said}");
    assert!(said.contains("the dev split is empty (60 examples in all)"), "{said}");
}

#[test]
fn every_prediction_failing_is_an_error_with_its_reason() {
    // A reply budget beyond the embedded model's context: every prediction fails.
    let model =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".promptloop/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "the embedded model is missing; run scripts/setup-model.sh");
    let lm = format!("provider = \"embedded\"\nmodel = \"{}\"\nmax_tokens = 1000000", model.display());
    let dir = project(&lm);
    let (ok, said) = promptloop(&dir, &["eval", "mini-triage", "--baseline", "--split", "test", "--limit", "3"]);
    assert!(!ok, "a program whose every prediction failed was scored:\n{said}");
    assert!(said.contains("every prediction of hand-written baseline on test failed (3 of 3"), "{said}");
    assert!(said.contains("the first:"), "{said}");
}
