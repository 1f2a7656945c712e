//! Programs as graphs: stages reading earlier outputs, routers by the signal
//! detector or by a predictor's enum output, per-slice optimization of the
//! handlers, the mistakes a declaration can make, and the artifact diff of
//! one changed handler.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use promptloop::config::{PipelineConfig, SplitFractions};
use promptloop::dataset::{Dataset, Example};
use promptloop::lm::budget::{LmRole, Meter, Prices};
use promptloop::lm::{Lm, LmRequest};
use promptloop::logs::signals::SignalDetector;
use promptloop::optimize::{OptimizeContext, Start, build, optimize};
use promptloop::program::Program;
use promptloop::program::artifact::{Artifact, DatasetProvenance, LmSettings, Provenance, Scores};
use promptloop::program::graph::Route;
use serde_json::{Map, Value, json};

mod common;
use common::{ScriptedLm, last_input, reply};

/// A support router: the detector picks one of three reply handlers.
fn router_toml(optimizer: &str) -> String {
    format!(
        r#"name = "router"
seed = 3

[lm]
provider = "embedded"
model = "m.gguf"

[dataset]
path = "unused.jsonl"

[signatures.reply_routine]
instructions = "Answer a routine message briefly."
[signatures.reply_routine.inputs]
message = {{ type = "string" }}
[signatures.reply_routine.outputs]
reply = {{ type = "string" }}

[signatures.reply_urgent]
instructions = "Answer an urgent message with the fastest next step."
[signatures.reply_urgent.inputs]
message = {{ type = "string" }}
[signatures.reply_urgent.outputs]
reply = {{ type = "string" }}

[signatures.reply_escalating]
instructions = "Acknowledge the frustration, name the failure, propose a next step."
[signatures.reply_escalating.inputs]
message = {{ type = "string" }}
[signatures.reply_escalating.outputs]
reply = {{ type = "string" }}

[[program.stages]]
name = "handlers"
route_by = "detector"

[program.stages.branches.routine]
signature = "reply_routine"
[program.stages.branches.urgent]
signature = "reply_urgent"
[program.stages.branches.escalating]
signature = "reply_escalating"
module = "chain_of_thought"

[metric]
kind = "exact_match"
fields = ["reply"]

[optimizer]
{optimizer}
"#
    )
}

fn artifact_of(program: &Program) -> Artifact {
    let lm = LmSettings {
        model: promptloop::lm::LmDescription {
            provider: "scripted".into(),
            model: "test".into(),
            endpoint: None,
            constrained_decoding: false,
            response_format: None,
        },
        temperature: 0.0,
        max_tokens: 64,
        adapter: promptloop::config::AdapterFormat::Chat,
    };
    let provenance = Provenance {
        tool: "promptloop test".into(),
        seed: 3,
        optimizer: json!({"kind": "none"}),
        dataset: DatasetProvenance {
            path: "d.jsonl".into(),
            sha256: "0".into(),
            examples: 0,
            train: 0,
            dev: 0,
            test: 0,
        },
        candidates: Vec::new(),
    };
    Artifact::from_program(program, "router", lm, provenance, Scores::default())
}

fn parse(text: &str) -> anyhow::Result<PipelineConfig> {
    PipelineConfig::parse(text, Path::new("pipelines/router.toml"))
}

/// Messages of each signal, with the reply a handler should give: `routine`,
/// `urgent` or `escalating` followed by the message's number.
fn examples(routine: usize, urgent: usize, escalating: usize) -> Vec<Example> {
    let mut out = Vec::new();
    let mut push = |i: usize, message: String, label: &str| {
        out.push(Example {
            id: format!("ex-{i:03}"),
            inputs: [("message".to_string(), Value::String(message))].into_iter().collect(),
            outputs: [("reply".to_string(), Value::String(format!("{label} {i}")))].into_iter().collect(),
            extra: Map::new(),
        });
    };
    let mut i = 0;
    for _ in 0..routine {
        push(i, format!("How do I change the address on my account, case {i}?"), "routine");
        i += 1;
    }
    for _ in 0..urgent {
        push(i, format!("Urgent: my card was blocked at the till, case {i}, please help asap"), "urgent");
        i += 1;
    }
    for _ in 0..escalating {
        push(
            i,
            format!("This is the third time I've asked about case {i}. I want to speak to a manager."),
            "escalating",
        );
        i += 1;
    }
    out
}

fn signal_of(config: &PipelineConfig, message: &str) -> String {
    SignalDetector::new(&config.signals).read(message, &[]).label.name().to_string()
}

/// Right on every message: the reply names the message's signal and number.
fn right(config: &PipelineConfig) -> Arc<ScriptedLm> {
    answers(config, false)
}

/// Right only when shown demos (else "no idea"), so demos are worth learning.
fn right_with_demos(config: &PipelineConfig) -> Arc<ScriptedLm> {
    answers(config, true)
}

fn answers(config: &PipelineConfig, needs_demos: bool) -> Arc<ScriptedLm> {
    let signals = config.signals.clone();
    ScriptedLm::new(move |req| {
        if needs_demos && !req.messages.iter().any(|m| m.role == promptloop::lm::Role::Assistant) {
            return reply(req, "reply", "no idea");
        }
        let message = last_input(req, "message");
        let label = SignalDetector::new(&signals).read(&message, &[]).label.name().to_string();
        let number: String = message.chars().filter(|c| c.is_ascii_digit()).collect();
        let number = number.trim_start_matches('0');
        let number = if number.is_empty() { "0" } else { number };
        if req.template.as_ref().is_some_and(|t| format!("{t:?}").contains("reasoning"))
            || req.messages[0].content.contains("reasoning")
        {
            return format!(
                "[[ ## reasoning ## ]]\nIt is {label}.\n\n[[ ## reply ## ]]\n{label} {number}\n\n[[ ## completed ## ]]"
            );
        }
        reply(req, "reply", &format!("{label} {number}"))
    })
}

fn context(lm: Arc<ScriptedLm>, min_slice: usize) -> OptimizeContext {
    let lm = Lm::new(lm, None, 4).metered(Arc::new(Meter::new()), LmRole::Task, Prices::default());
    let metric = Arc::new(promptloop::metric::ExactMatch { fields: vec!["reply".into()] });
    OptimizeContext { min_slice_examples: min_slice, ..common::optimize_context(lm, metric, 64, 4) }
}

#[test]
fn stages_and_branches_get_dotted_paths_in_graph_order() {
    let config = parse(&router_toml("kind = \"none\"")).unwrap();
    let paths: Vec<&str> = config.predictors.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(paths, ["handlers.routine", "handlers.urgent", "handlers.escalating"]);
    let program = config.baseline();
    assert_eq!(program.graph.routers().len(), 1);
    assert_eq!(program.graph.branches_of(2)[0].0.path, "handlers");
    // The program's final outputs, which a pulled reference must hold: not the
    // router's `signal` nor the extractor's draft, which later stages read.
    assert_eq!(config.outputs, ["reply"]);
    assert_eq!(parse(&predictor_router_toml()).unwrap().outputs, ["reply"]);
    let meetings = PipelineConfig::load(Path::new("pipelines/meeting-actions.toml")).unwrap();
    assert_eq!(meetings.outputs, ["meeting_type", "actions"]);
    // One branch runs per input: projections and budget reservations count one handler.
    assert_eq!(program.calls_per_run(), 1);
    assert_eq!(parse(&predictor_router_toml()).unwrap().baseline().calls_per_run(), 2);
    // A react stage may take every step and then answer; then the stage after it.
    assert_eq!(parse(&react_toml()).unwrap().baseline().calls_per_run(), 3 + 1 + 1);
    // But bootstrapping must find demos in each branch's own slice: the
    // teacher's projection grows with the branches.
    assert_eq!(program.graph.demo_groups(), 3);
    assert_eq!(meetings.baseline().graph.demo_groups(), 1);
    let settings = promptloop::optimize::bootstrap::BootstrapSettings {
        max_bootstrapped_demos: 2,
        max_labeled_demos: 2,
        max_rounds: 1,
        metric_threshold: 1.0,
    };
    assert_eq!(settings.teacher_calls(&program, 1000), 3 * 2 * 3);
    assert_eq!(settings.teacher_calls(&meetings.baseline(), 1000), 3 * 2);
    assert_eq!(settings.teacher_calls(&program, 10), 10, "never more runs than train examples");
}

#[tokio::test]
async fn the_detector_routes_each_message_to_one_handler() {
    let config = parse(&router_toml("kind = \"none\"")).unwrap();
    let lm = right(&config);
    let ctx = context(lm.clone(), 10);
    let program = config.baseline();
    for example in examples(1, 1, 1) {
        let message = example.inputs["message"].as_str().unwrap();
        let signal = signal_of(&config, message);
        let before = lm.calls();
        let run = program.run(&ctx.student.settings, &example.inputs, None).await.unwrap();
        assert_eq!(run.stats.routes, [Route { router: "handlers".into(), branch: signal.clone() }]);
        assert_eq!(lm.calls(), before + 1, "exactly one handler runs");
        let trace: Vec<&str> = run.trace.iter().map(|s| s.predictor.as_str()).collect();
        assert_eq!(trace, [format!("handlers.{signal}")]);
        let sent = &lm.requests.lock().unwrap()[before];
        let instructions = &config.signatures[&format!("reply_{signal}")].instructions;
        assert!(sent.messages[0].content.contains(instructions.as_str()), "{signal}: {}", sent.messages[0].content);
        assert_eq!(run.prediction.unwrap()["reply"], example.outputs["reply"]);
    }
}

/// The same router decided by a predictor: `detect` writes `signal`.
fn predictor_router_toml() -> String {
    router_toml("kind = \"none\"")
        .replace(
            "[[program.stages]]\nname = \"handlers\"\nroute_by = \"detector\"",
            r#"[[program.stages]]
name = "detect"
signature = "detect"

[[program.stages]]
name = "handlers"
route_by = "signal"
default = "routine""#,
        )
        .replace(
            "[signatures.reply_routine]",
            r#"[signatures.detect]
instructions = "How does the customer write?"
[signatures.detect.inputs]
message = { type = "string" }
[signatures.detect.outputs]
signal = { type = "enum", values = ["routine", "urgent", "escalating"] }

[signatures.reply_routine]"#,
        )
}

#[tokio::test]
async fn a_predictors_enum_output_routes_and_its_output_is_part_of_the_prediction() {
    let config = parse(&predictor_router_toml()).unwrap();
    let paths: Vec<&str> = config.predictors.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(paths, ["detect", "handlers.routine", "handlers.urgent", "handlers.escalating"]);
    // The detector model calls everything urgent, whatever the rules would say.
    let lm = ScriptedLm::new(|req: &LmRequest| {
        if req.messages[0].content.contains("How does the customer write?") {
            reply(req, "signal", "urgent")
        } else {
            reply(req, "reply", "on it")
        }
    });
    let ctx = context(lm.clone(), 10);
    let program = config.baseline();
    let example = &examples(1, 0, 0)[0];
    let run = program.run(&ctx.student.settings, &example.inputs, None).await.unwrap();
    assert_eq!(run.stats.routes, [Route { router: "handlers".into(), branch: "urgent".into() }]);
    let trace: Vec<&str> = run.trace.iter().map(|s| s.predictor.as_str()).collect();
    assert_eq!(trace, ["detect", "handlers.urgent"]);
    assert_eq!(run.prediction.unwrap(), json!({"signal": "urgent", "reply": "on it"}).as_object().unwrap().clone());
}

#[tokio::test]
async fn each_handler_learns_only_from_its_slice_and_a_small_slice_is_kept_as_it_is() {
    let config = parse(&router_toml(
        "kind = \"bootstrap_random_search\"\nnum_candidates = 3\nmax_bootstrapped_demos = 2\nmax_labeled_demos = 3",
    ))
    .unwrap();
    // Routine and escalating have plenty of examples; urgent has too few to learn from.
    let all = examples(60, 4, 40);
    let dataset = Dataset::from_examples(all.clone(), &SplitFractions::default(), "h".into());
    let slice_of = |id: &str| {
        let e = all.iter().find(|e| e.id == id).unwrap();
        signal_of(&config, e.inputs["message"].as_str().unwrap())
    };
    let lm = right_with_demos(&config);
    let ctx = context(lm.clone(), 10);
    let start = Start { production: config.baseline(), declared: config.baseline() };
    let optimizer = build(&config.optimizer);
    let result = optimize(&*optimizer, &start, dataset.train(), dataset.dev(), &ctx).await.unwrap();

    // Every demo of a handler, bootstrapped or labeled, comes from its own slice.
    let mut shown = 0;
    for predictor in &result.program.predictors {
        let branch = predictor.name.strip_prefix("handlers.").unwrap();
        for demo in &predictor.demos {
            assert_eq!(slice_of(&demo.example_id), branch, "{} shows {}", predictor.name, demo.example_id);
            shown += 1;
        }
    }
    assert!(shown > 0, "the handlers learned demos");
    // So does every demo of every candidate the handlers' prompts were sent with.
    for req in lm.requests.lock().unwrap().iter() {
        let handler = ["routine", "urgent", "escalating"]
            .into_iter()
            .find(|s| req.messages[0].content.contains(&config.signatures[&format!("reply_{s}")].instructions))
            .unwrap();
        let message = last_input(req, "message");
        assert_eq!(signal_of(&config, &message), handler, "a {handler} prompt answered another slice's message");
    }

    // The report's slice sizes are the slices' sizes.
    let count = |split: &[Example], s: &str| split.iter().filter(|e| slice_of(&e.id) == s).count();
    for slice in &result.slices {
        assert_eq!(slice.router, "handlers");
        assert_eq!(slice.train, count(dataset.train(), &slice.branch), "{}", slice.branch);
        assert_eq!(slice.dev, count(dataset.dev(), &slice.branch), "{}", slice.branch);
    }
    let urgent = result.slices.iter().find(|s| s.branch == "urgent").unwrap();
    assert!(!urgent.optimized, "{urgent:?}");
    assert_eq!(result.program.predictor("handlers.urgent"), start.production.predictor("handlers.urgent"));
    assert!(
        result.notes.notes.iter().any(|n| n.contains("`handlers.urgent` kept as it is")),
        "{:?}",
        result.notes.notes
    );
    let escalating = result.slices.iter().find(|s| s.branch == "escalating").unwrap();
    assert!(escalating.optimized && escalating.train >= 10);
}

#[test]
fn graph_mistakes_are_refused_at_load_with_the_key_and_the_fix() {
    let base = router_toml("kind = \"none\"");
    let cases: Vec<(&str, String)> = vec![
        (
            "a field read before anything writes it",
            predictor_router_toml().replace(
                "[signatures.detect.inputs]\nmessage = { type = \"string\" }",
                "[signatures.detect.inputs]\nmessage = { type = \"string\" }\nreply = { type = \"string\" }",
            ),
        ),
        (
            "an unknown field with declared inputs",
            base.replace("[[program.stages]]", "[program]\ninputs = [\"text\"]\n\n[[program.stages]]"),
        ),
        ("routing by a field nothing writes", base.replace("route_by = \"detector\"", "route_by = \"mood\"")),
        ("routing by a field that is not an enum", {
            predictor_router_toml().replace(
                "signal = { type = \"enum\", values = [\"routine\", \"urgent\", \"escalating\"] }",
                "signal = { type = \"string\" }",
            )
        }),
        (
            "a value without a handler",
            base.replace("[program.stages.branches.urgent]\nsignature = \"reply_urgent\"\n", ""),
        ),
        (
            "a branch without a handler",
            base.replace("[program.stages.branches.urgent]\nsignature = \"reply_urgent\"", "[program.stages.branches.urgent]"),
        ),
        (
            "a branch for a value the field never takes",
            base.replace("[program.stages.branches.urgent]", "[program.stages.branches.angry]\nsignature = \"reply_urgent\"\n[program.stages.branches.urgent]"),
        ),
        ("a default that is not a branch", base.replace("route_by = \"detector\"", "route_by = \"detector\"\ndefault = \"calm\"")),
        (
            "branches writing different fields",
            base.replace(
                "[signatures.reply_urgent.outputs]\nreply = { type = \"string\" }",
                "[signatures.reply_urgent.outputs]\nanswer = { type = \"string\" }",
            ),
        ),
        (
            "a duplicate path",
            base.replace(
                "[[program.stages]]\nname = \"handlers\"",
                "[[program.stages]]\nname = \"handlers\"\nsignature = \"reply_routine\"\n\n[[program.stages]]\nname = \"handlers\"",
            ),
        ),
        ("a field written twice", {
            base.replace(
                "[[program.stages]]\nname = \"handlers\"",
                "[[program.stages]]\nname = \"draft\"\nsignature = \"reply_routine\"\n\n[[program.stages]]\nname = \"handlers\"",
            )
        }),
        ("a dotted stage name", base.replace("name = \"handlers\"", "name = \"handlers.all\"")),
        ("both forms at once", base.replace("[[program.stages]]", "[[program.predictors]]\nname = \"a\"\nsignature = \"reply_routine\"\n\n[[program.stages]]")),
    ];
    let mut report = String::new();
    for (what, text) in cases {
        let error = format!("{:#}", parse(&text).expect_err(what));
        assert!(error.contains("pipelines/router.toml"), "{what}: {error}");
        report.push_str(&format!("{what}:\n  {error}\n"));
    }
    insta::assert_snapshot!(report);
}

#[test]
fn a_sub_sequence_branch_reads_its_own_earlier_stages_and_gets_nested_paths() {
    let text = router_toml("kind = \"none\"").replace(
        "[program.stages.branches.escalating]\nsignature = \"reply_escalating\"\nmodule = \"chain_of_thought\"",
        r#"[[program.stages.branches.escalating.stages]]
name = "draft"
signature = "draft"
[[program.stages.branches.escalating.stages]]
name = "polish"
signature = "polish""#,
    ) + r#"
[signatures.draft]
instructions = "Draft."
[signatures.draft.inputs]
message = { type = "string" }
[signatures.draft.outputs]
draft = { type = "string" }

[signatures.polish]
instructions = "Polish."
[signatures.polish.inputs]
draft = { type = "string" }
[signatures.polish.outputs]
reply = { type = "string" }
"#;
    // TOML tables must come before the appended signatures' position does not matter.
    let config = parse(&text).unwrap();
    let paths: Vec<&str> = config.predictors.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        paths,
        ["handlers.routine", "handlers.urgent", "handlers.escalating.draft", "handlers.escalating.polish"]
    );
}

#[test]
fn the_artifact_keys_are_the_paths_and_its_diff_shows_the_one_handler_that_changed() {
    let config = parse(&router_toml("kind = \"none\"")).unwrap();
    let production = config.baseline();
    let mut candidate = production.clone();
    let urgent = candidate.predictors.iter_mut().find(|p| p.name == "handlers.urgent").unwrap();
    urgent.instructions = "Answer an urgent message with the fastest next step, and say how long it takes.".into();

    let artifact = artifact_of(&candidate);
    let keys: Vec<&String> = artifact.predictors.keys().collect();
    assert_eq!(keys, ["handlers.routine", "handlers.urgent", "handlers.escalating"]);
    assert_eq!(artifact.program_on(&production), candidate, "the artifact loads back onto the graph");

    let diff = promptloop::report::diff::unified(
        &promptloop::report::diff::program_text(&production),
        &promptloop::report::diff::program_text(&candidate),
    );
    assert_eq!(diff.lines().filter(|l| l.starts_with("@@")).count(), 1, "{diff}");
    let changed: Vec<&str> = diff
        .lines()
        .filter(|l| (l.starts_with('+') || l.starts_with('-')) && !l.starts_with("+++") && !l.starts_with("---"))
        .collect();
    assert_eq!(changed.len(), 2, "{diff}");
    assert!(diff.contains(" ## handlers.urgent\n instructions:\n-"), "{diff}");
    insta::assert_snapshot!(diff);
}

#[test]
fn an_artifact_from_before_a_handler_existed_loads_with_that_handler_as_declared() {
    let config = parse(&router_toml("kind = \"none\"")).unwrap();
    let declared = config.baseline();
    let mut old = declared.clone();
    old.predictors.retain(|p| p.name != "handlers.urgent");
    old.predictors[0].instructions = "Be brief.".into();
    let artifact = artifact_of(&old);
    let loaded = artifact.program_on(&declared);
    assert_eq!(loaded.predictor("handlers.routine").unwrap().instructions, "Be brief.");
    assert_eq!(loaded.predictor("handlers.urgent"), declared.predictor("handlers.urgent"));
    let seen: HashSet<&str> = loaded.predictors.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(seen.len(), 3);
}

/// A react stage that looks the weather up, then a stage that reads its answer.
fn react_toml() -> String {
    r#"name = "weather"
[lm]
provider = "embedded"
model = "m.gguf"
[dataset]
path = "unused.jsonl"

[tools.weather]
kind = "command"
description = "The current weather in a city, as JSON."
command = ["tests/data/tools/weather.py"]
timeout_secs = 10
args = { city = { type = "string", description = "the city's name" } }

[signatures.answer]
instructions = "Answer the user's question about the weather."
[signatures.answer.inputs]
question = { type = "string" }
[signatures.answer.outputs]
answer = { type = "string" }

[signatures.tone]
instructions = "Is the answer good news?"
[signatures.tone.inputs]
answer = { type = "string" }
[signatures.tone.outputs]
good = { type = "bool" }

[[program.stages]]
name = "agent"
signature = "answer"
module = "react"
max_steps = 3

[[program.stages]]
name = "tone"
signature = "tone"

[metric]
kind = "exact_match"
fields = ["answer"]

[optimizer]
kind = "none"
"#
    .to_string()
}

#[tokio::test]
async fn a_react_stage_calls_its_tool_and_a_later_stage_reads_its_answer() {
    let config = parse(&react_toml()).unwrap();
    let paths: Vec<&str> = config.predictors.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(paths, ["agent.react", "agent.extract", "tone"]);
    let lm = ScriptedLm::new(|req: &LmRequest| {
        let system = &req.messages[0].content;
        if system.contains("`next_tool_name`") {
            let last = &req.messages.last().unwrap().content;
            return if last.contains("observation_0") {
                "[[ ## next_thought ## ]]\nI know.\n\n[[ ## next_tool_name ## ]]\nfinish\n\n[[ ## next_tool_args ## ]]\n{}\n\n[[ ## completed ## ]]".into()
            } else {
                "[[ ## next_thought ## ]]\nLook it up.\n\n[[ ## next_tool_name ## ]]\nweather\n\n[[ ## next_tool_args ## ]]\n{\"city\": \"Oslo\"}\n\n[[ ## completed ## ]]".into()
            };
        }
        if system.contains("Is the answer good news?") {
            return reply(req, "good", "true");
        }
        "[[ ## reasoning ## ]]\nThe tool said clear.\n\n[[ ## answer ## ]]\nclear, 21 C\n\n[[ ## completed ## ]]".into()
    });
    let mut ctx = context(lm.clone(), 10);
    let tools = promptloop::program::tool::Tools::new(config.tools.clone(), None).unwrap();
    ctx.student.settings.tools = Some(Arc::new(tools));
    let program = config.baseline();
    let inputs: Map<String, Value> = [("question".to_string(), json!("Weather in Oslo?"))].into_iter().collect();
    let run = program.run(&ctx.student.settings, &inputs, None).await.unwrap();
    assert_eq!(run.stats.error, None);
    let trace: Vec<&str> = run.trace.iter().map(|s| s.predictor.as_str()).collect();
    assert_eq!(trace, ["agent.react", "agent.react", "agent.extract", "tone"]);
    assert_eq!(run.stats.tool_calls, 1);
    // The tool call is in the trajectory the second step and the extract step read: what a demo shows.
    let trajectory = run.trace[2].inputs["trajectory"].as_str().unwrap();
    assert!(trajectory.contains("weather") && trajectory.contains("\"temp_c\":21"), "{trajectory}");
    let prediction = run.prediction.unwrap();
    assert_eq!(prediction["answer"], "clear, 21 C");
    assert_eq!(prediction["good"], true);
}

#[test]
fn a_react_stage_needs_declared_tools() {
    let no_tool = react_toml().replace("max_steps = 3", "max_steps = 3\ntools = [\"search\"]");
    let error = format!("{:#}", parse(&no_tool).unwrap_err());
    assert!(error.contains("[program.stages[0].tools] tool `search` is not declared; declared: weather"), "{error}");
    let too_many = react_toml().replace("max_steps = 3", "max_steps = 500");
    let error = format!("{:#}", parse(&too_many).unwrap_err());
    assert!(error.contains("[program.stages[0].max_steps] must be between 1 and 50"), "{error}");
    let not_react = react_toml().replace("module = \"react\"\nmax_steps = 3", "max_steps = 3");
    let error = format!("{:#}", parse(&not_react).unwrap_err());
    assert!(error.contains("belong to a stage with module = \"react\""), "{error}");
}

#[tokio::test]
async fn a_search_that_spends_its_budget_still_scores_the_per_slice_composition_from_its_reserve() {
    let config = parse(&router_toml(
        "kind = \"bootstrap_random_search\"\nnum_candidates = 3\nmax_bootstrapped_demos = 2\nmax_labeled_demos = 3",
    ))
    .unwrap();
    // Urgent is too small to optimize: it must stay as production has it.
    let dataset = Dataset::from_examples(examples(60, 4, 40), &SplitFractions::default(), "h".into());
    let dev = dataset.dev().len() as u64;
    let start = Start { production: config.baseline(), declared: config.baseline() };
    let run = |composition_reserve: u64| {
        let mut ctx = context(right_with_demos(&config), 10);
        ctx.composition_reserve = vec![(LmRole::Task, composition_reserve)];
        // Production on dev and a little search: the search stops at the limit
        // after it has scored a whole program that changed every handler.
        ctx.student.settings.lm.meter().set_limits(promptloop::lm::budget::Limits {
            total: promptloop::lm::budget::Budget { max_calls: Some(dev + 40), ..Default::default() },
            roles: Default::default(),
        });
        let optimizer = build(&config.optimizer);
        let (start, dataset) = (start.clone(), dataset.clone());
        async move { optimize(&*optimizer, &start, dataset.train(), dataset.dev(), &ctx).await.unwrap() }
    };
    let urgent = |program: &Program| program.predictor("handlers.urgent").cloned();

    let reserved = run(dev).await;
    assert!(reserved.stopped_early.is_some(), "the search must stop at its budget");
    assert!(reserved.candidates.iter().any(|c| c.name == "per-slice best"), "{:?}", reserved.candidates);
    assert_eq!(urgent(&reserved.program), urgent(&start.production), "a too-small handler changed");
    assert!(!reserved.notes.notes.iter().any(|n| n.contains("was not scored")), "{:?}", reserved.notes.notes);

    // Without the reserve the composition finds no budget left: the best whole
    // program is proposed, with a note, and its urgent handler is not production's.
    let unreserved = run(0).await;
    assert!(unreserved.notes.notes.iter().any(|n| n.contains("the per-slice composition was not scored")));
    assert_ne!(urgent(&unreserved.program), urgent(&start.production));
}

#[test]
fn a_router_programs_budget_sets_its_composition_aside_and_says_so_when_too_small() {
    let mut config = parse(&router_toml("kind = \"bootstrap_random_search\"")).unwrap();
    let dataset = Dataset::from_examples(examples(60, 4, 40), &SplitFractions::default(), "h".into());
    let (dev, test) = (dataset.dev().len() as u64, dataset.test().len() as u64);
    let reserve = promptloop::pipeline::optimize::reserve(&config.baseline(), &dataset, &config.metric);
    assert_eq!((reserve.dev_runs, reserve.composition_runs, reserve.test_runs), (dev, dev, 2 * test));
    assert_eq!(reserve.composition(), vec![(LmRole::Task, dev)]);
    config.budget.max_calls = Some(dev + 2 * test + 1);
    let error = promptloop::pipeline::optimize::optimizer_limits(&config, &reserve).unwrap_err().to_string();
    assert!(error.contains(&format!("scoring the per-slice composition on dev {dev} more")), "{error}");
    assert!(error.contains(&format!("at least {}", 2 * dev + 2 * test + 1)), "{error}");
    config.budget.max_calls = Some(500);
    let limits = promptloop::pipeline::optimize::optimizer_limits(&config, &reserve).unwrap().unwrap();
    assert_eq!(limits.total.max_calls, Some(500 - 2 * test - dev), "test scoring and the composition are set aside");
}
