//! `cargo xtask bench`: figures for the closing notes, printed, never asserted.
//!
//! - ebpf: cost of the eBPF programs per packet from the kernel's own accounting
//!   (`kernel.bpf_stats_enabled`, run_time_ns / run_cnt), for matching ~1500-byte packets and
//!   for packets on a port not in the set, for TC and XDP.
//! - drain: packets/s and MB/s through the ring into userspace under wrk load against nginx
//!   in a network namespace, with drops and the capture process's CPU time per request.
//! - store: sustained store rate into the broker (tansu) next to a plain librdkafka
//!   producer's rate for the same messages (ratio), and the embedded store's write and
//!   window-read rates.
//! - replay: `capture replay --max` of a recording of wrk's keep-alive traffic next to wrk
//!   itself against the same nginx (ratio), and the schedule lag of `--speed 1` on a
//!   recording of 500 requests/s.

mod drain;
mod ebpf;
mod measure;
mod replay;
mod store;

use anyhow::{Result, bail};

/// The port nginx listens on in every benchmark.
const PORT: u16 = 8080;

fn main() -> Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    match which.as_str() {
        "all" => {
            ebpf::ebpf_cost()?;
            drain::drain_rate()?;
            store::store_rates()?;
            replay::replay_rates()
        }
        "ebpf" => ebpf::ebpf_cost(),
        "drain" => drain::drain_rate(),
        "store" => store::store_rates(),
        "replay" => replay::replay_rates(),
        other => bail!("unknown benchmark {other:?}; use all, ebpf, drain, store or replay"),
    }
}
