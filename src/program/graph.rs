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

use crate::config::{PredictorConfig, SignalsConfig, SignatureConfig};
use crate::dataset::Example;
use crate::logs::signals::{Signal, SignalDetector};
use crate::metric::normalize_value;
use crate::program::module::Module;
use crate::program::signature::FieldType;

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
    Router(Router),
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
            RouteBy::Detector(d) => d.read(known).map(|s| s.name().to_string()).map_err(|e| format!("router `{}`: {e}", self.path)),
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
                    Stage::Predict(_) => {}
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
) -> Result<Declared, DeclError> {
    if stages.is_empty() {
        return Err((key.into(), "the program needs at least one stage: add [[program.stages]] with a name and a signature".into()));
    }
    let mut writers = Vec::new();
    collect_writes(stages, "", signatures, &mut writers);
    let mut builder = Builder {
        signatures,
        declared_inputs: inputs,
        signals,
        writers,
        predictors: Vec::new(),
        first_input: None,
    };
    let mut scope = Scope::default();
    if let Some(inputs) = inputs {
        for i in inputs {
            scope.fields.insert(i.clone(), Origin::Input);
        }
    }
    let graph = Graph { stages: builder.stages(stages, key, "", &mut scope)? };
    Ok(Declared { predictors: builder.predictors, graph })
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

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
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
    writers: Vec<(String, String)>,
    predictors: Vec<PredictorConfig>,
    first_input: Option<String>,
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
                        return Err((key, "a stage needs a `signature` (or `route_by` and `branches` for a router)".into()));
                    };
                    out.push(self.predictor(&key, &path, signature, s.module.unwrap_or(Module::Predict), scope)?);
                }
                Some(by) => {
                    if s.signature.is_some() || s.module.is_some() {
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
        scope: &mut Scope,
    ) -> Result<Stage, DeclError> {
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
        self.predictors.push(PredictorConfig { name: path.to_string(), signature: signature.to_string(), module });
        Ok(Stage::Predict(self.predictors.len() - 1))
    }

    /// A stage reads `field`: an input, or an earlier output.
    fn read(&mut self, key: &str, path: &str, field: &str, scope: &mut Scope) -> Result<(), DeclError> {
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
        self.first_input.get_or_insert_with(|| field.to_string());
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
        if s.branches.is_empty() {
            return Err((
                format!("{key}.branches"),
                format!("router `{path}` has no branches; add [program.stages.branches.<value>] for {}", labels.join(", ")),
            ));
        }
        for label in s.branches.keys() {
            if !labels.contains(label) {
                return Err((
                    format!("{key}.branches.{label}"),
                    format!("`{label}` is not a value `{by}` takes; values: {}", labels.join(", ")),
                ));
            }
        }
        let default = match &s.default {
            Some(d) => match s.branches.get_index_of(d) {
                Some(i) => Some(i),
                None => {
                    return Err((
                        format!("{key}.default"),
                        format!("`{d}` is not a branch; branches: {}", s.branches.keys().cloned().collect::<Vec<_>>().join(", ")),
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
                    "`{by}` can be `{missing}`, which has no handler; add [program.stages.branches.{missing}] or set `default` to a branch"
                ),
            ));
        }
        let mut branches = Vec::new();
        let mut written: Option<(String, Vec<(String, FieldType)>)> = None;
        for (label, b) in &s.branches {
            let bkey = format!("{key}.branches.{label}");
            let bpath = join(path, label);
            let mut inner = scope.clone();
            let stages = match (&b.signature, b.stages.is_empty()) {
                (Some(signature), true) => {
                    vec![self.predictor(&bkey, &bpath, signature, b.module.unwrap_or(Module::Predict), &mut inner)?]
                }
                (None, false) => {
                    if b.module.is_some() {
                        return Err((bkey, "`module` goes on each of the branch's stages".into()));
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
            match &written {
                None => written = Some((label.clone(), new)),
                Some((first, fields)) => {
                    let names = |v: &[(String, FieldType)]| v.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>();
                    if names(fields) != names(&new) {
                        return Err((
                            bkey,
                            format!(
                                "branch `{label}` writes {} but branch `{first}` writes {}; every branch writes the same fields so later stages can read them",
                                list(&names(&new)),
                                list(&names(fields))
                            ),
                        ));
                    }
                    if let Some(((f, _), _)) = fields.iter().zip(&new).find(|((_, a), (_, b))| a != b) {
                        return Err((
                            bkey,
                            format!("branch `{label}` writes `{f}` with another type than branch `{first}` does"),
                        ));
                    }
                }
            }
            branches.push(Branch { label: label.clone(), stages });
        }
        if let Some((_, fields)) = written {
            for (f, ty) in fields {
                scope.fields.insert(f, Origin::Written(path.to_string(), ty));
            }
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
