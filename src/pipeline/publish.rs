//! The weekly run's publishing: the saved run becomes a commit on the bot
//! branch, a pushed branch, an opened or updated pull request, a Slack
//! message and the Actions summary — each step only when the one it depends
//! on worked, each outcome said plainly, and files instead of network calls
//! when there is no token or the run is a dry run.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::run::{SavedRun, load_run, run_dir};
use crate::config::PipelineConfig;
use crate::eval::gate::Decision;
use crate::program::artifact::write_atomically;
use crate::publish::Secret;
use crate::publish::actions::{Actions, Level};
use crate::publish::git::{self, BotIdentity, Remote, RunCommit};
use crate::publish::github::{self, GitHubConfig, PullRequestSpec};
use crate::publish::slack::{self, Links, SlackTarget};
use crate::report::markdown;

/// What publishing needs from the environment, read once by the CLI.
#[derive(Debug, Clone, Default)]
pub struct PublishContext {
    pub github_token: Option<Secret>,
    /// `owner/name`, e.g. from GITHUB_REPOSITORY.
    pub repository: Option<String>,
    /// GitHub's REST API root (GITHUB_API_URL on Enterprise).
    pub api_url: Option<String>,
    pub slack_token: Option<Secret>,
    pub slack_webhook: Option<Secret>,
    /// Inside GitHub Actions: the summary, outputs and annotations.
    pub actions: Option<Actions>,
}

impl PublishContext {
    /// Everything from the process environment, by the names the pipeline's
    /// `[publish]` gives.
    pub fn from_env(config: &PipelineConfig) -> PublishContext {
        let actions = Actions::from_env();
        let context = PublishContext {
            github_token: Secret::from_env(&config.publish.token_env),
            repository: config
                .publish
                .repository
                .clone()
                .or_else(|| actions.as_ref().and_then(|a| a.repository()).map(|(o, r)| format!("{o}/{r}"))),
            api_url: config.publish.api_url.clone().or_else(|| actions.as_ref().map(|a| a.api_url().to_string())),
            slack_token: Secret::from_env(&config.publish.slack.token_env),
            slack_webhook: Secret::from_env(&config.publish.slack.webhook_env),
            actions,
        };
        if let Some(actions) = &context.actions {
            // They come from `secrets.*`, which the runner masks already.
            for secret in [&context.github_token, &context.slack_token, &context.slack_webhook].into_iter().flatten() {
                actions.guard(secret.expose());
            }
        }
        context
    }
}

pub struct PublishRequest {
    pub pipeline: PathBuf,
    /// Publish nothing: no commit, no push, no GitHub or Slack call.
    pub dry_run: bool,
    pub context: PublishContext,
}

/// How one publishing step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Done(String),
    Skipped(String),
    Failed(String),
}

impl Step {
    pub fn failed(&self) -> bool {
        matches!(self, Step::Failed(_))
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Done(text) => write!(f, "done: {text}"),
            Step::Skipped(text) => write!(f, "skipped: {text}"),
            Step::Failed(text) => write!(f, "FAILED: {text}"),
        }
    }
}

#[derive(Debug)]
pub struct PublishOutcome {
    pub branch: String,
    pub commit: Step,
    pub push: Step,
    pub pull_request: Step,
    pub pr_url: Option<String>,
    pub slack: Step,
    /// Files written instead of (or besides) sending: the PR body, the Slack message.
    pub written: Vec<PathBuf>,
    /// The Slack message as text, when it was not sent (for the terminal).
    pub slack_text: Option<String>,
}

impl PublishOutcome {
    /// The run failed to publish what it should have: the exit code is non-zero.
    /// A Slack failure after the PR is open is reported but is not a failure.
    pub fn failed(&self) -> bool {
        self.commit.failed() || self.push.failed() || self.pull_request.failed()
    }
}

pub fn branch_name(pipeline: &str) -> String {
    format!("promptloop/{pipeline}")
}

/// The PR title: pipeline, decision and delta; it changes when the result does.
pub fn title(run: &SavedRun) -> String {
    let h = &run.report.headline;
    if h.no_candidate {
        return format!(
            "promptloop: {} — hold, no better program found, production stays at {:.3}",
            h.pipeline, h.baseline
        );
    }
    let verb = match h.decision {
        Decision::Promote => "new prompts beat production",
        Decision::Hold => "hold, production stays",
    };
    format!("promptloop: {} — {verb}, test {:+.3} [{:+.3}, {:+.3}]", h.pipeline, h.delta, h.low, h.high)
}

pub async fn publish(request: &PublishRequest) -> Result<PublishOutcome> {
    let config = PipelineConfig::load(&request.pipeline)?;
    let run = load_run(&config)?;
    let context = &request.context;
    let dir = run_dir(&config);
    let branch = branch_name(&config.name);
    let report_path = format!("artifacts/{}/REPORT.md", config.name);
    let marker = github::marker(&config.name);
    let spec = PullRequestSpec {
        head: branch.clone(),
        base: run.base.clone(),
        title: title(&run),
        body: markdown::pr_body(&run.report, &marker, &report_path, markdown::GITHUB_BODY_LIMIT),
        labels: config.publish.labels.clone(),
        marker,
    };
    // Always on disk, so a dry run or a run without a token leaves the PR to read.
    let body_path = dir.join("pr-body.md");
    write_atomically(&body_path, github::offline_text(&spec).as_bytes())?;
    let mut outcome = PublishOutcome {
        branch: branch.clone(),
        commit: Step::Skipped("dry run".into()),
        push: Step::Skipped("dry run".into()),
        pull_request: Step::Skipped(format!("dry run; the body is in {}", body_path.display())),
        pr_url: None,
        slack: Step::Skipped("dry run".into()),
        written: vec![body_path.clone()],
        slack_text: None,
    };

    if !request.dry_run {
        publish_git_and_github(&config, &run, context, &spec, &mut outcome).await;
    }

    // Slack says what happened, including a publish that went wrong.
    let note = [&outcome.commit, &outcome.push, &outcome.pull_request].iter().find_map(|step| match step {
        Step::Failed(text) => Some(format!("Not published: {text}")),
        _ => None,
    });
    let links = Links { pr_url: outcome.pr_url.clone(), run_url: context.actions.as_ref().and_then(|a| a.run_url()) };
    let message = slack::message(&run.report.headline, &run.report.cost, &links, note.as_deref());
    let target = match (&context.slack_token, &config.publish.slack.channel, &context.slack_webhook) {
        (Some(token), Some(channel), _) => Some(SlackTarget::Bot {
            token: token.clone(),
            channel: channel.clone(),
            api_url: config.publish.slack.api_url.clone(),
        }),
        (_, _, Some(url)) => Some(SlackTarget::webhook(url.clone())),
        _ => None,
    };
    match target {
        Some(target) if !request.dry_run => {
            outcome.slack = match slack::post(&target, &message).await {
                Ok(_) => Step::Done(format!("posted to {}", target.endpoint())),
                Err(e) => Step::Failed(e.to_string()),
            }
        }
        _ => {
            let path = dir.join("slack.json");
            let mut json = serde_json::to_string_pretty(&slack::to_json(&message)).expect("a Slack message serializes");
            json.push('\n');
            write_atomically(&path, json.as_bytes())?;
            outcome.written.push(path.clone());
            outcome.slack_text = Some(slack::to_text(&message));
            if !request.dry_run {
                let why = if context.slack_token.is_some() {
                    format!("{} is set but [publish.slack] has no channel", config.publish.slack.token_env)
                } else {
                    format!(
                        "neither {} nor {} is set",
                        config.publish.slack.token_env, config.publish.slack.webhook_env
                    )
                };
                outcome.slack = Step::Skipped(format!("{why}; the message is in {}", path.display()));
            }
        }
    }

    if let Some(actions) = &context.actions {
        report_to_actions(actions, &run, &spec, &outcome)?;
    }
    Ok(outcome)
}

async fn publish_git_and_github(
    config: &PipelineConfig,
    run: &SavedRun,
    context: &PublishContext,
    spec: &PullRequestSpec,
    outcome: &mut PublishOutcome,
) {
    let branch = spec.head.as_str();
    // Paths in the commit are the repository's, which may hold the project in a subdirectory.
    let prefix = git::repository_path(&config.root).map(|(_, prefix)| prefix).unwrap_or_default();
    let mut files = Vec::new();
    for relative in &run.files {
        let in_repo = if prefix.is_empty() { relative.clone() } else { format!("{prefix}/{relative}") };
        match std::fs::read(config.root.join(relative)) {
            Ok(bytes) => files.push((in_repo, bytes)),
            Err(e) => {
                outcome.commit = Step::Failed(format!("cannot read {relative}, which the run wrote: {e}"));
                outcome.push = Step::Skipped("nothing committed".into());
                outcome.pull_request = Step::Skipped("nothing committed".into());
                return;
            }
        }
    }
    let remote = Remote::new(config.publish.remote.clone(), context.github_token.clone());
    let commit = RunCommit {
        repo: &config.root,
        remote: &remote,
        base: &run.base,
        branch,
        pipeline: &config.name,
        files,
        message: commit_message(run),
        identity: BotIdentity::default(),
    };
    let Some(token) = &context.github_token else {
        // No token: the branch stays local and the PR body is a file.
        outcome.commit = match git::commit_run(&commit) {
            Ok(c) => Step::Done(format!("{} on the local branch {branch}", short(&c.commit))),
            Err(e) => Step::Failed(e.to_string()),
        };
        let why = format!("{} is not set", config.publish.token_env);
        outcome.push = Step::Skipped(format!("{why}; the branch stays local"));
        outcome.pull_request = Step::Skipped(format!("{why}; the body is in {}", outcome.written[0].display()));
        return;
    };

    let committed = match git::fetch(&config.root, &remote, &run.base, branch).and_then(|_| git::commit_run(&commit)) {
        Ok(committed) => committed,
        Err(e) => {
            outcome.commit = Step::Failed(e.to_string());
            outcome.push = Step::Skipped("nothing committed".into());
            outcome.pull_request = Step::Skipped("nothing pushed".into());
            return;
        }
    };
    outcome.commit = Step::Done(format!(
        "{} on {branch}, on top of {} {}",
        short(&committed.commit),
        run.base,
        short(&committed.base)
    ));
    outcome.push = match git::push(&commit, &committed) {
        Ok(pushed) if pushed.up_to_date => Step::Done(format!("{} already had this commit", config.publish.remote)),
        Ok(pushed) => Step::Done(match pushed.replaced {
            Some(old) => format!(
                "{branch} on {} now {}, replacing the earlier run commit {}",
                config.publish.remote,
                short(&pushed.commit),
                short(&old)
            ),
            None => format!("{branch} created on {}", config.publish.remote),
        }),
        Err(e) => {
            outcome.push = Step::Failed(e.to_string());
            outcome.pull_request = Step::Skipped("the branch was not pushed".into());
            return;
        }
    };

    let Some(repository) = &context.repository else {
        outcome.pull_request = Step::Failed(
            "the repository is unknown: set GITHUB_REPOSITORY or [publish] repository = \"owner/name\"".into(),
        );
        return;
    };
    let (owner, repo) = match github::parse_repository(repository) {
        Ok(parts) => parts,
        Err(e) => {
            outcome.pull_request = Step::Failed(e.to_string());
            return;
        }
    };
    let mut github_config = GitHubConfig::new(owner, repo, token.clone());
    if let Some(api_url) = &context.api_url {
        github_config.api_url = api_url.clone();
    }
    outcome.pull_request = match github::open_or_update(&github_config, spec).await {
        Ok(pr) => {
            outcome.pr_url = Some(pr.url.clone());
            let mut text = format!("#{} {} ({})", pr.number, pr.action.as_str(), pr.url);
            for note in &pr.notes {
                text.push_str(&format!("; {note}"));
            }
            Step::Done(text)
        }
        Err(e) => Step::Failed(format!("the branch {branch} is pushed, but {e}")),
    };
}

fn commit_message(run: &SavedRun) -> String {
    let h = &run.report.headline;
    format!(
        "promptloop: {} run {} ({})\n\ntest {} (n = {}): {:.3} → {:.3}, delta {}; decision: {}.\n",
        h.pipeline,
        run.report.date.format("%Y-%m-%d"),
        h.decision.as_str(),
        h.metric,
        h.n,
        h.baseline,
        h.candidate,
        h.delta_text(),
        h.decision_text()
    )
}

fn short(id: &git2::Oid) -> String {
    id.to_string()[..7].to_string()
}

/// The job summary is the PR body; outputs for later steps; an annotation
/// for each step that failed.
fn report_to_actions(
    actions: &Actions,
    run: &SavedRun,
    spec: &PullRequestSpec,
    outcome: &PublishOutcome,
) -> Result<()> {
    let summary = spec.body.replacen(&spec.marker, "", 1);
    // The summary is a convenience: a full disk there must not fail a published run.
    if let Err(e) = actions.summary(summary.trim_start()) {
        tracing::warn!("the job summary was not written: {e:#}");
    }
    let mut outputs = Actions::run_outputs(&run.report.headline, outcome.pr_url.as_deref());
    outputs.push(("published", (!outcome.failed()).to_string()));
    actions.outputs(&outputs).context("cannot write the step outputs")?;
    for (what, step) in [("commit", &outcome.commit), ("push", &outcome.push), ("pull request", &outcome.pull_request)]
    {
        if let Step::Failed(text) = step {
            actions.annotate(Level::Error, Some(&format!("promptloop: {what} failed")), text, None);
        }
    }
    if let Step::Failed(text) = &outcome.slack {
        actions.annotate(Level::Warning, Some("promptloop: Slack message not sent"), text, None);
    }
    Ok(())
}

/// The branch production lives on: `[publish] base`, else the workflow's
/// base or branch, else the repository's current branch, else `main`.
pub fn base_branch(config: &PipelineConfig, context: &PublishContext) -> String {
    if let Some(base) = &config.publish.base {
        return base.clone();
    }
    let from_actions = context.actions.as_ref().and_then(|a| a.base_branch()).map(str::to_string);
    let current = || {
        let repo = git2::Repository::discover(&config.root).ok()?;
        let head = repo.head().ok()?;
        head.is_branch().then(|| head.shorthand().ok().map(str::to_string)).flatten()
    };
    from_actions
        .filter(|b| !b.starts_with("promptloop/"))
        .or_else(|| current().filter(|b| !b.starts_with("promptloop/")))
        .unwrap_or_else(|| "main".to_string())
}
