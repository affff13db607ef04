//! Acceptance of live capture (`capture packets`) against the real kernel: two network
//! namespaces joined by a veth pair, nginx on one side, curl on the other, and tcpdump +
//! tshark as the independent reference of what crossed the interface.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use capture_user::packet::flow_hash_of;
use tests::capture::{CaptureOutput, CaptureRun, PacketLine, RefPacket, Tcpdump, flag_letters};
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::{capture_bin, run_ok};

const PORT: u16 = 8080;
const OTHER_PORT: u16 = 9090;

/// curl in the client namespace; returns (http status, curl's size_request, body bytes sent).
/// curl's size_request counts the body only when it fits its first buffer, so byte totals
/// come from nginx's `$request_length` instead.
fn curl(topo: &Topology, url: &str, extra: &[&str]) -> Result<(u16, u64, u64)> {
    let out = run_ok(
        topo.client("curl")
            .args([
                "-sS",
                "-g",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_request} %{size_upload}",
            ])
            .args(extra)
            .arg(url),
    )?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let f: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().context("curl -w output"))
        .collect::<Result<_>>()?;
    ensure!(f.len() == 3, "curl printed {text:?}");
    Ok((f[0] as u16, f[1], f[2]))
}

/// The parts of a packet both views agree on.
type Key = (SocketAddr, SocketAddr, u32, String, u64);

fn key_of_line(p: &PacketLine) -> Key {
    (p.src, p.dst, p.seq, p.flags.clone(), p.len)
}

fn key_of_ref(p: &RefPacket) -> Key {
    (p.src, p.dst, p.seq, flag_letters(p.flags), p.len)
}

fn multiset<K: std::hash::Hash + Eq>(items: impl Iterator<Item = K>) -> HashMap<K, usize> {
    let mut map = HashMap::new();
    for item in items {
        *map.entry(item).or_insert(0) += 1;
    }
    map
}

fn on_port(src: &SocketAddr, dst: &SocketAddr, port: u16) -> bool {
    src.port() == port || dst.port() == port
}

/// Checks the kernel counter invariant and that every captured packet reached userspace.
fn check_counters(out: &CaptureOutput) -> Result<HashMap<String, u64>> {
    let c = out.counters()?;
    let get = |name: &str| {
        c.get(name)
            .copied()
            .with_context(|| format!("counter {name} missing"))
    };
    ensure!(
        get("matched")?
            == get("captured")? + get("dropped_ring_full")? + get("dropped_copy_failed")?,
        "matched != captured + dropped: {c:?}"
    );
    ensure!(
        get("printed")? == get("captured")?,
        "printed != captured: {c:?}"
    );
    ensure!(
        get("ring_packets")? == get("captured")?,
        "ring_packets != captured: {c:?}"
    );
    ensure!(get("bad_records")? == 0, "bad ring records: {c:?}");
    ensure!(
        get("seen")? >= get("matched")? + get("skipped_no_payload")?,
        "seen too low: {c:?}"
    );
    Ok(c)
}

/// Checks the flow hash the kernel put on each packet: the userspace twin computed from the
/// decoded addresses gives the same value, so both directions of a connection share it.
fn check_flow_hashes(packets: &[PacketLine]) -> Result<()> {
    let mut by_connection: HashMap<(SocketAddr, SocketAddr), u32> = HashMap::new();
    for p in packets {
        let twin = flow_hash_of(p.src, p.dst);
        ensure!(
            p.flow == twin,
            "kernel flow hash {:08x} != userspace {twin:08x} for {p:?}",
            p.flow
        );
        let key = if p.src < p.dst {
            (p.src, p.dst)
        } else {
            (p.dst, p.src)
        };
        let first = *by_connection.entry(key).or_insert(p.flow);
        ensure!(first == p.flow, "two flow hashes for one connection: {p:?}");
    }
    Ok(())
}

fn assert_clean(ns: &str, ifname: &str) -> Result<()> {
    let leftovers = Topology::attachments(ns, ifname)?.leftovers();
    ensure!(
        leftovers.is_empty(),
        "left attached on {ifname}: {leftovers:#?}"
    );
    Ok(())
}

/// Lets the last packets reach the ring, stops `capture` with `signal` and requires a clean
/// exit.
fn settle_and_stop(capture: CaptureRun, signal: i32) -> Result<CaptureOutput> {
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = capture.stop(signal)?;
    ensure!(
        out.status.success(),
        "capture failed: {:?}\n{}",
        out.status,
        out.stderr.join("\n")
    );
    Ok(out)
}

#[test]
fn curl_get_and_post_are_seen_packet_for_packet_in_both_directions() -> Result<()> {
    let topo = Topology::new("get")?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT, OTHER_PORT])?;
    let reference = Tcpdump::start(&topo.client_ns, &topo.client_if)?;
    let capture = CaptureRun::packets(&topo.client_ns, &topo.client_if, PORT, &[])?;

    let base = format!("http://{}:{PORT}", topo.server_ip);
    let (status, _, _) = curl(&topo, &format!("{base}/index.html"), &[])?;
    assert_eq!(status, 200);
    let body = "x".repeat(10_000);
    let (status, _, post_body) = curl(&topo, &format!("{base}/upload"), &["--data-binary", &body])?;
    assert_eq!(status, 200);
    assert_eq!(post_body, 10_000);
    let (status, _, _) = curl(
        &topo,
        &format!("http://{}:{OTHER_PORT}/index.html", topo.server_ip),
        &[],
    )?;
    assert_eq!(status, 200);

    let out = settle_and_stop(capture, libc::SIGINT)?;
    let reference = reference.stop()?;
    let packets = out.packets()?;
    check_flow_hashes(&packets)?;
    ensure!(
        packets.iter().any(|p| p.direction == "in") && packets.iter().any(|p| p.direction == "out"),
        "the flow hash check needs both directions"
    );

    // Nothing from the other port, although tcpdump saw that connection.
    assert!(
        packets.iter().all(|p| on_port(&p.src, &p.dst, PORT)),
        "foreign port captured"
    );
    assert!(
        reference
            .iter()
            .any(|p| on_port(&p.src, &p.dst, OTHER_PORT)),
        "no reference traffic on the other port: {reference:#?}"
    );

    // Every packet of the port's connections that carries payload, SYN, FIN or RST, in
    // both directions, with the same sequence numbers, flags and payload lengths.
    let expected: Vec<&RefPacket> = reference
        .iter()
        .filter(|p| on_port(&p.src, &p.dst, PORT) && p.carries_something())
        .collect();
    assert_eq!(
        multiset(packets.iter().map(key_of_line)),
        multiset(expected.iter().map(|p| key_of_ref(p))),
        "capture and tcpdump disagree"
    );
    assert_eq!(
        expected.iter().filter(|p| p.flags & 0x02 != 0).count(),
        4,
        "two handshakes expected"
    );
    assert!(
        packets.iter().any(|p| p.direction == "out") && packets.iter().any(|p| p.direction == "in")
    );
    assert!(packets.iter().all(|p| p.iface == topo.client_if));

    // The POST connection's client-to-server payload is exactly what curl sent.
    let post_conn = packets
        .iter()
        .filter(|p| p.dst.port() == PORT)
        .map(|p| p.src)
        .max_by_key(|src| {
            packets
                .iter()
                .filter(|p| p.src == *src)
                .map(|p| p.len)
                .sum::<u64>()
        })
        .context("no client packets")?;
    let sent: u64 = packets
        .iter()
        .filter(|p| p.src == post_conn)
        .map(|p| p.len)
        .sum();
    let log = nginx.access_log()?;
    let upload = log
        .iter()
        .find(|e| e.uri == "/upload")
        .context("no /upload in access log")?;
    assert_eq!(sent, upload.request_length);

    let counters = check_counters(&out)?;
    assert_eq!(counters["captured"], expected.len() as u64);
    assert_eq!(counters["dropped_ring_full"], 0);
    let pure_acks = reference
        .iter()
        .filter(|p| on_port(&p.src, &p.dst, PORT) && !p.carries_something())
        .count() as u64;
    assert_eq!(counters["skipped_no_payload"], pure_acks);
    assert_clean(&topo.client_ns, &topo.client_if)
}

#[test]
fn captures_with_only_cap_bpf_net_admin_and_perfmon_like_the_daemonset() -> Result<()> {
    let topo = Topology::new("caps")?;
    let _nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let port = PORT.to_string();
    let capture = CaptureRun::start_with_caps(
        &topo.client_ns,
        &["bpf", "net_admin", "perfmon"],
        &["packets", "--iface", &topo.client_if, "--port", &port],
    )?;
    let (status, _, _) = curl(
        &topo,
        &format!("http://{}:{PORT}/index.html", topo.server_ip),
        &[],
    )?;
    assert_eq!(status, 200);
    let out = settle_and_stop(capture, libc::SIGTERM)?;
    let packets = out.packets()?;
    assert!(
        packets.iter().any(|p| p.direction == "out" && p.len > 0)
            && packets.iter().any(|p| p.direction == "in" && p.len > 0),
        "request and response payload expected: {packets:#?}"
    );
    assert_eq!(check_counters(&out)?["dropped_ring_full"], 0);
    assert_clean(&topo.client_ns, &topo.client_if)
}

/// A 5 MB POST, captured where the hook sees the client's direction: TC egress on the
/// client, XDP ingress on the server. Returns (captured client payload, bytes curl sent).
fn five_mb_post(attach: &str, signal: i32) -> Result<(u64, u64, CaptureOutput)> {
    let topo = Topology::new(attach)?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let (ns, ifname) = match attach {
        "xdp" => (&topo.server_ns, &topo.server_if),
        _ => (&topo.client_ns, &topo.client_if),
    };
    let capture = CaptureRun::packets(ns, ifname, PORT, &["--attach", attach])?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("body.bin");
    let body: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&file, &body)?;
    let (status, _, sent_body) = curl(
        &topo,
        &format!("http://{}:{PORT}/upload", topo.server_ip),
        &["--data-binary", &format!("@{}", file.display())],
    )?;
    ensure!(status == 200, "POST answered {status}");
    ensure!(sent_body == 5_000_000, "curl sent {sent_body} body bytes");
    let out = settle_and_stop(capture, signal)?;
    let packets = out.packets()?;
    let captured = distinct_stream_bytes(packets.iter().filter(|p| p.dst.port() == PORT));
    check_counters(&out)?;
    check_flow_hashes(&packets)?;
    assert_clean(ns, ifname)?;
    let log = nginx.access_log()?;
    let upload = log
        .iter()
        .find(|e| e.uri == "/upload")
        .context("no /upload in access log")?;
    Ok((captured, upload.request_length, out))
}

/// Bytes of the TCP stream the packets cover, each byte once: a loaded machine retransmits,
/// and a retransmitted segment carries bytes the stream already had.
fn distinct_stream_bytes<'a>(packets: impl Iterator<Item = &'a PacketLine>) -> u64 {
    let packets: Vec<&PacketLine> = packets.collect();
    // Offsets relative to the SYN, the lowest sequence number (they wrap at 2^32).
    let Some(first) = packets
        .iter()
        .find(|p| p.flags.contains('S'))
        .or(packets.first())
        .map(|p| p.seq)
    else {
        return 0;
    };
    let segments: Vec<(u32, u64)> = packets.iter().map(|p| (p.seq, p.len)).collect();
    let mut ranges: Vec<(u64, u64)> = segments
        .iter()
        .map(|(seq, len)| {
            let start = u64::from(seq.wrapping_sub(first));
            (start, start + len)
        })
        .collect();
    ranges.sort_unstable();
    let (mut covered, mut reach) = (0u64, 0u64);
    for (start, end) in ranges {
        let start = start.max(reach);
        if end > start {
            covered += end - start;
            reach = end;
        }
    }
    covered
}

#[test]
fn five_mb_post_is_captured_byte_for_byte_by_tc() -> Result<()> {
    let (captured, sent, out) = five_mb_post("tc", libc::SIGTERM)?;
    assert_eq!(captured, sent);
    assert_eq!(out.counters()?["dropped_ring_full"], 0);
    Ok(())
}

#[test]
fn five_mb_post_is_captured_byte_for_byte_by_xdp_on_ingress() -> Result<()> {
    let (captured, sent, out) = five_mb_post("xdp", libc::SIGINT)?;
    assert_eq!(captured, sent);
    let packets = out.packets()?;
    assert!(!packets.is_empty());
    assert!(
        packets.iter().all(|p| p.direction == "in"),
        "XDP only sees ingress"
    );
    assert_eq!(out.counters()?["dropped_ring_full"], 0);
    Ok(())
}

/// Attaches in `args`' mode, checks the kernel shows our programs, stops with `signal`, and
/// checks the kernel shows nothing of ours: no tc filter, clsact qdisc or XDP on the link, and
/// none of the programs or links the process held.
fn attach_then_signal(args: &[&str], signal: i32) -> Result<()> {
    let topo = Topology::new("sig")?;
    let capture = CaptureRun::packets(&topo.client_ns, &topo.client_if, PORT, args)?;
    let held = capture.bpf_objects()?;
    ensure!(
        !held.prog_ids.is_empty(),
        "capture holds no BPF programs ({args:?})"
    );
    ensure!(
        !held.still_alive()?.is_empty(),
        "kernel shows none of the programs while attached ({args:?}): the check would be vacuous"
    );
    if args.contains(&"--tc-netlink") {
        let during = Topology::attachments(&topo.client_ns, &topo.client_if)?.leftovers();
        ensure!(!during.is_empty(), "no tc filter visible while attached");
    }
    let out = capture.stop(signal)?;
    ensure!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        out.stderr.join("\n")
    );
    out.counters()?;
    assert_clean(&topo.client_ns, &topo.client_if)?;
    let alive = held.still_alive()?;
    ensure!(
        alive.is_empty(),
        "still in the kernel after {signal}: {alive:?}"
    );
    Ok(())
}

#[test]
fn sigint_and_sigterm_leave_nothing_attached_in_every_mode() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        attach_then_signal(&[], signal)?;
        attach_then_signal(&["--tc-netlink"], signal)?;
        attach_then_signal(&["--attach", "xdp"], signal)?;
    }
    Ok(())
}

/// Runs capture expecting failure; returns its stderr after checking it is one line.
fn expect_one_line_error(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    ensure!(
        !out.status.success(),
        "expected failure, got {:?}",
        out.status
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1, "expected one line, got:\n{stderr}");
    Ok(lines[0].to_string())
}

#[test]
fn bad_input_and_missing_privileges_give_one_line_errors_and_attach_nothing() -> Result<()> {
    let topo = Topology::new("err")?;
    let bin = capture_bin();
    let bin = bin.to_string_lossy();
    let run = |args: &[&str]| {
        let mut cmd = topo.client(&bin);
        cmd.args(args);
        cmd
    };

    let msg = expect_one_line_error(&mut run(&["packets", "--iface", "nosuch0", "--port", "80"]))?;
    assert!(msg.contains("nosuch0") && msg.contains("ip link"), "{msg}");
    for port in ["0", "70000"] {
        let msg = expect_one_line_error(&mut run(&[
            "packets",
            "--iface",
            &topo.client_if,
            "--port",
            port,
        ]))?;
        assert!(msg.contains(port) && msg.contains("1-65535"), "{msg}");
    }
    let msg = expect_one_line_error(&mut run(&["packets", "--port", "80"]))?;
    assert!(msg.contains("--iface"), "{msg}");
    let msg = expect_one_line_error(&mut run(&[
        "packets",
        "--iface",
        &topo.client_if,
        "--port",
        "80",
        "--ring-size",
        "3MiB",
    ]))?;
    assert!(msg.contains("power of two"), "{msg}");

    // An unprivileged user (nobody) gets told what is needed.
    let mut unprivileged = topo.client("setpriv");
    unprivileged
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&*bin)
        .args(["packets", "--iface", &topo.client_if, "--port", "80"]);
    let msg = expect_one_line_error(&mut unprivileged)?;
    assert!(msg.contains("root") && msg.contains("CAP_BPF"), "{msg}");

    // Root without CAP_PERFMON (and CAP_SYS_ADMIN): the same line, not a verifier dump.
    let args = ["packets", "--iface", &topo.client_if, "--port", "80"];
    let mut no_perfmon = CaptureRun::with_only_caps(&topo.client_ns, &["bpf", "net_admin"], &args);
    let msg = expect_one_line_error(&mut no_perfmon)?;
    assert!(msg.contains("CAP_PERFMON"), "{msg}");

    assert_clean(&topo.client_ns, &topo.client_if)
}

/// Sends hand-built 802.1Q-tagged IPv4/TCP frames out of `ifname` in `ns` through a raw
/// packet socket: a SYN and a 18-byte PSH to port 8080, and a PSH to port 8081. The frame
/// bytes carry the tag (no VLAN offload), so both TC egress and XDP ingress parse it.
fn send_vlan_frames(ns: &str, ifname: &str, dst_mac: &str) -> Result<()> {
    let script = r#"
import socket, struct, sys
ifname, dst_mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(':', ''))
src_mac = bytes.fromhex(open(f'/sys/class/net/{ifname}/address').read().strip().replace(':', ''))
def frame(dport, flags, payload):
    tcp = struct.pack('!HHIIBBHHH', 40007, dport, 1000, 0, 5 << 4, flags, 64240, 0, 0) + payload
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                     socket.inet_aton('10.250.7.1'), socket.inet_aton('10.250.7.2'))
    return dst_mac + src_mac + struct.pack('!HH', 0x8100, 7) + struct.pack('!H', 0x0800) + ip + tcp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
s.send(frame(8080, 0x02, b''))
s.send(frame(8080, 0x18, b'GET / HTTP/1.1\r\n\r\n'))
s.send(frame(8081, 0x18, b'GET / HTTP/1.1\r\n\r\n'))
"#;
    run_ok(Topology::exec(ns, "python3").args(["-c", script, ifname, dst_mac]))?;
    Ok(())
}

#[test]
fn ipv6_and_vlan_tagged_traffic_is_captured() -> Result<()> {
    let topo = Topology::new("v6vl")?;
    let _nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let server_mac = String::from_utf8(
        run_ok(
            topo.server("cat")
                .arg(format!("/sys/class/net/{}/address", topo.server_if)),
        )?
        .stdout,
    )?;
    // TC on the client side, XDP on the server side.
    let tc = CaptureRun::packets(&topo.client_ns, &topo.client_if, PORT, &[])?;
    let xdp = CaptureRun::packets(&topo.server_ns, &topo.server_if, PORT, &["--attach", "xdp"])?;
    assert_eq!(
        curl(
            &topo,
            &format!("http://[{}]:{PORT}/index.html", topo.server_ip6),
            &[]
        )?
        .0,
        200
    );
    send_vlan_frames(&topo.client_ns, &topo.client_if, server_mac.trim())?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let server6: SocketAddr = format!("[{}]:{PORT}", topo.server_ip6).parse()?;
    let vlan_client: SocketAddr = "10.250.7.1:40007".parse()?;
    let vlan_server: SocketAddr = "10.250.7.2:8080".parse()?;
    for (name, run) in [("tc", tc), ("xdp", xdp)] {
        let out = run.stop(libc::SIGINT)?;
        check_counters(&out)?;
        let packets = out.packets()?;
        check_flow_hashes(&packets)?;
        let all = out.stdout.join("\n");
        // IPv6: the handshake and the request.
        assert!(
            packets.iter().any(|p| p.dst == server6 && p.flags == "S"),
            "{name}: no IPv6 SYN to {server6}:\n{all}"
        );
        assert!(
            packets.iter().any(|p| p.dst == server6 && p.len > 0),
            "{name}: no IPv6 request"
        );
        // 802.1Q: both frames to port 8080, with the right payload length, and not 8081.
        let tagged: Vec<_> = packets.iter().filter(|p| p.src == vlan_client).collect();
        assert_eq!(tagged.len(), 2, "{name}: tagged frames:\n{all}");
        assert!(
            tagged.iter().all(|p| p.dst == vlan_server),
            "{name}: {tagged:?}"
        );
        assert_eq!(tagged[0].flags, "S");
        assert_eq!(tagged[1].len, 18);
    }
    Ok(())
}

#[test]
fn a_full_ring_drops_are_counted_and_the_books_balance() -> Result<()> {
    let topo = Topology::new("ring")?;
    let _nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    std::fs::write(_nginx.docroot().join("big.bin"), vec![7u8; 20_000_000])?;
    // A 64 KiB ring cannot hold a burst of 64 KiB GSO packets: drops must happen and be counted.
    let capture = CaptureRun::packets(
        &topo.client_ns,
        &topo.client_if,
        8080,
        &["--ring-size", "64KiB", "--stats", "--quiet"],
    )?;
    for _ in 0..3 {
        assert_eq!(
            curl(
                &topo,
                &format!("http://{}:{PORT}/big.bin", topo.server_ip),
                &[]
            )?
            .0,
            200
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let out = capture.stop(libc::SIGTERM)?;
    let counters = check_counters(&out)?;
    assert!(
        counters["dropped_ring_full"] > 0,
        "expected drops with a 64 KiB ring: {counters:?}"
    );
    assert!(
        counters["discarded_incomplete"] <= counters["dropped_ring_full"],
        "{counters:?}"
    );
    assert!(out.stdout.is_empty(), "--quiet printed packets");
    assert!(
        out.stderr.iter().any(|l| l.starts_with("stats: seen=")),
        "--stats printed nothing"
    );
    Ok(())
}
