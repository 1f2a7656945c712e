//! Pipeline files: the worked example loads; bad files say what, where and how to fix.

use std::path::Path;

use promptloop::config::{AdapterFormat, LogFormat, MetricConfig, Paging, PipelineConfig, Provider, SourceLocation};
use promptloop::program::signature::FieldType;

mod common;

fn parse(text: &str) -> anyhow::Result<PipelineConfig> {
    PipelineConfig::parse(text, Path::new("pipelines/test.toml"))
}

fn embedded() -> &'static str {
    "provider = \"embedded\"\nmodel = \"m.gguf\""
}

#[test]
fn the_worked_example_loads() {
    let config = PipelineConfig::load(Path::new("pipelines/support-triage.toml")).unwrap();
    assert_eq!(config.name, "support-triage");
    assert_eq!(config.lm.provider, Provider::Embedded);
    assert_eq!(config.adapter, AdapterFormat::Chat);
    let sig = &config.signatures["triage"].signature;
    match &sig.outputs[0].ty {
        FieldType::Enum { values } => assert_eq!(values.len(), 7),
        other => panic!("queue should be an enum, got {other:?}"),
    }
    assert_eq!(config.metric, MetricConfig::ExactMatch { fields: vec!["queue".into()] });
    // Paths resolve against the repository root, not the pipelines/ directory.
    assert_eq!(config.dataset.path, Path::new("./datasets/support-triage/examples.jsonl"));
}

#[test]
fn every_field_type_parses() {
    let text = common::triage_toml("d.jsonl", embedded(), "kind = \"none\"").replace(
        "[signatures.triage.outputs]",
        r#"[signatures.extra]
instructions = "x"
[signatures.extra.inputs]
a = { type = "string" }
[signatures.extra.outputs]
b = { type = "int" }
c = { type = "float" }
d = { type = "bool" }
e = { type = "list<string>" }
f = { type = "json", schema = { type = "object", properties = { k = { type = "string" } }, required = ["k"] } }

[signatures.triage.outputs]"#,
    );
    let config = parse(&text).unwrap();
    let types: Vec<_> = config.signatures["extra"].signature.outputs.iter().map(|f| f.ty.describe()).collect();
    assert_eq!(types, ["int", "float", "bool", "list[str]", "JSON object"]);
}

#[test]
fn malformed_toml_names_the_file_and_line() {
    let err = parse("name = \"x\"\n[lm\nprovider = 1\n").unwrap_err().to_string();
    assert!(err.contains("pipelines/test.toml"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn an_unknown_field_type_names_the_key_and_the_fix() {
    let text = common::triage_toml("d.jsonl", embedded(), "kind = \"none\"")
        .replace("message = { type = \"string\"", "message = { type = \"text\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("pipelines/test.toml"), "{err}");
    assert!(err.contains("[signatures.triage.inputs.message]"), "{err}");
    assert!(err.contains("unknown field type `text`"), "{err}");
    assert!(err.contains("string, int, float, bool, enum, list<T>, json"), "{err}");
}

#[test]
fn an_enum_without_values_says_how_to_declare_them() {
    let text = common::triage_toml("d.jsonl", embedded(), "kind = \"none\"")
        .replace("values = [\"cards\", \"transfers\", \"top_ups\"], ", "");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("[signatures.triage.outputs.queue]") && err.contains("values = ["), "{err}");
}

#[test]
fn a_misspelled_key_is_rejected_with_its_name() {
    let text = common::triage_toml("d.jsonl", embedded(), "kind = \"none\"\nmax_bootstraped_demos = 3");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("max_bootstraped_demos"), "{err}");
}

#[test]
fn a_metric_on_a_field_the_program_does_not_output_is_rejected() {
    let text = common::triage_toml("d.jsonl", embedded(), "kind = \"none\"")
        .replace("fields = [\"queue\"]", "fields = [\"label\"]");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("[metric]") && err.contains("`label`") && err.contains("outputs: queue"), "{err}");
}

#[test]
fn split_fractions_must_add_up() {
    let text = common::triage_toml("d.jsonl", embedded(), "kind = \"none\"")
        .replace("path = \"d.jsonl\"", "path = \"d.jsonl\"\nsplit = { train = 0.8, dev = 0.15, test = 0.15 }");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("[dataset.split]") && err.contains("add up to 1"), "{err}");
}

#[test]
fn an_openai_lm_needs_a_base_url_and_an_env_var_name_not_a_key() {
    let text = common::triage_toml("d.jsonl", "provider = \"openai\"\nmodel = \"gpt\"", "kind = \"none\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("[lm]") && err.contains("base_url"), "{err}");

    let text = common::triage_toml(
        "d.jsonl",
        "provider = \"openai\"\nmodel = \"gpt\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key_env = \"sk-live-123456\"",
        "kind = \"none\"",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("looks like a token"), "{err}");
    assert!(!err.contains("sk-live-123456"), "the error must not echo a key: {err}");
}

fn with_json_output(lm: &str, schema: &str) -> String {
    common::triage_toml("d.jsonl", lm, "kind = \"none\"").replace(
        "[signatures.triage.outputs]\n",
        &format!("[signatures.triage.outputs]\ndetails = {{ type = \"json\", schema = {schema} }}\n"),
    )
}

const ZIP_PATTERN: &str = r#"{ type = "object", properties = { zip = { type = "string", pattern = "^[0-9]{5}$" } } }"#;

#[test]
fn an_embedded_lm_rejects_a_json_schema_keyword_it_cannot_enforce() {
    let err = parse(&with_json_output(embedded(), ZIP_PATTERN)).unwrap_err().to_string();
    assert!(err.contains("pipelines/test.toml"), "{err}");
    assert!(err.contains("[signatures.triage.outputs.details.schema]"), "{err}");
    assert!(err.contains("keyword `pattern` at /properties/zip"), "{err}");
    assert!(err.contains("constrained = false"), "{err}");

    // Inside list<json> too.
    let text = with_json_output(embedded(), ZIP_PATTERN).replace("type = \"json\"", "type = \"list<json>\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("[signatures.triage.outputs.details.schema]") && err.contains("`pattern`"), "{err}");

    // An embedded teacher decodes the same outputs.
    let teacher = "kind = \"bootstrap_few_shot\"\n[optimizer.teacher]\nprovider = \"embedded\"\nmodel = \"t.gguf\"";
    let text = common::triage_toml(
        "d.jsonl",
        "provider = \"openai\"\nmodel = \"gpt\"\nbase_url = \"http://127.0.0.1:1/v1\"",
        teacher,
    )
    .replace(
        "[signatures.triage.outputs]\n",
        &format!("[signatures.triage.outputs]\ndetails = {{ type = \"json\", schema = {ZIP_PATTERN} }}\n"),
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("`pattern`"), "{err}");
}

#[test]
fn json_schemas_are_only_checked_when_decoding_enforces_them() {
    let unconstrained = format!("{}\nconstrained = false", embedded());
    parse(&with_json_output(&unconstrained, ZIP_PATTERN)).unwrap();
    let remote = "provider = \"openai\"\nmodel = \"gpt\"\nbase_url = \"http://127.0.0.1:1/v1\"";
    parse(&with_json_output(remote, ZIP_PATTERN)).unwrap();
    // What the grammar enforces loads.
    let supported = r#"{ type = "object", properties = { zip = { type = "string", maxLength = 5 }, kind = { enum = ["a", "b"] } }, required = ["zip"], additionalProperties = false }"#;
    parse(&with_json_output(embedded(), supported)).unwrap();
}

fn with_tables(tables: &str) -> String {
    format!("{}\n{tables}\n", common::triage_toml("d.jsonl", embedded(), "kind = \"none\""))
}

#[test]
fn the_worked_example_reads_its_weekly_logs() {
    let config = PipelineConfig::load(Path::new("pipelines/support-triage.toml")).unwrap();
    let source = config.source.expect("the worked example has a [source]");
    match source.location {
        SourceLocation::Files { patterns } => assert_eq!(patterns, ["./logs/support-triage/*.jsonl.gz"]),
        other => panic!("expected files, got {other:?}"),
    }
    assert_eq!(source.format.format, LogFormat::Native);
    assert_eq!(source.format.input_field, "message");
    assert_eq!(source.format.output_fields, ["queue"]);
    assert_eq!(config.signals.field, "message");
    assert_eq!(config.sample.total, 150);
}

#[test]
fn sources_are_checked_by_kind() {
    let http = parse(&with_tables(
        "[source]\nkind = \"http\"\nurl = \"https://logs.example.com/x\"\ntoken_env = \"LOGS_TOKEN\"\npaging = \"cursor\"\nformat = \"openai\"",
    ))
    .unwrap();
    match http.source.unwrap().location {
        SourceLocation::Http(h) => {
            assert_eq!(h.token_env.as_deref(), Some("LOGS_TOKEN"));
            assert_eq!(h.paging, Paging::Cursor { param: "cursor".into(), header: "x-next-cursor".into() });
        }
        other => panic!("expected http, got {other:?}"),
    }
    let cases = [
        ("[source]\nkind = \"ftp\"", "[source.kind] unknown source `ftp`; use files, http or s3"),
        ("[source]\nkind = \"files\"", "[source.paths] kind = \"files\" needs paths"),
        ("[source]\nkind = \"http\"", "[source.url] kind = \"http\" needs url"),
        ("[source]\nkind = \"http\"\nurl = \"logs.example.com\"", "must start with http:// or https://"),
        ("[source]\nkind = \"http\"\nurl = \"https://x\"\npaging = \"pages\"", "unknown paging `pages`"),
        ("[source]\nkind = \"http\"\nurl = \"https://x\"\ntoken_env = \"sk-abc.def\"", "looks like a token"),
        ("[source]\nkind = \"s3\"", "[source.bucket] kind = \"s3\" needs bucket"),
        ("[source]\nkind = \"files\"\npaths = [\"a\"]\ninput_field = \"body\"", "`body` is not an input field"),
        ("[source]\nkind = \"files\"\npaths = [\"a\"]\nformat = \"csv\"", "unknown variant `csv`"),
    ];
    for (table, expected) in cases {
        let err = parse(&with_tables(table)).unwrap_err().to_string();
        assert!(err.contains(expected), "{table}: {err}");
        assert!(err.contains("pipelines/test.toml"), "{err}");
    }
}

#[test]
fn cleaning_settings_are_validated_with_the_fix() {
    let cases = [
        ("[[anonymize.patterns]]\nname = \"order\"\nregex = \"ORD-\\\\d+\"", "must be upper case"),
        (
            "[[anonymize.patterns]]\nname = \"ORDER\"\nregex = \"ORD-(\"",
            "[anonymize.patterns[0].regex] not a valid regular expression",
        ),
        (
            "[dedup]\nthreshold = 0.5\nleak_threshold = 0.7",
            "[dedup.leak_threshold] must be above 0 and at most threshold (0.5)",
        ),
        ("[dedup]\nthreshold = 1.5", "[dedup.threshold]"),
        ("[dedup]\nnum_perm = 4", "[dedup.num_perm]"),
        ("[sample]\ncaps = { angry = 5 }", "unknown signal `angry`"),
        ("[signals]\nfield = \"body\"", "[signals.field] `body` is not an input field"),
        ("[signals]\ncaps_share = 2.0", "[signals.caps_share]"),
    ];
    for (table, expected) in cases {
        let err = parse(&with_tables(table)).unwrap_err().to_string();
        assert!(err.contains(expected), "{table}: {err}");
    }
    let config = parse(&with_tables("[[anonymize.patterns]]\nname = \"ORDER_ID\"\nregex = \"ORD-\\\\d{6}\"")).unwrap();
    assert_eq!(config.anonymize.patterns[0].name, "ORDER_ID");
    assert!(config.source.is_none(), "a pipeline without [source] still compiles and evaluates");
}

#[test]
fn a_schedule_is_posix_cron_and_errors_say_what_to_write() {
    let config = PipelineConfig::load(Path::new("pipelines/support-triage.toml")).unwrap();
    assert_eq!(config.schedule.unwrap().expression, "0 6 * * 5");
    let text = common::triage_toml("d.jsonl", embedded(), "kind = \"none\"")
        .replace("seed = 3", "seed = 3\nschedule = \"0 0 6 * * 5\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("pipelines/test.toml: [schedule]") && err.contains("6 fields"), "{err}");
}

#[test]
fn list_and_schedule_as_a_workflow_uses_them() {
    let list = assert_cmd::Command::cargo_bin("promptloop").unwrap().args(["list", "--json"]).output().unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let names: Vec<&str> = rows.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"support-triage-llamacpp") && names.contains(&"meeting-actions"), "{names:?}");
    let triage = rows.as_array().unwrap().iter().find(|r| r["name"] == "support-triage").unwrap();
    assert_eq!(triage["schedule"], "0 6 * * 5");
    assert_eq!(triage["file"], "pipelines/support-triage.toml");

    let schedule =
        assert_cmd::Command::cargo_bin("promptloop").unwrap().args(["schedule", "support-triage"]).output().unwrap();
    let stdout = String::from_utf8(schedule.stdout).unwrap();
    assert!(schedule.status.success(), "{stdout}");
    let runs: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(runs.len(), 3, "{stdout}");
    assert!(runs.iter().all(|r| r.trim_start().starts_with("Fri ") && r.ends_with("06:00 UTC")), "{stdout}");
}

#[test]
fn gate_and_publish_settings_are_read_and_checked() {
    let config = PipelineConfig::load(Path::new("pipelines/support-triage.toml")).unwrap();
    assert!(config.gate.require_interval_above_zero);
    assert_eq!(config.publish.token_env, "GITHUB_TOKEN");
    assert_eq!(config.publish.slack.channel.as_deref(), Some("#support-triage"));

    let base = std::fs::read_to_string("pipelines/support-triage.toml").unwrap();
    let base = &base[..base.find("[gate]").unwrap()];
    for (table, key, needle) in [
        ("[gate]\nmin_delta = 2.0", "[gate.min_delta]", "between -1 and 1"),
        ("[gate]\nconfidence = 1.5", "[gate.confidence]", "below 1"),
        ("[publish]\nrepository = \"just-a-name\"", "[publish.repository]", "owner/name"),
        // A token pasted where the variable's name belongs is refused, not used.
        ("[publish]\ntoken_env = \"ghp_0123456789abcdef-not/a-name\"", "[publish.token_env]", "environment variable"),
        (
            "[publish.slack]\nwebhook_env = \"https://hooks.slack.com/services/T0/B0/X\"",
            "[publish.slack.webhook_env]",
            "looks like a token",
        ),
    ] {
        let error = parse(&format!("{base}{table}\n")).unwrap_err().to_string();
        assert!(error.contains(key) && error.contains(needle), "{table}: {error}");
        assert!(!error.contains("ghp_0123") && !error.contains("hooks.slack.com"), "the value leaked: {error}");
    }
    let error = parse(&format!("{base}[publish]\nbranch = \"x\"\n")).unwrap_err().to_string();
    assert!(error.contains("branch"), "{error}");
}

#[test]
fn a_secret_pasted_into_any_env_field_is_refused_without_being_repeated() {
    let secrets = [
        "ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R",
        "xoxb-2048-1234567890-AbCdEfGhIjKlMnOp",
        "sk-proj-abc123def456",
        "AKIAIOSFODNN7EXAMPLE",
        "hooks_slack_com_T000_B000_abc123def456",
    ];
    for secret in secrets {
        let tables = [
            format!("[publish]\ntoken_env = \"{secret}\""),
            format!("[publish.slack]\nwebhook_env = \"{secret}\""),
            format!("[source]\nkind = \"http\"\nurl = \"https://x\"\ntoken_env = \"{secret}\""),
            format!("[source]\nkind = \"s3\"\nbucket = \"b\"\nsecret_key_env = \"{secret}\""),
        ];
        for table in &tables {
            let err = parse(&with_tables(table)).unwrap_err().to_string();
            assert!(err.contains("looks like a token"), "{table}: {err}");
            assert!(!err.contains(secret), "the error repeats the secret: {err}");
        }
        let text = common::triage_toml(
            "d.jsonl",
            &format!(
                "provider = \"openai\"\nmodel = \"gpt\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key_env = \"{secret}\""
            ),
            "kind = \"none\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("looks like a token") && !err.contains(secret), "{err}");
    }
    // Names are names, whatever their case; a name with a stray character says what a name is.
    for name in ["GITHUB_TOKEN", "MY_LOGS_TOKEN_2", "aws_secret_access_key", "_PRIVATE", "my_service_token_2026"] {
        assert!(parse(&with_tables(&format!("[publish]\ntoken_env = \"{name}\""))).is_ok(), "{name}");
    }
    let err = parse(&with_tables("[publish]\ntoken_env = \"MY-TOKEN\"")).unwrap_err().to_string();
    assert!(err.contains("[publish.token_env] must name an environment variable: letters, digits and `_`"), "{err}");
}

#[test]
fn a_file_that_is_not_a_pipeline_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join(".env");
    std::fs::write(&env, "OPENAI_API_KEY=sk-proj-NEVER-SHOWN\nname = \"x\"\n").unwrap();
    let err = PipelineConfig::load(&env).unwrap_err().to_string();
    assert!(err.contains("is not a pipeline file") && err.contains(".toml"), "{err}");
    assert!(!err.contains("NEVER-SHOWN"), "{err}");
    // A .toml that does not parse still says where.
    let toml = dir.path().join("broken.toml");
    std::fs::write(&toml, "name = \"x\"\n[lm\n").unwrap();
    let err = PipelineConfig::load(&toml).unwrap_err().to_string();
    assert!(err.contains("broken.toml") && err.contains("line 2"), "{err}");
}

#[test]
fn a_device_a_directory_or_an_endless_file_named_toml_is_refused_before_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    // /dev/zero would be read until memory ran out.
    let zero = dir.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let err = PipelineConfig::load(&zero).unwrap_err().to_string();
    assert!(err.contains("zero.toml is not a regular file"), "{err}");
    let folder = dir.path().join("folder.toml");
    std::fs::create_dir(&folder).unwrap();
    let err = PipelineConfig::load(&folder).unwrap_err().to_string();
    assert!(err.contains("folder.toml is not a regular file"), "{err}");
    // A huge file is refused by size, without parsing (or echoing) it.
    let huge = dir.path().join("huge.toml");
    std::fs::write(&huge, format!("name = \"huge\"\n# {}\n", "x".repeat(2 * 1024 * 1024))).unwrap();
    let err = PipelineConfig::load(&huge).unwrap_err().to_string();
    assert!(err.contains("huge.toml is larger than 1024 KiB"), "{err}");
}

#[test]
fn numbers_out_of_range_are_refused_at_load_with_the_range() {
    for (lm, expected) in [
        ("timeout_secs = 1e20", "timeout_secs = 100000000000000000000 is outside (0, 86400]"),
        ("timeout_secs = 0.0", "is outside (0, 86400]"),
        ("concurrency = 18446744073709551615", "concurrency = 18446744073709551615 is outside 1..=256"),
        ("concurrency = 0", "is outside 1..=256"),
        ("threads = 100000", "threads = 100000 is outside 1..=1024"),
    ] {
        let text = common::triage_toml(
            "d.jsonl",
            &format!("provider = \"embedded\"\nmodel = \"m.gguf\"\n{lm}"),
            "kind = \"none\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("[lm]") && err.contains(expected), "{lm}: {err}");
    }
    let err = parse(&with_tables("[source]\nkind = \"http\"\nurl = \"https://x\"\ntimeout_secs = 1e20")).unwrap_err();
    assert!(err.to_string().contains("[source.timeout_secs]"), "{err}");
}

#[test]
fn a_since_span_beyond_a_century_is_refused_not_a_panic() {
    use promptloop::logs::pull::Since;
    let err = "100000000d".parse::<Since>().unwrap_err();
    assert!(err.contains("more than 36525 days") && err.contains("`all`"), "{err}");
    assert!("9223372036854775807w".parse::<Since>().is_err());
    assert!(matches!("36525d".parse::<Since>(), Ok(Since::Ago(_))));
}

#[test]
fn a_pipeline_name_is_a_slug_equal_to_its_files_stem() {
    let named = |name: &str| {
        common::triage_toml("d.jsonl", "provider = \"embedded\"\nmodel = \"m.gguf\"", "kind = \"none\"").replacen(
            "name = \"mini-triage\"",
            &format!("name = {}", toml_string(name)),
            1,
        )
    };
    for bad in ["..", ".", "", "a\nb", "a\u{1b}[31m", "../escape", "-leading", "with space", &"x".repeat(65)] {
        let err = parse(&named(bad)).unwrap_err().to_string();
        assert!(err.contains("[name]") && err.contains("is not a usable pipeline name"), "{bad:?}: {err}");
        assert!(!err.contains('\n') && !err.contains('\u{1b}'), "the name is shown escaped: {err}");
    }
    for good in ["support-triage", "queues7", "A_b-9"] {
        assert!(parse(&named(good)).is_ok(), "{good}");
    }
    // Loaded from a file, the name must be the file's stem.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("other-name.toml");
    std::fs::write(&file, named("support-triage")).unwrap();
    let err = PipelineConfig::load(&file).unwrap_err().to_string();
    assert!(err.contains("[name] `support-triage` differs from the file's name `other-name`"), "{err}");
    std::fs::write(&file, named("other-name")).unwrap();
    assert_eq!(PipelineConfig::load(&file).unwrap().name, "other-name");
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[test]
fn list_reports_a_broken_pipeline_and_still_lists_the_others() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    let good = common::triage_toml("d.jsonl", embedded(), "kind = \"none\"");
    std::fs::write(dir.path().join("pipelines/mini-triage.toml"), &good).unwrap();
    std::fs::write(dir.path().join("pipelines/broken.toml"), "name = \"broken\"\n[lm\n").unwrap();
    let list = assert_cmd::Command::cargo_bin("promptloop")
        .unwrap()
        .args(["--root", dir.path().to_str().unwrap(), "list", "--json"])
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0]["name"].as_str(), rows[0]["schedule"].is_null()), (Some("broken"), true));
    assert!(rows[0]["error"].as_str().unwrap().contains("line 2"), "{rows:?}");
    assert_eq!(rows[1]["name"], "mini-triage");
    assert!(rows[1].get("error").is_none());
    let warned = String::from_utf8_lossy(&list.stderr);
    assert!(warned.contains("broken.toml is broken and will not run"), "{warned}");
}

#[test]
fn optimizer_sizes_are_bounded_at_load() {
    for (optimizer, expected) in [
        (
            "kind = \"bootstrap_random_search\"\nnum_candidates = 1000000000",
            "[optimizer.num_candidates] 1000000000 is above the most allowed, 1000",
        ),
        (
            "kind = \"mipro_v2\"\n[optimizer.mipro_v2]\nnum_trials = 99999999",
            "[optimizer.mipro_v2.num_trials] 99999999 is above",
        ),
        ("kind = \"gepa\"\n[optimizer.gepa]\niterations = 1000000", "[optimizer.gepa.iterations] 1000000 is above"),
    ] {
        let err = parse(&common::triage_toml("d.jsonl", embedded(), optimizer)).unwrap_err().to_string();
        assert!(err.contains(expected), "{optimizer}: {err}");
    }
    assert!(
        parse(&common::triage_toml("d.jsonl", embedded(), "kind = \"bootstrap_random_search\"\nnum_candidates = 1000"))
            .is_ok()
    );
}

/// The worked example's pipeline with another `[lm]` table.
fn support_triage_with(lm: &str) -> String {
    let text = std::fs::read_to_string("pipelines/support-triage.toml").unwrap();
    let start = text.find("[lm]\n").unwrap();
    let end = start + text[start..].find("\n[source]").unwrap();
    format!("{}[lm]\n{lm}\n{}", &text[..start], &text[end..])
}

#[test]
fn a_max_tokens_too_small_for_the_reply_is_refused_at_load_with_the_minimum() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join(promptloop::lm::local::DEFAULT_MODEL_PATH);
    assert!(model.is_file(), "no model at {}; run scripts/setup-model.sh", model.display());
    let lm = |max_tokens: u32| format!("provider = \"embedded\"\nmodel = {:?}\nmax_tokens = {max_tokens}", model);
    let load = |max_tokens| {
        PipelineConfig::parse(&support_triage_with(&lm(max_tokens)), Path::new("pipelines/support-triage.toml"))
    };
    // Counted with the model's own tokenizer: the two field markers and the
    // shortest queue name. 16 leaves room for them (a longer queue name may
    // still be cut, and is then counted); 8 cannot hold any reply.
    assert!(load(16).is_ok());
    let err = load(8).unwrap_err().to_string();
    insta::assert_snapshot!("max_tokens_too_small_with_the_tokenizer", err);
    let needed: u32 = err.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(load(needed).is_ok(), "the minimum it names is enough to load");
    assert!(load(needed - 1).is_err());

    // Chain of thought adds the reasoning marker; the teacher is checked too.
    let cot = support_triage_with(&lm(64)).replace("module = \"predict\"", "module = \"chain_of_thought\"");
    let teacher = cot.replace(
        "[optimizer]\n",
        &format!("[optimizer]\nteacher = {{ provider = \"embedded\", model = {model:?}, max_tokens = 20 }}\n"),
    );
    let err = PipelineConfig::parse(&teacher, Path::new("pipelines/support-triage.toml")).unwrap_err().to_string();
    assert!(err.starts_with("pipelines/support-triage.toml: [optimizer.teacher] max_tokens = 20 is too small for the reply of predictor `route`"), "{err}");

    // Without the model file: a lower bound from the reply's bytes, which
    // refuses only budgets nothing could fit in.
    let missing = |max_tokens: u32| {
        let lm = format!("provider = \"embedded\"\nmodel = \"no/such/model.gguf\"\nmax_tokens = {max_tokens}");
        PipelineConfig::parse(&support_triage_with(&lm), Path::new("pipelines/support-triage.toml"))
    };
    assert!(missing(16).is_ok());
    insta::assert_snapshot!("max_tokens_too_small_without_the_tokenizer", missing(2).unwrap_err().to_string());

    // A remote model may answer with the bare value: one token can be enough.
    let openai = "provider = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\nmax_tokens = 1";
    assert!(PipelineConfig::parse(&support_triage_with(openai), Path::new("pipelines/support-triage.toml")).is_ok());
}

// ---- [metric] kinds ----------------------------------------------------------

/// A pipeline with a `list<json>` output `action_items` and the `[metric]` table given.
fn with_metric(metric: &str) -> String {
    common::triage_toml("d.jsonl", "provider = \"openai\"\nmodel = \"m\"\nbase_url = \"http://127.0.0.1:9/v1\"", "kind = \"none\"")
        .replace(
            "[signatures.triage.outputs]\n",
            "[signatures.triage.outputs]\naction_items = { type = \"list<json>\", schema = { type = \"object\", properties = { action = { type = \"string\" }, owner = { type = \"string\" }, due_date = { type = [\"string\", \"null\"] } }, required = [\"action\", \"owner\", \"due_date\"] } }\n",
        )
        .replace("[metric]\nkind = \"exact_match\"\nfields = [\"queue\"]\n", metric)
}

#[test]
fn every_metric_kind_parses() {
    let config =
        parse(&with_metric("[metric]\nkind = \"json_match\"\nfield = \"action_items\"\nweights = { owner = 2.0 }\n"))
            .unwrap();
    match &config.metric {
        MetricConfig::JsonMatch { field, schema, weights } => {
            assert_eq!(field, "action_items");
            let schema = schema.as_ref().expect("the schema comes from the signature");
            assert_eq!(schema["type"], "array");
            assert_eq!(schema["items"]["required"][2], "due_date");
            assert_eq!(weights["owner"], 2.0);
        }
        other => panic!("{other:?}"),
    }

    let config = parse(&with_metric(
        "[metric]\nkind = \"judge\"\nfield = \"queue\"\nrubric = \"Right queue?\"\nscale = \"1-5\"\n[metric.lm]\nprovider = \"embedded\"\nmodel = \"judge.gguf\"\n",
    ))
    .unwrap();
    match &config.metric {
        MetricConfig::Judge { field, scale, lm, .. } => {
            assert_eq!(field.as_deref(), Some("queue"));
            assert_eq!(*scale, promptloop::config::JudgeScale::FivePoint);
            assert_eq!(Path::new(&lm.model), Path::new("./judge.gguf"), "resolved from the repository root");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(config.metric.judge_lms().len(), 1);

    let config =
        parse(&with_metric("[metric]\nkind = \"command\"\ncommand = [\"python3\", \"scripts/rubric.py\"]\n")).unwrap();
    match &config.metric {
        MetricConfig::Command { field, command, dir, timeout_secs } => {
            assert_eq!(field, &None);
            assert_eq!(command, &["python3", "scripts/rubric.py"]);
            assert_eq!(dir, Path::new("."), "commands run from the repository root");
            assert_eq!(*timeout_secs, 30.0);
        }
        other => panic!("{other:?}"),
    }
    assert!(config.metric.fields().is_empty(), "a command without a field requires none");

    let config = parse(&with_metric(
        r#"[metric]
kind = "weighted"

[[metric.parts]]
kind = "exact_match"
fields = ["queue"]
weight = 2

[[metric.parts]]
name = "items"
kind = "json_match"
field = "action_items"
weight = 1

[[metric.parts]]
kind = "command"
field = "queue"
command = ["./score"]
timeout_secs = 5
weight = 0.5
"#,
    ))
    .unwrap();
    let MetricConfig::Weighted { parts } = &config.metric else { panic!("{:?}", config.metric) };
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[1].name.as_deref(), Some("items"));
    assert_eq!(config.metric.fields(), ["queue", "action_items"], "each output the parts score, once");
    assert_eq!(
        promptloop::metric::name(&config.metric),
        "weighted(2 × exact_match(queue), 1 × items, 0.5 × command(./score; queue))"
    );
}

#[test]
fn metric_config_errors_name_the_key_and_the_fix() {
    let cases = [
        ("unknown kind", "[metric]\nkind = \"bleu\"\nfield = \"queue\"\n"),
        ("json_match without field", "[metric]\nkind = \"json_match\"\n"),
        ("field not an output", "[metric]\nkind = \"json_match\"\nfield = \"items\"\n"),
        (
            "key weight not above 0",
            "[metric]\nkind = \"json_match\"\nfield = \"action_items\"\nweights = { owner = 0 }\n",
        ),
        (
            "judge without rubric",
            "[metric]\nkind = \"judge\"\n[metric.lm]\nprovider = \"embedded\"\nmodel = \"j.gguf\"\n",
        ),
        ("judge without lm", "[metric]\nkind = \"judge\"\nrubric = \"Polite?\"\n"),
        (
            "judge lm invalid",
            "[metric]\nkind = \"judge\"\nrubric = \"Polite?\"\n[metric.lm]\nprovider = \"openai\"\nmodel = \"gpt\"\n",
        ),
        (
            "judge unknown scale",
            "[metric]\nkind = \"judge\"\nrubric = \"Polite?\"\nscale = \"1-10\"\n[metric.lm]\nprovider = \"embedded\"\nmodel = \"j.gguf\"\n",
        ),
        ("empty command", "[metric]\nkind = \"command\"\ncommand = []\n"),
        ("blank program", "[metric]\nkind = \"command\"\ncommand = [\" \", \"x.py\"]\n"),
        ("timeout zero", "[metric]\nkind = \"command\"\ncommand = [\"./score\"]\ntimeout_secs = 0\n"),
        ("timeout too long", "[metric]\nkind = \"command\"\ncommand = [\"./score\"]\ntimeout_secs = 86400\n"),
        ("setting of another kind", "[metric]\nkind = \"token_f1\"\nfield = \"queue\"\nrubric = \"Polite?\"\n"),
        ("weight outside parts", "[metric]\nkind = \"exact_match\"\nfields = [\"queue\"]\nweight = 1\n"),
        ("weighted without parts", "[metric]\nkind = \"weighted\"\n"),
        (
            "part weight zero",
            "[metric]\nkind = \"weighted\"\n[[metric.parts]]\nkind = \"exact_match\"\nfields = [\"queue\"]\nweight = 0\n",
        ),
        (
            "part without weight",
            "[metric]\nkind = \"weighted\"\n[[metric.parts]]\nkind = \"exact_match\"\nfields = [\"queue\"]\n",
        ),
        ("part with unknown kind", "[metric]\nkind = \"weighted\"\n[[metric.parts]]\nkind = \"rouge\"\nweight = 1\n"),
        ("nested weighted", "[metric]\nkind = \"weighted\"\n[[metric.parts]]\nkind = \"weighted\"\nweight = 1\n"),
        (
            "part's field not an output",
            "[metric]\nkind = \"weighted\"\n[[metric.parts]]\nkind = \"token_f1\"\nfield = \"answer\"\nweight = 1\n",
        ),
        ("unknown key", "[metric]\nkind = \"command\"\ncommand = [\"./score\"]\nshell = true\n"),
    ];
    let mut out = String::new();
    for (what, metric) in cases {
        let err = parse(&with_metric(metric)).expect_err(what);
        out.push_str(&format!("{what}:\n  {}\n", format!("{err:#}").replace('\n', "\n  ")));
    }
    insta::assert_snapshot!("metric_config_errors", out);
}
