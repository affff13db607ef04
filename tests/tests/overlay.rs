//! Overlay traffic (issue 19): requests between two namespaces over a tunnel on a veth
//! underlay, recorded on the underlay. With `--decap` the recording holds exactly nginx's
//! access log; without it nothing is matched, and the `encapsulated` counter says why.
//!
//! VXLAN runs over a real kernel tunnel. This machine's kernel is built without Geneve and
//! IP-in-IP (`# CONFIG_GENEVE is not set`, `# CONFIG_NET_IPIP is not set`: `ip link add ...
//! type geneve` answers "Unknown device type"), so for those two the real traffic between
//! curl and nginx is captured by tcpdump and sent again on the underlay wrapped as a Geneve
//! (with options) or IP-in-IP tunnel would wrap it: the same bytes, in the encapsulation's
//! exact format, through the same kernel hooks.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use tests::capture::{CaptureRun, Tcpdump, inspect};
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::run_ok;

const PORT: u16 = 8080;

/// The tunnel device's `ip link add` arguments for one side (`local` to `remote`).
fn tunnel(kind: &str, local: &str, remote: &str, underlay: &str) -> Vec<String> {
    let words = match kind {
        "vxlan" => format!(
            "ov0 type vxlan id 42 dstport 4789 local {local} remote {remote} dev {underlay}"
        ),
        "geneve" => format!("ov0 type geneve id 42 remote {remote}"),
        _ => format!("ov0 type ipip local {local} remote {remote}"),
    };
    words.split(' ').map(str::to_string).collect()
}

/// Builds the tunnel between the two namespaces of `topo` (overlay 10.82.0.1 and .2).
fn overlay(topo: &Topology, kind: &str) -> Result<()> {
    let sides = [
        (
            &topo.client_ns,
            &topo.client_ip,
            &topo.server_ip,
            &topo.client_if,
            1,
        ),
        (
            &topo.server_ns,
            &topo.server_ip,
            &topo.client_ip,
            &topo.server_if,
            2,
        ),
    ];
    for (ns, local, remote, underlay, host) in sides {
        let ip = |args: &[&str]| run_ok(Topology::exec(ns, "ip").args(args)).map(drop);
        run_ok(
            Topology::exec(ns, "ip")
                .args(["link", "add"])
                .args(tunnel(kind, local, remote, underlay)),
        )?;
        ip(&["addr", "add", &format!("10.82.0.{host}/24"), "dev", "ov0"])?;
        ip(&["link", "set", "ov0", "up"])?;
    }
    Ok(())
}

/// 5 GETs and a 3000-byte POST to `host`, tagged `name` in their URIs.
fn traffic(topo: &Topology, host: &str, name: &str) -> Result<()> {
    let mut curl = topo.client("curl");
    curl.arg("-sS");
    for i in 0..5 {
        curl.args([
            "-o",
            "/dev/null",
            &format!("http://{host}:{PORT}/index.html?{name}={i}"),
        ]);
    }
    run_ok(&mut curl)?;
    let body = "x".repeat(3000);
    run_ok(topo.client("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "--data-binary",
        &body,
        &format!("http://{host}:{PORT}/upload?{name}"),
    ]))
    .map(drop)
}

/// Records on the underlay with `decap` while `send` runs; the requests recorded (method,
/// URI) and the recorder's kernel counter line.
fn record_while(
    topo: &Topology,
    name: &str,
    decap: &str,
    send: impl FnOnce() -> Result<()>,
) -> Result<(Vec<(String, String)>, String)> {
    let data = tempfile::tempdir()?;
    let extra = [
        "--data-dir".to_string(),
        data.path().display().to_string(),
        "--decap".to_string(),
        decap.to_string(),
    ];
    let run = CaptureRun::record(&topo.client_ns, &topo.client_if, name, &extra)?;
    send()?;
    let stderr = run.stop_ok()?;
    let kernel = stderr
        .lines()
        .find_map(|l| l.strip_prefix("kernel: "))
        .with_context(|| format!("no kernel counters in {stderr}"))?
        .to_string();
    let requests = inspect(name, data.path())?
        .into_iter()
        .filter_map(|m| m.request)
        .collect();
    Ok((requests, kernel))
}

/// A counter's value in a `name=value ...` line.
fn counter(line: &str, name: &str) -> Option<u64> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
}

/// What nginx served whose URI contains `tag`, as (method, URI), sorted.
fn served(nginx: &Nginx, tag: &str) -> Result<Vec<(String, String)>> {
    let mut served: Vec<(String, String)> = nginx
        .access_log()?
        .into_iter()
        .filter(|e| e.uri.contains(tag))
        .map(|e| (e.method, e.uri))
        .collect();
    served.sort();
    Ok(served)
}

/// With `--decap`: the recording equals what nginx served and the inner packets were counted;
/// without: nothing matched and the encapsulated packets were counted.
fn check(
    kind: &str,
    with: (Vec<(String, String)>, String),
    without: (Vec<(String, String)>, String),
    want: &[(String, String)],
) -> Result<()> {
    let (mut got, kernel) = with;
    got.sort();
    ensure!(
        want.len() == 6 && got == want,
        "{kind}: recorded {got:?}, served {want:?}"
    );
    ensure!(
        counter(&kernel, "encapsulated_matched").is_some_and(|n| n > 0),
        "{kind}: {kernel}"
    );
    let (requests, kernel) = without;
    ensure!(requests.is_empty(), "{kind} without --decap: {requests:?}");
    ensure!(
        counter(&kernel, "matched") == Some(0)
            && counter(&kernel, "encapsulated").is_some_and(|n| n > 0),
        "{kind} without --decap: {kernel}"
    );
    println!(
        "{kind}: {} requests recorded; without --decap: {kernel}",
        got.len()
    );
    Ok(())
}

#[test]
fn vxlan_traffic_over_a_kernel_tunnel_is_recorded_with_decap_and_counted_without() -> Result<()> {
    let topo = Topology::new("ovx")?;
    overlay(&topo, "vxlan")?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let with = record_while(&topo, "inner", "vxlan", || {
        traffic(&topo, "10.82.0.2", "inner")
    })?;
    let without = record_while(&topo, "outer", "none", || {
        traffic(&topo, "10.82.0.2", "outer")
    })?;
    check("vxlan", with, without, &served(&nginx, "inner")?)
}

/// Wraps every frame of a pcap as a tunnel would and sends it on an interface: Geneve (UDP
/// 6081, 8 bytes of options, Ethernet payload) or IP-in-IP (IPv4 protocol 4, the inner IP
/// packet). Arguments: the pcap, the interface, `geneve` or `ipip`.
const WRAP_AND_SEND: &str = r#"
import socket, struct, sys

def checksum(header):
    total = sum(struct.unpack("!10H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF

def ipv4(payload, proto):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0,
                         socket.inet_aton("10.83.0.1"), socket.inet_aton("10.83.0.2"))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload

path, ifname, kind = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(path, "rb").read()
out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
out.bind((ifname, 0))
ethernet = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
at, sent = 24, 0
while at + 16 <= len(data):
    caplen = struct.unpack("<I", data[at + 8:at + 12])[0]
    frame = data[at + 16:at + 16 + caplen]
    at += 16 + caplen
    if kind == "geneve":
        options = b"\x01\x02\x80\x01" + b"\x00\x00\x00\x00"
        geneve = struct.pack("!BBHI", len(options) // 4, 0, 0x6558, 42 << 8) + options
        udp = struct.pack("!HHHH", 40000, 6081, 8 + len(geneve) + len(frame), 0)
        packet = ipv4(udp + geneve + frame, 17)
    else:
        packet = ipv4(frame[14:], 4)
    out.send(ethernet + packet)
    sent += 1
print(sent)
"#;

/// Wraps and sends `pcap` on the client's underlay (see [`WRAP_AND_SEND`]).
fn wrap_and_send(topo: &Topology, pcap: &Path, kind: &str) -> Result<()> {
    let out = run_ok(topo.client("python3").args([
        "-c",
        WRAP_AND_SEND,
        &pcap.display().to_string(),
        &topo.client_if,
        kind,
    ]))?;
    let sent: u32 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    ensure!(sent > 10, "{kind}: only {sent} frames sent");
    Ok(())
}

#[test]
fn geneve_and_ipip_frames_are_recorded_with_decap_and_counted_without() -> Result<()> {
    let topo = Topology::new("ogi")?;
    // Frames as on the wire (no 64 KiB offload aggregates), with room for the outer headers.
    topo.disable_offloads()?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("plain.pcap");
    let tcpdump = Tcpdump::start(&topo.client_ns, &topo.client_if)?;
    traffic(&topo, &topo.server_ip, "tunnelled")?;
    tcpdump.stop_into(&pcap)?;
    let want = served(&nginx, "tunnelled")?;
    for (ns, ifname) in [
        (&topo.client_ns, &topo.client_if),
        (&topo.server_ns, &topo.server_if),
    ] {
        run_ok(Topology::exec(ns, "ip").args(["link", "set", ifname, "mtu", "9000"]))?;
    }
    for kind in ["geneve", "ipip"] {
        let with = record_while(&topo, "inner", kind, || wrap_and_send(&topo, &pcap, kind))?;
        let without = record_while(&topo, "outer", "none", || wrap_and_send(&topo, &pcap, kind))?;
        check(kind, with, without, &want)?;
    }
    Ok(())
}
