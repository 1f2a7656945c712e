//! The score history as a Mermaid chart, which GitHub draws in the PR body
//! itself, with the numbers beside it for readers (and renderers) without
//! Mermaid.

use super::history::Entry;

/// Runs shown in the chart: a year of weekly runs.
const MAX_POINTS: usize = 52;

/// A Mermaid `xychart-beta` with production's and the candidate's test
/// scores per run (production is the first line, the candidate the second;
/// a run that found no candidate puts production's score on both).
pub fn mermaid(history: &[Entry], metric: &str) -> String {
    let shown = &history[history.len().saturating_sub(MAX_POINTS)..];
    let labels: Vec<String> = shown.iter().map(|e| format!("\"{}\"", e.date.format("%m-%d"))).collect();
    let series = |f: fn(&Entry) -> f64| shown.iter().map(|e| format!("{:.3}", f(e))).collect::<Vec<_>>().join(", ");
    let candidate = |e: &Entry| e.candidate.unwrap_or(e.baseline);
    let low = shown.iter().flat_map(|e| [e.baseline, candidate(e)]).fold(1.0_f64, f64::min);
    let high = shown.iter().flat_map(|e| [e.baseline, candidate(e)]).fold(0.0_f64, f64::max);
    // A tenth of a point of headroom either side, within 0..1.
    let floor = ((low - 0.05).max(0.0) * 10.0).floor() / 10.0;
    let ceiling = ((high + 0.05).min(1.0) * 10.0).ceil() / 10.0;
    format!(
        "```mermaid\nxychart-beta\n    title \"Test score by run ({})\"\n    x-axis [{}]\n    y-axis \"{}\" {floor:.1} --> {ceiling:.1}\n    line [{}]\n    line [{}]\n```\n",
        mermaid_text(metric),
        labels.join(", "),
        mermaid_text(metric),
        series(|e| e.baseline),
        series(|e| e.candidate.unwrap_or(e.baseline)),
    )
}

/// Mermaid titles are quoted strings: no quotes inside.
fn mermaid_text(text: &str) -> String {
    text.replace('"', "'")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::gate::Decision;

    fn entry(day: u32, baseline: f64, candidate: impl Into<Option<f64>>) -> Entry {
        let candidate = candidate.into();
        Entry {
            date: format!("2026-11-{day:02}T06:00:00Z").parse().unwrap(),
            examples: 1000,
            test_n: 139,
            baseline,
            candidate,
            delta: candidate.map(|c| c - baseline),
            low: candidate.map(|_| 0.0),
            high: candidate.map(|_| 0.0),
            decision: Decision::Promote,
            lm_calls: 0,
            tokens: 0,
            dollars: None,
        }
    }

    #[test]
    fn one_point_per_run_with_the_axis_around_the_scores() {
        let chart = mermaid(&[entry(6, 0.266, 0.46), entry(13, 0.46, 0.48)], "exact_match(queue)");
        assert!(chart.starts_with("```mermaid\nxychart-beta\n"), "{chart}");
        assert!(chart.contains("x-axis [\"11-06\", \"11-13\"]"), "{chart}");
        assert!(chart.contains("line [0.266, 0.460]"), "{chart}");
        assert!(chart.contains("line [0.460, 0.480]"), "{chart}");
        assert!(chart.contains("y-axis \"exact_match(queue)\" 0.2 --> 0.6"), "{chart}");
    }

    #[test]
    fn a_run_without_a_candidate_draws_production_on_both_lines() {
        let chart = mermaid(&[entry(6, 0.266, 0.46), entry(13, 0.46, None)], "m");
        assert!(chart.contains("line [0.266, 0.460]"), "{chart}");
        assert!(chart.contains("line [0.460, 0.460]"), "{chart}");
    }

    #[test]
    fn only_the_last_year_is_drawn() {
        let history: Vec<Entry> = (0..60).map(|i| entry(1 + (i % 28), 0.5, 0.5)).collect();
        let chart = mermaid(&history, "m");
        let axis = chart.lines().find(|l| l.contains("x-axis")).unwrap();
        assert_eq!(axis.matches('"').count(), 2 * MAX_POINTS);
    }
}
