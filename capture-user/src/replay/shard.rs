//! `--shard I/N`: several replay processes (agents on several nodes) each send a stable,
//! disjoint part of one recording, and together all of it. Sans-IO: which part a request
//! belongs to is a fixed function of its recorded ids.
//!
//! The unit is the recorded connection, so each connection arrives whole from one side, in
//! order; sources that record no connections (GoReplay files) are split by request. Every
//! shard reads and plans the whole recording and sends its part, so the parts keep the
//! recorded timing between them (see `schedule::Planner`).

use std::str::FromStr;

use serde::Serialize;

use crate::replay::sample::stable_hash;

/// Most shards: far more agents than any platform drives one recording from.
pub const MAX_SHARDS: u32 = 10_000;

/// Mixed into ids before hashing, so a shard's part is independent of a `--sample` subset
/// (which hashes the same ids).
const SHARD_SALT: u64 = 0x5348_4152_445f_7631;

/// Why a `--shard` value cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("--shard expects I/N, e.g. 1/2 for the first of two parts (got {0:?})")]
    NotAShard(String),
    #[error("--shard {0}: I must be between 1 and N, and N between 1 and {MAX_SHARDS}")]
    OutOfRange(String),
}

/// Part `index` (1-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole recording.
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// Whether the unit (connection or request) with this recorded id is in this part.
    pub fn keeps(self, unit_id: u64) -> bool {
        self.count <= 1
            || stable_hash(unit_id ^ SHARD_SALT) % u64::from(self.count)
                == u64::from(self.index - 1)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    /// `1/2`, `3/3`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ShardError::NotAShard(text.to_string());
        let (i, n) = text.trim().split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if !(1..=MAX_SHARDS).contains(&count) || !(1..=count).contains(&index) {
            return Err(ShardError::OutOfRange(text.to_string()));
        }
        Ok(Self { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_as_written_and_bad_ones_name_the_flag() {
        assert_eq!("2/3".parse(), Ok(Shard { index: 2, count: 3 }));
        assert_eq!(" 1 / 1 ".parse(), Ok(Shard::WHOLE));
        for bad in ["", "2", "a/b", "1/", "-1/2"] {
            let err = bad.parse::<Shard>().unwrap_err();
            assert!(err.to_string().starts_with("--shard expects I/N"), "{bad}");
        }
        for out in ["0/2", "3/2", "1/0", "1/10001"] {
            assert_eq!(
                out.parse::<Shard>(),
                Err(ShardError::OutOfRange(out.to_string()))
            );
        }
        assert_eq!(Shard { index: 2, count: 5 }.to_string(), "2/5");
    }

    #[test]
    fn the_parts_cover_every_unit_once_and_evenly() {
        for count in [1u32, 2, 3, 7] {
            let shards: Vec<Shard> = (1..=count).map(|index| Shard { index, count }).collect();
            let mut per_shard = vec![0u32; count as usize];
            for id in 0..70_000u64 {
                let owners: Vec<usize> =
                    (0..shards.len()).filter(|&i| shards[i].keeps(id)).collect();
                assert_eq!(owners.len(), 1, "id {id} in {count} parts");
                per_shard[owners[0]] += 1;
            }
            let even = 70_000 / count;
            for n in per_shard {
                assert!(n.abs_diff(even) < even / 20 + 50, "{n} vs {even}");
            }
        }
    }

    #[test]
    fn a_part_is_independent_of_a_sample_of_the_same_ids() {
        // Half the ids in a 50 % sample, and of those, half in each of two parts.
        let half: crate::replay::sample::SamplePercent = "50%".parse().unwrap();
        let sampled: Vec<u64> = (0..20_000u64)
            .filter(|&id| crate::replay::sample::keeps(half, id))
            .collect();
        let first = sampled
            .iter()
            .filter(|&&id| Shard { index: 1, count: 2 }.keeps(id))
            .count();
        assert!(
            first.abs_diff(sampled.len() / 2) < sampled.len() / 20,
            "{first} of {}",
            sampled.len()
        );
    }
}
