//! The eBPF programs' per-CPU counters (seen, matched, captured, drops...), read and summed
//! over CPUs; readable after the programs are detached, so final counts are whole.

use aya::maps::{MapData, PerCpuArray};
use capture_common::Counter;

use capture_common::COUNTERS_MAP;

use super::loader::LoaderError;

/// Reader for the kernel's per-CPU counters.
pub struct KernelCounters {
    pub(super) array: PerCpuArray<MapData, u64>,
}

/// Kernel counters summed over CPUs, indexed like [`Counter::ALL`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot(pub [u64; Counter::ALL.len()]);

impl CounterSnapshot {
    /// Value of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// `name=value` pairs in slot order, the same names as the metrics.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|c| (c.name(), self.get(*c)))
    }

    /// The counters that count lost packets, under the names recordings report drops by
    /// (zero values included).
    pub fn losses(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL
            .iter()
            .filter_map(|c| Some((c.loss_name()?, self.get(*c))))
    }
}

impl KernelCounters {
    /// Sums every counter over all CPUs.
    pub fn snapshot(&self) -> Result<CounterSnapshot, LoaderError> {
        let mut snap = CounterSnapshot::default();
        for counter in Counter::ALL {
            let values =
                self.array
                    .get(&(counter as u32), 0)
                    .map_err(|source| LoaderError::Map {
                        name: COUNTERS_MAP,
                        source,
                    })?;
            snap.0[counter as usize] = values.iter().sum();
        }
        Ok(snap)
    }
}
