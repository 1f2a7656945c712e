//! JSON Schema → a grammar the embedded model's decoder enforces byte by byte.
//!
//! [`JsonGrammar::compile`] turns a schema into a small graph of nodes (string,
//! number, a set of fixed literals, object, array, and unions whose branches are
//! told apart by the first byte of the value). A [`JsonState`] walks that graph
//! as a pushdown automaton: a stack of small `Copy` frames, one per open value.
//! [`JsonState::allows`] simulates a token's bytes on an overlay of the stack
//! (the frames the token touches are copied into a fixed array), so checking a
//! token neither allocates nor clones the stack.
//!
//! The text has one fixed layout, the one the adapter's demos use
//! (see [`canonical_json`]): `{"a": 1, "b": [1, 2]}` — `": "` and `", "`
//! between the parts, no other whitespace, object keys in the order of the
//! schema's `properties`. Every keyword that changes which values are valid is
//! either enforced here or rejected by [`JsonGrammar::compile`] with a JSON
//! Pointer to where it is, so any text the automaton completes validates
//! against the schema.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::constrain::MAX_NUMBER_CHARS;

/// Most exponent digits a number may have (keeps every number finite as an `f64`).
const MAX_EXPONENT_DIGITS: u8 = 2;
/// Frames one check may push or touch above the committed stack.
const OVERLAY_FRAMES: usize = 32;
/// Longest minimal value a schema may have.
const MAX_MIN_TEXT: usize = 1 << 16;
/// How deep schemas may nest (not counting `$ref`, which is followed once).
const MAX_SCHEMA_DEPTH: usize = 256;

/// What the error advises.
const FIX: &str = "remove it or set `constrained = false` in [lm]";
const CANNOT: &str = "cannot be enforced by the embedded model's constrained decoding";

/// Keywords that change which values are valid and that the grammar does not
/// enforce: a schema that uses one is rejected.
const UNSUPPORTED: &[&str] = &[
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "prefixItems",
    "additionalItems",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentEncoding",
    "contentMediaType",
    "contentSchema",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "$recursiveAnchor",
];

/// Keywords the grammar enforces. `$ref`, `anyOf` and `oneOf` take no such sibling.
const ENFORCED: &[&str] = &[
    "$ref",
    "allOf",
    "anyOf",
    "oneOf",
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
];

// ---- JSON types, as the first byte of a value tells them ---------------------

type Types = u8;
const T_NULL: Types = 1;
const T_BOOL: Types = 2;
const T_NUM: Types = 4;
const T_STR: Types = 8;
const T_ARR: Types = 16;
const T_OBJ: Types = 32;
const T_ALL: Types = 63;

fn byte_types(b: u8) -> Types {
    match b {
        b'"' => T_STR,
        b'-' | b'0'..=b'9' => T_NUM,
        b'{' => T_OBJ,
        b'[' => T_ARR,
        b't' | b'f' => T_BOOL,
        b'n' => T_NULL,
        _ => 0,
    }
}

fn value_types(v: &Value) -> Types {
    match v {
        Value::Null => T_NULL,
        Value::Bool(_) => T_BOOL,
        Value::Number(_) => T_NUM,
        Value::String(_) => T_STR,
        Value::Array(_) => T_ARR,
        Value::Object(_) => T_OBJ,
    }
}

fn type_names(t: Types) -> String {
    let names: Vec<&str> = [
        (T_NULL, "null"),
        (T_BOOL, "booleans"),
        (T_NUM, "numbers"),
        (T_STR, "strings"),
        (T_ARR, "arrays"),
        (T_OBJ, "objects"),
    ]
    .iter()
    .filter(|(bit, _)| t & bit != 0)
    .map(|(_, name)| *name)
    .collect();
    names.join(", ")
}

// ---- canonical text ------------------------------------------------------------

/// `value` in the layout the grammar produces: `{"a": 1, "b": [1, 2]}`.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    String::from_utf8(out).expect("JSON text is UTF-8")
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                serde_json::to_writer(&mut *out, key).expect("a string serializes");
                out.extend_from_slice(b": ");
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("a scalar serializes"),
    }
}

// ---- errors --------------------------------------------------------------------

/// Why a schema cannot be enforced: the keyword, where it is, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The keyword at fault, when one is.
    pub keyword: Option<String>,
    /// JSON Pointer to the (sub)schema that holds it; empty for the root.
    pub pointer: String,
    pub detail: String,
}

impl SchemaError {
    fn new(keyword: Option<&str>, pointer: &str, detail: impl Into<String>) -> Self {
        Self { keyword: keyword.map(str::to_string), pointer: pointer.to_string(), detail: detail.into() }
    }

    fn unsupported(keyword: &str, pointer: &str) -> Self {
        Self::new(Some(keyword), pointer, CANNOT)
    }
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() { "the schema's root" } else { self.pointer.as_str() };
        match &self.keyword {
            Some(k) => write!(f, "the JSON Schema keyword `{k}` at {at} {}; {FIX}", self.detail),
            None => write!(f, "the JSON Schema at {at} {}; {FIX}", self.detail),
        }
    }
}

impl std::error::Error for SchemaError {}

/// A JSON Pointer token: `~` → `~0`, `/` → `~1`.
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

// ---- the grammar ---------------------------------------------------------------

type NodeId = u32;

/// No property (key frames) / the key is not a declared property (object frames).
const NONE: u16 = u16::MAX;

#[derive(Debug, Clone)]
enum Node {
    /// A `$ref` whose target is still being compiled.
    Pending,
    /// Accepts nothing (the schema `false`).
    Never,
    /// One of several nodes; each branch owns the JSON types listed with it
    /// (no two branches share one), so a value's first byte picks the branch.
    Alt(Vec<(Types, NodeId)>),
    /// A string of `min..=max` characters (code points).
    String {
        min: u32,
        max: u32,
    },
    Number {
        integer: bool,
    },
    /// One of these texts (sorted, no duplicates): `enum`, `const`, booleans, null.
    Literals(Vec<Vec<u8>>),
    Object(ObjectNode),
    Array {
        items: NodeId,
        min: u32,
        max: u32,
    },
}

#[derive(Debug, Clone)]
struct ObjectNode {
    /// Declared properties in the order they must appear.
    props: Vec<Prop>,
    /// For each `i` in `0..=props.len()`: the first required property at or after `i`.
    next_required: Vec<u16>,
    /// The schema of other keys; `None` when no other key is allowed.
    additional: Option<NodeId>,
}

#[derive(Debug, Clone)]
struct Prop {
    /// The key as JSON text, quotes included.
    key: Vec<u8>,
    node: NodeId,
    required: bool,
}

impl ObjectNode {
    fn required_left(&self, next: u16) -> bool {
        (self.next_required[next as usize] as usize) < self.props.len()
    }

    /// Whether declared property `k` may come when `next` is the first one not yet passed.
    fn allowed(&self, next: u16, k: usize) -> bool {
        k >= next as usize && k <= self.next_required[next as usize] as usize && k < self.props.len()
    }

    /// Whether a key not among `properties` may come now.
    fn free_allowed(&self, next: u16) -> bool {
        self.additional.is_some() && !self.required_left(next)
    }

    fn key_possible(&self, next: u16) -> bool {
        (next as usize) < self.props.len() || self.free_allowed(next)
    }

    fn is_declared(&self, key: &[u8]) -> bool {
        self.props.iter().any(|p| p.key == key)
    }
}

/// A compiled JSON Schema. Build it with [`JsonGrammar::compile`], walk it with
/// a [`JsonState`].
#[derive(Debug)]
pub struct JsonGrammar {
    nodes: Vec<Node>,
    /// Where each node comes from (pointer, keyword), for error messages.
    origin: Vec<(String, Option<&'static str>)>,
    /// The shortest text of each node (empty for a node that accepts nothing).
    min_text: Vec<Vec<u8>>,
    /// Whether each node accepts some value.
    productive: Vec<bool>,
    root: NodeId,
}

struct Compiler<'a> {
    document: &'a Value,
    nodes: Vec<Node>,
    origin: Vec<(String, Option<&'static str>)>,
    refs: HashMap<String, NodeId>,
    any: Option<NodeId>,
    /// Literal nodes from `enum`/`const`, with the node their values must also match.
    enums: Vec<(NodeId, NodeId)>,
    depth: usize,
}

fn count_keyword(map: &serde_json::Map<String, Value>, key: &str, ptr: &str) -> Result<Option<u32>, SchemaError> {
    match map.get(key) {
        None => Ok(None),
        Some(v) => {
            let n = v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64));
            match n {
                Some(n) => Ok(Some(n.min(u32::MAX as u64 - 1) as u32)),
                None => Err(SchemaError::new(Some(key), ptr, "must be a non-negative integer")),
            }
        }
    }
}

/// `#/a/b` → `/a/b` (percent-decoded); `None` for anything but a local JSON Pointer.
fn local_pointer(reference: &str) -> Option<String> {
    let fragment = reference.strip_prefix('#')?;
    if !(fragment.is_empty() || fragment.starts_with('/')) {
        return None;
    }
    let bytes = fragment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl<'a> Compiler<'a> {
    fn add(&mut self, node: Node, ptr: &str, keyword: Option<&'static str>) -> NodeId {
        self.nodes.push(node);
        self.origin.push((ptr.to_string(), keyword));
        (self.nodes.len() - 1) as NodeId
    }

    /// The node for any JSON value (built once).
    fn any(&mut self) -> NodeId {
        if let Some(id) = self.any {
            return id;
        }
        let id = self.add(Node::Pending, "", None);
        self.any = Some(id);
        let s = self.add(Node::String { min: 0, max: u32::MAX }, "", None);
        let n = self.add(Node::Number { integer: false }, "", None);
        let l = self.add(Node::Literals(vec![b"false".to_vec(), b"null".to_vec(), b"true".to_vec()]), "", None);
        let o = self.add(
            Node::Object(ObjectNode { props: Vec::new(), next_required: vec![0], additional: Some(id) }),
            "",
            None,
        );
        let a = self.add(Node::Array { items: id, min: 0, max: u32::MAX }, "", None);
        self.nodes[id as usize] = Node::Alt(vec![(T_STR, s), (T_NUM, n), (T_BOOL | T_NULL, l), (T_OBJ, o), (T_ARR, a)]);
        id
    }

    /// The JSON types a schema may accept (a superset where it cannot tell).
    fn types_of(&self, schema: &Value, depth: usize) -> Types {
        if depth > 32 {
            return T_ALL;
        }
        let map = match schema {
            Value::Bool(true) => return T_ALL,
            Value::Bool(false) => return 0,
            Value::Object(map) => map,
            _ => return T_ALL,
        };
        if let Some(Value::Array(all)) = map.get("allOf") {
            if let [one] = all.as_slice() {
                return self.types_of(one, depth + 1);
            }
        }
        if let Some(Value::String(r)) = map.get("$ref") {
            return match local_pointer(r).and_then(|p| self.document.pointer(&p)) {
                Some(target) => self.types_of(target, depth + 1),
                None => T_ALL,
            };
        }
        for kw in ["anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = map.get(kw) {
                return branches.iter().fold(0, |acc, b| acc | self.types_of(b, depth + 1));
            }
        }
        let mut t = match map.get("type") {
            Some(Value::String(s)) => type_bits(s).unwrap_or(T_ALL),
            Some(Value::Array(names)) => {
                names.iter().map(|n| n.as_str().and_then(type_bits).unwrap_or(T_ALL)).fold(0, |a, b| a | b)
            }
            _ => T_ALL,
        };
        if let Some(Value::Array(values)) = map.get("enum") {
            t &= values.iter().fold(0, |a, v| a | value_types(v));
        }
        if let Some(c) = map.get("const") {
            t &= value_types(c);
        }
        t
    }

    fn compile(&mut self, schema: &Value, ptr: &str) -> Result<NodeId, SchemaError> {
        if self.depth >= MAX_SCHEMA_DEPTH {
            return Err(SchemaError::new(None, ptr, "is nested too deeply"));
        }
        self.depth += 1;
        let result = self.compile_inner(schema, ptr);
        self.depth -= 1;
        result
    }

    fn compile_inner(&mut self, schema: &Value, ptr: &str) -> Result<NodeId, SchemaError> {
        let map = match schema {
            Value::Bool(true) => return Ok(self.any()),
            Value::Bool(false) => return Ok(self.add(Node::Never, ptr, None)),
            Value::Object(map) => map,
            _ => return Err(SchemaError::new(None, ptr, "is not a schema (a schema is an object or a boolean)")),
        };
        for (key, value) in map {
            let harmless = key == "uniqueItems" && value == &Value::Bool(false);
            if (UNSUPPORTED.contains(&key.as_str()) && !harmless) || (key == "$id" && !ptr.is_empty()) {
                return Err(SchemaError::unsupported(key, ptr));
            }
        }

        // `allOf` of one schema (pydantic v1 wraps a described `$ref` so) is that schema.
        if let Some(all) = map.get("allOf") {
            let one = match all.as_array().map(Vec::as_slice) {
                Some([one]) => one,
                _ => return Err(SchemaError::new(Some("allOf"), ptr, format!("with more than one schema {CANNOT}"))),
            };
            if let Some(other) = ENFORCED.iter().find(|k| **k != "allOf" && map.contains_key(**k)) {
                return Err(SchemaError::new(
                    Some(other),
                    ptr,
                    format!("next to `allOf` {CANNOT} (move it into its schema)"),
                ));
            }
            return self.compile(one, &format!("{ptr}/allOf/0"));
        }

        if let Some(reference) = map.get("$ref") {
            if let Some(other) = ENFORCED.iter().find(|k| **k != "$ref" && map.contains_key(**k)) {
                return Err(SchemaError::new(
                    Some(other),
                    ptr,
                    format!("next to `$ref` {CANNOT} (move it into the referenced schema)"),
                ));
            }
            let reference = reference
                .as_str()
                .ok_or_else(|| SchemaError::new(Some("$ref"), ptr, "must be a string such as \"#/$defs/Name\""))?;
            return self.reference(reference, ptr);
        }

        for kw in ["anyOf", "oneOf"] {
            let Some(branches) = map.get(kw) else { continue };
            if let Some(other) = ENFORCED.iter().find(|k| **k != kw && map.contains_key(**k)) {
                return Err(SchemaError::new(
                    Some(other),
                    ptr,
                    format!("next to `{kw}` {CANNOT} (move it into each branch)"),
                ));
            }
            let branches = branches
                .as_array()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| SchemaError::new(Some(kw), ptr, "must be a non-empty list of schemas"))?;
            let mut alts = Vec::new();
            let mut seen: Types = 0;
            for (i, branch) in branches.iter().enumerate() {
                let t = self.types_of(branch, 0);
                if t == 0 {
                    // A branch that accepts nothing never matches.
                    continue;
                }
                if seen & t != 0 {
                    return Err(SchemaError::new(
                        Some(kw),
                        ptr,
                        format!(
                            "has branches that overlap (more than one accepts {}): the embedded model's constrained \
                             decoding can only enforce a union of distinct JSON types, such as a type or null",
                            type_names(seen & t)
                        ),
                    ));
                }
                seen |= t;
                let id = self.compile(branch, &format!("{ptr}/{kw}/{i}"))?;
                alts.push((t, id));
            }
            return Ok(match alts.len() {
                0 => self.add(Node::Never, ptr, Some(if kw == "anyOf" { "anyOf" } else { "oneOf" })),
                1 => alts[0].1,
                _ => self.add(Node::Alt(alts), ptr, None),
            });
        }

        // The types, each with the keywords that concern it.
        let (mut types, mut integer, mut number) = (T_ALL, false, true);
        if let Some(t) = map.get("type") {
            let names: Vec<&Value> = match t {
                Value::Array(names) => names.iter().collect(),
                one => vec![one],
            };
            types = 0;
            number = false;
            for name in names {
                let name = name.as_str().filter(|n| type_bits(n).is_some()).ok_or_else(|| {
                    SchemaError::new(
                        Some("type"),
                        ptr,
                        "must name JSON types: string, integer, number, boolean, null, object, array",
                    )
                })?;
                types |= type_bits(name).expect("checked");
                integer |= name == "integer";
                number |= name == "number";
            }
        }
        let mut alts: Vec<(Types, NodeId)> = Vec::new();
        if types & T_STR != 0 {
            let min = count_keyword(map, "minLength", ptr)?.unwrap_or(0);
            let max = count_keyword(map, "maxLength", ptr)?.unwrap_or(u32::MAX);
            alts.push((T_STR, self.add(Node::String { min, max }, ptr, Some("minLength"))));
        }
        if types & T_NUM != 0 {
            alts.push((T_NUM, self.add(Node::Number { integer: integer && !number }, ptr, None)));
        }
        if types & (T_BOOL | T_NULL) != 0 {
            let mut literals = Vec::new();
            if types & T_BOOL != 0 {
                literals.extend([b"false".to_vec(), b"true".to_vec()]);
            }
            if types & T_NULL != 0 {
                literals.push(b"null".to_vec());
            }
            literals.sort();
            alts.push((types & (T_BOOL | T_NULL), self.add(Node::Literals(literals), ptr, None)));
        }
        if types & T_OBJ != 0 {
            let object = self.object(map, ptr)?;
            alts.push((T_OBJ, self.add(Node::Object(object), ptr, Some("required"))));
        }
        if types & T_ARR != 0 {
            let items = match map.get("items") {
                None => self.any(),
                Some(Value::Array(_)) => {
                    return Err(SchemaError::new(Some("items"), ptr, format!("given as a list (tuple form) {CANNOT}")));
                }
                Some(items) => self.compile(items, &format!("{ptr}/items"))?,
            };
            let min = count_keyword(map, "minItems", ptr)?.unwrap_or(0);
            let max = count_keyword(map, "maxItems", ptr)?.unwrap_or(u32::MAX);
            alts.push((T_ARR, self.add(Node::Array { items, min, max }, ptr, Some("minItems"))));
        }
        let base = match alts.len() {
            0 => self.add(Node::Never, ptr, Some("type")),
            1 => alts[0].1,
            _ => self.add(Node::Alt(alts), ptr, None),
        };

        let values: Vec<Value> = match (map.get("enum"), map.get("const")) {
            (None, None) => return Ok(base),
            (Some(Value::Array(values)), None) => values.clone(),
            (Some(Value::Array(values)), Some(c)) => values.iter().filter(|v| *v == c).cloned().collect(),
            (Some(_), _) => return Err(SchemaError::new(Some("enum"), ptr, "must be a list of values")),
            (None, Some(c)) => vec![c.clone()],
        };
        let mut literals: Vec<Vec<u8>> = values.iter().map(|v| canonical_json(v).into_bytes()).collect();
        literals.sort();
        literals.dedup();
        let keyword = if map.contains_key("enum") { "enum" } else { "const" };
        let id = self.add(Node::Literals(literals), ptr, Some(keyword));
        self.enums.push((id, base));
        Ok(id)
    }

    fn object(&mut self, map: &serde_json::Map<String, Value>, ptr: &str) -> Result<ObjectNode, SchemaError> {
        let mut props = Vec::new();
        if let Some(properties) = map.get("properties") {
            let properties = properties
                .as_object()
                .ok_or_else(|| SchemaError::new(Some("properties"), ptr, "must map names to schemas"))?;
            for (name, schema) in properties {
                let node = self.compile(schema, &format!("{ptr}/properties/{}", pointer_token(name)))?;
                props.push(Prop {
                    key: canonical_json(&Value::String(name.clone())).into_bytes(),
                    node,
                    required: false,
                });
            }
        }
        let additional = match map.get("additionalProperties") {
            None | Some(Value::Bool(true)) => Some(self.any()),
            Some(Value::Bool(false)) => None,
            Some(schema) => Some(self.compile(schema, &format!("{ptr}/additionalProperties"))?),
        };
        if let Some(required) = map.get("required") {
            let names = required
                .as_array()
                .ok_or_else(|| SchemaError::new(Some("required"), ptr, "must be a list of property names"))?;
            for name in names {
                let name = name
                    .as_str()
                    .ok_or_else(|| SchemaError::new(Some("required"), ptr, "must be a list of property names"))?;
                let key = canonical_json(&Value::String(name.to_string())).into_bytes();
                if let Some(p) = props.iter_mut().find(|p| p.key == key) {
                    p.required = true;
                } else if let Some(node) = additional {
                    props.push(Prop { key, node, required: true });
                } else {
                    return Err(SchemaError::new(
                        Some("required"),
                        ptr,
                        format!(
                            "lists `{name}`, which is not in `properties` while `additionalProperties` is false, \
                             so no object satisfies the schema"
                        ),
                    ));
                }
            }
        }
        if props.len() >= NONE as usize - 1 || props.iter().any(|p| p.key.len() >= NONE as usize) {
            return Err(SchemaError::new(Some("properties"), ptr, "has too many or too long keys"));
        }
        let mut next_required = vec![props.len() as u16; props.len() + 1];
        for i in (0..props.len()).rev() {
            next_required[i] = if props[i].required { i as u16 } else { next_required[i + 1] };
        }
        Ok(ObjectNode { props, next_required, additional })
    }

    fn reference(&mut self, reference: &str, ptr: &str) -> Result<NodeId, SchemaError> {
        let pointer = local_pointer(reference).ok_or_else(|| {
            SchemaError::new(
                Some("$ref"),
                ptr,
                format!(
                    "points to `{reference}`: the embedded model's constrained decoding only follows references \
                     inside the schema, such as \"#/$defs/Name\""
                ),
            )
        })?;
        if let Some(&id) = self.refs.get(&pointer) {
            return Ok(id);
        }
        let document = self.document;
        let target = document.pointer(&pointer).ok_or_else(|| {
            SchemaError::new(Some("$ref"), ptr, format!("points to `{reference}`, which is not in the schema"))
        })?;
        let id = self.add(Node::Pending, ptr, Some("$ref"));
        self.refs.insert(pointer.clone(), id);
        let inner = self.compile(target, &pointer)?;
        self.nodes[id as usize] = Node::Alt(vec![(T_ALL, inner)]);
        Ok(id)
    }
}

fn type_bits(name: &str) -> Option<Types> {
    Some(match name {
        "null" => T_NULL,
        "boolean" => T_BOOL,
        "integer" | "number" => T_NUM,
        "string" => T_STR,
        "array" => T_ARR,
        "object" => T_OBJ,
        _ => return None,
    })
}

impl JsonGrammar {
    /// Compiles `schema`, or says which keyword (and where) cannot be enforced.
    pub fn compile(schema: &Value) -> Result<JsonGrammar, SchemaError> {
        let mut c = Compiler {
            document: schema,
            nodes: Vec::new(),
            origin: Vec::new(),
            refs: HashMap::new(),
            any: None,
            enums: Vec::new(),
            depth: 0,
        };
        let root = c.compile(schema, "")?;
        let mut g =
            JsonGrammar { nodes: c.nodes, origin: c.origin, min_text: Vec::new(), productive: Vec::new(), root };
        let enums = c.enums;
        g.collapse_aliases()?;
        let enums: Vec<(NodeId, NodeId)> = enums.iter().map(|&(l, b)| (g.alias_target(l), g.alias_target(b))).collect();
        g.root = g.alias_target(g.root);
        g.filter_enums(&enums);
        g.compute_min_texts();
        g.check_reachable()?;
        Ok(g)
    }

    /// Where a chain of `$ref` aliases ends.
    fn alias_target(&self, mut id: NodeId) -> NodeId {
        for _ in 0..=self.nodes.len() {
            match &self.nodes[id as usize] {
                Node::Alt(branches) if branches.len() == 1 => id = branches[0].1,
                _ => return id,
            }
        }
        id
    }

    /// Points every reference past `$ref` aliases; rejects a `$ref` that only refers to itself.
    fn collapse_aliases(&mut self) -> Result<(), SchemaError> {
        for id in 0..self.nodes.len() {
            let target = self.alias_target(id as NodeId);
            if matches!(&self.nodes[target as usize], Node::Alt(b) if b.len() == 1) {
                let (ptr, _) = &self.origin[id];
                return Err(SchemaError::new(Some("$ref"), ptr, "refers to itself without describing a value"));
            }
        }
        let targets: Vec<NodeId> = (0..self.nodes.len()).map(|id| self.alias_target(id as NodeId)).collect();
        for node in self.nodes.iter_mut() {
            match node {
                Node::Alt(branches) => {
                    for b in branches.iter_mut() {
                        b.1 = targets[b.1 as usize];
                    }
                }
                Node::Object(o) => {
                    for p in o.props.iter_mut() {
                        p.node = targets[p.node as usize];
                    }
                    if let Some(a) = o.additional.as_mut() {
                        *a = targets[*a as usize];
                    }
                }
                Node::Array { items, .. } => *items = targets[*items as usize],
                _ => {}
            }
        }
        Ok(())
    }

    /// Drops the `enum`/`const` values that the rest of their schema (or the
    /// layout) does not accept.
    fn filter_enums(&mut self, enums: &[(NodeId, NodeId)]) {
        loop {
            let mut changed = false;
            for &(literals, base) in enums {
                let Node::Literals(values) = &self.nodes[literals as usize] else { continue };
                let kept: Vec<Vec<u8>> = values.iter().filter(|v| self.accepts(base, v)).cloned().collect();
                if kept.len() != values.len() {
                    self.nodes[literals as usize] = Node::Literals(kept);
                    changed = true;
                }
            }
            if !changed {
                return;
            }
        }
    }

    /// Whether `node` accepts exactly `text`.
    fn accepts(&self, node: NodeId, text: &[u8]) -> bool {
        let mut stack = vec![Frame::Value { node }];
        text.iter().all(|&b| feed(self, &mut stack, b)) && self.complete(&stack)
    }

    fn min_of(&self, id: usize, min: &[Option<Vec<u8>>]) -> Option<Vec<u8>> {
        let text = match &self.nodes[id] {
            Node::Pending | Node::Never => None,
            Node::Alt(branches) => {
                branches.iter().filter_map(|(_, b)| min[*b as usize].as_ref()).min_by_key(|t| t.len()).cloned()
            }
            Node::String { min, max } => (min <= max && (*min as usize) < MAX_MIN_TEXT).then(|| {
                let mut t = vec![b'"'];
                t.extend(std::iter::repeat_n(b'x', *min as usize));
                t.push(b'"');
                t
            }),
            Node::Number { .. } => Some(b"0".to_vec()),
            Node::Literals(values) => values.iter().min_by_key(|v| v.len()).cloned(),
            Node::Object(o) => {
                let mut t = vec![b'{'];
                let mut first = true;
                for p in o.props.iter().filter(|p| p.required) {
                    if !first {
                        t.extend_from_slice(b", ");
                    }
                    first = false;
                    t.extend_from_slice(&p.key);
                    t.extend_from_slice(b": ");
                    t.extend_from_slice(min[p.node as usize].as_ref()?);
                }
                t.push(b'}');
                Some(t)
            }
            Node::Array { items, min: lo, max: hi } => {
                if lo > hi {
                    return None;
                }
                let mut t = vec![b'['];
                if *lo > 0 {
                    let item = min[*items as usize].as_ref()?;
                    if (item.len() + 2) * (*lo as usize) > MAX_MIN_TEXT {
                        return None;
                    }
                    for i in 0..*lo {
                        if i > 0 {
                            t.extend_from_slice(b", ");
                        }
                        t.extend_from_slice(item);
                    }
                }
                t.push(b']');
                Some(t)
            }
        };
        text.filter(|t| t.len() <= MAX_MIN_TEXT)
    }

    /// The shortest text of every node (least fixpoint: recursion converges).
    fn shortest_texts(&self) -> Vec<Option<Vec<u8>>> {
        let mut min: Vec<Option<Vec<u8>>> = vec![None; self.nodes.len()];
        loop {
            let mut changed = false;
            for id in 0..self.nodes.len() {
                if let Some(t) = self.min_of(id, &min) {
                    if min[id].as_ref().is_none_or(|old| t.len() < old.len()) {
                        min[id] = Some(t);
                        changed = true;
                    }
                }
            }
            if !changed {
                return min;
            }
        }
    }

    fn compute_min_texts(&mut self) {
        let min = self.shortest_texts();
        // Unproductive nodes keep an empty text; `check_reachable` rejects any the root reaches.
        self.productive = min.iter().map(Option::is_some).collect();
        self.min_text = min.into_iter().map(Option::unwrap_or_default).collect();
    }
}

impl JsonGrammar {
    /// Rejects a schema where the decoder could start a value it cannot finish.
    fn check_reachable(&self) -> Result<(), SchemaError> {
        let mut seen = vec![false; self.nodes.len()];
        let mut order = Vec::new();
        let mut todo = vec![self.root];
        while let Some(id) = todo.pop() {
            if std::mem::replace(&mut seen[id as usize], true) {
                continue;
            }
            order.push(id);
            match &self.nodes[id as usize] {
                Node::Alt(branches) => todo.extend(branches.iter().map(|b| b.1)),
                Node::Object(o) => {
                    todo.extend(o.props.iter().map(|p| p.node));
                    todo.extend(o.additional);
                }
                Node::Array { items, max, .. } if *max > 0 => todo.push(*items),
                _ => {}
            }
        }
        let dead: Vec<usize> = order.iter().map(|&id| id as usize).filter(|&id| !self.productive[id]).collect();
        // Blame a node that accepts nothing by itself before one that merely contains such a node.
        let intrinsic = |id: &&usize| match &self.nodes[**id] {
            Node::Never | Node::Literals(_) | Node::String { .. } => true,
            Node::Array { min, max, .. } => min > max,
            _ => false,
        };
        let Some(&id) = dead.iter().find(intrinsic).or(dead.first()) else { return Ok(()) };
        let (ptr, keyword) = &self.origin[id];
        let (keyword, detail) = match (&self.nodes[id], keyword) {
            (Node::Never, None) => (None, "is `false` (it accepts no value) where a value may have to be written"),
            (Node::Never, Some("type")) => (Some("type"), "lists no JSON type"),
            (Node::Never, k) => (*k, "has no branch that accepts a value"),
            (Node::Literals(_), k) => (
                *k,
                "leaves no value: none of the listed values also fits the rest of the schema as the embedded \
                 model writes JSON (`{\"a\": 1, \"b\": [1, 2]}`, keys in `properties` order)",
            ),
            (Node::String { min, max }, _) if min > max => (Some("minLength"), "is larger than `maxLength`"),
            (Node::String { .. }, _) => (Some("minLength"), "is too large"),
            (Node::Array { min, max, .. }, _) if min > max => (Some("minItems"), "is larger than `maxItems`"),
            (Node::Object(_), _) => (
                Some("required"),
                "makes every value infinitely deep (each object requires another one inside it) or too long",
            ),
            (Node::Array { .. }, _) => {
                (Some("minItems"), "makes every value infinitely deep (each array requires another one) or too long")
            }
            _ => (None, "accepts no value the embedded model's constrained decoding can finish"),
        };
        Err(SchemaError::new(keyword, ptr, detail))
    }

    /// The shortest value the schema accepts, as the decoder would write it.
    pub fn min_value(&self) -> &[u8] {
        &self.min_text[self.root as usize]
    }

    /// A fresh automaton at the start of a value.
    pub fn start(self: &Arc<Self>) -> JsonState {
        let mut state = JsonState {
            grammar: self.clone(),
            stack: vec![Frame::Value { node: self.root }],
            dead: false,
            next: [0; 4],
        };
        state.refresh_next();
        state
    }

    /// Past `Alt` nodes: the node that handles a value starting with `b`.
    fn resolve(&self, mut node: NodeId, b: u8) -> Option<NodeId> {
        let t = byte_types(b);
        for _ in 0..64 {
            match &self.nodes[node as usize] {
                Node::Alt(branches) => node = branches.iter().find(|(types, _)| types & t != 0)?.1,
                _ => return Some(node),
            }
        }
        None
    }

    /// Whether the text is a whole value: nothing open, or only a number or
    /// literal that may end here.
    fn complete(&self, stack: &[Frame]) -> bool {
        match stack {
            [] => true,
            [Frame::Num { phase, .. }] => phase.complete(),
            [Frame::Lit { node, cand, len }] => self.literal_complete(*node, *cand, *len),
            _ => false,
        }
    }

    fn literal_complete(&self, node: NodeId, cand: u32, len: u32) -> bool {
        matches!(&self.nodes[node as usize], Node::Literals(l) if l.get(cand as usize).is_some_and(|v| v.len() == len as usize))
    }

    fn object(&self, node: NodeId) -> Option<&ObjectNode> {
        match &self.nodes[node as usize] {
            Node::Object(o) => Some(o),
            _ => None,
        }
    }

    fn write_prop(&self, p: &Prop, out: &mut Vec<u8>) {
        out.extend_from_slice(&p.key);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&self.min_text[p.node as usize]);
    }

    /// The shortest end of an object: the required properties from `next` on
    /// (`first`: no value written yet since `{` or `, `), then `}`.
    fn write_object_rest(&self, o: &ObjectNode, next: u16, mut first: bool, out: &mut Vec<u8>) {
        for p in o.props[next as usize..].iter().filter(|p| p.required) {
            if !first {
                out.extend_from_slice(b", ");
            }
            first = false;
            self.write_prop(p, out);
        }
        out.push(b'}');
    }

    fn object_rest_len(&self, o: &ObjectNode, next: u16, first: bool) -> usize {
        let mut out = Vec::new();
        self.write_object_rest(o, next, first, &mut out);
        out.len()
    }

    /// A key for a property not in `properties`: the shortest of `""`, `"x"`, `"xx"`, ... not declared.
    fn fresh_key(&self, o: &ObjectNode) -> Vec<u8> {
        (0..)
            .map(|n| format!("\"{}\"", "x".repeat(n)).into_bytes())
            .find(|k| !o.is_declared(k))
            .expect("some key is free")
    }

    /// After `, ` in an object: the shortest way to write one more property and close it.
    fn write_next_property(&self, o: &ObjectNode, next: u16, out: &mut Vec<u8>) {
        if o.required_left(next) {
            self.write_object_rest(o, next, true, out);
            return;
        }
        let mut best: Option<Vec<u8>> = None;
        let mut consider = |text: Vec<u8>| {
            if best.as_ref().is_none_or(|b| text.len() < b.len()) {
                best = Some(text);
            }
        };
        for p in &o.props[next as usize..] {
            let mut text = Vec::new();
            self.write_prop(p, &mut text);
            text.push(b'}');
            consider(text);
        }
        if let Some(additional) = o.additional {
            let mut text = self.fresh_key(o);
            text.extend_from_slice(b": ");
            text.extend_from_slice(&self.min_text[additional as usize]);
            text.push(b'}');
            consider(text);
        }
        out.extend(best.unwrap_or_else(|| b"}".to_vec()));
    }

    /// The shortest bytes that finish the top frame (for an object or array,
    /// the whole of it).
    fn finish_frame(&self, frame: Frame) -> Vec<u8> {
        let texts = &self.min_text;
        let mut out = Vec::new();
        match frame {
            Frame::Value { node } => out.extend_from_slice(&texts[node as usize]),
            Frame::Num { .. } => out.push(b'0'),
            Frame::Lit { node, cand, len } => {
                if let Node::Literals(lits) = &self.nodes[node as usize] {
                    let prefix = &lits[cand as usize][..len as usize];
                    if let Some(best) =
                        lits[cand as usize..].iter().take_while(|l| l.starts_with(prefix)).min_by_key(|l| l.len())
                    {
                        out.extend_from_slice(&best[len as usize..]);
                    }
                }
            }
            Frame::Str { node, chars, esc, utf8 } => {
                if utf8.need > 0 {
                    out.push(utf8.lo);
                    out.extend(std::iter::repeat_n(0x80, utf8.need as usize - 1));
                }
                out.extend_from_slice(match esc {
                    ESC_BACKSLASH => b"n",
                    ESC_U0 => b"0000",
                    ESC_UD | ESC_LEFT3 => b"000",
                    ESC_LEFT2 => b"00",
                    ESC_LEFT1 => b"0",
                    _ => b"",
                });
                if let Node::String { min, .. } = self.nodes[node as usize] {
                    out.extend(std::iter::repeat_n(b'x', min.saturating_sub(chars) as usize));
                }
                out.push(b'"');
            }
            Frame::Key { node, next, cand, len, free, utf8 } => {
                let Some(o) = self.object(node) else { return out };
                let mut best: Option<(usize, Vec<u8>)> = None;
                let mut consider = |cost: usize, text: Vec<u8>| {
                    if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                        best = Some((cost, text));
                    }
                };
                let prefix = (cand != NONE).then(|| &o.props[cand as usize].key[..len as usize]);
                if let Some(prefix) = prefix {
                    for (k, p) in o.props.iter().enumerate() {
                        if o.allowed(next, k) && p.key.starts_with(prefix) {
                            let rest = p.key[prefix.len()..].to_vec();
                            let cost = rest.len()
                                + 2
                                + texts[p.node as usize].len()
                                + self.object_rest_len(o, k as u16 + 1, false);
                            consider(cost, rest);
                        }
                    }
                }
                if let (true, Some(additional)) = (free, o.additional) {
                    let mut close = Vec::new();
                    if utf8.need > 0 {
                        close.push(utf8.lo);
                        close.extend(std::iter::repeat_n(0x80, utf8.need as usize - 1));
                    }
                    let taken = |suffix: &[u8]| {
                        prefix.is_some_and(|prefix| {
                            let mut key = prefix.to_vec();
                            key.extend_from_slice(suffix);
                            key.push(b'"');
                            o.is_declared(&key)
                        })
                    };
                    while taken(&close) {
                        close.push(b'x');
                    }
                    close.push(b'"');
                    consider(close.len() + 3 + texts[additional as usize].len(), close);
                }
                if let Some((_, text)) = best {
                    out = text;
                }
            }
            Frame::Obj { node, next, pending, phase } => {
                let Some(o) = self.object(node) else { return out };
                match phase {
                    ObjPhase::Open => self.write_object_rest(o, next, true, &mut out),
                    ObjPhase::AfterValue => self.write_object_rest(o, next, false, &mut out),
                    ObjPhase::Colon | ObjPhase::ColonSpace => {
                        out.extend_from_slice(if phase == ObjPhase::Colon { b": " } else { b" " });
                        let child = if pending == NONE { o.additional } else { Some(o.props[pending as usize].node) };
                        if let Some(child) = child {
                            out.extend_from_slice(&texts[child as usize]);
                        }
                        self.write_object_rest(o, next, false, &mut out);
                    }
                    ObjPhase::Comma | ObjPhase::NeedKey => {
                        if phase == ObjPhase::Comma {
                            out.push(b' ');
                        }
                        self.write_next_property(o, next, &mut out);
                    }
                    ObjPhase::InKey | ObjPhase::InValue => {}
                }
            }
            Frame::Arr { node, count, phase } => {
                let Node::Array { items, min, .. } = self.nodes[node as usize] else { return out };
                let item = &texts[items as usize];
                let mut written = count;
                match phase {
                    ArrPhase::Open => {
                        for i in 0..min {
                            if i > 0 {
                                out.extend_from_slice(b", ");
                            }
                            out.extend_from_slice(item);
                        }
                        written = min;
                    }
                    ArrPhase::Comma | ArrPhase::NeedValue => {
                        if phase == ArrPhase::Comma {
                            out.push(b' ');
                        }
                        out.extend_from_slice(item);
                        written += 1;
                    }
                    ArrPhase::AfterValue => {}
                    ArrPhase::InValue => return out,
                }
                for _ in written..min {
                    out.extend_from_slice(b", ");
                    out.extend_from_slice(item);
                }
                out.push(b']');
            }
        }
        out
    }
}

// ---- the automaton -------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumPhase {
    Start,
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl NumPhase {
    fn complete(self) -> bool {
        matches!(self, NumPhase::Zero | NumPhase::Int | NumPhase::Frac | NumPhase::ExpDigits)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjPhase {
    /// After `{`: a key or `}`.
    Open,
    /// A key frame is on top.
    InKey,
    /// After the key: `:`.
    Colon,
    /// After `:`: ` `.
    ColonSpace,
    /// The value's frame is on top.
    InValue,
    /// After a value: `,` or `}`.
    AfterValue,
    /// After `,`: ` `.
    Comma,
    /// After `, `: a key.
    NeedKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrPhase {
    /// After `[`: an item or `]`.
    Open,
    /// The item's frame is on top.
    InValue,
    /// After an item: `,` or `]`.
    AfterValue,
    /// After `,`: ` `.
    Comma,
    /// After `, `: an item.
    NeedValue,
}

/// The rest of a multi-byte UTF-8 character: `need` more bytes, the next in `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Utf8 {
    need: u8,
    lo: u8,
    hi: u8,
}

const UTF8_DONE: Utf8 = Utf8 { need: 0, lo: 0x80, hi: 0xbf };

/// What a lead byte starts (`None`: not a lead byte of well-formed UTF-8).
fn utf8_lead(b: u8) -> Option<Utf8> {
    let (need, lo, hi) = match b {
        0xc2..=0xdf => (1, 0x80, 0xbf),
        0xe0 => (2, 0xa0, 0xbf),
        0xe1..=0xec | 0xee..=0xef => (2, 0x80, 0xbf),
        0xed => (2, 0x80, 0x9f),
        0xf0 => (3, 0x90, 0xbf),
        0xf1..=0xf3 => (3, 0x80, 0xbf),
        0xf4 => (3, 0x80, 0x8f),
        _ => return None,
    };
    Some(Utf8 { need, lo, hi })
}

/// Escape states inside a string.
const ESC_NONE: u8 = 0;
const ESC_BACKSLASH: u8 = 1;
/// `\u`, no digit yet.
const ESC_U0: u8 = 2;
/// `\uD`: the next digit must be 0-7 (no surrogates: serde_json rejects lone ones).
const ESC_UD: u8 = 3;
const ESC_LEFT3: u8 = 4;
const ESC_LEFT2: u8 = 5;
const ESC_LEFT1: u8 = 6;

/// One open value (or key). Small and `Copy`, so a check copies frames, not the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// A value of `node`, nothing of it written yet.
    Value {
        node: NodeId,
    },
    Str {
        node: NodeId,
        chars: u32,
        esc: u8,
        utf8: Utf8,
    },
    Num {
        integer: bool,
        len: u8,
        phase: NumPhase,
        exp: u8,
    },
    /// One of a literal node's texts: `cand` is the first that starts with the
    /// `len` bytes written (so those bytes are `texts[cand][..len]`).
    Lit {
        node: NodeId,
        cand: u32,
        len: u32,
    },
    /// `next`: the first declared property not yet passed; `pending`: the
    /// property whose value comes (`NONE` for an undeclared key).
    Obj {
        node: NodeId,
        next: u16,
        pending: u16,
        phase: ObjPhase,
    },
    /// A key being written (the object's frame is below). `cand`: the first
    /// declared key that starts with the `len` bytes written (`NONE` if none
    /// does); `free`: they may still become an undeclared key.
    Key {
        node: NodeId,
        next: u16,
        cand: u16,
        len: u16,
        free: bool,
        utf8: Utf8,
    },
    Arr {
        node: NodeId,
        count: u32,
        phase: ArrPhase,
    },
}

/// What one byte does to the top frame.
enum Act {
    Reject,
    /// Replace the top frame; the byte is consumed.
    Set(Frame),
    /// Replace the top frame and give it the byte again.
    SetRetry(Frame),
    /// Replace the top frame and push a child; the byte is consumed.
    SetPush(Frame, Frame),
    /// Replace the top frame, push a child and give the child the byte.
    SetPushRetry(Frame, Frame),
    /// The value on top ends with this byte.
    PopValue,
    /// The value on top ended before this byte: give it to the parent.
    PopValueRetry,
    /// The key on top ends with this byte: a declared property, or `NONE`.
    KeyDone(u16),
}

trait Stack {
    fn top(&self) -> Option<Frame>;
    fn set_top(&mut self, frame: Frame);
    fn pop(&mut self);
    fn push(&mut self, frame: Frame) -> bool;
}

impl Stack for Vec<Frame> {
    fn top(&self) -> Option<Frame> {
        self.last().copied()
    }
    fn set_top(&mut self, frame: Frame) {
        if let Some(top) = self.last_mut() {
            *top = frame;
        }
    }
    fn pop(&mut self) {
        Vec::pop(self);
    }
    fn push(&mut self, frame: Frame) -> bool {
        Vec::push(self, frame);
        true
    }
}

/// A stack seen through a check: the committed frames, read-only, with the
/// frames the check changes or pushes kept in a fixed array on top.
struct Overlay<'a> {
    base: &'a [Frame],
    /// How many base frames are still below the local ones.
    live: usize,
    local: [Frame; OVERLAY_FRAMES],
    n: usize,
}

impl<'a> Overlay<'a> {
    fn new(base: &'a [Frame]) -> Self {
        Self { base, live: base.len(), local: [Frame::Value { node: 0 }; OVERLAY_FRAMES], n: 0 }
    }
}

impl Stack for Overlay<'_> {
    fn top(&self) -> Option<Frame> {
        if self.n > 0 {
            Some(self.local[self.n - 1])
        } else if self.live > 0 {
            Some(self.base[self.live - 1])
        } else {
            None
        }
    }
    fn set_top(&mut self, frame: Frame) {
        if self.n > 0 {
            self.local[self.n - 1] = frame;
        } else if self.live > 0 {
            self.live -= 1;
            self.local[0] = frame;
            self.n = 1;
        }
    }
    fn pop(&mut self) {
        if self.n > 0 {
            self.n -= 1;
        } else if self.live > 0 {
            self.live -= 1;
        }
    }
    fn push(&mut self, frame: Frame) -> bool {
        if self.n == OVERLAY_FRAMES {
            return false;
        }
        self.local[self.n] = frame;
        self.n += 1;
        true
    }
}

/// A value ended: drop its frame and move its parent past it.
fn pop_value<S: Stack>(s: &mut S) {
    s.pop();
    match s.top() {
        Some(Frame::Obj { node, next, pending, phase: ObjPhase::InValue }) => {
            s.set_top(Frame::Obj { node, next, pending, phase: ObjPhase::AfterValue })
        }
        Some(Frame::Arr { node, count, phase: ArrPhase::InValue }) => {
            s.set_top(Frame::Arr { node, count: count.saturating_add(1), phase: ArrPhase::AfterValue })
        }
        _ => {}
    }
}

/// Advances the automaton by one byte; `false` if the byte is not allowed
/// (the stack is then in no particular state).
fn feed<S: Stack>(g: &JsonGrammar, s: &mut S, b: u8) -> bool {
    loop {
        let Some(top) = s.top() else { return false };
        match step(g, top, b) {
            Act::Reject => return false,
            Act::Set(f) => {
                s.set_top(f);
                return true;
            }
            Act::SetRetry(f) => s.set_top(f),
            Act::SetPush(f, child) => {
                s.set_top(f);
                return s.push(child);
            }
            Act::SetPushRetry(f, child) => {
                s.set_top(f);
                if !s.push(child) {
                    return false;
                }
            }
            Act::PopValue => {
                pop_value(s);
                return true;
            }
            Act::PopValueRetry => pop_value(s),
            Act::KeyDone(prop) => {
                s.pop();
                let Some(Frame::Obj { node, .. }) = s.top() else { return false };
                let Some(o) = g.object(node) else { return false };
                let next = if prop == NONE { o.props.len() as u16 } else { prop + 1 };
                s.set_top(Frame::Obj { node, next, pending: prop, phase: ObjPhase::Colon });
                return true;
            }
        }
    }
}

fn step(g: &JsonGrammar, frame: Frame, b: u8) -> Act {
    match frame {
        Frame::Value { node } => {
            let Some(node) = g.resolve(node, b) else { return Act::Reject };
            match &g.nodes[node as usize] {
                Node::String { .. } if b == b'"' => {
                    Act::Set(Frame::Str { node, chars: 0, esc: ESC_NONE, utf8: UTF8_DONE })
                }
                Node::Number { integer } => {
                    Act::SetRetry(Frame::Num { integer: *integer, len: 0, phase: NumPhase::Start, exp: 0 })
                }
                Node::Literals(_) => Act::SetRetry(Frame::Lit { node, cand: 0, len: 0 }),
                Node::Object(_) if b == b'{' => {
                    Act::Set(Frame::Obj { node, next: 0, pending: NONE, phase: ObjPhase::Open })
                }
                Node::Array { .. } if b == b'[' => Act::Set(Frame::Arr { node, count: 0, phase: ArrPhase::Open }),
                _ => Act::Reject,
            }
        }
        Frame::Str { node, chars, esc, utf8 } => string_step(g, node, chars, esc, utf8, b),
        Frame::Num { integer, len, phase, exp } => number_step(integer, len, phase, exp, b),
        Frame::Lit { node, cand, len } => literal_step(g, node, cand, len, b),
        Frame::Obj { node, next, pending, phase } => object_step(g, node, next, pending, phase, b),
        Frame::Key { node, next, cand, len, free, utf8 } => key_step(g, node, next, cand, len, free, utf8, b),
        Frame::Arr { node, count, phase } => array_step(g, node, count, phase, b),
    }
}

fn string_step(g: &JsonGrammar, node: NodeId, chars: u32, esc: u8, utf8: Utf8, b: u8) -> Act {
    let Node::String { min, max } = g.nodes[node as usize] else { return Act::Reject };
    let set = |chars: u32, esc: u8, utf8: Utf8| Act::Set(Frame::Str { node, chars, esc, utf8 });
    if utf8.need > 0 {
        return if (utf8.lo..=utf8.hi).contains(&b) {
            set(chars, esc, Utf8 { need: utf8.need - 1, lo: 0x80, hi: 0xbf })
        } else {
            Act::Reject
        };
    }
    let hex = b.is_ascii_hexdigit();
    match esc {
        ESC_NONE => match b {
            b'"' if chars >= min => Act::PopValue,
            b'"' | 0..=0x1f => Act::Reject,
            _ if chars >= max => Act::Reject,
            b'\\' => set(chars + 1, ESC_BACKSLASH, utf8),
            0x20..=0x7f => set(chars + 1, ESC_NONE, utf8),
            _ => match utf8_lead(b) {
                Some(u) => set(chars + 1, ESC_NONE, u),
                None => Act::Reject,
            },
        },
        ESC_BACKSLASH => match b {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => set(chars, ESC_NONE, utf8),
            b'u' => set(chars, ESC_U0, utf8),
            _ => Act::Reject,
        },
        ESC_U0 if b == b'd' || b == b'D' => set(chars, ESC_UD, utf8),
        ESC_U0 if hex => set(chars, ESC_LEFT3, utf8),
        ESC_UD if (b'0'..=b'7').contains(&b) => set(chars, ESC_LEFT2, utf8),
        ESC_LEFT3 if hex => set(chars, ESC_LEFT2, utf8),
        ESC_LEFT2 if hex => set(chars, ESC_LEFT1, utf8),
        ESC_LEFT1 if hex => set(chars, ESC_NONE, utf8),
        _ => Act::Reject,
    }
}

fn number_step(integer: bool, len: u8, phase: NumPhase, exp: u8, b: u8) -> Act {
    use NumPhase::*;
    let digit = b.is_ascii_digit();
    let next = match phase {
        Start if b == b'-' => Some(Minus),
        Start | Minus if b == b'0' => Some(Zero),
        Start | Minus if digit => Some(Int),
        Int if digit => Some(Int),
        Zero | Int if b == b'.' && !integer => Some(Dot),
        Dot | Frac if digit => Some(Frac),
        Zero | Int | Frac if (b == b'e' || b == b'E') && !integer => Some(Exp),
        Exp if b == b'+' || b == b'-' => Some(ExpSign),
        Exp | ExpSign | ExpDigits if digit && exp < MAX_EXPONENT_DIGITS => Some(ExpDigits),
        _ => None,
    };
    let Some(next) = next else {
        return if phase.complete() { Act::PopValueRetry } else { Act::Reject };
    };
    let len = len as usize + 1;
    // The number must still be able to end within the cap.
    if len > MAX_NUMBER_CHARS || (!next.complete() && len >= MAX_NUMBER_CHARS) {
        return Act::Reject;
    }
    let exp = if next == ExpDigits { exp + 1 } else { exp };
    Act::Set(Frame::Num { integer, len: len as u8, phase: next, exp })
}

fn literal_step(g: &JsonGrammar, node: NodeId, cand: u32, len: u32, b: u8) -> Act {
    let Node::Literals(lits) = &g.nodes[node as usize] else { return Act::Reject };
    let Some(current) = lits.get(cand as usize) else { return Act::Reject };
    let l = len as usize;
    let prefix = &current[..l];
    // Sorted: the texts that start with `prefix` follow `cand` contiguously.
    for (k, lit) in lits.iter().enumerate().skip(cand as usize) {
        if !lit.starts_with(prefix) {
            break;
        }
        if lit.get(l) == Some(&b) {
            return Act::Set(Frame::Lit { node, cand: k as u32, len: len + 1 });
        }
    }
    if current.len() == l { Act::PopValueRetry } else { Act::Reject }
}

fn object_step(g: &JsonGrammar, node: NodeId, next: u16, pending: u16, phase: ObjPhase, b: u8) -> Act {
    let Some(o) = g.object(node) else { return Act::Reject };
    let obj = |phase: ObjPhase| Frame::Obj { node, next, pending, phase };
    match phase {
        ObjPhase::Open | ObjPhase::AfterValue if b == b'}' => {
            if o.required_left(next) {
                Act::Reject
            } else {
                Act::PopValue
            }
        }
        ObjPhase::Open | ObjPhase::NeedKey if b == b'"' && o.key_possible(next) => {
            let cand = if o.props.is_empty() { NONE } else { 0 };
            let key = Frame::Key { node, next, cand, len: 1, free: o.free_allowed(next), utf8: UTF8_DONE };
            Act::SetPush(obj(ObjPhase::InKey), key)
        }
        ObjPhase::Colon if b == b':' => Act::Set(obj(ObjPhase::ColonSpace)),
        ObjPhase::ColonSpace if b == b' ' => {
            let child = if pending == NONE { o.additional } else { o.props.get(pending as usize).map(|p| p.node) };
            match child {
                Some(child) => Act::SetPush(obj(ObjPhase::InValue), Frame::Value { node: child }),
                None => Act::Reject,
            }
        }
        ObjPhase::AfterValue if b == b',' && o.key_possible(next) => Act::Set(obj(ObjPhase::Comma)),
        ObjPhase::Comma if b == b' ' => Act::Set(obj(ObjPhase::NeedKey)),
        _ => Act::Reject,
    }
}

/// One byte of an undeclared key (no escapes).
enum FreeStep {
    Dead,
    Continue(Utf8),
    Close,
}

fn free_key_step(utf8: Utf8, b: u8) -> FreeStep {
    if utf8.need > 0 {
        return if (utf8.lo..=utf8.hi).contains(&b) {
            FreeStep::Continue(Utf8 { need: utf8.need - 1, lo: 0x80, hi: 0xbf })
        } else {
            FreeStep::Dead
        };
    }
    match b {
        b'"' => FreeStep::Close,
        b'\\' | 0..=0x1f => FreeStep::Dead,
        0x20..=0x7f => FreeStep::Continue(UTF8_DONE),
        _ => utf8_lead(b).map_or(FreeStep::Dead, FreeStep::Continue),
    }
}

#[allow(clippy::too_many_arguments)]
fn key_step(g: &JsonGrammar, node: NodeId, next: u16, cand: u16, len: u16, free: bool, utf8: Utf8, b: u8) -> Act {
    let Some(o) = g.object(node) else { return Act::Reject };
    let l = len as usize;
    let mut new_cand = NONE;
    let mut allowed_match = false;
    let mut exact = None;
    if cand != NONE {
        let prefix = &o.props[cand as usize].key[..l];
        for (k, p) in o.props.iter().enumerate().skip(cand as usize) {
            if p.key.len() > l && p.key[l] == b && p.key.starts_with(prefix) {
                if new_cand == NONE {
                    new_cand = k as u16;
                }
                allowed_match |= o.allowed(next, k);
                if p.key.len() == l + 1 {
                    exact = Some(k);
                }
            }
        }
    }
    if let Some(k) = exact {
        // A declared name: only in its place (never as an undeclared key).
        return if o.allowed(next, k) { Act::KeyDone(k as u16) } else { Act::Reject };
    }
    let len = len.saturating_add(1);
    match if free { free_key_step(utf8, b) } else { FreeStep::Dead } {
        FreeStep::Close => Act::KeyDone(NONE),
        FreeStep::Continue(utf8) => Act::Set(Frame::Key { node, next, cand: new_cand, len, free: true, utf8 }),
        FreeStep::Dead if allowed_match => {
            Act::Set(Frame::Key { node, next, cand: new_cand, len, free: false, utf8: UTF8_DONE })
        }
        FreeStep::Dead => Act::Reject,
    }
}

fn array_step(g: &JsonGrammar, node: NodeId, count: u32, phase: ArrPhase, b: u8) -> Act {
    let Node::Array { items, min, max } = g.nodes[node as usize] else { return Act::Reject };
    let arr = |phase: ArrPhase| Frame::Arr { node, count, phase };
    match phase {
        ArrPhase::Open if b == b']' => {
            if min == 0 {
                Act::PopValue
            } else {
                Act::Reject
            }
        }
        ArrPhase::Open if max > 0 => Act::SetPushRetry(arr(ArrPhase::InValue), Frame::Value { node: items }),
        ArrPhase::AfterValue if b == b']' => {
            if count >= min {
                Act::PopValue
            } else {
                Act::Reject
            }
        }
        ArrPhase::AfterValue if b == b',' && count < max => Act::Set(arr(ArrPhase::Comma)),
        ArrPhase::Comma if b == b' ' => Act::Set(arr(ArrPhase::NeedValue)),
        ArrPhase::NeedValue => Act::SetPushRetry(arr(ArrPhase::InValue), Frame::Value { node: items }),
        _ => Act::Reject,
    }
}

// ---- the public automaton ------------------------------------------------------

/// Where a JSON text stands against a [`JsonGrammar`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JsonState {
    grammar: Arc<JsonGrammar>,
    stack: Vec<Frame>,
    /// Bytes the grammar does not allow were pushed: nothing is allowed any more.
    dead: bool,
    /// The bytes that may come next, as a 256-bit set (most tokens fail on
    /// their first byte, so this answers them at once).
    next: [u64; 4],
}

impl JsonState {
    /// Whether appending `bytes` keeps the text a prefix of some accepted value.
    /// Allocates nothing and leaves the state as it is.
    pub fn allows(&self, bytes: &[u8]) -> bool {
        match bytes {
            [] => false,
            [b] => self.next_allowed(*b),
            [b, ..] => self.next_allowed(*b) && self.check(bytes),
        }
    }

    fn next_allowed(&self, b: u8) -> bool {
        self.next[(b >> 6) as usize] & (1 << (b & 63)) != 0
    }

    fn refresh_next(&mut self) {
        self.next = [0; 4];
        if self.dead {
            return;
        }
        for b in 0..=255u8 {
            if self.check(&[b]) {
                self.next[(b >> 6) as usize] |= 1 << (b & 63);
            }
        }
    }

    /// The check behind [`JsonState::allows`].
    fn check(&self, bytes: &[u8]) -> bool {
        if self.dead {
            return false;
        }
        let g = &*self.grammar;
        let Some(&first) = self.stack.last() else { return false };
        // Fast path: while the bytes only change the top frame (most of a
        // string, a number, a literal), keep it in a local.
        let mut top = first;
        let mut i = 0;
        while i < bytes.len() {
            if let Frame::Str { node, chars, esc: ESC_NONE, utf8 } = top {
                // A run of plain ASCII text in a string.
                let run =
                    bytes[i..].iter().take_while(|&&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\').count();
                if run > 0 && utf8.need == 0 {
                    let Node::String { max, .. } = g.nodes[node as usize] else { return false };
                    if chars as u64 + run as u64 > max as u64 {
                        return false;
                    }
                    top = Frame::Str { node, chars: chars + run as u32, esc: ESC_NONE, utf8 };
                    i += run;
                    continue;
                }
            }
            match step(g, top, bytes[i]) {
                Act::Set(f) => top = f,
                Act::Reject => return false,
                _ => {
                    // The byte opens or closes a value: go on with the stack.
                    let mut overlay = Overlay::new(&self.stack);
                    overlay.set_top(top);
                    return bytes[i..].iter().all(|&b| feed(g, &mut overlay, b));
                }
            }
            i += 1;
        }
        true
    }

    /// Appends bytes; `false` (and a dead state) if the grammar does not allow them.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if self.dead {
            return false;
        }
        for &b in bytes {
            if !feed(&self.grammar, &mut self.stack, b) {
                self.dead = true;
                break;
            }
        }
        self.refresh_next();
        !self.dead
    }

    /// Whether the text is a whole accepted value.
    pub fn is_complete(&self) -> bool {
        !self.dead && self.grammar.complete(&self.stack)
    }

    /// Whether some byte may still follow.
    pub fn can_continue(&self) -> bool {
        self.next != [0; 4]
    }

    /// The bytes that must come next: while exactly one byte is allowed and
    /// the value cannot end yet (at most 256).
    pub fn determined(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = self.clone();
        while out.len() < 256 && !s.grammar.complete(&s.stack) {
            if s.next.iter().map(|w| w.count_ones()).sum::<u32>() != 1 {
                break;
            }
            let b = (0..=255u8).find(|&b| s.next_allowed(b)).expect("one byte is allowed");
            s.push(&[b]);
            out.push(b);
        }
        out
    }

    /// Whether bytes the grammar rejects were pushed.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// The shortest bytes that make the text a whole accepted value (empty if it is one).
    pub fn completion(&self) -> Vec<u8> {
        self.complete()
    }

    /// Inside a string: the shortest bytes that end it (to `minLength`, then `"`).
    pub fn string_end(&self) -> Option<Vec<u8>> {
        match self.stack.last() {
            Some(&top @ Frame::Str { .. }) if !self.dead => Some(self.grammar.finish_frame(top)),
            _ => None,
        }
    }

    fn complete(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.dead {
            return out;
        }
        let g = &*self.grammar;
        let mut stack = self.stack.clone();
        while let Some(top) = stack.top() {
            let ends_here = match top {
                Frame::Num { phase, .. } => phase.complete(),
                Frame::Lit { node, cand, len } => g.literal_complete(node, cand, len),
                _ => false,
            };
            if ends_here {
                pop_value(&mut stack);
                continue;
            }
            let piece = g.finish_frame(top);
            if piece.is_empty() || !piece.iter().all(|&b| feed(g, &mut stack, b)) {
                debug_assert!(false, "no completion for {top:?}");
                break;
            }
            out.extend_from_slice(&piece);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    fn grammar(schema: Value) -> Arc<JsonGrammar> {
        Arc::new(JsonGrammar::compile(&schema).unwrap_or_else(|e| panic!("{schema}: {e}")))
    }

    fn state(schema: Value) -> JsonState {
        grammar(schema).start()
    }

    /// Whether `text` is a prefix the grammar allows (byte by byte, as tokens would come).
    fn prefix_ok(s: &JsonState, text: &str) -> bool {
        let mut s = s.clone();
        s.push(text.as_bytes())
    }

    fn accepts(schema: &Value, text: &str) -> bool {
        let mut s = grammar(schema.clone()).start();
        s.push(text.as_bytes()) && s.is_complete()
    }

    fn reject_message(schema: Value) -> String {
        JsonGrammar::compile(&schema).map(|_| ()).expect_err(&schema.to_string()).to_string()
    }

    fn valid(schema: &Value, text: &str) -> bool {
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"));
        jsonschema::validator_for(schema).unwrap().is_valid(&value)
    }

    #[test]
    fn canonical_layout_matches_the_demos() {
        let v = json!({"a": 1, "b": ["x", {"c": null}], "d": {}, "e": []});
        assert_eq!(canonical_json(&v), r#"{"a": 1, "b": ["x", {"c": null}], "d": {}, "e": []}"#);
        assert_eq!(canonical_json(&json!("quote \" and \\ and\nline")), r#""quote \" and \\ and\nline""#);
    }

    #[test]
    fn each_type() {
        let cases = [
            (json!({"type": "string"}), vec![r#""""#, r#""héllo""#], vec!["1", "null", r#"""x"#, "\"a"]),
            (json!({"type": "integer"}), vec!["0", "-7", "120"], vec!["1.5", "01", "1e3", "-", "\"1\"", "--1"]),
            (json!({"type": "number"}), vec!["0", "-7.25", "1e3", "2.5E-7", "-0.0"], vec!["1.", ".5", "1e", "01.2"]),
            (json!({"type": "boolean"}), vec!["true", "false"], vec!["True", "1", "null", "tru"]),
            (json!({"type": "null"}), vec!["null"], vec!["nul", "0", "\"null\""]),
            (json!({"type": ["string", "null"]}), vec!["null", "\"a\""], vec!["1", "true"]),
            (json!({"type": ["integer", "boolean"]}), vec!["3", "true"], vec!["3.5", "null"]),
            (json!({"type": ["integer", "number"]}), vec!["3", "3.5"], vec!["\"3\""]),
            (json!({"type": "object"}), vec!["{}", r#"{"k": [1, {"z": "y"}], "j": null}"#], vec!["{ }", "{\"k\":1}"]),
            (json!({"type": "array"}), vec!["[]", r#"[1, "a", [true], {}]"#], vec!["[1,2]", "[ ]", "[1, ]"]),
        ];
        for (schema, good, bad) in cases {
            for text in good {
                assert!(accepts(&schema, text), "{schema} should accept {text}");
                assert!(valid(&schema, text), "{schema} / {text}");
            }
            for text in bad {
                assert!(!accepts(&schema, text), "{schema} should reject {text}");
            }
        }
    }

    #[test]
    fn numbers_are_capped_so_they_end() {
        let s = state(json!({"type": "integer"}));
        let nineteen = "1234567890123456789";
        assert!(prefix_ok(&s, &format!("{nineteen}0")));
        assert!(!prefix_ok(&s, &format!("{nineteen}01")));
        let mut at_cap = s.clone();
        at_cap.push(format!("{nineteen}0").as_bytes());
        assert!(at_cap.is_complete());
        assert!(!at_cap.can_continue());

        let s = state(json!({"type": "number"}));
        // "." at 19 chars leaves room for one digit, "e" at 20 none.
        assert!(prefix_ok(&s, "123456789012345678."));
        assert!(!prefix_ok(&s, "1234567890123456789."));
        // At most two exponent digits, so the value stays finite.
        assert!(accepts(&json!({"type": "number"}), "1e99"));
        assert!(!prefix_ok(&s, "1e999"));
    }

    #[test]
    fn enum_and_const_take_any_json_values() {
        let schema = json!({"enum": ["red", 1, 12, null, true, {"a": [1]}, [1, "x"]]});
        for text in ["\"red\"", "1", "12", "null", "true", r#"{"a": [1]}"#, r#"[1, "x"]"#] {
            assert!(accepts(&schema, text), "{text}");
        }
        for text in ["\"re\"", "2", "123", "false", r#"{"a":[1]}"#, "[1]"] {
            assert!(!accepts(&schema, text), "{text}");
        }
        // "1" is complete but "12" may still follow.
        let mut s = state(schema.clone());
        s.push(b"1");
        assert!(s.is_complete() && s.can_continue());
        assert!(s.allows(b"2") && !s.allows(b"3"));

        let schema = json!({"const": "only"});
        assert!(accepts(&schema, "\"only\"") && !accepts(&schema, "\"other\""));
        // `enum` values that the rest of the schema rejects are dropped.
        let schema = json!({"type": "string", "enum": ["a", 1, "bb"], "maxLength": 1});
        assert!(accepts(&schema, "\"a\""));
        assert!(!accepts(&schema, "1") && !accepts(&schema, "\"bb\""));
    }

    #[test]
    fn properties_come_in_order_required_ones_always() {
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": "string"},
                "c": {"type": "boolean"},
                "d": {"type": "null"}
            },
            "required": ["a", "c"],
            "additionalProperties": false
        });
        for text in [
            r#"{"a": 1, "c": true}"#,
            r#"{"a": 1, "b": "x", "c": true}"#,
            r#"{"a": 1, "c": false, "d": null}"#,
            r#"{"a": 1, "b": "", "c": true, "d": null}"#,
        ] {
            assert!(accepts(&schema, text), "{text}");
            assert!(valid(&schema, text), "{text}");
        }
        for text in [
            r#"{"c": true, "a": 1}"#,
            r#"{"a": 1}"#,
            r#"{"b": "x", "a": 1, "c": true}"#,
            r#"{"a": 1, "c": true, "e": 1}"#,
            r#"{"a": 1, "a": 2, "c": true}"#,
            r#"{"a":1,"c":true}"#,
            r#"{ "a": 1, "c": true}"#,
        ] {
            assert!(!accepts(&schema, text), "{text}");
        }
        // After `{"a": 1, ` the choice is between "b" and "c", not "d".
        let mut s = state(schema);
        s.push(br#"{"a": 1, "#);
        assert!(s.allows(b"\"b") && s.allows(b"\"c") && !s.allows(b"\"d") && !s.allows(b"}"));
        // `}` only once the required keys are there; `,` only while a key may follow.
        s.push(br#""c": true"#);
        assert!(s.allows(b"}") && s.allows(b", \"d"));
        s.push(br#", "d": null"#);
        assert!(!s.allows(b",") && s.allows(b"}"));
    }

    #[test]
    fn other_keys_follow_additional_properties() {
        // No `properties`: any string keys.
        let open = json!({"type": "object"});
        assert!(accepts(&open, r#"{"anything": 1, "ünï": [null]}"#));
        // A schema for other keys.
        let typed = json!({"type": "object", "additionalProperties": {"type": "integer"}});
        assert!(accepts(&typed, r#"{"x": 1, "y": 2}"#));
        assert!(!accepts(&typed, r#"{"x": "1"}"#));
        // Declared keys first; other keys only after them, never with a declared name.
        let mixed = json!({
            "type": "object",
            "properties": {"id": {"type": "integer"}, "tag": {"type": "string"}},
            "required": ["id"],
            "additionalProperties": {"type": "boolean"}
        });
        assert!(accepts(&mixed, r#"{"id": 1, "extra": true}"#));
        assert!(accepts(&mixed, r#"{"id": 1, "tag": "t", "ta": false, "tagg": true}"#));
        assert!(!accepts(&mixed, r#"{"extra": true, "id": 1}"#));
        assert!(!accepts(&mixed, r#"{"id": 1, "extra": true, "tag": "t"}"#));
        assert!(!accepts(&mixed, r#"{"id": 1, "tag": "t", "id": true}"#));
        assert!(valid(&mixed, r#"{"id": 1, "tag": "t", "ta": false, "tagg": true}"#));
        // `additionalProperties: false` with no `properties`: only `{}`.
        let closed = json!({"type": "object", "additionalProperties": false});
        assert!(accepts(&closed, "{}"));
        assert!(!prefix_ok(&state(closed), "{\""));
        // A required key that `properties` does not declare takes the schema of other keys.
        let implied = json!({"type": "object", "required": ["name"], "additionalProperties": {"type": "string"}});
        assert!(accepts(&implied, r#"{"name": "n"}"#));
        assert!(!accepts(&implied, "{}"));
    }

    #[test]
    fn arrays_with_items_and_bounds() {
        let schema = json!({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3});
        assert!(accepts(&schema, "[1]") && accepts(&schema, "[1, 2, 3]"));
        assert!(!accepts(&schema, "[]") && !accepts(&schema, "[1, 2, 3, 4]") && !accepts(&schema, "[\"a\"]"));
        let mut s = state(schema);
        s.push(b"[1, 2, 3");
        assert!(!s.allows(b",") && s.allows(b"]"));
        let nested = json!({"type": "array", "items": {"type": "array", "items": {"enum": ["a", "b"]}}});
        assert!(accepts(&nested, r#"[["a"], [], ["b", "a"]]"#));
        assert!(!accepts(&nested, r#"[["c"]]"#));
    }

    #[test]
    fn string_lengths_count_characters() {
        let schema = json!({"type": "string", "minLength": 2, "maxLength": 3});
        assert!(accepts(&schema, "\"ab\"") && accepts(&schema, "\"äöü\"") && accepts(&schema, "\"a\\nb\""));
        assert!(accepts(&schema, "\"\\u00e9\\u00e9\""));
        assert!(!accepts(&schema, "\"a\"") && !accepts(&schema, "\"abcd\"") && !accepts(&schema, "\"äöüß\""));
        for text in ["\"ab\"", "\"äöü\"", "\"a\\nb\""] {
            assert!(valid(&schema, text));
        }
    }

    #[test]
    fn escapes_and_control_characters() {
        let schema = json!({"type": "string"});
        for text in [r#""\" \\ \/ \b \f \n \r \t""#, r#""\u00e9\u20AC\uffff""#] {
            assert!(accepts(&schema, text), "{text}");
            assert!(valid(&schema, text), "{text}");
        }
        let s = state(schema.clone());
        assert!(!prefix_ok(&s, "\"\\x"));
        assert!(!prefix_ok(&s, "\"\\u12g"));
        assert!(!prefix_ok(&s, "\"a\nb"));
        assert!(!prefix_ok(&s, "\"\t"));
        // No surrogate escapes: serde_json rejects a lone one.
        assert!(!prefix_ok(&s, "\"\\ud83d"));
        assert!(prefix_ok(&s, "\"\\ud7ff"));
        // An escaped quote does not end the string.
        let mut s = s;
        s.push(br#""say \"hi"#);
        assert!(!s.is_complete() && s.allows(b"\\\"\""));
    }

    #[test]
    fn multibyte_characters_split_across_tokens() {
        let mut s = state(json!({"type": "object", "properties": {"w": {"type": "string", "maxLength": 2}}}));
        s.push(br#"{"w": "caf"#);
        // Over the limit: "caf" is already 3 characters.
        assert!(!s.allows("é".as_bytes()));
        let mut s = state(json!({"type": "string", "maxLength": 2}));
        s.push(b"\"");
        // A token ending in the middle of "é" (0xc3 0xa9), then one with the rest.
        assert!(s.allows(&[0xc3]));
        s.push(&[0xc3]);
        assert!(!s.is_complete() && !s.allows(b"\""));
        assert!(!s.allows(b"e") && !s.allows(&[0xc3]));
        assert!(s.allows(&[0xa9, b'x', b'"']));
        s.push(&[0xa9]);
        // A four-byte character in three pieces.
        let emoji = "😀".as_bytes();
        assert!(s.allows(&emoji[..1]));
        s.push(&emoji[..1]);
        s.push(&emoji[1..3]);
        assert!(s.allows(&emoji[3..]) && !s.allows(b"\""));
        s.push(&emoji[3..]);
        assert!(s.allows(b"\"") && !s.allows(b"a"));
        // Ill-formed UTF-8 is never allowed.
        let s = state(json!({"type": "string"}));
        for bad in
            [&[b'"', 0xc3, b'('][..], &[b'"', 0xc0, 0x80], &[b'"', 0xed, 0xa0, 0x80], &[b'"', 0x80], &[b'"', 0xff]]
        {
            assert!(!s.allows(bad), "{bad:?}");
        }
        // Keys too.
        let s = state(json!({"type": "object"}));
        assert!(s.allows("{\"é".as_bytes()) && !s.allows(&[b'{', b'"', 0xc3, b'"']));
    }

    #[test]
    fn local_references_and_recursion() {
        let tree = json!({
            "$defs": {"node": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                "required": ["name", "children"],
                "additionalProperties": false
            }},
            "$ref": "#/$defs/node"
        });
        let text = r#"{"name": "a", "children": [{"name": "b", "children": []}, {"name": "c", "children": [{"name": "d", "children": []}]}]}"#;
        assert!(accepts(&tree, text));
        assert!(valid(&tree, text));
        assert!(!accepts(&tree, r#"{"name": "a", "children": [{"name": "b"}]}"#));
        assert_eq!(grammar(tree).min_value(), br#"{"name": "", "children": []}"#);

        let old_style = json!({
            "definitions": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
            "type": "array",
            "items": {"$ref": "#/definitions/Point"}
        });
        assert!(accepts(&old_style, r#"[{"x": 1}, {"x": -2.5}]"#));
        // pydantic v1 wraps a described reference in a one-schema `allOf`.
        let wrapped = json!({
            "definitions": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
            "type": "object",
            "properties": {"p": {"allOf": [{"$ref": "#/definitions/Point"}], "description": "a point"}},
            "required": ["p"]
        });
        assert!(accepts(&wrapped, r#"{"p": {"x": 3}}"#) && !accepts(&wrapped, r#"{"p": 3}"#));
        let root_ref = json!({"anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#"}}]});
        assert!(accepts(&root_ref, "[1, [2, [[]]]]"));
        assert!(valid(&root_ref, "[1, [2, [[]]]]"));
    }

    #[test]
    fn unions_of_distinct_types() {
        // pydantic's Optional[...]
        let optional = json!({
            "anyOf": [{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}, {"type": "null"}],
            "default": null,
            "title": "Maybe"
        });
        assert!(accepts(&optional, "null") && accepts(&optional, r#"{"n": 3}"#));
        assert!(!accepts(&optional, "{}") && !accepts(&optional, "3"));
        let one_of =
            json!({"oneOf": [{"type": "string", "maxLength": 1}, {"type": "array", "items": {"type": "boolean"}}]});
        assert!(accepts(&one_of, "\"a\"") && accepts(&one_of, "[true]"));
        assert!(valid(&one_of, "[true]") && valid(&one_of, "\"a\""));
        assert!(!accepts(&one_of, "\"ab\""));
        let enums = json!({"anyOf": [{"enum": ["x", "y"]}, {"const": 5}, {"type": "boolean"}]});
        assert!(accepts(&enums, "\"y\"") && accepts(&enums, "5") && accepts(&enums, "false"));
    }

    #[test]
    fn the_empty_schema_accepts_any_value() {
        for schema in [json!({}), json!(true), json!({"title": "x", "description": "y", "$comment": "z"})] {
            for text in ["1", "-0.5e2", "\"s\"", "null", "true", "[]", r#"{"a": [1, {"b": null}], "": {}}"#] {
                assert!(accepts(&schema, text), "{schema} {text}");
                assert!(valid(&schema, text), "{schema} {text}");
            }
        }
    }

    #[test]
    fn shortest_completions() {
        let schema = json!({
            "type": "object",
            "properties": {
                "kind": {"enum": ["refund", "bug", "other"]},
                "items": {"type": "array", "minItems": 1, "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                    "required": ["sku", "qty"]
                }},
                "note": {"type": "string"}
            },
            "required": ["kind", "items"],
            "additionalProperties": false
        });
        let g = grammar(schema.clone());
        assert_eq!(g.min_value(), br#"{"kind": "bug", "items": [{"sku": "", "qty": 0}]}"#);
        let cases = [
            ("", r#"{"kind": "bug", "items": [{"sku": "", "qty": 0}]}"#),
            (r#"{"ki"#, r#"nd": "bug", "items": [{"sku": "", "qty": 0}]}"#),
            (r#"{"kind": "re"#, r#"fund", "items": [{"sku": "", "qty": 0}]}"#),
            (r#"{"kind": "bug", "items": [{"sku": "a\"#, r#"n", "qty": 0}]}"#),
            (r#"{"kind": "bug", "items": [{"sku": "\u00"#, r#"00", "qty": 0}]}"#),
            (r#"{"kind": "bug", "items": [{"sku": "x", "qty": -"#, r#"0}]}"#),
            (r#"{"kind": "bug", "items": [{"sku": "x", "qty": 12}, "#, r#"{"sku": "", "qty": 0}]}"#),
            (r#"{"kind": "bug", "items": [{"sku": "x", "qty": 12}], "#, r#""note": ""}"#),
            (r#"{"kind": "bug", "items": [{"sku": "x", "qty": 12}]"#, "}"),
        ];
        for (prefix, rest) in cases {
            let mut s = g.start();
            assert!(s.push(prefix.as_bytes()), "{prefix}");
            assert_eq!(String::from_utf8_lossy(&s.completion()), rest, "after {prefix}");
            let whole = format!("{prefix}{rest}");
            assert!(accepts(&schema, &whole) && valid(&schema, &whole), "{whole}");
        }
        // Inside an enum value: its shortest option.
        let mut s = g.start();
        s.push(b"{\"kind\": \"");
        assert_eq!(s.completion(), b"bug\", \"items\": [{\"sku\": \"\", \"qty\": 0}]}");
        // Mid-character: the completion finishes the character first.
        let mut s = state(json!({"type": "string", "minLength": 2}));
        s.push(&[b'"', 0xe2, 0x82]);
        assert_eq!(s.completion(), [0x80, b'x', b'"']);
        // Undeclared keys: the shortest free name.
        let mut s = state(
            json!({"type": "object", "properties": {"": {"type": "null"}}, "additionalProperties": {"type": "null"}}),
        );
        s.push(b"{\"\": null, ");
        assert_eq!(s.completion(), b"\"x\": null}");
        let mut s = state(json!({"type": "object", "properties": {"ab": {"type": "null"}}}));
        s.push(b"{\"ab\": null, \"a");
        assert_eq!(s.completion(), b"\": 0}");
        let mut s = state(json!({"type": "object", "properties": {"ab": {"type": "null"}, "a": {"type": "null"}}}));
        s.push(b"{\"ab\": null, \"a");
        assert_eq!(s.completion(), b"x\": 0}");
    }

    #[test]
    fn shortest_values_and_string_ends() {
        let schema = json!({
            "type": "object",
            "properties": {
                "why": {"type": "string"},
                "queue": {"enum": ["x", "cards", "transfers"]},
                "ok": {"type": "boolean"}
            },
            "required": ["why", "queue", "ok"]
        });
        let g = grammar(schema);
        assert_eq!(g.min_value(), br#"{"why": "", "queue": "x", "ok": true}"#);
        let mut s = g.start();
        s.push(br#"{"why": "because"#);
        assert_eq!(s.string_end().as_deref(), Some(&b"\""[..]));
        assert_eq!(s.completion(), br#"", "queue": "x", "ok": true}"#);
        s.push(br#"", "queue": "c"#);
        assert_eq!(s.string_end(), None);
        assert_eq!(s.completion(), br#"ards", "ok": true}"#);
        let mut s = state(json!({"type": "string", "minLength": 3}));
        s.push(b"\"a");
        assert_eq!(s.string_end().as_deref(), Some(&b"xx\""[..]));
    }

    #[test]
    fn every_prefix_of_a_valid_text_completes_to_a_valid_value() {
        let schema = json!({
            "type": "object",
            "properties": {
                "title": {"type": "string", "minLength": 3},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "score": {"type": "number"},
                "meta": {"type": "object", "additionalProperties": {"type": ["integer", "null"]}}
            },
            "required": ["title", "tags", "meta"],
            "additionalProperties": false
        });
        let text = "{\"title\": \"Ünïcödé \\\"quoted\\\" \\u00e9 😀\", \"tags\": [\"a\", \"b\", \"c\"], \"score\": -12.5e-3, \"meta\": {\"k\": 1, \"é\": null}}";
        assert!(accepts(&schema, text));
        let g = grammar(schema.clone());
        for cut in 0..=text.len() {
            let mut s = g.start();
            assert!(s.push(&text.as_bytes()[..cut]), "cut {cut}");
            let mut whole = text.as_bytes()[..cut].to_vec();
            whole.extend(s.completion());
            let whole = String::from_utf8(whole).expect("UTF-8");
            assert!(accepts(&schema, &whole), "cut {cut}: {whole}");
            assert!(valid(&schema, &whole), "cut {cut}: {whole}");
        }
    }

    #[test]
    fn allows_matches_push_and_leaves_the_state_alone() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "number"}}}});
        let mut s = state(schema);
        s.push(br#"{"a": [1"#);
        let before = s.stack.clone();
        for token in [&b"2"[..], b", 3", b"]}", b"]", b"}", b".5, ", b"e", b"x", b"], \"b", b"[[[[", b""] {
            let mut copy = s.clone();
            assert_eq!(s.allows(token), !token.is_empty() && copy.push(token), "{:?}", String::from_utf8_lossy(token));
            assert_eq!(s.stack, before);
        }
    }

    #[test]
    fn unsupported_keywords_are_named_with_their_place() {
        let cases = [
            (json!({"type": "string", "pattern": "^a"}), "pattern", "the schema's root"),
            (json!({"type": "string", "format": "email"}), "format", "the schema's root"),
            (json!({"properties": {"zip": {"type": "string", "pattern": "[0-9]{5}"}}}), "pattern", "/properties/zip"),
            (json!({"properties": {"n": {"type": "integer", "minimum": 0}}}), "minimum", "/properties/n"),
            (json!({"type": "number", "maximum": 1}), "maximum", "the schema's root"),
            (json!({"type": "number", "exclusiveMinimum": 0}), "exclusiveMinimum", "the schema's root"),
            (json!({"type": "number", "exclusiveMaximum": 0}), "exclusiveMaximum", "the schema's root"),
            (json!({"type": "number", "multipleOf": 2}), "multipleOf", "the schema's root"),
            (json!({"allOf": [{"type": "string"}, {"maxLength": 2}]}), "allOf", "the schema's root"),
            (json!({"allOf": [{"type": "string"}], "maxLength": 2}), "maxLength", "the schema's root"),
            (json!({"not": {"type": "string"}}), "not", "the schema's root"),
            (json!({"if": {"type": "string"}, "then": {"maxLength": 1}}), "if", "the schema's root"),
            (json!({"type": "object", "patternProperties": {"^x": {}}}), "patternProperties", "the schema's root"),
            (json!({"type": "object", "propertyNames": {"maxLength": 2}}), "propertyNames", "the schema's root"),
            (json!({"type": "object", "minProperties": 1}), "minProperties", "the schema's root"),
            (json!({"type": "object", "dependentRequired": {"a": ["b"]}}), "dependentRequired", "the schema's root"),
            (json!({"type": "array", "uniqueItems": true}), "uniqueItems", "the schema's root"),
            (json!({"type": "array", "contains": {"type": "null"}}), "contains", "the schema's root"),
            (json!({"type": "array", "prefixItems": [{}]}), "prefixItems", "the schema's root"),
            (json!({"type": "array", "items": [{"type": "string"}]}), "items", "the schema's root"),
            (json!({"items": {"items": {"format": "date"}}}), "format", "/items/items"),
            (json!({"$defs": {"a": {"type": "string", "pattern": "x"}}, "$ref": "#/$defs/a"}), "pattern", "/$defs/a"),
            (json!({"anyOf": [{"type": "string"}, {"type": "string", "maxLength": 2}]}), "anyOf", "the schema's root"),
            (json!({"oneOf": [{"type": "integer"}, {"type": "number"}]}), "oneOf", "the schema's root"),
            (json!({"type": "object", "anyOf": [{"type": "object"}, {"type": "null"}]}), "type", "the schema's root"),
            (
                json!({"$ref": "#/$defs/a", "maxLength": 3, "$defs": {"a": {"type": "string"}}}),
                "maxLength",
                "the schema's root",
            ),
            (json!({"$ref": "https://example.com/s.json"}), "$ref", "the schema's root"),
            (json!({"$ref": "#/$defs/missing"}), "$ref", "the schema's root"),
            (json!({"properties": {"a": {"$ref": "#/properties/a"}}}), "$ref", "/properties/a"),
            (json!({"type": "string", "minLength": 3, "maxLength": 2}), "minLength", "the schema's root"),
            (json!({"enum": [1, 2], "type": "string"}), "enum", "the schema's root"),
            (
                json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["b"], "additionalProperties": false}),
                "required",
                "the schema's root",
            ),
            (
                json!({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}, "required": ["next"]}}, "$ref": "#/$defs/n"}),
                "required",
                "/$defs/n",
            ),
        ];
        for (schema, keyword, place) in cases {
            let message = reject_message(schema.clone());
            assert!(message.contains(&format!("keyword `{keyword}`")), "{schema}: {message}");
            assert!(message.contains(&format!(" at {place}")), "{schema}: {message}");
            assert!(message.contains("constrained = false"), "{message}");
        }
        let message = reject_message(json!({"properties": {"zip": {"type": "string", "pattern": "[0-9]{5}"}}}));
        assert_eq!(
            message,
            "the JSON Schema keyword `pattern` at /properties/zip cannot be enforced by the embedded model's \
             constrained decoding; remove it or set `constrained = false` in [lm]"
        );
        // Annotations are fine, and so is a keyword that restricts nothing.
        let fine = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://example.com/x",
            "title": "T", "description": "D", "default": 1, "examples": [1], "$comment": "c",
            "type": "array", "uniqueItems": false, "deprecated": false
        });
        JsonGrammar::compile(&fine).unwrap();
    }

    /// Random walks through the grammar, then the shortest completion: every
    /// text must parse and validate against the schema.
    #[test]
    fn random_texts_always_validate() {
        let schemas = [
            json!({}),
            json!({"type": "string", "minLength": 1, "maxLength": 4}),
            json!({"type": ["number", "null"]}),
            json!({
                "type": "object",
                "properties": {
                    "category": {"type": "string", "enum": ["billing", "technical", "other"]},
                    "items": {"type": "array", "maxItems": 3, "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "qty": {"type": "integer"}},
                        "required": ["name", "qty"],
                        "additionalProperties": false
                    }},
                    "urgent": {"type": "boolean"},
                    "note": {"anyOf": [{"type": "string", "maxLength": 8}, {"type": "null"}]}
                },
                "required": ["category", "items"],
                "additionalProperties": false
            }),
            json!({
                "type": "object",
                "properties": {"a": {"const": 1}, "b": {"type": "integer"}},
                "required": ["b"],
                "additionalProperties": {"type": "array", "items": {"type": "boolean"}, "minItems": 1}
            }),
            json!({
                "$defs": {"t": {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#/$defs/t"}, "maxItems": 2}]}},
                "$ref": "#/$defs/t"
            }),
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for schema in schemas {
            let validator = jsonschema::validator_for(&schema).unwrap();
            let g = grammar(schema.clone());
            for _ in 0..150 {
                let mut s = g.start();
                let mut text = Vec::new();
                for _ in 0..rng.random_range(0..120) {
                    let allowed: Vec<u8> = (0..=255u8).filter(|&b| s.allows(&[b])).collect();
                    if allowed.is_empty() || (s.is_complete() && rng.random_bool(0.2)) {
                        break;
                    }
                    // Mostly ASCII, so walks get somewhere; sometimes anything allowed.
                    let ascii: Vec<u8> = allowed.iter().copied().filter(u8::is_ascii).collect();
                    let pool = if ascii.is_empty() || rng.random_bool(0.1) { &allowed } else { &ascii };
                    let b = pool[rng.random_range(0..pool.len())];
                    assert!(s.push(&[b]));
                    text.push(b);
                }
                let rest = s.completion();
                assert!(s.push(&rest) && s.is_complete(), "{schema}: {:?} + {:?}", text, rest);
                text.extend(rest);
                let value: Value = serde_json::from_slice(&text)
                    .unwrap_or_else(|e| panic!("{schema}: {:?} does not parse: {e}", String::from_utf8_lossy(&text)));
                assert!(validator.is_valid(&value), "{schema}: {}", String::from_utf8_lossy(&text));
            }
        }
    }
}
