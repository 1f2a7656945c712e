//! The program graph: stages in order, each a predictor (a module over a
//! signature) or a router that sends each input to exactly one handler.
//!
//! A stage reads the example's inputs and the outputs of the stages before it,
//! by name. A router picks a branch by an enum output of an earlier stage or by
//! the rule-based signal detector (`routine`, `urgent`, `escalating`); each
//! branch is one predictor or a sub-sequence of stages, and every branch writes
//! the same fields, so what follows the router can read them whichever ran.
//!
//! Every predictor has a stable dotted path — `classify`, `handlers.escalating`,
//! `handlers.escalating.draft` — which is its key in the artifact. The
//! declaration is checked once, at pipeline load ([`declare`]): a field read
//! before anything writes it, a field written twice, a router over a field that
//! is not an enum, a value without a handler, a branch without a stage, a name
//! used twice — each an error naming the key and the fix.

use std::sync::Arc;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::dataset::Example;
use crate::logs::signals::{Signal, SignalDetector, SignalsConfig};
use crate::program::module::Module;
use crate::program::signature::{FieldType, SignatureConfig, normalize_value};
use crate::program::tool::ToolSpec;

/// `route_by = "detector"`: the rule-based signal detector picks the branch.
pub const DETECTOR: &str = "detector";

/// `[[program.stages]]` as written: a predictor (`signature`, `module`) or a
/// router (`route_by`, `branches`, `default`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageDecl {
    pub name: String,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub module: Option<Module>,
    /// An enum output of an earlier stage, or `detector`.
    #[serde(default)]
    pub route_by: Option<String>,
    /// For the detector: the input holding the message [default: `[signals] field`, else the first input].
    #[serde(default)]
    pub message: Option<String>,
    /// For the detector: the input holding the earlier messages, if any.
    #[serde(default)]
    pub history: Option<String>,
    /// The branch that takes any value without a branch of its own.
    #[serde(default)]
    pub default: Option<String>,
    /// For `module = "react"`: the tools it may call [default: every `[tools.*]`].
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// For `module = "react"`: the most tool calls before it must answer [default: 5].
    #[serde(default)]
    pub max_steps: Option<usize>,
    #[serde(default)]
    pub branches: IndexMap<String, BranchDecl>,
}

/// `[program.stages.branches.<value>]`: one predictor, or `stages`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchDecl {
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub module: Option<Module>,
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub max_steps: Option<usize>,
    #[serde(default)]
    pub stages: Vec<StageDecl>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// A predictor, by its index in the program's predictors.
    Predict(usize),
    /// A tool loop over two predictors.
    React(ReactStage),
    Router(Router),
}

/// `module = "react"`: the predictor that picks tools and the one that answers.
#[derive(Debug, Clone, PartialEq)]
pub struct ReactStage {
    pub path: String,
    /// Index of `<path>.react`.
    pub react: usize,
    /// Index of `<path>.extract`.
    pub extract: usize,
    pub max_steps: usize,
}

/// The most steps a react stage may take.
pub const MAX_REACT_STEPS: usize = 50;
/// Steps when `max_steps` is not set.
pub const DEFAULT_REACT_STEPS: usize = 5;

/// What part of a stage a predictor is.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Part {
    /// The stage itself: its signature, its module.
    #[default]
    Whole,
    /// The tool-picking half of a react stage, over these tools.
    ReactStep { tools: Vec<String> },
    /// The answering half of a react stage.
    ReactExtract,
}

/// One predictor of a declared program: its path, signature and module.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictorConfig {
    /// The dotted path.
    pub name: String,
    pub signature: String,
    pub module: Module,
    /// What part of its stage it is (a react stage has two).
    pub part: Part,
}

/// The predictor a declaration describes, as declared: the signature's
/// instructions, no demos. A react stage's halves are built by [`crate::program::react::predictors`].
pub fn build_predictor(
    p: &PredictorConfig,
    signatures: &IndexMap<String, SignatureConfig>,
    tools: &[ToolSpec],
) -> crate::program::predictor::Predictor {
    let sig = &signatures[&p.signature];
    let stage_path = |suffix: &str| p.name.strip_suffix(suffix).unwrap_or(&p.name).to_string();
    let react_tools = |names: &[String]| {
        let specs = tools.iter().filter(|t| names.contains(&t.name)).cloned().collect();
        crate::program::tool::Tools { specs, cache: None }
    };
    match &p.part {
        Part::Whole => crate::program::predictor::Predictor {
            name: p.name.clone(),
            module: p.module,
            signature: sig.signature.clone(),
            instructions: sig.instructions.clone(),
            demos: Vec::new(),
        },
        Part::ReactStep { tools: names } => {
            crate::program::react::predictors(
                &stage_path(".react"),
                &sig.signature,
                &sig.instructions,
                &react_tools(names),
            )
            .0
        }
        Part::ReactExtract => {
            crate::program::react::predictors(
                &stage_path(".extract"),
                &sig.signature,
                &sig.instructions,
                &react_tools(&[]),
            )
            .1
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    /// The stage's dotted path (`handlers`).
    pub path: String,
    pub by: RouteBy,
    pub branches: Vec<Branch>,
    /// The index of the branch that takes values without a branch of their own.
    pub default: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    /// The value that selects it (`escalating`).
    pub label: String,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteBy {
    /// An enum output of an earlier stage.
    Field(String),
    /// The rule-based signal detector over an input message.
    Detector(Detector),
}

#[derive(Clone)]
pub struct Detector {
    pub message: String,
    pub history: Option<String>,
    pub config: SignalsConfig,
    detector: Arc<SignalDetector>,
}

impl Detector {
    pub fn new(message: String, history: Option<String>, config: SignalsConfig) -> Self {
        let detector = Arc::new(SignalDetector::new(&config));
        Self { message, history, config, detector }
    }

    /// The signal of a message and its history, read from `values`.
    pub fn read(&self, values: &Map<String, Value>) -> Result<Signal, String> {
        let message = match values.get(&self.message) {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(format!("`{}` is not text", self.message)),
            None => return Err(format!("no `{}` to read the signal from", self.message)),
        };
        let history: Vec<String> = match self.history.as_ref().and_then(|h| values.get(h)) {
            Some(Value::Array(items)) => {
                items.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect()
            }
            Some(Value::String(s)) => s.lines().map(str::to_string).filter(|l| !l.trim().is_empty()).collect(),
            _ => Vec::new(),
        };
        Ok(self.detector.read(message, &history).label)
    }
}

impl PartialEq for Detector {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message && self.history == other.history && self.config == other.config
    }
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector").field("message", &self.message).field("history", &self.history).finish()
    }
}

/// Which branch a router sent one input to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub router: String,
    pub branch: String,
}

impl Router {
    /// The branch for a routing value: its own, else the default.
    pub fn pick(&self, value: &str) -> Option<usize> {
        self.branches.iter().position(|b| b.label == value).or(self.default)
    }

    /// The routing value for a run so far (the inputs and earlier outputs).
    pub fn value(&self, known: &Map<String, Value>) -> Result<String, String> {
        match &self.by {
            RouteBy::Field(field) => match known.get(field) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Ok(normalize_value(other)),
                None => Err(format!("router `{}`: no `{field}` to route by", self.path)),
            },
            RouteBy::Detector(d) => {
                d.read(known).map(|s| s.name().to_string()).map_err(|e| format!("router `{}`: {e}", self.path))
            }
        }
    }

    /// The branch an example belongs to before any LM runs: the detector's
    /// reading of its inputs, or its reference value of the routing field.
    /// `None` when the example has no reference for the field.
    pub fn branch_of_example(&self, example: &Example) -> Option<usize> {
        match &self.by {
            RouteBy::Field(field) => {
                let value = example.outputs.get(field).or_else(|| example.inputs.get(field))?;
                let got = normalize_value(value);
                let label = self
                    .branches
                    .iter()
                    .map(|b| b.label.as_str())
                    .find(|l| normalize_value(&Value::String((*l).to_string())) == got)
                    .map(str::to_string)
                    .unwrap_or(got);
                self.pick(&label)
            }
            RouteBy::Detector(d) => d.read(&example.inputs).ok().and_then(|s| self.pick(s.name())),
        }
    }
}

impl Graph {
    /// `n` predictors in sequence.
    pub fn sequence(n: usize) -> Graph {
        Graph { stages: (0..n).map(Stage::Predict).collect() }
    }

    /// Every router, outermost first.
    /// How many disjoint groups of examples a bootstrap must find demos in:
    /// 1, plus for each router one more per branch beyond the first.
    pub fn demo_groups(&self) -> usize {
        1 + self.routers().iter().map(|r| r.branches.len().saturating_sub(1)).sum::<usize>()
    }

    pub fn routers(&self) -> Vec<&Router> {
        fn walk<'a>(stages: &'a [Stage], out: &mut Vec<&'a Router>) {
            for stage in stages {
                if let Stage::Router(r) = stage {
                    out.push(r);
                    for b in &r.branches {
                        walk(&b.stages, out);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.stages, &mut out);
        out
    }

    /// The routers and branches a predictor sits under, outermost first
    /// (empty for a predictor every input reaches).
    pub fn branches_of(&self, predictor: usize) -> Vec<(&Router, usize)> {
        fn walk<'a>(stages: &'a [Stage], target: usize, path: &mut Vec<(&'a Router, usize)>) -> bool {
            for stage in stages {
                match stage {
                    Stage::Predict(i) if *i == target => return true,
                    Stage::React(r) if r.react == target || r.extract == target => return true,
                    Stage::Predict(_) | Stage::React(_) => {}
                    Stage::Router(r) => {
                        for (bi, b) in r.branches.iter().enumerate() {
                            path.push((r, bi));
                            if walk(&b.stages, target, path) {
                                return true;
                            }
                            path.pop();
                        }
                    }
                }
            }
            false
        }
        let mut path = Vec::new();
        walk(&self.stages, predictor, &mut path);
        path
    }

    /// Whether an example reaches a predictor, judged before any LM runs (see
    /// [`Router::branch_of_example`]); an example no router can place reaches
    /// only the predictors outside every router.
    pub fn reaches(&self, predictor: usize, example: &Example) -> bool {
        self.branches_of(predictor).iter().all(|(router, branch)| router.branch_of_example(example) == Some(*branch))
    }
}

/// What a declaration produces: the predictors, flat, named by their dotted
/// paths, and the graph over them.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub predictors: Vec<PredictorConfig>,
    pub graph: Graph,
    /// The fields the program writes whatever branch runs: what a metric can score.
    pub written: Vec<String>,
    /// Of those, the ones no stage or router reads: the program's final
    /// outputs, which a reference must hold.
    pub outputs: Vec<String>,
}

/// A declaration error: the key (`program.stages[1].branches.urgent`) and the message.
pub type DeclError = (String, String);

/// Checks `[[program.stages]]` and builds the graph. `inputs`, when declared,
/// are the only fields a stage may read besides earlier outputs; otherwise any
/// field no stage writes is an input. `signals` configures the detector;
/// its `field`, when set, is the detector's default message input.
pub fn declare(
    stages: &[StageDecl],
    key: &str,
    signatures: &IndexMap<String, SignatureConfig>,
    inputs: Option<&[String]>,
    signals: &SignalsConfig,
    tools: &[ToolSpec],
) -> Result<Declared, DeclError> {
    if stages.is_empty() {
        return Err((
            key.into(),
            "the program needs at least one stage: add [[program.stages]] with a name and a signature".into(),
        ));
    }
    let mut writers = Vec::new();
    collect_writes(stages, "", signatures, &mut writers);
    let mut reads = Vec::new();
    collect_reads(stages, signatures, &mut reads);
    let first_input = reads.into_iter().find(|f| !writers.iter().any(|(w, _)| w == f));
    let mut builder = Builder {
        signatures,
        declared_inputs: inputs,
        signals,
        tools,
        writers,
        predictors: Vec::new(),
        first_input,
        read: Vec::new(),
    };
    let mut scope = Scope::default();
    if let Some(inputs) = inputs {
        for i in inputs {
            scope.fields.insert(i.clone(), Origin::Input);
        }
    }
    let graph = Graph { stages: builder.stages(stages, key, "", &mut scope)? };
    let written: Vec<String> =
        scope.fields.iter().filter(|(_, o)| matches!(o, Origin::Written(..))).map(|(f, _)| f.clone()).collect();
    let outputs = written.iter().filter(|f| !builder.read.contains(f)).cloned().collect();
    Ok(Declared { predictors: builder.predictors, graph, written, outputs })
}

/// Every (field, path of the stage that writes it), for "written later" errors.
fn collect_writes(
    stages: &[StageDecl],
    prefix: &str,
    signatures: &IndexMap<String, SignatureConfig>,
    out: &mut Vec<(String, String)>,
) {
    for s in stages {
        let path = join(prefix, &s.name);
        if let Some(sig) = s.signature.as_ref().and_then(|n| signatures.get(n)) {
            out.extend(sig.signature.outputs.iter().map(|f| (f.name.clone(), path.clone())));
        }
        for (label, b) in &s.branches {
            let bpath = join(&path, label);
            if let Some(sig) = b.signature.as_ref().and_then(|n| signatures.get(n)) {
                out.extend(sig.signature.outputs.iter().map(|f| (f.name.clone(), bpath.clone())));
            }
            collect_writes(&b.stages, &bpath, signatures, out);
        }
    }
}

/// Every field a stage reads, in declaration order.
fn collect_reads(stages: &[StageDecl], signatures: &IndexMap<String, SignatureConfig>, out: &mut Vec<String>) {
    let add = |signature: &Option<String>, out: &mut Vec<String>| {
        if let Some(sig) = signature.as_ref().and_then(|n| signatures.get(n)) {
            out.extend(sig.signature.inputs.iter().map(|f| f.name.clone()));
        }
    };
    for s in stages {
        add(&s.signature, out);
        for b in s.branches.values() {
            add(&b.signature, out);
            collect_reads(&b.stages, signatures, out);
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// A stage's react settings as declared.
struct ReactOptions {
    tools: Option<Vec<String>>,
    max_steps: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Origin {
    Input,
    /// Written by the predictor (or router) at this path, with its type.
    Written(String, FieldType),
}

#[derive(Debug, Clone, Default)]
struct Scope {
    fields: IndexMap<String, Origin>,
}

struct Builder<'a> {
    signatures: &'a IndexMap<String, SignatureConfig>,
    declared_inputs: Option<&'a [String]>,
    signals: &'a SignalsConfig,
    tools: &'a [ToolSpec],
    writers: Vec<(String, String)>,
    predictors: Vec<PredictorConfig>,
    first_input: Option<String>,
    /// Fields some stage or router reads: inputs, and intermediate outputs.
    read: Vec<String>,
}

impl Builder<'_> {
    fn stages(
        &mut self,
        stages: &[StageDecl],
        key: &str,
        prefix: &str,
        scope: &mut Scope,
    ) -> Result<Vec<Stage>, DeclError> {
        let mut out = Vec::new();
        for (i, s) in stages.iter().enumerate() {
            let key = format!("{key}[{i}]");
            check_name(&s.name).map_err(|m| (format!("{key}.name"), m))?;
            if stages[..i].iter().any(|t| t.name == s.name) {
                return Err((
                    format!("{key}.name"),
                    format!(
                        "`{}` is used twice; the path `{}` must name one stage (rename one)",
                        s.name,
                        join(prefix, &s.name)
                    ),
                ));
            }
            let path = join(prefix, &s.name);
            match &s.route_by {
                None => {
                    if !s.branches.is_empty() || s.default.is_some() || s.message.is_some() || s.history.is_some() {
                        return Err((
                            key,
                            "`branches`, `default`, `message` and `history` belong to a router; add `route_by` (an enum output of an earlier stage, or \"detector\")".into(),
                        ));
                    }
                    let Some(signature) = &s.signature else {
                        return Err((
                            key,
                            "a stage needs a `signature` (or `route_by` and `branches` for a router)".into(),
                        ));
                    };
                    let react = ReactOptions { tools: s.tools.clone(), max_steps: s.max_steps };
                    out.push(self.predictor(
                        &key,
                        &path,
                        signature,
                        s.module.unwrap_or(Module::Predict),
                        &react,
                        scope,
                    )?);
                }
                Some(by) => {
                    if s.signature.is_some() || s.module.is_some() || s.tools.is_some() || s.max_steps.is_some() {
                        return Err((
                            key,
                            "a router has `route_by` and `branches`, not a `signature` or `module`; declare the predictor that decides as a stage before it".into(),
                        ));
                    }
                    out.push(Stage::Router(self.router(&key, &path, s, by, scope)?));
                }
            }
        }
        Ok(out)
    }

    fn predictor(
        &mut self,
        key: &str,
        path: &str,
        signature: &str,
        module: Module,
        react: &ReactOptions,
        scope: &mut Scope,
    ) -> Result<Stage, DeclError> {
        if module != Module::React && (react.tools.is_some() || react.max_steps.is_some()) {
            return Err((key.to_string(), "`tools` and `max_steps` belong to a stage with module = \"react\"".into()));
        }
        let Some(sig) = self.signatures.get(signature) else {
            let known: Vec<_> = self.signatures.keys().cloned().collect();
            return Err((
                format!("{key}.signature"),
                format!("signature `{signature}` is not defined; defined: {}", known.join(", ")),
            ));
        };
        for field in &sig.signature.inputs {
            self.read(key, path, &field.name, scope)?;
        }
        for field in &sig.signature.outputs {
            if let Some(origin) = scope.fields.get(&field.name) {
                let what = match origin {
                    Origin::Input => "an input".to_string(),
                    Origin::Written(by, _) => format!("written by `{by}`"),
                };
                return Err((
                    key.to_string(),
                    format!(
                        "`{path}` writes `{}`, which is already {what}; each field has one writer (rename the output)",
                        field.name
                    ),
                ));
            }
            scope.fields.insert(field.name.clone(), Origin::Written(path.to_string(), field.ty.clone()));
        }
        if module != Module::React {
            self.predictors.push(PredictorConfig {
                name: path.to_string(),
                signature: signature.to_string(),
                module,
                part: Part::Whole,
            });
            return Ok(Stage::Predict(self.predictors.len() - 1));
        }
        crate::program::react::check_signature(&sig.signature).map_err(|m| (format!("{key}.signature"), m))?;
        let declared: Vec<String> = self.tools.iter().map(|t| t.name.clone()).collect();
        let tools = match &react.tools {
            Some(names) => {
                for name in names {
                    if !declared.contains(name) {
                        return Err((
                            format!("{key}.tools"),
                            format!(
                                "tool `{name}` is not declared; declared: {} (add a [tools.{name}] table)",
                                if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
                            ),
                        ));
                    }
                }
                names.clone()
            }
            None => declared,
        };
        if tools.is_empty() {
            return Err((
                key.to_string(),
                "a react stage needs at least one tool; declare one in a [tools.<name>] table".into(),
            ));
        }
        let max_steps = react.max_steps.unwrap_or(DEFAULT_REACT_STEPS);
        if !(1..=MAX_REACT_STEPS).contains(&max_steps) {
            return Err((format!("{key}.max_steps"), format!("must be between 1 and {MAX_REACT_STEPS}")));
        }
        for (suffix, part) in [(".react", Part::ReactStep { tools }), (".extract", Part::ReactExtract)] {
            self.predictors.push(PredictorConfig {
                name: format!("{path}{suffix}"),
                signature: signature.to_string(),
                module,
                part,
            });
        }
        let n = self.predictors.len();
        Ok(Stage::React(ReactStage { path: path.to_string(), react: n - 2, extract: n - 1, max_steps }))
    }

    /// A stage reads `field`: an input, or an earlier output.
    fn read(&mut self, key: &str, path: &str, field: &str, scope: &mut Scope) -> Result<(), DeclError> {
        if !self.read.iter().any(|r| r == field) {
            self.read.push(field.to_string());
        }
        if scope.fields.contains_key(field) {
            return Ok(());
        }
        if let Some((_, writer)) = self.writers.iter().find(|(f, _)| f == field) {
            let when = if writer == path || writer.starts_with(&format!("{path}.")) {
                "writes it itself".to_string()
            } else {
                format!("`{writer}` writes it only later or in another branch")
            };
            return Err((
                key.to_string(),
                format!(
                    "`{path}` reads `{field}` before anything writes it ({when}); a stage reads only inputs and the outputs of stages before it"
                ),
            ));
        }
        if let Some(inputs) = self.declared_inputs {
            return Err((
                key.to_string(),
                format!(
                    "`{path}` reads `{field}`, which is neither a program input ([program] inputs: {}) nor written by any stage",
                    inputs.join(", ")
                ),
            ));
        }
        scope.fields.insert(field.to_string(), Origin::Input);
        Ok(())
    }

    fn router(
        &mut self,
        key: &str,
        path: &str,
        s: &StageDecl,
        by: &str,
        scope: &mut Scope,
    ) -> Result<Router, DeclError> {
        let (route_by, labels): (RouteBy, Vec<String>) = if by == DETECTOR {
            let message = match (&s.message, self.signals.field.as_str()) {
                (Some(m), _) => m.clone(),
                (None, f) if !f.is_empty() => f.to_string(),
                (None, _) => match &self.first_input {
                    Some(f) => f.clone(),
                    None => {
                        return Err((
                            key.to_string(),
                            "the detector needs the input holding the message: set `message`".into(),
                        ));
                    }
                },
            };
            for field in std::iter::once(&message).chain(s.history.as_ref()) {
                self.read(key, path, field, scope)?;
                if let Some(Origin::Written(by, _)) = scope.fields.get(field) {
                    return Err((
                        key.to_string(),
                        format!("the detector reads inputs; `{field}` is written by `{by}`"),
                    ));
                }
            }
            let labels = Signal::ALL.iter().map(|s| s.name().to_string()).collect();
            (RouteBy::Detector(Detector::new(message, s.history.clone(), self.signals.clone())), labels)
        } else {
            self.read(key, path, by, scope).map_err(|(k, m)| (format!("{k}.route_by"), m))?;
            let values = match scope.fields.get(by) {
                Some(Origin::Written(_, FieldType::Enum { values })) => values.clone(),
                Some(Origin::Written(writer, _)) => {
                    return Err((
                        format!("{key}.route_by"),
                        format!(
                            "`{by}` (written by `{writer}`) is not an enum; a router needs an enum output, or \"detector\""
                        ),
                    ));
                }
                _ => {
                    return Err((
                        format!("{key}.route_by"),
                        format!(
                            "`{by}` is not an output of an earlier stage; route by an enum output of a stage before the router, or by \"detector\""
                        ),
                    ));
                }
            };
            (RouteBy::Field(by.to_string()), values)
        };
        let source = if by == DETECTOR { "the detector".to_string() } else { format!("`{by}`") };
        if s.branches.is_empty() {
            return Err((
                format!("{key}.branches"),
                format!(
                    "router `{path}` has no branches; add [program.stages.branches.<value>] for {}",
                    labels.join(", ")
                ),
            ));
        }
        for label in s.branches.keys() {
            if !labels.contains(label) {
                return Err((
                    format!("{key}.branches.{label}"),
                    format!("`{label}` is not a value {source} gives; values: {}", labels.join(", ")),
                ));
            }
        }
        let default = match &s.default {
            Some(d) => match s.branches.get_index_of(d) {
                Some(i) => Some(i),
                None => {
                    return Err((
                        format!("{key}.default"),
                        format!(
                            "`{d}` is not a branch; branches: {}",
                            s.branches.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            },
            None => None,
        };
        if default.is_none()
            && let Some(missing) = labels.iter().find(|l| !s.branches.contains_key(*l))
        {
            return Err((
                format!("{key}.branches"),
                format!(
                    "{source} can give `{missing}`, which has no handler; add [program.stages.branches.{missing}] or set `default` to a branch"
                ),
            ));
        }
        let mut branches = Vec::new();
        // What each branch writes; after the router, the fields every branch writes.
        let mut written: Vec<Vec<String>> = Vec::new();
        let mut seen: Vec<(String, (String, FieldType))> = Vec::new();
        for (label, b) in &s.branches {
            let bkey = format!("{key}.branches.{label}");
            let bpath = join(path, label);
            let mut inner = scope.clone();
            let stages = match (&b.signature, b.stages.is_empty()) {
                (Some(signature), true) => {
                    let react = ReactOptions { tools: b.tools.clone(), max_steps: b.max_steps };
                    let module = b.module.unwrap_or(Module::Predict);
                    vec![self.predictor(&bkey, &bpath, signature, module, &react, &mut inner)?]
                }
                (None, false) => {
                    if b.module.is_some() || b.tools.is_some() || b.max_steps.is_some() {
                        return Err((
                            bkey,
                            "`module`, `tools` and `max_steps` go on each of the branch's stages".into(),
                        ));
                    }
                    self.stages(&b.stages, &format!("{bkey}.stages"), &bpath, &mut inner)?
                }
                (Some(_), false) => {
                    return Err((bkey, "a branch is one predictor (`signature`) or `stages`, not both".into()));
                }
                (None, true) => {
                    return Err((
                        bkey,
                        format!("branch `{label}` has no handler; give it a `signature` (one predictor) or `stages`"),
                    ));
                }
            };
            let mut new: Vec<(String, FieldType)> = inner
                .fields
                .iter()
                .filter(|(f, _)| !scope.fields.contains_key(*f))
                .filter_map(|(f, o)| match o {
                    Origin::Written(_, ty) => Some((f.clone(), ty.clone())),
                    Origin::Input => None,
                })
                .collect();
            new.sort_by(|a, b| a.0.cmp(&b.0));
            // Inputs first read inside a branch are inputs for the whole program.
            for (f, o) in &inner.fields {
                if *o == Origin::Input && !scope.fields.contains_key(f) {
                    scope.fields.insert(f.clone(), Origin::Input);
                }
            }
            for (f, ty) in &new {
                if let Some((first, other)) = seen.iter().find(|(_, (g, _))| g == f).map(|(l, (_, t))| (l, t))
                    && other != ty
                {
                    return Err((
                        bkey,
                        format!("branch `{label}` writes `{f}` with another type than branch `{first}` does"),
                    ));
                }
            }
            for (f, ty) in &new {
                seen.push((label.clone(), (f.clone(), ty.clone())));
            }
            written.push(new.into_iter().map(|(f, _)| f).collect::<Vec<_>>());
            branches.push(Branch { label: label.clone(), stages });
        }
        let shared: Vec<&String> = written[0].iter().filter(|f| written.iter().all(|w| w.contains(f))).collect();
        if shared.is_empty() {
            let each: Vec<String> =
                s.branches.keys().zip(&written).map(|(l, w)| format!("`{l}` writes {}", list(w))).collect();
            return Err((
                format!("{key}.branches"),
                format!(
                    "the branches write no field in common ({}); every branch must write the fields later stages and the metric read",
                    each.join(", ")
                ),
            ));
        }
        for f in shared {
            let ty = seen.iter().find(|(_, (g, _))| g == f).map(|(_, (_, t))| t.clone()).expect("written");
            scope.fields.insert(f.clone(), Origin::Written(path.to_string(), ty));
        }
        Ok(Router { path: path.to_string(), by: route_by, branches, default })
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".into()
    } else {
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    }
}

/// Stage names are slugs: lower-case letters, digits, `_` and `-`, no dots
/// (dots join a path).
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a stage name; use lower-case letters, digits, `_` and `-` (dots join paths, e.g. `handlers.escalating`)",
            name.escape_debug()
        ))
    }
}
