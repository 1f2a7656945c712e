//! `pull`: logs in, a clean growing dataset out — tested end to end on real
//! files (plain and gzip) and a real HTTP server on 127.0.0.1.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use promptloop::config::PipelineConfig;
use promptloop::dataset::store::Manifest;
use promptloop::dataset::{Dataset, Split, parse_examples, split_of};
use promptloop::logs::dedup::{comparable_text, content_key};
use promptloop::logs::pull::{PullReport, PullRequest, Since, pull};
use serde_json::{Value, json};

#[path = "common/pull_pipeline.rs"]
mod pull_pipeline;
use pull_pipeline::PULL_PIPELINE as PIPELINE;

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new(extra_toml: &str) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
        std::fs::create_dir_all(dir.path().join("datasets/triage")).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(dir.path().join("pipelines/triage.toml"), format!("{PIPELINE}\n{extra_toml}")).unwrap();
        Repo { dir }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn config(&self) -> PipelineConfig {
        PipelineConfig::load(&self.path("pipelines/triage.toml")).unwrap()
    }
    fn write(&self, rel: &str, bytes: &[u8]) {
        std::fs::write(self.path(rel), bytes).unwrap();
    }
    fn write_gz(&self, rel: &str, text: &str) {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        self.write(rel, &encoder.finish().unwrap());
    }
    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }
    fn examples(&self) -> Vec<promptloop::dataset::Example> {
        let path = self.path("datasets/triage/examples.jsonl");
        parse_examples(&std::fs::read(&path).unwrap(), &path).unwrap()
    }
    fn inbox(&self) -> Vec<Value> {
        self.read("datasets/triage/inbox.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
    async fn pull(&self, since: Since) -> anyhow::Result<PullReport> {
        self.pull_until(since, "2026-11-20T00:00:00Z").await
    }
    async fn pull_until(&self, since: Since, until: &str) -> anyhow::Result<PullReport> {
        pull(PullRequest { config: self.config(), since, until: Some(time(until)), dry_run: false }).await
    }
}

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn record(id: &str, day: u32, message: &str, reference: Option<&str>) -> String {
    let mut r = json!({
        "id": id,
        "timestamp": format!("2026-11-{day:02}T10:00:00Z"),
        "inputs": {"message": message},
        "output": {"queue": "cards"},
    });
    if let Some(queue) = reference {
        r["reference"] = json!({"queue": queue});
    }
    r.to_string()
}

fn lines(records: &[String]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

const SEED_EXAMPLES: &str = r#"{"id": "seed-1", "inputs": {"message": "How do I activate my new card?"}, "outputs": {"queue": "cards"}}
{"id": "seed-2", "inputs": {"message": "Why is my transfer still pending after three days?"}, "outputs": {"queue": "transfers"}}
{"id": "seed-3", "inputs": {"message": "I think someone used my card without permission."}, "outputs": {"queue": "security"}}
"#;

#[tokio::test]
async fn pull_turns_raw_logs_into_clean_examples_and_reports_every_step() {
    let repo = Repo::new("");
    repo.write("datasets/triage/examples.jsonl", SEED_EXAMPLES.as_bytes());
    let mut week1 = lines(&[
        record("r1", 10, "My card has not arrived yet, can you check?", Some("cards")),
        record(
            "r2",
            10,
            "Please email me at jane.doe@example.com or call +44 20 7946 0958 about my refund",
            Some("payments"),
        ),
        record("r3", 11, "my card has NOT arrived yet. can you check", Some("cards")),
        "{not json at all\n".trim_end().to_string(),
        r#"{"id": "r5", "timestamp": "2026-11-11T10:00:00Z", "output": {"queue": "cards"}}"#.to_string(),
        record("r6", 12, "How do I activate my new card?", Some("cards")),
        record("r7", 12, "Why was I charged twice?! Fix this NOW!!!", Some("payments")),
    ]);
    week1.push_str("{\"id\": \"r8\", \"timestamp\": 1762855200, \"inputs\": {\"message\": \"caf\u{e9}\"}}\n");
    let mut bytes = week1.into_bytes();
    bytes.extend_from_slice(b"{\"id\": \"r9\", \"timestamp\": 1762855200, \"inputs\": {\"message\": \"\xff\xfe\"}}\n");
    repo.write("logs/week1.jsonl", &bytes);
    repo.write_gz(
        "logs/week2.jsonl.gz",
        &lines(&[
            record(
                "r10",
                13,
                "This is the third time I've asked: where is my transfer? I want to speak to a manager.",
                Some("transfers"),
            ),
            record("r11", 13, "Can I get a refund for a payment I cancelled?", None),
            record("r12", 14, "My card number 4111 1111 1111 1111 was declined at the shop", Some("payments")),
            record("r13", 14, "What exchange rate do you use?", Some("not_a_queue")),
        ]),
    );

    // A file cut short in the middle of its compressed stream (its records are
    // from after the window, so whatever part of it decodes adds nothing).
    let late: Vec<String> =
        (0..200).map(|i| record(&format!("late-{i}"), 25, &format!("late message {i}"), None)).collect();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(lines(&late).as_bytes()).unwrap();
    let gz = encoder.finish().unwrap();
    repo.write("logs/week3.jsonl.gz", &gz[..gz.len() / 2]);

    let report = repo.pull(Since::LastPull).await.unwrap();

    assert_eq!(report.units, 3);
    // Not JSON, no inputs, invalid UTF-8 (r8 has no output or reference: fine), the cut gzip.
    assert_eq!(report.malformed.values().sum::<u64>(), 4, "{:?}", report.problems);
    assert!(report.malformed.get("invalid_utf8") == Some(&1), "{:?}", report.malformed);
    assert!(report.malformed.get("truncated") == Some(&1), "{:?}", report.malformed);
    assert!(
        report.problems.iter().any(|p| p.contains("week3.jsonl.gz:") && p.contains("ends early")),
        "{:?}",
        report.problems
    );
    assert!(report.outside_window > 0 && report.outside_window < 200, "part of the cut file decodes");
    assert!(report.problems.iter().any(|p| p.contains("week1.jsonl:4:")), "{:?}", report.problems);
    assert!(
        report.problems.iter().any(|p| p.contains("week1.jsonl:5:") && p.contains("inputs")),
        "{:?}",
        report.problems
    );
    assert!(report.problems.iter().any(|p| p.contains("week1.jsonl:9:")), "{:?}", report.problems);
    assert_eq!(report.records, 10);
    assert_eq!(report.anonymized.total(), 3, "email, phone, card");
    assert_eq!(report.with_reference, 7);
    assert_eq!(report.without_reference, 2);
    assert_eq!(report.invalid_reference, 1);
    assert_eq!(report.duplicates.exact_existing, 1, "r6 is seed-1");
    assert_eq!(report.duplicates.exact_in_pull, 1, "r3 repeats r1 after normalization");

    let examples = repo.examples();
    let written = repo.read("datasets/triage/examples.jsonl");
    assert!(written.starts_with(SEED_EXAMPLES), "existing lines are kept byte for byte");
    assert_eq!(examples.len(), 3 + 5, "r1, r2, r7, r10, r12");
    for secret in ["jane.doe@example.com", "7946", "4111"] {
        assert!(!written.contains(secret), "{secret} reached the dataset");
        assert!(!repo.read("datasets/triage/inbox.jsonl").contains(secret));
    }
    let by_message =
        |needle: &str| examples.iter().find(|e| e.inputs["message"].as_str().unwrap().contains(needle)).unwrap();
    assert_eq!(
        by_message("Please email").inputs["message"],
        "Please email me at <EMAIL_1> or call <PHONE_1> about my refund"
    );
    let repeated = by_message("arrived");
    assert_eq!(repeated.extra["source_ids"], json!(["r1", "r3"]));
    assert_eq!(repeated.extra["seen"], 2);
    assert_eq!(repeated.extra["signal"]["label"], "routine");
    assert_eq!(by_message("charged twice").extra["signal"]["label"], "urgent");
    let escalating = by_message("third time");
    assert_eq!(escalating.extra["signal"]["label"], "escalating");
    assert!(
        escalating.extra["signal"]["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("speak to a manager"))
    );
    assert_eq!(escalating.extra["production"], json!({"queue": "cards"}));
    assert_eq!(escalating.extra["added"], "2026-11-20");
    assert!(examples.iter().all(|e| e.id.starts_with("seed-") || e.id.starts_with("log-")));

    // Records without a (fitting) reference wait in the inbox, anonymized.
    let inbox = repo.inbox();
    let inbox_messages: BTreeSet<&str> = inbox.iter().map(|r| r["inputs"]["message"].as_str().unwrap()).collect();
    assert_eq!(
        inbox_messages,
        BTreeSet::from(["Can I get a refund for a payment I cancelled?", "What exchange rate do you use?", "café"])
    );
    assert!(inbox.iter().all(|r| r["outputs"] == json!({})));
    let rejected = inbox.iter().find(|r| r["inputs"]["message"] == "What exchange rate do you use?").unwrap();
    assert_eq!(rejected["rejected_reference"], json!({"queue": "not_a_queue"}), "kept for the person who fixes it");

    // The manifest describes the file as written.
    let manifest: Manifest = serde_json::from_str(&repo.read("datasets/triage/manifest.json")).unwrap();
    assert_eq!(manifest.examples, 8);
    assert_eq!(manifest.inbox, 3);
    assert_eq!(manifest.splits.values().sum::<usize>(), 8);
    assert_eq!(manifest.signals.values().flat_map(|s| s.get("unlabeled")).sum::<usize>(), 3);
    let dataset = Dataset::load(&repo.path("datasets/triage/examples.jsonl"), &repo.config().dataset.split).unwrap();
    assert_eq!(manifest.content_hash, dataset.content_hash);
    assert_eq!(report.content_hash, dataset.content_hash);
    assert_eq!(report.added.values().sum::<usize>(), 5);

    // The printed report walks every step.
    let printed = report.to_string();
    for step in [
        "read",
        "malformed",
        "week1.jsonl:4",
        "anonymized   3",
        "EMAIL 1",
        "signals",
        "duplicates",
        "sampled",
        "added",
        "inbox",
    ] {
        assert!(printed.contains(step), "`{step}` missing from:\n{printed}");
    }
    assert!(!printed.contains("jane.doe"));
}

#[tokio::test]
async fn a_second_pull_reads_only_what_is_new_and_keeps_human_edits() {
    let repo = Repo::new("");
    repo.write("datasets/triage/examples.jsonl", SEED_EXAMPLES.as_bytes());
    repo.write(
        "logs/a.jsonl",
        lines(&[
            record("a1", 10, "Where can I see my card PIN?", Some("security")),
            record("a2", 10, "How long does a transfer from Europe take?", Some("transfers")),
            record("a3", 10, "Is there a fee for topping up by card?", None),
        ])
        .as_bytes(),
    );
    let first = repo.pull(Since::LastPull).await.unwrap();
    assert_eq!(first.added.values().sum::<usize>(), 2);
    assert_eq!(first.inbox_added, 1);

    // A person corrects an example (a new label, a note, their own key order)
    // and labels the inbox record.
    let text = repo.read("datasets/triage/examples.jsonl");
    let edited_line = r#"{"outputs": {"queue": "cards"}, "id": "seed-1", "note": "checked by hand", "inputs": {"message": "How do I activate my new card?"}}"#;
    let edited = text.replacen(text.lines().next().unwrap(), edited_line, 1);
    repo.write("datasets/triage/examples.jsonl", edited.as_bytes());
    let mut inbox = repo.inbox();
    inbox[0]["outputs"] = json!({"queue": "payments"});
    inbox[0]["reviewer"] = json!("sam");
    let labelled = serde_json::to_string(&inbox[0]).unwrap();
    repo.write("datasets/triage/inbox.jsonl", format!("{labelled}\n").as_bytes());

    // New logs arrive; the old file is still there.
    repo.write("logs/b.jsonl", lines(&[record("b1", 22, "My top-up failed twice today", Some("payments"))]).as_bytes());
    let second = repo.pull_until(Since::LastPull, "2026-11-27T00:00:00Z").await.unwrap();
    assert_eq!(second.since, Some(time("2026-11-20T00:00:00Z")), "the window starts where the last pull ended");
    assert_eq!(second.outside_window, 3, "last week's records are read but not taken again");
    assert_eq!(second.added.values().sum::<usize>(), 1);
    assert_eq!(second.promoted, 1);

    let after = repo.read("datasets/triage/examples.jsonl");
    assert!(after.starts_with(&edited), "nothing a person wrote is rewritten");
    assert!(after.lines().any(|l| l == labelled), "the labelled inbox line moves over as written");
    assert_eq!(repo.inbox().len(), 0);
    assert_eq!(repo.examples().len(), 3 + 2 + 1 + 1);

    // --since 7d covers the same week again: its record is already in.
    let third = repo.pull_until(Since::Ago(chrono::Duration::days(7)), "2026-11-27T00:00:00Z").await.unwrap();
    assert_eq!(third.since, Some(time("2026-11-20T00:00:00Z")));
    assert_eq!(third.added.values().sum::<usize>(), 0);
    assert_eq!(third.duplicates.exact_existing, 1);
    assert!(repo.read("datasets/triage/examples.jsonl").starts_with(&edited));
}

/// Distinct, unrelated sentences (no two near each other), the same on every run.
fn sentences(count: usize, salt: u64) -> Vec<String> {
    const WORDS: &[&str] = &[
        "card",
        "transfer",
        "refund",
        "pin",
        "top-up",
        "statement",
        "fee",
        "limit",
        "app",
        "account",
        "blocked",
        "pending",
        "declined",
        "abroad",
        "euro",
        "dollar",
        "cash",
        "machine",
        "salary",
        "rent",
        "phone",
        "stolen",
        "virtual",
        "contactless",
        "cheque",
        "verify",
        "identity",
        "passport",
        "address",
        "charge",
        "twice",
        "wrong",
        "amount",
        "exchange",
        "rate",
        "holiday",
        "merchant",
        "online",
        "shop",
        "partner",
        "child",
        "savings",
        "delivery",
        "expired",
        "frozen",
        "balance",
        "overdraft",
        "interest",
        "receipt",
        "beneficiary",
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ salt;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    (0..count).map(|_| (0..9).map(|_| WORDS[next() % WORDS.len()]).collect::<Vec<_>>().join(" ")).collect()
}

#[tokio::test]
async fn the_split_never_changes_as_the_dataset_grows() {
    let repo = Repo::new("[sample]\ntotal = 1000\ncaps = { routine = 1000 }\n");
    repo.write("datasets/triage/examples.jsonl", SEED_EXAMPLES.as_bytes());
    let mut weeks = Vec::new();
    for week in 0..3u32 {
        let records: Vec<String> = sentences(60, week as u64)
            .iter()
            .enumerate()
            .map(|(i, message)| record(&format!("w{week}-{i}"), 1 + week * 7, message, Some("cards")))
            .collect();
        weeks.push(lines(&records));
    }
    let config = repo.config();
    let mut splits_seen: Vec<(String, Split)> = Vec::new();
    for (week, text) in weeks.iter().enumerate() {
        repo.write(&format!("logs/week{week}.jsonl"), text.as_bytes());
        repo.pull(Since::All).await.unwrap();
        let dataset = Dataset::load(&repo.path("datasets/triage/examples.jsonl"), &config.dataset.split).unwrap();
        for (id, split) in &splits_seen {
            let now = dataset.split(*split);
            assert!(now.iter().any(|e| &e.id == id), "{id} left {split:?}");
        }
        splits_seen = [Split::Train, Split::Dev, Split::Test]
            .into_iter()
            .flat_map(|s| dataset.split(s).iter().map(move |e| (e.id.clone(), s)))
            .collect();
    }
    assert_eq!(splits_seen.len(), 3 + 3 * 60);
    let test = splits_seen.iter().filter(|(_, s)| *s == Split::Test).count();
    assert!((10..=45).contains(&test), "about 15% in test, got {test}");
}

/// Finds a variant of `base` whose example id lands in `want`.
fn variant_in(base: &str, want: Split, config: &PipelineConfig) -> String {
    for suffix in ["", " please", " thanks", " today", " again", " now", " asap", " quickly", " soon", " here"] {
        let message = format!("{base}{suffix}");
        let mut inputs = serde_json::Map::new();
        inputs.insert("message".into(), Value::String(message.clone()));
        let id = format!("log-{}", &content_key(&comparable_text(&inputs)).to_string()[..16]);
        if split_of(&id, &config.dataset.split) == want {
            return message;
        }
    }
    panic!("no variant of {base} lands in {want:?}");
}

#[tokio::test]
async fn a_near_duplicate_of_a_test_example_never_enters_train_or_dev() {
    // Near-duplicates count from 0.95 up; anything above 0.5 across the test
    // boundary is a leak.
    let repo = Repo::new("[dedup]\nthreshold = 0.95\nleak_threshold = 0.5\n");
    let config = repo.config();
    let test_message = "I was charged a foreign transaction fee on my card payment in Spain last week";
    let mut test_id = String::new();
    for i in 0.. {
        let id = format!("seed-{i}");
        if split_of(&id, &config.dataset.split) == Split::Test {
            test_id = id;
            break;
        }
    }
    let seed = json!({"id": test_id, "inputs": {"message": test_message}, "outputs": {"queue": "payments"}});
    repo.write("datasets/triage/examples.jsonl", format!("{seed}\n").as_bytes());

    let leak =
        variant_in("I was charged a foreign transaction fee on my card payment in Portugal", Split::Train, &config);
    let fine = variant_in("How do I order a second card for my partner", Split::Train, &config);
    repo.write(
        "logs/a.jsonl",
        lines(&[record("x1", 10, &leak, Some("payments")), record("x2", 10, &fine, Some("cards"))]).as_bytes(),
    );
    let report = repo.pull(Since::All).await.unwrap();
    assert_eq!(report.duplicates.leak_guarded, 1, "{report}");
    let examples = repo.examples();
    assert!(examples.iter().all(|e| e.inputs["message"] != leak.as_str()));
    assert!(examples.iter().any(|e| e.inputs["message"] == fine.as_str()));
}

#[tokio::test]
async fn rare_signals_survive_the_sample_and_the_sample_is_deterministic() {
    let extra = "[sample]\ntotal = 12\ncaps = { routine = 10, urgent = 5, escalating = 5 }\n";
    let mut records = Vec::new();
    for (i, message) in sentences(200, 99).iter().enumerate() {
        records.push(record(&format!("r{i}"), 10, message, Some("payments")));
    }
    records.push(record(
        "e1",
        11,
        "Third time I've asked about my frozen account, I want to speak to a manager",
        Some("security"),
    ));
    records.push(record("u1", 11, "URGENT my card IS BLOCKED at the airport!!!", Some("cards")));
    let forward = lines(&records);
    records.reverse();
    let backward = lines(&records);

    let mut datasets = Vec::new();
    for text in [forward, backward] {
        let repo = Repo::new(extra);
        repo.write("logs/a.jsonl", text.as_bytes());
        let report = repo.pull(Since::All).await.unwrap();
        assert_eq!(report.sampled.values().sum::<usize>(), 12);
        assert_eq!(report.sampled.get(&promptloop::logs::signals::Signal::Escalating), Some(&1));
        assert_eq!(report.sampled.get(&promptloop::logs::signals::Signal::Urgent), Some(&1));
        assert_eq!(report.not_sampled, 190);
        datasets.push(repo.read("datasets/triage/examples.jsonl"));
    }
    assert_eq!(datasets[0], datasets[1], "the same traffic in another order gives the same dataset");
}

#[tokio::test]
async fn a_dry_run_writes_nothing() {
    let repo = Repo::new("");
    repo.write("datasets/triage/examples.jsonl", SEED_EXAMPLES.as_bytes());
    repo.write("logs/a.jsonl", lines(&[record("a1", 10, "Where is my new card?", Some("cards"))]).as_bytes());
    let report = pull(PullRequest {
        config: repo.config(),
        since: Since::LastPull,
        until: Some(time("2026-11-20T00:00:00Z")),
        dry_run: true,
    })
    .await
    .unwrap();
    assert_eq!(report.added.values().sum::<usize>(), 1);
    assert_eq!(repo.read("datasets/triage/examples.jsonl"), SEED_EXAMPLES);
    assert!(!repo.path("datasets/triage/manifest.json").exists());
    assert!(!repo.path(".promptloop/pull/triage.json").exists());
}

/// A server that answers with a chunked JSONL body and drops the connection halfway.
async fn failing_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buffer = vec![0u8; 8192];
            let _ = socket.read(&mut buffer).await;
            let line = format!("{}\n", record("h1", 10, "Where is my card?", Some("cards")));
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n";
            let chunk = format!("{:x}\r\n{line}\r\n", line.len());
            let _ = socket.write_all(format!("{head}{chunk}").as_bytes()).await;
            // Promise another chunk, then hang up without sending it.
            let _ = socket.write_all(b"400\r\n{\"id\": \"h2\", \"timest").await;
            let _ = socket.shutdown().await;
        }
    });
    format!("http://{address}/logs")
}

#[tokio::test]
async fn a_source_failing_mid_stream_leaves_the_dataset_unchanged() {
    let url = failing_server().await;
    let repo = Repo::new("");
    let toml = repo.read("pipelines/triage.toml").replace(
        "[source]\nkind = \"files\"\npaths = [\"logs/*.jsonl*\"]",
        &format!("[source]\nkind = \"http\"\nurl = \"{url}\""),
    );
    repo.write("pipelines/triage.toml", toml.as_bytes());
    repo.write("datasets/triage/examples.jsonl", SEED_EXAMPLES.as_bytes());
    let error = repo.pull(Since::LastPull).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("nothing was written"), "{message}");
    assert!(message.contains("127.0.0.1"), "names the source: {message}");
    assert_eq!(repo.read("datasets/triage/examples.jsonl"), SEED_EXAMPLES);
    assert!(!repo.path("datasets/triage/inbox.jsonl").exists());
    assert!(!repo.path("datasets/triage/manifest.json").exists());
    assert!(!repo.path(".promptloop/pull/triage.json").exists(), "the window does not move");
}

#[tokio::test]
async fn pull_without_a_source_says_how_to_add_one() {
    let repo = Repo::new("");
    let toml =
        repo.read("pipelines/triage.toml").replace("[source]\nkind = \"files\"\npaths = [\"logs/*.jsonl*\"]\n", "");
    repo.write("pipelines/triage.toml", toml.as_bytes());
    let error = repo.pull(Since::LastPull).await.unwrap_err().to_string();
    assert!(error.contains("no [source] table") && error.contains("kind = \"files\""), "{error}");
}

#[test]
fn the_cli_prints_each_step() {
    let repo = Repo::new("");
    repo.write(
        "logs/a.jsonl",
        lines(&[record("a1", 10, "Call me on 020 7946 0958 about my card", Some("cards"))]).as_bytes(),
    );
    let output = assert_cmd::Command::cargo_bin("promptloop")
        .unwrap()
        .args([
            "--root",
            repo.dir.path().to_str().unwrap(),
            "pull",
            "triage",
            "--since",
            "all",
            "--until",
            "2026-11-20",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    for step in ["read", "anonymized   1 (PHONE 1)", "signals      routine 1", "added        ", "inbox"] {
        assert!(stdout.contains(step), "`{step}` missing from:\n{stdout}");
    }
    assert!(!stdout.contains("7946"));
    let bad = assert_cmd::Command::cargo_bin("promptloop")
        .unwrap()
        .args(["--root", repo.dir.path().to_str().unwrap(), "pull", "triage", "--since", "yesterday"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use a span like 7d"));
}

/// An export endpoint in the shape log gateways offer: JSONL pages of OpenAI
/// request/response pairs behind a bearer token, paged with `Link: rel="next"`,
/// filtered by `since`/`until`. It records what each request carried.
async fn openai_log_server(token: &'static str) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let pair = |id: &str, created: i64, message: &str, reference: Option<&str>| {
        let mut metadata = json!({"channel": "web"});
        if let Some(reference) = reference {
            metadata["reference"] = json!(reference);
        }
        json!({
            "request": {"model": "gpt-4o-mini", "messages": [
                {"role": "system", "content": "Route the message."},
                {"role": "user", "content": message}], "metadata": metadata},
            "response": {"id": id, "object": "chat.completion", "created": created, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\"queue\": \"cards\"}"}, "finish_reason": "stop"}]}
        })
        .to_string()
    };
    // 2026-11-10 and 2026-11-11.
    let pages = vec![
        format!(
            "{}\n{}\n",
            pair(
                "chatcmpl-1",
                1_794_301_200,
                "My card was swallowed by the ATM, mail me at sam@example.org",
                Some("cards")
            ),
            pair("chatcmpl-2", 1_794_301_300, "Why is my transfer to Spain still pending?", Some("transfers"))
        ),
        format!("{}\n", pair("chatcmpl-3", 1_794_387_600, "Can I pay with Apple Pay in shops?", None)),
    ];
    let app = axum::Router::new()
        .route(
            "/v1/logs",
            axum::routing::get(
                move |State((pages, seen)): State<(Vec<String>, Arc<Mutex<Vec<String>>>)>,
                      uri: axum::http::Uri,
                      headers: HeaderMap| async move {
                    let query: HashMap<String, String> = reqwest::Url::parse(&format!("http://x{uri}"))
                        .unwrap()
                        .query_pairs()
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
                    seen.lock().unwrap().push(format!(
                        "auth={auth} since={} until={} page={}",
                        query.get("since").map(String::as_str).unwrap_or("-"),
                        query.get("until").map(String::as_str).unwrap_or("-"),
                        query.get("page").map(String::as_str).unwrap_or("1"),
                    ));
                    if auth != format!("Bearer {token}") {
                        return (StatusCode::UNAUTHORIZED, HeaderMap::new(), String::new()).into_response();
                    }
                    let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                    let mut response_headers = HeaderMap::new();
                    if page < pages.len() {
                        // Like GitHub, the next link carries the whole query.
                        let next = format!(
                            "</v1/logs?since={}&until={}&page={}>; rel=\"next\"",
                            query.get("since").map(String::as_str).unwrap_or_default(),
                            query.get("until").map(String::as_str).unwrap_or_default(),
                            page + 1
                        );
                        response_headers.insert(header::LINK, next.parse().unwrap());
                    }
                    (StatusCode::OK, response_headers, pages[page - 1].clone()).into_response()
                },
            ),
        )
        .with_state((pages, seen.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/v1/logs"), seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_reads_openai_logs_from_an_http_export_with_a_token_and_pages() {
    const TOKEN: &str = "logs-token-7f3a-must-stay-secret";
    let (url, seen) = openai_log_server(TOKEN).await;
    let repo = Repo::new("");
    let toml = repo.read("pipelines/triage.toml").replace(
        "[source]\nkind = \"files\"\npaths = [\"logs/*.jsonl*\"]",
        &format!(
            "[source]\nkind = \"http\"\nurl = \"{url}\"\nformat = \"openai\"\ntoken_env = \"PULL_TEST_LOGS_TOKEN\"\npaging = \"link\"\nsince_param = \"since\"\nuntil_param = \"until\""
        ),
    );
    repo.write("pipelines/triage.toml", toml.as_bytes());

    // Without the token in the environment: a clear error naming the variable.
    let error = format!("{:#}", repo.pull(Since::Ago(chrono::Duration::days(14))).await.unwrap_err());
    assert!(error.contains("PULL_TEST_LOGS_TOKEN"), "{error}");

    // SAFETY: this test's own variable; nextest runs each test in its own process.
    unsafe { std::env::set_var("PULL_TEST_LOGS_TOKEN", TOKEN) };
    let report = repo.pull(Since::Ago(chrono::Duration::days(14))).await.unwrap();
    assert_eq!(report.units, 2, "two pages");
    assert_eq!(report.records, 3);
    assert_eq!(report.added.values().sum::<usize>(), 2);
    assert_eq!(report.inbox_added, 1);
    let requests = seen.lock().unwrap().clone();
    assert_eq!(
        requests[requests.len() - 2..],
        [
            format!("auth=Bearer {TOKEN} since=2026-11-06T00:00:00.000Z until=2026-11-20T00:00:00.000Z page=1"),
            format!("auth=Bearer {TOKEN} since=2026-11-06T00:00:00.000Z until=2026-11-20T00:00:00.000Z page=2"),
        ]
    );
    let examples = repo.examples();
    let atm = examples.iter().find(|e| e.inputs["message"].as_str().unwrap().contains("ATM")).unwrap();
    assert_eq!(atm.inputs["message"], "My card was swallowed by the ATM, mail me at <EMAIL_1>");
    assert_eq!(atm.outputs, *json!({"queue": "cards"}).as_object().unwrap());
    assert_eq!(atm.extra["source_ids"], json!(["chatcmpl-1"]));
    assert_eq!(atm.extra["production"], json!({"queue": "cards"}));

    // Nothing the pull wrote or printed holds the token or the address.
    let mut written = String::new();
    for file in [
        "datasets/triage/examples.jsonl",
        "datasets/triage/inbox.jsonl",
        "datasets/triage/manifest.json",
        ".promptloop/pull/triage.json",
    ] {
        written.push_str(&repo.read(file));
    }
    written.push_str(&report.to_string());
    assert!(!written.contains(TOKEN) && !written.contains("sam@example.org"));
}

#[test]
fn a_merge_refuses_to_overwrite_an_edit_made_while_it_ran() {
    use promptloop::dataset::store::DatasetStore;
    let repo = Repo::new("");
    repo.write("datasets/triage/examples.jsonl", SEED_EXAMPLES.as_bytes());
    let config = repo.config();
    let store = DatasetStore::new(&config.dataset.path, config.dataset.split);
    let new: Vec<promptloop::dataset::Example> = serde_json::from_value(json!([
        {"id": "log-1", "inputs": {"message": "Where is my card?"}, "outputs": {"queue": "cards"}}
    ]))
    .unwrap();

    for file in ["datasets/triage/examples.jsonl", "datasets/triage/inbox.jsonl"] {
        let snapshot = store.read().unwrap();
        let edited = format!(
            "{}{}\n",
            repo.read(file),
            r#"{"id": "by-hand", "inputs": {"message": "typed while pulling"}, "outputs": {}}"#
        );
        repo.write(file, edited.as_bytes());
        let error = store.merge(&snapshot, &new, &[], chrono::Utc::now()).unwrap_err().to_string();
        assert!(
            error.contains("changed while the pull ran") && error.contains(file.rsplit('/').next().unwrap()),
            "{error}"
        );
        assert_eq!(repo.read(file), edited, "the edit survives");
    }
    assert!(!repo.read("datasets/triage/examples.jsonl").contains("log-1"));
}

#[tokio::test]
async fn what_a_person_deleted_is_not_pulled_back_when_the_message_comes_again() {
    let repo = Repo::new("");
    repo.write("datasets/triage/examples.jsonl", SEED_EXAMPLES.as_bytes());
    let week = |day: u32| {
        lines(&[
            record(&format!("a-{day}"), day, "Is it true you sell my data to advertisers?", Some("security")),
            record(&format!("b-{day}"), day, "How do I order a second card for my partner", Some("cards")),
            record(&format!("c-{day}"), day, "asdf test test ignore", None),
        ])
    };
    repo.write("logs/one.jsonl", week(10).as_bytes());
    repo.pull(Since::LastPull).await.unwrap();
    assert_eq!(repo.examples().len(), 5);
    assert_eq!(repo.inbox().len(), 1);

    // A person deletes a pulled example (off-topic) and the junk inbox record.
    let kept: String = repo
        .read("datasets/triage/examples.jsonl")
        .lines()
        .filter(|l| !l.contains("advertisers"))
        .map(|l| format!("{l}\n"))
        .collect();
    repo.write("datasets/triage/examples.jsonl", kept.as_bytes());
    repo.write("datasets/triage/inbox.jsonl", b"");

    // The same messages come again next week.
    repo.write("logs/two.jsonl", week(22).as_bytes());
    let report = repo.pull_until(Since::LastPull, "2026-11-27T00:00:00Z").await.unwrap();
    assert_eq!(report.duplicates.removed_by_person, 2, "{report}");
    assert_eq!(report.duplicates.exact_existing, 1, "the second card question is still there");
    assert!(!repo.read("datasets/triage/examples.jsonl").contains("advertisers"));
    assert_eq!(repo.inbox().len(), 0);
    assert!(report.to_string().contains("kept out     2 deleted by a person"));
    let manifest: Manifest = serde_json::from_str(&repo.read("datasets/triage/manifest.json")).unwrap();
    assert_eq!(manifest.removed.len(), 2);
    assert_eq!(manifest.pulled.len(), 1);
}

#[tokio::test]
async fn a_future_until_is_refused_and_an_empty_window_says_how_to_read_an_earlier_one() {
    let repo = Repo::new("");
    repo.write("datasets/triage/examples.jsonl", SEED_EXAMPLES.as_bytes());
    repo.write("logs/a.jsonl", lines(&[record("a1", 10, "Where is my new card?", Some("cards"))]).as_bytes());
    // Saved as where the next pull starts, a future end would leave every later window empty.
    let err = repo.pull_until(Since::LastPull, "9999-12-31T00:00:00Z").await.unwrap_err().to_string();
    assert!(
        err.contains("9999-12-31") && err.contains("is in the future") && err.contains("leave --until out"),
        "{err}"
    );
    assert!(!repo.path("datasets/triage/manifest.json").exists(), "a refused pull wrote the manifest");

    // A window that ends before the last merged pull did: the error says where it
    // starts and how to read from an earlier point, and that way works.
    repo.pull_until(Since::LastPull, "2026-11-20T00:00:00Z").await.unwrap();
    let err = repo.pull_until(Since::LastPull, "2026-11-15T00:00:00Z").await.unwrap_err().to_string();
    assert!(err.contains("the window is empty: it starts at 2026-11-20"), "{err}");
    assert!(err.contains("manifest.json") && err.contains("--since DATE or --since all"), "{err}");
    let earlier = repo.pull_until(Since::All, "2026-11-15T00:00:00Z").await.unwrap();
    assert_eq!(earlier.since, None);
}

#[test]
fn the_clock_a_simulation_sets_decides_what_is_the_future() {
    let repo = Repo::new("");
    repo.write("logs/a.jsonl", lines(&[record("a1", 10, "Where is my new card?", Some("cards"))]).as_bytes());
    let pull = |now: Option<&str>| {
        let mut cmd = assert_cmd::Command::cargo_bin("promptloop").unwrap();
        cmd.args([
            "--root",
            repo.dir.path().to_str().unwrap(),
            "pull",
            "triage",
            "--since",
            "all",
            "--until",
            "3000-01-01",
        ]);
        cmd.env_remove("PROMPTLOOP_NOW");
        if let Some(now) = now {
            cmd.env("PROMPTLOOP_NOW", now);
        }
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, said) = pull(None);
    assert!(!ok && said.contains("is in the future"), "{said}");
    let (ok, said) = pull(Some("3000-01-02T00:00:00Z"));
    assert!(ok, "{said}");
    let (ok, said) = pull(Some("next week"));
    assert!(!ok && said.contains("PROMPTLOOP_NOW must be an RFC 3339 time"), "{said}");
}
