//! `capture packets`: prints every captured packet, one line each, then the counters.
//! The first thing to run on a new node: it shows that the hooks see the traffic.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::cmd::capture_args::CaptureArgs;
use crate::decode::decode_tcp;
use crate::live::{AttachMode, CaptureStats, LivePackets, PacketBatch};
use crate::packet::{CapturedPacket, Direction};

/// Arguments of `capture packets`.
#[derive(Clone, Debug, clap::Args)]
pub struct PacketsArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,

    /// Stop after this long (e.g. 10s, 2m); otherwise run until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Also print the counters to stderr every second while running.
    #[arg(long)]
    pub stats: bool,

    /// Do not print packet lines, only the counters (for load tests).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Why the capture loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Duration,
    Interrupt,
    Terminate,
    OutputClosed,
    ReaderEnded,
}

/// Runs `capture packets` until the duration, a signal, or a closed stdout.
pub async fn run(args: PacketsArgs) -> anyhow::Result<()> {
    let config = args.capture.to_config()?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut capture = LivePackets::start(&config)?;
    eprintln!(
        "capturing TCP ports {} on {} ({} hooks); stop with Ctrl-C",
        join(&config.ports),
        config.interfaces.join(", "),
        match config.mode {
            AttachMode::Tc => "tc ingress+egress",
            AttachMode::Xdp => "xdp ingress",
        }
    );
    let mut printer = Printer::new(args.quiet, capture.capture().interface_names().clone());
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;

    let reason = loop {
        tokio::select! {
            batch = capture.recv() => match batch {
                Some(batch) => if printer.print(batch).is_err() {
                    break StopReason::OutputClosed;
                },
                None => break StopReason::ReaderEnded,
            },
            _ = sigint.recv() => break StopReason::Interrupt,
            _ = sigterm.recv() => break StopReason::Terminate,
            _ = &mut deadline, if args.duration.is_some() => break StopReason::Duration,
            _ = tick.tick(), if args.stats => {
                eprintln!("stats: {}", capture.capture().stats()?.to_line());
            }
        }
    };
    log::info!("stopping: {reason:?}");
    let mut pending: Vec<PacketBatch> = Vec::new();
    let stats = capture.stop_and_drain(|batch| pending.push(batch)).await?;
    if reason != StopReason::OutputClosed {
        for batch in pending {
            if printer.print(batch).is_err() {
                break;
            }
        }
    }
    print_final(&stats, printer.printed);
    if reason == StopReason::ReaderEnded {
        anyhow::bail!("the ring reader stopped unexpectedly; see the log above");
    }
    Ok(())
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn print_final(stats: &CaptureStats, printed: u64) {
    eprintln!("counters: {} printed={printed}", stats.to_line());
}

/// Writes packet lines to stdout, one write per batch.
struct Printer {
    quiet: bool,
    printed: u64,
    names: HashMap<u32, String>,
    line: String,
}

impl Printer {
    fn new(quiet: bool, names: HashMap<u32, String>) -> Self {
        Self {
            quiet,
            printed: 0,
            names,
            line: String::new(),
        }
    }

    fn print(&mut self, batch: PacketBatch) -> std::io::Result<()> {
        self.printed += batch.len() as u64;
        if self.quiet {
            return Ok(());
        }
        self.line.clear();
        for packet in &batch {
            match self.names.get(&packet.ifindex) {
                Some(name) => format_packet(&mut self.line, name, packet),
                None => format_packet(&mut self.line, &format!("if{}", packet.ifindex), packet),
            }
            self.line.push('\n');
        }
        let mut out = std::io::stdout().lock();
        out.write_all(self.line.as_bytes())?;
        out.flush()
    }
}

/// Formats one packet like tcpdump's one-line summary, then the payload length and the flow
/// hash (as the packet carries it: the kernel's, for live capture).
pub fn format_packet(out: &mut String, iface: &str, packet: &CapturedPacket) {
    let dir = match packet.direction {
        Direction::Ingress => "in ",
        Direction::Egress => "out",
    };
    let _ = write!(out, "{} {iface} {dir} ", packet.ts.to_rfc3339());
    match decode_tcp(packet.link, &packet.data) {
        Ok(seg) => {
            let _ = write!(
                out,
                "{} > {} Flags [{}] seq {} ack {} win {} len {} flow {:08x}",
                seg.src,
                seg.dst,
                seg.flags,
                seg.seq,
                seg.ack,
                seg.window,
                seg.payload.len(),
                packet.flow_hash
            );
        }
        Err(e) => {
            let _ = write!(out, "undecodable ({})", e.reason());
        }
    }
    if packet.is_truncated() {
        let _ = write!(
            out,
            " truncated (captured {} of {} bytes)",
            packet.data.len(),
            packet.wire_len
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::LinkType;
    use crate::packet::Timestamp;
    use bytes::Bytes;

    #[test]
    fn line_names_time_interface_direction_addresses_flags_and_length() {
        // Ethernet + IPv4 + TCP (PSH|ACK) with a 5-byte payload, built by etherparse.
        let builder = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 8080, 100, 64240)
            .psh()
            .ack(7);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"hello").expect("build frame");
        let packet = CapturedPacket {
            ts: Timestamp(1_700_000_000_123_456_789),
            ifindex: 3,
            direction: Direction::Egress,
            link: LinkType::Ethernet,
            wire_len: frame.len() as u32,
            flow_hash: 0x00c0_ffee,
            data: Bytes::from(frame),
        };
        let mut line = String::new();
        format_packet(&mut line, "veth0", &packet);
        assert_eq!(
            line,
            "2023-11-14T22:13:20.123456Z veth0 out 10.0.0.1:40000 > 10.0.0.2:8080 Flags [P.] seq 100 ack 7 win 64240 len 5 flow 00c0ffee"
        );
    }

    #[test]
    fn undecodable_and_truncated_packets_say_so() {
        let packet = CapturedPacket {
            ts: Timestamp(0),
            ifindex: 3,
            direction: Direction::Ingress,
            link: LinkType::Ethernet,
            wire_len: 70000,
            flow_hash: 0,
            data: Bytes::from_static(&[0u8; 10]),
        };
        let mut line = String::new();
        format_packet(&mut line, "lo", &packet);
        assert!(line.contains("lo in  undecodable ("), "{line}");
        assert!(
            line.ends_with("truncated (captured 10 of 70000 bytes)"),
            "{line}"
        );
    }
}
