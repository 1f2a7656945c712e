//! The bot branch: a run's files committed on top of the base tip and pushed,
//! against real repositories in temporary directories — a bare repository as
//! the remote, by path or behind a smart-HTTP server that wants a token.

#[path = "common/git_http.rs"]
mod git_http;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use promptloop::publish::Secret;
use promptloop::publish::git::{self as bot, BotIdentity, Committed, GitError, Pushed, Remote, RunCommit, TRAILER};
use tempfile::TempDir;

use git_http::GitHttpServer;

const PIPELINE: &str = "support-triage";
const BRANCH: &str = "promptloop/support-triage";
const PROGRAM: &str = "artifacts/support-triage/program.json";
const HISTORY: &str = "artifacts/support-triage/history.jsonl";
const REPORT: &str = "artifacts/support-triage/REPORT.md";
const TOKEN: &str = "ghs_FAKEtokenFORtests0123456789abcdef";

/// Runs the git CLI as Jane, failing the test on a non-zero exit.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=Jane Doe", "-c", "user.email=jane@example.com", "-c", "init.defaultBranch=main"])
        .args(["-c", "protocol.file.allow=always", "-c", "advice.detachedHead=false"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim_end().to_string()
}

fn write(dir: &Path, path: &str, text: &str) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A remote (`remote.git`, bare) holding `main`, and the user's clone of it.
struct Fixture {
    dir: TempDir,
    bare: PathBuf,
    work: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("remote.git");
        std::fs::create_dir(&bare).unwrap();
        git(&bare, &["init", "--bare", "-q"]);
        git(&bare, &["config", "http.receivepack", "true"]);
        let seed = dir.path().join("seed");
        git(dir.path(), &["clone", "-q", bare.to_str().unwrap(), "seed"]);
        write(&seed, "README.md", "# support bot\n");
        write(&seed, PROGRAM, "{\"version\": 1}\n");
        write(&seed, "pipelines/support-triage.toml", "name = \"support-triage\"\n");
        write(&seed, "scripts/run.sh", "#!/bin/sh\necho run\n");
        git(&seed, &["add", "."]);
        git(&seed, &["update-index", "--chmod=+x", "scripts/run.sh"]);
        git(&seed, &["commit", "-q", "-m", "production program v1"]);
        git(&seed, &["push", "-q", "origin", "main"]);
        git(dir.path(), &["clone", "-q", bare.to_str().unwrap(), "work"]);
        let work = dir.path().join("work");
        Fixture { dir, bare, work }
    }

    /// Another person's clone, to move the remote behind the run's back.
    fn other_clone(&self, name: &str) -> PathBuf {
        git(self.dir.path(), &["clone", "-q", self.bare.to_str().unwrap(), name]);
        self.dir.path().join(name)
    }

    fn remote_tip(&self, branch: &str) -> Option<String> {
        let output = Command::new("git")
            .args(["rev-parse", "--verify", "-q", &format!("refs/heads/{branch}")])
            .current_dir(&self.bare)
            .output()
            .unwrap();
        output.status.success().then(|| String::from_utf8(output.stdout).unwrap().trim().to_string())
    }
}

fn run_files(version: u32) -> Vec<(String, Vec<u8>)> {
    vec![
        (PROGRAM.to_string(), format!("{{\"version\": {version}}}\n").into_bytes()),
        (HISTORY.to_string(), format!("{{\"run\": {version}}}\n").into_bytes()),
        (REPORT.to_string(), format!("# Run {version}\n").into_bytes()),
    ]
}

fn run_commit<'a>(repo: &'a Path, remote: &'a Remote, version: u32) -> RunCommit<'a> {
    RunCommit {
        repo,
        remote,
        base: "main",
        branch: BRANCH,
        pipeline: PIPELINE,
        files: run_files(version),
        message: format!("promptloop: support-triage run {version}\n\nExact match +0.1 on the test split."),
        identity: BotIdentity::default(),
    }
}

fn origin(token: Option<&str>) -> Remote {
    Remote::new("origin", token.map(Secret::new))
}

/// fetch → commit → push, as a run does.
fn publish(repo: &Path, remote: &Remote, version: u32) -> Result<(Committed, Pushed), GitError> {
    bot::fetch(repo, remote, "main", BRANCH)?;
    let run = run_commit(repo, remote, version);
    let committed = bot::commit_run(&run)?;
    let pushed = bot::push(&run, &committed)?;
    Ok((committed, pushed))
}

/// Every file of the work tree outside `.git`, plus the index, HEAD and config.
fn snapshot(work: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if name == ".git" {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(work, work, &mut files);
    for meta in ["index", "HEAD", "config"] {
        files.insert(format!(".git/{meta}"), std::fs::read(work.join(".git").join(meta)).unwrap());
    }
    files
}

fn show(dir: &Path, rev: &str) -> String {
    git(dir, &["show", rev])
}

#[test]
fn first_run_commits_base_plus_exactly_the_files_and_leaves_the_work_tree_alone() {
    let fx = Fixture::new();
    // A dirty work tree: a staged edit, an unstaged edit on top, an untracked file.
    write(&fx.work, "README.md", "# support bot\nstaged line\n");
    git(&fx.work, &["add", "README.md"]);
    write(&fx.work, "README.md", "# support bot\nstaged line\nunstaged line\n");
    write(&fx.work, PROGRAM, "{\"version\": \"being edited\"}\n");
    write(&fx.work, "notes.txt", "untracked\n");
    let before = snapshot(&fx.work);
    let status_before = git(&fx.work, &["status", "--porcelain=v2", "--branch"]);
    let head_before = git(&fx.work, &["rev-parse", "HEAD"]);

    let remote = origin(None);
    let (committed, pushed) = publish(&fx.work, &remote, 2).unwrap();

    assert_eq!(snapshot(&fx.work), before, "the work tree, index or HEAD changed");
    assert_eq!(git(&fx.work, &["status", "--porcelain=v2", "--branch"]), status_before);
    assert_eq!(git(&fx.work, &["symbolic-ref", "HEAD"]), "refs/heads/main");
    assert_eq!(git(&fx.work, &["rev-parse", "HEAD"]), head_before);

    let main = fx.remote_tip("main").unwrap();
    let tip = fx.remote_tip(BRANCH).expect("the bot branch was pushed");
    assert_eq!(tip, committed.commit.to_string());
    assert_eq!(committed.base.to_string(), main);
    assert_eq!(committed.previous, None);
    assert!(committed.changed);
    assert_eq!(pushed, Pushed { commit: committed.commit, replaced: None, up_to_date: false });

    let changed = git(&fx.bare, &["diff", "--name-only", "main", BRANCH]);
    let mut expected = vec![HISTORY, REPORT, PROGRAM];
    expected.sort();
    assert_eq!(changed.lines().collect::<Vec<_>>(), expected);
    assert_eq!(git(&fx.bare, &["rev-list", "--parents", "-n", "1", BRANCH]), format!("{tip} {main}"));
    assert_eq!(show(&fx.bare, &format!("{BRANCH}:{PROGRAM}")), "{\"version\": 2}");
    assert_eq!(show(&fx.bare, &format!("{BRANCH}:{REPORT}")), "# Run 2");
    // Modes: new files are regular files, the base's executable stays executable.
    let tree = git(&fx.bare, &["ls-tree", "-r", BRANCH]);
    assert!(tree.lines().any(|l| l.starts_with("100644 blob") && l.ends_with(HISTORY)), "{tree}");
    assert!(tree.lines().any(|l| l.starts_with("100755 blob") && l.ends_with("scripts/run.sh")), "{tree}");

    let identity = git(&fx.bare, &["log", "-1", "--format=%an <%ae>|%cn <%ce>", BRANCH]);
    assert_eq!(
        identity,
        "promptloop[bot] <promptloop[bot]@users.noreply.github.com>|promptloop[bot] <promptloop[bot]@users.noreply.github.com>"
    );
    let trailers = git(&fx.bare, &["log", "-1", "--format=%(trailers:only,unfold)", BRANCH]);
    assert_eq!(trailers, format!("{TRAILER}: {PIPELINE}"));
    let subject = git(&fx.bare, &["log", "-1", "--format=%s", BRANCH]);
    assert_eq!(subject, "promptloop: support-triage run 2");

    // The local bot branch and the remote-tracking one both point at the commit.
    assert_eq!(git(&fx.work, &["rev-parse", BRANCH]), tip);
    assert_eq!(git(&fx.work, &["rev-parse", &format!("origin/{BRANCH}")]), tip);
}

#[test]
fn a_rerun_replaces_the_run_commit_and_follows_the_moved_base() {
    let fx = Fixture::new();
    let remote = origin(None);
    let (first, _) = publish(&fx.work, &remote, 2).unwrap();

    let (second, pushed) = publish(&fx.work, &remote, 3).unwrap();
    assert_ne!(second.commit, first.commit);
    assert_eq!(second.previous, Some(first.commit));
    assert_eq!(pushed.replaced, Some(first.commit));
    assert_eq!(git(&fx.bare, &["rev-list", "--count", &format!("main..{BRANCH}")]), "1", "the run commits stacked");
    assert_eq!(show(&fx.bare, &format!("{BRANCH}:{PROGRAM}")), "{\"version\": 3}");

    // Someone merges to main; the next run sits on the new tip.
    let other = fx.other_clone("colleague");
    write(&other, "docs/guide.md", "how to triage\n");
    git(&other, &["add", "."]);
    git(&other, &["commit", "-q", "-m", "docs: triage guide"]);
    git(&other, &["push", "-q", "origin", "main"]);
    let new_main = fx.remote_tip("main").unwrap();

    let (third, pushed) = publish(&fx.work, &remote, 4).unwrap();
    assert_eq!(third.base.to_string(), new_main);
    assert_eq!(pushed.replaced, Some(second.commit));
    let tip = fx.remote_tip(BRANCH).unwrap();
    assert_eq!(git(&fx.bare, &["rev-list", "--parents", "-n", "1", BRANCH]), format!("{tip} {new_main}"));
    let changed = git(&fx.bare, &["diff", "--name-only", "main", BRANCH]);
    assert_eq!(changed.lines().count(), 3, "{changed}");
    assert_eq!(show(&fx.bare, &format!("{BRANCH}:docs/guide.md")), "how to triage");
    // The user's checkout never moved.
    assert_eq!(git(&fx.work, &["symbolic-ref", "HEAD"]), "refs/heads/main");
    assert!(git(&fx.work, &["status", "--porcelain"]).is_empty());

    // The same result again: the same commit, nothing to push.
    let (again, pushed) = publish(&fx.work, &remote, 4).unwrap();
    assert_eq!(again.commit, third.commit);
    assert!(pushed.up_to_date);
    assert_eq!(pushed.replaced, None);
    assert_eq!(fx.remote_tip(BRANCH).unwrap(), third.commit.to_string());
}

#[test]
fn a_run_that_changes_nothing_says_so() {
    let fx = Fixture::new();
    let remote = origin(None);
    bot::fetch(&fx.work, &remote, "main", BRANCH).unwrap();
    let mut run = run_commit(&fx.work, &remote, 1);
    run.files = vec![(PROGRAM.to_string(), b"{\"version\": 1}\n".to_vec())];
    let committed = bot::commit_run(&run).unwrap();
    assert!(!committed.changed);
    let mut run = run_commit(&fx.work, &remote, 1);
    run.files = vec![(PROGRAM.to_string(), b"{\"version\": 2}\n".to_vec())];
    assert!(bot::commit_run(&run).unwrap().changed);
}

#[test]
fn a_person_s_commit_on_the_bot_branch_is_never_overwritten() {
    let fx = Fixture::new();
    let remote = origin(None);
    publish(&fx.work, &remote, 2).unwrap();

    let other = fx.other_clone("jane");
    git(&other, &["switch", "-q", BRANCH]);
    write(&other, "artifacts/support-triage/demo.json", "{}\n");
    git(&other, &["add", "."]);
    git(&other, &["commit", "-q", "-m", "fix demo"]);
    git(&other, &["push", "-q", "origin", BRANCH]);
    let human_tip = fx.remote_tip(BRANCH).unwrap();
    let local_before = git(&fx.work, &["rev-parse", BRANCH]);

    let error = publish(&fx.work, &remote, 3).unwrap_err();
    let GitError::HumanCommits { branch, commits } = &error else { panic!("expected HumanCommits, got {error:?}") };
    assert_eq!(branch, BRANCH);
    assert_eq!(commits.len(), 1, "{commits:?}");
    assert_eq!(commits[0].id, human_tip[..7]);
    assert_eq!(commits[0].author, "Jane Doe");
    assert_eq!(commits[0].summary, "fix demo");
    let text = error.to_string();
    assert!(text.contains(&format!("{} Jane Doe: fix demo", &human_tip[..7])), "{text}");
    assert!(text.contains("will not overwrite"), "{text}");
    assert!(text.contains("delete the branch"), "{text}");
    assert_eq!(fx.remote_tip(BRANCH).unwrap(), human_tip, "the remote changed");
    assert_eq!(git(&fx.work, &["rev-parse", BRANCH]), local_before, "the local bot branch moved");

    // Amending the bot's commit (its trailer kept) makes it a person's too.
    git(&other, &["reset", "-q", "--hard", "HEAD~1"]);
    git(&other, &["commit", "-q", "--amend", "--no-edit", "--allow-empty"]);
    git(&other, &["push", "-q", "--force", "origin", BRANCH]);
    let amended = fx.remote_tip(BRANCH).unwrap();
    match publish(&fx.work, &remote, 3) {
        Err(GitError::HumanCommits { commits, .. }) => assert_eq!(commits[0].author, "promptloop[bot]"),
        other => panic!("expected HumanCommits, got {other:?}"),
    }
    assert_eq!(fx.remote_tip(BRANCH).unwrap(), amended);
}

#[test]
fn commits_on_the_local_bot_branch_are_protected_too() {
    let fx = Fixture::new();
    let remote = origin(None);
    publish(&fx.work, &remote, 2).unwrap();
    let side = fx.dir.path().join("side");
    git(&fx.work, &["worktree", "add", "-q", side.to_str().unwrap(), BRANCH]);
    write(&side, "extra.txt", "mine\n");
    git(&side, &["add", "."]);
    git(&side, &["commit", "-q", "-m", "local tweak"]);
    git(&fx.work, &["worktree", "remove", side.to_str().unwrap()]);
    let error = publish(&fx.work, &remote, 3).unwrap_err();
    assert!(
        matches!(&error, GitError::HumanCommits { commits, .. } if commits[0].summary == "local tweak"),
        "{error:?}"
    );
}

#[test]
fn the_remote_moving_between_fetch_and_push_is_a_stale_lease() {
    let fx = Fixture::new();
    let remote = origin(None);
    let (first, _) = publish(&fx.work, &remote, 2).unwrap();

    bot::fetch(&fx.work, &remote, "main", BRANCH).unwrap();
    let run = run_commit(&fx.work, &remote, 3);
    let committed = bot::commit_run(&run).unwrap();
    assert_eq!(committed.previous, Some(first.commit));

    // While the run works, another run (or a person) pushes to the branch.
    let other = fx.other_clone("racer");
    git(&other, &["switch", "-q", BRANCH]);
    git(&other, &["commit", "-q", "--allow-empty", "-m", "racing commit"]);
    git(&other, &["push", "-q", "origin", BRANCH]);
    let racer = fx.remote_tip(BRANCH).unwrap();

    let error = bot::push(&run, &committed).unwrap_err();
    match &error {
        GitError::StaleLease { branch, expected, found, .. } => {
            assert_eq!(branch, BRANCH);
            assert_eq!(*expected, Some(first.commit));
            assert_eq!(found.map(|id| id.to_string()), Some(racer.clone()));
        }
        other => panic!("expected StaleLease, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains("moved since it was fetched") && text.contains("nothing was pushed"), "{text}");
    assert_eq!(fx.remote_tip(BRANCH).unwrap(), racer, "the remote changed");
}

#[test]
fn a_branch_created_between_fetch_and_push_is_a_stale_lease() {
    let fx = Fixture::new();
    let remote = origin(None);
    bot::fetch(&fx.work, &remote, "main", BRANCH).unwrap();
    let run = run_commit(&fx.work, &remote, 2);
    let committed = bot::commit_run(&run).unwrap();
    let other = fx.other_clone("racer");
    git(&other, &["push", "-q", "origin", &format!("main:refs/heads/{BRANCH}")]);
    let error = bot::push(&run, &committed).unwrap_err();
    assert!(matches!(error, GitError::StaleLease { expected: None, found: Some(_), .. }), "{error:?}");
    assert_eq!(fx.remote_tip(BRANCH), fx.remote_tip("main"));
}

#[test]
fn a_deleted_bot_branch_is_created_again() {
    let fx = Fixture::new();
    let remote = origin(None);
    publish(&fx.work, &remote, 2).unwrap();
    git(&fx.bare, &["branch", "-D", BRANCH]);
    let fetched = bot::fetch(&fx.work, &remote, "main", BRANCH).unwrap();
    assert_eq!(fetched.branch, None);
    assert!(git(&fx.work, &["branch", "-r", "--list", &format!("origin/{BRANCH}")]).is_empty());
    let error = bot::fetch(&fx.work, &remote, "release", BRANCH).unwrap_err();
    assert!(matches!(error, GitError::BaseMissing { .. }), "{error:?}");
    let (committed, pushed) = publish(&fx.work, &remote, 3).unwrap();
    assert_eq!(committed.previous, None);
    assert_eq!(pushed.replaced, None);
    assert_eq!(fx.remote_tip(BRANCH).unwrap(), committed.commit.to_string());
}

#[test]
fn the_bot_branch_checked_out_is_refused() {
    let fx = Fixture::new();
    let remote = origin(None);
    publish(&fx.work, &remote, 2).unwrap();
    git(&fx.work, &["switch", "-q", BRANCH]);
    let before = snapshot(&fx.work);
    bot::fetch(&fx.work, &remote, "main", BRANCH).unwrap();
    let error = bot::commit_run(&run_commit(&fx.work, &remote, 3)).unwrap_err();
    assert!(matches!(&error, GitError::CheckedOut { branch, .. } if branch == BRANCH), "{error:?}");
    assert!(error.to_string().contains("git switch main"), "{error}");
    assert_eq!(snapshot(&fx.work), before);

    // Checked out in a linked worktree counts too.
    git(&fx.work, &["switch", "-q", "main"]);
    let side = fx.dir.path().join("side");
    git(&fx.work, &["worktree", "add", "-q", side.to_str().unwrap(), BRANCH]);
    let error = bot::commit_run(&run_commit(&fx.work, &remote, 3)).unwrap_err();
    match error {
        GitError::CheckedOut { worktree, .. } => {
            assert_eq!(worktree.canonicalize().unwrap(), side.canonicalize().unwrap())
        }
        other => panic!("expected CheckedOut, got {other:?}"),
    }
}

#[test]
fn paths_outside_the_repository_are_refused() {
    let fx = Fixture::new();
    let remote = origin(None);
    bot::fetch(&fx.work, &remote, "main", BRANCH).unwrap();
    for bad in ["../escape.txt", "/etc/passwd", ".git/config", "a//b", "dir/./x", "a\\b", ""] {
        let mut run = run_commit(&fx.work, &remote, 2);
        run.files.push((bad.to_string(), b"x".to_vec()));
        let error = bot::commit_run(&run).unwrap_err();
        assert!(matches!(&error, GitError::InvalidPath { path, .. } if path == bad), "{bad}: {error:?}");
    }
    assert!(git(&fx.work, &["branch", "--list", BRANCH]).is_empty(), "a branch was made");
}

#[test]
fn the_base_file_is_read_from_the_base_tip_not_the_work_tree() {
    let fx = Fixture::new();
    let remote = origin(None);
    write(&fx.work, PROGRAM, "{\"version\": \"local edit\"}\n");
    bot::fetch(&fx.work, &remote, "main", BRANCH).unwrap();
    let read = |path: &str| bot::read_base_file(&fx.work, "origin", "main", path).unwrap();
    assert_eq!(read(PROGRAM).unwrap(), b"{\"version\": 1}\n");
    assert_eq!(read("artifacts/support-triage/missing.json"), None);
    assert_eq!(read("artifacts/other/program.json"), None);

    // Production moved on the remote: after a fetch, the new version, though
    // the local main is behind.
    let other = fx.other_clone("deployer");
    write(&other, PROGRAM, "{\"version\": 7}\n");
    git(&other, &["commit", "-q", "-am", "promote v7"]);
    git(&other, &["push", "-q", "origin", "main"]);
    assert_eq!(read(PROGRAM).unwrap(), b"{\"version\": 1}\n", "read before the fetch");
    bot::fetch(&fx.work, &remote, "main", BRANCH).unwrap();
    assert_eq!(read(PROGRAM).unwrap(), b"{\"version\": 7}\n");
    assert_eq!(std::fs::read_to_string(fx.work.join(PROGRAM)).unwrap(), "{\"version\": \"local edit\"}\n");

    // A repository without the remote reads its local branch.
    let alone = fx.dir.path().join("alone");
    git(fx.dir.path(), &["init", "-q", "alone"]);
    write(&alone, PROGRAM, "{\"version\": \"local\"}\n");
    git(&alone, &["add", "."]);
    git(&alone, &["commit", "-q", "-m", "start"]);
    write(&alone, PROGRAM, "{\"version\": \"dirty\"}\n");
    let local = bot::read_base_file(&alone.join("artifacts"), "origin", "main", PROGRAM).unwrap();
    assert_eq!(local.unwrap(), b"{\"version\": \"local\"}\n");
    let error = bot::read_base_file(&alone, "origin", "release", PROGRAM).unwrap_err();
    assert!(matches!(error, GitError::BaseMissing { .. }), "{error:?}");
}

/// GitHub Actions checks out one commit by default (`fetch-depth: 1`).
#[test]
fn a_shallow_checkout_still_replaces_the_run_commit_and_spots_a_person_s() {
    let fx = Fixture::new();
    let server = over_http(&fx);
    let remote = origin(Some(TOKEN));
    publish(&fx.work, &remote, 2).unwrap();
    // main moves on after the last run, so the old run commit sits below the shallow tip.
    let other = fx.other_clone("colleague");
    write(&other, "docs/guide.md", "how to triage\n");
    git(&other, &["add", "."]);
    git(&other, &["commit", "-q", "-m", "docs: triage guide"]);
    git(&other, &["push", "-q", "origin", "main"]);

    let shallow = shallow_clone(&fx);
    git(&shallow, &["remote", "set-url", "origin", &server.repo_url("remote.git")]);
    let (committed, pushed) = publish(&shallow, &remote, 3).unwrap();
    assert!(pushed.replaced.is_some());
    assert_eq!(committed.base.to_string(), fx.remote_tip("main").unwrap());
    assert_eq!(git(&fx.bare, &["rev-list", "--count", &format!("main..{BRANCH}")]), "1");
    assert_eq!(show(&fx.bare, &format!("{BRANCH}:{PROGRAM}")), "{\"version\": 3}");
    assert_eq!(git(&shallow, &["rev-parse", "--is-shallow-repository"]), "true");
    git(&shallow, &["fsck", "--connectivity-only", "--no-dangling"]);

    git(&other, &["fetch", "-q", "origin"]);
    git(&other, &["switch", "-q", BRANCH]);
    git(&other, &["commit", "-q", "--allow-empty", "-m", "hand edit"]);
    git(&other, &["push", "-q", "origin", BRANCH]);
    let error = publish(&shallow, &remote, 4).unwrap_err();
    assert!(matches!(&error, GitError::HumanCommits { commits, .. } if commits[0].summary == "hand edit"), "{error:?}");
    assert_eq!(server.violations(), Vec::<String>::new());
}

/// libgit2 cannot fetch a local path into a shallow clone; say so, and leave
/// the clone as it was.
#[test]
fn a_shallow_clone_of_a_local_path_says_which_setting_to_change() {
    let fx = Fixture::new();
    let shallow = shallow_clone(&fx);
    let marker = std::fs::read(shallow.join(".git/shallow")).unwrap();
    let error = bot::fetch(&shallow, &origin(None), "main", BRANCH).unwrap_err();
    assert!(matches!(error, GitError::Shallow { .. }), "{error:?}");
    assert!(error.to_string().contains("fetch-depth: 0"), "{error}");
    assert_eq!(std::fs::read(shallow.join(".git/shallow")).unwrap(), marker);
}

fn shallow_clone(fx: &Fixture) -> PathBuf {
    let url = format!("file://{}", fx.bare.display());
    git(fx.dir.path(), &["clone", "-q", "--depth", "1", &url, "shallow"]);
    let shallow = fx.dir.path().join("shallow");
    assert_eq!(git(&shallow, &["rev-parse", "--is-shallow-repository"]), "true");
    shallow
}

#[test]
fn the_token_never_shows_in_debug_output() {
    let remote = origin(Some(TOKEN));
    let debug = format!("{remote:?}");
    assert!(!debug.contains(TOKEN), "{debug}");
    assert!(debug.contains("***"), "{debug}");
    let run = run_commit(Path::new("."), &remote, 1);
    assert!(!format!("{run:?}").contains(TOKEN));
}

// ---- over smart HTTP, behind a token ----

/// The fixture's remote served over HTTP, the user's clone pointing at it.
fn over_http(fx: &Fixture) -> GitHttpServer {
    let server = GitHttpServer::start(fx.dir.path(), TOKEN);
    git(&fx.work, &["remote", "set-url", "origin", &server.repo_url("remote.git")]);
    server
}

fn config_text(work: &Path) -> String {
    std::fs::read_to_string(work.join(".git/config")).unwrap()
}

#[test]
fn pushing_over_https_sends_the_token_as_x_access_token() {
    let fx = Fixture::new();
    let server = over_http(&fx);
    let remote = origin(Some(TOKEN));
    let (first, _) = publish(&fx.work, &remote, 2).unwrap();
    let (second, pushed) = publish(&fx.work, &remote, 3).unwrap();
    assert_eq!(pushed.replaced, Some(first.commit));
    assert_eq!(fx.remote_tip(BRANCH).unwrap(), second.commit.to_string());
    assert_eq!(git(&fx.bare, &["rev-list", "--count", &format!("main..{BRANCH}")]), "1");

    let seen = server.seen();
    assert!(
        seen.iter().any(|s| s.method == "POST" && s.path == "/remote.git/git-receive-pack" && s.authorized),
        "{seen:#?}"
    );
    assert!(seen.iter().any(|s| s.query == "service=git-upload-pack" && s.authorized), "{seen:#?}");
    assert!(seen.iter().filter(|s| s.user.is_some()).all(|s| s.user.as_deref() == Some("x-access-token")));
    assert_eq!(server.violations(), Vec::<String>::new());
    assert!(!config_text(&fx.work).contains(TOKEN));
}

#[test]
fn a_wrong_token_is_an_auth_error_at_once_and_never_echoed() {
    let fx = Fixture::new();
    let server = over_http(&fx);
    let wrong = "ghs_WRONGtokenWRONGtoken0000000000";
    let error = bot::fetch(&fx.work, &origin(Some(wrong)), "main", BRANCH).unwrap_err();
    let GitError::Auth { reason, operation, .. } = &error else { panic!("expected Auth, got {error:?}") };
    assert_eq!(*operation, "fetch from");
    assert!(reason.contains("refused the token"), "{reason}");
    let text = error.to_string();
    assert!(!text.contains(wrong) && !text.contains(TOKEN), "{text}");
    assert!(text.contains("x-access-token") && text.contains("contents: read"), "{text}");
    // One try with the token after the first 401, not a loop.
    let tries = server.seen().len();
    assert!(tries <= 3, "{tries} requests for one fetch: {:#?}", server.seen());

    // A push with a token that cannot write.
    let good = origin(Some(TOKEN));
    bot::fetch(&fx.work, &good, "main", BRANCH).unwrap();
    let run = run_commit(&fx.work, &good, 2);
    let committed = bot::commit_run(&run).unwrap();
    let bad = origin(Some(wrong));
    let run = RunCommit { remote: &bad, ..run };
    let error = bot::push(&run, &committed).unwrap_err();
    assert!(matches!(&error, GitError::Auth { operation: "push to", .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("contents: write") && !text.contains(wrong), "{text}");
    assert_eq!(fx.remote_tip(BRANCH), None);
    let config = config_text(&fx.work);
    assert!(!config.contains(wrong) && !config.contains(TOKEN), "{config}");
    assert_eq!(server.violations(), Vec::<String>::new());
}

#[test]
fn a_token_that_can_only_read_is_told_it_needs_contents_write() {
    let fx = Fixture::new();
    let server = over_http(&fx);
    let read_only = "ghs_READonlyTOKEN000000000000000000";
    server.add_read_only_token(read_only);
    let remote = origin(Some(read_only));
    let error = publish(&fx.work, &remote, 2).unwrap_err();
    let GitError::Auth { operation, reason, .. } = &error else { panic!("expected Auth, got {error:?}") };
    assert_eq!(*operation, "push to");
    assert!(reason.contains("403"), "{reason}");
    let text = error.to_string();
    assert!(text.contains("contents: write") && !text.contains(read_only), "{text}");
    assert_eq!(fx.remote_tip(BRANCH), None);
    assert_eq!(server.violations(), Vec::<String>::new());
}

#[test]
fn no_token_against_a_private_remote_is_an_auth_error() {
    let fx = Fixture::new();
    let _server = over_http(&fx);
    let error = bot::fetch(&fx.work, &origin(None), "main", BRANCH).unwrap_err();
    assert!(matches!(&error, GitError::Auth { reason, .. } if reason.contains("no token")), "{error:?}");
}

fn pre_receive(fx: &Fixture, script: &str) {
    let hook = fx.bare.join("hooks/pre-receive");
    std::fs::write(&hook, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_protected_branch_is_named_as_such() {
    let fx = Fixture::new();
    let server = over_http(&fx);
    pre_receive(
        &fx,
        "#!/bin/sh\nwhile read old new ref; do\n  case \"$ref\" in refs/heads/promptloop/*)\n    \
         echo \"error: GH006: Protected branch update failed for $ref.\" >&2\n    \
         echo \"error: Changes must be made through a pull request.\" >&2\n    exit 1;;\n  esac\ndone\n",
    );
    let error = publish(&fx.work, &origin(Some(TOKEN)), 2).unwrap_err();
    let GitError::Protected { branch, message, .. } = &error else { panic!("expected Protected, got {error:?}") };
    assert_eq!(branch, BRANCH);
    assert!(message.contains("GH006"), "{message}");
    let text = error.to_string();
    assert!(text.contains("promptloop/*") && text.contains("Nothing was pushed"), "{text}");
    assert!(!text.contains(TOKEN));
    assert_eq!(fx.remote_tip(BRANCH), None);
    assert_eq!(server.violations(), Vec::<String>::new());
}

#[test]
fn a_push_declined_for_another_reason_is_rejected_with_the_reason() {
    let fx = Fixture::new();
    let _server = over_http(&fx);
    pre_receive(&fx, "#!/bin/sh\necho \"commit messages must name a ticket (PROJ-123)\" >&2\nexit 1\n");
    let error = publish(&fx.work, &origin(Some(TOKEN)), 2).unwrap_err();
    let GitError::Rejected { reason, .. } = &error else { panic!("expected Rejected, got {error:?}") };
    assert!(reason.contains("must name a ticket"), "{reason}");
    assert_eq!(fx.remote_tip(BRANCH), None);
}

#[test]
fn an_unreachable_remote_is_a_network_error() {
    let fx = Fixture::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/remote.git", listener.local_addr().unwrap());
    drop(listener);
    git(&fx.work, &["remote", "set-url", "origin", &url.replace("http://", &format!("http://{TOKEN}@"))]);
    let error = bot::fetch(&fx.work, &origin(Some(TOKEN)), "main", BRANCH).unwrap_err();
    assert!(matches!(error, GitError::Network { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("http://***@127.0.0.1") && !text.contains(TOKEN), "{text}");
}

#[test]
fn a_project_in_a_subdirectory_is_addressed_by_its_repository_path() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("services/bank");
    std::fs::create_dir_all(&project).unwrap();
    git(dir.path(), &["init", "-q"]);
    let (workdir, prefix) = bot::repository_path(&project).unwrap();
    assert_eq!(workdir, dir.path().canonicalize().unwrap());
    assert_eq!(prefix, "services/bank");
    assert_eq!(bot::repository_path(dir.path()).unwrap().1, "");
    let outside = tempfile::tempdir().unwrap();
    assert!(bot::repository_path(outside.path()).is_none());
}
