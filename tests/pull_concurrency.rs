//! Pulls that overlap or stop halfway: one pull at a time holds the
//! dataset's lock, a second is refused with who holds it, and a merge cut
//! short at any step is finished or undone by the next pull, which then
//! writes what an uninterrupted pull writes, byte for byte.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use promptloop::config::PipelineConfig;
use promptloop::dataset::store::{DatasetStore, MERGE_STEPS, interrupt_next_merge};
use promptloop::logs::pull::{PullReport, PullRequest, Since, pull};
use serde_json::json;
use tokio::sync::oneshot;

#[path = "common/pull_pipeline.rs"]
mod pull_pipeline;
use pull_pipeline::PULL_PIPELINE as PIPELINE;

const SEED_EXAMPLES: &str = r#"{"id": "seed-1", "inputs": {"message": "How do I activate my new card?"}, "outputs": {"queue": "cards"}}
{"id": "seed-2", "inputs": {"message": "Why is my transfer still pending after three days?"}, "outputs": {"queue": "transfers"}}
"#;

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["pipelines", "datasets/triage", "logs"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let repo = Repo { dir };
        repo.write("pipelines/triage.toml", PIPELINE);
        repo.write("datasets/triage/examples.jsonl", SEED_EXAMPLES);
        repo
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.path(rel), text).unwrap();
    }
    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }
    fn config(&self) -> PipelineConfig {
        PipelineConfig::load(&self.path("pipelines/triage.toml")).unwrap()
    }
    fn store(&self) -> DatasetStore {
        let config = self.config();
        DatasetStore::new(&config.dataset.path, config.dataset.split)
    }
    fn lock_dir(&self) -> PathBuf {
        self.config().state_dir().join("locks")
    }
    /// Reads the logs from `url` instead of `logs/`.
    fn use_http(&self, url: &str) {
        let toml = self.read("pipelines/triage.toml").replace(
            "[source]\nkind = \"files\"\npaths = [\"logs/*.jsonl*\"]",
            &format!("[source]\nkind = \"http\"\nurl = \"{url}\""),
        );
        self.write("pipelines/triage.toml", &toml);
    }
    async fn pull(&self, since: Since, until: &str) -> anyhow::Result<PullReport> {
        pull(PullRequest { config: self.config(), since, until: Some(time(until)), dry_run: false }).await
    }
    /// Every file in the dataset's directory, by name: what a pull left there.
    fn dataset_files(&self) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(self.path("datasets/triage"))
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
            .collect()
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
    format!("{r}\n")
}

/// Two weeks of logs: the first pull's window ends on the 20th, the second's on the 27th.
fn two_weeks() -> String {
    [
        record("a1", 10, "Where can I see my card PIN?", Some("security")),
        record("a2", 11, "How long does a transfer from Europe take?", Some("transfers")),
        record("a3", 12, "Is there a fee for topping up by card?", None),
        record("b1", 22, "My top-up failed twice today", Some("payments")),
        record("b2", 23, "Someone I do not know logged into my account", Some("security")),
        record("b3", 24, "Can I change the currency of my account?", None),
    ]
    .concat()
}

const FIRST_UNTIL: &str = "2026-11-20T00:00:00Z";
const SECOND_UNTIL: &str = "2026-11-27T00:00:00Z";

/// Serves `body` as JSONL. The first request waits: the server reports it on
/// `started` and answers once `release` fires, so a test knows a pull is
/// reading its source (and so holds the dataset's lock) for as long as it likes.
async fn gated_server(body: String) -> (String, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let (started_tx, started_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let gate = Arc::new(Mutex::new(Some((started_tx, release_rx))));
    let app = axum::Router::new().route(
        "/logs",
        axum::routing::get(move || {
            let gate = gate.clone();
            let body = body.clone();
            async move {
                let first = gate.lock().unwrap().take();
                if let Some((started, release)) = first {
                    started.send(()).unwrap();
                    release.await.unwrap();
                }
                body
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/logs"), started_rx, release_tx)
}

/// The refusal with what changes from run to run (paths, pid, host, time, the
/// test binary's command line) put back to fixed words.
fn pinned(message: &str, repo: &Repo) -> String {
    let between = |start: &str, end: &str| {
        let rest = &message[message.find(start).unwrap() + start.len()..];
        rest[..rest.find(end).unwrap()].to_string()
    };
    let host = between(" on ", " (`");
    let command = between("(`", "`)");
    let since = between("), since ", ". Nothing");
    DateTime::parse_from_rfc3339(&since).expect("the holder's start is an RFC 3339 time");
    let key = between("locks/triage-", ".lock");
    assert_eq!(key.len(), 16, "{message}");
    let shown_command = if command == "promptloop pull triage" { command.as_str() } else { "[command]" };
    message
        .replace(&repo.dir.path().display().to_string(), "[repo]")
        .replace(
            &format!("pid {} on {host} (`{command}`), since {since}", std::process::id()),
            &format!("pid [pid] on [host] (`{shown_command}`), since [since]"),
        )
        .replace(&key, "[key]")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_while_another_holds_the_dataset_is_refused_with_who_holds_it_then_both_windows_land() {
    let (url, started, release) = gated_server(two_weeks()).await;
    let repo = Repo::new();
    repo.use_http(&url);

    // The first pull takes the lock, then waits inside its source read.
    let config = repo.config();
    let first = tokio::spawn(pull(PullRequest {
        config,
        since: Since::LastPull,
        until: Some(time(FIRST_UNTIL)),
        dry_run: false,
    }));
    started.await.unwrap();

    // The second starts while the first provably holds the lock: it is refused
    // before it reads anything, naming the holder.
    let refused = repo.pull(Since::LastPull, SECOND_UNTIL).await.unwrap_err().to_string();
    assert!(refused.contains(&format!("pid {}", std::process::id())), "{refused}");
    insta::assert_snapshot!("refused_while_another_pull_holds_the_dataset", pinned(&refused, &repo));
    assert!(!repo.path("datasets/triage/manifest.json").exists());

    release.send(()).unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.added.values().sum::<usize>(), 2);
    // Retried once the first is done, the second adds its own window.
    let second = repo.pull(Since::LastPull, SECOND_UNTIL).await.unwrap();
    assert_eq!(second.since, Some(time(FIRST_UNTIL)));
    assert_eq!(second.added.values().sum::<usize>(), 2);
    let examples = repo.read("datasets/triage/examples.jsonl");
    for message in ["card PIN", "from Europe", "top-up failed", "logged into my account"] {
        assert!(examples.contains(message), "`{message}` is missing:\n{examples}");
    }

    // Byte for byte what the same two pulls leave run one after the other.
    let sequential = Repo::new();
    sequential.use_http(&url);
    sequential.pull(Since::LastPull, FIRST_UNTIL).await.unwrap();
    sequential.pull(Since::LastPull, SECOND_UNTIL).await.unwrap();
    assert_eq!(repo.dataset_files(), sequential.dataset_files());
    assert_eq!(
        repo.dataset_files().keys().collect::<Vec<_>>(),
        ["examples.jsonl", "inbox.jsonl", "manifest.json"],
        "nothing else is left in the dataset's directory"
    );
}

#[test]
fn the_cli_refuses_a_pull_while_another_process_holds_the_dataset() {
    let repo = Repo::new();
    repo.write("logs/a.jsonl", &two_weeks());
    let store = repo.store();
    let cli = || {
        assert_cmd::Command::cargo_bin("promptloop")
            .unwrap()
            .args(["--root", repo.dir.path().to_str().unwrap(), "pull", "triage", "--until", "2026-11-20"])
            .output()
            .unwrap()
    };
    let lock = store.lock(&repo.lock_dir(), "promptloop pull triage").unwrap();
    let refused = cli();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr).to_string();
    insta::assert_snapshot!("cli_refused_while_another_process_holds_the_dataset", pinned(&stderr, &repo));
    assert_eq!(repo.read("datasets/triage/examples.jsonl"), SEED_EXAMPLES);

    // Released (as when the holder exits, however it exits), the pull runs.
    drop(lock);
    let pulled = cli();
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    assert!(repo.read("datasets/triage/examples.jsonl").contains("card PIN"));
}

#[test]
fn the_lock_is_one_per_dataset_and_forgets_its_holder_when_released() {
    let repo = Repo::new();
    let store = repo.store();
    let lock = store.lock(&repo.lock_dir(), "first").unwrap();
    let holder: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(lock.path()).unwrap()).unwrap();
    assert_eq!(holder["pid"], std::process::id());
    assert_eq!(holder["command"], "first");
    // The same dataset named another way is the same lock.
    let roundabout = repo.path("datasets/../datasets/triage/examples.jsonl");
    let same = DatasetStore::new(&roundabout, repo.config().dataset.split);
    let err = same.lock(&repo.lock_dir(), "second").err().expect("the dataset is locked").to_string();
    assert!(err.contains("`first`") && err.contains("pull again once it has finished"), "{err}");
    // Another dataset is not.
    let other = DatasetStore::new(&repo.path("datasets/other/examples.jsonl"), repo.config().dataset.split);
    drop(other.lock(&repo.lock_dir(), "third").unwrap());

    let path = lock.path().to_path_buf();
    drop(lock);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "a released lock names no one");
    drop(same.lock(&repo.lock_dir(), "second").unwrap());
}

/// The dataset after a first pull, with a person's label on the inbox line,
/// ready for the second pull that the crash tests interrupt.
async fn before_the_second_pull(url: &str) -> Repo {
    let repo = Repo::new();
    repo.use_http(url);
    repo.pull(Since::LastPull, FIRST_UNTIL).await.unwrap();
    let inbox = repo.read("datasets/triage/inbox.jsonl");
    let mut line: serde_json::Value = serde_json::from_str(inbox.lines().next().unwrap()).unwrap();
    line["outputs"] = json!({"queue": "payments"});
    repo.write("datasets/triage/inbox.jsonl", &format!("{line}\n"));
    repo
}

async fn second_pull(repo: &Repo) -> anyhow::Result<PullReport> {
    repo.pull(Since::Time(time(FIRST_UNTIL)), SECOND_UNTIL).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_interrupted_at_any_step_of_its_merge_converges_when_run_again() {
    let (url, started, release) = gated_server(two_weeks()).await;
    // The gate is for the locking test; here every request is answered at once.
    drop(started);
    release.send(()).unwrap();

    let uninterrupted = before_the_second_pull(&url).await;
    let report = second_pull(&uninterrupted).await.unwrap();
    assert_eq!((report.added.values().sum::<usize>(), report.promoted, report.inbox_added), (2, 1, 1));
    let expected = uninterrupted.dataset_files();
    assert_eq!(expected.keys().collect::<Vec<_>>(), ["examples.jsonl", "inbox.jsonl", "manifest.json"]);

    for step in 1..=MERGE_STEPS {
        let repo = before_the_second_pull(&url).await;
        let before = repo.dataset_files();
        interrupt_next_merge(&repo.config().dataset.path, step);
        let err = second_pull(&repo).await.unwrap_err().to_string();
        assert!(err.contains(&format!("interrupted after step {step} of {MERGE_STEPS}")), "{err}");
        let crashed = repo.dataset_files();
        assert_ne!(crashed, before, "step {step} left something behind");
        // A temporary file of an older version, too.
        repo.write("datasets/triage/.examples.jsonl.tmp-4242", "half a line");

        // A dry run in between sees the dataset as the last committed merge
        // left it, and writes nothing.
        let dry = pull(PullRequest {
            config: repo.config(),
            since: Since::Time(time(FIRST_UNTIL)),
            until: Some(time(SECOND_UNTIL)),
            dry_run: true,
        })
        .await
        .unwrap();
        let committed = step >= 5;
        let would_add = if committed { 0 } else { 2 };
        assert_eq!(dry.added.values().sum::<usize>(), would_add, "step {step}: {dry}");
        let mut crashed_and_stray = crashed.clone();
        crashed_and_stray.insert(".examples.jsonl.tmp-4242".into(), b"half a line".to_vec());
        assert_eq!(repo.dataset_files(), crashed_and_stray, "step {step}: the dry run wrote");

        let rerun = second_pull(&repo).await.unwrap();
        let added = rerun.added.values().sum::<usize>();
        assert_eq!(added, would_add, "step {step}: {rerun}");
        assert!(
            repo.dataset_files() == expected,
            "step {step}: the rerun left\n{:#?}\nwhere an uninterrupted pull left\n{:#?}",
            readable(&repo.dataset_files()),
            readable(&expected)
        );
    }
}

fn readable(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<&str, String> {
    files.iter().map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edit_made_after_an_interrupted_merge_is_never_overwritten() {
    let (url, started, release) = gated_server(two_weeks()).await;
    drop(started);
    release.send(()).unwrap();
    let repo = before_the_second_pull(&url).await;
    // Committed, examples in place, the inbox and manifest still waiting.
    interrupt_next_merge(&repo.config().dataset.path, 6);
    second_pull(&repo).await.unwrap_err();
    let edited = format!(
        "{}{}\n",
        repo.read("datasets/triage/inbox.jsonl"),
        json!({"id": "by-hand", "inputs": {"message": "typed after the crash"}})
    );
    repo.write("datasets/triage/inbox.jsonl", &edited);

    let err = second_pull(&repo).await.unwrap_err().to_string();
    assert!(
        err.contains("inbox.jsonl changed after a pull was interrupted while writing it")
            && err.contains(".inbox.jsonl.promptloop-new")
            && err.contains("move that file over yours, or delete it and"),
        "{err}"
    );
    assert_eq!(repo.read("datasets/triage/inbox.jsonl"), edited, "the edit survives");
}

#[tokio::test]
async fn a_journal_naming_files_outside_the_dataset_is_refused() {
    let repo = Repo::new();
    repo.write("logs/a.jsonl", &two_weeks());
    repo.write("outside.txt", "not the dataset's");
    let journal = json!({"format": "promptloop.merge/v1", "files": [
        {"file": "../../outside.txt", "pending": ".../../outside.txt.promptloop-new", "before": null, "after": "0"}
    ]});
    repo.write("datasets/triage/.promptloop-merge.json", &journal.to_string());
    let err = repo.pull(Since::LastPull, FIRST_UNTIL).await.unwrap_err().to_string();
    assert!(
        err.contains(".promptloop-merge.json is not a merge journal promptloop can read")
            && err.contains("restore the dataset's files from git and delete it"),
        "{err}"
    );
    assert_eq!(repo.read("outside.txt"), "not the dataset's");
    assert_eq!(repo.read("datasets/triage/examples.jsonl"), SEED_EXAMPLES);
}
