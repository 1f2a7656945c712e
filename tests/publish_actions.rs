//! The GitHub Actions side of a run: what the runner reads back from the
//! output file, the summary file and the workflow commands on stdout. The
//! parsers below follow the runner's own (actions/runner: FileCommandManager's
//! EnvFileKeyValuePairs, ActionCommand.TryParseV2) so a file or line that
//! parses here parses there.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use promptloop::eval::gate::Decision;
use promptloop::publish::actions::{Actions, Level, SUMMARY_LIMIT, SummaryWritten};
use promptloop::report::Headline;

const FAKE_TOKEN: &str = "ghs_FAKEtoken0123456789abcdefABCDEF";

/// A job's environment as a map, so tests never touch the process environment.
fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| map.get(name).cloned()
}

/// Stdout as the runner sees it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

struct Job {
    dir: tempfile::TempDir,
    actions: Actions,
    stdout: Captured,
}

impl Job {
    fn new() -> Job {
        Self::with(&[])
    }

    fn with(extra: &[(&str, &str)]) -> Job {
        let dir = tempfile::tempdir().unwrap();
        let summary = dir.path().join("step_summary_1").to_string_lossy().into_owned();
        let output = dir.path().join("set_output_1").to_string_lossy().into_owned();
        let mut pairs = vec![
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_STEP_SUMMARY", summary.as_str()),
            ("GITHUB_OUTPUT", output.as_str()),
        ];
        pairs.extend_from_slice(extra);
        let stdout = Captured::default();
        let actions =
            Actions::from_vars(vars(&pairs)).expect("GITHUB_ACTIONS=true").with_command_output(stdout.clone());
        Job { dir, actions, stdout }
    }

    fn summary_path(&self) -> std::path::PathBuf {
        self.dir.path().join("step_summary_1")
    }

    fn output_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("set_output_1")).unwrap_or_default()
    }

    fn commands(&self) -> Vec<Command> {
        self.stdout
            .text()
            .lines()
            .map(|line| parse_command(line).unwrap_or_else(|| panic!("not a command: {line}")))
            .collect()
    }
}

/// The runner's reading of a GITHUB_OUTPUT file (Linux: lines end at `\n`).
fn parse_output_file(text: &str) -> Result<Vec<(String, String)>, String> {
    fn read_line<'a>(text: &'a str, index: &mut usize) -> Option<(&'a str, bool)> {
        if *index >= text.len() {
            return None;
        }
        let start = *index;
        match text[start..].find('\n') {
            None => {
                *index = text.len();
                Some((&text[start..], false))
            }
            Some(lf) => {
                *index = start + lf + 1;
                Some((&text[start..start + lf], true))
            }
        }
    }
    let mut pairs = Vec::new();
    let mut index = 0;
    while let Some((line, _)) = read_line(text, &mut index) {
        if line.is_empty() {
            continue;
        }
        let equals = line.find('=');
        let heredoc = line.find("<<");
        match (equals, heredoc) {
            (Some(e), h) if h.is_none_or(|h| e < h) => {
                let (key, value) = line.split_at(e);
                pairs.push((key.to_string(), value[1..].to_string()));
            }
            (_, Some(h)) => {
                let (key, delimiter) = (&line[..h], &line[h + 2..]);
                if key.is_empty() || delimiter.is_empty() {
                    return Err(format!(
                        "Invalid format '{line}'. Name must not be empty and delimiter must not be empty"
                    ));
                }
                let start = index;
                let mut end = index;
                loop {
                    match read_line(text, &mut index) {
                        None => return Err(format!("Invalid value. Matching delimiter not found '{delimiter}'")),
                        Some((l, _)) if l == delimiter => break,
                        Some((_, false)) => return Err("Invalid value. EOF marker missing new line.".into()),
                        Some((_, true)) => end = index - 1,
                    }
                }
                pairs.push((key.to_string(), if end > start { text[start..end].to_string() } else { String::new() }));
            }
            _ => return Err(format!("Invalid format '{line}'")),
        }
    }
    Ok(pairs)
}

#[derive(Debug, PartialEq)]
struct Command {
    name: String,
    properties: BTreeMap<String, String>,
    data: String,
}

/// The runner's `ActionCommand.TryParseV2` with its unescaping (replacements in its order).
fn parse_command(message: &str) -> Option<Command> {
    let message = message.trim_start();
    let rest = message.strip_prefix("::")?;
    let end = rest.find("::")?;
    let info = &rest[..end];
    let (name, props) = match info.find(' ') {
        Some(space) => (&info[..space], Some(info[space + 1..].trim())),
        None => (info, None),
    };
    let unescape = |text: &str, property: bool| {
        let mut text = text.replace("%0D", "\r").replace("%0A", "\n");
        if property {
            text = text.replace("%3A", ":").replace("%2C", ",");
        }
        text.replace("%25", "%")
    };
    let mut properties = BTreeMap::new();
    for pair in props.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
        if let Some((k, v)) = pair.split_once('=').filter(|(k, v)| !k.is_empty() && !v.is_empty()) {
            properties.insert(k.to_string(), unescape(v, true));
        }
    }
    Some(Command { name: name.to_string(), properties, data: unescape(&rest[end + 2..], false) })
}

fn headline() -> Headline {
    Headline {
        pipeline: "support-triage".into(),
        metric: "exact_match(queue)".into(),
        n: 139,
        baseline: 0.266,
        candidate: 0.460,
        delta: 0.194,
        low: 0.094,
        high: 0.295,
        confidence: 0.95,
        mcnemar_p: Some(0.0005),
        decision: Decision::Promote,
        reasons: vec![],
        no_candidate: false,
    }
}

#[test]
fn outside_actions_there_is_nothing_to_write_to() {
    assert!(Actions::from_vars(vars(&[])).is_none());
    assert!(Actions::from_vars(vars(&[("GITHUB_ACTIONS", "false"), ("GITHUB_OUTPUT", "/tmp/x")])).is_none());
    assert!(Actions::from_vars(vars(&[("GITHUB_ACTIONS", "")])).is_none());
    assert!(Actions::from_vars(vars(&[("GITHUB_ACTIONS", "true")])).is_some());
}

#[test]
fn outputs_round_trip_through_the_runners_parser() {
    let job = Job::new();
    let tricky = [
        ("delta", "+0.194 (95% CI +0.094 to +0.295, n = 139)"),
        ("multi", "first line\nsecond: line\n\nfourth = line"),
        ("trailing", "ends with a newline\n"),
        ("empty", ""),
        ("looks_like_heredoc", "x<<EOF\nEOF\nname=value\n<<"),
        ("carriage", "a\r\nb\r"),
        ("unicode", "0.266 → 0.460 · ✓"),
    ];
    job.actions.outputs(&tricky).unwrap();
    // Appended, not replaced: a second call adds to the same file.
    job.actions.outputs(&[("pr_url", "https://github.com/o/r/pull/7")]).unwrap();

    let text = job.output_text();
    let parsed = parse_output_file(&text).unwrap();
    let mut expected: Vec<(String, String)> = tricky.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    expected.push(("pr_url".into(), "https://github.com/o/r/pull/7".into()));
    assert_eq!(parsed, expected);

    // Every value uses the heredoc form with a random delimiter, never a fixed one.
    let headers: Vec<&str> = text.lines().filter(|l| l.contains("<<ghadelimiter_")).collect();
    assert_eq!(headers.len(), expected.len(), "{text}");
    let delimiters: std::collections::HashSet<&str> = headers.iter().map(|h| h.split_once("<<").unwrap().1).collect();
    assert_eq!(delimiters.len(), headers.len(), "each value has its own delimiter");
    for d in delimiters {
        let hex = d.strip_prefix("ghadelimiter_").unwrap();
        assert!(hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit()), "{d}");
    }
}

#[test]
fn a_value_full_of_delimiter_looking_lines_still_round_trips() {
    let job = Job::new();
    // Lines shaped exactly like the delimiters this module writes, and like
    // the one @actions/core writes.
    let mut value = String::new();
    for i in 0..50u32 {
        value.push_str(&format!("ghadelimiter_{:032x}\n", u128::from(i) * 0x1234_5678_9abc_def1));
    }
    value.push_str("ghadelimiter_5f1d3a9c-8d4e-4b7a-9e8f-0a1b2c3d4e5f\nEOF\n");
    // And the delimiter of an earlier write, echoed back in a later value.
    job.actions.outputs(&[("first", "one")]).unwrap();
    let earlier = job.output_text().lines().next().unwrap().split_once("<<").unwrap().1.to_string();
    value.push_str(&earlier);
    job.actions.outputs(&[("report", value.as_str())]).unwrap();

    let parsed = parse_output_file(&job.output_text()).unwrap();
    assert_eq!(parsed, vec![("first".to_string(), "one".to_string()), ("report".to_string(), value)]);
}

#[test]
fn the_runs_outputs_say_what_the_pr_and_slack_say() {
    let job = Job::new();
    let headline = headline();
    job.actions.outputs(&Actions::run_outputs(&headline, Some("https://github.com/o/r/pull/7"))).unwrap();
    let parsed: HashMap<String, String> = parse_output_file(&job.output_text()).unwrap().into_iter().collect();
    assert_eq!(parsed["delta"], headline.delta_text());
    assert_eq!(parsed["delta_value"], "0.194");
    assert_eq!(parsed["decision"], "promote");
    assert_eq!(parsed["pr_url"], "https://github.com/o/r/pull/7");

    let job = Job::new();
    let hold = Headline { decision: Decision::Hold, delta: -0.01, ..headline };
    job.actions.outputs(&Actions::run_outputs(&hold, None)).unwrap();
    let parsed: HashMap<String, String> = parse_output_file(&job.output_text()).unwrap().into_iter().collect();
    assert_eq!(parsed["decision"], "hold");
    assert_eq!(parsed["delta_value"], "-0.010");
    assert_eq!(parsed["pr_url"], "");
}

#[test]
fn outputs_refuse_masked_secrets_and_bad_names_without_writing_anything() {
    let job = Job::new();
    job.actions.mask(FAKE_TOKEN);
    let leaked = format!("see https://x-access-token:{FAKE_TOKEN}@github.com/o/r");
    let err =
        job.actions.outputs(&[("pr_url", "https://github.com/o/r/pull/1"), ("oops", leaked.as_str())]).unwrap_err();
    let text = format!("{err:#} {err:?}");
    assert!(text.contains("`oops`") && text.contains("secret"), "{text}");
    assert!(!text.contains(FAKE_TOKEN), "the error must not carry the secret: {text}");
    assert_eq!(job.output_text(), "", "nothing is half-written");

    // One line of a multi-line secret is enough to refuse, as the runner masks lines too.
    let key = "-----BEGIN KEY-----\nMIIEfakeKEYmaterial0123456789\n-----END KEY-----";
    job.actions.mask(key);
    assert!(job.actions.outputs(&[("x", "MIIEfakeKEYmaterial0123456789")]).is_err());

    // A clone is the same job: it knows the masks too.
    let clone = job.actions.clone();
    assert!(clone.outputs(&[("y", FAKE_TOKEN)]).is_err());

    for name in ["", "a=b", "a<<b", "9lives", "with space", "new\nline"] {
        let err = job.actions.outputs(&[(name, "v")]).unwrap_err();
        assert!(format!("{err}").contains("output name"), "{name:?}: {err}");
    }
    assert_eq!(job.output_text(), "");
}

#[test]
fn annotations_escape_data_and_properties_as_the_runner_unescapes_them() {
    let job = Job::new();
    job.actions.annotate(
        Level::Error,
        Some("Bad key"),
        "unknown key `optimiser`",
        Some((Path::new("pipelines/support-triage.toml"), Some(12))),
    );
    assert_eq!(
        job.stdout.text(),
        "::error file=pipelines/support-triage.toml,line=12,title=Bad key::unknown key `optimiser`\n"
    );

    let job = Job::new();
    let message = "100% of 3 failed:\r\n- a, b: c\n::warning::not a command\n%0A stays literal";
    let title = "Push rejected: promptloop/x, again";
    let file = Path::new("odd,dir/a:b%20.toml");
    job.actions.annotate(Level::Warning, Some(title), message, Some((file, None)));
    job.actions.annotate(Level::Notice, None, "plain", None);
    let out = job.stdout.text();
    assert_eq!(out.lines().count(), 2, "one line per annotation: {out}");
    let commands = job.commands();
    assert_eq!(
        commands[0],
        Command {
            name: "warning".into(),
            properties: BTreeMap::from([
                ("file".to_string(), "odd,dir/a:b%20.toml".to_string()),
                ("title".to_string(), title.to_string()),
            ]),
            data: message.to_string(),
        }
    );
    assert_eq!(commands[1], Command { name: "notice".into(), properties: BTreeMap::new(), data: "plain".into() });
}

#[test]
fn masks_are_sent_once_and_secrets_never_reach_annotations() {
    let job = Job::new();
    job.actions.mask(FAKE_TOKEN);
    job.actions.mask(FAKE_TOKEN);
    job.actions.mask("");
    job.actions.mask("  \n");
    let multi = "line-one-secret\nline%two";
    job.actions.mask(multi);
    job.actions.annotate(
        Level::Error,
        Some(&format!("token {FAKE_TOKEN}")),
        &format!("push failed for {FAKE_TOKEN}"),
        None,
    );

    let commands = job.commands();
    let masks: Vec<&str> = commands.iter().filter(|c| c.name == "add-mask").map(|c| c.data.as_str()).collect();
    assert_eq!(masks, vec![FAKE_TOKEN, multi], "{}", job.stdout.text());
    let error = commands.iter().find(|c| c.name == "error").unwrap();
    assert_eq!(error.data, "push failed for ***");
    assert_eq!(error.properties["title"], "token ***");

    let debug = format!("{:?}", job.actions);
    assert!(!debug.contains(FAKE_TOKEN) && !debug.contains("line-one-secret"), "{debug}");
}

#[test]
fn the_summary_is_appended_to_not_replaced() {
    let job = Job::new();
    std::fs::write(job.summary_path(), "## from an earlier step of this job\n").unwrap();
    assert_eq!(job.actions.summary("# support-triage\n\n**+0.194**").unwrap(), SummaryWritten::Whole);
    assert_eq!(job.actions.summary("second part\n").unwrap(), SummaryWritten::Whole);
    let text = std::fs::read_to_string(job.summary_path()).unwrap();
    assert_eq!(text, "## from an earlier step of this job\n\n# support-triage\n\n**+0.194**\n\nsecond part\n");
}

#[test]
fn the_summary_scrubs_masked_secrets() {
    let job = Job::new();
    job.actions.mask(FAKE_TOKEN);
    job.actions.summary(&format!("token was {FAKE_TOKEN}\n")).unwrap();
    let text = std::fs::read_to_string(job.summary_path()).unwrap();
    assert_eq!(text, "token was ***\n");
}

#[test]
fn a_summary_past_one_mebibyte_is_trimmed_with_a_note_and_closed_markup() {
    let job = Job::new();
    // An earlier step of the job already wrote most of the budget.
    let earlier = "x".repeat(900 * 1024) + "\n";
    std::fs::write(job.summary_path(), &earlier).unwrap();

    let mut markdown = String::from("# Report\n\n<details><summary>Flipped examples</summary>\n\n```diff\n");
    while markdown.len() < 400 * 1024 {
        markdown.push_str("+ a line of the artifact diff, with some ünïcödé to cut near\n");
    }
    markdown.push_str("```\n\n</details>\n\nthe tail\n");

    let written = job.actions.summary(&markdown).unwrap();
    let SummaryWritten::Trimmed { kept_bytes, total_bytes } = written else { panic!("{written:?}") };
    assert!(kept_bytes < total_bytes);

    let text = std::fs::read_to_string(job.summary_path()).unwrap();
    assert!(text.len() as u64 <= SUMMARY_LIMIT, "{} bytes", text.len());
    assert!(text.len() as u64 > SUMMARY_LIMIT - 4096, "trimmed no more than needed: {} bytes", text.len());
    assert!(text.starts_with(&earlier), "the earlier steps' summary is kept");
    assert!(!text.contains("the tail"));
    let added = &text[earlier.len()..];
    assert!(added.contains("# Report"));
    let fences = added.lines().filter(|l| l.starts_with("```")).count();
    assert_eq!(fences % 2, 0, "the open code fence is closed");
    assert_eq!(added.matches("<details>").count(), added.matches("</details>").count());
    assert!(
        added.trim_end().ends_with("the full report is in the run's REPORT.md."),
        "{}",
        &added[added.len() - 300..]
    );
    for line in added.lines().filter(|l| l.starts_with('+')) {
        assert_eq!(line, "+ a line of the artifact diff, with some ünïcödé to cut near", "cut at a line");
    }

    // A full summary file takes nothing more, and is not an error.
    let full = Job::new();
    std::fs::write(full.summary_path(), "y".repeat(SUMMARY_LIMIT as usize)).unwrap();
    assert!(matches!(full.actions.summary("more").unwrap(), SummaryWritten::Trimmed { kept_bytes: 0, .. }));
    assert_eq!(std::fs::metadata(full.summary_path()).unwrap().len(), SUMMARY_LIMIT);
}

#[test]
fn without_the_files_summary_and_outputs_are_skipped_not_errors() {
    let actions = Actions::from_vars(vars(&[("GITHUB_ACTIONS", "true")])).unwrap();
    assert_eq!(actions.summary("# hi").unwrap(), SummaryWritten::NoFile);
    actions.outputs(&[("decision", "hold")]).unwrap();
}

#[test]
fn an_unwritable_summary_says_which_file_and_variable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("summary").to_string_lossy().into_owned();
    let actions = Actions::from_vars(vars(&[
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_STEP_SUMMARY", &missing),
        ("GITHUB_OUTPUT", &missing),
    ]))
    .unwrap();
    let err = format!("{:#}", actions.summary("# hi").unwrap_err());
    assert!(err.contains(&missing) && err.contains("GITHUB_STEP_SUMMARY"), "{err}");
    let err = format!("{:#}", actions.outputs(&[("a", "b")]).unwrap_err());
    assert!(err.contains(&missing) && err.contains("GITHUB_OUTPUT"), "{err}");
}

#[test]
fn where_the_run_happens_comes_from_the_jobs_environment() {
    let job = Job::with(&[
        ("GITHUB_SERVER_URL", "https://github.com"),
        ("GITHUB_REPOSITORY", "acme/support-bot"),
        ("GITHUB_RUN_ID", "9876543210"),
        ("GITHUB_RUN_ATTEMPT", "1"),
        ("GITHUB_REF_NAME", "main"),
        ("GITHUB_REF_TYPE", "branch"),
    ]);
    let a = &job.actions;
    assert_eq!(a.run_url().as_deref(), Some("https://github.com/acme/support-bot/actions/runs/9876543210"));
    assert_eq!(a.repository(), Some(("acme", "support-bot")));
    assert_eq!(a.api_url(), "https://api.github.com");
    assert_eq!(a.base_branch(), Some("main"));

    // GitHub Enterprise, a re-run, and a pull request's base branch.
    let job = Job::with(&[
        ("GITHUB_SERVER_URL", "https://git.acme.example/"),
        ("GITHUB_API_URL", "https://git.acme.example/api/v3"),
        ("GITHUB_REPOSITORY", "ml/prompts"),
        ("GITHUB_RUN_ID", "42"),
        ("GITHUB_RUN_ATTEMPT", "3"),
        ("GITHUB_BASE_REF", "release"),
        ("GITHUB_REF_NAME", "17/merge"),
        ("GITHUB_REF_TYPE", "branch"),
    ]);
    let a = &job.actions;
    assert_eq!(a.run_url().as_deref(), Some("https://git.acme.example/ml/prompts/actions/runs/42/attempts/3"));
    assert_eq!(a.api_url(), "https://git.acme.example/api/v3");
    assert_eq!(a.server_url(), "https://git.acme.example");
    assert_eq!(a.base_branch(), Some("release"));

    // A run on a tag has no base branch; a partial environment has no run URL.
    let job = Job::with(&[("GITHUB_REF_NAME", "v1.0"), ("GITHUB_REF_TYPE", "tag"), ("GITHUB_REPOSITORY", "bad")]);
    assert_eq!(job.actions.base_branch(), None);
    assert_eq!(job.actions.run_url(), None);
    assert_eq!(job.actions.repository(), None);
}
