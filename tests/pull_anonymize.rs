//! Everything a pull writes has passed the anonymizer: record ids, object keys,
//! strings, numbers (whole, float, negative), inside arrays and nested objects,
//! in the examples, the inbox, the manifest and the pull's state.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use promptloop::config::PipelineConfig;
use promptloop::logs::anonymize::anonymous_id;
use promptloop::logs::pull::{PullRequest, Since, pull};
use serde_json::{Value, json};

#[path = "common/pull_pipeline.rs"]
mod pull_pipeline;
use pull_pipeline::PULL_PIPELINE as PIPELINE;

const EMAIL_ID: &str = "jane.doe@example.com";
const KEY_ID: &str = "sk-proj-Q7vX2mN9pL4kR8tY1wZ6bC3dF5gH0jAs";

/// Values of the log below that must not reach any written file, as they were
/// logged and as bare digits.
const SECRETS: &[&str] = &[
    "jane.doe",
    "sk-proj-Q7vX2mN9pL4kR8tY1wZ6bC3dF5gH0jAs",
    "Q7vX2mN9pL4kR8tY1wZ6bC3dF5gH0jAs",
    "john.roe",
    "mary.major",
    "ops.lead",
    "4155550123",
    "7700900123",
    "4111111111111111",
    "5555555555554444",
    "378282246310005",
    "4000056655665556",
    "203.0.113.45",
];

fn log() -> String {
    let records = [
        // An email as the id; PII in keys of inputs and production output;
        // phones in an array, as numbers and strings; a card logged as a float.
        json!({
            "id": EMAIL_ID,
            "timestamp": "2026-11-10T10:00:00Z",
            "inputs": {
                "message": "My card was declined at the shop, please look into it",
                "phones": [4155550123u64, "+44 7700 900123"],
                "card": 4111111111111111.0,
                "john.roe@example.org": "cc",
            },
            "output": {"queue": "cards", "notified mary.major@example.net": true},
            "reference": {"queue": "cards"},
        }),
        // A secret as the id; a negative card number; PII in a rejected reference's keys and values.
        json!({
            "id": KEY_ID,
            "timestamp": "2026-11-11T10:00:00Z",
            "inputs": {
                "message": "The refund never reached my account",
                "payment": {"card_number": -5555555555554444i64, "cards": [378282246310005u64]},
            },
            "output": {"queue": "payments"},
            "reference": {"queue": "refunds", "ops.lead@example.com": "4000056655665556"},
        }),
        // Nothing personal in the id: it stays as it was logged.
        json!({
            "id": "req-7",
            "timestamp": "2026-11-12T10:00:00Z",
            "inputs": {"message": "Someone at 203.0.113.45 logged into my account"},
            "output": {"queue": "security"},
            "reference": {"queue": "security"},
        }),
    ];
    records.iter().map(|r| format!("{r}\n")).collect()
}

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

async fn pulled_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["pipelines", "datasets/triage", "logs"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    std::fs::write(dir.path().join("pipelines/triage.toml"), PIPELINE).unwrap();
    std::fs::write(dir.path().join("logs/week.jsonl"), log()).unwrap();
    let config = PipelineConfig::load(&dir.path().join("pipelines/triage.toml")).unwrap();
    let report =
        pull(PullRequest { config, since: Since::All, until: Some(time("2026-11-20T00:00:00Z")), dry_run: false })
            .await
            .unwrap();
    assert_eq!(report.records, 3);
    assert_eq!(report.examples + report.inbox, 3, "{report}");
    dir
}

#[tokio::test]
async fn nothing_personal_reaches_any_file_a_pull_writes() {
    let dir = pulled_repo().await;
    let mut written = Vec::new();
    files_under(&dir.path().join("datasets"), &mut written);
    files_under(&dir.path().join(".promptloop"), &mut written);
    assert!(written.iter().any(|p| p.ends_with("examples.jsonl")));
    assert!(written.iter().any(|p| p.ends_with("inbox.jsonl")));
    for path in &written {
        let text = std::fs::read_to_string(path).unwrap();
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} is in {}:\n{text}", path.display());
        }
    }
}

#[tokio::test]
async fn ids_with_pii_become_a_stable_hash_and_the_rest_stay_as_logged() {
    let dir = pulled_repo().await;
    let mut source_ids = Vec::new();
    for file in ["examples.jsonl", "inbox.jsonl"] {
        let text = std::fs::read_to_string(dir.path().join("datasets/triage").join(file)).unwrap();
        for line in text.lines() {
            let example: Value = serde_json::from_str(line).unwrap();
            for id in example["source_ids"].as_array().unwrap() {
                source_ids.push(id.as_str().unwrap().to_string());
            }
        }
    }
    source_ids.sort();
    let mut expected = vec![
        anonymous_id(EMAIL_ID, &time("2026-11-10T10:00:00Z")),
        anonymous_id(KEY_ID, &time("2026-11-11T10:00:00Z")),
        "req-7".to_string(),
    ];
    expected.sort();
    assert_eq!(source_ids, expected);
    // Whoever holds the log finds the line again; the same id at another time is another line.
    assert!(expected[0].starts_with("anon-") && expected[0].len() == "anon-".len() + 16);
    assert_ne!(
        anonymous_id(EMAIL_ID, &time("2026-11-10T10:00:00Z")),
        anonymous_id(EMAIL_ID, &time("2026-11-10T10:00:01Z"))
    );
}

#[tokio::test]
async fn keys_arrays_and_numbers_get_placeholders_in_the_dataset() {
    let dir = pulled_repo().await;
    let read = |file: &str| -> Vec<Value> {
        std::fs::read_to_string(dir.path().join("datasets/triage").join(file))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let examples = read("examples.jsonl");
    let declined = examples.iter().find(|e| e["inputs"]["message"].as_str().unwrap().contains("declined")).unwrap();
    assert_eq!(declined["inputs"]["phones"], json!(["<PHONE_1>", "<PHONE_2>"]));
    assert_eq!(declined["inputs"]["card"], "<CARD_1>");
    assert_eq!(declined["inputs"]["<EMAIL_1>"], "cc");
    assert_eq!(declined["production"], json!({"queue": "cards", "notified <EMAIL_2>": true}));
    let inbox = read("inbox.jsonl");
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0]["inputs"]["payment"], json!({"card_number": "<CARD_1>", "cards": ["<CARD_2>"]}));
    assert_eq!(inbox[0]["rejected_reference"], json!({"queue": "refunds", "<EMAIL_1>": "<CARD_3>"}));
}
