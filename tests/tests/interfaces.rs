//! Following the node (issue 19): `record --iface 'vethp*'` started before any matching
//! interface exists attaches to pod veths as they appear, lets go of one that goes away
//! mid-traffic, records every request of every pod exactly once, and leaves nothing attached;
//! `--host` keeps one server's traffic of two on the same port, IPv4 and IPv6. Real peers: one
//! namespace per pod with nginx, joined to a hub namespace (where the recorder runs, as on a
//! node) by a `vethpN` pair.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tests::capture::{CaptureRun, inspect};
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::run_ok;

const PORT: u16 = 8080;

/// GETs every URL from namespace `ns` with one curl (one keep-alive connection per host).
fn get_all(ns: &str, urls: impl IntoIterator<Item = String>) -> Result<()> {
    let mut curl = Topology::exec(ns, "curl");
    curl.args(["-sS", "-g"]);
    for url in urls {
        curl.args(["-o", "/dev/null", &url]);
    }
    run_ok(&mut curl).map(drop)
}

/// A namespace removed on drop.
struct Netns(String);

impl Netns {
    fn add(name: String) -> Result<Self> {
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Self(name))
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        run_ok(Topology::exec(&self.0, args[0]).args(&args[1..])).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A pod: its namespace with nginx, joined to the hub by `vethpN` (hub side) and `eth0`.
struct Pod {
    nginx: Option<Nginx>,
    /// Held for its drop: deleting the namespace deletes both ends of the veth.
    _ns: Netns,
    ip: String,
}

impl Pod {
    fn start(hub: &Netns, tag: &str, n: u8) -> Result<Self> {
        let ns = Netns::add(format!("capt-{tag}-p{n}"))?;
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &format!("vethp{n}"),
            "netns",
            &hub.0,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.0,
        ]))?;
        let subnet = format!("10.77.{n}");
        hub.run(&[
            "ip",
            "addr",
            "add",
            &format!("{subnet}.1/24"),
            "dev",
            &format!("vethp{n}"),
        ])?;
        hub.run(&["ip", "link", "set", &format!("vethp{n}"), "up"])?;
        ns.run(&[
            "ip",
            "addr",
            "add",
            &format!("{subnet}.2/24"),
            "dev",
            "eth0",
        ])?;
        ns.run(&["ip", "link", "set", "eth0", "up"])?;
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        let nginx = Nginx::start(&ns.0, &[PORT])?;
        Ok(Self {
            nginx: Some(nginx),
            _ns: ns,
            ip: format!("{subnet}.2"),
        })
    }

    /// `count` GETs from the hub over one keep-alive connection, each URI unique.
    fn traffic(&self, hub: &Netns, pod: u8, from: usize, count: usize) -> Result<()> {
        let ip = &self.ip;
        get_all(
            &hub.0,
            (from..from + count).map(|i| format!("http://{ip}:{PORT}/index.html?pod={pod}&i={i}")),
        )
    }

    /// The requests nginx answered, as (method, URI).
    fn served(&self) -> Result<Vec<(String, String)>> {
        let nginx = self.nginx.as_ref().context("nginx already stopped")?;
        Ok(nginx
            .access_log()?
            .into_iter()
            .map(|e| (e.method, e.uri))
            .collect())
    }
}

/// Started with no matching interface, the recorder attaches to three pod veths created one
/// after another, records every request of every pod exactly once, counts the veth of the pod
/// deleted mid-traffic as gone, and leaves no program or link behind.
#[test]
fn a_pattern_follows_pod_veths_that_come_and_go_and_records_each_request_once() -> Result<()> {
    let tag = format!("if{}", std::process::id() % 10000);
    let hub = Netns::add(format!("capt-{tag}-hub"))?;
    hub.run(&["ip", "link", "set", "lo", "up"])?;
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let run = CaptureRun::start(
        &hub.0,
        &[
            "record",
            "--iface",
            "vethp*",
            "--port",
            "8080",
            "--name",
            "pods",
            "--data-dir",
            &dir,
        ],
    )?;

    let mut pods = Vec::new();
    let mut served = BTreeMap::new();
    for n in 1..=3u8 {
        pods.push(Pod::start(&hub, &tag, n)?);
        // Attached within a second of the link's creation.
        std::thread::sleep(Duration::from_millis(1200));
        for (i, pod) in pods.iter().enumerate() {
            pod.traffic(&hub, i as u8 + 1, usize::from(n) * 100, 5)?;
        }
    }
    // Pod 2 goes away while the others keep serving: its nginx stops, its namespace (and with
    // it both ends of vethp2) is deleted.
    let mut gone = pods.remove(1);
    for e in gone.served()? {
        *served.entry(e).or_insert(0) += 1;
    }
    drop(gone.nginx.take());
    drop(gone);
    for (pod, n) in pods.iter().zip([1u8, 3]) {
        pod.traffic(&hub, n, 900, 5)?;
    }
    for pod in &pods {
        for e in pod.served()? {
            *served.entry(e).or_insert(0) += 1;
        }
    }
    // The programs and links the recorder holds now (pods 1 and 3 attached).
    let objects = run.bpf_objects()?;
    ensure!(!objects.link_ids.is_empty(), "no link held: {objects:?}");
    let stderr = run.stop_ok()?;
    ensure!(
        stderr.contains("no interface yet (following vethp*)"),
        "the start line says what it follows: {stderr}"
    );
    ensure!(
        stderr.contains("interfaces: 3 attached over the recording, 1 went away"),
        "{stderr}"
    );
    // Per-interface counters: the two pods still there by name, the one gone by index.
    let per = stderr
        .lines()
        .find_map(|l| l.strip_prefix("per interface: "))
        .with_context(|| format!("no per-interface line in {stderr}"))?;
    ensure!(
        per.contains("vethp1 ") && per.contains("vethp3 ") && per.matches(" packets ").count() == 3,
        "{per}"
    );

    // The catalog entry keeps the per-interface counts too.
    let show = run_ok(Command::new(tests::capture_bin()).args([
        "recordings",
        "show",
        "pods",
        "--json",
        "--data-dir",
        &dir,
    ]))?;
    let entry: serde_json::Value = serde_json::from_slice(&show.stdout)
        .with_context(|| String::from_utf8_lossy(&show.stdout).into_owned())?;
    ensure!(
        entry["interfaces"]["vethp1"]
            .as_u64()
            .is_some_and(|n| n > 0)
            && entry["interfaces"]["vethp3"]
                .as_u64()
                .is_some_and(|n| n > 0),
        "{entry}"
    );
    let mut recorded = BTreeMap::new();
    for m in inspect("pods", data.path())? {
        if let Some(request) = m.request {
            *recorded.entry(request).or_insert(0) += 1;
        }
    }
    // After pod N came: 5 GETs to each pod there is; after pod 2 went: 5 to pods 1 and 3.
    ensure!(
        served.values().sum::<u32>() == 5 * (1 + 2 + 3) + 5 * 2,
        "served {served:?}"
    );
    ensure!(
        recorded == served,
        "recorded {} requests, nginx served {}; differing: {:?}",
        recorded.values().sum::<u32>(),
        served.values().sum::<u32>(),
        served
            .iter()
            .filter(|(k, v)| recorded.get(*k) != Some(v))
            .take(5)
            .collect::<Vec<_>>()
    );
    let alive = objects.still_alive()?;
    ensure!(alive.is_empty(), "left in the kernel: {alive:?}");
    for n in [1, 3] {
        let left = Topology::attachments(&hub.0, &format!("vethp{n}"))?.leftovers();
        ensure!(left.is_empty(), "left on vethp{n}: {left:?}");
    }
    Ok(())
}

/// Two servers on the same port (two addresses of the server host, each family): with
/// `--host A/32 --host A6/128`, only the requests to A and A6 are recorded.
#[test]
fn host_filters_keep_only_the_chosen_servers_traffic_in_both_families() -> Result<()> {
    let topo = Topology::new("hst")?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let other = topo
        .server_ip
        .rsplit_once('.')
        .context("IPv4")?
        .0
        .to_string()
        + ".3";
    let other6 = topo.server_ip6.trim_end_matches('2').to_string() + "3";
    run_ok(Topology::exec(&topo.server_ns, "ip").args([
        "addr",
        "add",
        &format!("{other}/24"),
        "dev",
        &topo.server_if,
    ]))?;
    run_ok(Topology::exec(&topo.server_ns, "ip").args([
        "addr",
        "add",
        &format!("{other6}/64"),
        "dev",
        &topo.server_if,
        "nodad",
    ]))?;
    let data = tempfile::tempdir()?;
    let extra = [
        "--data-dir".to_string(),
        data.path().display().to_string(),
        "--host".to_string(),
        format!("{}/32", topo.server_ip),
        "--host".to_string(),
        format!("{}/128", topo.server_ip6),
    ];
    let run = CaptureRun::record(&topo.client_ns, &topo.client_if, "chosen", &extra)?;
    let servers = [
        ("a", topo.server_ip.clone()),
        ("b", other),
        ("a6", format!("[{}]", topo.server_ip6)),
        ("b6", format!("[{other6}]")),
    ];
    for (name, host) in &servers {
        get_all(
            &topo.client_ns,
            (0..4).map(|i| format!("http://{host}:{PORT}/index.html?to={name}&i={i}")),
        )?;
    }
    run.stop_ok()?;
    ensure!(
        nginx.access_log()?.len() == 16,
        "nginx served every request"
    );
    let recorded: Vec<String> = inspect("chosen", data.path())?
        .into_iter()
        .filter_map(|m| m.request.map(|(_, uri)| uri))
        .collect();
    let mut want: Vec<String> = ["a", "a6"]
        .iter()
        .flat_map(|to| (0..4).map(move |i| format!("/index.html?to={to}&i={i}")))
        .collect();
    let mut got = recorded.clone();
    got.sort();
    want.sort();
    ensure!(got == want, "recorded {recorded:?}");
    Ok(())
}

/// A request that crosses two interfaces of a router namespace (in on one veth, out on the
/// other), recorded there with `--iface any`: each request is recorded once, and the copies
/// are counted as duplicate segments.
#[test]
fn any_interface_records_a_request_seen_on_two_interfaces_once() -> Result<()> {
    let tag = format!("an{}", std::process::id() % 10000);
    let hub = Netns::add(format!("capt-{tag}-hub"))?;
    let client = Netns::add(format!("capt-{tag}-cli"))?;
    let server = Netns::add(format!("capt-{tag}-srv"))?;
    for (ns, ours, theirs, net) in [
        (&client, "c0", "hc", "10.79.1"),
        (&server, "s0", "hs", "10.79.2"),
    ] {
        run_ok(Command::new("ip").args([
            "link", "add", theirs, "netns", &hub.0, "type", "veth", "peer", "name", ours, "netns",
            &ns.0,
        ]))?;
        hub.run(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", theirs])?;
        hub.run(&["ip", "link", "set", theirs, "up"])?;
        ns.run(&["ip", "addr", "add", &format!("{net}.2/24"), "dev", ours])?;
        ns.run(&["ip", "link", "set", ours, "up"])?;
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        ns.run(&["ip", "route", "add", "default", "via", &format!("{net}.1")])?;
    }
    hub.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    let nginx = Nginx::start(&server.0, &[PORT])?;
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let run = CaptureRun::start(
        &hub.0,
        &[
            "record",
            "--iface",
            "any",
            "--port",
            "8080",
            "--name",
            "routed",
            "--data-dir",
            &dir,
        ],
    )?;
    get_all(
        &client.0,
        (0..10).map(|i| format!("http://10.79.2.2:{PORT}/index.html?i={i}")),
    )?;
    let stderr = run.stop_ok()?;
    ensure!(stderr.contains("from hc, hs (following any)"), "{stderr}");
    let served: Vec<String> = nginx.access_log()?.into_iter().map(|e| e.uri).collect();
    let mut recorded: Vec<String> = inspect("routed", data.path())?
        .into_iter()
        .filter_map(|m| m.request.map(|(_, uri)| uri))
        .collect();
    recorded.sort();
    let mut want = served.clone();
    want.sort();
    ensure!(
        served.len() == 10 && recorded == want,
        "recorded {recorded:?}, served {served:?}"
    );
    let duplicates: u64 = stderr
        .split_once("could not be attached; ")
        .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
        .with_context(|| format!("no duplicate count in {stderr}"))?;
    ensure!(
        duplicates >= 20,
        "every segment crossed two interfaces: {duplicates} duplicates"
    );
    Ok(())
}
