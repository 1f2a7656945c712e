//! The weekly run end to end, as the workflow runs it: `promptloop run` on the
//! worked example with the embedded model, a local bare repository as the
//! remote, and 127.0.0.1 stand-ins for api.github.com and Slack that check
//! every request against the real APIs' published descriptions.
//!
//! The worked example's dataset is cut to its first 150 examples and the
//! optimizer made small, so the whole test makes a few hundred model calls;
//! the logs, the pipeline, the production artifact and the model are the
//! worked example's own.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

#[path = "common/github_stub.rs"]
mod github_stub;
#[path = "common/slack_stub.rs"]
mod slack_stub;

use github_stub::GitHubStub;
use slack_stub::SlackStub;

const PIPELINE: &str = "support-triage";
const BRANCH: &str = "promptloop/support-triage";
/// Recognisable fake secrets: none may appear in anything the run writes or sends.
const GITHUB_TOKEN: &str = "ghs_FAKEe2eTOKEN0123456789abcdefABCDEF01";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> PathBuf {
    let path = manifest_dir().join(".promptloop/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "the embedded model is missing at {}; run scripts/setup-model.sh", path.display());
    path
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=Dana Reviewer", "-c", "user.email=dana@example.com", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The worked example as a user's repository: pipeline, logs, a smaller
/// dataset, production's artifact, committed on main and pushed to a bare
/// remote.
fn user_repository(root: &Path, slack_api: &str) -> (PathBuf, PathBuf) {
    let work = root.join("work");
    let remote = root.join("remote.git");
    let example = manifest_dir();
    std::fs::create_dir_all(work.join("pipelines")).unwrap();
    std::fs::create_dir_all(work.join("datasets/support-triage")).unwrap();
    std::fs::create_dir_all(work.join("artifacts/support-triage")).unwrap();
    std::fs::create_dir_all(work.join("logs/support-triage")).unwrap();

    let pipeline = std::fs::read_to_string(example.join("pipelines/support-triage.toml")).unwrap();
    let pipeline = pipeline[..pipeline.find("[optimizer]").expect("the example has an [optimizer] table")]
        .replace(".promptloop/models/SmolLM2-135M-Instruct.Q4_1.gguf", &model().display().to_string());
    let pipeline = format!(
        "{pipeline}[optimizer]\nkind = \"bootstrap_few_shot\"\nmax_bootstrapped_demos = 2\nmax_labeled_demos = 2\n\n\
         [gate]\nmin_delta = 0.0\n\n\
         [publish]\nlabels = [\"promptloop\", \"prompts\"]\n\n\
         [publish.slack]\nchannel = \"#prompt-reviews\"\napi_url = \"{slack_api}\"\n"
    );
    std::fs::write(work.join("pipelines/support-triage.toml"), pipeline).unwrap();
    let examples = std::fs::read_to_string(example.join("datasets/support-triage/examples.jsonl")).unwrap();
    let first: String = examples.lines().take(150).map(|l| format!("{l}\n")).collect();
    std::fs::write(work.join("datasets/support-triage/examples.jsonl"), first).unwrap();
    std::fs::copy(example.join("datasets/support-triage/README.md"), work.join("datasets/support-triage/README.md"))
        .unwrap();
    std::fs::copy(
        example.join("artifacts/support-triage/program.json"),
        work.join("artifacts/support-triage/program.json"),
    )
    .unwrap();
    for entry in std::fs::read_dir(example.join("logs/support-triage")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, work.join("logs/support-triage").join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(work.join(".gitignore"), ".promptloop/\n").unwrap();

    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "support triage, as in production"]);
    git(root, &["clone", "-q", "--bare", work.to_str().unwrap(), remote.to_str().unwrap()]);
    git(&work, &["remote", "add", "origin", remote.to_str().unwrap()]);
    git(&work, &["fetch", "-q", "origin"]);
    (work, remote)
}

struct Env<'a> {
    /// Without it, the run has no GitHub or Slack token.
    tokens: bool,
    github: &'a GitHubStub,
    slack: &'a SlackStub,
    actions_dir: &'a Path,
}

async fn promptloop(work: &Path, env: &Env<'_>, args: &[&str]) -> Output {
    let mut command = Command::cargo_bin("promptloop").unwrap();
    command.arg("--root").arg(work).args(args).current_dir(work);
    for var in ["GITHUB_BASE_REF", "GITHUB_HEAD_REF", "SLACK_WEBHOOK_URL", "OPENAI_API_KEY", "RUST_LOG"] {
        command.env_remove(var);
    }
    let summary = env.actions_dir.join("summary.md");
    let outputs = env.actions_dir.join("outputs.txt");
    if env.tokens {
        command.env("GITHUB_TOKEN", GITHUB_TOKEN).env("SLACK_BOT_TOKEN", env.slack.token());
    } else {
        command.env_remove("GITHUB_TOKEN").env_remove("SLACK_BOT_TOKEN");
    }
    command
        .env("GITHUB_REPOSITORY", "acme/banking-app")
        .env("GITHUB_API_URL", env.github.base_url())
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_SERVER_URL", "https://github.com")
        .env("GITHUB_RUN_ID", "4242")
        .env("GITHUB_REF_NAME", "main")
        .env("GITHUB_REF_TYPE", "branch")
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("GITHUB_OUTPUT", &outputs);
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The files a commit changes against its parent.
fn changed_files(remote: &Path, rev: &str) -> Vec<String> {
    let listing = git(remote, &["diff", "--name-only", &format!("{rev}~1"), rev]);
    listing.lines().map(str::to_string).collect()
}

fn output_value(outputs: &str, name: &str) -> Option<String> {
    // `name<<DELIMITER` … `DELIMITER`, as the runner reads it; a later step's value wins.
    let mut found = None;
    let mut lines = outputs.lines();
    while let Some(line) = lines.next() {
        if let Some(delimiter) = line.strip_prefix(&format!("{name}<<")) {
            let value: Vec<&str> = lines.by_ref().take_while(|l| *l != delimiter).collect();
            found = Some(value.join("\n"));
        } else if let Some(value) = line.strip_prefix(&format!("{name}=")) {
            found = Some(value.to_string());
        }
    }
    found
}

/// Every file under `dir` (work trees, the bare remote's objects unpacked by
/// `git`, the run's state) as text, for the secret scan.
fn all_text_under(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all_text_under(&path, out);
        } else if path.extension().is_none_or(|e| e != "sqlite" && e != "gguf" && e != "gz") {
            out.push((path.clone(), String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_weekly_run_opens_one_pull_request_and_updates_it_on_the_next_run() {
    let root = tempfile::tempdir().unwrap();
    let github = GitHubStub::start().await;
    let slack = SlackStub::start();
    let (work, remote) = user_repository(root.path(), &slack.api_url());
    let actions_dir = root.path().join("actions");
    std::fs::create_dir_all(&actions_dir).unwrap();
    let env = Env { tokens: true, github: &github, slack: &slack, actions_dir: &actions_dir };
    let main_tip = git(&remote, &["rev-parse", "main"]);

    // 1. A dry run: everything is computed and written to files, nothing is sent.
    let dry = promptloop(&work, &env, &["run", PIPELINE, "--dry-run"]).await;
    assert!(dry.status.success(), "the dry run failed:\n{}", text(&dry));
    assert!(github.requests().is_empty(), "a dry run called GitHub: {:?}", github.requests());
    assert!(slack.received().is_empty(), "a dry run called Slack");
    assert_eq!(git(&remote, &["branch", "--list", BRANCH]), "", "a dry run pushed");
    let run_dir = work.join(".promptloop/runs/support-triage");
    let dry_body = std::fs::read_to_string(run_dir.join("pr-body.md")).unwrap();
    let dry_slack: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("slack.json")).unwrap()).unwrap();
    assert!(dry_body.contains("<!-- promptloop:pipeline=support-triage -->"), "{dry_body}");
    assert!(dry_slack["blocks"].is_array(), "{dry_slack}");

    // 2. The weekly run: the dry run's work is cached, so this is quick.
    let first = promptloop(&work, &env, &["run", PIPELINE]).await;
    assert!(first.status.success(), "the run failed:\n{}", text(&first));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json")).unwrap()).unwrap();
    let mut run_files: Vec<String> =
        saved["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
    run_files.sort();

    // The pushed branch is exactly the run's files, one commit on top of main.
    let branch_tip = git(&remote, &["rev-parse", BRANCH]);
    assert_eq!(git(&remote, &["rev-parse", &format!("{BRANCH}~1")]), main_tip, "not on top of main");
    let mut changed = changed_files(&remote, BRANCH);
    changed.sort();
    assert_eq!(changed, run_files, "the branch holds other files than the run's");
    for expected in [
        "artifacts/support-triage/REPORT.md",
        "artifacts/support-triage/history.jsonl",
        "datasets/support-triage/examples.jsonl",
        "datasets/support-triage/inbox.jsonl",
        "datasets/support-triage/manifest.json",
    ] {
        assert!(run_files.iter().any(|f| f == expected), "{expected} is not among the run's files: {run_files:?}");
    }
    for file in &run_files {
        let on_branch = git(&remote, &["show", &format!("{BRANCH}:{file}")]);
        assert_eq!(on_branch, std::fs::read_to_string(work.join(file)).unwrap().trim_end(), "{file} differs");
    }
    // The user's work tree: only the files the run writes changed (no checkout, no staging).
    assert_eq!(git(&work, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");
    assert_eq!(git(&work, &["diff", "--cached", "--name-only"]), "", "the index changed");
    // In the work tree the run writes the pipeline's dataset and artifact
    // folders and nothing else (its own state is under the ignored .promptloop/).
    let status = git(&work, &["status", "--porcelain", "--untracked-files=all"]);
    for line in status.lines() {
        let path = line.split_whitespace().last().unwrap();
        assert!(
            path.starts_with("datasets/support-triage/") || path.starts_with("artifacts/support-triage/"),
            "the run wrote {path} in the work tree:\n{status}"
        );
    }

    // One pull request, carrying the delta; Slack carries the same delta.
    let pulls = github.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    let pr = &pulls[0];
    assert_eq!((pr.head.as_str(), pr.base.as_str(), pr.state.as_str()), (BRANCH, "main", "open"));
    let body = pr.body.clone().unwrap();
    let headline: promptloop::report::Headline = serde_json::from_value(saved["report"]["headline"].clone()).unwrap();
    let delta = headline.delta_text();
    assert!(body.contains(&delta), "the PR body lacks the delta {delta}:\n{body}");
    assert!(body.contains("<!-- promptloop:pipeline=support-triage -->"));
    assert!(pr.labels.contains(&"promptloop".to_string()), "{:?}", pr.labels);
    let messages = slack.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let slack_text = messages[0].to_string();
    assert!(slack_text.contains(&delta), "the Slack message lacks the delta {delta}: {slack_text}");
    assert_eq!(messages[0]["channel"], "#prompt-reviews");
    // The Actions outputs say the same.
    let outputs = std::fs::read_to_string(actions_dir.join("outputs.txt")).unwrap();
    assert_eq!(output_value(&outputs, "delta").as_deref(), Some(delta.as_str()), "{outputs}");
    assert_eq!(output_value(&outputs, "decision").as_deref(), Some(headline.decision.as_str()));
    let pr_url = output_value(&outputs, "pr_url").unwrap();
    assert!(pr_url.ends_with("/pull/1"), "{pr_url}");
    assert!(slack_text.contains(&pr_url), "Slack does not link the PR: {slack_text}");
    let summary = std::fs::read_to_string(actions_dir.join("summary.md")).unwrap();
    assert!(summary.contains(&delta), "{summary}");

    // 3. Next run, as the workflow does it: a fresh checkout of main and the
    // LM cache restored. Slack fails this time: reported, the PR stands.
    let work2 = root.path().join("work2");
    git(root.path(), &["clone", "-q", remote.to_str().unwrap(), work2.to_str().unwrap()]);
    std::fs::create_dir_all(work2.join(".promptloop")).unwrap();
    std::fs::copy(work.join(".promptloop/cache.sqlite"), work2.join(".promptloop/cache.sqlite")).unwrap();
    for _ in 0..4 {
        slack.fail_next(503, &[], "service unavailable");
    }
    let second = promptloop(&work2, &env, &["run", PIPELINE]).await;
    assert!(second.status.success(), "a Slack failure failed the run:\n{}", text(&second));
    assert!(text(&second).contains("slack         FAILED"), "{}", text(&second));

    let pulls = github.pulls();
    assert_eq!(pulls.len(), 1, "a second PR was opened: {pulls:?}");
    assert!(pulls[0].updates >= 1, "the PR was not updated");
    assert_eq!(github.requests_to("POST", "/pulls").len(), 1, "created twice");
    let new_tip = git(&remote, &["rev-parse", BRANCH]);
    assert_ne!(new_tip, branch_tip, "the rerun did not replace the run commit");
    assert_eq!(git(&remote, &["rev-parse", &format!("{BRANCH}~1")]), main_tip, "the rerun stacked a commit");

    // 4. A token that may push but not edit pull requests: the run fails, and
    // says what was published (the branch) and what was not (the PR).
    github.forbid("PATCH", "/repos/acme/banking-app/pulls");
    let third = promptloop(&work2, &env, &["run", PIPELINE, "--no-pull"]).await;
    assert!(!third.status.success(), "a refused PR update passed:\n{}", text(&third));
    let said = text(&third);
    assert!(said.contains("pull request  FAILED: the branch promptloop/support-triage is pushed, but"), "{said}");
    assert!(said.contains("pull-requests: write"), "the fix is not named:\n{said}");
    let warned = slack.messages().last().unwrap().to_string();
    assert!(warned.contains("Not published"), "Slack was not told: {warned}");

    // 5. No token: the commit stays on the local branch, the PR body and the
    // Slack message are files, nothing is sent.
    let sent = (github.requests().len(), slack.received().len());
    let remote_tip = git(&remote, &["rev-parse", BRANCH]);
    let offline_env = Env { tokens: false, ..env };
    let offline = promptloop(&work, &offline_env, &["run", PIPELINE, "--no-pull"]).await;
    assert!(offline.status.success(), "a run without tokens failed:\n{}", text(&offline));
    let said = text(&offline);
    assert!(said.contains("skipped: GITHUB_TOKEN is not set; the branch stays local"), "{said}");
    assert!(said.contains("skipped: neither SLACK_BOT_TOKEN nor SLACK_WEBHOOK_URL is set"), "{said}");
    assert_eq!((github.requests().len(), slack.received().len()), sent, "a run without tokens sent something");
    assert_eq!(git(&remote, &["rev-parse", BRANCH]), remote_tip, "a run without a token pushed");
    let local = git(&work, &["rev-parse", BRANCH]);
    assert_ne!(local, branch_tip, "the local branch did not get the new run commit");
    assert_eq!(git(&work, &["rev-parse", &format!("{BRANCH}~1")]), main_tip);
    assert!(std::fs::read_to_string(run_dir.join("pr-body.md")).unwrap().contains("support-triage"));

    assert!(github.violations().is_empty(), "GitHub stand-in: {:#?}", github.violations());
    assert!(slack.violations().is_empty(), "Slack stand-in: {:#?}", slack.violations());

    // 6. No secret anywhere: output, files, what was sent.
    let mut everything: Vec<(PathBuf, String)> = Vec::new();
    for dir in [&work, &work2, &actions_dir] {
        all_text_under(dir, &mut everything);
    }
    for out in [&dry, &first, &second, &third, &offline] {
        everything.push((PathBuf::from("<output>"), text(out)));
    }
    for request in github.requests() {
        everything.push((PathBuf::from(format!("<github {}>", request.path)), format!("{:?}", request.body)));
    }
    everything.push((PathBuf::from("<slack messages>"), format!("{:?}", slack.messages())));
    for (path, content) in &everything {
        for secret in [GITHUB_TOKEN, slack.token()] {
            assert!(!content.contains(secret), "a secret leaked into {}", path.display());
        }
    }
}
