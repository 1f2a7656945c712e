//! The optimizers on a scripted LM: bootstrapping, label-covering demo sets,
//! warm start from production with no regression on dev, MIPROv2's
//! instruction candidates, the budget, and the invariant that no optimizer
//! ever sees the test split.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use promptloop::config::{OptimizerKind, PipelineConfig, SplitFractions};
use promptloop::dataset::Dataset;
use promptloop::lm::budget::{Budget, Limits, LmRole, Meter, Prices};
use promptloop::lm::{Lm, LmError, LmRequest, Role};
use promptloop::optimize::bootstrap::{BootstrapSettings, bootstrap_few_shot};
use promptloop::optimize::checkpoint::{Checkpoint, Identity};
use promptloop::optimize::demos::{cover_labels, label_of, stratified};
use promptloop::optimize::{OptimizeContext, Proposal, Start, build, optimize};
use promptloop::program::Program;
use promptloop::program::predictor::DemoSource;
use rand::SeedableRng;

mod common;
use common::{ScriptedLm, last_input, reply};

fn dataset() -> Dataset {
    Dataset::load(Path::new("tests/data/mini-triage.jsonl"), &SplitFractions::default()).unwrap()
}

fn config(optimizer: &str) -> PipelineConfig {
    let text = common::triage_toml("mini-triage.jsonl", "provider = \"embedded\"\nmodel = \"m.gguf\"", optimizer);
    PipelineConfig::parse(&text, Path::new("tests/data/mini.toml")).unwrap()
}

fn labels(d: &Dataset) -> Arc<HashMap<String, String>> {
    let all = d.iter();
    Arc::new(
        all.map(|e| {
            (e.inputs["message"].as_str().unwrap().to_string(), e.outputs["queue"].as_str().unwrap().to_string())
        })
        .collect(),
    )
}

fn context(lm: Arc<ScriptedLm>, meter: Arc<Meter>) -> OptimizeContext {
    context_with(lm, meter, None)
}

/// The optimizer's context on one model in every role, recording into `meter`.
fn context_with(
    lm: Arc<dyn promptloop::lm::LanguageModel>,
    meter: Arc<Meter>,
    checkpoint: Option<Arc<Checkpoint>>,
) -> OptimizeContext {
    let lm = Lm::new(lm, None, 2).metered(meter, LmRole::Task, Prices::default());
    let metric = promptloop::metric::build(&config("kind = \"none\"").metric);
    OptimizeContext { checkpoint, ..common::optimize_context(lm, metric, 32, 2) }
}

fn is_proposer(req: &LmRequest) -> bool {
    req.messages[0].content.contains("You write the instruction")
}

/// A proposer and a reflection LM with nothing to say but a plain instruction;
/// `None` for a task request.
fn plain_proposer(req: &LmRequest) -> Option<String> {
    if is_proposer(req) {
        return Some(reply(req, "proposed_instruction", "Route each message to the queue that handles it."));
    }
    if req.messages[0].content.contains("You improve the instruction") {
        return Some(reflection(
            "Some queues are confused.",
            "Route each message to the queue that handles it, carefully.",
        ));
    }
    None
}

/// The labels shown in the request's demos (assistant turns).
fn demo_labels(req: &LmRequest) -> HashSet<String> {
    let mut shown = HashSet::new();
    for m in req.messages.iter().filter(|m| m.role == Role::Assistant) {
        for label in ["cards", "transfers", "top_ups"] {
            if m.content.contains(label) {
                shown.insert(label.to_string());
            }
        }
    }
    shown
}

/// Right on messages of even length, wrong on the others.
fn half_right(labels: Arc<HashMap<String, String>>) -> Arc<ScriptedLm> {
    ScriptedLm::new(move |req| {
        if let Some(answer) = plain_proposer(req) {
            return answer;
        }
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
    let ctx = context(lm.clone(), Arc::new(Meter::new()));
    let (program, stats) =
        bootstrap_few_shot(&config("kind = \"none\"").baseline(), d.train(), &ctx, &settings, &mut rng).await.unwrap();

    let demos = &program.predictors[0].demos;
    assert_eq!(demos.len(), 5, "3 bootstrapped + 2 labeled");
    assert_eq!(stats.bootstrapped, 3);
    let (boot, labeled): (Vec<_>, Vec<_>) = demos.iter().partition(|d| d.source == DemoSource::Bootstrapped);
    assert_eq!((boot.len(), labeled.len()), (3, 2));
    for demo in &boot {
        // Only correct traces become demos: the scripted model is right on even lengths.
        assert_eq!(demo.inputs["message"].as_str().unwrap().len() % 2, 0, "{demo:?}");
    }
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

#[test]
fn demo_sets_cover_every_label_in_turn() {
    let d = dataset();
    let program = config("kind = \"none\"").baseline();
    let predictor = &program.predictors[0];
    let values = ["cards".to_string(), "transfers".to_string(), "top_ups".to_string()];
    for seed in 0..20 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let demos = stratified(predictor, d.train(), 2, 16, &mut rng);
        let labels: Vec<String> = demos.iter().map(|d| label_of(&d.outputs, "queue", &values).unwrap()).collect();
        assert_eq!(labels.len(), 6, "two of each of three labels");
        for label in &values {
            assert_eq!(labels.iter().filter(|l| *l == label).count(), 2, "{labels:?}");
        }
        assert!(labels.windows(2).all(|w| w[0] != w[1]), "no label twice in a row: {labels:?}");
        let ids: HashSet<_> = demos.iter().map(|d| &d.example_id).collect();
        assert_eq!(ids.len(), 6);

        // Fewer slots than labels: one of each as far as they go.
        let two = stratified(predictor, d.train(), 1, 2, &mut rng);
        assert_eq!(two.len(), 2);
        assert_ne!(label_of(&two[0].outputs, "queue", &values), label_of(&two[1].outputs, "queue", &values));

        // A lopsided set gets the labels it lacks.
        let cards: Vec<_> = demos.iter().filter(|d| d.outputs["queue"] == "cards").cloned().collect();
        let covered = cover_labels(predictor, &cards, d.train(), 8, &mut rng).unwrap();
        let shown: HashSet<_> = covered.iter().map(|d| label_of(&d.outputs, "queue", &values).unwrap()).collect();
        assert_eq!(shown.len(), 3);
        assert!(cover_labels(predictor, &covered, d.train(), 8, &mut rng).is_none(), "nothing left to add");
    }
}

/// Production's program: the declared one with a marker only it has.
fn production(config: &PipelineConfig) -> Program {
    let mut p = config.baseline();
    p.predictors[0].instructions.push_str(" PRODUCTION-MARK");
    p
}

#[tokio::test]
async fn warm_start_never_proposes_a_program_below_production_on_dev() {
    let d = dataset();
    let labels = labels(&d);
    // Production (its marker, no demos) is right on everything; any change makes it worse.
    let lm = ScriptedLm::new(move |req| {
        if let Some(answer) = plain_proposer(req) {
            return answer;
        }
        let message = last_input(req, "message");
        let production = req.messages[0].content.contains("PRODUCTION-MARK") && req.messages.len() == 2;
        let answer = if production { labels[&message].clone() } else { "cards".to_string() };
        reply(req, "queue", &answer)
    });
    for kind in ["bootstrap_few_shot", "bootstrap_random_search", "mipro_v2", "gepa"] {
        let config = config(&format!(
            "kind = \"{kind}\"\nnum_candidates = 6\n[optimizer.mipro_v2]\nnum_trials = 8\n[optimizer.gepa]\niterations = 8"
        ));
        let start = Start { production: production(&config), declared: config.baseline() };
        let optimizer = build(&config.optimizer);
        let ctx = context(lm.clone(), Arc::new(Meter::new()));
        let optimized = optimize(&*optimizer, &start, d.train(), d.dev(), &ctx).await.unwrap();
        assert!(matches!(optimized.proposal, Proposal::NoBetter { .. }), "{kind}: {:?}", optimized.proposal);
        assert_eq!(optimized.program, start.production, "{kind}: production stays");
        assert_eq!(optimized.dev_score, Some(1.0));
        assert!(optimized.candidates.len() > 1, "{kind}: something was tried");
        assert_eq!(optimized.candidates[0].name, "production");
        assert!(optimized.candidates[1..].iter().all(|c| c.dev_score < 1.0), "{kind}");
    }
}

#[tokio::test]
async fn a_candidate_that_beats_production_on_dev_is_proposed() {
    let d = dataset();
    let labels = labels(&d);
    // Right on everything once six demos show all three labels; half right otherwise.
    let lm = ScriptedLm::new(move |req| {
        let message = last_input(req, "message");
        let truth = labels[&message].clone();
        let demos = req.messages.iter().filter(|m| m.role == Role::Assistant).count();
        let right = (demo_labels(req).len() == 3 && demos >= 6) || message.len() % 2 == 0;
        reply(
            req,
            "queue",
            if right {
                &truth
            } else if truth == "cards" {
                "top_ups"
            } else {
                "cards"
            },
        )
    });
    let config = config("kind = \"bootstrap_random_search\"\nmax_labeled_demos = 6\nnum_candidates = 4");
    let start = Start { production: config.baseline(), declared: config.baseline() };
    // A dev split large enough to race on.
    let d =
        Dataset::load(Path::new("tests/data/mini-triage.jsonl"), &SplitFractions { train: 0.3, dev: 0.5, test: 0.2 })
            .unwrap();
    assert!(d.dev().len() > 16);
    let optimized =
        optimize(&*build(&config.optimizer), &start, d.train(), d.dev(), &context(lm, Arc::new(Meter::new())))
            .await
            .unwrap();
    assert!(optimized.improved(), "{:?}", optimized.candidates);
    assert_eq!(optimized.dev_score, Some(1.0));
    assert!(optimized.production_dev.unwrap() < 1.0);
    let values = ["cards".to_string(), "transfers".to_string(), "top_ups".to_string()];
    let shown: HashSet<_> = optimized.program.predictors[0]
        .demos
        .iter()
        .map(|demo| label_of(&demo.outputs, "queue", &values).unwrap())
        .collect();
    assert_eq!(shown.len(), 3, "the winner shows every label");
    // The race dropped some candidates before scoring them on all of dev.
    assert!(optimized.candidates.iter().any(|c| c.scored_on.is_some()), "{:?}", optimized.candidates);
}

#[tokio::test]
async fn no_optimizer_ever_sees_a_test_example() {
    let d = dataset();
    let test_messages: Vec<String> =
        d.test().iter().map(|e| e.inputs["message"].as_str().unwrap().to_string()).collect();
    assert!(!test_messages.is_empty());
    let test_ids: HashSet<_> = d.test().iter().map(|e| e.id.clone()).collect();
    for kind in ["bootstrap_few_shot", "bootstrap_random_search", "mipro_v2", "gepa"] {
        let lm = half_right(labels(&d));
        let config = config(&format!(
            "kind = \"{kind}\"\nmax_rounds = 2\nnum_candidates = 4\n[optimizer.mipro_v2]\nnum_trials = 6\n[optimizer.gepa]\niterations = 9"
        ));
        let start = Start { production: config.baseline(), declared: config.baseline() };
        let optimized = optimize(
            &*build(&config.optimizer),
            &start,
            d.train(),
            d.dev(),
            &context(lm.clone(), Arc::new(Meter::new())),
        )
        .await
        .unwrap();
        let requests = lm.requests.lock().unwrap();
        assert!(requests.len() > test_messages.len(), "{kind}: only {} requests", requests.len());
        for request in requests.iter() {
            for message in &request.messages {
                for t in &test_messages {
                    assert!(!message.content.contains(t.as_str()), "{kind}: a test example reached the optimizer: {t}");
                }
            }
        }
        assert!(optimized.program.predictors[0].demos.iter().all(|demo| !test_ids.contains(&demo.example_id)));
    }
}

#[tokio::test]
async fn mipro_finds_the_instruction_written_from_the_data() {
    let d = dataset();
    let labels = labels(&d);
    // Right only when the instruction names what each label's messages mention,
    // which only the drafts written from train do. The proposer LM answers
    // in a shape that never parses: its proposals are dropped, the search goes on.
    let lm = ScriptedLm::new(move |req| {
        if is_proposer(req) {
            return String::new();
        }
        let message = last_input(req, "message");
        let truth = labels[&message].clone();
        let right = req.messages[0].content.contains("often mentions");
        reply(req, "queue", if right { &truth } else { "transfers" })
    });
    let config =
        config("kind = \"mipro_v2\"\nnum_candidates = 3\n[optimizer.mipro_v2]\nnum_trials = 12\nminibatch_size = 5");
    let start = Start { production: config.baseline(), declared: config.baseline() };
    let meter = Arc::new(Meter::new());
    let optimized =
        optimize(&*build(&config.optimizer), &start, d.train(), d.dev(), &context(lm.clone(), meter.clone()))
            .await
            .unwrap();
    assert!(optimized.improved(), "{:?} {:?}", optimized.candidates, optimized.notes);
    assert_eq!(optimized.dev_score, Some(1.0));
    let instruction = &optimized.program.predictors[0].instructions;
    assert!(instruction.contains("often mentions"), "{instruction}");
    // Every label gets its clue line, in the train data's own words.
    for label in ["cards:", "transfers:", "top_ups:"] {
        assert!(instruction.contains(label), "{instruction}");
    }
    let dropped = optimized.notes.notes.iter().filter(|n| n.contains("was dropped")).count();
    assert!(dropped >= 1, "{:?}", optimized.notes.notes);
    assert!(optimized.notes.proposals.iter().any(|p| p.origin.starts_with("data:") && p.dev_score == Some(1.0)));
    assert!(meter.usage().role(LmRole::Proposer).calls >= 2, "the proposer was asked, in its own role");
}

/// A reflection reply in the chat adapter's format.
fn reflection(diagnosis: &str, instruction: &str) -> String {
    format!("[[ ## diagnosis ## ]]\n{diagnosis}\n\n[[ ## new_instruction ## ]]\n{instruction}\n\n[[ ## completed ## ]]")
}

#[tokio::test]
async fn gepa_keeps_the_reflection_that_fixes_the_failures_and_records_it() {
    let d = dataset();
    let labels = labels(&d);
    let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = asked.clone();
    let retries = Arc::new(std::sync::Mutex::new(Vec::<f32>::new()));
    let retried = retries.clone();
    // The task model is right only under an instruction that says MAGIC, which
    // only the reflection LM writes. Its first reply does not parse, and the
    // retry (sampled) copies the prompt's markers: that reflection is dropped.
    let lm = ScriptedLm::new(move |req| {
        if req.messages[0].content.contains("You improve the instruction") {
            let user = req.messages.last().unwrap().content.clone();
            seen.lock().unwrap().push(user);
            let mut retried = retried.lock().unwrap();
            if req.rollout.is_some() {
                retried.push(req.temperature);
                if retried.len() == 1 {
                    return reflection("Unsure.", "[## tip ## ]\n[## tip ## ]\n[## tip ## ]\n[## tip ## ]");
                }
            } else if retried.is_empty() {
                return String::new();
            }
            return reflection(
                "The step confuses the queues of card and transfer messages.",
                "Route the message to its queue. MAGIC: read the whole message first.",
            );
        }
        let message = last_input(req, "message");
        let right = req.messages[0].content.contains("MAGIC");
        reply(req, "queue", if right { &labels[&message] } else { "top_ups" })
    });
    let config = config("kind = \"gepa\"\n[optimizer.gepa]\niterations = 12\nmerge = false");
    let start = Start { production: config.baseline(), declared: config.baseline() };
    let optimized =
        optimize(&*build(&config.optimizer), &start, d.train(), d.dev(), &context(lm, Arc::new(Meter::new())))
            .await
            .unwrap();
    assert!(optimized.improved(), "{:?}", optimized.notes);
    assert_eq!(optimized.dev_score, Some(1.0));
    assert!(optimized.program.predictors[0].instructions.contains("MAGIC"));
    let reflections = &optimized.notes.reflections;
    let kept = reflections.iter().find(|r| r.accepted && r.conclusion.is_some()).expect("an LM reflection was kept");
    assert!(kept.conclusion.as_deref().unwrap().contains("confuses"));
    assert!(kept.instruction.as_deref().unwrap().contains("MAGIC"));
    assert_eq!(kept.dev_score, Some(1.0));
    let (before, after) = kept.minibatch.unwrap();
    assert!(after > before);
    assert!(!kept.failures.is_empty() && kept.failures.iter().all(|f| f.contains("expected")), "{:?}", kept.failures);
    // The reflection LM read the failures with the metric's feedback, from train only.
    let asked = asked.lock().unwrap();
    assert!(asked[0].contains("feedback:") && asked[0].contains("expected"), "{}", asked[0]);
    let train: HashSet<&str> = d.train().iter().map(|e| e.inputs["message"].as_str().unwrap()).collect();
    assert!(train.iter().any(|m| asked[0].contains(m)));
    // The reply that did not parse was asked again, sampled; the retry's garbled
    // instruction was dropped with both reasons, and the search went on.
    let retries = retries.lock().unwrap();
    assert!(!retries.is_empty() && retries.iter().all(|t| *t >= 0.7), "{retries:?}");
    let dropped = optimized.notes.notes.iter().find(|n| n.contains("reflection") && n.contains("dropped"));
    let dropped = dropped.unwrap_or_else(|| panic!("{:?}", optimized.notes.notes));
    assert!(dropped.contains("twice") && dropped.contains("field markers"), "{dropped}");
}

#[tokio::test]
async fn gepa_offline_reflection_writes_hints_from_the_failures() {
    let d = dataset();
    let labels = labels(&d);
    // No LM reflection; the task model is right when the instruction carries hints.
    let lm = ScriptedLm::new(move |req| {
        let message = last_input(req, "message");
        let right = req.messages[0].content.contains("Hints from past mistakes:") || message.len() % 3 == 0;
        reply(req, "queue", if right { &labels[&message] } else { "top_ups" })
    });
    let config = config("kind = \"gepa\"\n[optimizer.gepa]\niterations = 6\nlm_reflection = false");
    let start = Start { production: config.baseline(), declared: config.baseline() };
    let optimized =
        optimize(&*build(&config.optimizer), &start, d.train(), d.dev(), &context(lm.clone(), Arc::new(Meter::new())))
            .await
            .unwrap();
    assert!(optimized.improved());
    let instruction = &optimized.program.predictors[0].instructions;
    assert!(instruction.starts_with("Route the customer's message"), "{instruction}");
    let hints = instruction.split("Hints from past mistakes:\n").nth(1).expect("a hint block");
    for line in hints.lines() {
        let (label, words) = line.strip_prefix("- ").unwrap().split_once(": messages about ").unwrap();
        assert!(["cards", "transfers", "top_ups"].contains(&label), "{line}");
        assert!((1..=6).contains(&words.split(", ").count()), "{line}");
    }
    assert!(lm.requests.lock().unwrap().iter().all(|r| !r.messages[0].content.contains("You improve")));
}

#[tokio::test]
async fn a_spent_budget_stops_the_search_with_the_best_program_so_far() {
    let d = dataset();
    let lm = half_right(labels(&d));
    let config = config("kind = \"bootstrap_random_search\"\nnum_candidates = 12");
    let start = Start { production: config.baseline(), declared: config.baseline() };
    let meter = Arc::new(Meter::new());
    let limit = d.dev().len() as u64 + 25;
    meter.set_limits(Limits { total: Budget { max_calls: Some(limit), ..Default::default() }, ..Default::default() });
    let optimized =
        optimize(&*build(&config.optimizer), &start, d.train(), d.dev(), &context(lm.clone(), meter.clone()))
            .await
            .unwrap();
    let stop = optimized.stopped_early.as_deref().expect("the search stopped early");
    assert!(stop.contains(&format!("{limit} calls")), "{stop}");
    assert_eq!(meter.usage().total().calls, limit, "calls stop exactly at the budget");
    assert_eq!(lm.calls() as u64, limit);
    // What it returns is production or a program scored on all of dev.
    let chosen = optimized.candidates.iter().find(|c| c.dev_score == optimized.dev_score.unwrap()).unwrap();
    assert_eq!(chosen.scored_on, None);
}

#[tokio::test]
async fn the_meter_counts_every_role_and_refuses_past_a_role_budget() {
    let d = dataset();
    let lm = half_right(labels(&d));
    let meter = Arc::new(Meter::new());
    let ctx = context(lm, meter.clone());
    meter.set_limits(Limits {
        roles: [(LmRole::Teacher, Budget { max_calls: Some(3), ..Default::default() })].into(),
        ..Default::default()
    });
    let message = d.train()[0].inputs["message"].as_str().unwrap();
    let request =
        LmRequest::new(vec![promptloop::lm::ChatMessage::new(Role::User, format!("[[ ## message ## ]]\n{message}"))]);
    for _ in 0..3 {
        ctx.teacher.lm.complete(&request).await.unwrap();
    }
    let refused = ctx.teacher.lm.complete(&request).await.unwrap_err();
    assert!(matches!(refused, LmError::BudgetExhausted { .. }), "{refused}");
    assert!(refused.to_string().contains("teacher"), "{refused}");
    // Other roles go on, and every call is on the one meter.
    ctx.student.settings.lm.complete(&request).await.unwrap();
    let usage = meter.usage();
    assert_eq!(usage.role(LmRole::Teacher).calls, 3);
    assert_eq!(usage.role(LmRole::Task).calls, 1);
    assert_eq!(usage.total().calls, 4);
    assert_eq!(ctx.student.settings.lm.usage().calls, 4, "any handle reports the run's total");
}

#[test]
fn a_budget_too_small_for_one_full_evaluation_is_refused_before_any_call() {
    let mut config = config("kind = \"bootstrap_random_search\"");
    config.budget.max_calls = Some(20);
    let d = dataset();
    let program = config.baseline();
    let reserve = promptloop::pipeline::optimize::reserve(&program, &d, &config.metric);
    let error = promptloop::pipeline::optimize::optimizer_limits(&config, &reserve).unwrap_err().to_string();
    let minimum = d.dev().len() + 2 * d.test().len() + 1;
    assert!(error.contains(&format!("at least {minimum}")), "{error}");
    assert!(error.contains("max_calls = 20"), "{error}");
    config.budget.max_calls = Some(minimum as u64);
    let limits = promptloop::pipeline::optimize::optimizer_limits(&config, &reserve).unwrap().unwrap();
    assert_eq!(limits.total.max_calls, Some((minimum - 2 * d.test().len()) as u64), "test scoring is set aside");
}

#[test]
fn a_judge_metrics_calls_are_projected_and_set_aside_from_the_runs_budget() {
    let text = common::triage_toml("mini-triage.jsonl", "provider = \"embedded\"\nmodel = \"m.gguf\"", "kind = \"bootstrap_few_shot\"")
        .replace(
            "[metric]\nkind = \"exact_match\"\nfields = [\"queue\"]",
            "[metric]\nkind = \"judge\"\nfield = \"queue\"\nrubric = \"Right queue?\"\nscale = \"1-5\"\n[metric.lm]\nprovider = \"embedded\"\nmodel = \"judge.gguf\"",
        );
    let mut config = PipelineConfig::parse(&text, Path::new("tests/data/mini.toml")).unwrap();
    assert_eq!(config.metric.judge_lms().len(), 1, "the judge replaced exact match");
    let d = dataset();
    let (dev, test) = (d.dev().len() as u64, d.test().len() as u64);
    let program = config.baseline();
    let reserve = promptloop::pipeline::optimize::reserve(&program, &d, &config.metric);
    assert_eq!((reserve.calls_per_run, reserve.judges_per_run), (1, 1));

    // Every scored run is judged: the task's and the teacher's, not the proposer's.
    let projected = promptloop::pipeline::optimize::with_judge(
        vec![(LmRole::Task, 30), (LmRole::Teacher, 12), (LmRole::Proposer, 5)],
        &reserve,
    );
    assert_eq!(projected.last(), Some(&(LmRole::Judge, 42)));

    // The run's limit sets aside the test scoring's task and judge calls; the
    // task role's only its own.
    config.budget.max_calls = Some(2 * dev + 4 * test);
    let error = promptloop::pipeline::optimize::optimizer_limits(&config, &reserve).unwrap_err().to_string();
    assert!(error.contains("(the judge's included)"), "{error}");
    assert!(error.contains(&format!("at least {}", 2 * dev + 4 * test + 1)), "{error}");
    config.budget.max_calls = Some(1000);
    config.budget.task = Some(promptloop::lm::budget::Budget { max_calls: Some(600), ..Default::default() });
    let limits = promptloop::pipeline::optimize::optimizer_limits(&config, &reserve).unwrap().unwrap();
    assert_eq!(limits.total.max_calls, Some(1000 - 4 * test));
    assert_eq!(limits.roles[&LmRole::Task].max_calls, Some(600 - 2 * test));
}

#[test]
fn the_teachers_projection_comes_with_the_most_its_bootstraps_can_take() {
    let d = dataset();
    let train = d.train().len();
    let teacher = |projected: Vec<(LmRole, u64)>| projected.iter().find(|(r, _)| *r == LmRole::Teacher).unwrap().1;
    for (kind, bootstraps) in [
        ("kind = \"bootstrap_few_shot\"\nmax_rounds = 2", 1),
        ("kind = \"bootstrap_random_search\"\nnum_candidates = 6\nmax_rounds = 2", 2),
    ] {
        let config = config(kind);
        let optimizer = promptloop::optimize::build(&config.optimizer);
        let program = config.baseline();
        let most = optimizer.teacher_at_most(&program, train);
        // Every train example traced in every round, per bootstrap.
        assert_eq!(most, (bootstraps * train * 2) as u64, "{kind}");
        assert!(teacher(optimizer.project(&program, train, d.dev().len())) < most, "{kind}");
    }
    let gepa = config("kind = \"gepa\"");
    assert_eq!(promptloop::optimize::build(&gepa.optimizer).teacher_at_most(&gepa.baseline(), train), 0);
}

#[test]
fn optimizer_kinds_are_named_in_the_config() {
    let config = config("kind = \"mipro_v2\"\n[optimizer.mipro_v2]\nauto = \"medium\"\nminibatch_size = 10");
    assert_eq!(config.optimizer.kind, OptimizerKind::MiproV2);
    assert_eq!(config.optimizer.mipro_v2.minibatch_size, 10);
    let text = common::triage_toml(
        "mini-triage.jsonl",
        "provider = \"embedded\"\nmodel = \"m.gguf\"",
        "kind = \"mipro_v2\"\n[optimizer.mipro_v2]\nauto = \"huge\"",
    );
    let error = PipelineConfig::parse(&text, Path::new("tests/data/mini.toml")).unwrap_err().to_string();
    assert!(error.contains("huge") && error.contains("light"), "{error}");
}

/// A model that fails for good (an outage after retries) after `calls` calls.
struct Outage {
    inner: Arc<ScriptedLm>,
    left: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl promptloop::lm::LanguageModel for Outage {
    fn describe(&self) -> promptloop::lm::LmDescription {
        self.inner.describe()
    }
    async fn complete(&self, request: &LmRequest) -> Result<promptloop::lm::LmResponse, LmError> {
        use std::sync::atomic::Ordering;
        if self.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
            return Err(LmError::Engine("the provider is down".into()));
        }
        self.inner.complete(request).await
    }
}

fn identity(config: &PipelineConfig, d: &Dataset, start: &Start) -> Identity {
    Identity {
        pipeline: config.name.clone(),
        dataset: d.content_hash.clone(),
        seed: config.seed,
        optimizer: serde_json::to_value(&config.optimizer).unwrap(),
        production: promptloop::optimize::scorer::program_key(&start.production),
        model: serde_json::json!({"provider": "scripted"}),
    }
}

fn outage_context(lm: Arc<dyn promptloop::lm::LanguageModel>, checkpoint: Arc<Checkpoint>) -> OptimizeContext {
    context_with(lm, Arc::new(Meter::new()), Some(checkpoint))
}

#[tokio::test]
async fn a_killed_search_resumes_from_its_checkpoint_and_reaches_the_same_program() {
    let d = dataset();
    let dir = tempfile::tempdir().unwrap();
    for kind in ["bootstrap_random_search", "mipro_v2", "gepa"] {
        let config = config(&format!(
            "kind = \"{kind}\"\nnum_candidates = 6\n[optimizer.mipro_v2]\nnum_trials = 10\n[optimizer.gepa]\niterations = 9"
        ));
        let start = Start { production: config.baseline(), declared: config.baseline() };
        let optimizer = build(&config.optimizer);

        // Uninterrupted.
        let whole = half_right(labels(&d));
        let path = dir.path().join(format!("{kind}-whole.json"));
        let checkpoint = Arc::new(Checkpoint::open(&path, identity(&config, &d, &start), false).unwrap());
        let ctx = outage_context(whole.clone(), checkpoint);
        let uninterrupted = optimize(&*optimizer, &start, d.train(), d.dev(), &ctx).await.unwrap();
        let whole_calls = ctx.student.settings.lm.usage().calls;

        // Killed part-way by an outage, then run again.
        let path = dir.path().join(format!("{kind}.json"));
        let first = Arc::new(Outage { inner: half_right(labels(&d)), left: (whole.calls() / 2).into() });
        let checkpoint = Arc::new(Checkpoint::open(&path, identity(&config, &d, &start), false).unwrap());
        let error = optimize(&*optimizer, &start, d.train(), d.dev(), &outage_context(first, checkpoint)).await;
        assert!(matches!(error, Err(LmError::Engine(_))), "{kind}: the outage ends the first attempt");
        assert!(path.exists(), "{kind}: the checkpoint was written as the search went");

        let second = half_right(labels(&d));
        let checkpoint = Arc::new(Checkpoint::open(&path, identity(&config, &d, &start), false).unwrap());
        assert!(checkpoint.restored_len() > 0, "{kind}");
        let ctx = outage_context(second.clone(), checkpoint.clone());
        let resumed = optimize(&*optimizer, &start, d.train(), d.dev(), &ctx).await.unwrap();

        assert_eq!(resumed.program, uninterrupted.program, "{kind}: the same program");
        assert_eq!(resumed.candidates, uninterrupted.candidates, "{kind}: the same path");
        assert!(second.calls() < whole.calls(), "{kind}: restored scores are not asked again");
        assert_eq!(ctx.student.settings.lm.usage().calls, whole_calls, "{kind}: and are counted as before");
        checkpoint.finish();
        assert!(!path.exists());
    }
}

#[test]
fn a_foreign_or_corrupt_checkpoint_is_refused_with_its_name_and_fresh_starts_over() {
    let d = dataset();
    let dir = tempfile::tempdir().unwrap();
    let config = config("kind = \"bootstrap_random_search\"");
    let start = Start { production: config.baseline(), declared: config.baseline() };
    let path = dir.path().join("mini-triage.json");
    let checkpoint = Checkpoint::open(&path, identity(&config, &d, &start), false).unwrap();
    let mut program = start.production.clone();
    program.predictors[0].instructions.push_str(" v2");
    checkpoint.save(&program, Vec::new());
    assert!(path.exists());

    let mut other = identity(&config, &d, &start);
    other.seed = 99;
    let error = Checkpoint::open(&path, other.clone(), false).unwrap_err().to_string();
    assert!(
        error.contains(&path.display().to_string()) && error.contains("seed (3)") && error.contains("--fresh"),
        "{error}"
    );
    let mut dataset_changed = identity(&config, &d, &start);
    dataset_changed.dataset = "0".repeat(64);
    let error = Checkpoint::open(&path, dataset_changed, false).unwrap_err().to_string();
    assert!(error.contains("different dataset"), "{error}");

    // --fresh discards it and starts empty.
    let fresh = Checkpoint::open(&path, other, true).unwrap();
    assert_eq!(fresh.restored_len(), 0);
    assert!(!path.exists());

    std::fs::write(&path, "{\"format\": \"promptloop.checkpoint/v1\", \"identity\": ").unwrap();
    let error = Checkpoint::open(&path, identity(&config, &d, &start), false).unwrap_err().to_string();
    assert!(error.contains(&path.display().to_string()) && error.contains("--fresh"), "{error}");
    std::fs::write(&path, "{\"format\": \"something-else/v9\", \"identity\": {}, \"entries\": []}").unwrap();
    let error = Checkpoint::open(&path, identity(&config, &d, &start), false).unwrap_err().to_string();
    assert!(error.contains("--fresh"), "{error}");

    // A production program whose module or signature changed is another program:
    // its checkpoint (and memoized scores) are not reused.
    let key = promptloop::optimize::scorer::program_key;
    let mut reasoning = start.production.clone();
    reasoning.predictors[0].module = promptloop::program::module::Module::ChainOfThought;
    assert_ne!(key(&reasoning), key(&start.production));
    let mut renamed = start.production.clone();
    renamed.predictors[0].signature.outputs[0].name = "team".into();
    assert_ne!(key(&renamed), key(&start.production));
}

#[test]
fn instructions_a_small_model_garbles_are_refused_with_the_reason() {
    use promptloop::optimize::propose::instruction_problem;
    assert_eq!(instruction_problem("Route each message to the queue that handles it."), None);
    let declared = "Route the message.\ncards: ordering a card.\npayments: card payments.\ntransfers: bank transfers.";
    assert_eq!(instruction_problem(declared), None);
    // What the embedded model wrote when asked for an instruction on the worked example.
    let garbled = format!("[## current_instruction ##]\n{}", "[## tip ## ]\n".repeat(40));
    assert!(instruction_problem(&garbled).unwrap().contains("field markers"), "{garbled}");
    let looping = "Answer with the queue.\n".repeat(6);
    assert_eq!(instruction_problem(&looping).unwrap(), "repeats itself (6 lines, 1 different)");
    assert_eq!(instruction_problem("ok").unwrap(), "is too short to be an instruction (1 word)");
    assert!(instruction_problem("a b c d e f").unwrap().contains("different words"));
    assert!(instruction_problem(&"word ".repeat(1000)).unwrap().contains("at most 4000"));
}

#[tokio::test]
async fn gepa_with_a_metric_call_budget_mutates_until_it_is_spent() {
    let d = dataset();
    // Nothing ever improves: GEPA goes on mutating until its example evaluations reach the budget.
    let lm = ScriptedLm::new(move |req| {
        if let Some(answer) = plain_proposer(req) {
            return answer;
        }
        reply(req, "queue", "cards")
    });
    let config = config("kind = \"gepa\"\n[optimizer.gepa]\nmax_metric_calls = 150\nmerge = false");
    assert_eq!(config.optimizer.gepa.iterations(), 150, "no auto preset caps the rounds");
    let start = Start { production: config.baseline(), declared: config.baseline() };
    let optimized =
        optimize(&*build(&config.optimizer), &start, d.train(), d.dev(), &context(lm, Arc::new(Meter::new())))
            .await
            .unwrap();
    let stop = optimized.notes.notes.iter().find(|n| n.contains("reached max_metric_calls"));
    let stop = stop.unwrap_or_else(|| panic!("{:?}", optimized.notes.notes));
    let spent: u64 = stop.split(": ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((150..150 + 2 * 4 + d.dev().len() as u64).contains(&spent), "{stop}");
    assert!(spent > 12 * 8, "more rounds than the light preset's twelve: {stop}");
}
