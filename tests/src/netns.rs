//! Two network namespaces joined by a veth pair: a client host and a server host, created
//! per test with unique names and removed on drop (removing a namespace removes its veth).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;

use crate::run_ok;

/// A client namespace and a server namespace joined by a veth pair.
pub struct Topology {
    /// Namespace of the client end.
    pub client_ns: String,
    /// Namespace of the server end.
    pub server_ns: String,
    /// veth end inside the client namespace.
    pub client_if: String,
    /// veth end inside the server namespace.
    pub server_if: String,
    /// IPv4 address of the client end.
    pub client_ip: String,
    /// IPv4 address of the server end.
    pub server_ip: String,
    /// IPv6 address of the client end.
    pub client_ip6: String,
    /// IPv6 address of the server end.
    pub server_ip6: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Creates the namespaces and the link. `tag` (a few letters) makes names readable in
    /// `ip netns list` if a test is interrupted; uniqueness comes from the pid and a counter.
    pub fn new(tag: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("{}{}", pid % 10000, n);
        let tag: String = tag.chars().take(4).collect();
        // A distinct /24 per topology within this process (several tests run at once).
        let third = (pid as u32 % 200 + n * 7) % 250 + 1;
        let topo = Topology {
            client_ns: format!("capt-{tag}-{id}-c"),
            server_ns: format!("capt-{tag}-{id}-s"),
            client_if: format!("vc{id}"),
            server_if: format!("vs{id}"),
            client_ip: format!("10.{}.{third}.1", 100 + n % 100),
            server_ip: format!("10.{}.{third}.2", 100 + n % 100),
            client_ip6: format!("fd00:{:x}:{third:x}::1", 100 + n % 100),
            server_ip6: format!("fd00:{:x}:{third:x}::2", 100 + n % 100),
        };
        // Build everything; on failure, drop cleans up what exists.
        run_ok(Command::new("ip").args(["netns", "add", &topo.client_ns]))?;
        run_ok(Command::new("ip").args(["netns", "add", &topo.server_ns]))?;
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &topo.client_if,
            "netns",
            &topo.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            &topo.server_if,
            "netns",
            &topo.server_ns,
        ]))?;
        for (ns, ifname, ip, ip6) in [
            (
                &topo.client_ns,
                &topo.client_if,
                &topo.client_ip,
                &topo.client_ip6,
            ),
            (
                &topo.server_ns,
                &topo.server_if,
                &topo.server_ip,
                &topo.server_ip6,
            ),
        ] {
            let cidr = format!("{ip}/24");
            let cidr6 = format!("{ip6}/64");
            run_ok(Command::new("ip").args(["-n", ns, "addr", "add", &cidr, "dev", ifname]))?;
            run_ok(
                Command::new("ip").args(["-n", ns, "addr", "add", &cidr6, "dev", ifname, "nodad"]),
            )?;
            run_ok(Command::new("ip").args(["-n", ns, "link", "set", ifname, "up"]))?;
            run_ok(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        Ok(topo)
    }

    /// A command run inside namespace `ns`.
    pub fn exec(ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        cmd
    }

    /// A command run in the client namespace.
    pub fn client(&self, program: &str) -> Command {
        Self::exec(&self.client_ns, program)
    }

    /// A command run in the server namespace.
    pub fn server(&self, program: &str) -> Command {
        Self::exec(&self.server_ns, program)
    }

    /// Turns off segmentation offloads on both ends, so packets on the wire are MSS-sized
    /// (about 1500 bytes) instead of 64 KiB GSO/GRO aggregates.
    pub fn disable_offloads(&self) -> Result<()> {
        for (ns, ifname) in [
            (&self.client_ns, &self.client_if),
            (&self.server_ns, &self.server_if),
        ] {
            run_ok(
                Self::exec(ns, "ethtool")
                    .args(["-K", ifname, "tso", "off", "gso", "off", "gro", "off"]),
            )?;
        }
        Ok(())
    }

    /// What is attached to an interface, as the kernel reports it: tc filters on both
    /// hooks, qdiscs, the link's XDP state, and bpftool's view (TCX, XDP, tc).
    pub fn attachments(ns: &str, ifname: &str) -> Result<Attachments> {
        let text = |cmd: &mut Command| -> Result<String> {
            Ok(String::from_utf8_lossy(&run_ok(cmd)?.stdout).into_owned())
        };
        Ok(Attachments {
            tc_ingress: text(
                Self::exec(ns, "tc").args(["filter", "show", "dev", ifname, "ingress"]),
            )?,
            tc_egress: text(
                Self::exec(ns, "tc").args(["filter", "show", "dev", ifname, "egress"]),
            )?,
            qdiscs: text(Self::exec(ns, "tc").args(["qdisc", "show", "dev", ifname]))?,
            link: text(Self::exec(ns, "ip").args(["link", "show", "dev", ifname]))?,
            bpftool_net: text(Self::exec(ns, "bpftool").args(["net", "show", "dev", ifname]))?,
        })
    }
}

/// Kernel views of what is attached to one interface.
#[derive(Debug)]
pub struct Attachments {
    pub tc_ingress: String,
    pub tc_egress: String,
    pub qdiscs: String,
    pub link: String,
    pub bpftool_net: String,
}

impl Attachments {
    /// Everything of ours found, empty when the interface is clean.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        if !self.tc_ingress.trim().is_empty() {
            found.push(format!("tc ingress filter: {}", self.tc_ingress.trim()));
        }
        if !self.tc_egress.trim().is_empty() {
            found.push(format!("tc egress filter: {}", self.tc_egress.trim()));
        }
        if self.qdiscs.contains("clsact") {
            found.push(format!("clsact qdisc: {}", self.qdiscs.trim()));
        }
        let first_line = self.link.lines().next().unwrap_or_default();
        let xdp_mode = |t: &str| matches!(t, "xdp" | "xdpgeneric" | "xdpdrv" | "xdpoffload");
        if first_line.split_whitespace().any(xdp_mode) || self.link.contains("prog/xdp") {
            found.push(format!("xdp on link: {}", self.link.trim()));
        }
        if self.bpftool_net.contains("capture_") {
            found.push(format!("bpftool net: {}", self.bpftool_net.trim()));
        }
        found
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.server_ns] {
            // Kill anything left running inside, then remove the namespace (and its veth).
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            // SAFETY: plain kill(2) on a pid the kernel reported for this netns.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
