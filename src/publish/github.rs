//! The pull request: find the bot branch's open PR by the hidden marker in its
//! body, update its title and body only when they changed, or open it; then add
//! the configured labels. Speaks GitHub's REST API through octocrab, to
//! github.com or an Enterprise server (`https://ghe.example.com/api/v3`).
//!
//! Idempotent by construction: a rerun finds the PR it opened last week and
//! never opens a second one. Rate limits are waited out (up to a bound), server
//! errors retried, and every refusal becomes a message that says what to fix —
//! which token permission is missing, when the limit resets. The token never
//! appears in an error, a log line or a `Debug` print.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use octocrab::Octocrab;
use reqwest::header::{ACCEPT, HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Secret;
use crate::clock::Sleeper;

/// github.com's REST API root.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The media type GitHub recommends for REST calls.
const MEDIA_TYPE: &str = "application/vnd.github+json";
/// How long a secondary rate limit lasts when GitHub does not say (its docs: "at least one minute").
const SECONDARY_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Rate-limit waits per publish, whatever their length: a server that keeps
/// limiting after this many is not going to let us through.
const MAX_RATE_LIMIT_RETRIES: u32 = 8;
/// How much of GitHub's error text goes into a message.
const MAX_MESSAGE_CHARS: usize = 400;

/// Where the repository lives and how to reach it.
#[derive(Debug, Clone)]
pub struct GitHubConfig {
    /// The REST API root: [`DEFAULT_API_URL`], or an Enterprise server's `https://host/api/v3`.
    pub api_url: String,
    pub owner: String,
    pub repo: String,
    pub token: Secret,
    /// The longest a publish waits, in total, for rate limits to reset; past it, an error says when to rerun.
    pub max_rate_limit_wait: Duration,
    /// Further attempts after a 5xx.
    pub server_error_retries: u32,
    /// The wait before the first retry after a 5xx; doubled for each further one.
    pub retry_delay: Duration,
    /// How the waits (rate limits, retries) are waited: tokio's timer unless a test records them.
    pub sleeper: Sleeper,
}

impl GitHubConfig {
    /// github.com, waiting up to 15 minutes for rate limits, retrying a 5xx twice.
    pub fn new(owner: impl Into<String>, repo: impl Into<String>, token: Secret) -> Self {
        GitHubConfig {
            api_url: DEFAULT_API_URL.to_string(),
            owner: owner.into(),
            repo: repo.into(),
            token,
            max_rate_limit_wait: Duration::from_secs(15 * 60),
            server_error_retries: 2,
            retry_delay: Duration::from_secs(1),
            sleeper: Sleeper::default(),
        }
    }

    fn slug(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }
}

/// The pull request a run wants to exist.
#[derive(Debug, Clone, PartialEq)]
pub struct PullRequestSpec {
    /// The bot branch, e.g. `promptloop/support-triage`.
    pub head: String,
    /// The branch it merges into, e.g. `main`.
    pub base: String,
    pub title: String,
    /// The body; [`open_or_update`] appends `marker` if the body lacks it.
    pub body: String,
    /// Labels the PR should carry; others a person added are left alone.
    pub labels: Vec<String>,
    /// What finds this PR again next week: [`marker`]`(pipeline)`.
    pub marker: String,
}

impl PullRequestSpec {
    /// The body as sent: with the marker, whether or not the caller put it in.
    pub fn body_with_marker(&self) -> String {
        if self.marker.is_empty() || self.body.contains(&self.marker) {
            self.body.clone()
        } else if self.body.is_empty() || self.body.ends_with('\n') {
            format!("{}{}\n", self.body, self.marker)
        } else {
            format!("{}\n\n{}\n", self.body, self.marker)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullRequestAction {
    Created,
    Updated,
    /// The open PR already had this title and body.
    Unchanged,
}

impl PullRequestAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PullRequestAction::Created => "created",
            PullRequestAction::Updated => "updated",
            PullRequestAction::Unchanged => "unchanged",
        }
    }
}

/// What [`open_or_update`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PullRequestOutcome {
    pub number: u64,
    /// The PR's page (`html_url`).
    pub url: String,
    pub action: PullRequestAction,
    /// Labels this call added (those the PR already had are not repeated).
    pub labels_added: Vec<String>,
    /// Other open PRs that carry the same marker, left open: the oldest is kept.
    pub duplicates: Vec<u64>,
    /// Time spent waiting for rate limits to reset.
    pub rate_limit_wait: Duration,
    /// What a person should know, one sentence each (duplicates, waits, retries).
    pub notes: Vec<String>,
}

/// Why GitHub did not get the pull request it was asked for. Every message says
/// what failed and how to fix it, and never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    /// A setting is unusable before anything is sent.
    #[error("{0}")]
    Config(String),
    #[error(
        "GitHub rejected the token (401: {message}) trying to {action}: it is invalid, expired or revoked. \
         Give promptloop a valid token (in a workflow, `secrets.GITHUB_TOKEN` or a personal access token \
         with access to the repository)."
    )]
    Unauthorized { action: String, message: String },
    #[error("GitHub refused to {action} (403: {message}): {fix}")]
    Forbidden { action: String, message: String, permission: &'static str, fix: String },
    #[error(
        "GitHub's {kind} rate limit stopped the attempt to {action}: it resets at {resets_at} (in {}), beyond \
         the {} promptloop waits in total. Rerun after the reset, or raise the wait limit.",
        minutes(*wait),
        minutes(*max_wait),
        resets_at = resets_at.format("%Y-%m-%d %H:%M:%S UTC")
    )]
    RateLimited { action: String, kind: RateLimitKind, resets_at: DateTime<Utc>, wait: Duration, max_wait: Duration },
    #[error(
        "GitHub found nothing at {path} trying to {action} (404: {message}): check that the repository \
         {repository} exists, that the API URL is right, and that the token can see the repository (a token \
         for another repository or organization gets 404, not 403)."
    )]
    NotFound { action: String, path: String, repository: String, message: String },
    #[error("GitHub would not {action} (422): {message}")]
    Validation { action: String, message: String },
    #[error(
        "GitHub failed to {action}: {status} after {attempts} attempt(s): {message}. GitHub may be having an outage; rerun later."
    )]
    Server { action: String, status: u16, attempts: u32, message: String },
    #[error("could not reach GitHub at {api_url} to {action}: {message}")]
    Transport { action: String, api_url: String, message: String },
    #[error("GitHub answered {status} trying to {action}: {message}")]
    Unexpected { action: String, status: u16, message: String },
    /// The PR is there, but a later step failed: says exactly what was done.
    #[error(
        "pull request #{} was {} ({}), but {source}",
        outcome.number,
        outcome.action.as_str(),
        outcome.url
    )]
    Partial { outcome: Box<PullRequestOutcome>, source: Box<GitHubError> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitKind {
    /// The hourly request quota (`x-ratelimit-remaining: 0`).
    Primary,
    /// Too many requests too fast, or too many creations (`retry-after`).
    Secondary,
}

impl fmt::Display for RateLimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RateLimitKind::Primary => "primary",
            RateLimitKind::Secondary => "secondary",
        })
    }
}

/// The hidden line in a PR body that finds it again: `<!-- promptloop:pipeline=<name> -->`.
pub fn marker(pipeline: &str) -> String {
    format!("<!-- promptloop:pipeline={pipeline} -->")
}

/// `owner/name` (as in `GITHUB_REPOSITORY`) into its two parts.
pub fn parse_repository(s: &str) -> Result<(String, String), GitHubError> {
    let s = s.trim();
    let valid = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match s.split_once('/') {
        Some((owner, repo)) if valid(owner) && valid(repo) => Ok((owner.to_string(), repo.to_string())),
        _ => Err(GitHubError::Config(format!(
            "`{s}` is not a GitHub repository: expected `owner/name` (as in GITHUB_REPOSITORY, e.g. `octo-org/support-bot`)"
        ))),
    }
}

/// The pull request as a file, for a run that does not open it (no token, or
/// a dry run): title, branches and labels, then the body with its marker.
pub fn offline_text(spec: &PullRequestSpec) -> String {
    let labels = if spec.labels.is_empty() { "none".to_string() } else { spec.labels.join(", ") };
    format!(
        "<!-- pull request not opened: title, branches and labels, then the body -->\n\
         # {}\n\n`{}` → `{}` · labels: {}\n\n{}",
        spec.title,
        spec.head,
        spec.base,
        labels,
        spec.body_with_marker()
    )
}

/// Finds the open PR for `spec.head` (by its marker), updates its title and
/// body when they changed or opens it, then adds the labels it lacks.
///
/// A failure after the PR exists is [`GitHubError::Partial`], carrying what was done.
pub async fn open_or_update(config: &GitHubConfig, spec: &PullRequestSpec) -> Result<PullRequestOutcome, GitHubError> {
    let mut client = Client::new(config)?;
    let body = spec.body_with_marker();
    let (pull, action, duplicates) = client.find_or_create(spec, &body).await?;
    let mut outcome = PullRequestOutcome {
        number: pull.number,
        url: pull.html_url.clone(),
        action,
        labels_added: Vec::new(),
        duplicates,
        rate_limit_wait: Duration::ZERO,
        notes: Vec::new(),
    };
    let existing_labels = pull.label_names();
    if action != PullRequestAction::Created
        && let Some(updated) = client.update(&pull, spec, &body).await?
    {
        outcome.url = updated.html_url;
        outcome.action = PullRequestAction::Updated;
    }
    let labels = client.add_labels(pull.number, &existing_labels, &spec.labels).await;
    outcome.rate_limit_wait = client.waited;
    outcome.notes = client.notes;
    match labels {
        Ok(added) => {
            outcome.labels_added = added;
            tracing::info!(number = outcome.number, url = %outcome.url, action = outcome.action.as_str(), "pull request");
            Ok(outcome)
        }
        Err(e) => Err(GitHubError::Partial { outcome: Box::new(outcome), source: Box::new(e) }),
    }
}

/// The fields of a pull request this module reads.
#[derive(Debug, Clone, Deserialize)]
struct Pull {
    number: u64,
    html_url: String,
    title: String,
    body: Option<String>,
    head: Ref,
    base: Ref,
    #[serde(default)]
    labels: Vec<Label>,
}

#[derive(Debug, Clone, Deserialize)]
struct Ref {
    #[serde(rename = "ref")]
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Label {
    name: String,
}

impl Pull {
    fn label_names(&self) -> Vec<String> {
        self.labels.iter().map(|l| l.name.clone()).collect()
    }
}

/// One kind of call, for messages: what we were doing and which permission it needs.
struct Call {
    action: String,
    /// The fine-grained permission that grants it, as written in a workflow's `permissions:`.
    permission: &'static str,
    /// A 5xx may be retried as is (false for creation, which is retried by looking again first).
    retry_server_errors: bool,
}

struct Response {
    status: u16,
    body: String,
}

struct Client<'a> {
    crab: Octocrab,
    config: &'a GitHubConfig,
    waited: Duration,
    rate_limit_retries: u32,
    notes: Vec<String>,
}

impl<'a> Client<'a> {
    fn new(config: &'a GitHubConfig) -> Result<Self, GitHubError> {
        let token = config.token.expose().trim();
        if token.is_empty() {
            return Err(GitHubError::Config(
                "the GitHub token is empty: set it (in a workflow, `GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}`), \
                 or publish without a token to write the pull request to a file"
                    .into(),
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(GitHubError::Config(
                "the GitHub token contains a space, a line break or a non-ASCII character, which cannot go in an \
                 HTTP header: check the secret's value (a token copied with a trailing newline?)"
                    .into(),
            ));
        }
        if config.owner.is_empty() || config.repo.is_empty() {
            return Err(GitHubError::Config(format!(
                "the GitHub repository `{}` lacks an owner or a name: expected `owner/name`",
                config.slug()
            )));
        }
        let api_url = config.api_url.trim().trim_end_matches('/');
        let bad_url = |why: &str| {
            GitHubError::Config(format!(
                "the GitHub API URL `{api_url}` {why}: use {DEFAULT_API_URL}, or for GitHub Enterprise Server \
                 https://<host>/api/v3"
            ))
        };
        if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
            return Err(bad_url("is not an http(s) URL"));
        }
        if api_url.contains('?') || api_url.contains('#') {
            return Err(bad_url("has a query or fragment"));
        }
        let build = || -> octocrab::Result<Octocrab> {
            Octocrab::builder()
                .base_uri(api_url)?
                .personal_token(token.to_string())
                .add_header(ACCEPT, MEDIA_TYPE.to_string())
                .set_connect_timeout(Some(Duration::from_secs(15)))
                .set_read_timeout(Some(Duration::from_secs(60)))
                .build()
        };
        let crab = build().map_err(|e| bad_url(&format!("is not usable ({})", config.token.scrub(&e.to_string()))))?;
        Ok(Client { crab, config, waited: Duration::ZERO, rate_limit_retries: 0, notes: Vec::new() })
    }

    fn repo_path(&self) -> String {
        format!("/repos/{}/{}", encode(&self.config.owner), encode(&self.config.repo))
    }

    /// The PR to keep (and whether it was just created), plus duplicates left open.
    async fn find_or_create(
        &mut self,
        spec: &PullRequestSpec,
        body: &str,
    ) -> Result<(Pull, PullRequestAction, Vec<u64>), GitHubError> {
        let mut attempt = 0;
        loop {
            if let Some((pull, duplicates)) = self.find(spec).await? {
                // Found after a creation that answered 5xx: that creation went through after all.
                let created = attempt > 0
                    && pull.title == spec.title
                    && normalize(pull.body.as_deref().unwrap_or("")) == normalize(body);
                let action = if created { PullRequestAction::Created } else { PullRequestAction::Unchanged };
                return Ok((pull, action, duplicates));
            }
            match self.create(spec, body).await {
                Err(GitHubError::Server { status, message, .. }) if attempt < self.config.server_error_retries => {
                    attempt += 1;
                    let delay = self.config.retry_delay * 2u32.pow(attempt - 1);
                    self.notes.push(format!(
                        "GitHub answered {status} creating the pull request; looked again after {} before retrying, \
                         so a PR it did create is not opened twice",
                        seconds(delay)
                    ));
                    tracing::warn!(status, %message, "creating the pull request failed; retrying");
                    self.config.sleeper.sleep(delay).await;
                }
                Err(e) => return Err(e),
                Ok(pull) => return Ok((pull, PullRequestAction::Created, Vec::new())),
            }
        }
    }

    /// The open PR from `spec.head` carrying the marker (the oldest, if several).
    async fn find(&mut self, spec: &PullRequestSpec) -> Result<Option<(Pull, Vec<u64>)>, GitHubError> {
        let call = Call {
            action: format!("list the open pull requests from `{}` in {}", spec.head, self.config.slug()),
            permission: "pull-requests: read",
            retry_server_errors: true,
        };
        let head = format!("{}:{}", self.config.owner, spec.head);
        let path = format!("{}/pulls?state=open&head={}&per_page=100", self.repo_path(), encode(&head));
        let response = self.send(&call, Method::Get, &path, None).await?;
        let mut pulls: Vec<Pull> = parse(&call, &response)?;
        pulls.retain(|p| p.head.name == spec.head);
        pulls.sort_by_key(|p| p.number);
        let (marked, unmarked): (Vec<Pull>, Vec<Pull>) =
            pulls.into_iter().partition(|p| p.body.as_deref().is_some_and(|b| b.contains(&spec.marker)));
        if let Some(keep) = marked.first() {
            let duplicates: Vec<u64> = marked[1..].iter().map(|p| p.number).collect();
            if !duplicates.is_empty() {
                let list = duplicates.iter().map(|n| format!("#{n}")).collect::<Vec<_>>().join(", ");
                self.notes.push(format!(
                    "{list} also carry this pipeline's marker; kept the oldest, #{}, and left the others open: close \
                     them by hand",
                    keep.number
                ));
                tracing::warn!(kept = keep.number, others = %list, "several open pull requests carry the marker");
            }
            return Ok(Some((keep.clone(), duplicates)));
        }
        if let Some(adopted) = unmarked.into_iter().next() {
            // GitHub allows one open PR per head and base: opening another would fail, so take this one over.
            self.notes.push(format!(
                "#{} from `{}` did not carry the marker; it was taken over and its body now does",
                adopted.number, spec.head
            ));
            return Ok(Some((adopted, Vec::new())));
        }
        Ok(None)
    }

    async fn create(&mut self, spec: &PullRequestSpec, body: &str) -> Result<Pull, GitHubError> {
        let call = Call {
            action: format!("create the pull request `{}` → `{}` in {}", spec.head, spec.base, self.config.slug()),
            permission: "pull-requests: write",
            retry_server_errors: false,
        };
        let request = json!({ "title": spec.title, "head": spec.head, "base": spec.base, "body": body });
        let response = self.send(&call, Method::Post, &format!("{}/pulls", self.repo_path()), Some(&request)).await?;
        parse(&call, &response)
    }

    /// PATCHes what changed: the updated PR, or `None` when nothing did.
    async fn update(&mut self, pull: &Pull, spec: &PullRequestSpec, body: &str) -> Result<Option<Pull>, GitHubError> {
        let mut changes = serde_json::Map::new();
        if pull.title != spec.title {
            changes.insert("title".into(), json!(spec.title));
        }
        if normalize(pull.body.as_deref().unwrap_or("")) != normalize(body) {
            changes.insert("body".into(), json!(body));
        }
        if pull.base.name != spec.base {
            changes.insert("base".into(), json!(spec.base));
        }
        if changes.is_empty() {
            return Ok(None);
        }
        let call = Call {
            action: format!("update pull request #{} in {}", pull.number, self.config.slug()),
            permission: "pull-requests: write",
            retry_server_errors: true,
        };
        let path = format!("{}/pulls/{}", self.repo_path(), pull.number);
        let response = self.send(&call, Method::Patch, &path, Some(&Value::Object(changes))).await?;
        parse(&call, &response).map(Some)
    }

    /// Adds the labels in `wanted` the PR lacks (GitHub compares label names without case).
    async fn add_labels(
        &mut self,
        number: u64,
        existing: &[String],
        wanted: &[String],
    ) -> Result<Vec<String>, GitHubError> {
        let mut missing: Vec<String> = Vec::new();
        for label in wanted.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
            let known = |l: &String| l.eq_ignore_ascii_case(label);
            if !existing.iter().any(known) && !missing.iter().any(known) {
                missing.push(label.to_string());
            }
        }
        if missing.is_empty() {
            return Ok(missing);
        }
        let call = Call {
            action: format!("add the labels {} to pull request #{number}", quoted_list(&missing)),
            permission: "issues: write",
            retry_server_errors: true,
        };
        let path = format!("{}/issues/{number}/labels", self.repo_path());
        let response = self.send(&call, Method::Post, &path, Some(&json!({ "labels": missing }))).await?;
        let _: Vec<Label> = parse(&call, &response)?;
        Ok(missing)
    }

    /// One logical request: waits out rate limits and retries 5xx, then maps a failure to its error.
    async fn send(
        &mut self,
        call: &Call,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, GitHubError> {
        let mut server_errors = 0;
        loop {
            let result = match method {
                Method::Get => self.crab._get(path).await,
                Method::Post => self.crab._post(path, body).await,
                Method::Patch => self.crab._patch(path, body).await,
            };
            let transport = |e: octocrab::Error| GitHubError::Transport {
                action: call.action.clone(),
                api_url: self.config.api_url.clone(),
                message: self.config.token.scrub(&error_chain(&e)),
            };
            let response = result.map_err(transport)?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let text = self.crab.body_to_string(response).await.map_err(transport)?;
            if (200..300).contains(&status) {
                return Ok(Response { status, body: text });
            }
            let message = self.config.token.scrub(&github_message(&text, status));
            if let Some(limit) = rate_limit(status, &headers, &message, Utc::now()) {
                self.wait_for(call, limit).await?;
                continue;
            }
            if status >= 500 && call.retry_server_errors && server_errors < self.config.server_error_retries {
                server_errors += 1;
                let delay = self.config.retry_delay * 2u32.pow(server_errors - 1);
                tracing::warn!(status, %message, "GitHub server error; retrying in {}", seconds(delay));
                self.notes.push(format!(
                    "GitHub answered {status} trying to {}; retried after {}",
                    call.action,
                    seconds(delay)
                ));
                self.config.sleeper.sleep(delay).await;
                continue;
            }
            return Err(self.error(call, path, status, &headers, message, server_errors + 1));
        }
    }

    async fn wait_for(&mut self, call: &Call, limit: RateLimit) -> Result<(), GitHubError> {
        let max_wait = self.config.max_rate_limit_wait;
        if self.waited + limit.wait > max_wait || self.rate_limit_retries >= MAX_RATE_LIMIT_RETRIES {
            return Err(GitHubError::RateLimited {
                action: call.action.clone(),
                kind: limit.kind,
                resets_at: limit.resets_at,
                wait: limit.wait,
                max_wait,
            });
        }
        self.rate_limit_retries += 1;
        self.waited += limit.wait;
        let note = format!(
            "GitHub's {} rate limit held the attempt to {}; waited {} for it to reset",
            limit.kind,
            call.action,
            seconds(limit.wait)
        );
        tracing::warn!("{note}");
        self.notes.push(note);
        self.config.sleeper.sleep(limit.wait).await;
        Ok(())
    }

    fn error(
        &self,
        call: &Call,
        path: &str,
        status: u16,
        headers: &HeaderMap,
        message: String,
        attempts: u32,
    ) -> GitHubError {
        let action = call.action.clone();
        match status {
            401 => GitHubError::Unauthorized { action, message },
            403 => {
                let accepted = headers
                    .get("x-accepted-github-permissions")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| format!(" (GitHub accepts: {v})"))
                    .unwrap_or_default();
                let mut fix = format!(
                    "the token lacks the `{}` permission{accepted}. In a workflow, add it under `permissions:`; \
                     for a fine-grained token, grant it on {}",
                    call.permission,
                    self.config.slug()
                );
                if message.contains("not permitted to create or approve pull requests") {
                    fix.push_str(
                        "; and enable \"Allow GitHub Actions to create and approve pull requests\" in the \
                         repository's (or organization's) Settings → Actions → General",
                    );
                }
                GitHubError::Forbidden { action, message, permission: call.permission, fix }
            }
            404 => GitHubError::NotFound {
                action,
                path: path.split('?').next().unwrap_or(path).to_string(),
                repository: self.config.slug(),
                message,
            },
            422 => GitHubError::Validation { action, message: validation_message(&message) },
            500..=599 => GitHubError::Server { action, status, attempts, message },
            _ => GitHubError::Unexpected { action, status, message },
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Get,
    Post,
    Patch,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct RateLimit {
    kind: RateLimitKind,
    wait: Duration,
    resets_at: DateTime<Utc>,
}

/// Whether a response is a rate limit, and how long to wait: `retry-after`
/// first, then `x-ratelimit-reset` once `x-ratelimit-remaining` is 0 (measured
/// against the response's `Date`, so our clock's skew does not matter), then
/// GitHub's "wait at least a minute" for a secondary limit that says no more.
fn rate_limit(status: u16, headers: &HeaderMap, message: &str, now: DateTime<Utc>) -> Option<RateLimit> {
    if status != 403 && status != 429 {
        return None;
    }
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(secs) = header(RETRY_AFTER.as_str()).and_then(|v| v.parse::<u64>().ok()) {
        let wait = Duration::from_secs(secs);
        return Some(RateLimit { kind: RateLimitKind::Secondary, wait, resets_at: now + wait });
    }
    if header("x-ratelimit-remaining") == Some("0")
        && let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<i64>().ok())
        && let Some(resets_at) = Utc.timestamp_opt(reset, 0).single()
    {
        let server_now = header("date")
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or(now);
        let wait = (resets_at - server_now).to_std().unwrap_or(Duration::ZERO);
        return Some(RateLimit { kind: RateLimitKind::Primary, wait, resets_at });
    }
    if status == 429 || message.to_ascii_lowercase().contains("secondary rate limit") {
        let wait = SECONDARY_RATE_LIMIT_WAIT;
        return Some(RateLimit { kind: RateLimitKind::Secondary, wait, resets_at: now + wait });
    }
    None
}

fn parse<T: serde::de::DeserializeOwned>(call: &Call, response: &Response) -> Result<T, GitHubError> {
    serde_json::from_str(&response.body).map_err(|e| GitHubError::Unexpected {
        action: call.action.clone(),
        status: response.status,
        message: format!("the response is not the JSON GitHub documents ({e})"),
    })
}

/// GitHub's error text: `message` and each of `errors` (a validation error's details).
fn github_message(body: &str, status: u16) -> String {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        let text = body.trim();
        return if text.is_empty() { format!("HTTP {status} with an empty body") } else { truncate(text) };
    };
    let mut parts: Vec<String> = Vec::new();
    if let Some(message) = value.get("message").and_then(Value::as_str) {
        parts.push(message.to_string());
    }
    for error in value.get("errors").and_then(Value::as_array).into_iter().flatten() {
        let detail = match error {
            Value::String(s) => s.clone(),
            _ => match error.get("message").and_then(Value::as_str) {
                Some(m) => m.to_string(),
                None => {
                    let field = |k| error.get(k).and_then(Value::as_str).unwrap_or("?");
                    format!("{} `{}` is {}", field("resource"), field("field"), field("code"))
                }
            },
        };
        parts.push(detail);
    }
    if parts.is_empty() { truncate(body.trim()) } else { truncate(&parts.join("; ")) }
}

/// The 422s a publish can meet, told in words with the fix.
fn validation_message(message: &str) -> String {
    let fix = if message.contains("No commits between") {
        "the bot branch has no commits that the base lacks, so there is nothing to propose: push the run's commit to \
         the branch first (or there was nothing to change this run)"
    } else if message.contains("A pull request already exists") {
        "a pull request from this branch already exists but was not found among the open ones: check that it is open \
         and that the token can read it"
    } else if message.contains("`head` is invalid") || message.contains("head` is invalid") {
        "the bot branch does not exist on GitHub: push it before opening the pull request"
    } else if message.contains("`base` is invalid") {
        "the base branch does not exist on GitHub: check the configured base branch"
    } else if message.contains("too long") {
        "the pull request body is longer than GitHub's 65,536 characters: shorten the report"
    } else {
        return message.to_string();
    };
    format!("{message} — {fix}")
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(MAX_MESSAGE_CHARS).collect::<String>())
    }
}

/// An error with its causes, which octocrab keeps in the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Line endings as GitHub's web editor may leave them, and trailing space, do not make a body different.
fn normalize(body: &str) -> String {
    body.replace("\r\n", "\n").trim_end().to_string()
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn quoted_list(items: &[String]) -> String {
    items.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn minutes(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 120 { format!("{secs} s") } else { format!("{} min", secs.div_ceil(60)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn primary_limit_waits_until_the_reset_by_the_servers_clock() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        // Our clock is 30 s behind the server's: the wait is measured on its.
        let date = "Tue, 14 Nov 2023 22:13:50 GMT"; // 1_700_000_030
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1700000090"), ("date", date)]);
        let limit = rate_limit(403, &h, "API rate limit exceeded", now).unwrap();
        assert_eq!(limit.kind, RateLimitKind::Primary);
        assert_eq!(limit.wait, Duration::from_secs(60));
        assert_eq!(limit.resets_at.timestamp(), 1_700_000_090);
    }

    #[test]
    fn retry_after_wins_and_a_plain_403_is_not_a_limit() {
        let now = Utc::now();
        let h = headers(&[("retry-after", "7"), ("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1")]);
        let limit = rate_limit(429, &h, "", now).unwrap();
        assert_eq!((limit.kind, limit.wait), (RateLimitKind::Secondary, Duration::from_secs(7)));
        let silent = rate_limit(403, &HeaderMap::new(), "You have exceeded a secondary rate limit", now).unwrap();
        assert_eq!(silent.wait, SECONDARY_RATE_LIMIT_WAIT);
        let h = headers(&[("x-ratelimit-remaining", "4999")]);
        assert_eq!(rate_limit(403, &h, "Resource not accessible by integration", now), None);
        assert_eq!(rate_limit(500, &headers(&[("retry-after", "1")]), "", now), None);
    }

    #[test]
    fn repositories_parse_strictly() {
        assert_eq!(parse_repository("octo-org/support.bot").unwrap(), ("octo-org".into(), "support.bot".into()));
        for bad in ["octo-org", "/x", "x/", "a/b/c", "a b/c", "../x"] {
            let err = parse_repository(bad).unwrap_err().to_string();
            assert!(err.contains("owner/name"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_marker_is_appended_once() {
        let spec = PullRequestSpec {
            head: "promptloop/x".into(),
            base: "main".into(),
            title: "t".into(),
            body: "Hello".into(),
            labels: vec![],
            marker: marker("x"),
        };
        assert_eq!(spec.body_with_marker(), "Hello\n\n<!-- promptloop:pipeline=x -->\n");
        let again = PullRequestSpec { body: spec.body_with_marker(), ..spec };
        assert_eq!(again.body_with_marker(), again.body);
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("ghp_abc123");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(secret.scrub("token ghp_abc123 rejected"), "token *** rejected");
    }

    #[test]
    fn validation_details_are_kept() {
        let body = r#"{"message":"Validation Failed","errors":[{"resource":"PullRequest","code":"custom","message":"No commits between main and promptloop/x"}],"documentation_url":"https://docs.github.com"}"#;
        let message = validation_message(&github_message(body, 422));
        assert!(message.starts_with("Validation Failed; No commits between main and promptloop/x — "), "{message}");
        let body =
            r#"{"message":"Validation Failed","errors":[{"resource":"PullRequest","field":"head","code":"invalid"}]}"#;
        assert!(validation_message(&github_message(body, 422)).contains("push it before"));
    }
}
