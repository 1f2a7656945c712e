//! The report reviewers read: REPORT.md and the PR body. The body is pinned
//! as a snapshot, and a run with far too much to say still fits GitHub's
//! limit with its headline whole.

use chrono::{TimeZone, Utc};
use promptloop::eval::gate::Decision;
use promptloop::lm::budget::{Budget, RoleUsage};
use promptloop::optimize::{ProposalRecord, ReflectionRecord};
use promptloop::program::artifact::CandidateScore;
use promptloop::report::history::Entry;
use promptloop::report::markdown::{self, GITHUB_BODY_LIMIT};
use promptloop::report::{Cost, DatasetSize, Failures, Flip, Headline, Outcome, RunReport, Scores, Slice};
use promptloop::report::{RoleUse, SearchSummary};
use serde_json::{Map, Value, json};

const MARKER: &str = "<!-- promptloop:pipeline=support-triage -->";
const REPORT_PATH: &str = "artifacts/support-triage/REPORT.md";

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

fn entry(day: u32, baseline: f64, candidate: f64, decision: Decision) -> Entry {
    Entry {
        date: Utc.with_ymd_and_hms(2026, 11, day, 6, 0, 0).unwrap(),
        examples: 1150,
        test_n: 162,
        baseline,
        candidate: Some(candidate),
        delta: Some(candidate - baseline),
        low: Some(candidate - baseline - 0.08),
        high: Some(candidate - baseline + 0.08),
        decision,
        lm_calls: 1500,
        tokens: 900_000,
        dollars: None,
    }
}

fn flip(i: usize, fixed: bool, message: &str) -> Flip {
    Flip {
        id: format!("log-{i:04}"),
        fixed,
        signal: if i % 3 == 0 { "urgent".into() } else { "routine".into() },
        inputs: fields(json!({ "message": message })),
        reference: fields(json!({ "queue": "cards" })),
        production: if fixed {
            Outcome::Outputs(fields(json!({ "queue": "payments" })))
        } else {
            Outcome::Outputs(fields(json!({ "queue": "cards" })))
        },
        candidate: if fixed {
            Outcome::Outputs(fields(json!({ "queue": "cards" })))
        } else {
            Outcome::Failed("the reply had no `queue` field".into())
        },
    }
}

fn run(flips: Vec<Flip>, program_diff: String) -> RunReport {
    RunReport {
        headline: Headline {
            pipeline: "support-triage".into(),
            metric: "exact_match(queue)".into(),
            n: 162,
            baseline: 0.432,
            candidate: 0.494,
            delta: 0.062,
            low: 0.012,
            high: 0.111,
            confidence: 0.95,
            mcnemar_p: Some(0.0213),
            decision: Decision::Promote,
            reasons: vec!["the delta +0.062 clears the minimum of +0.000 and its interval lies above zero".into()],
            no_candidate: false,
        },
        date: Utc.with_ymd_and_hms(2026, 11, 27, 6, 0, 0).unwrap(),
        production: "`artifacts/support-triage/program.json` on main (1a2b3c4)".into(),
        optimizer: "`bootstrap_random_search` (6 random candidates)".into(),
        dev: Some(Scores { n: 180, baseline: 0.45, candidate: 0.52 }),
        slices: vec![
            Slice {
                signal: "routine".into(),
                scores: Scores { n: 140, baseline: 0.45, candidate: 0.51 },
                fixed: 14,
                broken: 6,
            },
            Slice {
                signal: "urgent".into(),
                scores: Scores { n: 22, baseline: 0.32, candidate: 0.41 },
                fixed: 3,
                broken: 1,
            },
        ],
        branches: vec![],
        flipped: flips,
        program_diff,
        dataset: None,
        examples: DatasetSize { examples: 1150, train: 808, dev: 180, test: 162 },
        cost: Cost {
            lm_calls: 1498,
            cache_hits: 312,
            prompt_tokens: 800_000,
            completion_tokens: 12_000,
            dollars: Some(0.41),
        },
        history: vec![
            entry(13, 0.266, 0.460, Decision::Promote),
            entry(20, 0.460, 0.455, Decision::Hold),
            entry(27, 0.432, 0.494, Decision::Promote),
        ],
        search: Some(search()),
        failures: vec![],
    }
}

fn search() -> SearchSummary {
    let candidate = |name: &str, demos: usize, dev_score: f64, scored_on: Option<usize>| CandidateScore {
        name: name.into(),
        demos,
        dev_score,
        scored_on,
    };
    let role = |role: &str, calls: u64, cached: u64, projected_calls: u64, budget: Budget| RoleUse {
        role: role.into(),
        budget,
        projected_calls,
        used: RoleUsage {
            calls,
            provider_calls: calls - cached,
            cache_hits: cached,
            prompt_tokens: calls * 500,
            completion_tokens: calls * 4,
            ..Default::default()
        },
    };
    SearchSummary {
        improved: true,
        production_dev: 0.45,
        candidate_dev: 0.52,
        chosen: "mipro i2d1".into(),
        candidates: vec![
            candidate("production", 4, 0.45, None),
            candidate("mipro i2d1", 7, 0.52, None),
            candidate("mipro i1d3", 14, 0.30, Some(25)),
        ],
        stopped_early: None,
        evaluations: 410,
        slices: vec![],
        notes: vec!["`route`: a proposal (tip: Be concise.) was dropped: unparseable reply | twice".into()],
        proposals: vec![ProposalRecord {
            predictor: "route".into(),
            origin: "data: label clues".into(),
            instruction: "Answer with exactly one queue.\ncards: often mentions `card`, arrive @team".into(),
            dev_score: Some(0.52),
        }],
        reflections: vec![
            ReflectionRecord {
                iteration: 3,
                predictor: "route".into(),
                parent: "production".into(),
                kind: "reflection by the proposer LM".into(),
                failures: vec!["log-0007: `queue`: expected \"cards\", got \"payments\"".into()],
                conclusion: Some("Card delivery questions are sent to payments.".into()),
                instruction: Some("Route the message. Card delivery goes to cards.".into()),
                minibatch: Some((0.25, 0.75)),
                accepted: true,
                dev_score: Some(0.52),
            },
            ReflectionRecord {
                iteration: 4,
                predictor: "route".into(),
                parent: "gepa-2 (LM reflection of production)".into(),
                kind: "failing examples as demos".into(),
                failures: vec!["log-0011: `queue`: expected \"top_ups\", got \"cards\"".into()],
                conclusion: None,
                instruction: None,
                minibatch: Some((0.5, 0.5)),
                accepted: false,
                dev_score: None,
            },
        ],
        usage: vec![
            role("task", 1200, 312, 1100, Budget::default()),
            role("proposer", 4, 0, 4, Budget { max_calls: Some(20), ..Default::default() }),
        ],
    }
}

#[test]
fn the_pr_body_for_a_small_run_is_pinned() {
    let diff = "--- production\n+++ candidate\n@@ -3,2 +3,4 @@\n   Route it.\n-demos: 0\n+demos: 1\n+  1. log-0001 (bootstrapped)\n+     message: my card | is <b>stuck</b>\n".to_string();
    let report =
        run(vec![flip(1, true, "My card is stuck in the ATM | help"), flip(2, false, "Where is my <refund>?")], diff);
    let body = markdown::pr_body(&report, MARKER, REPORT_PATH, GITHUB_BODY_LIMIT);
    assert_eq!(
        body,
        format!("{MARKER}\n{}", markdown::report(&report)),
        "a small body is the full report with the marker"
    );
    insta::assert_snapshot!("pr_body_small", body);
}

#[test]
fn a_huge_run_still_fits_githubs_limit_with_the_headline_whole() {
    let long = "I was charged twice for the same card payment and nobody answers. ".repeat(20);
    let flips: Vec<Flip> = (0..3000).map(|i| flip(i, i % 4 != 0, &long)).collect();
    let diff: String =
        (0..20_000).map(|i| format!("+  demo line {i} with some words to make it long enough\n")).collect();
    let report = run(flips, format!("--- production\n+++ candidate\n@@ -1 +1,20000 @@\n{diff}"));

    let full = markdown::report(&report);
    assert!(full.chars().count() > 10 * GITHUB_BODY_LIMIT, "the full report is not trimmed");
    let body = markdown::pr_body(&report, MARKER, REPORT_PATH, GITHUB_BODY_LIMIT);
    assert!(body.chars().count() <= GITHUB_BODY_LIMIT, "{} characters", body.chars().count());
    assert!(body.starts_with(MARKER));
    let headline = "## ✅ support-triage: promote — test +0.062 (95% CI +0.012 to +0.111, n = 162)";
    assert!(body.contains(headline), "{}", &body[..500]);
    assert!(body.contains("| **test** (held out) | 162 | 0.432 | 0.494 |"), "the score table was cut");
    assert!(body.contains(REPORT_PATH), "the body does not say where the rest is");
    // Markup stays balanced: every <details> is closed and code fences pair up.
    assert_eq!(body.matches("<details>").count(), body.matches("</details>").count());
    assert_eq!(body.matches("```").count() % 2, 0);
}

#[test]
fn a_hold_says_why_in_the_headline_and_the_gate_line() {
    let mut report = run(vec![], String::new());
    report.headline.decision = Decision::Hold;
    report.headline.low = -0.02;
    report.headline.reasons =
        vec!["the 95% interval [-0.020, +0.111] reaches zero: the difference may be noise".into()];
    let body = markdown::report(&report);
    assert!(body.contains("## ⏸️ support-triage: hold — test +0.062"), "{body}");
    assert!(body.contains("**Gate: hold** — the 95% interval [-0.020, +0.111] reaches zero"), "{body}");
    assert!(body.contains("Nothing: the candidate's instructions and demos are production's."), "{body}");
    assert!(body.contains("None: both programs score the same on every test example."), "{body}");
}

#[test]
fn a_hold_with_no_candidate_reports_production_alone() {
    // The optimizer found nothing better on dev: the run scored production only on test.
    let mut report = run(vec![], String::new());
    let h = &mut report.headline;
    h.decision = Decision::Hold;
    h.candidate = h.baseline;
    (h.delta, h.low, h.high) = (0.0, 0.0, 0.0);
    h.mcnemar_p = None;
    h.reasons = vec![
        "no better program found: of 7 candidates tried, the best on dev (`covering-2x1`, 0.383) does not beat production's 0.511".into(),
    ];
    h.no_candidate = true;
    if let Some(dev) = &mut report.dev {
        dev.candidate = dev.baseline;
    }
    let search = report.search.as_mut().unwrap();
    search.improved = false;
    search.chosen = "production".into();
    search.candidate_dev = search.production_dev;
    let last = report.history.last_mut().unwrap();
    last.decision = Decision::Hold;
    (last.candidate, last.delta, last.low, last.high) = (None, None, None, None);
    let body = markdown::report(&report);
    assert!(body.contains("**No better program found**"), "{body}");
    assert!(body.contains("| 0.432 | none | – | hold |"), "the history shows no candidate score:\n{body}");
    assert!(!body.contains("+0.000"), "no delta is shown for a candidate that was never scored:\n{body}");
    assert!(!body.contains("Examples that flipped"), "{body}");
    assert!(!body.contains("What changed in the prompts"), "{body}");
    insta::assert_snapshot!(body);
}

#[test]
fn replies_cut_by_max_tokens_are_counted_in_the_headline() {
    let mut report = run(vec![], String::new());
    let cut = |program: &str, failed, unparseable, cut| Failures {
        program: program.into(),
        n: 162,
        failed,
        unparseable,
        cut,
        max_tokens: 16,
    };
    report.failures = vec![cut("production", 12, 0, 12), cut("candidate", 15, 2, 12)];
    let body = markdown::report(&report);
    let headline_section = body.split("| split |").next().unwrap();
    assert!(
        headline_section.contains("production: 12 of 162 replies cut at max_tokens = 16; raise [lm] max_tokens"),
        "{headline_section}"
    );
    // The PR body keeps it however much else is cut.
    let flips: Vec<Flip> = (0..3000).map(|i| flip(i, true, &"long text ".repeat(100))).collect();
    report.flipped = flips;
    let body = markdown::pr_body(&report, MARKER, REPORT_PATH, 20_000);
    assert!(body.contains("candidate: 12 of 162 replies cut at max_tokens = 16"), "{}", &body[..2000]);
    insta::assert_snapshot!(headline_section);
}

/// What a hostile log line would do on GitHub: close an issue, ping a team,
/// show an image, link out, name a commit.
const HOSTILE: &str =
    "Closes #1 @org/team ![x](https://e.vil/p.png) [click](https://e.vil) https://e.vil <https://e.vil> 1a2b3c4d5e6f";

/// The body without its fenced code blocks, where nothing is active anyway.
fn outside_fences(body: &str) -> String {
    let mut out = String::new();
    let mut fence: Option<String> = None;
    for line in body.lines() {
        let ticks: String = line.chars().take_while(|&c| c == '`').collect();
        match &fence {
            None if ticks.len() >= 3 => fence = Some(ticks),
            None => {
                out.push_str(line);
                out.push('\n');
            }
            Some(open) if ticks.len() >= open.len() && line.trim_start_matches('`').trim().is_empty() => fence = None,
            Some(_) => {}
        }
    }
    out
}

#[test]
fn log_text_never_becomes_active_github_syntax() {
    let diff =
        format!("--- production\n+++ candidate\n@@ -3,1 +3,3 @@\n-demos: 0\n+demos: 1\n+     message: {HOSTILE}\n");
    let mut report = run(vec![flip(1, true, HOSTILE), flip(2, false, "fine")], diff);
    let search = report.search.as_mut().unwrap();
    search.reflections[0].failures = vec![format!("log-0001: expected \"cards\" for {HOSTILE}")];
    search.notes.push(format!("a proposal was dropped: {HOSTILE}"));
    search.candidates[2].name = "gepa @org/team #1".into();
    let body = markdown::pr_body(&report, MARKER, REPORT_PATH, GITHUB_BODY_LIMIT);

    let prose = outside_fences(&body);
    for active in ["@org", "#1 ", "https://", "<https", "1a2b3c4d5e6f", "![x]", "[click]"] {
        assert!(!prose.contains(active), "`{active}` is active in the body:\n{prose}");
    }
    assert!(!prose.replace("\\](", "").contains("]("), "an unescaped `](` in the body:\n{prose}");
    // Still readable: with the invisible joiners and the escapes taken away,
    // each of those texts reads as it was written.
    let read =
        prose.replace('\u{2060}', "").replace("\\[", "[").replace("\\]", "]").replace("&lt;", "<").replace("&gt;", ">");
    assert_eq!(read.matches(HOSTILE).count(), 3, "{read}");
    assert!(read.contains("| gepa @org/team #1 |"), "{read}");
    // Inside the diff's code block the demo stays as written: inert there.
    assert!(body.contains(&format!("+     message: {HOSTILE}\n```")), "{body}");
}

#[test]
fn a_router_program_reports_test_scores_per_branch_and_the_slice_each_handler_learned_from() {
    let mut report = run(vec![], String::new());
    report.branches = vec![
        Slice {
            signal: "handlers = routine".into(),
            scores: Scores { n: 90, baseline: 0.61, candidate: 0.66 },
            fixed: 9,
            broken: 4,
        },
        Slice {
            signal: "handlers = escalating".into(),
            scores: Scores { n: 12, baseline: 0.25, candidate: 0.5 },
            fixed: 4,
            broken: 1,
        },
    ];
    let mut search = search();
    let slice = |branch: &str, train, dev, optimized, from: &str| promptloop::optimize::slices::Slice {
        router: "handlers".into(),
        branch: branch.into(),
        predictors: vec![format!("handlers.{branch}")],
        train,
        dev,
        optimized,
        production_dev: Some(0.5),
        proposed_dev: Some(if optimized { 0.625 } else { 0.5 }),
        from: Some(from.into()),
    };
    search.slices = vec![
        slice("routine", 420, 90, true, "bootstrapped-2"),
        slice("urgent", 6, 2, false, "production"),
        slice("escalating", 48, 12, true, "covering-1x1"),
    ];
    report.search = Some(search);
    let body = markdown::report(&report);
    let branch_table = body.find("### By branch (test)").expect("a branch table");
    assert!(branch_table < body.find("### By signal (test)").unwrap());
    assert!(
        body.contains(
            "| handlers = urgent | `handlers.urgent` | 6 | 2 | 0.500 | 0.500 | kept: too few examples to optimize |"
        ),
        "{body}"
    );
    let start = branch_table;
    let end = body[start..].find("### Test score by run").map_or(body.len(), |e| start + e);
    let search_start = body.find("Each handler behind a router").unwrap();
    let search_end = body[search_start..].find("\n\n<details>").map_or(body.len(), |e| search_start + e);
    insta::assert_snapshot!(format!("{}\n{}", &body[start..end], &body[search_start..search_end]));
}
