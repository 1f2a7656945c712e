//! Inside a GitHub Actions job: the job summary, step outputs, annotations and
//! log masks, in the file and workflow-command syntax the runner parses, and
//! what the job's environment says about where the run happens (repository,
//! API, run URL, base branch).
//!
//! [`Actions::from_env`] is `None` outside Actions; the caller then prints
//! instead. Secrets registered with [`Actions::mask`] are masked by the runner
//! in the log, scrubbed from the summary and annotations, and refused in
//! outputs, which later jobs can read.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use rand::Rng;

use crate::report::Headline;

/// GitHub drops a step's whole summary above this size (the runner's
/// `AttachmentSizeLimit`), so we trim before it.
pub const SUMMARY_LIMIT: u64 = 1024 * 1024;

/// The kinds of annotation the runner turns into check-run annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Notice,
}

impl Level {
    fn command(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Notice => "notice",
        }
    }
}

/// What [`Actions::summary`] did with the Markdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryWritten {
    /// Appended whole.
    Whole,
    /// Cut at a line to stay under [`SUMMARY_LIMIT`], with a note saying so.
    Trimmed { kept_bytes: usize, total_bytes: usize },
    /// The step has no `GITHUB_STEP_SUMMARY` file (an old runner or a local emulator).
    NoFile,
}

/// The job's GitHub Actions environment and the workflow-command stream
/// (stdout). Clones share the masked secrets and the stream: they are the same job.
#[derive(Clone)]
pub struct Actions {
    summary_file: Option<PathBuf>,
    output_file: Option<PathBuf>,
    server_url: String,
    api_url: String,
    repository: Option<String>,
    run_id: Option<String>,
    run_attempt: Option<String>,
    base_ref: Option<String>,
    ref_name: Option<String>,
    ref_type: Option<String>,
    masked: Arc<Mutex<Vec<String>>>,
    commands: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let masked = self.masked.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Actions")
            .field("summary_file", &self.summary_file)
            .field("output_file", &self.output_file)
            .field("server_url", &self.server_url)
            .field("api_url", &self.api_url)
            .field("repository", &self.repository)
            .field("run_id", &self.run_id)
            .field("masked", &format_args!("*** ({masked} values)"))
            .finish_non_exhaustive()
    }
}

impl Actions {
    /// The process environment; `None` unless `GITHUB_ACTIONS=true`.
    pub fn from_env() -> Option<Actions> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`Actions::from_env`] but reading variables through `var`, so tests
    /// need not change the process environment. Empty values count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Actions> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        if get("GITHUB_ACTIONS").as_deref() != Some("true") {
            return None;
        }
        let url = |name: &str, default: &str| {
            get(name).unwrap_or_else(|| default.to_string()).trim_end_matches('/').to_string()
        };
        Some(Actions {
            summary_file: get("GITHUB_STEP_SUMMARY").map(PathBuf::from),
            output_file: get("GITHUB_OUTPUT").map(PathBuf::from),
            server_url: url("GITHUB_SERVER_URL", "https://github.com"),
            api_url: url("GITHUB_API_URL", "https://api.github.com"),
            repository: get("GITHUB_REPOSITORY"),
            run_id: get("GITHUB_RUN_ID"),
            run_attempt: get("GITHUB_RUN_ATTEMPT"),
            base_ref: get("GITHUB_BASE_REF"),
            ref_name: get("GITHUB_REF_NAME"),
            ref_type: get("GITHUB_REF_TYPE"),
            masked: Arc::new(Mutex::new(Vec::new())),
            commands: Arc::new(Mutex::new(Box::new(std::io::stdout()))),
        })
    }

    /// Sends workflow commands (annotations, masks) to `out` instead of stdout.
    pub fn with_command_output(mut self, out: impl Write + Send + 'static) -> Self {
        self.commands = Arc::new(Mutex::new(Box::new(out)));
        self
    }

    /// `https://github.com/owner/repo/actions/runs/123` (with `/attempts/N` on a re-run).
    pub fn run_url(&self) -> Option<String> {
        let repository = self.repository.as_deref()?;
        let run_id = self.run_id.as_deref()?;
        let mut url = format!("{}/{repository}/actions/runs/{run_id}", self.server_url);
        if let Some(attempt) = self.run_attempt.as_deref().filter(|a| *a != "1") {
            url.push_str(&format!("/attempts/{attempt}"));
        }
        Some(url)
    }

    /// `(owner, repo)` from `GITHUB_REPOSITORY`.
    pub fn repository(&self) -> Option<(&str, &str)> {
        let (owner, repo) = self.repository.as_deref()?.split_once('/')?;
        (!owner.is_empty() && !repo.is_empty() && !repo.contains('/')).then_some((owner, repo))
    }

    /// The REST API root: `https://api.github.com`, or GitHub Enterprise's `https://host/api/v3`.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The web root: `https://github.com` or the Enterprise host.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The branch the run proposes changes against: a pull request's base
    /// (`GITHUB_BASE_REF`), else the branch the workflow runs on (for a
    /// schedule, the default branch). `None` when the run is on a tag.
    pub fn base_branch(&self) -> Option<&str> {
        if let Some(base) = self.base_ref.as_deref() {
            return Some(base);
        }
        match self.ref_type.as_deref() {
            Some("branch") | None => self.ref_name.as_deref(),
            Some(_) => None,
        }
    }

    /// Asks the runner to redact `secret` (and each of its lines) from the
    /// log from now on, and remembers it so nothing here writes it out.
    /// Call it before anything that could print the value.
    pub fn mask(&self, secret: &str) {
        if self.guard(secret) {
            self.command(&format!("::add-mask::{}", escape_data(secret)));
        }
    }

    /// Remembers `secret` so nothing here writes it out (outputs refuse it,
    /// the summary and annotations scrub it) without printing it: for values
    /// the runner already masks, such as `secrets.*` passed through `env:`,
    /// where an `::add-mask::` line would only put the value on stdout.
    /// Returns whether it was new.
    pub fn guard(&self, secret: &str) -> bool {
        if secret.trim().is_empty() {
            return false;
        }
        let mut masked = self.masked.lock().unwrap_or_else(|e| e.into_inner());
        if masked.iter().any(|m| m == secret) {
            return false;
        }
        masked.push(secret.to_string());
        true
    }

    /// Prints an annotation the runner attaches to the job (and, with `file`,
    /// to that file and line in the PR's diff). Masked secrets are scrubbed.
    pub fn annotate(&self, level: Level, title: Option<&str>, message: &str, file: Option<(&Path, Option<u32>)>) {
        let mut properties = Vec::new();
        if let Some((path, line)) = file {
            let path = path.to_string_lossy().replace('\\', "/");
            properties.push(format!("file={}", escape_property(&self.scrub(&path))));
            if let Some(line) = line {
                properties.push(format!("line={line}"));
            }
        }
        if let Some(title) = title {
            properties.push(format!("title={}", escape_property(&self.scrub(title))));
        }
        let properties = if properties.is_empty() { String::new() } else { format!(" {}", properties.join(",")) };
        self.command(&format!("::{}{properties}::{}", level.command(), escape_data(&self.scrub(message))));
    }

    /// Appends Markdown to the job summary. Past GitHub's 1 MiB per step the
    /// text is cut at a line, open code fences and `<details>` are closed, and a
    /// note says so: a long report never costs the summary. Masked secrets are
    /// scrubbed. An error here is worth a warning, not a failed run.
    pub fn summary(&self, markdown: &str) -> Result<SummaryWritten> {
        let Some(path) = &self.summary_file else {
            tracing::warn!("GITHUB_STEP_SUMMARY is not set: no job summary written");
            return Ok(SummaryWritten::NoFile);
        };
        let existing = match std::fs::metadata(path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| summary_error(path)),
        };
        let mut text = self.scrub(markdown);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        if existing > 0 {
            text.insert(0, '\n');
        }
        let budget = usize::try_from(SUMMARY_LIMIT.saturating_sub(existing)).unwrap_or(usize::MAX);
        let (text, written) = if text.len() <= budget {
            (text, SummaryWritten::Whole)
        } else {
            let kept = trim_markdown(&text, budget);
            let kept_bytes = kept.len();
            (kept, SummaryWritten::Trimmed { kept_bytes, total_bytes: text.len() })
        };
        if text.is_empty() {
            return Ok(written);
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path).with_context(|| summary_error(path))?;
        file.write_all(text.as_bytes()).with_context(|| summary_error(path))?;
        Ok(written)
    }

    /// Sets step outputs (`steps.<id>.outputs.<name>`) in the runner's
    /// `name<<DELIMITER` syntax, so any value, multi-line included, arrives
    /// as written. Refuses names the runner or expressions cannot take, and
    /// values holding a masked secret (outputs are passed to later jobs).
    pub fn outputs<K: AsRef<str>, V: AsRef<str>>(&self, pairs: &[(K, V)]) -> Result<()> {
        let mut text = String::new();
        for (name, value) in pairs {
            let (name, value) = (name.as_ref(), value.as_ref());
            if !is_output_name(name) {
                bail!(
                    "cannot set the step output {name:?}: an output name is a letter or `_` followed by letters, \
                     digits, `_` or `-`"
                );
            }
            if self.holds_secret(value) {
                bail!(
                    "refused to set the step output `{name}`: its value contains a secret this run masked, and \
                     outputs are readable by later steps and jobs; pass report text only"
                );
            }
            let delimiter = delimiter_for(value);
            text.push_str(&format!("{name}<<{delimiter}\n{value}\n{delimiter}\n"));
        }
        let Some(path) = &self.output_file else {
            tracing::warn!("GITHUB_OUTPUT is not set: no step outputs written");
            return Ok(());
        };
        let context = || {
            format!(
                "cannot append the step outputs to {} (GITHUB_OUTPUT): the runner creates this file for each step; \
                 check the job's disk and that the step was not run in a container without it",
                path.display()
            )
        };
        let mut file = OpenOptions::new().create(true).append(true).open(path).with_context(context)?;
        file.write_all(text.as_bytes()).with_context(context)
    }

    /// The outputs a run sets: `delta` (the headline's text, as in the PR and
    /// Slack), `delta_value` (the number, for `if:` conditions), `decision`
    /// (`promote` or `hold`) and `pr_url` (empty without a pull request).
    pub fn run_outputs(headline: &Headline, pr_url: Option<&str>) -> Vec<(&'static str, String)> {
        vec![
            ("delta", headline.delta_text()),
            ("delta_value", format!("{:.3}", headline.delta)),
            ("decision", headline.decision.as_str().to_string()),
            ("pr_url", pr_url.unwrap_or_default().to_string()),
        ]
    }

    /// The masked values and their lines, as the runner's masker matches them.
    fn masked_needles(&self) -> Vec<String> {
        let masked = self.masked.lock().unwrap_or_else(|e| e.into_inner());
        let mut needles: Vec<String> = Vec::new();
        for secret in masked.iter() {
            needles.push(secret.clone());
            needles.extend(secret.split(['\r', '\n']).map(str::trim).filter(|l| !l.is_empty()).map(String::from));
        }
        // Longest first, so a secret is replaced whole before one of its lines.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        needles
    }

    fn holds_secret(&self, text: &str) -> bool {
        self.masked_needles().iter().any(|n| text.contains(n.as_str()))
    }

    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for needle in self.masked_needles() {
            text = text.replace(&needle, "***");
        }
        text
    }

    /// One workflow command on its own line; a failing stdout is not worth failing the run.
    fn command(&self, line: &str) {
        let mut out = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(format!("{line}\n").as_bytes()).and_then(|()| out.flush()) {
            tracing::warn!("cannot write a workflow command to stdout: {e}");
        }
    }
}

fn summary_error(path: &Path) -> String {
    format!(
        "cannot append the job summary to {} (GITHUB_STEP_SUMMARY): the runner creates this file for each step; \
         check the job's disk",
        path.display()
    )
}

/// Workflow-command data: `%`, CR and LF escaped as the runner unescapes them.
fn escape_data(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Workflow-command property values: also `:` and `,`, which separate properties.
fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// Names usable in `steps.<id>.outputs.<name>` that the runner's parser splits unambiguously.
fn is_output_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A random heredoc delimiter that does not occur in `value`, so no line of
/// the value can end it early.
fn delimiter_for(value: &str) -> String {
    let mut rng = rand::rng();
    loop {
        let delimiter = format!("ghadelimiter_{:032x}", rng.random::<u128>());
        if !value.contains(&delimiter) {
            return delimiter;
        }
    }
}

/// The longest prefix of `text` ending at a line that, with closers for open
/// code fences and `<details>` and a note, fits in `budget` bytes.
fn trim_markdown(text: &str, budget: usize) -> String {
    let note = |kept: usize| {
        format!(
            "\n> [!NOTE]\n> The summary was trimmed here: GitHub keeps at most 1 MiB of job summary per step \
             ({kept} of {} bytes shown); the full report is in the run's REPORT.md.\n",
            text.len()
        )
    };
    let mut end = text.len().min(budget);
    loop {
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        // Cut after the last whole line when there is one.
        let cut = text[..end].rfind('\n').map_or(end, |i| i + 1);
        let kept = &text[..cut];
        let closers = markdown_closers(kept);
        let out = format!("{kept}{closers}{}", note(cut));
        if out.len() <= budget {
            return out;
        }
        if cut == 0 {
            return String::new();
        }
        let excess = out.len() - budget;
        end = cut.saturating_sub(excess.max(1));
    }
}

/// What closes the code fence and `<details>` blocks `kept` leaves open.
fn markdown_closers(kept: &str) -> String {
    let mut fence: Option<&str> = None;
    let mut details = 0usize;
    for line in kept.lines() {
        let trimmed = line.trim_start();
        if let Some(open) = fence {
            if trimmed.starts_with(open) && trimmed.trim_end().chars().all(|c| c == open.as_bytes()[0] as char) {
                fence = None;
            }
            continue;
        }
        for marker in ["```", "~~~"] {
            if trimmed.starts_with(marker) {
                let width = trimmed.chars().take_while(|c| *c == marker.as_bytes()[0] as char).count();
                fence = Some(&trimmed[..width]);
                break;
            }
        }
        if fence.is_none() {
            details += trimmed.matches("<details").count();
            details = details.saturating_sub(trimmed.matches("</details>").count());
        }
    }
    let mut closers = String::new();
    if !kept.is_empty() && !kept.ends_with('\n') {
        closers.push('\n');
    }
    if let Some(open) = fence {
        closers.push_str(open);
        closers.push('\n');
    }
    for _ in 0..details {
        closers.push_str("\n</details>\n");
    }
    closers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        assert!(is_output_name("pr_url"));
        assert!(is_output_name("delta-value"));
        assert!(!is_output_name(""));
        assert!(!is_output_name("1x"));
        assert!(!is_output_name("a=b"));
        assert!(!is_output_name("a<<b"));
    }

    #[test]
    fn closers_close_open_fences_and_details() {
        assert_eq!(markdown_closers("```diff\n+a\n"), "```\n");
        assert_eq!(markdown_closers("```\na\n```\n"), "");
        assert_eq!(markdown_closers("<details><summary>x</summary>\n\na\n"), "\n</details>\n");
        assert_eq!(markdown_closers("<details>\n```\n<details>\n"), "```\n\n</details>\n");
    }
}
