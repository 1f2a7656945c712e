//! Candidate demo sets: labeled examples chosen to cover the label space of a
//! predictor's enum output, bootstrapped traces, in an order that does not end
//! on a run of one label.
//!
//! Small models copy the labels they were shown last and most often: a demo
//! set of three `top_ups` and one `transfers` makes a model that answers
//! `top_ups`. So a set for an enum output holds the same number of demos of
//! every label (as far as train has them and the size allows), interleaved
//! label by label.

use std::collections::BTreeMap;

use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use crate::dataset::Example;
use crate::program::Program;
use crate::program::predictor::{Demo, DemoSource, Predictor};
use crate::program::signature::normalize_value;
use crate::program::signature::{Field, FieldType};

/// A labeled demo for `predictor` from an example: the predictor's inputs and
/// outputs as far as the example has them; `None` when it lacks an output.
pub fn labeled_demo(predictor: &Predictor, example: &Example) -> Option<Demo> {
    let pick = |fields: &[Field]| -> Option<Map<String, Value>> {
        fields
            .iter()
            .map(|f| {
                example
                    .inputs
                    .get(&f.name)
                    .or_else(|| example.outputs.get(&f.name))
                    .map(|v| (f.name.clone(), v.clone()))
            })
            .collect()
    };
    Some(Demo {
        example_id: example.id.clone(),
        source: DemoSource::Labeled,
        inputs: pick(&predictor.signature.inputs)?,
        outputs: pick(&predictor.signature.outputs)?,
    })
}

/// The predictor's first enum output: the field and its values.
pub fn label_field(predictor: &Predictor) -> Option<(&str, &[String])> {
    predictor.signature.outputs.iter().find_map(|f| match &f.ty {
        FieldType::Enum { values } => Some((f.name.as_str(), values.as_slice())),
        _ => None,
    })
}

/// The label of a demo (or an example's outputs) on `field`, as declared
/// (matched forgivingly), else as written.
pub fn label_of(outputs: &Map<String, Value>, field: &str, values: &[String]) -> Option<String> {
    let value = outputs.get(field)?;
    let got = normalize_value(value);
    Some(values.iter().find(|v| normalize_value(&Value::String((*v).clone())) == got).cloned().unwrap_or(got))
}

/// Train examples grouped by their label on the predictor's enum output, in
/// the order the enum declares the labels; `None` without an enum output.
pub fn by_label<'a>(predictor: &Predictor, train: &'a [Example]) -> Option<BTreeMap<usize, Vec<&'a Example>>> {
    let (field, values) = label_field(predictor)?;
    let mut groups: BTreeMap<usize, Vec<&Example>> = BTreeMap::new();
    for example in train {
        if let Some(label) = label_of(&example.outputs, field, values)
            && let Some(i) = values.iter().position(|v| *v == label)
        {
            groups.entry(i).or_default().push(example);
        }
    }
    Some(groups)
}

/// Interleaves demos label by label (`first` label order, then round after
/// round), so no label comes in a run and the last demos are of different
/// labels. Demos without a known label keep their relative order at the end.
pub fn interleave(demos: Vec<Demo>, predictor: &Predictor, label_order: &[usize]) -> Vec<Demo> {
    let Some((field, values)) = label_field(predictor) else {
        return demos;
    };
    let mut queues: BTreeMap<usize, Vec<Demo>> = BTreeMap::new();
    let mut rest = Vec::new();
    for demo in demos {
        match label_of(&demo.outputs, field, values).and_then(|l| values.iter().position(|v| *v == l)) {
            Some(i) => queues.entry(i).or_default().push(demo),
            None => rest.push(demo),
        }
    }
    for q in queues.values_mut() {
        q.reverse();
    }
    let mut order: Vec<usize> = label_order.iter().copied().filter(|i| queues.contains_key(i)).collect();
    order.extend(queues.keys().copied().filter(|i| !label_order.contains(i)));
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for i in &order {
            if let Some(d) = queues.get_mut(i).and_then(Vec::pop) {
                out.push(d);
            }
        }
        if out.len() == before {
            break;
        }
    }
    out.extend(rest);
    out
}

/// A label-covering set: `per_label` labeled demos of each label train has
/// (at most `max` in all; with fewer slots than labels, the labels first in
/// `label_order`), interleaved. Without an enum output: `max.min(per_label *
/// 4)` random labeled demos.
pub fn stratified(
    predictor: &Predictor,
    train: &[Example],
    per_label: usize,
    max: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Demo> {
    let Some(groups) = by_label(predictor, train) else {
        let usable: Vec<&Example> = train.iter().filter(|e| labeled_demo(predictor, e).is_some()).collect();
        return usable
            .choose_multiple(rng, (per_label * 4).min(max))
            .filter_map(|e| labeled_demo(predictor, e))
            .collect();
    };
    let mut label_order: Vec<usize> = groups.keys().copied().collect();
    label_order.shuffle(rng);
    let mut chosen = Vec::new();
    for round in 0..per_label {
        for label in &label_order {
            if chosen.len() >= max {
                break;
            }
            // A fresh draw per round; later rounds take examples not drawn yet.
            let group = &groups[label];
            let taken: Vec<&str> = chosen.iter().map(|d: &Demo| d.example_id.as_str()).collect();
            let left: Vec<&&Example> = group.iter().filter(|e| !taken.contains(&e.id.as_str())).collect();
            if round >= group.len() || left.is_empty() {
                continue;
            }
            if let Some(example) = left.choose(rng)
                && let Some(demo) = labeled_demo(predictor, example)
            {
                chosen.push(demo);
            }
        }
    }
    interleave(chosen, predictor, &label_order)
}

/// `demos` with one labeled demo added for each label of the enum output they
/// lack (while under `max`), re-interleaved: production's demos with the
/// labels it never shows.
pub fn cover_labels(
    predictor: &Predictor,
    demos: &[Demo],
    train: &[Example],
    max: usize,
    rng: &mut ChaCha8Rng,
) -> Option<Vec<Demo>> {
    let (field, values) = label_field(predictor)?;
    let groups = by_label(predictor, train)?;
    let shown: Vec<usize> = demos
        .iter()
        .filter_map(|d| label_of(&d.outputs, field, values))
        .filter_map(|l| values.iter().position(|v| *v == l))
        .collect();
    let mut out = demos.to_vec();
    let mut added = false;
    for (label, group) in &groups {
        if out.len() >= max {
            break;
        }
        if !shown.contains(label)
            && let Some(demo) = group.choose(rng).and_then(|e| labeled_demo(predictor, e))
        {
            out.push(demo);
            added = true;
        }
    }
    if !added {
        return None;
    }
    let mut order: Vec<usize> = groups.keys().copied().collect();
    order.shuffle(rng);
    Some(interleave(out, predictor, &order))
}

/// `program` with `demos[i]` as predictor `i`'s demos.
pub fn with_demos(program: &Program, demos: Vec<Vec<Demo>>) -> Program {
    let mut p = program.clone();
    for (predictor, d) in p.predictors.iter_mut().zip(demos) {
        predictor.demos = d;
    }
    p
}

/// How many labels the enum output of the program's predictors has at most
/// (1 without an enum output).
pub fn label_count(program: &Program) -> usize {
    program.predictors.iter().filter_map(label_field).map(|(_, v)| v.len()).max().unwrap_or(1).max(1)
}
