//! ReAct: a stage that reasons, calls tools and reads what they return
//! before it answers, as DSPy's `dspy.ReAct` does.
//!
//! A `react` stage with signature `inputs -> outputs` is two predictors:
//! `<path>.react` (inputs + `trajectory` -> `next_thought`, `next_tool_name`,
//! `next_tool_args`) is asked once per step and chooses the next tool call,
//! or `finish`; `<path>.extract` (chain of thought; inputs + `trajectory` ->
//! outputs) reads the finished trajectory and writes the stage's outputs.
//! Both are ordinary predictors: their instructions and demos are what an
//! optimizer tunes, and every call is a [`TraceStep`] whose inputs hold the
//! trajectory, so a bootstrapped demo shows the tool calls that led to it.
//!
//! The loop ends at `finish`, at `max_steps`, or at a react reply that does
//! not parse; the trajectory says which, and extract runs in every case. A
//! failing tool never ends it: its reason is the step's observation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::lm::local::json_constrain::canonical_json;
use crate::lm::{LmError, TokenUsage};
use crate::program::TraceStep;
use crate::program::module::Module;
use crate::program::predictor::{PredictSettings, Predictor, PredictorCall, REASONING};
use crate::program::signature::{Field, FieldType, Signature};
use crate::program::tool::{FINISH, Tools};

/// The input both predictors read the steps so far from.
pub const TRAJECTORY: &str = "trajectory";
pub const NEXT_THOUGHT: &str = "next_thought";
pub const NEXT_TOOL_NAME: &str = "next_tool_name";
pub const NEXT_TOOL_ARGS: &str = "next_tool_args";
/// What the `finish` step observes.
pub const FINISHED: &str = "Completed.";

/// Field names a react stage's signature may not use: the loop's own.
const RESERVED: [&str; 5] = [TRAJECTORY, NEXT_THOUGHT, NEXT_TOOL_NAME, NEXT_TOOL_ARGS, REASONING];

/// Whether `signature` can be a react stage's: none of its fields may be
/// named like the loop's own (`trajectory`, `next_thought`,
/// `next_tool_name`, `next_tool_args`, `reasoning`).
pub fn check_signature(signature: &Signature) -> Result<(), String> {
    for field in signature.inputs.iter().chain(&signature.outputs) {
        if RESERVED.contains(&field.name.as_str()) {
            return Err(format!(
                "the field `{}` is reserved in a react stage (it uses {}); rename it",
                field.name,
                RESERVED.map(|r| format!("`{r}`")).join(", ")
            ));
        }
    }
    Ok(())
}

fn trajectory_field() -> Field {
    Field::new(
        TRAJECTORY,
        FieldType::String,
        "the steps so far: each thought, the tool called, its arguments and what it returned",
    )
}

fn quoted(fields: &[Field]) -> String {
    fields.iter().map(|f| format!("`{}`", f.name)).collect::<Vec<_>>().join(", ")
}

/// The react predictor's instructions: the stage's own first, then how the
/// loop works and every tool (name, description, arguments), `finish` last.
pub fn react_instructions(signature: &Signature, instructions: &str, tools: &Tools) -> String {
    let mut text = String::new();
    if !instructions.trim().is_empty() {
        text.push_str(instructions.trim());
        text.push_str("\n\n");
    }
    let outputs = quoted(&signature.outputs);
    text.push_str(&format!(
        "You are an agent. In each episode you are given the fields {} as input, and you can see your past trajectory so far.\n\
         Your goal is to use one or more of the supplied tools to collect any information needed to produce {outputs}.\n\n\
         To do this, you interleave `{NEXT_THOUGHT}`, `{NEXT_TOOL_NAME}` and `{NEXT_TOOL_ARGS}` in each turn, and also when finishing the task.\n\
         After each tool call you receive the resulting observation, which is appended to your trajectory.\n\n\
         When writing `{NEXT_THOUGHT}`, you may reason about the current situation and plan for future steps.\n\
         When selecting `{NEXT_TOOL_NAME}` and its `{NEXT_TOOL_ARGS}`, the tool must be one of:\n\n",
        quoted(&signature.inputs)
    ));
    let mut index = 0;
    for spec in &tools.specs {
        index += 1;
        let args = spec.args_schema()["properties"].clone();
        text.push_str(&format!(
            "({index}) {}, whose description is <desc>{}</desc>. It takes arguments {}.\n",
            spec.name,
            spec.description,
            canonical_json(&args)
        ));
    }
    text.push_str(&format!(
        "({}) {FINISH}, whose description is <desc>Marks the task as complete. That is, signals that all information for producing the outputs, i.e. {outputs}, are now available to be extracted.</desc>. It takes arguments {{}}.\n\n",
        index + 1
    ));
    text.push_str(&format!("When providing `{NEXT_TOOL_ARGS}`, the value inside the field must be in JSON format."));
    text
}

/// The stage's two predictors, `<path>.react` and `<path>.extract` (their
/// artifact keys), with no demos.
pub fn predictors(path: &str, signature: &Signature, instructions: &str, tools: &Tools) -> (Predictor, Predictor) {
    let mut inputs = signature.inputs.clone();
    inputs.push(trajectory_field());
    let mut names: Vec<String> = tools.specs.iter().map(|s| s.name.clone()).collect();
    names.push(FINISH.to_string());
    let react = Predictor {
        name: format!("{path}.react"),
        module: Module::Predict,
        signature: Signature {
            inputs: inputs.clone(),
            outputs: vec![
                Field::new(NEXT_THOUGHT, FieldType::String, "reason about the situation and plan the next step"),
                Field::new(
                    NEXT_TOOL_NAME,
                    FieldType::Enum { values: names },
                    format!("the tool to call next, or `{FINISH}` when the outputs can be produced"),
                ),
                Field::new(
                    NEXT_TOOL_ARGS,
                    FieldType::Json { schema: json!({"type": "object"}) },
                    format!("the tool's arguments as a JSON object (`{{}}` for `{FINISH}`)"),
                ),
            ],
        },
        instructions: react_instructions(signature, instructions, tools),
        demos: Vec::new(),
    };
    let extract = Predictor {
        name: format!("{path}.extract"),
        module: Module::ChainOfThought,
        signature: Signature { inputs, outputs: signature.outputs.clone() },
        instructions: instructions.to_string(),
        demos: Vec::new(),
    };
    (react, extract)
}

/// One step of the loop: what the agent thought and called, and what it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolStep {
    pub thought: String,
    /// The tool called, or `finish`.
    pub tool: String,
    pub args: Value,
    /// The observation exactly as the trajectory shows it: the result, or
    /// `Execution error in <tool>: <reason>`.
    pub observation: String,
    /// The tool answered (always true for `finish`).
    pub ok: bool,
    /// The reply came from the tool cache; the tool did not run.
    pub cached: bool,
}

/// Why the loop stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoopEnd {
    /// The loop did not start: an input the stage reads was missing.
    #[default]
    NotStarted,
    /// The agent chose `finish`.
    Finished,
    /// `max_steps` tool calls were made without `finish`.
    StepLimit,
    /// A react reply could not be used (it did not parse, was cut by
    /// `max_tokens`, or the prompt did not fit).
    ReplyFailed { reason: String },
}

/// One run of a react stage on one example.
#[derive(Debug, Clone, Default)]
pub struct ReactRun {
    /// The extract predictor's outputs (its `reasoning` and the stage's
    /// outputs), when it succeeded.
    pub outputs: Option<Map<String, Value>>,
    /// Why there are no outputs, prefixed with the failing predictor's path.
    pub error: Option<String>,
    /// The failing reply could not be parsed.
    pub format_error: bool,
    /// The failing reply was cut by `max_tokens` before it was complete.
    pub cut: bool,
    pub steps: Vec<ToolStep>,
    pub ended: LoopEnd,
    /// One entry per predictor call, react steps then extract.
    pub trace: Vec<TraceStep>,
    pub usage: TokenUsage,
    pub lm_calls: u32,
    pub cache_hits: u32,
    /// Predictor calls whose first reply did not parse.
    pub format_retries: u32,
    /// Tools called (not counting `finish`, nor arguments refused before a call).
    pub tool_calls: u32,
    /// Tool calls answered from the tool cache.
    pub tool_cache_hits: u32,
}

impl ReactRun {
    fn count(&mut self, call: &PredictorCall) {
        self.usage.prompt_tokens += call.usage.prompt_tokens;
        self.usage.completion_tokens += call.usage.completion_tokens;
        self.lm_calls += call.lm_calls;
        self.cache_hits += call.cache_hits;
        self.format_retries += u32::from(call.format_retried);
    }
}

/// The trajectory as both predictors read it, in DSPy's layout: for step
/// `i`, `thought_i`, `tool_name_i`, `tool_args_i` and `observation_i` each
/// under its marker; then, when the loop stopped other than at `finish`, a
/// `note` saying why.
pub fn render_trajectory(steps: &[ToolStep], note: Option<&str>) -> String {
    let mut parts = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        parts.push(format!("[[ ## thought_{i} ## ]]\n{}", step.thought));
        parts.push(format!("[[ ## tool_name_{i} ## ]]\n{}", step.tool));
        parts.push(format!("[[ ## tool_args_{i} ## ]]\n{}", canonical_json(&step.args)));
        parts.push(format!("[[ ## observation_{i} ## ]]\n{}", step.observation));
    }
    if let Some(note) = note {
        parts.push(format!("[[ ## note ## ]]\n{note}"));
    }
    parts.join("\n\n")
}

/// Runs a react stage: up to `max_steps` react calls, each followed by its
/// tool call, then one extract call. `Err` only when the LM fails; a reply
/// that cannot be used is kept in the trace and the run's fields.
pub async fn run(
    react: &Predictor,
    extract: &Predictor,
    tools: &Tools,
    settings: &PredictSettings,
    inputs: &Map<String, Value>,
    max_steps: usize,
    rollout: Option<u32>,
) -> Result<ReactRun, LmError> {
    let mut run = ReactRun::default();
    let mut given = Map::new();
    for field in react.signature.inputs.iter().filter(|f| f.name != TRAJECTORY) {
        match inputs.get(&field.name) {
            Some(value) => {
                given.insert(field.name.clone(), value.clone());
            }
            None => {
                run.error = Some(format!(
                    "predictor `{}` needs input `{}`, which is neither an example input nor an earlier output",
                    react.name, field.name
                ));
                return Ok(run);
            }
        }
    }
    let step_inputs = |steps: &[ToolStep], note: Option<&str>| {
        let mut values = given.clone();
        values.insert(TRAJECTORY.into(), Value::String(render_trajectory(steps, note)));
        values
    };

    let mut note = None;
    loop {
        if run.steps.len() >= max_steps {
            run.ended = LoopEnd::StepLimit;
            note = Some(format!(
                "The step limit of {max_steps} was reached before `{FINISH}`; produce the outputs from the trajectory as it is."
            ));
            break;
        }
        let values = step_inputs(&run.steps, None);
        let call = react.call(settings, &values, rollout).await?;
        run.count(&call);
        let Some(outputs) = call.outputs.clone() else {
            let reason = call.error.clone().unwrap_or_else(|| "no reply".into());
            note = Some(format!(
                "The reply for step {} could not be used ({reason}); the tool loop ended there.",
                run.steps.len()
            ));
            run.ended = LoopEnd::ReplyFailed { reason };
            run.trace.push(trace_step(react, values, call, Map::new()));
            break;
        };
        run.trace.push(trace_step(react, values, call, outputs.clone()));
        let thought = outputs.get(NEXT_THOUGHT).and_then(Value::as_str).unwrap_or_default().to_string();
        let tool = outputs.get(NEXT_TOOL_NAME).and_then(Value::as_str).unwrap_or_default().to_string();
        let args = outputs.get(NEXT_TOOL_ARGS).cloned().unwrap_or_else(|| json!({}));
        if tool == FINISH {
            run.steps.push(ToolStep { thought, tool, args, observation: FINISHED.into(), ok: true, cached: false });
            run.ended = LoopEnd::Finished;
            break;
        }
        let result = tools.call(&tool, &args).await;
        // A call counts when the tool ran or its cached reply was used, not
        // when its arguments were refused before anything ran.
        if tools.get(&tool).is_some_and(|spec| spec.check_args(&args).is_ok()) {
            run.tool_calls += 1;
            run.tool_cache_hits += u32::from(result.cached);
        }
        let observation = if result.reply.ok {
            result.reply.text
        } else {
            format!("Execution error in {tool}: {}", result.reply.text)
        };
        run.steps.push(ToolStep { thought, tool, args, observation, ok: result.reply.ok, cached: result.cached });
    }

    let values = step_inputs(&run.steps, note.as_deref());
    let call = extract.call(settings, &values, rollout).await?;
    run.count(&call);
    match call.outputs.clone() {
        Some(outputs) => {
            run.outputs = Some(outputs.clone());
            run.trace.push(trace_step(extract, values, call, outputs));
        }
        None => {
            run.error = call.error.as_ref().map(|e| format!("{}: {e}", extract.name));
            run.format_error = call.format_error;
            run.cut = call.cut;
            run.trace.push(trace_step(extract, values, call, Map::new()));
        }
    }
    Ok(run)
}

fn trace_step(
    predictor: &Predictor,
    inputs: Map<String, Value>,
    call: PredictorCall,
    outputs: Map<String, Value>,
) -> TraceStep {
    TraceStep {
        predictor: predictor.name.clone(),
        inputs,
        messages: call.messages,
        reply: call.reply,
        outputs,
        error: call.error,
        cut: call.cut,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::program::tool::{RawTool, ToolSpec};

    fn signature() -> Signature {
        Signature {
            inputs: vec![Field::new("question", FieldType::String, "the question")],
            outputs: vec![Field::new("answer", FieldType::String, "the answer")],
        }
    }

    fn tools() -> Tools {
        let raw: RawTool = toml::from_str(
            r#"
kind = "command"
description = "Looks a city up."
command = ["tools/lookup.py"]
args = { city = { type = "string", description = "the city" } }
"#,
        )
        .unwrap();
        Tools::new(vec![ToolSpec::from_raw("lookup", raw, Path::new("/repo")).unwrap()], None).unwrap()
    }

    #[test]
    fn the_stage_becomes_a_react_and_an_extract_predictor() {
        let (react, extract) = predictors("answer", &signature(), "Answer the question.", &tools());
        assert_eq!(react.name, "answer.react");
        assert_eq!(extract.name, "answer.extract");
        assert_eq!(extract.module, Module::ChainOfThought);
        let inputs: Vec<&str> = react.signature.inputs.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(inputs, ["question", TRAJECTORY]);
        assert_eq!(extract.signature.inputs, react.signature.inputs);
        let outputs: Vec<&str> = react.signature.outputs.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(outputs, [NEXT_THOUGHT, NEXT_TOOL_NAME, NEXT_TOOL_ARGS]);
        assert_eq!(react.signature.outputs[1].ty, FieldType::Enum { values: vec!["lookup".into(), FINISH.into()] });
        assert_eq!(extract.signature.outputs, signature().outputs);
        assert_eq!(extract.instructions, "Answer the question.");
        // The stage's instructions come first; then the tools, `finish` last.
        assert!(react.instructions.starts_with("Answer the question.\n\n"), "{}", react.instructions);
        let lookup = react.instructions.find("(1) lookup, whose description is <desc>Looks a city up.</desc>").unwrap();
        let finish = react.instructions.find("(2) finish, whose description").unwrap();
        assert!(lookup < finish);
        assert!(
            react
                .instructions
                .contains(r#"It takes arguments {"city": {"type": "string", "description": "the city"}}."#)
        );
        // The args field's schema is one the embedded model can enforce.
        let FieldType::Json { schema } = &react.signature.outputs[2].ty else { panic!() };
        crate::lm::local::constrain::validate_schema(schema).unwrap();
    }

    #[test]
    fn the_trajectory_is_laid_out_like_dspy() {
        let steps = [ToolStep {
            thought: "Look it up.".into(),
            tool: "lookup".into(),
            args: json!({"city": "Oslo"}),
            observation: "{\"temp\":3}".into(),
            ok: true,
            cached: false,
        }];
        assert_eq!(render_trajectory(&[], None), "");
        assert_eq!(
            render_trajectory(&steps, Some("stopped")),
            "[[ ## thought_0 ## ]]\nLook it up.\n\n[[ ## tool_name_0 ## ]]\nlookup\n\n[[ ## tool_args_0 ## ]]\n{\"city\": \"Oslo\"}\n\n[[ ## observation_0 ## ]]\n{\"temp\":3}\n\n[[ ## note ## ]]\nstopped"
        );
    }

    #[test]
    fn the_loop_s_own_field_names_are_reserved() {
        assert!(check_signature(&signature()).is_ok());
        let mut taken = signature();
        taken.inputs.push(Field::new(TRAJECTORY, FieldType::String, ""));
        let error = check_signature(&taken).unwrap_err();
        assert!(error.contains("`trajectory` is reserved"), "{error}");
    }
}
