//! The pull request on GitHub: opened once, found again by its marker and
//! updated in place, labelled once, and every refusal (bad token, missing
//! permission, rate limits, validation, outages) told with its fix — against a
//! stub that checks each request against GitHub's REST description.

#[path = "common/closing_port.rs"]
mod closing_port;
#[path = "common/github_stub.rs"]
mod github_stub;
#[path = "common/waits.rs"]
mod waits;

use std::time::Duration;

use closing_port::ClosingPort;
use github_stub::{Fault, GitHubStub};
use promptloop::publish::Secret;
use promptloop::publish::github::{
    GitHubConfig, GitHubError, PullRequestAction, PullRequestSpec, marker, offline_text, open_or_update,
    parse_repository,
};
use waits::Waits;

const OWNER: &str = "octo-org";
const REPO: &str = "support-bot";
const TOKEN: &str = "ghp_FAKEtoken0000publishGitHubTest42";
const BRANCH: &str = "promptloop/support-triage";

/// The stub's config, its waits (rate limits, retries) recorded in `waits` instead of waited.
fn recorded(stub: &GitHubStub, waits: &Waits) -> GitHubConfig {
    GitHubConfig {
        api_url: stub.base_url(),
        sleeper: waits.sleeper(),
        ..GitHubConfig::new(OWNER, REPO, Secret::new(TOKEN))
    }
}

/// The stub's config, none of its waits waited for.
fn config(stub: &GitHubStub) -> GitHubConfig {
    recorded(stub, &Waits::new())
}

/// The moment a faked rate limit is answered at (its `Date` header), and that header.
const SERVER_NOW: i64 = 1_700_000_030;
const SERVER_DATE: &str = "Tue, 14 Nov 2023 22:13:50 GMT";

fn spec(title: &str, body: &str) -> PullRequestSpec {
    PullRequestSpec {
        head: BRANCH.into(),
        base: "main".into(),
        title: title.into(),
        body: body.into(),
        labels: vec!["promptloop".into(), "prompts".into()],
        marker: marker("support-triage"),
    }
}

fn first_spec() -> PullRequestSpec {
    spec("support-triage: +0.194 on test", "## support-triage\n\nThe candidate beats production.\n")
}

fn assert_conforms(stub: &GitHubStub) {
    let violations = stub.violations();
    assert!(violations.is_empty(), "requests or responses outside GitHub's description:\n{}", violations.join("\n"));
}

/// The error's text and its Debug print, checked to hold neither the token nor any of it.
fn assert_no_token(error: &GitHubError) -> String {
    let text = error.to_string();
    for shown in [&text, &format!("{error:?}")] {
        assert!(!shown.contains(TOKEN) && !shown.contains("FAKEtoken"), "the token leaked: {shown}");
    }
    text
}

#[tokio::test]
async fn opens_the_pull_request_when_there_is_none() {
    let stub = GitHubStub::start().await;
    let outcome = open_or_update(&config(&stub), &first_spec()).await.unwrap();

    assert_eq!(outcome.action, PullRequestAction::Created);
    assert_eq!(outcome.number, 1);
    assert_eq!(outcome.url, format!("https://github.com/{OWNER}/{REPO}/pull/1"));
    assert_eq!(outcome.labels_added, ["promptloop", "prompts"]);
    let pulls = stub.pulls();
    assert_eq!(pulls.len(), 1);
    let pull = &pulls[0];
    assert_eq!((pull.head.as_str(), pull.base.as_str()), (BRANCH, "main"));
    assert_eq!(pull.title, "support-triage: +0.194 on test");
    assert!(pull.body.as_deref().unwrap().contains("<!-- promptloop:pipeline=support-triage -->"));
    assert_eq!(pull.labels, ["promptloop", "prompts"]);

    let requests = stub.requests();
    let calls: Vec<_> = requests.iter().map(|r| r.operation.clone().unwrap_or_default()).collect();
    assert_eq!(calls, ["pulls/list", "pulls/create", "issues/add-labels"]);
    let list = &requests[0];
    assert!(list.query.contains(&("head".into(), format!("{OWNER}:{BRANCH}"))), "{:?}", list.query);
    assert!(list.query.contains(&("state".into(), "open".into())));
    for request in &requests {
        assert_eq!(request.auth_scheme.as_deref(), Some("Bearer"));
        assert_eq!(request.token.as_deref(), Some(TOKEN));
        assert_eq!(request.header("accept"), Some("application/vnd.github+json"));
        assert_eq!(request.header("x-github-api-version"), Some("2022-11-28"));
        assert!(request.header("user-agent").is_some());
    }
    assert_conforms(&stub);
}

#[tokio::test]
async fn a_second_run_updates_the_same_pull_request() {
    let stub = GitHubStub::start().await;
    let config = config(&stub);
    open_or_update(&config, &first_spec()).await.unwrap();

    let next_week = spec("support-triage: +0.210 on test", "## support-triage\n\nNext week's numbers.\n");
    let outcome = open_or_update(&config, &next_week).await.unwrap();

    assert_eq!(outcome.action, PullRequestAction::Updated);
    assert_eq!(outcome.number, 1);
    assert!(outcome.labels_added.is_empty(), "labels are added once: {:?}", outcome.labels_added);
    let pulls = stub.pulls();
    assert_eq!(pulls.len(), 1, "no second pull request: {pulls:?}");
    assert_eq!(pulls[0].title, "support-triage: +0.210 on test");
    assert!(pulls[0].body.as_deref().unwrap().starts_with("## support-triage\n\nNext week's numbers."));
    assert_eq!(stub.requests_to("POST", "/pulls").len(), 1);
    let patches = stub.requests_to("PATCH", "/pulls/1");
    assert_eq!(patches.len(), 1);
    let patch = patches[0].body.as_ref().unwrap();
    assert_eq!(patch["title"], "support-triage: +0.210 on test");
    assert!(patch.get("base").is_none(), "only what changed is sent: {patch}");
    assert_conforms(&stub);
}

#[tokio::test]
async fn an_unchanged_pull_request_is_not_patched_and_labels_are_added_once() {
    let stub = GitHubStub::start().await;
    let config = config(&stub);
    let first = open_or_update(&config, &first_spec()).await.unwrap();
    let again = open_or_update(&config, &first_spec()).await.unwrap();

    assert_eq!(again.action, PullRequestAction::Unchanged);
    assert_eq!((again.number, again.url.as_str()), (first.number, first.url.as_str()));
    assert!(stub.requests_to("PATCH", "/pulls/1").is_empty());
    assert_eq!(stub.requests_to("POST", "/labels").len(), 1);
    assert!(again.labels_added.is_empty());

    // A label added since (by anyone, in any case) is neither repeated nor removed.
    let mut more = first_spec();
    more.labels = vec!["PROMPTLOOP".into(), "needs-review".into()];
    let third = open_or_update(&config, &more).await.unwrap();
    assert_eq!(third.labels_added, ["needs-review"]);
    assert_eq!(stub.pulls()[0].labels, ["promptloop", "prompts", "needs-review"]);
    assert_conforms(&stub);
}

#[tokio::test]
async fn of_several_marked_pull_requests_the_oldest_is_kept() {
    let stub = GitHubStub::start().await;
    let body = format!("old report\n\n{}\n", marker("support-triage"));
    let unrelated = stub.add_pull(OWNER, REPO, "feature/x", "main", "a person's PR", "hello");
    let oldest = stub.add_pull(OWNER, REPO, BRANCH, "main", "old", &body);
    let newer = stub.add_pull(OWNER, REPO, BRANCH, "release", "old too", &body);

    let outcome = open_or_update(&config(&stub), &first_spec()).await.unwrap();

    assert_eq!(outcome.number, oldest);
    assert_eq!(outcome.action, PullRequestAction::Updated);
    assert_eq!(outcome.duplicates, [newer]);
    assert!(
        outcome.notes.iter().any(|n| n.contains(&format!("#{newer}")) && n.contains("kept the oldest")),
        "{:?}",
        outcome.notes
    );
    assert!(stub.requests_to("POST", "/pulls").is_empty(), "never a new PR while one is open");
    let pulls = stub.pulls();
    assert_eq!(pulls.len(), 3);
    assert_eq!(pulls.iter().map(|p| p.updates).collect::<Vec<_>>(), [0, 1, 0], "only #{oldest} is touched");
    assert!(pulls.iter().all(|p| p.number != unrelated || p.title == "a person's PR"));
    assert_conforms(&stub);
}

#[tokio::test]
async fn an_open_pull_request_without_the_marker_is_taken_over() {
    let stub = GitHubStub::start().await;
    let number = stub.add_pull(OWNER, REPO, BRANCH, "main", "opened by hand", "no marker here");
    let outcome = open_or_update(&config(&stub), &first_spec()).await.unwrap();
    assert_eq!((outcome.number, outcome.action), (number, PullRequestAction::Updated));
    assert!(stub.pulls()[0].body.as_deref().unwrap().contains(&marker("support-triage")));
    assert!(outcome.notes.iter().any(|n| n.contains("did not carry the marker")));
    assert_conforms(&stub);
}

#[tokio::test]
async fn a_github_enterprise_url_with_a_path_prefix_works() {
    let stub = GitHubStub::start_with_prefix("/api/v3").await;
    assert!(stub.base_url().ends_with("/api/v3"));
    let config = GitHubConfig { api_url: format!("{}/", stub.base_url()), ..config(&stub) };
    let outcome = open_or_update(&config, &first_spec()).await.unwrap();
    assert_eq!(outcome.action, PullRequestAction::Created);
    let requests = stub.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.path.starts_with("/api/v3/repos/octo-org/support-bot/")), "{requests:?}");
    assert_conforms(&stub);
}

#[tokio::test]
async fn a_bad_token_says_so_without_showing_it() {
    let stub = GitHubStub::start().await;
    stub.require_token("ghp_theRightOne");
    let config = config(&stub);
    assert!(!format!("{config:?}").contains(TOKEN), "Debug of the config shows the token");

    let error = open_or_update(&config, &first_spec()).await.unwrap_err();
    let text = assert_no_token(&error);
    assert!(matches!(error, GitHubError::Unauthorized { .. }), "{error:?}");
    assert!(text.contains("401") && text.contains("Bad credentials"), "{text}");
    assert!(text.contains("invalid, expired or revoked") && text.contains("valid token"), "{text}");
    assert!(stub.pulls().is_empty());
    assert_conforms(&stub);
}

#[tokio::test]
async fn a_token_that_cannot_write_pull_requests_names_the_permission() {
    let stub = GitHubStub::start().await;
    stub.forbid("POST", &format!("/repos/{OWNER}/{REPO}/pulls"));
    let error = open_or_update(&config(&stub), &first_spec()).await.unwrap_err();
    let text = assert_no_token(&error);
    assert!(matches!(error, GitHubError::Forbidden { permission: "pull-requests: write", .. }), "{error:?}");
    assert!(text.contains("403") && text.contains("Resource not accessible"), "{text}");
    assert!(text.contains("`pull-requests: write`") && text.contains("permissions:"), "{text}");
    assert!(text.contains("GitHub accepts: pull_requests=write"), "{text}");
    assert!(text.contains("create the pull request"), "{text}");
    assert_conforms(&stub);
}

#[tokio::test]
async fn actions_not_allowed_to_open_pull_requests_points_to_the_setting() {
    let stub = GitHubStub::start().await;
    let message = "GitHub Actions is not permitted to create or approve pull requests.";
    stub.push_fault(
        Fault::new(403, serde_json::json!({ "message": message, "documentation_url": "https://docs.github.com/rest" }))
            .on("POST", "/pulls"),
    );
    let text = assert_no_token(&open_or_update(&config(&stub), &first_spec()).await.unwrap_err());
    assert!(text.contains("Allow GitHub Actions to create and approve pull requests"), "{text}");
    assert_conforms(&stub);
}

#[tokio::test]
async fn labels_refused_after_the_pull_request_opened_is_a_partial_publish() {
    let stub = GitHubStub::start().await;
    stub.forbid("POST", &format!("/repos/{OWNER}/{REPO}/issues/"));
    let error = open_or_update(&config(&stub), &first_spec()).await.unwrap_err();
    let text = assert_no_token(&error);
    let GitHubError::Partial { outcome, source } = &error else { panic!("not partial: {error:?}") };
    assert_eq!((outcome.number, outcome.action), (1, PullRequestAction::Created));
    assert!(outcome.labels_added.is_empty());
    assert!(matches!(**source, GitHubError::Forbidden { permission: "issues: write", .. }), "{source:?}");
    assert!(
        text.starts_with("pull request #1 was created (https://github.com/octo-org/support-bot/pull/1), but "),
        "{text}"
    );
    assert!(text.contains("`issues: write`") && text.contains("`promptloop`, `prompts`"), "{text}");
    assert_eq!(stub.pulls().len(), 1);
    assert_conforms(&stub);
}

#[tokio::test]
async fn a_primary_rate_limit_is_waited_out_until_the_reset() {
    let stub = GitHubStub::start().await;
    // The limit resets 30 s after the moment GitHub answered (its clock, not ours).
    let limit = Fault::primary_rate_limit(SERVER_NOW + 30).header("date", SERVER_DATE);
    stub.push_fault(limit.on("GET", "/pulls"));
    let waits = Waits::new();
    let outcome = open_or_update(&recorded(&stub, &waits), &first_spec()).await.unwrap();

    assert_eq!(outcome.action, PullRequestAction::Created);
    assert_eq!(waits.recorded(), [Duration::from_secs(30)]);
    assert_eq!(outcome.rate_limit_wait, Duration::from_secs(30));
    assert!(
        outcome.notes.iter().any(|n| n.contains("primary rate limit") && n.contains("30.0 s")),
        "{:?}",
        outcome.notes
    );
    assert_eq!(stub.requests_to("GET", "/pulls").len(), 2, "retried after the reset");
    assert_eq!(stub.pulls().len(), 1);
    assert_conforms(&stub);
}

#[tokio::test]
async fn a_rate_limit_resetting_too_late_says_when() {
    let stub = GitHubStub::start().await;
    let reset = SERVER_NOW + 3600;
    stub.push_fault(Fault::primary_rate_limit(reset).header("date", SERVER_DATE));
    let waits = Waits::new();
    let error = open_or_update(&recorded(&stub, &waits), &first_spec()).await.unwrap_err();
    assert_eq!(waits.recorded(), Vec::<Duration>::new(), "it did not wait for an hour-away reset");

    let text = assert_no_token(&error);
    assert!(matches!(error, GitHubError::RateLimited { .. }), "{error:?}");
    assert!(text.contains("resets at 2023-11-14 23:13:50 UTC"), "{text}");
    assert!(text.contains("in 60 min") && text.contains("15 min") && text.contains("Rerun after the reset"), "{text}");
    assert_eq!(stub.requests().len(), 1);
    assert_conforms(&stub);
}

#[tokio::test]
async fn a_secondary_rate_limit_is_retried_after_retry_after() {
    let stub = GitHubStub::start().await;
    stub.push_fault(Fault::secondary_rate_limit(0).on("GET", "/pulls"));
    stub.push_fault(Fault::secondary_rate_limit(90).on("POST", "/pulls"));
    let waits = Waits::new();
    let outcome = open_or_update(&recorded(&stub, &waits), &first_spec()).await.unwrap();
    assert_eq!(outcome.action, PullRequestAction::Created);
    assert_eq!(waits.recorded(), [Duration::ZERO, Duration::from_secs(90)]);
    assert_eq!(outcome.rate_limit_wait, Duration::from_secs(90));
    assert_eq!(outcome.notes.iter().filter(|n| n.contains("secondary rate limit")).count(), 2);
    assert_eq!(stub.requests_to("POST", "/pulls").len(), 2);
    assert_eq!(stub.pulls().len(), 1);
    assert_conforms(&stub);
}

#[tokio::test]
async fn no_commits_between_the_branches_is_a_clear_error() {
    let stub = GitHubStub::start().await;
    stub.no_commits_on(BRANCH);
    let error = open_or_update(&config(&stub), &first_spec()).await.unwrap_err();
    let text = assert_no_token(&error);
    assert!(matches!(error, GitHubError::Validation { .. }), "{error:?}");
    assert!(text.contains("No commits between main and promptloop/support-triage"), "{text}");
    assert!(text.contains("nothing to propose") && text.contains("push the run's commit"), "{text}");
    assert!(stub.pulls().is_empty());
    assert_conforms(&stub);
}

#[tokio::test]
async fn a_server_echoing_the_token_has_it_scrubbed() {
    let stub = GitHubStub::start().await;
    stub.push_fault(Fault::validation(&format!("token {TOKEN} may not do this")).on("POST", "/pulls"));
    let text = assert_no_token(&open_or_update(&config(&stub), &first_spec()).await.unwrap_err());
    assert!(text.contains("token *** may not do this"), "{text}");
    assert_conforms(&stub);
}

#[tokio::test]
async fn a_bad_gateway_is_retried() {
    let stub = GitHubStub::start().await;
    stub.push_fault(Fault::server_error(502).on("GET", "/pulls"));
    stub.push_fault(Fault::server_error(503).on("PATCH", "/pulls/1"));
    let waits = Waits::new();
    let outcome = open_or_update(&recorded(&stub, &waits), &first_spec()).await.unwrap();
    assert_eq!(outcome.action, PullRequestAction::Created);
    assert!(outcome.notes.iter().any(|n| n.contains("502")), "{:?}", outcome.notes);
    assert_eq!(stub.requests_to("GET", "/pulls").len(), 2);
    assert_eq!(waits.recorded(), [Duration::from_secs(1)], "a second before the retry");

    let outcome = open_or_update(&config(&stub), &spec("new title", "new body")).await.unwrap();
    assert_eq!(outcome.action, PullRequestAction::Updated);
    assert_eq!(stub.requests_to("PATCH", "/pulls/1").len(), 2);
    assert_conforms(&stub);
}

#[tokio::test]
async fn a_failed_creation_looks_again_before_retrying() {
    let stub = GitHubStub::start().await;
    stub.push_fault(Fault::server_error(502).on("POST", "/pulls"));
    let outcome = open_or_update(&config(&stub), &first_spec()).await.unwrap();
    assert_eq!(outcome.action, PullRequestAction::Created);
    let calls: Vec<_> = stub.requests().into_iter().map(|r| r.operation.unwrap_or_default()).collect();
    assert_eq!(calls, ["pulls/list", "pulls/create", "pulls/list", "pulls/create", "issues/add-labels"]);
    assert_eq!(stub.pulls().len(), 1);
    assert_conforms(&stub);
}

#[tokio::test]
async fn a_creation_that_went_through_despite_a_502_is_not_repeated() {
    let stub = GitHubStub::start().await;
    stub.push_fault(Fault::server_error(502).on("POST", "/pulls").after_effect());
    let outcome = open_or_update(&config(&stub), &first_spec()).await.unwrap();
    assert_eq!((outcome.number, outcome.action), (1, PullRequestAction::Created));
    let calls: Vec<_> = stub.requests().into_iter().map(|r| r.operation.unwrap_or_default()).collect();
    assert_eq!(calls, ["pulls/list", "pulls/create", "pulls/list", "issues/add-labels"]);
    assert_eq!(stub.pulls().len(), 1);
    assert_conforms(&stub);
}

#[tokio::test]
async fn an_outage_gives_up_after_a_couple_of_retries() {
    let stub = GitHubStub::start().await;
    for _ in 0..3 {
        stub.push_fault(Fault::server_error(500));
    }
    let waits = Waits::new();
    let error = open_or_update(&recorded(&stub, &waits), &first_spec()).await.unwrap_err();
    // One second, then two: the delay doubles.
    assert_eq!(waits.recorded(), [Duration::from_secs(1), Duration::from_secs(2)]);
    let text = assert_no_token(&error);
    assert!(matches!(error, GitHubError::Server { status: 500, attempts: 3, .. }), "{error:?}");
    assert!(text.contains("rerun later"), "{text}");
    assert_eq!(stub.requests().len(), 3);
    assert_conforms(&stub);
}

#[tokio::test]
async fn an_unreachable_server_is_a_transport_error() {
    let down = ClosingPort::start();
    let url = format!("http://{}", down.addr());
    let config = GitHubConfig {
        api_url: url.clone(),
        sleeper: Waits::new().sleeper(),
        ..GitHubConfig::new(OWNER, REPO, Secret::new(TOKEN))
    };
    let error = open_or_update(&config, &first_spec()).await.unwrap_err();
    let text = assert_no_token(&error);
    assert!(matches!(error, GitHubError::Transport { .. }), "{error:?}");
    assert!(text.contains(&url), "{text}");
}

#[tokio::test]
async fn unusable_settings_fail_before_anything_is_sent() {
    let stub = GitHubStub::start().await;
    let with_newline = GitHubConfig { token: Secret::new(format!("{TOKEN}\nX")), ..config(&stub) };
    let text = assert_no_token(&open_or_update(&with_newline, &first_spec()).await.unwrap_err());
    assert!(text.contains("line break"), "{text}");
    let empty = GitHubConfig { token: Secret::new(""), ..config(&stub) };
    assert!(open_or_update(&empty, &first_spec()).await.unwrap_err().to_string().contains("token is empty"));
    let bad_url = GitHubConfig { api_url: "ghe.example.com/api/v3".into(), ..config(&stub) };
    assert!(open_or_update(&bad_url, &first_spec()).await.unwrap_err().to_string().contains("https://<host>/api/v3"));
    assert!(stub.requests().is_empty());
    assert_eq!(parse_repository("octo-org/support-bot").unwrap(), (OWNER.to_string(), REPO.to_string()));
}

#[test]
fn without_a_token_the_pull_request_is_written_out_whole() {
    let text = offline_text(&first_spec());
    assert!(text.contains("# support-triage: +0.194 on test"), "{text}");
    assert!(text.contains("`promptloop/support-triage` → `main` · labels: promptloop, prompts"), "{text}");
    assert!(text.contains("The candidate beats production.") && text.contains(&marker("support-triage")));
}

#[tokio::test]
async fn the_stub_flags_what_github_would_not_accept() {
    let stub = GitHubStub::start().await;
    let base = stub.base_url();
    let http = reqwest::Client::new();
    // No token, no GitHub headers, a query parameter pulls/list does not declare, a state it does not know.
    http.get(format!("{base}/repos/{OWNER}/{REPO}/pulls?state=opened&bogus=1")).send().await.unwrap();
    // A body that does not fit pulls/create's schema.
    let request = http
        .post(format!("{base}/repos/{OWNER}/{REPO}/pulls"))
        .header("authorization", "Bearer x")
        .header("user-agent", "test")
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .json(&serde_json::json!({ "title": 5, "head": BRANCH, "base": "main" }));
    request.send().await.unwrap();
    // An operation GitHub does not have, and one the stub does not serve.
    http.get(format!("{base}/repos/{OWNER}/{REPO}/pull-requests")).send().await.unwrap();
    http.get(format!("{base}/user")).send().await.unwrap();

    let violations = stub.violations().join("\n");
    for expected in [
        "no `Authorization: Bearer <token>` header",
        "no User-Agent header",
        "not application/vnd.github+json",
        "X-GitHub-Api-Version is None",
        "query parameter `bogus` is not one pulls/list declares",
        "query parameter `state=opened` does not fit its schema",
        "request body at `/title`",
        "GET /repos/octo-org/support-bot/pull-requests: no such operation in GitHub's REST API",
        "GET /user: a GitHub operation the stub does not serve",
    ] {
        assert!(violations.contains(expected), "missing `{expected}` in:\n{violations}");
    }
}

#[tokio::test]
async fn a_token_that_cannot_read_pull_requests_names_that_permission() {
    let stub = GitHubStub::start().await;
    stub.forbid("GET", &format!("/repos/{OWNER}/{REPO}/pulls"));
    let error = open_or_update(&config(&stub), &first_spec()).await.unwrap_err();
    let text = assert_no_token(&error);
    assert!(text.contains("list the open pull requests") && text.contains("`pull-requests: read`"), "{text}");
    assert_eq!(stub.requests().len(), 1);
    assert_conforms(&stub);
}
