//! ReAct stages: the tool loop against a scripted LM, local tool scripts
//! (tests/data/tools/) and an http tool served on 127.0.0.1.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::ScriptedLm;
use promptloop::config::AdapterFormat;
use promptloop::lm::{Lm, LmRequest, Role};
use promptloop::program::predictor::{PredictSettings, Predictor};
use promptloop::program::react::{self, LoopEnd, ReactRun};
use promptloop::program::signature::{Field, FieldType, Signature};
use promptloop::program::tool::{RawTool, ToolCache, ToolSpec, Tools};
use serde_json::{Map, Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn signature() -> Signature {
    Signature {
        inputs: vec![Field::new("question", FieldType::String, "the user's question")],
        outputs: vec![Field::new("answer", FieldType::String, "the answer")],
    }
}

fn question() -> Map<String, Value> {
    Map::from_iter([("question".to_string(), json!("What is the weather in Oslo?"))])
}

/// A tool declared as in a pipeline file's `[tools.<name>]`.
fn tool(name: &str, declaration: &str) -> ToolSpec {
    let raw: RawTool = toml::from_str(declaration).unwrap();
    ToolSpec::from_raw(name, raw, root()).unwrap()
}

fn command_tool(name: &str, command: &[&str], timeout_secs: f64) -> ToolSpec {
    let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
    tool(
        name,
        &format!(
            r#"kind = "command"
description = "The current weather in a city, as JSON."
command = [{}]
timeout_secs = {timeout_secs}
args = {{ city = {{ type = "string", description = "the city's name" }} }}
"#,
            command.join(", ")
        ),
    )
}

/// The weather tool; with `counter`, every run appends a line to that file.
fn weather(counter: Option<&Path>) -> ToolSpec {
    match counter {
        Some(file) => command_tool("weather", &["tests/data/tools/weather.py", file.to_str().unwrap()], 10.0),
        None => command_tool("weather", &["tests/data/tools/weather.py"], 10.0),
    }
}

fn settings(lm: Arc<ScriptedLm>, format: AdapterFormat) -> PredictSettings {
    PredictSettings { lm: Lm::new(lm, None, 1), format, temperature: 0.0, max_tokens: 256, tools: None }
}

fn stage(tools: &Tools) -> (Predictor, Predictor) {
    react::predictors("answer", &signature(), "Answer the user's question about the weather.", tools)
}

fn is_react(request: &LmRequest) -> bool {
    request.messages[0].content.contains("`next_tool_name`")
}

/// The trajectory the request shows (the last input field of both predictors).
fn trajectory_of(request: &LmRequest) -> String {
    let last = request.messages.iter().rev().find(|m| m.role == Role::User).unwrap();
    let marker = "[[ ## trajectory ## ]]\n";
    let rest = &last.content[last.content.find(marker).unwrap() + marker.len()..];
    rest.split("\n\nRespond with").next().unwrap().to_string()
}

/// An LM that plays `plan` — one (tool, args) per step, then `finish` — and
/// answers `sunny` when asked to extract.
fn planned_lm(plan: Vec<(&'static str, Value)>) -> Arc<ScriptedLm> {
    ScriptedLm::new(move |request| {
        if !is_react(request) {
            return if common::wants_json(request) {
                r#"{"reasoning": "The tool said so.", "answer": "sunny"}"#.into()
            } else {
                "[[ ## reasoning ## ]]\nThe tool said so.\n\n[[ ## answer ## ]]\nsunny\n\n[[ ## completed ## ]]".into()
            };
        }
        let step = trajectory_of(request).matches("[[ ## thought_").count();
        let (tool, args) = plan.get(step).cloned().unwrap_or(("finish", json!({})));
        let thought = format!("Step {step}: I will call {tool}.");
        if common::wants_json(request) {
            json!({"next_thought": thought, "next_tool_name": tool, "next_tool_args": args}).to_string()
        } else {
            format!(
                "[[ ## next_thought ## ]]\n{thought}\n\n[[ ## next_tool_name ## ]]\n{tool}\n\n[[ ## next_tool_args ## ]]\n{args}\n\n[[ ## completed ## ]]"
            )
        }
    })
}

async fn run_stage(lm: &Arc<ScriptedLm>, tools: &Tools, max_steps: usize) -> ReactRun {
    let (react_predictor, extract) = stage(tools);
    let settings = settings(lm.clone(), AdapterFormat::Chat);
    react::run(&react_predictor, &extract, tools, &settings, &question(), max_steps, None).await.unwrap()
}

fn predictors_of(run: &ReactRun) -> Vec<&str> {
    run.trace.iter().map(|t| t.predictor.as_str()).collect()
}

fn lines(file: &Path) -> usize {
    std::fs::read_to_string(file).map(|text| text.lines().count()).unwrap_or(0)
}

#[tokio::test]
async fn a_tool_result_is_observed_and_the_trajectory_reaches_the_next_call_and_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("runs.txt");
    let tools = Tools::new(vec![weather(Some(&counter))], None).unwrap();
    let lm = planned_lm(vec![("weather", json!({"city": "Oslo"}))]);
    let run = run_stage(&lm, &tools, 5).await;

    assert_eq!(run.ended, LoopEnd::Finished);
    assert_eq!(run.steps.len(), 2);
    let step = &run.steps[0];
    assert_eq!((step.tool.as_str(), step.ok, step.cached), ("weather", true, false));
    assert_eq!(step.args, json!({"city": "Oslo"}));
    assert_eq!(step.observation, r#"{"city":"Oslo","temp_c":21,"sky":"clear"}"#);
    assert_eq!(step.thought, "Step 0: I will call weather.");
    assert_eq!((run.steps[1].tool.as_str(), run.steps[1].observation.as_str()), ("finish", "Completed."));
    assert_eq!(lines(&counter), 1);

    // The second react call reads the first step, laid out like DSPy's.
    let requests = lm.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    assert_eq!(trajectory_of(&requests[0]), "");
    let expected = "[[ ## thought_0 ## ]]\nStep 0: I will call weather.\n\n[[ ## tool_name_0 ## ]]\nweather\n\n\
                    [[ ## tool_args_0 ## ]]\n{\"city\": \"Oslo\"}\n\n\
                    [[ ## observation_0 ## ]]\n{\"city\":\"Oslo\",\"temp_c\":21,\"sky\":\"clear\"}";
    assert_eq!(trajectory_of(&requests[1]), expected);

    // The trace keeps every call with its inputs: the raw material of demos.
    assert_eq!(predictors_of(&run), ["answer.react", "answer.react", "answer.extract"]);
    assert_eq!(run.trace[0].inputs["trajectory"], "");
    assert_eq!(run.trace[1].inputs["trajectory"], expected);
    assert_eq!(run.trace[1].inputs["question"], "What is the weather in Oslo?");
    assert_eq!(run.trace[1].outputs["next_tool_name"], "finish");
    assert!(run.trace[1].reply.as_deref().unwrap().contains("[[ ## next_tool_name ## ]]\nfinish"));
    assert!(!run.trace[1].messages.is_empty());
    let extracted = run.trace[2].inputs["trajectory"].as_str().unwrap();
    assert!(extracted.starts_with(expected), "{extracted}");
    assert!(extracted.ends_with(
        "[[ ## tool_name_1 ## ]]\nfinish\n\n[[ ## tool_args_1 ## ]]\n{}\n\n[[ ## observation_1 ## ]]\nCompleted."
    ));

    let outputs = run.outputs.unwrap();
    assert_eq!(outputs["answer"], "sunny");
    assert_eq!(outputs["reasoning"], "The tool said so.");
    assert_eq!(run.error, None);
    assert_eq!((run.lm_calls, run.cache_hits, run.format_retries), (3, 0, 0));
    assert_eq!((run.usage.prompt_tokens, run.usage.completion_tokens), (30, 9));
    assert_eq!((run.tool_calls, run.tool_cache_hits), (1, 0));
}

#[tokio::test]
async fn finish_on_the_first_step_calls_no_tool() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("runs.txt");
    let tools = Tools::new(vec![weather(Some(&counter))], None).unwrap();
    let lm = planned_lm(Vec::new());
    let run = run_stage(&lm, &tools, 5).await;
    assert_eq!(run.ended, LoopEnd::Finished);
    assert_eq!(run.steps.len(), 1);
    assert_eq!(run.steps[0].tool, "finish");
    assert_eq!(predictors_of(&run), ["answer.react", "answer.extract"]);
    assert_eq!(run.tool_calls, 0);
    assert_eq!(lines(&counter), 0);
    assert_eq!(run.outputs.unwrap()["answer"], "sunny");
}

#[tokio::test]
async fn the_step_limit_ends_the_loop_and_the_trajectory_says_so() {
    let tools = Tools::new(vec![weather(None)], None).unwrap();
    // The agent never finishes.
    let lm = planned_lm(vec![("weather", json!({"city": "Oslo"})); 10]);
    let run = run_stage(&lm, &tools, 2).await;
    assert_eq!(run.ended, LoopEnd::StepLimit);
    assert_eq!(run.steps.len(), 2);
    assert!(run.steps.iter().all(|s| s.tool == "weather" && s.ok));
    assert_eq!(predictors_of(&run), ["answer.react", "answer.react", "answer.extract"]);
    let extracted = run.trace[2].inputs["trajectory"].as_str().unwrap();
    assert!(extracted.contains("[[ ## observation_1 ## ]]"), "{extracted}");
    assert!(
        extracted.ends_with("[[ ## note ## ]]\nThe step limit of 2 was reached before `finish`; produce the outputs from the trajectory as it is."),
        "{extracted}"
    );
    assert_eq!(run.outputs.unwrap()["answer"], "sunny");
    assert_eq!(run.tool_calls, 2);
}

#[tokio::test]
async fn a_crashing_tool_is_an_observation_and_the_loop_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ToolCache::open(&dir.path().join("tools.sqlite")).unwrap();
    let tools = Tools::new(vec![command_tool("lookup", &["tests/data/tools/crash.sh"], 10.0)], Some(cache)).unwrap();
    let lm = planned_lm(vec![("lookup", json!({"city": "Oslo"}))]);
    let run = run_stage(&lm, &tools, 5).await;
    let step = &run.steps[0];
    assert!(!step.ok);
    assert_eq!(
        step.observation,
        "Execution error in lookup: exited with status 1; stderr: connecting to the lookup service | lookup service unavailable"
    );
    assert_eq!(run.ended, LoopEnd::Finished);
    assert_eq!(run.steps.len(), 2);
    assert!(trajectory_of(&lm.requests.lock().unwrap()[1]).contains("lookup service unavailable"));
    assert_eq!(run.outputs.unwrap()["answer"], "sunny");
    // A crash is the tool's answer: a rerun sees it again from the cache.
    assert_eq!(tools.cache.as_ref().unwrap().len(), 1);
}

#[tokio::test]
async fn a_hanging_tool_is_stopped_at_its_limit_and_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let cache = ToolCache::open(&dir.path().join("tools.sqlite")).unwrap();
    let slow = command_tool("slow", &["tests/data/tools/hang.sh", pid_file.to_str().unwrap()], 1.0);
    let tools = Tools::new(vec![slow], Some(cache)).unwrap();
    let lm = planned_lm(vec![("slow", json!({"city": "Oslo"}))]);
    let run = run_stage(&lm, &tools, 5).await;
    let step = &run.steps[0];
    assert!(!step.ok);
    assert!(
        step.observation.starts_with("Execution error in slow: stopped at its time limit of 1s"),
        "{}",
        step.observation
    );
    assert!(step.observation.contains("killed"), "{}", step.observation);
    // The loop went on: the agent saw the reason and finished.
    assert_eq!(run.ended, LoopEnd::Finished);
    assert_eq!(run.steps.len(), 2);
    assert!(trajectory_of(&lm.requests.lock().unwrap()[1]).contains("stopped at its time limit"));
    assert!(run.outputs.is_some());
    // A hang may be transient: it is not recorded.
    assert!(tools.cache.as_ref().unwrap().is_empty());
    // The tool's own child was killed with it (its whole process group).
    #[cfg(target_os = "linux")]
    {
        let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
        let dead = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // `pid (comm) state ...`: Z is a zombie, X dead.
            Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
            Err(_) => true,
        };
        // SIGKILL was sent before the call returned; the kernel ends the
        // process as soon as it next runs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !dead() && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert!(dead(), "the tool's child process {pid} is still running");
    }
}

#[tokio::test]
async fn a_tool_printing_garbage_is_an_observation() {
    let tools = Tools::new(vec![command_tool("chatty", &["tests/data/tools/garbage.sh"], 10.0)], None).unwrap();
    let lm = planned_lm(vec![("chatty", json!({"city": "Oslo"}))]);
    let run = run_stage(&lm, &tools, 5).await;
    let step = &run.steps[0];
    assert!(!step.ok);
    assert!(
        step.observation.starts_with("Execution error in chatty: printed 26 bytes on stdout that are not JSON"),
        "{}",
        step.observation
    );
    assert!(step.observation.ends_with("a tool must print one JSON value"), "{}", step.observation);
    // Never quoted: stdout may hold anything.
    assert!(!step.observation.contains("weather is nice"));
    assert_eq!(run.ended, LoopEnd::Finished);
}

#[tokio::test]
async fn arguments_that_fail_the_declaration_are_refused_before_the_tool_runs() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("runs.txt");
    let tools = Tools::new(vec![weather(Some(&counter))], None).unwrap();
    let lm = planned_lm(vec![
        ("weather", json!({"city": 3})),
        ("weather", json!({"town": "Oslo"})),
        ("weather", json!({})),
        ("weather", json!({"city": "Oslo"})),
    ]);
    let run = run_stage(&lm, &tools, 10).await;
    let observations: Vec<&str> = run.steps.iter().map(|s| s.observation.as_str()).collect();
    assert_eq!(observations[0], "Execution error in weather: argument `city` must be string, got 3");
    assert_eq!(observations[1], "Execution error in weather: unknown argument `town`; weather takes `city` (string)");
    assert_eq!(observations[2], "Execution error in weather: missing argument `city`; weather takes `city` (string)");
    assert!(run.steps[..3].iter().all(|s| !s.ok));
    assert!(run.steps[3].ok);
    assert_eq!(run.steps[4].tool, "finish");
    // Only the well-formed call ran the tool.
    assert_eq!(lines(&counter), 1);
    assert_eq!(run.tool_calls, 1);
}

#[tokio::test]
async fn an_unusable_react_reply_ends_the_loop_and_extract_still_runs() {
    let lm = ScriptedLm::new(|request| {
        if is_react(request) {
            // Neither format can read this, and `search` is no tool.
            "[[ ## next_thought ## ]]\nhm\n\n[[ ## next_tool_name ## ]]\nsearch\n\n[[ ## next_tool_args ## ]]\n{}\n\n[[ ## completed ## ]]"
                .into()
        } else {
            "[[ ## reasoning ## ]]\nNo tool helped.\n\n[[ ## answer ## ]]\nunknown\n\n[[ ## completed ## ]]".into()
        }
    });
    let tools = Tools::new(vec![weather(None)], None).unwrap();
    let run = run_stage(&lm, &tools, 5).await;
    let LoopEnd::ReplyFailed { reason } = &run.ended else { panic!("{:?}", run.ended) };
    assert!(reason.contains("`search` is not one of: weather, finish"), "{reason}");
    assert!(run.steps.is_empty());
    assert_eq!(predictors_of(&run), ["answer.react", "answer.extract"]);
    assert_eq!(run.trace[0].error.as_deref(), Some(reason.as_str()));
    assert!(run.trace[0].outputs.is_empty());
    let note = run.trace[1].inputs["trajectory"].as_str().unwrap();
    assert!(note.starts_with("[[ ## note ## ]]\nThe reply for step 0 could not be used (unparseable reply"), "{note}");
    assert_eq!(run.format_retries, 1);
    assert_eq!(run.lm_calls, 3);
    assert_eq!(run.outputs.unwrap()["answer"], "unknown");
    assert_eq!(run.error, None);
}

#[tokio::test]
async fn a_failing_extract_is_the_run_s_error() {
    let lm = ScriptedLm::new(|request| {
        if is_react(request) {
            "[[ ## next_thought ## ]]\ndone\n\n[[ ## next_tool_name ## ]]\nfinish\n\n[[ ## next_tool_args ## ]]\n{}\n\n[[ ## completed ## ]]"
                .into()
        } else {
            "I would rather not say.".into()
        }
    });
    let tools = Tools::new(vec![weather(None)], None).unwrap();
    let run = run_stage(&lm, &tools, 5).await;
    assert!(run.outputs.is_none());
    assert!(run.format_error);
    let error = run.error.unwrap();
    assert!(error.starts_with("answer.extract: unparseable reply"), "{error}");
    assert_eq!(run.trace.last().unwrap().predictor, "answer.extract");
    assert!(run.trace.last().unwrap().error.is_some());
}

#[tokio::test]
async fn a_missing_input_fails_the_run_before_any_call() {
    let lm = planned_lm(Vec::new());
    let tools = Tools::new(vec![weather(None)], None).unwrap();
    let (react_predictor, extract) = stage(&tools);
    let settings = settings(lm.clone(), AdapterFormat::Chat);
    let run = react::run(&react_predictor, &extract, &tools, &settings, &Map::new(), 5, None).await.unwrap();
    assert_eq!(run.ended, LoopEnd::NotStarted);
    assert!(run.outputs.is_none());
    assert!(run.error.unwrap().contains("needs input `question`"));
    assert_eq!(lm.calls(), 0);
}

#[test]
fn a_run_can_be_spawned() {
    fn send<T: Send>(_: &T) {}
    let tools = Tools::new(vec![weather(None)], None).unwrap();
    let (react_predictor, extract) = stage(&tools);
    let settings = settings(planned_lm(Vec::new()), AdapterFormat::Chat);
    let inputs = question();
    let run = react::run(&react_predictor, &extract, &tools, &settings, &inputs, 5, None);
    send(&run);
}

#[tokio::test]
async fn the_loop_reads_json_replies_too() {
    let tools = Tools::new(vec![weather(None)], None).unwrap();
    let lm = planned_lm(vec![("weather", json!({"city": "Bergen"}))]);
    let (react_predictor, extract) = stage(&tools);
    let settings = settings(lm.clone(), AdapterFormat::Json);
    let run = react::run(&react_predictor, &extract, &tools, &settings, &question(), 5, None).await.unwrap();
    assert_eq!(run.steps[0].observation, r#"{"city":"Bergen","temp_c":21,"sky":"clear"}"#);
    assert_eq!(run.steps[1].tool, "finish");
    assert_eq!(run.outputs.unwrap()["answer"], "sunny");
    assert_eq!(run.format_retries, 0);
}

#[tokio::test]
async fn a_rerun_is_answered_from_the_tool_cache() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("runs.txt");
    let cache_file = dir.path().join(".promptloop/tools.sqlite");
    let plan = vec![("weather", json!({"city": "Oslo"})), ("weather", json!({"city": "Bergen"}))];

    let first = {
        let tools = Tools::new(vec![weather(Some(&counter))], Some(ToolCache::open(&cache_file).unwrap())).unwrap();
        run_stage(&planned_lm(plan.clone()), &tools, 5).await
    };
    assert_eq!(lines(&counter), 2);
    assert!(first.steps[..2].iter().all(|s| s.ok && !s.cached));
    assert_eq!(first.tool_cache_hits, 0);

    // Another process later: the cache is opened again from its file.
    let tools = Tools::new(vec![weather(Some(&counter))], Some(ToolCache::open(&cache_file).unwrap())).unwrap();
    let second = run_stage(&planned_lm(plan), &tools, 5).await;
    assert_eq!(lines(&counter), 2, "the tool ran again");
    assert!(second.steps[..2].iter().all(|s| s.ok && s.cached));
    assert_eq!((second.tool_calls, second.tool_cache_hits), (2, 2));
    let observations = |run: &ReactRun| run.steps.iter().map(|s| s.observation.clone()).collect::<Vec<_>>();
    assert_eq!(observations(&first), observations(&second));
    assert_eq!(first.trace[2].inputs, second.trace[2].inputs);
}

// ---- http tools -----------------------------------------------------------------

const TOKEN: &str = "tok-ReactToolBearer-9f8e7d6c5b4a";
const TOKEN_ENV: &str = "PROMPTLOOP_TEST_REACT_TOOL_TOKEN";

/// A request as the service got it: path, authorization header, JSON body.
type Received = (String, Option<String>, Value);

#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<Received>>>,
}

impl Seen {
    fn record(&self, path: &str, headers: &HeaderMap, body: &str) {
        let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
        let body = serde_json::from_str(body).unwrap_or(Value::Null);
        self.requests.lock().unwrap().push((path.to_string(), auth, body));
    }
}

/// A weather service on 127.0.0.1 that echoes the authorization it got in
/// every answer, as a careless service might. Its base URL.
async fn weather_service(seen: Seen) -> String {
    let app = Router::new()
        .route(
            "/weather",
            post({
                let seen = seen.clone();
                move |headers: HeaderMap, body: String| async move {
                    seen.record("/weather", &headers, &body);
                    let args: Value = serde_json::from_str(&body).unwrap();
                    let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
                    axum::Json(json!({"city": args["city"], "temp_c": 4, "authorized_as": auth}))
                }
            }),
        )
        .route(
            "/broken",
            post({
                let seen = seen.clone();
                move |headers: HeaderMap, body: String| async move {
                    seen.record("/broken", &headers, &body);
                    let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
                    (StatusCode::SERVICE_UNAVAILABLE, format!("upstream down (request had {auth:?})"))
                }
            }),
        )
        .route("/text", post(|| async { "sunny, probably" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

fn http_tool(name: &str, url: &str, token_env: Option<&str>) -> ToolSpec {
    let token = token_env.map(|var| format!("token_env = \"{var}\"\n")).unwrap_or_default();
    tool(
        name,
        &format!(
            r#"kind = "http"
description = "The current weather in a city, from the weather service."
url = "{url}"
{token}args = {{ city = {{ type = "string" }} }}
"#
        ),
    )
}

/// Every file under `dir`, as text (lossy), for a search.
fn all_text_under(dir: &Path) -> String {
    let mut text = String::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            text.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    text
}

#[tokio::test]
async fn an_http_tool_is_posted_the_arguments_and_its_token_never_shows() {
    // SAFETY: this variable is read only by this test's tools.
    unsafe { std::env::set_var(TOKEN_ENV, TOKEN) };
    let seen = Seen::default();
    let base = weather_service(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = ToolCache::open(&dir.path().join("tools.sqlite")).unwrap();
    let tools = Tools::new(
        vec![
            http_tool("forecast", &format!("{base}/weather"), Some(TOKEN_ENV)),
            http_tool("backup", &format!("{base}/broken"), Some(TOKEN_ENV)),
            http_tool("prose", &format!("{base}/text"), None),
            http_tool("locked", &format!("{base}/weather"), Some("PROMPTLOOP_TEST_REACT_TOKEN_NEVER_SET")),
        ],
        Some(cache),
    )
    .unwrap();
    let lm = planned_lm(vec![
        ("forecast", json!({"city": "Oslo"})),
        ("backup", json!({"city": "Oslo"})),
        ("prose", json!({"city": "Oslo"})),
        ("locked", json!({"city": "Oslo"})),
    ]);
    let run = run_stage(&lm, &tools, 10).await;

    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(requests[0], ("/weather".to_string(), Some(bearer.clone()), json!({"city": "Oslo"})));
    assert_eq!(requests[1], ("/broken".to_string(), Some(bearer), json!({"city": "Oslo"})));

    let steps = &run.steps;
    assert!(steps[0].ok);
    assert_eq!(steps[0].observation, r#"{"city":"Oslo","temp_c":4,"authorized_as":"Bearer [token]"}"#);
    assert!(!steps[1].ok);
    assert_eq!(
        steps[1].observation,
        "Execution error in backup: answered HTTP 503 Service Unavailable: upstream down (request had Some(\"Bearer [token]\"))"
    );
    assert!(!steps[2].ok);
    assert!(
        steps[2].observation.contains("answered HTTP 200 OK with 15 bytes that are not JSON"),
        "{}",
        steps[2].observation
    );
    assert!(!steps[3].ok);
    assert_eq!(
        steps[3].observation,
        "Execution error in locked: the environment variable PROMPTLOOP_TEST_REACT_TOKEN_NEVER_SET (token_env) is not set; set it to the bearer token"
    );
    assert_eq!(steps[4].tool, "finish");
    assert_eq!(run.outputs.as_ref().unwrap()["answer"], "sunny");

    // The token is nowhere: not in the steps, the trace (messages, replies,
    // inputs), the LM's requests, the run's error, nor the cache's files.
    let shown = format!(
        "{:?}{}{:?}{:?}",
        run.steps,
        serde_json::to_string(&run.trace).unwrap(),
        lm.requests.lock().unwrap(),
        run.error
    );
    assert!(shown.contains("[token]"));
    assert!(!shown.contains(TOKEN));
    // Answered calls are recorded (success and refusal alike); the missing
    // token is not, so setting it lets a rerun call the service.
    assert_eq!(tools.cache.as_ref().unwrap().len(), 3);
    let cached = all_text_under(dir.path());
    assert!(cached.contains("temp_c"), "the cache holds the replies");
    assert!(!cached.contains(TOKEN));
}

#[tokio::test]
async fn an_http_tool_that_does_not_answer_is_stopped_at_its_limit() {
    let app = Router::new().route("/never", post(std::future::pending::<String>));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let declaration = format!(
        r#"kind = "http"
description = "Never answers."
url = "http://{address}/never"
timeout_secs = 1
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = ToolCache::open(&dir.path().join("tools.sqlite")).unwrap();
    let tools = Tools::new(vec![tool("never", &declaration)], Some(cache)).unwrap();
    let call = tools.call("never", &json!({})).await;
    assert!(!call.reply.ok);
    assert_eq!(call.reply.text, format!("stopped at its time limit of 1s: http://{address}/never had not answered"));
    assert!(tools.cache.as_ref().unwrap().is_empty());
}

#[tokio::test]
async fn an_unreachable_http_tool_is_an_observation() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tools =
        Tools::new(vec![http_tool("forecast", &format!("http://127.0.0.1:{port}/weather"), None)], None).unwrap();
    let call = tools.call("forecast", &json!({"city": "Oslo"})).await;
    assert!(!call.reply.ok);
    assert!(
        call.reply.text.starts_with(&format!("POST http://127.0.0.1:{port}/weather failed:")),
        "{}",
        call.reply.text
    );
    let unknown = tools.call("search", &json!({})).await;
    assert_eq!(unknown.reply.text, "there is no tool named `search`; the tools are: forecast");
}
