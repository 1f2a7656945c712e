//! BootstrapFewShot and random search on a scripted LM, and the invariant
//! that the optimizer never sees the test split.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use promptloop::config::{MetricConfig, OptimizerConfig, OptimizerKind, PipelineConfig, SplitFractions};
use promptloop::dataset::Dataset;
use promptloop::lm::Lm;
use promptloop::optimize::bootstrap::{BootstrapSettings, OptimizeContext, bootstrap_few_shot};
use promptloop::optimize::evaluate::EvalContext;
use promptloop::optimize::optimize;
use promptloop::program::Program;
use promptloop::program::predictor::{DemoSource, PredictSettings};
use rand::SeedableRng;

mod common;
use common::{ScriptedLm, last_input, reply};

fn dataset() -> Dataset {
    Dataset::load(Path::new("tests/data/mini-triage.jsonl"), &SplitFractions::default()).unwrap()
}

fn config() -> PipelineConfig {
    let text = common::triage_toml(
        "mini-triage.jsonl",
        "provider = \"embedded\"\nmodel = \"m.gguf\"",
        "kind = \"bootstrap_random_search\"",
    );
    PipelineConfig::parse(&text, Path::new("tests/data/mini.toml")).unwrap()
}

fn labels(d: &Dataset) -> Arc<HashMap<String, String>> {
    let all = d.train().iter().chain(d.dev()).chain(d.test());
    Arc::new(
        all.map(|e| {
            (e.inputs["message"].as_str().unwrap().to_string(), e.outputs["queue"].as_str().unwrap().to_string())
        })
        .collect(),
    )
}

fn context(lm: Arc<ScriptedLm>) -> OptimizeContext {
    let settings = PredictSettings {
        lm: Lm::new(lm, None, 2),
        format: promptloop::config::AdapterFormat::Chat,
        temperature: 0.0,
        max_tokens: 32,
    };
    let student = EvalContext {
        settings: settings.clone(),
        metric: MetricConfig::ExactMatch { fields: vec!["queue".into()] },
        concurrency: 2,
        progress: false,
    };
    OptimizeContext { student, teacher: settings }
}

/// Right on messages of even length, wrong on the others.
fn half_right(labels: Arc<HashMap<String, String>>) -> Arc<ScriptedLm> {
    ScriptedLm::new(move |req| {
        let message = last_input(req, "message");
        let truth = labels[&message].clone();
        let answer = if message.len() % 2 == 0 {
            truth
        } else if truth == "cards" {
            "transfers".into()
        } else {
            "cards".into()
        };
        reply(req, "queue", &answer)
    })
}

#[tokio::test]
async fn bootstrapped_demos_are_the_traces_the_metric_accepted() {
    let d = dataset();
    let lm = half_right(labels(&d));
    let settings =
        BootstrapSettings { max_bootstrapped_demos: 3, max_labeled_demos: 5, max_rounds: 1, metric_threshold: 1.0 };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (program, stats) =
        bootstrap_few_shot(&Program::baseline(&config()), d.train(), &context(lm.clone()), &settings, &mut rng)
            .await
            .unwrap();

    let demos = &program.predictors[0].demos;
    assert_eq!(demos.len(), 5, "3 bootstrapped + 2 labeled");
    assert_eq!(stats.bootstrapped, 3);
    let (boot, labeled): (Vec<_>, Vec<_>) = demos.iter().partition(|d| d.source == DemoSource::Bootstrapped);
    assert_eq!((boot.len(), labeled.len()), (3, 2));
    for demo in &boot {
        // Only correct traces become demos: the scripted model is right on even lengths.
        assert_eq!(demo.inputs["message"].as_str().unwrap().len() % 2, 0, "{demo:?}");
    }
    // The attempts stopped once enough demos were found: one call per attempt.
    assert_eq!(lm.calls(), stats.attempts);
    let train_ids: HashSet<_> = d.train().iter().map(|e| e.id.as_str()).collect();
    assert!(demos.iter().all(|d| train_ids.contains(d.example_id.as_str())));
    let unique: HashSet<_> = demos.iter().map(|d| &d.example_id).collect();
    assert_eq!(unique.len(), demos.len(), "no example is used twice");

    // The teacher never sees the example it answers among its own demos.
    for request in lm.requests.lock().unwrap().iter() {
        let asked = last_input(request, "message");
        let shown: Vec<_> = request.messages[1..request.messages.len() - 1].iter().map(|m| m.content.clone()).collect();
        assert!(!shown.iter().any(|m| m.contains(&format!("\n{asked}"))), "{asked} leaked into its own demos");
    }
}

#[tokio::test]
async fn random_search_keeps_the_candidate_that_wins_on_dev() {
    let d = dataset();
    let labels = labels(&d);
    // The scripted model answers right only when one particular training
    // example is among its demos: selection must find a program that has it.
    let key = d.train()[7].inputs["message"].as_str().unwrap().to_string();
    let needle = key.clone();
    let lm = ScriptedLm::new(move |req| {
        let message = last_input(req, "message");
        let has_key = req.messages.iter().any(|m| m.content.contains(&needle) && message != needle);
        let truth = labels[&message].clone();
        reply(req, "queue", if has_key || message.len() % 2 == 0 { &truth } else { "top_ups" })
    });
    let config = OptimizerConfig {
        kind: OptimizerKind::BootstrapRandomSearch,
        max_bootstrapped_demos: 2,
        max_labeled_demos: 12,
        max_rounds: 1,
        num_candidates: 6,
        metric_threshold: 1.0,
        teacher: None,
    };
    let optimized =
        optimize(&Program::baseline(&self::config()), d.train(), d.dev(), &context(lm), &config, 11).await.unwrap();
    let best = optimized.candidates.iter().map(|c| c.dev_score).fold(f64::MIN, f64::max);
    assert_eq!(optimized.dev_score, Some(best));
    assert_eq!(optimized.candidates.len(), 3 + 6);
    assert_eq!(optimized.candidates[0].name, "zero-shot");
    let demo_messages: Vec<_> =
        optimized.program.predictors[0].demos.iter().map(|d| d.inputs["message"].as_str().unwrap()).collect();
    assert!(demo_messages.contains(&key.as_str()), "the winner should carry the decisive demo");
    assert!(optimized.candidates.iter().any(|c| c.dev_score < best), "some candidates lose");
}

#[tokio::test]
async fn the_optimizer_never_sees_a_test_example() {
    let d = dataset();
    let lm = half_right(labels(&d));
    let config = OptimizerConfig {
        kind: OptimizerKind::BootstrapRandomSearch,
        max_bootstrapped_demos: 4,
        max_labeled_demos: 8,
        max_rounds: 2,
        num_candidates: 4,
        metric_threshold: 1.0,
        teacher: None,
    };
    let optimized = optimize(&Program::baseline(&self::config()), d.train(), d.dev(), &context(lm.clone()), &config, 5)
        .await
        .unwrap();
    let test_messages: Vec<&str> = d.test().iter().map(|e| e.inputs["message"].as_str().unwrap()).collect();
    assert!(!test_messages.is_empty());
    let requests = lm.requests.lock().unwrap();
    assert!(requests.len() > 20);
    for request in requests.iter() {
        for message in &request.messages {
            for t in &test_messages {
                assert!(!message.content.contains(t), "a test example reached the optimizer: {t}");
            }
        }
    }
    let test_ids: HashSet<_> = d.test().iter().map(|e| e.id.clone()).collect();
    assert!(optimized.program.predictors[0].demos.iter().all(|demo| !test_ids.contains(&demo.example_id)));
}
