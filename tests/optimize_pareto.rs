//! GEPA's per-example Pareto front: fronts, dominance, parent sampling,
//! merge pairs and the component merge.

use promptloop::optimize::pareto::{ParetoError, ParetoFront, merge_components};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn pool(rows: &[&[f64]]) -> ParetoFront {
    let mut front = ParetoFront::new(rows[0].len());
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(front.add(row.to_vec()).unwrap(), i);
    }
    front
}

#[test]
fn fronts_keep_all_tied_candidates() {
    let front = pool(&[&[1.0, 0.0, 0.5], &[1.0, 1.0, 0.2], &[0.0, 1.0, 0.5]]);
    assert_eq!(front.fronts(), vec![vec![0, 1], vec![1, 2], vec![0, 2]]);
    // All candidates score 0 on an example: everyone is on its front.
    let front = pool(&[&[0.0, 1.0], &[0.0, 0.5]]);
    assert_eq!(front.fronts(), vec![vec![0, 1], vec![0]]);
}

#[test]
fn best_by_mean_need_not_lead_everywhere() {
    // Candidate 0 has the best mean but loses example 2 to candidate 1,
    // which therefore stays a possible parent.
    let front = pool(&[&[1.0, 1.0, 0.0, 1.0], &[0.0, 0.0, 1.0, 0.0], &[0.5, 0.5, 0.5, 0.5]]);
    assert_eq!(front.best(), Some(0));
    assert_eq!(front.mean(0), Some(0.75));
    assert_eq!(front.fronts(), vec![vec![0], vec![0], vec![1], vec![0]]);
    assert_eq!(front.non_dominated(), vec![(0, 3), (1, 1)]);
    // Equal means: the earliest wins.
    let tied = pool(&[&[0.0, 1.0], &[1.0, 0.0]]);
    assert_eq!(tied.best(), Some(0));
}

#[test]
fn dominated_candidates_are_removed() {
    // 1 leads on {0, 1}; 0 leads on {0} only (a strict subset), so 0 goes.
    // 2 and 3 both lead on exactly {2}: the earlier, 2, is kept.
    // 4 leads nowhere and is never a parent.
    let front = pool(&[&[1.0, 0.0, 0.0], &[1.0, 1.0, 0.0], &[0.0, 0.0, 1.0], &[0.0, 0.0, 1.0], &[0.5, 0.5, 0.5]]);
    assert_eq!(front.fronts(), vec![vec![0, 1], vec![1], vec![2, 3]]);
    assert_eq!(front.non_dominated(), vec![(1, 2), (2, 1)]);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for _ in 0..200 {
        let parent = front.sample_parent(&mut rng).unwrap();
        assert!(parent == 1 || parent == 2, "{parent}");
    }
}

#[test]
fn dominance_is_resolved_through_chains() {
    // Won sets {0} ⊂ {0,1} ⊂ {0,1,2}: only the largest survives.
    let front = pool(&[&[1.0, 0.0, 0.0], &[1.0, 1.0, 0.0], &[1.0, 1.0, 1.0]]);
    assert_eq!(front.non_dominated(), vec![(2, 3)]);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert!((0..50).all(|_| front.sample_parent(&mut rng) == Some(2)));
}

#[test]
fn sample_parent_is_proportional_to_lead_counts() {
    // Lead counts 5, 3 and 2 over ten examples.
    let leaders = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2];
    let rows: Vec<Vec<f64>> =
        (0..3).map(|id| leaders.iter().map(|&l| if l == id { 1.0 } else { 0.0 }).collect()).collect();
    let refs: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
    let front = pool(&refs);
    assert_eq!(front.non_dominated(), vec![(0, 5), (1, 3), (2, 2)]);

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let draws = 20_000;
    let mut counts = [0usize; 3];
    for _ in 0..draws {
        counts[front.sample_parent(&mut rng).unwrap()] += 1;
    }
    for (id, expected) in [(0, 0.5), (1, 0.3), (2, 0.2)] {
        let freq = counts[id] as f64 / draws as f64;
        assert!((freq - expected).abs() < 0.02, "candidate {id}: {freq:.3} vs {expected}");
    }

    // Deterministic for a seed.
    let seq = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..20).map(|_| front.sample_parent(&mut rng).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(seq(3), seq(3));
}

#[test]
fn empty_and_single_candidate_pools() {
    let mut front = ParetoFront::new(3);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    assert!(front.is_empty());
    assert_eq!(front.sample_parent(&mut rng), None);
    assert_eq!(front.best(), None);
    assert_eq!(front.fronts(), vec![Vec::<usize>::new(); 3]);
    assert!(front.non_dominated().is_empty());
    assert!(front.merge_pairs().is_empty());
    assert_eq!(front.scores(0), None);
    assert_eq!(front.mean(0), None);

    assert_eq!(front.add(vec![0.2, 0.2, 0.2]).unwrap(), 0);
    assert_eq!(front.len(), 1);
    assert_eq!(front.sample_parent(&mut rng), Some(0));
    assert_eq!(front.best(), Some(0));
    assert_eq!(front.non_dominated(), vec![(0, 3)]);
    assert!(front.merge_pairs().is_empty());
    assert_eq!(front.scores(0), Some(&[0.2, 0.2, 0.2][..]));

    // No dev examples: nobody leads anywhere; sampling falls back to the
    // best (earliest) candidate rather than failing.
    let mut none = ParetoFront::new(0);
    none.add(vec![]).unwrap();
    none.add(vec![]).unwrap();
    assert_eq!(none.mean(1), Some(0.0));
    assert_eq!(none.sample_parent(&mut rng), Some(0));
}

#[test]
fn invalid_scores_are_rejected() {
    let mut front = ParetoFront::new(2);
    assert_eq!(front.add(vec![1.0]), Err(ParetoError::WrongLength { expected: 2, got: 1 }));
    assert_eq!(front.add(vec![1.0, 0.0, 1.0]), Err(ParetoError::WrongLength { expected: 2, got: 3 }));
    assert!(matches!(front.add(vec![1.0, f64::NAN]), Err(ParetoError::NonFiniteScore { example: 1, .. })));
    assert!(matches!(front.add(vec![f64::NEG_INFINITY, 0.0]), Err(ParetoError::NonFiniteScore { example: 0, .. })));
    assert!(front.is_empty(), "rejected candidates are not admitted");
    assert_eq!(front.add(vec![0.5, 0.5]), Ok(0));
}

#[test]
fn round_trip_through_json() {
    let front = pool(&[&[1.0, 0.0, 0.25], &[0.0, 1.0, 0.25]]);
    let json = serde_json::to_string(&front).unwrap();
    let restored: ParetoFront = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, front);
    assert!(serde_json::from_str::<ParetoFront>(r#"{"n_examples":2,"scores":[[1.0]]}"#).is_err());
}

#[test]
fn merge_pairs_are_complementary_non_dominated_candidates() {
    // 0 leads {0, 1}, 1 leads {2}, 2 leads {3}; 3 leads {0} only (dominated by 0).
    let front = pool(&[&[1.0, 1.0, 0.0, 0.0], &[0.0, 0.0, 1.0, 0.0], &[0.0, 0.0, 0.0, 1.0], &[1.0, 0.0, 0.0, 0.0]]);
    assert_eq!(front.non_dominated(), vec![(0, 2), (1, 1), (2, 1)]);
    // Pairs covering more examples together come first, then by id.
    assert_eq!(front.merge_pairs(), vec![(0, 1), (0, 2), (1, 2)]);

    // One candidate leading everywhere leaves nothing to merge.
    let front = pool(&[&[1.0, 1.0], &[0.0, 1.0]]);
    assert!(front.merge_pairs().is_empty());
}

#[test]
fn merge_components_cases() {
    let ancestor = ["a0", "b0", "c0"];
    // Only A changed predictor 0, only B changed predictor 2.
    assert_eq!(
        merge_components(&ancestor, &["a1", "b0", "c0"], &["a0", "b0", "c2"], 0.5, 0.6),
        Some(vec!["a1", "b0", "c2"])
    );
    // Both changed predictor 1: the better parent's value wins, the other
    // changes are still combined.
    assert_eq!(
        merge_components(&ancestor, &["a1", "bA", "c0"], &["a0", "bB", "c2"], 0.5, 0.6),
        Some(vec!["a1", "bB", "c2"])
    );
    assert_eq!(
        merge_components(&ancestor, &["a1", "bA", "c0"], &["a0", "bB", "c2"], 0.7, 0.6),
        Some(vec!["a1", "bA", "c2"])
    );
    // Equal means: A's value.
    assert_eq!(
        merge_components(&ancestor, &["a1", "bA", "c0"], &["a0", "bB", "c2"], 0.6, 0.6),
        Some(vec!["a1", "bA", "c2"])
    );
    // Only A changed anything: the merge is A itself.
    assert_eq!(merge_components(&ancestor, &["a1", "b0", "c0"], &ancestor, 0.5, 0.4), None);
    // Only B changed anything: the merge is B itself.
    assert_eq!(merge_components(&ancestor, &ancestor, &["a0", "b0", "c2"], 0.5, 0.4), None);
    // Neither changed anything.
    assert_eq!(merge_components(&ancestor, &ancestor, &ancestor, 0.5, 0.5), None);
    // Both changed the same predictor only: the merge equals one parent.
    assert_eq!(merge_components(&ancestor, &["aA", "b0", "c0"], &["aB", "b0", "c0"], 0.5, 0.6), None);
    // Mismatched lengths are not mergeable.
    assert_eq!(merge_components(&ancestor, &["a1", "b0"], &ancestor, 0.5, 0.5), None);
    // Works with owned values too.
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    assert_eq!(
        merge_components(&owned(&ancestor), &owned(&["x", "b0", "c0"]), &owned(&["a0", "y", "c0"]), 0.1, 0.2),
        Some(owned(&["x", "y", "c0"]))
    );
}
