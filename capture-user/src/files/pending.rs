//! Requests waiting for their response, remembered within a cap: pairing a response with its
//! request while a file streams by must not hold every request of the file. A request
//! answered is forgotten; beyond the cap the oldest waiting request is forgotten and
//! counted, and a response that comes for it later is simply not paired.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// A map of waiting entries, oldest evicted first once it holds `cap` of them.
#[derive(Debug)]
pub struct PendingMap<K, V> {
    entries: HashMap<K, (u64, V), foldhash::fast::RandomState>,
    /// Insertion sequence number to key, so the oldest entry is the first.
    order: BTreeMap<u64, K>,
    next_seq: u64,
    cap: usize,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V> PendingMap<K, V> {
    /// An empty map that holds at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            entries: HashMap::default(),
            order: BTreeMap::new(),
            next_seq: 0,
            cap: cap.max(1),
            evicted: 0,
        }
    }

    /// Remembers `value` under `key` as the newest entry (replacing an entry of that key, as
    /// a later request with a reused id replaces the earlier one), evicting the oldest
    /// entry when the map is full.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some((seq, _)) = self.entries.remove(&key) {
            self.order.remove(&seq);
        }
        if self.entries.len() >= self.cap
            && let Some((_, oldest)) = self.order.pop_first()
        {
            self.entries.remove(&oldest);
            self.evicted += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, key.clone());
        self.entries.insert(key, (seq, value));
    }

    /// The value under `key`, left in place (an interim response: the final one follows).
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(_, v)| v)
    }

    /// Takes the value under `key` out (its final response came).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (seq, value) = self.entries.remove(key)?;
        self.order.remove(&seq);
        Some(value)
    }

    /// Entries waiting now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries forgotten because the map was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// Whether a response with `status` is interim (1xx other than 101 Switching Protocols): its
/// request still waits for the final response, as the framer pairs both with it.
pub fn is_interim(status: u16) -> bool {
    (100..200).contains(&status) && status != 101
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_entries_go_and_the_oldest_waiting_is_evicted_at_the_cap() {
        let mut m = PendingMap::new(3);
        for k in 1..=3 {
            m.insert(k, k * 10);
        }
        assert_eq!(m.remove(&2), Some(20));
        m.insert(4, 40);
        assert_eq!((m.len(), m.evicted()), (3, 0));
        m.insert(5, 50);
        assert_eq!(m.evicted(), 1);
        assert_eq!(m.get(&1), None, "the oldest waiting entry went first");
        assert_eq!(m.get(&3), Some(&30));
        // A reused key is the newest entry again, not a second one.
        m.insert(3, 31);
        m.insert(6, 60);
        assert_eq!(m.get(&4), None);
        assert_eq!(m.get(&3), Some(&31));
        assert_eq!((m.len(), m.evicted()), (3, 2));
        for k in [3, 5, 6] {
            assert!(m.remove(&k).is_some());
        }
        assert!(m.is_empty());
    }

    #[test]
    fn only_final_responses_end_a_wait() {
        assert!(is_interim(100) && is_interim(103));
        assert!(!is_interim(101) && !is_interim(200) && !is_interim(0));
    }
}
