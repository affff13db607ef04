//! Who owns a running recording (node, pid, boot, process start time), so a live recorder is
//! told from a dead one and a dead one's recording can be resolved as interrupted.

use serde::{Deserialize, Serialize};

/// The process that owns a running recording, to tell a live recorder from a dead one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Owner {
    pub node: String,
    pub pid: u32,
    /// Kernel boot id: a pid is only meaningful within one boot.
    pub boot_id: String,
    /// Process start time (clock ticks since boot), against pid reuse.
    pub start_ticks: u64,
}

impl Owner {
    /// This process.
    pub fn this_process() -> Self {
        let pid = std::process::id();
        Self {
            node: node_name(),
            pid,
            boot_id: boot_id(),
            start_ticks: process_start_ticks(pid).unwrap_or(0),
        }
    }

    /// False only when it is certain the owner is gone (same node, and the process is dead,
    /// or a different process now has its pid, or the node rebooted).
    pub fn may_be_alive(&self) -> bool {
        if self.node != node_name() {
            return true;
        }
        if self.boot_id != boot_id() {
            return false;
        }
        match process_start_ticks(self.pid) {
            Some(ticks) => ticks == self.start_ticks,
            None => false,
        }
    }
}

/// This node's name: `$CAPTURE_NODE`, else the hostname.
pub fn node_name() -> String {
    std::env::var("CAPTURE_NODE")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        })
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}
