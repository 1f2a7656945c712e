//! The workflows in .github/workflows/: the weekly run users copy
//! (promptloop.yml) and the project's CI (ci.yml). Both must pass actionlint
//! and zizmor with no finding; the facts that keep them safe and in step with
//! the worked example are checked on the text, with no YAML parser.
//!
//! The linters come from scripts/test.sh, which installs them into
//! .promptloop/test-venv and exports PROMPTLOOP_ACTIONLINT and PROMPTLOOP_ZIZMOR.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use assert_cmd::cargo::CommandCargoExt;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn workflows() -> PathBuf {
    root().join(".github/workflows")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(workflows().join(name)).unwrap_or_else(|e| panic!("cannot read {name}: {e}"))
}

/// A linter from the environment, else from the test venv; missing is a failure, not a skip.
fn tool(var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        assert!(path.exists(), "{var} points at {}, which does not exist: run scripts/test.sh", path.display());
        return path;
    }
    let venv = root().join(".promptloop/test-venv/bin").join(name);
    assert!(
        venv.exists(),
        "{name} is not installed: run scripts/test.sh (it installs actionlint and zizmor into \
         .promptloop/test-venv and sets {var}), or set {var} to the {name} binary"
    );
    venv
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn actionlint(files: &[PathBuf]) -> Output {
    run(Command::new(tool("PROMPTLOOP_ACTIONLINT", "actionlint"))
        .args(["-no-color", "-oneline", "-config-file", "/dev/null"])
        .args(files)
        .current_dir(root()))
}

/// zizmor at its default persona, offline, with every ignore comment and config disregarded.
fn zizmor(dir: &Path) -> Output {
    run(Command::new(tool("PROMPTLOOP_ZIZMOR", "zizmor"))
        .args(["--offline", "--no-config", "--no-ignores", "--strict-collection", "--no-progress", "--format", "json"])
        .arg(dir)
        .env_remove("GH_TOKEN")
        .env_remove("GITHUB_TOKEN")
        .env_remove("ZIZMOR_GITHUB_TOKEN")
        .current_dir(root()))
}

fn findings(output: &Output) -> Vec<serde_json::Value> {
    serde_json::from_slice::<Vec<serde_json::Value>>(&output.stdout)
        .unwrap_or_else(|e| panic!("zizmor's JSON did not parse ({e}):\n{}", describe(output)))
}

#[test]
fn actionlint_finds_nothing() {
    let files = vec![workflows().join("promptloop.yml"), workflows().join("ci.yml")];
    let output = actionlint(&files);
    assert!(output.status.success() && output.stdout.is_empty(), "{}", describe(&output));
}

#[test]
fn zizmor_finds_nothing() {
    let output = zizmor(&workflows());
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(findings(&output), Vec::<serde_json::Value>::new(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for name in ["promptloop.yml", "ci.yml"] {
        assert!(stderr.contains(name), "zizmor did not audit {name}:\n{stderr}");
    }
}

/// The two linters really look: the same invocations reject a workflow with
/// the mistakes ours must not make.
#[test]
fn the_linters_reject_an_unsafe_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join(".github/workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    let bad = workflows.join("bad.yml");
    std::fs::write(
        &bad,
        "on:\n  workflow_dispatch:\n    inputs:\n      pipeline:\n        type: string\n\
         jobs:\n  run:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4\n\
         \x20     - run: ./promptloop run \"${{ inputs.pipeline }}\" --token ${{ secrets.GITHUB_TOKEN }}\n",
    )
    .unwrap();

    let output = actionlint(std::slice::from_ref(&bad));
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("bad.yml"), "{}", describe(&output));

    let output = zizmor(&workflows);
    assert!(!output.status.success(), "{}", describe(&output));
    let idents: BTreeSet<String> =
        findings(&output).iter().filter_map(|f| f["ident"].as_str().map(String::from)).collect();
    for expected in ["template-injection", "artipacked", "excessive-permissions"] {
        assert!(idents.contains(expected), "{expected} not among {idents:?}");
    }
}

/// A line of a workflow, with its indentation.
struct Line<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

impl Line<'_> {
    /// The mapping key the line opens, without a sequence dash: `run` for `- run: |`.
    fn key(&self) -> Option<&str> {
        let text = self.text.strip_prefix("- ").unwrap_or(self.text);
        let (key, _) = text.split_once(':')?;
        (!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')).then_some(key)
    }

    fn is_content(&self) -> bool {
        !self.text.is_empty() && !self.text.starts_with('#')
    }
}

fn lines(source: &str) -> Vec<Line<'_>> {
    source
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let trimmed = line.trim_start();
            // A sequence item's key sits after its dash.
            let dash = if trimmed.starts_with("- ") { 2 } else { 0 };
            Line { number: i + 1, indent: line.len() - trimmed.len() + dash, text: trimmed.trim_end() }
        })
        .collect()
}

/// The key of the block that holds line `i`: the nearest line above it indented less.
fn parent<'a>(lines: &'a [Line<'a>], i: usize) -> Option<&'a Line<'a>> {
    let indent = lines[i].indent - if lines[i].text.starts_with("- ") { 2 } else { 0 };
    lines[..i].iter().rev().find(|l| l.is_content() && l.indent < indent)
}

/// Each `run:` script: its line number and its text (inline or block).
fn scripts<'a>(lines: &'a [Line<'a>]) -> Vec<(usize, String)> {
    let mut scripts = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        // A step's `run:` has a value; a job named `run` does not.
        let value = line.text.split_once(':').map_or("", |(_, v)| v.trim());
        if line.key() != Some("run") || value.is_empty() {
            continue;
        }
        let mut script = value.to_string();
        for body in lines[i + 1..].iter().take_while(|l| l.text.is_empty() || l.indent > line.indent) {
            script.push('\n');
            script.push_str(body.text);
        }
        scripts.push((line.number, script));
    }
    scripts
}

#[test]
fn secrets_and_inputs_reach_scripts_only_through_env() {
    for name in ["promptloop.yml", "ci.yml"] {
        let source = read(name);
        let lines = lines(&source);
        for (number, script) in scripts(&lines) {
            assert!(!script.contains("${{"), "{name}:{number}: an expression inside a run: script\n{script}");
        }
        for (i, line) in lines.iter().enumerate() {
            let untrusted = ["secrets.", "inputs.", "github.event."];
            let Some(start) = line.text.find("${{") else { continue };
            let expression = &line.text[start..];
            if untrusted.iter().any(|u| expression.contains(u)) {
                let parent = parent(&lines, i).map(|p| p.text);
                assert_eq!(parent, Some("env:"), "{name}:{}: `{}` outside an env: block", line.number, line.text);
            }
        }
    }
    // The run step does receive the tokens it needs, each from its secret.
    let source = read("promptloop.yml");
    for secret in ["GITHUB_TOKEN", "SLACK_BOT_TOKEN", "SLACK_WEBHOOK_URL", "OPENAI_API_KEY"] {
        assert!(source.contains(&format!("{secret}: ${{{{ secrets.{secret} }}}}")), "{secret} is not passed");
    }
    assert!(!source.contains("toJSON(secrets)") && !source.contains("secrets: inherit"));
}

#[test]
fn the_schedule_is_the_pipelines_schedule() {
    let source = read("promptloop.yml");
    let crons: BTreeSet<String> = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- cron:"))
        .map(|c| c.split(" #").next().unwrap().trim().trim_matches('"').to_string())
        .collect();

    // The worked example, as its file says.
    let example: toml::Value =
        toml::from_str(&std::fs::read_to_string(root().join("pipelines/support-triage.toml")).unwrap()).unwrap();
    let schedule = example["schedule"].as_str().unwrap();
    assert_eq!(schedule, "0 6 * * 5");
    assert!(crons.contains(schedule), "{crons:?} lacks the worked example's {schedule:?}");

    // A scheduled run picks the pipelines whose schedule is the cron that
    // fired, comparing `promptloop list --json`'s `schedule` to it: every
    // schedule needs its cron line, and every cron line a pipeline.
    let output = run(Command::cargo_bin("promptloop").unwrap().args(["list", "--json"]).current_dir(root()));
    assert!(output.status.success(), "{}", describe(&output));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(listed.iter().all(|p| p["name"].is_string() && (p["schedule"].is_string() || p["schedule"].is_null())));
    let schedules: BTreeSet<String> = listed.iter().filter_map(|p| p["schedule"].as_str().map(String::from)).collect();
    assert_eq!(crons, schedules);
    assert!(source.contains("select(.schedule == $cron)") && source.contains("select(.name == $name)"));
    assert!(source.contains("`promptloop schedule`"), "the comment points to `promptloop schedule`");
}

#[test]
fn every_action_is_pinned_to_a_commit_with_its_version() {
    let pinned = regex::Regex::new(r"^(- )?uses: ([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # v\d+\.\d+\.\d+$").unwrap();
    let mut commits = std::collections::BTreeMap::new();
    for name in ["promptloop.yml", "ci.yml"] {
        let source = read(name);
        for line in lines(&source).iter().filter(|l| l.key() == Some("uses")) {
            let captures = pinned
                .captures(line.text)
                .unwrap_or_else(|| panic!("{name}:{}: not pinned: {}", line.number, line.text));
            let action = captures[2].split('/').take(2).collect::<Vec<_>>().join("/");
            let commit = captures[3].to_string();
            let previous = commits.insert(action.clone(), commit.clone());
            assert!(previous.is_none_or(|p| p == commit), "{action} is pinned to two commits");
        }
    }
    assert!(commits.contains_key("actions/checkout") && commits.contains_key("actions/cache"), "{commits:?}");
}

#[test]
fn checkouts_keep_no_credentials_and_the_run_has_the_history() {
    for name in ["promptloop.yml", "ci.yml"] {
        let source = read(name);
        let lines = lines(&source);
        for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.text.contains("uses: actions/checkout@")) {
            let step: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| !l.text.starts_with("- ") || l.indent > line.indent)
                .map(|l| l.text)
                .collect();
            assert!(
                step.contains(&"persist-credentials: false"),
                "{name}:{}: the token stays in .git/config",
                line.number
            );
        }
    }
    let source = read("promptloop.yml");
    assert_eq!(source.matches("fetch-depth: 0").count(), 1, "the run job checks out the whole history");
}

#[test]
fn permissions_are_the_least_each_job_needs() {
    let source = read("promptloop.yml");
    assert!(source.lines().any(|l| l == "permissions: {}"), "promptloop.yml grants nothing at the top");
    let granted: Vec<&str> = source
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.ends_with(": read") || l.ends_with(": write") || l.contains(": read #") || l.contains(": write #")
        })
        .map(|l| l.split(" #").next().unwrap())
        .collect();
    assert_eq!(granted, ["contents: read", "contents: write", "pull-requests: write", "issues: write"]);
    assert!(!source.contains("write-all") && !source.contains("read-all"));

    let ci = read("ci.yml");
    assert!(ci.contains("\npermissions:\n  contents: read\n"), "ci.yml reads the repository and nothing else");
    assert!(!ci.contains(": write"));
}

#[test]
fn the_run_job_takes_the_dispatch_inputs_and_keeps_its_caches() {
    let source = read("promptloop.yml");
    for needle in [
        // Triggers and inputs.
        "  schedule:\n",
        "  workflow_dispatch:\n",
        "      pipeline:\n",
        "      optimizer:\n",
        "      since:\n        description",
        "        default: last\n",
        "      dry_run:\n",
        "        type: boolean\n",
        // The matrix comes from `promptloop list --json`.
        "\"$PROMPTLOOP\" list --json",
        "pipeline: ${{ fromJSON(needs.plan.outputs.pipelines) }}",
        // One run per pipeline at a time, never cancelled midway.
        "group: promptloop-${{ matrix.pipeline.name }}\n      cancel-in-progress: false\n",
        // The run and its flags.
        "args=(run \"$PIPELINE\" --since \"$SINCE\")",
        "args+=(--optimizer \"$OPTIMIZER\")",
        "args+=(--dry-run)",
        "scripts/setup-model.sh",
        // Caches: the LM responses, the model, the build.
        "path: .promptloop/cache.sqlite*",
        "path: .promptloop/models",
        "~/.cargo/registry/index",
        "            target\n",
    ] {
        assert!(source.contains(needle), "promptloop.yml lacks {needle:?}");
    }
    // The LM cache is saved even when the run fails.
    let save = source.find("uses: actions/cache/save@").expect("the LM cache is saved explicitly");
    assert!(source[..save].trim_end().ends_with("if: always()"), "the LM cache save runs always()");

    let ci = read("ci.yml");
    for needle in ["  push:\n    branches: [main]\n", "  pull_request:\n", "run: .ci/run"] {
        assert!(ci.contains(needle), "ci.yml lacks {needle:?}");
    }
}
