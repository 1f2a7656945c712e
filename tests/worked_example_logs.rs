//! The worked examples' committed production logs, pulled as `promptloop pull`
//! pulls them on a fresh clone: every count the logs' READMEs state, so a
//! change to the logs, their generators, the datasets or the pull shows up
//! here. No LM is needed.

use std::path::Path;

use chrono::{DateTime, Utc};
use promptloop::config::PipelineConfig;
use promptloop::dataset::parse_examples;
use promptloop::logs::pull::{PullReport, PullRequest, Since, pull};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch repository with the example's pipeline, dataset and logs as committed.
fn scratch(pipeline: &str, dataset: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = manifest_dir();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    std::fs::copy(
        root.join(format!("pipelines/{pipeline}.toml")),
        dir.path().join(format!("pipelines/{pipeline}.toml")),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join(format!("datasets/{dataset}"))).unwrap();
    std::fs::copy(
        root.join(format!("datasets/{dataset}/examples.jsonl")),
        dir.path().join(format!("datasets/{dataset}/examples.jsonl")),
    )
    .unwrap();
    let logs = dir.path().join(format!("logs/{dataset}"));
    std::fs::create_dir_all(&logs).unwrap();
    for entry in std::fs::read_dir(root.join(format!("logs/{dataset}"))).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".jsonl.gz") {
            std::fs::copy(&path, logs.join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

async fn pull_all(dir: &Path, pipeline: &str) -> PullReport {
    let config = PipelineConfig::load(&dir.join(format!("pipelines/{pipeline}.toml"))).unwrap();
    let until = DateTime::parse_from_rfc3339("2026-11-30T00:00:00Z").unwrap().with_timezone(&Utc);
    pull(PullRequest { config, since: Since::All, until: Some(until), dry_run: false }).await.unwrap()
}

/// The report's lines from `malformed` on, without the bad lines it names one by one.
fn counts(report: &PullReport) -> Vec<String> {
    report
        .to_string()
        .lines()
        .skip(2)
        .filter(|line| !line.starts_with("                 "))
        .map(str::to_string)
        .collect()
}

fn examples(dir: &Path, dataset: &str) -> Vec<promptloop::dataset::Example> {
    let path = dir.join(format!("datasets/{dataset}/examples.jsonl"));
    parse_examples(&std::fs::read(&path).unwrap(), &path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_reply_logs_pull_as_their_readme_says() {
    let dir = scratch("support-reply", "support-reply");
    let report = pull_all(dir.path(), "support-reply").await;
    assert_eq!((report.units, report.lines), (4, 652), "{report}");
    assert_eq!(
        counts(&report),
        [
            "  malformed    16 (invalid_utf8 4, missing_field 4, not_json 8)",
            "  records      636 in the window, 0 outside it",
            "  anonymized   41 (CARD 4, EMAIL 6, IBAN 11, IP 4, PHONE 5, SECRET 6, SSN 4, URL 1)",
            "  signals      routine 449, urgent 98, escalating 89",
            "  references   251 with, 385 without, 0 not fitting the outputs (to the inbox)",
            "  duplicates   exact 29 in this pull, 2 already in the dataset or inbox; near 0 in this pull, 0 in the dataset or inbox; 0 kept out across the test boundary",
            "  sampled      routine 36, urgent 12, escalating 12 (not sampled: 525)",
            "  added        train 43, dev 7, test 10",
            "  inbox        20 new, 0 promoted to examples by a person",
            "  dataset      360 examples, 20 in the inbox",
        ],
        "{report}"
    );
    // A pulled example holds what the program and the rubric read: the message, the
    // conversation's earlier messages as `inputs.history`, a reference reply, and the
    // signal the router will read from the same two inputs.
    let pulled = examples(dir.path(), "support-reply");
    assert_eq!(pulled.len(), 360);
    for example in &pulled[300..] {
        assert!(example.inputs["message"].is_string(), "{}", example.id);
        let history = example.inputs["history"].as_array().unwrap_or_else(|| panic!("{}: no history", example.id));
        assert!(
            example.outputs["reply"].as_str().is_some_and(|r| r.split_whitespace().count() <= 60),
            "{}",
            example.id
        );
        let signal = &example.extra["signal"];
        let earlier =
            signal["evidence"].as_array().unwrap().iter().any(|e| e.as_str().unwrap().contains("earlier message"));
        assert_eq!(earlier, !history.is_empty(), "{}: {signal}", example.id);
        assert!(example.extra["production"]["reply"].is_string(), "{}", example.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meeting_actions_logs_pull_as_their_readme_says() {
    let dir = scratch("meeting-actions", "meeting-actions");
    let report = pull_all(dir.path(), "meeting-actions").await;
    assert_eq!((report.units, report.lines), (4, 38), "{report}");
    assert_eq!(
        counts(&report),
        [
            "  malformed    2 (not_json 2)",
            "  records      36 in the window, 0 outside it",
            "  anonymized   50 (EMAIL 2, NAME 46, PHONE 2)",
            "  signals      routine 35, escalating 1",
            "  references   20 with, 16 without, 0 not fitting the outputs (to the inbox)",
            "  duplicates   exact 4 in this pull, 4 already in the dataset or inbox; near 0 in this pull, 0 in the dataset or inbox; 0 kept out across the test boundary",
            "  sampled      routine 17, escalating 1 (not sampled: 0)",
            "  added        train 13, test 5",
            "  inbox        10 new, 0 promoted to examples by a person",
            "  dataset      98 examples, 10 in the inbox",
        ],
        "{report}"
    );
    // The labelled new transcripts, with their labels as written in transcripts.jsonl; in five,
    // names after a title and contact details are placeholders, the same in the transcript and the labels.
    let pulled = examples(dir.path(), "meeting-actions");
    assert_eq!(pulled.len(), 98);
    let written = std::fs::read_to_string(manifest_dir().join("logs/meeting-actions/transcripts.jsonl")).unwrap();
    let labels: std::collections::HashMap<String, serde_json::Value> = written
        .lines()
        .map(|line| {
            let t: serde_json::Value = serde_json::from_str(line).unwrap();
            (t["inputs"]["transcript"].as_str().unwrap().to_string(), t["outputs"].clone())
        })
        .collect();
    let mut verbatim = 0;
    for example in &pulled[80..] {
        let transcript = example.inputs["transcript"].as_str().unwrap();
        assert!(example.inputs["meeting_date"].is_string(), "{}", example.id);
        assert!(example.outputs["meeting_type"].is_string(), "{}", example.id);
        for action in example.outputs["actions"].as_array().unwrap() {
            let due = &action["due_date"];
            assert!(due.is_null() || due.as_str().is_some_and(|d| d.len() == 10), "{}: {action}", example.id);
        }
        if let Some(outputs) = labels.get(transcript) {
            assert_eq!(&serde_json::Value::Object(example.outputs.clone()), outputs, "{}", example.id);
            verbatim += 1;
        } else {
            assert!(["<NAME_1>", "<EMAIL_1>", "<PHONE_1>"].iter().any(|p| transcript.contains(p)), "{}", example.id);
        }
    }
    assert_eq!(verbatim, 13);
}

/// Every worked example reads its own committed logs, so `promptloop run <name>` works offline.
#[test]
fn every_worked_example_reads_its_committed_logs() {
    use promptloop::config::SourceLocation;
    for (pipeline, logs) in [
        ("support-triage", "support-triage"),
        ("support-reply", "support-reply"),
        ("support-reply-single", "support-reply"),
        ("meeting-actions", "meeting-actions"),
    ] {
        let config = PipelineConfig::load(&manifest_dir().join(format!("pipelines/{pipeline}.toml"))).unwrap();
        let source = config.source.unwrap_or_else(|| panic!("{pipeline} has no [source]"));
        match source.location {
            SourceLocation::Files { patterns } => {
                assert_eq!(patterns.len(), 1, "{pipeline}");
                assert!(patterns[0].ends_with(&format!("logs/{logs}/*.jsonl.gz")), "{pipeline}: {patterns:?}");
            }
            other => panic!("{pipeline}: expected files, got {other:?}"),
        }
        let weeks: Vec<String> = (44..=47).map(|w| format!("2026-W{w}.jsonl.gz")).collect();
        for week in &weeks {
            assert!(manifest_dir().join(format!("logs/{logs}/{week}")).is_file(), "{pipeline}: logs/{logs}/{week}");
        }
    }
}

/// A router by the detector reads the conversation from the `history` input:
/// a record that carries its history only beside its inputs gets that input
/// filled, and one that carries it only among its inputs is read with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routers_history_input_and_a_records_history_fill_each_other() {
    let dir = scratch("support-reply", "support-reply");
    let file = dir.path().join("pipelines/support-reply.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("paths = [\"logs/support-reply/*.jsonl.gz\"]"));
    std::fs::write(
        &file,
        text.replace("paths = [\"logs/support-reply/*.jsonl.gz\"]", "paths = [\"logs/extra/*.jsonl\"]"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("logs/extra")).unwrap();
    let (declined, login) =
        ("URGENT: my card was declined at the till, fix it now", "I STILL cannot log in to the app, help me today!!");
    let earlier = ["I asked about this yesterday", "Any news on my question?"];
    let records = [
        serde_json::json!({"id": "beside", "timestamp": "2026-11-20T10:00:00Z",
            "inputs": {"message": declined}, "history": earlier,
            "reference": {"reply": "I understand this is urgent. In the app, go to Cards > Declined payments to see why."}}),
        serde_json::json!({"id": "among", "timestamp": "2026-11-20T11:00:00Z",
            "inputs": {"message": login, "history": earlier},
            "reference": {"reply": "I understand this is urgent. In the app, tap Forgot password to reset your login now."}}),
    ];
    let lines: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(dir.path().join("logs/extra/week.jsonl"), lines).unwrap();
    let before = examples(dir.path(), "support-reply").len();
    pull_all(dir.path(), "support-reply").await;
    let all = examples(dir.path(), "support-reply");
    let pulled = &all[before..];
    assert_eq!(pulled.len(), 2, "{pulled:?}");
    for example in pulled {
        assert_eq!(example.inputs["history"], serde_json::json!(earlier), "{example:?}");
        assert_eq!(example.extra["signal"]["label"], "escalating", "{example:?}");
    }
}
