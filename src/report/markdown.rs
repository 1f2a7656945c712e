//! The report in Markdown: `REPORT.md` in full, and the PR body, which is the
//! same text made to fit GitHub's limit. The headline and the score table
//! come first and are never cut; long parts sit in `<details>`, and when the
//! body is still too long the flipped examples and the diff shrink, then whole
//! sections go from the tail, each time saying where the rest is.

use serde_json::{Map, Value};

use super::untrusted::neutralize;
use super::{Flip, Outcome, RunReport, Scores, chart, thousands};
use crate::eval::gate::Decision;

/// GitHub refuses a pull request body longer than this many characters.
pub const GITHUB_BODY_LIMIT: usize = 65_536;

/// Table cells longer than this are cut (the full text is in the dataset).
const CELL_CHARS: usize = 160;

/// How much of the long sections to show.
#[derive(Debug, Clone, Copy)]
struct Detail {
    /// Flipped examples shown per direction.
    flips: usize,
    /// Lines of the program diff shown.
    diff_lines: usize,
    /// Sections after the headline and tables that are kept, in order.
    sections: usize,
}

const FULL: Detail = Detail { flips: usize::MAX, diff_lines: usize::MAX, sections: usize::MAX };

/// `artifacts/<name>/REPORT.md`: everything, nothing trimmed.
pub fn report(run: &RunReport) -> String {
    render(run, None, FULL, None)
}

/// The PR body: a hidden `marker` first (so the PR is found again), then the
/// report, fitted into `limit` characters. `report_path` is where the full
/// report lives, named wherever something was left out.
pub fn pr_body(run: &RunReport, marker: &str, report_path: &str, limit: usize) -> String {
    let body = render(run, Some(marker), FULL, Some(report_path));
    if body.chars().count() <= limit {
        return body;
    }
    // Shrink the long parts step by step, then drop sections from the tail.
    let mut detail = Detail { flips: 20, diff_lines: 400, sections: SECTIONS };
    loop {
        let body = render(run, Some(marker), detail, Some(report_path));
        if body.chars().count() <= limit {
            return body;
        }
        if detail.flips > 0 || detail.diff_lines > 0 {
            detail.flips /= 2;
            detail.diff_lines /= 2;
        } else if detail.sections > 0 {
            detail.sections -= 1;
        } else {
            // Only the headline and tables are left and they still do not fit
            // (absurd inputs): cut the tail, never the head.
            let keep = limit.saturating_sub(120);
            let cut: String = body.chars().take(keep).collect();
            return format!("{cut}\n\n… cut to fit GitHub's limit; the full report is in `{report_path}`.\n");
        }
    }
}

/// The sections after the headline and score table, in the order they appear
/// (and are dropped from the end).
const SECTIONS: usize = 7;

/// A section renderer: the run, how much to show, where the full report is, the text so far.
type Section = fn(&RunReport, Detail, Option<&str>, &mut String);

fn render(run: &RunReport, marker: Option<&str>, detail: Detail, report_path: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(marker) = marker {
        out.push_str(marker);
        out.push('\n');
    }
    headline(run, &mut out);
    score_table(run, &mut out);
    let sections: [Section; SECTIONS] = [slices, history, program_diff, search, flipped, dataset, cost];
    for section in sections.iter().take(detail.sections) {
        section(run, detail, report_path, &mut out);
    }
    if detail.sections < SECTIONS
        && let Some(path) = report_path
    {
        out.push_str(&format!(
            "\n_Some sections were left out to fit GitHub's size limit: the full report is in `{path}` on this branch._\n"
        ));
    }
    footer(run, &mut out);
    out
}

fn headline(run: &RunReport, out: &mut String) {
    let h = &run.headline;
    let (mark, verdict) = match h.decision {
        Decision::Promote => ("✅", "promote"),
        Decision::Hold => ("⏸️", "hold"),
    };
    // With no candidate scored on test, only production's score is a fact.
    let (title, facts) = if h.no_candidate {
        (
            h.delta_text(),
            format!(
                "No candidate beat production on dev, so none was scored on the held-out test split, where production scores **{:.3}** ({}, n = {}).",
                h.baseline, h.metric, h.n
            ),
        )
    } else {
        let mut facts = format!(
            "On the held-out test split, which the optimizer never saw, the candidate scores **{:.3}** against production's **{:.3}** ({}).",
            h.candidate, h.baseline, h.metric
        );
        if let Some(p) = h.mcnemar_p {
            facts.push_str(&format!(" McNemar p = {}.", p_value(p)));
        }
        let fixed = run.flipped.iter().filter(|f| f.fixed).count();
        let broken = run.flipped.len() - fixed;
        facts.push_str(&format!(" {} fixed, {broken} broken.", super::count(fixed, "example")));
        (format!("test {}", h.delta_text()), facts)
    };
    out.push_str(&format!("## {mark} {}: {verdict} — {title}\n\n{facts}\n\n", h.pipeline));
    let reasons = h.reasons.join("; ");
    out.push_str(&format!("**Gate: {verdict}** — {reasons}.\n\n"));
    out.push_str(&format!("Production: {}. Optimizer: {}.\n\n", run.production, run.optimizer));
    failures(run, out);
}

/// Failed test predictions, next to the scores they count in (as 0).
fn failures(run: &RunReport, out: &mut String) {
    if run.failures.is_empty() {
        return;
    }
    out.push_str("**Failed predictions on test** (each scores 0):\n\n");
    for f in &run.failures {
        out.push_str(&format!("- ⚠️ {}\n", f.text()));
    }
    out.push('\n');
}

fn score_table(run: &RunReport, out: &mut String) {
    let h = &run.headline;
    out.push_str("| split | n | production | candidate | delta |\n|---|---:|---:|---:|---:|\n");
    if h.no_candidate {
        out.push_str(&format!("| **test** (held out) | {} | {:.3} | – | – |\n", h.n, h.baseline));
        if let Some(dev) = &run.dev {
            out.push_str(&format!("| dev (used to select) | {} | {:.3} | – | – |\n", dev.n, dev.baseline));
        }
        out.push_str("\n<sub>Dev scores guided the optimizer and are not evidence.</sub>\n");
        return;
    }
    out.push_str(&format!(
        "| **test** (held out) | {} | {:.3} | {:.3} | **{:+.3}** [{:+.3}, {:+.3}] |\n",
        h.n, h.baseline, h.candidate, h.delta, h.low, h.high
    ));
    if let Some(dev) = &run.dev {
        out.push_str(&format!(
            "| dev (used to select) | {} | {:.3} | {:.3} | {:+.3} |\n",
            dev.n,
            dev.baseline,
            dev.candidate,
            dev.candidate - dev.baseline
        ));
    }
    out.push_str(&format!(
        "\n<sub>[low, high]: {:.0}% paired-bootstrap interval over the test examples. Dev scores guided the optimizer and are not evidence.</sub>\n",
        h.confidence * 100.0
    ));
}

fn slices(run: &RunReport, _: Detail, _: Option<&str>, out: &mut String) {
    if !run.branches.is_empty() {
        slice_table(run, &run.branches, "branch", out);
    }
    if run.slices.len() >= 2 {
        slice_table(run, &run.slices, "signal", out);
    }
}

/// The test comparison per slice: per router branch or per signal.
fn slice_table(run: &RunReport, slices: &[super::Slice], by: &str, out: &mut String) {
    if run.headline.no_candidate {
        out.push_str(&format!("\n### By {by} (test)\n\n| {by} | n | production |\n|---|---:|---:|\n"));
        for slice in slices {
            out.push_str(&format!("| {} | {} | {:.3} |\n", cell(&slice.signal), slice.scores.n, slice.scores.baseline));
        }
        return;
    }
    out.push_str(&format!(
        "\n### By {by} (test)\n\n| {by} | n | production | candidate | delta | fixed | broken |\n|---|---:|---:|---:|---:|---:|---:|\n"
    ));
    for slice in slices {
        let Scores { n, baseline, candidate } = slice.scores;
        out.push_str(&format!(
            "| {} | {n} | {baseline:.3} | {candidate:.3} | {:+.3} | {} | {} |\n",
            cell(&slice.signal),
            candidate - baseline,
            slice.fixed,
            slice.broken
        ));
    }
}

fn history(run: &RunReport, _: Detail, _: Option<&str>, out: &mut String) {
    if run.history.is_empty() {
        return;
    }
    out.push_str("\n### Test score by run\n\n");
    if run.history.len() > 1 {
        out.push_str("Production is the first line, the candidate the second");
        if run.history.iter().any(|entry| entry.candidate.is_none()) {
            out.push_str(" (on production's where no better program was found)");
        }
        out.push_str(".\n\n");
        out.push_str(&chart::mermaid(&run.history, &run.headline.metric));
        out.push('\n');
    }
    out.push_str("<details><summary>The numbers</summary>\n\n| run | examples | test n | production | candidate | delta | decision |\n|---|---:|---:|---:|---:|---:|---|\n");
    for entry in run.history.iter().rev() {
        let (candidate, delta) = match (entry.candidate, entry.delta, entry.low, entry.high) {
            (Some(candidate), Some(delta), Some(low), Some(high)) => {
                (format!("{candidate:.3}"), format!("{delta:+.3} [{low:+.3}, {high:+.3}]"))
            }
            _ => ("none".to_string(), "–".to_string()),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.3} | {candidate} | {delta} | {} |\n",
            entry.date.format("%Y-%m-%d %H:%M"),
            thousands(entry.examples as u64),
            entry.test_n,
            entry.baseline,
            entry.decision.as_str()
        ));
    }
    out.push_str("\n</details>\n");
}

fn program_diff(run: &RunReport, detail: Detail, report_path: Option<&str>, out: &mut String) {
    if run.headline.no_candidate {
        return;
    }
    out.push_str("\n### What changed in the prompts\n\n");
    if run.program_diff.is_empty() {
        out.push_str("Nothing: the candidate's instructions and demos are production's.\n");
        return;
    }
    let lines: Vec<&str> = run.program_diff.lines().collect();
    let added = lines.iter().filter(|l| l.starts_with('+') && !l.starts_with("+++")).count();
    let removed = lines.iter().filter(|l| l.starts_with('-') && !l.starts_with("---")).count();
    out.push_str(&format!(
        "<details><summary>Instructions and demos, production → candidate: {added} lines added, {removed} removed</summary>\n\n"
    ));
    if detail.diff_lines == 0 {
        out.push_str(&left_out("The diff", report_path));
    } else {
        out.push_str("```diff\n");
        for line in lines.iter().take(detail.diff_lines) {
            // A fence inside the diff would end the code block early.
            out.push_str(&line.replace("```", "`\u{200b}``"));
            out.push('\n');
        }
        out.push_str("```\n");
        if lines.len() > detail.diff_lines {
            out.push_str(&left_out(&format!("{} more lines", lines.len() - detail.diff_lines), report_path));
        }
    }
    out.push_str("\n</details>\n");
}

fn flipped(run: &RunReport, detail: Detail, report_path: Option<&str>, out: &mut String) {
    if run.headline.no_candidate {
        return;
    }
    if run.flipped.is_empty() {
        out.push_str("\n### Examples that flipped\n\nNone: both programs score the same on every test example.\n");
        return;
    }
    out.push_str("\n### Examples that flipped\n");
    for (fixed, label) in [(true, "fixed by the candidate"), (false, "broken by the candidate")] {
        let flips: Vec<&Flip> = run.flipped.iter().filter(|f| f.fixed == fixed).collect();
        if flips.is_empty() {
            continue;
        }
        out.push_str(&format!("\n<details><summary>{} {label}</summary>\n\n", flips.len()));
        if detail.flips == 0 {
            out.push_str(&left_out("The examples", report_path));
        } else {
            out.push_str(
                "| example | signal | input | reference | production | candidate |\n|---|---|---|---|---|---|\n",
            );
            for flip in flips.iter().take(detail.flips) {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    code_cell(&flip.id),
                    cell(&flip.signal),
                    cell(&fields_text(&flip.inputs)),
                    cell(&fields_text(&flip.reference)),
                    cell(&outcome_text(&flip.production)),
                    cell(&outcome_text(&flip.candidate)),
                ));
            }
            if flips.len() > detail.flips {
                out.push_str(&left_out(&format!("{} more", flips.len() - detail.flips), report_path));
            }
        }
        out.push_str("\n</details>\n");
    }
}

fn dataset(run: &RunReport, _: Detail, _: Option<&str>, out: &mut String) {
    let size = &run.examples;
    out.push_str("\n### Dataset\n\n");
    out.push_str(&format!(
        "{} examples: {} train, {} dev, {} test.\n",
        thousands(size.examples as u64),
        thousands(size.train as u64),
        thousands(size.dev as u64),
        thousands(size.test as u64)
    ));
    let Some(pull) = &run.dataset else {
        out.push_str("\nNo logs were pulled in this run.\n");
        return;
    };
    let window = match pull.since {
        Some(since) => format!("{} to {}", since.format("%Y-%m-%d %H:%M"), pull.until.format("%Y-%m-%d %H:%M UTC")),
        None => format!("everything up to {}", pull.until.format("%Y-%m-%d %H:%M UTC")),
    };
    let malformed: u64 = pull.malformed.values().sum();
    let d = &pull.duplicates;
    let sampled: Vec<String> = pull.sampled.iter().map(|(signal, n)| format!("{} {n}", signal.name())).collect();
    let added: Vec<String> = pull.added.iter().map(|(split, n)| format!("{} {n}", split.name())).collect();
    let anonymized: Vec<String> =
        pull.anonymized.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k} {n}")).collect();
    out.push_str(&format!(
        "\nThis run's pull ({window}):\n\n\
         - read {} lines from {} source files or pages; {} malformed, skipped{}\n\
         - {} records in the window; {} anonymized{}\n\
         - duplicates: {} exact and {} near within the pull, {} exact and {} near already in the dataset; {} kept out for resembling an example across the test boundary\n\
         - sampled: {} ({} more left out by the caps)\n\
         - added: {}; {} to the inbox to be labelled, {} labelled inbox lines promoted\n",
        thousands(pull.lines),
        pull.units,
        thousands(malformed),
        if malformed > 0 {
            format!(" ({})", pull.malformed.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
        } else {
            String::new()
        },
        thousands(pull.records),
        thousands(pull.anonymized.total()),
        if anonymized.is_empty() { String::new() } else { format!(" ({})", anonymized.join(", ")) },
        d.exact_in_pull,
        d.near_in_pull,
        d.exact_existing,
        d.near_existing,
        d.leak_guarded,
        if sampled.is_empty() { "none".to_string() } else { sampled.join(", ") },
        thousands(pull.not_sampled),
        if added.is_empty() { "none".to_string() } else { added.join(", ") },
        pull.inbox_added,
        pull.promoted,
    ));
}

/// How the optimizer searched: the verdict on dev, the candidates, the
/// instruction proposals, notes, and LM use against budget per role.
fn search(run: &RunReport, _: Detail, _: Option<&str>, out: &mut String) {
    let Some(search) = &run.search else {
        return;
    };
    out.push_str("\n### How the optimizer searched\n\n");
    let tried = search.candidates.len().saturating_sub(1);
    if search.improved {
        out.push_str(&format!(
            "Chosen on dev: {}, {:.3} against production's {:.3}, of {} tried.",
            code(&search.chosen),
            search.candidate_dev,
            search.production_dev,
            super::count(tried, "candidate")
        ));
    } else if tried == 0 {
        out.push_str(&format!(
            "No candidate tried (the optimizer is `none`): production stays, scored {:.3} on dev.",
            search.production_dev
        ));
    } else {
        let none = if tried == 1 {
            "the one candidate tried does not".to_string()
        } else {
            format!("none of the {tried} candidates tried")
        };
        out.push_str(&format!(
            "**No better program found**: {none} beat production's {:.3} on dev, so production stays.",
            search.production_dev
        ));
    }
    out.push_str(&format!(" {} example evaluations on dev.", thousands(search.evaluations)));
    if let Some(stop) = &search.stopped_early {
        out.push_str(&format!(
            " The search stopped early: {}; this is the best program scored before then.",
            cell(stop)
        ));
    }
    out.push('\n');
    if !search.slices.is_empty() {
        out.push_str(
            "\nEach handler behind a router was optimized on the examples routed to it:\n\n| branch | predictors | train | dev | production (dev) | proposed (dev) | taken from |\n|---|---|---:|---:|---:|---:|---|\n",
        );
        let score = |s: Option<f64>| s.map_or("—".to_string(), |s| format!("{s:.3}"));
        for s in &search.slices {
            let from = if s.optimized {
                s.from.as_deref().map(code).unwrap_or_default()
            } else {
                "kept: too few examples to optimize".to_string()
            };
            out.push_str(&format!(
                "| {} = {} | {} | {} | {} | {} | {} | {} |\n",
                cell(&s.router),
                cell(&s.branch),
                s.predictors.iter().map(|p| code(p)).collect::<Vec<_>>().join(", "),
                s.train,
                s.dev,
                score(s.production_dev),
                score(s.proposed_dev),
                from
            ));
        }
    }
    if !search.candidates.is_empty() {
        out.push_str("\n<details><summary>Candidates scored on dev</summary>\n\n| candidate | demos | dev | scored on |\n|---|---:|---:|---:|\n");
        for c in &search.candidates {
            let on = c.scored_on.map_or_else(|| "all".to_string(), |n| n.to_string());
            out.push_str(&format!("| {} | {} | {:.3} | {on} |\n", cell(&c.name), c.demos, c.dev_score));
        }
        out.push_str("\n</details>\n");
    }
    if !search.proposals.is_empty() {
        out.push_str("\n<details><summary>Instruction candidates</summary>\n\n");
        for p in &search.proposals {
            let score =
                p.dev_score.map_or_else(|| "not scored on all of dev".to_string(), |s| format!("best dev {s:.3}"));
            out.push_str(&format!("**{}** · {} · {score}\n\n", code(&p.predictor), cell(&p.origin)));
            out.push_str(&fenced(&p.instruction));
        }
        out.push_str("</details>\n");
    }
    if !search.reflections.is_empty() {
        let kept = search.reflections.iter().filter(|r| r.accepted).count();
        out.push_str(&format!(
            "\n<details><summary>Reflections: {} tried, {kept} kept</summary>\n\n",
            search.reflections.len()
        ));
        for r in &search.reflections {
            let outcome = match (r.minibatch, r.dev_score) {
                (Some((before, after)), Some(dev)) => format!("minibatch {before:.2} → {after:.2}, kept, dev {dev:.3}"),
                (Some((before, after)), None) => format!("minibatch {before:.2} → {after:.2}, not kept"),
                (None, Some(dev)) => format!("dev {dev:.3}"),
                (None, None) => String::new(),
            };
            out.push_str(&format!(
                "**{}. {}** · {} of {} · {outcome}\n\n",
                r.iteration,
                code(&r.predictor),
                cell(&r.kind),
                cell(&r.parent)
            ));
            if !r.failures.is_empty() {
                out.push_str("Failed:\n\n");
                for f in &r.failures {
                    out.push_str(&format!("- {}\n", cell(f)));
                }
                out.push('\n');
            }
            if let Some(conclusion) = &r.conclusion {
                out.push_str("Concluded:\n\n");
                out.push_str(&fenced(conclusion));
            }
            if let Some(instruction) = &r.instruction {
                out.push_str("Wrote:\n\n");
                out.push_str(&fenced(instruction));
            }
        }
        out.push_str("</details>\n");
    }
    if !search.notes.is_empty() {
        out.push_str("\n<details><summary>Notes</summary>\n\n");
        for note in &search.notes {
            out.push_str(&format!("- {}\n", cell(note)));
        }
        out.push_str("\n</details>\n");
    }
    if !search.usage.is_empty() {
        out.push_str("\n| LM role | calls (cached) | tokens | projected calls | optimizer's budget |\n|---|---:|---:|---:|---|\n");
        for u in &search.usage {
            out.push_str(&format!(
                "| {} | {} ({}) | {} | {} | {} |\n",
                u.role,
                thousands(u.used.calls),
                thousands(u.used.cache_hits),
                thousands(u.used.tokens()),
                thousands(u.projected_calls),
                super::budget_text(&u.budget)
            ));
        }
    }
}

/// `text` in a fenced block whose fence no run of backticks inside can close.
fn fenced(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}text\n{}\n{fence}\n\n", text.trim_end())
}

fn cost(run: &RunReport, _: Detail, _: Option<&str>, out: &mut String) {
    out.push_str(&format!("\n### Cost\n\n{}.\n", run.cost.text()));
}

fn footer(run: &RunReport, out: &mut String) {
    out.push_str(&format!(
        "\n---\n<sub>promptloop {} · run {} · the artifact, this report and the history are in `artifacts/{}/`</sub>\n",
        env!("CARGO_PKG_VERSION"),
        run.date.format("%Y-%m-%d %H:%M UTC"),
        run.headline.pipeline
    ));
}

fn left_out(what: &str, report_path: Option<&str>) -> String {
    match report_path {
        Some(path) => format!("\n_{what} left out here to fit GitHub's size limit: see `{path}`._\n"),
        None => format!("\n_{what} left out._\n"),
    }
}

/// `0.0005`, or `< 0.0001`.
fn p_value(p: f64) -> String {
    if p < 0.0001 { "< 0.0001".to_string() } else { format!("{p:.4}") }
}

fn fields_text(fields: &Map<String, Value>) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if fields.len() == 1 {
        return fields.values().next().map(text).unwrap_or_default();
    }
    fields.iter().map(|(k, v)| format!("{k}: {}", text(v))).collect::<Vec<_>>().join("; ")
}

fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Outputs(fields) => fields_text(fields),
        Outcome::Failed(reason) => format!("(no answer: {reason})"),
    }
}

/// Log-derived text made safe for one Markdown table cell or list item: one
/// line, cut at a character boundary, inert on GitHub ([`neutralize`]: no
/// HTML, mention, reference, link or image) and with pipes escaped.
fn cell(text: &str) -> String {
    neutralize(&one_line(text)).replace('|', "\\|")
}

/// Text as an inline code span (ids, candidate and predictor names): one line
/// and cut like a cell, delimited by more backticks than any run inside so it
/// cannot end early. Inside a code span nothing is active and nothing needs an
/// escape, except a pipe in a table cell: [`code_cell`].
fn code(text: &str) -> String {
    let text = one_line(text);
    if text.is_empty() {
        return String::new();
    }
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let ticks = "`".repeat(longest + 1);
    // A space keeps a backtick at either end from joining the delimiter; GitHub strips it.
    let pad = if text.starts_with('`') || text.ends_with('`') { " " } else { "" };
    format!("{ticks}{pad}{text}{pad}{ticks}")
}

/// [`code`] for a table cell: a pipe would end the cell, even in a code span.
fn code_cell(text: &str) -> String {
    code(text).replace('|', "\\|")
}

/// `text` on one line, cut after [`CELL_CHARS`] characters with an ellipsis.
fn one_line(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut cut: String = one_line.chars().take(CELL_CHARS).collect();
    if one_line.chars().count() > CELL_CHARS {
        cut.push('…');
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_one_line_without_pipes_or_html() {
        assert_eq!(cell("a | b\nc <script>"), "a \\| b c &lt;script&gt;");
        let long = "é".repeat(500);
        assert_eq!(cell(&long).chars().count(), CELL_CHARS + 1);
        assert_eq!(cell("Closes #1 [x](y)"), "Closes #\u{2060}1 \\[x\\](y)");
    }

    #[test]
    fn code_spans_cannot_end_early() {
        assert_eq!(code("log-0001"), "`log-0001`");
        assert_eq!(code("a`b | c"), "``a`b | c``");
        assert_eq!(code_cell("a | c"), "`a \\| c`");
        assert_eq!(code("`x"), "`` `x ``");
        assert_eq!(code(""), "");
    }

    #[test]
    fn a_fence_is_longer_than_any_backtick_run_inside() {
        assert_eq!(fenced("plain"), "```text\nplain\n```\n\n");
        assert_eq!(fenced("a ``` b"), "````text\na ``` b\n````\n\n");
    }

    #[test]
    fn p_values_are_readable() {
        assert_eq!(p_value(0.00046), "0.0005");
        assert_eq!(p_value(0.00001), "< 0.0001");
    }
}
