//! The bot branch `promptloop/<pipeline>`: the run's files committed on top of
//! the base branch's tip and pushed with the workflow's token.
//!
//! The commit is built in the object database only, so the user's work tree,
//! index and HEAD never change. A rerun replaces promptloop's own previous run
//! commit (a force push guarded by a lease: the remote tip must still be the
//! one fetched), and refuses when the branch holds a commit a person made.
//!
//! A run calls [`fetch`] once at the start (so [`read_base_file`] sees
//! production's artifact and [`commit_run`] knows what the remote branch
//! holds), then [`commit_run`], then [`push`]. git2 blocks: call these from
//! `spawn_blocking` in async code.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::{Path, PathBuf};

use super::Secret;
use git2::{
    AutotagOption, Commit, Cred, CredentialType, ErrorClass, ErrorCode, FetchOptions, Index, IndexEntry, IndexTime,
    Oid, PushOptions, RemoteCallbacks, Repository, Tree,
};

/// The trailer that marks a run commit; its value is the pipeline's name.
pub const TRAILER: &str = "Promptloop-Pipeline";

/// The HTTPS user GitHub expects with an installation or `GITHUB_TOKEN` token.
const TOKEN_USER: &str = "x-access-token";

/// Commits listed by name in a [`GitError::HumanCommits`] message.
const LISTED_COMMITS: usize = 5;

/// How far back to look for a person's commits before giving up counting.
const WALK_LIMIT: usize = 1000;

/// Who the run commit is by. Also how a run commit is recognised again (with
/// the trailer): a person amending or rebasing it becomes its committer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotIdentity {
    pub name: String,
    pub email: String,
}

impl Default for BotIdentity {
    fn default() -> Self {
        BotIdentity { name: "promptloop[bot]".into(), email: "promptloop[bot]@users.noreply.github.com".into() }
    }
}

/// A configured remote of the user's repository and the token to reach it.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The remote's name in the repository's config, e.g. `origin`.
    pub name: String,
    /// Sent over HTTPS as user `x-access-token`; `None` sends no credentials
    /// (local and file remotes, public fetches).
    pub token: Option<Secret>,
}

impl Remote {
    pub fn new(name: impl Into<String>, token: Option<Secret>) -> Self {
        Remote { name: name.into(), token }
    }
}

/// One run's commit onto the bot branch.
#[derive(Debug, Clone)]
pub struct RunCommit<'a> {
    /// Any path inside the user's repository.
    pub repo: &'a Path,
    pub remote: &'a Remote,
    /// The base branch's short name, e.g. `main`.
    pub base: &'a str,
    /// The bot branch's short name, e.g. `promptloop/support-triage`.
    pub branch: &'a str,
    pub pipeline: &'a str,
    /// Exactly the run's files: repository-relative, `/`-separated paths.
    pub files: Vec<(String, Vec<u8>)>,
    /// The commit message; the pipeline trailer is appended.
    pub message: String,
    pub identity: BotIdentity,
}

/// What [`fetch`] saw on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub base: Oid,
    /// The bot branch's tip, `None` when the remote has no such branch.
    pub branch: Option<Oid>,
}

/// The run commit, in the object database and on the local bot branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub commit: Oid,
    /// The base tip the commit sits on.
    pub base: Oid,
    /// The remote bot branch's tip as last fetched: the lease [`push`] checks.
    pub previous: Option<Oid>,
    /// Whether the tree differs from the base's; no change means no PR is needed.
    pub changed: bool,
}

/// What [`push`] did to the remote bot branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub commit: Oid,
    /// The earlier run commit this push replaced, if the branch existed.
    pub replaced: Option<Oid>,
    /// The remote already held exactly this commit.
    pub up_to_date: bool,
}

/// A commit on the bot branch that promptloop did not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignCommit {
    /// Seven hex digits.
    pub id: String,
    pub author: String,
    pub summary: String,
}

impl fmt::Display for ForeignCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.id, self.author, self.summary)
    }
}

/// Why the bot branch could not be read, committed or pushed. The variants
/// are what a caller branches on; every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(
        "{} on {branch} {} not made by promptloop ({}); promptloop will not overwrite {}: merge or close the pull request, or delete the branch, then run again",
        count(commits.len(), "commit"),
        if commits.len() == 1 { "was" } else { "were" },
        list_commits(commits),
        if commits.len() == 1 { "it" } else { "them" }
    )]
    HumanCommits { branch: String, commits: Vec<ForeignCommit> },

    #[error(
        "{remote} refused the push to {branch} as a protected branch ({message}); promptloop replaces its own commit on that branch with a force push, so exclude `promptloop/*` from the branch protection rule or ruleset. Nothing was pushed; the commit is on the local branch {branch}"
    )]
    Protected { branch: String, remote: String, message: String },

    #[error(
        "{remote} rejected the push to {branch}: {reason}. Nothing was pushed; the commit is on the local branch {branch}"
    )]
    Rejected { branch: String, remote: String, reason: String },

    #[error(
        "{branch} on {remote} moved since it was fetched (then: {}, now: {}); nothing was pushed. Run again: promptloop fetches the new tip and replaces it only if it is its own run commit",
        short_or_none(*expected),
        short_or_none(*found)
    )]
    StaleLease { branch: String, remote: String, expected: Option<Oid>, found: Option<Oid> },

    #[error(
        "{branch} is checked out in {}; promptloop rewrites that branch on every run and will not move a branch you are working on: switch to another branch (e.g. `git switch main`) and run again",
        worktree.display()
    )]
    CheckedOut { branch: String, worktree: PathBuf },

    #[error(
        "cannot {operation} {remote} ({url}): {reason}. promptloop sends the token over HTTPS as user `x-access-token`; it needs `{permission}` on the repository (in GitHub Actions: `permissions: {permission}` for the job)"
    )]
    Auth { remote: String, url: String, operation: &'static str, permission: &'static str, reason: String },

    #[error(
        "cannot {operation} {remote} ({url}): the connection failed ({detail}); check the network and the remote's URL{}",
        network_note(operation)
    )]
    Network { remote: String, url: String, operation: &'static str, detail: String },

    #[error("the base branch {base} is not {place}: {fix}")]
    BaseMissing { base: String, place: String, fix: String },

    #[error(
        "{action} failed in a shallow clone ({detail}): promptloop needs the history between the base and the bot branch; use `fetch-depth: 0` on actions/checkout, or run `git fetch --unshallow`"
    )]
    Shallow { action: String, detail: String },

    #[error("cannot commit {path:?}: {reason}; run files are repository-relative paths with `/` separators")]
    InvalidPath { path: String, reason: String },

    #[error("{action}: {detail}")]
    Other { action: String, detail: String },
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

fn list_commits(commits: &[ForeignCommit]) -> String {
    let mut text = commits.iter().take(LISTED_COMMITS).map(|c| c.to_string()).collect::<Vec<_>>().join("; ");
    if commits.len() > LISTED_COMMITS {
        text.push_str(&format!("; and {} more", commits.len() - LISTED_COMMITS));
    }
    text
}

fn short(id: Oid) -> String {
    id.to_string()[..7].to_string()
}

fn short_or_none(id: Option<Oid>) -> String {
    id.map(short).unwrap_or_else(|| "no branch".to_string())
}

fn network_note(operation: &str) -> &'static str {
    if operation == "push to" {
        ". The push may not have reached the remote; running again replaces promptloop's own commit"
    } else {
        ""
    }
}

/// Fetches the base branch and the bot branch from `remote` into
/// `refs/remotes/<remote>/*`, and forgets a remote-tracking bot branch the
/// remote no longer has. No tags, no FETCH_HEAD, nothing else changes.
pub fn fetch(repo: &Path, remote: &Remote, base: &str, branch: &str) -> Result<Fetched, GitError> {
    check_branch_name(base)?;
    check_branch_name(branch)?;
    let repo = open(repo)?;
    let mut git_remote = find_remote(&repo, &remote.name)?;
    let url = redacted_url(&git_remote);
    let token = remote.token.as_ref();
    let auth = AuthState::default();
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(credentials(token, &auth));
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks).download_tags(AutotagOption::None).update_fetchhead(false);
    if repo.is_shallow() {
        // A full-depth fetch into a shallow clone tells the server nothing of
        // the missing history (and libgit2's local transport drops
        // .git/shallow). Keep it shallow: the tips are all a run needs.
        if is_local_url(&url) {
            return Err(GitError::Shallow {
                action: format!("fetching from {url}"),
                detail: "libgit2 cannot fetch from a local path into a shallow clone".into(),
            });
        }
        options.depth(1);
    }
    let specs = [
        format!("+refs/heads/{base}:{}", tracking_ref(&remote.name, base)),
        format!("+refs/heads/{branch}:{}", tracking_ref(&remote.name, branch)),
    ];
    let reflog = format!("promptloop: fetch {base} and {branch}");
    if let Err(error) = git_remote.fetch(&specs, Some(&mut options), Some(&reflog)) {
        let error = transport_error(Operation::Fetch, &remote.name, &url, &error, &auth, token);
        return Err(shallow_hint(&repo, error, "fetching"));
    }
    // The advertisement stays readable after fetch disconnects.
    let advertised = |name: &str| -> Result<Option<Oid>, GitError> {
        let heads = git_remote.list().map_err(|e| other("reading what the remote advertised", &e, token))?;
        Ok(heads.iter().find(|h| h.name() == format!("refs/heads/{name}")).map(|h| h.oid()))
    };
    let base_tip = advertised(base)?.ok_or_else(|| GitError::BaseMissing {
        base: base.to_string(),
        place: format!("on {} ({url})", remote.name),
        fix: "check the pipeline's base branch, or push it first".into(),
    })?;
    let branch_tip = advertised(branch)?;
    if branch_tip.is_none() {
        if let Ok(mut stale) = repo.find_reference(&tracking_ref(&remote.name, branch)) {
            stale.delete().map_err(|e| other("forgetting the deleted remote bot branch", &e, token))?;
        }
    }
    Ok(Fetched { base: base_tip, branch: branch_tip })
}

/// A file as it is on the base branch's tip — production's version, whatever
/// the work tree holds. Reads `refs/remotes/<remote>/<base>` as last fetched,
/// or the local branch when there is no such remote-tracking branch.
/// `None` when the base has no such file.
pub fn read_base_file(repo: &Path, remote: &str, base: &str, path: &str) -> Result<Option<Vec<u8>>, GitError> {
    check_branch_name(base)?;
    check_path(path)?;
    let repo = open(repo)?;
    let tip = base_tip(&repo, remote, base)?;
    let commit = repo.find_commit(tip).map_err(|e| other("reading the base commit", &e, None))?;
    let tree = commit.tree().map_err(|e| other("reading the base tree", &e, None))?;
    let entry = match tree.get_path(Path::new(path)) {
        Ok(entry) => entry,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(other(&format!("looking up {path} on {base}"), &e, None)),
    };
    match entry.to_object(&repo).map(|o| o.into_blob()) {
        Ok(Ok(blob)) => Ok(Some(blob.content().to_vec())),
        Ok(Err(_)) => Err(GitError::Other {
            action: format!("reading {path} on {base}"),
            detail: "it is a directory, not a file".into(),
        }),
        Err(e) => Err(other(&format!("reading {path} on {base}"), &e, None)),
    }
}

/// The base branch's tip as [`read_base_file`] reads it: what production is.
pub fn base_commit(repo: &Path, remote: &str, base: &str) -> Result<Oid, GitError> {
    check_branch_name(base)?;
    base_tip(&open(repo)?, remote, base)
}

/// `path` (inside the repository that contains it) as a repository-relative,
/// `/`-separated path, for a project that lives in a subdirectory. `None`
/// when `path` is not inside a git repository.
pub fn repository_path(path: &Path) -> Option<(PathBuf, String)> {
    let repo = Repository::discover(path).ok()?;
    let workdir = repo.workdir()?.canonicalize().ok()?;
    let inside = path.canonicalize().ok()?.strip_prefix(&workdir).ok()?.to_path_buf();
    let relative = inside.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>();
    Some((workdir, relative.join("/")))
}

/// Commits exactly the base tip plus the run's files and points the local
/// bot branch at it. Replaces an earlier run commit of this pipeline; refuses
/// when the remote-tracking or the local bot branch holds anything else on
/// top of the base. An identical rerun (same base, tree and message) reuses
/// the previous commit, so the push is a no-op.
pub fn commit_run(run: &RunCommit<'_>) -> Result<Committed, GitError> {
    check_branch_name(run.base)?;
    check_branch_name(run.branch)?;
    for (path, _) in &run.files {
        check_path(path)?;
    }
    let repo = open(run.repo)?;
    let local_ref = format!("refs/heads/{}", run.branch);
    if let Some(worktree) = checked_out_in(&repo, &local_ref) {
        return Err(GitError::CheckedOut { branch: run.branch.to_string(), worktree });
    }

    let base = base_tip(&repo, &run.remote.name, run.base)?;
    let base_commit = repo.find_commit(base).map_err(|e| other("reading the base commit", &e, None))?;
    let base_tree = base_commit.tree().map_err(|e| other("reading the base tree", &e, None))?;
    let previous = ref_target(&repo, &tracking_ref(&run.remote.name, run.branch));
    let local = ref_target(&repo, &local_ref);

    let mut foreign = Vec::new();
    for tip in [previous, local].into_iter().flatten() {
        for commit in foreign_commits(&repo, tip, base, run)? {
            if !foreign.contains(&commit) {
                foreign.push(commit);
            }
        }
    }
    if !foreign.is_empty() {
        return Err(GitError::HumanCommits { branch: run.branch.to_string(), commits: foreign });
    }

    let tree_id = run_tree(&repo, &base_tree, &run.files)?;
    let tree = repo.find_tree(tree_id).map_err(|e| other("reading the run's tree", &e, None))?;
    let message = with_trailer(&run.message, run.pipeline);
    let reusable = [previous, local].into_iter().flatten().find(|&tip| {
        repo.find_commit(tip).is_ok_and(|c| {
            c.tree_id() == tree_id && c.parent_ids().eq([base]) && c.message_bytes() == message.as_bytes()
        })
    });
    let commit = match reusable {
        Some(commit) => commit,
        None => {
            let signature = git2::Signature::now(&run.identity.name, &run.identity.email)
                .map_err(|e| other("making the bot's signature", &e, None))?;
            repo.commit(None, &signature, &signature, &message, &tree, &[&base_commit])
                .map_err(|e| other("writing the run commit", &e, None))?
        }
    };

    let reflog = format!("promptloop: run commit for {}", run.pipeline);
    let moved = match local {
        // Compare-and-swap: the branch must still be what was checked above.
        Some(current) => repo.reference_matching(&local_ref, commit, true, current, &reflog),
        None => repo.reference(&local_ref, commit, false, &reflog),
    };
    moved.map_err(|e| other(&format!("pointing {} at the run commit", run.branch), &e, None))?;
    Ok(Committed { commit, base, previous, changed: tree_id != base_tree.id() })
}

/// Force-pushes the run commit to the remote bot branch, provided the remote
/// tip is still `committed.previous` (checked in push negotiation, and by the
/// server against the old id the update carries).
pub fn push(run: &RunCommit<'_>, committed: &Committed) -> Result<Pushed, GitError> {
    check_branch_name(run.branch)?;
    let repo = open(run.repo)?;
    let local_ref = format!("refs/heads/{}", run.branch);
    if ref_target(&repo, &local_ref) != Some(committed.commit) {
        return Err(GitError::Other {
            action: format!("pushing {}", run.branch),
            detail: format!(
                "the local branch no longer points at the run commit {}; nothing was pushed: run again",
                short(committed.commit)
            ),
        });
    }
    let mut git_remote = find_remote(&repo, &run.remote.name)?;
    let url = redacted_url(&git_remote);
    let token = run.remote.token.as_ref();
    let auth = AuthState::default();
    let lease: Cell<Option<Option<Oid>>> = Cell::new(None);
    let rejection: RefCell<Option<String>> = RefCell::new(None);
    let remote_text: RefCell<Vec<u8>> = RefCell::new(Vec::new());

    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(credentials(token, &auth));
    callbacks.push_negotiation(|updates| {
        for update in updates.iter().filter(|u| u.dst_refname_bytes() == local_ref.as_bytes()) {
            let found = Some(update.src()).filter(|id| !id.is_zero());
            if found != committed.previous {
                lease.set(Some(found));
                return Err(git2::Error::from_str("the remote bot branch moved since it was fetched"));
            }
        }
        Ok(())
    });
    callbacks.push_update_reference(|refname, status| {
        if refname == local_ref
            && let Some(status) = status
        {
            *rejection.borrow_mut() = Some(status.to_string());
        }
        Ok(())
    });
    callbacks.sideband_progress(|text| {
        let mut seen = remote_text.borrow_mut();
        if seen.len() < 16 * 1024 {
            seen.extend_from_slice(text);
        }
        true
    });
    let mut options = PushOptions::new();
    options.remote_callbacks(callbacks);
    let spec = format!("+{local_ref}:{local_ref}");
    let result = git_remote.push(&[spec.as_str()], Some(&mut options));
    drop(options);

    if let Some(found) = lease.get() {
        return Err(GitError::StaleLease {
            branch: run.branch.to_string(),
            remote: run.remote.name.clone(),
            expected: committed.previous,
            found,
        });
    }
    if let Err(error) = result {
        return Err(shallow_hint(
            &repo,
            transport_error(Operation::Push, &run.remote.name, &url, &error, &auth, token),
            "pushing",
        ));
    }
    if let Some(status) = rejection.into_inner() {
        let said = remote_lines(&remote_text.into_inner(), token);
        let message = scrub(&if said.is_empty() { status.clone() } else { format!("{status}: {said}") }, token);
        let (branch, remote) = (run.branch.to_string(), run.remote.name.clone());
        return Err(if is_protected(&status) || is_protected(&said) {
            GitError::Protected { branch, remote, message }
        } else {
            GitError::Rejected { branch, remote, reason: message }
        });
    }

    let tracking = tracking_ref(&run.remote.name, run.branch);
    repo.reference(&tracking, committed.commit, true, "promptloop: push")
        .map_err(|e| other("recording the pushed tip (the push itself succeeded)", &e, token))?;
    Ok(Pushed {
        commit: committed.commit,
        replaced: committed.previous.filter(|&p| p != committed.commit),
        up_to_date: committed.previous == Some(committed.commit),
    })
}

/// The messages hosts use when a branch rule declines a push: GitHub's
/// branch protection (GH006) and rulesets (GH013), GitLab, Gitea, Bitbucket.
fn is_protected(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["protected branch", "gh006", "gh013", "is protected", "protected ref"].iter().any(|m| text.contains(m))
}

/// What the remote printed (hook output, `remote:` lines), on one line.
fn remote_lines(text: &[u8], token: Option<&Secret>) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Resolving deltas"))
        .collect();
    scrub(&lines.join(" / "), token)
}

#[derive(Clone, Copy)]
enum Operation {
    Fetch,
    Push,
}

/// What the credentials callback refused to do, so a failure reads as an
/// authentication problem rather than a transport one.
#[derive(Default)]
struct AuthState {
    calls: Cell<u32>,
    refusal: Cell<Option<Refusal>>,
}

#[derive(Clone, Copy)]
enum Refusal {
    NoToken,
    TokenRejected,
    NotHttps,
}

/// Offers the token once; libgit2 asks again forever when the server keeps
/// answering 401, so the second request means the token was refused.
fn credentials<'a>(
    token: Option<&'a Secret>,
    state: &'a AuthState,
) -> impl FnMut(&str, Option<&str>, CredentialType) -> Result<Cred, git2::Error> + 'a {
    move |_url, _user, allowed| {
        let calls = state.calls.get();
        state.calls.set(calls + 1);
        let refuse = |why: Refusal| {
            state.refusal.set(Some(why));
            Err(git2::Error::from_str("no usable credentials"))
        };
        if !allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            return refuse(Refusal::NotHttps);
        }
        match token {
            None => refuse(Refusal::NoToken),
            Some(_) if calls > 0 => refuse(Refusal::TokenRejected),
            Some(token) => Cred::userpass_plaintext(TOKEN_USER, token.expose()),
        }
    }
}

fn transport_error(
    operation: Operation,
    remote: &str,
    url: &str,
    error: &git2::Error,
    auth: &AuthState,
    token: Option<&Secret>,
) -> GitError {
    let (verb, permission) = match operation {
        Operation::Fetch => ("fetch from", "contents: read"),
        Operation::Push => ("push to", "contents: write"),
    };
    let detail = scrub(error.message(), token);
    let reason = match auth.refusal.get() {
        Some(Refusal::NoToken) => Some("the remote asked for credentials and no token was given".to_string()),
        Some(Refusal::TokenRejected) => Some("the remote refused the token (HTTP 401)".to_string()),
        Some(Refusal::NotHttps) => Some(
            "the remote is not an HTTPS remote; set its url to https://… (promptloop authenticates with a token)"
                .to_string(),
        ),
        None if detail.contains("403") => Some("the token was accepted but lacks permission (HTTP 403)".to_string()),
        None if error.code() == ErrorCode::Auth || detail.contains("401") => {
            Some(format!("the remote refused the credentials ({detail})"))
        }
        None => None,
    };
    if let Some(reason) = reason {
        return GitError::Auth {
            remote: remote.to_string(),
            url: url.to_string(),
            operation: verb,
            permission,
            reason,
        };
    }
    match error.class() {
        ErrorClass::Net | ErrorClass::Http | ErrorClass::Ssl | ErrorClass::Os | ErrorClass::Ssh => {
            GitError::Network { remote: remote.to_string(), url: url.to_string(), operation: verb, detail }
        }
        _ => GitError::Other { action: format!("{verb} {remote} ({url})"), detail },
    }
}

/// In a shallow clone a missing object usually means missing history; say so.
fn shallow_hint(repo: &Repository, error: GitError, action: &str) -> GitError {
    match error {
        GitError::Other { detail, .. } if repo.is_shallow() => GitError::Shallow { action: action.into(), detail },
        error => error,
    }
}

fn other(action: &str, error: &git2::Error, token: Option<&Secret>) -> GitError {
    GitError::Other { action: action.to_string(), detail: scrub(error.message(), token) }
}

fn scrub(text: &str, token: Option<&Secret>) -> String {
    match token {
        Some(token) if !token.expose().is_empty() => text.replace(token.expose(), "***"),
        _ => text.to_string(),
    }
}

/// The remote's URL for messages, without any user or password in it.
fn redacted_url(remote: &git2::Remote<'_>) -> String {
    let url = String::from_utf8_lossy(remote.url_bytes()).into_owned();
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme && !url[scheme + 3..at].contains('/') => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url,
    }
}

/// A path or `file://` URL, served by libgit2's local transport.
fn is_local_url(url: &str) -> bool {
    url.starts_with("file://") || !url.contains("://")
}

fn open(path: &Path) -> Result<Repository, GitError> {
    Repository::discover(path).map_err(|e| GitError::Other {
        action: format!("opening the git repository at {}", path.display()),
        detail: format!("{}; run promptloop inside a clone of the repository", e.message()),
    })
}

fn find_remote<'r>(repo: &'r Repository, name: &str) -> Result<git2::Remote<'r>, GitError> {
    repo.find_remote(name).map_err(|e| GitError::Other {
        action: format!("finding the remote {name}"),
        detail: format!("{}; add it with `git remote add {name} <url>`", e.message()),
    })
}

fn tracking_ref(remote: &str, branch: &str) -> String {
    format!("refs/remotes/{remote}/{branch}")
}

fn ref_target(repo: &Repository, name: &str) -> Option<Oid> {
    repo.find_reference(name).ok()?.resolve().ok()?.target()
}

/// The base tip: the remote-tracking branch as fetched (what the pull request
/// will be based on), else the local branch.
fn base_tip(repo: &Repository, remote: &str, base: &str) -> Result<Oid, GitError> {
    let tracking = tracking_ref(remote, base);
    if let Some(id) = ref_target(repo, &tracking) {
        return Ok(id);
    }
    let local = format!("refs/heads/{base}");
    match ref_target(repo, &local) {
        Some(id) => Ok(id),
        None => Err(GitError::BaseMissing {
            base: base.to_string(),
            place: format!("in the repository (neither {tracking} nor {local})"),
            fix: "fetch it first, or check the pipeline's base branch".into(),
        }),
    }
}

fn check_branch_name(name: &str) -> Result<(), GitError> {
    if git2::Reference::is_valid_name(&format!("refs/heads/{name}")) {
        Ok(())
    } else {
        Err(GitError::Other {
            action: format!("using the branch name {name:?}"),
            detail: "it is not a valid git branch name".into(),
        })
    }
}

fn check_path(path: &str) -> Result<(), GitError> {
    let invalid = |reason: &str| Err(GitError::InvalidPath { path: path.to_string(), reason: reason.to_string() });
    if path.is_empty() {
        return invalid("the path is empty");
    }
    if path.contains('\\') || path.contains('\0') {
        return invalid("it contains a backslash or NUL");
    }
    for part in path.split('/') {
        match part {
            "" => return invalid("it is absolute or has an empty component"),
            "." | ".." => return invalid("it has a `.` or `..` component"),
            _ if part.eq_ignore_ascii_case(".git") => return invalid("it points into .git"),
            _ => {}
        }
    }
    Ok(())
}

/// The base tree with the run's files laid over it, built in an index that
/// lives only in memory. A file replacing an executable keeps its mode.
fn run_tree(repo: &Repository, base: &Tree<'_>, files: &[(String, Vec<u8>)]) -> Result<Oid, GitError> {
    let mut index = Index::new().map_err(|e| other("making an in-memory index", &e, None))?;
    index.read_tree(base).map_err(|e| other("reading the base tree", &e, None))?;
    for (path, bytes) in files {
        let id = repo.blob(bytes).map_err(|e| other(&format!("writing {path}"), &e, None))?;
        let mode = match base.get_path(Path::new(path)) {
            Ok(entry) if entry.filemode() == 0o100755 => 0o100755,
            _ => 0o100644,
        };
        let entry = IndexEntry {
            ctime: IndexTime::new(0, 0),
            mtime: IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode,
            uid: 0,
            gid: 0,
            file_size: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            id,
            flags: 0,
            flags_extended: 0,
            path: path.as_bytes().to_vec(),
        };
        index.add(&entry).map_err(|e| GitError::InvalidPath { path: path.clone(), reason: e.message().to_string() })?;
    }
    index.write_tree_to(repo).map_err(|e| other("writing the run's tree", &e, None))
}

fn with_trailer(message: &str, pipeline: &str) -> String {
    format!("{}\n\n{TRAILER}: {pipeline}\n", message.trim_end())
}

/// A run commit of this pipeline: not a merge (at a shallow clone's edge it
/// shows no parent at all), the trailer, and the bot as committer (a person
/// amending or rebasing it becomes the committer).
fn is_run_commit(commit: &Commit<'_>, run: &RunCommit<'_>) -> bool {
    let ours = commit.parent_count() <= 1 && commit.committer().email().is_ok_and(|e| e == run.identity.email);
    ours && commit.message().ok().and_then(|m| git2::message_trailers_strs(m).ok()).is_some_and(|trailers| {
        trailers.iter().any(|(key, value)| key.eq_ignore_ascii_case(TRAILER) && value.trim() == run.pipeline)
    })
}

/// Commits reachable from `tip` but not from the base that are not run commits.
fn foreign_commits(
    repo: &Repository,
    tip: Oid,
    base: Oid,
    run: &RunCommit<'_>,
) -> Result<Vec<ForeignCommit>, GitError> {
    let walk_error = |e: git2::Error| {
        shallow_hint(repo, other(&format!("reading the history of {}", run.branch), &e, None), "reading the history")
    };
    let mut walk = repo.revwalk().map_err(walk_error)?;
    walk.push(tip).map_err(walk_error)?;
    walk.hide(base).map_err(walk_error)?;
    let mut foreign = Vec::new();
    for id in walk.take(WALK_LIMIT) {
        let commit = repo.find_commit(id.map_err(walk_error)?).map_err(walk_error)?;
        if !is_run_commit(&commit, run) {
            foreign.push(ForeignCommit {
                id: short(commit.id()),
                author: String::from_utf8_lossy(commit.author().name_bytes()).into_owned(),
                summary: commit.summary().ok().flatten().unwrap_or("").to_string(),
            });
        }
    }
    Ok(foreign)
}

/// The work tree whose HEAD is on `refname`: the main one or a linked one.
fn checked_out_in(repo: &Repository, refname: &str) -> Option<PathBuf> {
    let on_branch = |r: &Repository| {
        r.find_reference("HEAD").is_ok_and(|head| head.symbolic_target().ok().flatten() == Some(refname))
    };
    let main = Repository::open(repo.commondir()).ok()?;
    if on_branch(&main) {
        return Some(main.workdir().unwrap_or(main.path()).to_path_buf());
    }
    for name in main.worktrees().ok()?.iter().flatten().flatten() {
        let Ok(worktree) = main.find_worktree(name) else { continue };
        if Repository::open_from_worktree(&worktree).is_ok_and(|r| on_branch(&r)) {
            return Some(worktree.path().to_path_buf());
        }
    }
    None
}
