//! Sampling: which of a pull's records become examples, deterministically.
//!
//! Every record gets a rank, a hash of the sample's seed and its content key,
//! so the same traffic gives the same sample in any order and on any machine,
//! and exact repeats share a rank. A [`Reservoir`] per signal keeps only the
//! lowest-ranked records seen so far (memory bounded by the caps, whatever the
//! size of the logs); [`allocate`] then shares the pull's total between the
//! signals so that rare urgent and escalating traffic is represented rather
//! than drowned by routine messages.

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::logs::signals::Signal;

/// A record's place in the sample: lower is taken first.
pub fn rank(seed: u64, key: u128) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&key.to_le_bytes(), seed)
}

/// What happened to a record offered to a [`Reservoir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// It is among the lowest-ranked so far.
    Kept,
    /// Its content is already held: merged into that entry.
    Repeat,
    /// Ranked above everything held while full: not sampled.
    Passed,
}

/// The `capacity` lowest-ranked distinct records offered so far.
pub struct Reservoir<T> {
    capacity: usize,
    /// Max-heap of (rank, key): the top is the first to go.
    order: BinaryHeap<(u64, u128)>,
    items: HashMap<u128, T>,
    /// Records passed over or pushed out by lower ranks.
    left_out: u64,
}

impl<T> Reservoir<T> {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, order: BinaryHeap::new(), items: HashMap::new(), left_out: 0 }
    }

    /// Offers a record with content `key`; `make` builds the entry only when
    /// it is kept, `repeat` updates the held entry of the same content.
    pub fn offer(&mut self, rank: u64, key: u128, make: impl FnOnce() -> T, repeat: impl FnOnce(&mut T)) -> Offer {
        if let Some(held) = self.items.get_mut(&key) {
            repeat(held);
            return Offer::Repeat;
        }
        if self.capacity == 0 {
            self.left_out += 1;
            return Offer::Passed;
        }
        if self.order.len() >= self.capacity {
            self.left_out += 1;
            let &(top_rank, top_key) = self.order.peek().expect("a full reservoir holds something");
            if (rank, key) > (top_rank, top_key) {
                return Offer::Passed;
            }
            self.order.pop();
            self.items.remove(&top_key);
        }
        self.order.push((rank, key));
        self.items.insert(key, make());
        Offer::Kept
    }

    /// Distinct records offered but not held.
    pub fn left_out(&self) -> u64 {
        self.left_out
    }

    /// The held records, lowest rank first.
    pub fn into_sorted(mut self) -> Vec<(u64, T)> {
        // Keys are distinct: a repeat merges into its entry instead of being pushed.
        self.order
            .into_sorted_vec()
            .into_iter()
            .map(|(rank, key)| (rank, self.items.remove(&key).expect("every ranked key is held")))
            .collect()
    }
}

/// How many records to take per signal: each signal's demand is what it has,
/// up to its cap; when the demands exceed `total`, the total is shared by
/// water-filling — the smaller demands are met in full and the rest split
/// evenly — so a handful of escalating messages is never squeezed out by
/// thousands of routine ones.
pub fn allocate(
    available: &BTreeMap<Signal, usize>,
    caps: &BTreeMap<Signal, usize>,
    total: usize,
) -> BTreeMap<Signal, usize> {
    let mut demands: Vec<(Signal, usize)> = available
        .iter()
        .map(|(&signal, &n)| (signal, n.min(caps.get(&signal).copied().unwrap_or(usize::MAX))))
        .collect();
    // Smallest demand first; on ties the rarer signal (escalating, urgent) first.
    demands.sort_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
    let mut remaining = total;
    let mut out = BTreeMap::new();
    let count = demands.len();
    for (i, (signal, demand)) in demands.into_iter().enumerate() {
        // The last one's share is all that remains, so the floors lose nothing.
        let take = demand.min(remaining / (count - i));
        out.insert(signal, take);
        remaining -= take;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(Signal, usize)]) -> BTreeMap<Signal, usize> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn the_reservoir_keeps_the_lowest_ranks_whatever_the_order() {
        let offers: Vec<(u64, u128)> = (0..100u128).map(|k| (rank(7, k), k)).collect();
        let keep = |order: &[(u64, u128)]| {
            let mut reservoir = Reservoir::new(10);
            for &(r, k) in order {
                reservoir.offer(r, k, || k, |_| {});
            }
            reservoir.into_sorted()
        };
        let forward = keep(&offers);
        let mut reversed = offers.clone();
        reversed.reverse();
        assert_eq!(forward, keep(&reversed));
        let mut ranks: Vec<u64> = offers.iter().map(|o| o.0).collect();
        ranks.sort();
        assert_eq!(forward.iter().map(|f| f.0).collect::<Vec<_>>(), ranks[..10]);
    }

    #[test]
    fn repeats_merge_into_the_held_entry() {
        let mut reservoir: Reservoir<Vec<&str>> = Reservoir::new(2);
        assert_eq!(reservoir.offer(5, 1, || vec!["a"], |v| v.push("x")), Offer::Kept);
        assert_eq!(reservoir.offer(5, 1, || vec!["b"], |v| v.push("c")), Offer::Repeat);
        assert_eq!(reservoir.offer(9, 2, || vec!["d"], |_| {}), Offer::Kept);
        assert_eq!(reservoir.offer(12, 3, || vec!["e"], |_| {}), Offer::Passed);
        assert_eq!(reservoir.offer(1, 4, || vec!["f"], |_| {}), Offer::Kept);
        assert_eq!(reservoir.left_out(), 2, "e passed over, d pushed out");
        assert_eq!(reservoir.into_sorted(), vec![(1, vec!["f"]), (5, vec!["a", "c"])]);
    }

    #[test]
    fn the_seed_changes_the_sample() {
        let keys: Vec<u128> = (0..50).collect();
        let top = |seed| {
            let mut ranked: Vec<(u64, u128)> = keys.iter().map(|&k| (rank(seed, k), k)).collect();
            ranked.sort();
            ranked[..5].iter().map(|r| r.1).collect::<Vec<_>>()
        };
        assert_eq!(top(1), top(1));
        assert_ne!(top(1), top(2));
    }

    #[test]
    fn allocation_meets_small_demands_and_shares_the_rest() {
        let caps = map(&[(Signal::Routine, 200), (Signal::Urgent, 100), (Signal::Escalating, 100)]);
        // Everything fits.
        let a = allocate(&map(&[(Signal::Routine, 50), (Signal::Urgent, 10), (Signal::Escalating, 3)]), &caps, 300);
        assert_eq!(a, map(&[(Signal::Routine, 50), (Signal::Urgent, 10), (Signal::Escalating, 3)]));
        // Caps bind.
        let a = allocate(&map(&[(Signal::Routine, 5000), (Signal::Urgent, 400), (Signal::Escalating, 3)]), &caps, 1000);
        assert_eq!(a, map(&[(Signal::Routine, 200), (Signal::Urgent, 100), (Signal::Escalating, 3)]));
        // The total binds: the rare signal is kept whole, the rest shared.
        let a = allocate(&map(&[(Signal::Routine, 5000), (Signal::Urgent, 400), (Signal::Escalating, 3)]), &caps, 100);
        assert_eq!(a, map(&[(Signal::Routine, 49), (Signal::Urgent, 48), (Signal::Escalating, 3)]));
        assert_eq!(a.values().sum::<usize>(), 100);
        let a = allocate(&map(&[(Signal::Routine, 5000)]), &caps, 100);
        assert_eq!(a, map(&[(Signal::Routine, 100)]));
    }
}
