//! The agent against hostile and careless clients, as real processes in a network namespace:
//! 5,000 connections that send half a request head are each closed at the header timeout
//! while /healthz and an authorised call stay quick, and the agent's descriptors come back
//! to their baseline; beyond the connection cap new connections are closed at once, counted,
//! and served again once the others close; SIGTERM under wrk -c50 with a recording running
//! ends the recording `complete` within the drain deadline and leaves nothing attached.
//!
//! The tests that measure time run one at a time (two cores: one test's 5,000 connections
//! would be the other's latency).

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tests::agent::{
    Api, TOKEN, in_netns, open_fds, raise_nofile, sample, spawn_in_netns, start_agent, status_of,
    timed_get,
};
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::{capture_bin, run_ok};

/// Serialises the tests that measure time.
static TIMED: Mutex<()> = Mutex::new(());

fn timed() -> MutexGuard<'static, ()> {
    TIMED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The agent's address inside its namespace (each test has a namespace of its own).
const AGENT: &str = "127.0.0.1:9300";

fn agent_addr() -> SocketAddr {
    AGENT.parse().expect("a literal address")
}

const HALF_HEAD: &[u8] = b"GET /v1/recordings HTTP/1.1\r\nHost: x\r\n";

/// Opens `n` connections to `addr` that each send `HALF_HEAD` and nothing more; each with
/// the instant its head was sent.
fn open_half_heads(addr: SocketAddr, n: usize) -> Result<Vec<(TcpStream, Instant)>> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connection {i}"))?;
        tcp.write_all(HALF_HEAD)?;
        tcp.set_nonblocking(true)?;
        conns.push((tcp, Instant::now()));
    }
    Ok(conns)
}

/// How a connection ended, seen from the client.
#[derive(Debug)]
struct Closed {
    /// From when it was opened (or its head sent) to when the client saw the close.
    after: Duration,
    /// Bytes the server sent before closing.
    bytes: usize,
}

/// Waits (up to `limit` after the last was opened) for the server to close each connection;
/// `None` for those still open then.
fn watch_closes(conns: Vec<(TcpStream, Instant)>, limit: Duration) -> Result<Vec<Option<Closed>>> {
    let give_up = conns.last().map_or_else(Instant::now, |c| c.1) + limit;
    let mut fds: Vec<libc::pollfd> = conns
        .iter()
        .map(|(tcp, _)| libc::pollfd {
            fd: tcp.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    let mut conns: Vec<Option<(TcpStream, Instant)>> = conns.into_iter().map(Some).collect();
    let mut closed: Vec<Option<Closed>> = (0..conns.len()).map(|_| None).collect();
    let mut bytes = vec![0usize; conns.len()];
    let mut left = conns.len();
    while left > 0 && Instant::now() < give_up {
        // SAFETY: poll(2) over a live array of pollfds; negative fds are skipped.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
        ensure!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        let now = Instant::now();
        for (i, pfd) in fds.iter_mut().enumerate() {
            if pfd.fd < 0 || pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            let Some((tcp, opened)) = conns[i].as_mut() else {
                continue;
            };
            let mut buf = [0u8; 4096];
            let ended = match tcp.read(&mut buf) {
                Ok(0) => true,
                Ok(k) => {
                    bytes[i] += k;
                    false
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            if ended {
                closed[i] = Some(Closed {
                    after: now - *opened,
                    bytes: bytes[i],
                });
                pfd.fd = -1;
                conns[i] = None;
                left -= 1;
            }
        }
    }
    Ok(closed)
}

/// One probe: path, status, time from connect to the whole answer.
type Probe = (&'static str, u16, Duration);

/// Samples `GET /healthz` (no token) and `GET /v1/recordings` (with it) every 50 ms over
/// fresh connections from `ns` until `stop`; (path, status, time) of each.
fn probe_until(ns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<Vec<Probe>>> {
    spawn_in_netns(ns, move || {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for (path, token) in [("/healthz", None), ("/v1/recordings", Some(TOKEN))] {
                let (status, took) = timed_get(agent_addr(), path, token)?;
                seen.push((path, status, took));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(seen)
    })
}

/// Polls until the agent's descriptors are back to `baseline` (or `limit` passes); the
/// last count seen.
fn fds_back_to(pid: i32, baseline: usize, limit: Duration) -> Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        let now = open_fds(pid)?;
        if now <= baseline || Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// /metrics counts at least `n` header timeouts, and no refused connection.
fn header_timeouts_counted(api: &Api, n: u32) -> Result<()> {
    let m = api.metrics()?;
    let timeouts = sample(
        &m,
        "capture_agent_timeouts_total",
        &[("kind", "header_read")],
    );
    ensure!(
        timeouts >= Some(f64::from(n)),
        "header_read timeouts: {timeouts:?}"
    );
    let refused = sample(&m, "capture_agent_connections_refused_total", &[]);
    ensure!(refused == Some(0.0), "refused: {refused:?}");
    Ok(())
}

#[test]
fn five_thousand_half_sent_heads_are_closed_at_the_header_timeout_and_the_api_stays_quick()
-> Result<()> {
    let _one_at_a_time = timed();
    raise_nofile()?;
    let topo = Topology::new("slow")?;
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let flags = ["--data-dir", &dir, "--header-read-timeout", "2s"];
    let agent = start_agent(&topo.client_ns, AGENT, data.path(), &flags, &[])?;
    let api = Api {
        ns: &topo.client_ns,
        base: format!("http://{AGENT}"),
    };
    api.ok("GET", "/v1/recordings", None)?;
    std::thread::sleep(Duration::from_millis(300));
    let baseline = open_fds(agent.pid())?;

    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe_until(&topo.client_ns, stop.clone());
    let conns = in_netns(&topo.client_ns, || open_half_heads(agent_addr(), 5000))?;
    let held = open_fds(agent.pid())?;
    let closed = watch_closes(conns, Duration::from_secs(6))?;
    stop.store(true, Ordering::Relaxed);
    let probes = prober
        .join()
        .map_err(|_| anyhow::anyhow!("prober panicked"))??;

    // Every connection closed by the server, none answered, each within 2 s + 1 s.
    let open = closed.iter().filter(|c| c.is_none()).count();
    ensure!(open == 0, "{open} of 5000 connections still open after 6 s");
    let closed: Vec<Closed> = closed.into_iter().flatten().collect();
    let slowest = closed.iter().map(|c| c.after).max().unwrap_or_default();
    let soonest = closed.iter().map(|c| c.after).min().unwrap_or_default();
    ensure!(
        slowest <= Duration::from_secs(3),
        "slowest close {slowest:?}"
    );
    ensure!(
        soonest >= Duration::from_millis(1900),
        "a connection closed before the header timeout: {soonest:?}"
    );
    ensure!(closed.iter().all(|c| c.bytes == 0), "an answer was sent");
    ensure!(
        held >= baseline + 4000,
        "the agent did not hold the connections ({baseline} -> {held} fds)"
    );

    // The probes answered quickly throughout.
    ensure!(probes.len() >= 20, "only {} probes", probes.len());
    for (path, status, took) in &probes {
        ensure!(*status == 200, "{path}: {status}");
        ensure!(*took < Duration::from_millis(100), "{path} took {took:?}");
    }
    let worst = probes.iter().map(|p| p.2).max().unwrap_or_default();

    header_timeouts_counted(&api, 5000)?;

    let after = fds_back_to(agent.pid(), baseline, Duration::from_secs(3))?;
    ensure!(
        after <= baseline,
        "descriptors: {baseline} before, {after} after"
    );
    eprintln!(
        "closes after {soonest:?}..{slowest:?}; {} probes, slowest {worst:?}; fds {baseline} -> {held} -> {after}",
        probes.len()
    );
    let out = agent.stop(libc::SIGTERM)?;
    ensure!(out.status.success(), "{}", out.stderr.join("\n"));
    Ok(())
}

/// `GET /healthz` over a connection held open until now; the status.
fn healthz_on(tcp: &mut TcpStream) -> Result<u16> {
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)?;
    status_of(&answer)
}

#[test]
fn beyond_the_connection_cap_new_connections_are_closed_at_once_counted_and_served_again()
-> Result<()> {
    let _one_at_a_time = timed();
    let topo = Topology::new("cap")?;
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let flags = ["--data-dir", &dir, "--max-connections", "40"];
    let agent = start_agent(&topo.client_ns, AGENT, data.path(), &flags, &[])?;
    let api = Api {
        ns: &topo.client_ns,
        base: format!("http://{AGENT}"),
    };

    let (held, extra) = in_netns(&topo.client_ns, || {
        // Within the cap: connected, nothing sent yet (the header timeout is 10 s).
        let held: Vec<(TcpStream, Instant)> = (0..40)
            .map(|_| Ok((TcpStream::connect(agent_addr())?, Instant::now())))
            .collect::<Result<_>>()?;
        std::thread::sleep(Duration::from_millis(300));
        let extra: Vec<(TcpStream, Instant)> = (0..25)
            .map(|_| Ok((TcpStream::connect(agent_addr())?, Instant::now())))
            .collect::<Result<_>>()?;
        for (tcp, _) in &extra {
            tcp.set_nonblocking(true)?;
        }
        Ok((held, extra))
    })?;
    // Beyond the cap: closed at once, nothing sent; /healthz cannot get in either.
    let closed = watch_closes(extra, Duration::from_secs(2))?;
    for c in &closed {
        let c = c
            .as_ref()
            .context("a connection beyond the cap stayed open")?;
        ensure!(
            c.after < Duration::from_millis(500),
            "closed after {:?}",
            c.after
        );
        ensure!(c.bytes == 0, "a connection beyond the cap was answered");
    }
    let probe = in_netns(&topo.client_ns, || {
        Ok(timed_get(agent_addr(), "/healthz", None))
    });
    ensure!(
        probe.is_ok_and(|r| r.is_err()),
        "/healthz answered at the cap"
    );

    // The connections within the cap are still served.
    let mut held = held;
    let (mut first, _) = held.remove(0);
    assert_eq!(healthz_on(&mut first)?, 200);
    // Once they close, the agent serves again and shows what it refused.
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    let m = api.metrics()?;
    assert_eq!(
        sample(&m, "capture_agent_connections_refused_total", &[]),
        Some(26.0),
        "25 connections and one probe beyond the cap"
    );
    assert_eq!(sample(&m, "capture_agent_connections_open", &[]), Some(1.0));
    assert_eq!(api.raw("GET", "/healthz", None, None)?.0, 200);
    let out = agent.stop(libc::SIGTERM)?;
    ensure!(out.status.success(), "{}", out.stderr.join("\n"));
    Ok(())
}

/// `wrk ARGS` in `ns`, running in the background.
fn wrk(ns: &str, args: &[&str]) -> Result<Child> {
    Topology::exec(ns, "wrk")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting wrk")
}

#[test]
fn sigterm_under_wrk_ends_the_recording_complete_in_time_and_leaves_nothing_attached() -> Result<()>
{
    let _one_at_a_time = timed();
    let topo = Topology::new("term")?;
    let _nginx = Nginx::start(&topo.server_ns, &[8080])?;
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let flags = ["--data-dir", &dir, "--drain-timeout", "3s"];
    let agent = start_agent(&topo.client_ns, AGENT, data.path(), &flags, &[])?;
    let api = Api {
        ns: &topo.client_ns,
        base: format!("http://{AGENT}"),
    };
    let body = json!({"name": "term", "interfaces": [topo.client_if], "ports": [8080]});
    api.ok("POST", "/v1/recordings", Some(&body.to_string()))?;

    let origin = format!("http://{}:8080/index.html", topo.server_ip);
    let mut traffic = wrk(&topo.client_ns, &["-t1", "-c2", "-d30s", &origin])?;
    let auth = format!("Authorization: Bearer {TOKEN}");
    let metrics = format!("http://{AGENT}/metrics");
    let mut load = wrk(
        &topo.client_ns,
        &["-t2", "-c50", "-d30s", "-H", &auth, &metrics],
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let live = api.ok("GET", "/v1/recordings/term", None)?;
    ensure!(live["state"] == "recording", "{live}");
    // wrk's calls are served (not refused, not 401).
    let m = api.metrics()?;
    let served = sample(&m, "capture_agent_http_requests_total", &[("code", "200")]);
    ensure!(served > Some(1000.0), "/metrics calls served: {served:?}");
    let denied = sample(&m, "capture_agent_http_requests_total", &[("code", "401")]);
    ensure!(denied.is_none(), "401s: {denied:?}");

    let signalled = Instant::now();
    // SAFETY: kill(2) on the agent, our child.
    unsafe { libc::kill(agent.pid(), libc::SIGTERM) };
    let out = agent.finish_within(Duration::from_secs(30))?;
    let took = signalled.elapsed();
    let _ = load.kill();
    let _ = traffic.kill();
    let _ = (load.wait(), traffic.wait());
    ensure!(out.status.success(), "{}", out.stderr.join("\n"));
    // The deadline: --drain-timeout for calls in progress, then ending the recording.
    ensure!(
        took < Duration::from_secs(5),
        "the agent took {took:?} to stop"
    );

    let shown = run_ok(Command::new(capture_bin()).args([
        "recordings",
        "show",
        "term",
        "--json",
        "--data-dir",
        &dir,
    ]))?;
    let entry: Value = serde_json::from_slice(&shown.stdout)?;
    ensure!(entry["state"] == "complete", "{entry}");
    ensure!(entry["messages"].as_u64() > Some(100), "{entry}");
    let left = Topology::attachments(&topo.client_ns, &topo.client_if)?.leftovers();
    ensure!(left.is_empty(), "{left:?}");
    eprintln!(
        "stopped in {took:?} under load; recording: {} messages",
        entry["messages"]
    );
    Ok(())
}

/// Reads one answer (head and Content-Length body) from a kept-alive connection: its
/// status and body.
fn read_answer(tcp: &mut TcpStream) -> Result<(u16, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut buf)?;
        ensure!(n > 0, "closed before an answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .context("no content-length")?
        .trim()
        .parse()?;
    while got.len() < head_end + length {
        let n = tcp.read(&mut buf)?;
        ensure!(n > 0, "closed inside a body");
        got.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&got[head_end..head_end + length]).into_owned();
    Ok((status_of(&got)?, body))
}

/// A connection that had one `GET /healthz` answered and is kept alive.
fn kept_alive() -> Result<TcpStream> {
    let mut tcp = TcpStream::connect(agent_addr())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let (status, _) = read_answer(&mut tcp)?;
    ensure!(status == 200, "/healthz: {status}");
    Ok(tcp)
}

/// How long after `since` the server closed `tcp` (read timeout 5 s).
fn closed_after(tcp: &mut TcpStream, since: Instant) -> Result<Duration> {
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 64];
    match tcp.read(&mut buf) {
        Ok(0) => Ok(since.elapsed()),
        Ok(n) => anyhow::bail!("unexpected bytes: {:?}", &buf[..n]),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(since.elapsed()),
        Err(e) => Err(e).context("still open after 5 s"),
    }
}

#[test]
fn idle_and_slow_kept_alive_connections_and_a_stalled_body_are_cut_at_their_deadlines() -> Result<()>
{
    let _one_at_a_time = timed();
    let topo = Topology::new("idle")?;
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let flags = [
        "--data-dir",
        &dir,
        "--header-read-timeout",
        "1s",
        "--idle-timeout",
        "2s",
        "--body-read-timeout",
        "1s",
    ];
    let agent = start_agent(&topo.client_ns, AGENT, data.path(), &flags, &[])?;
    let (idle, slow, body) = in_netns(&topo.client_ns, || {
        // Kept alive after one answer, then silent.
        let mut tcp = kept_alive()?;
        let idle = closed_after(&mut tcp, Instant::now())?;
        // Kept alive, then half of the next head: the header timeout runs from its first
        // byte, and ends before the idle timeout would have.
        let mut tcp = kept_alive()?;
        std::thread::sleep(Duration::from_millis(200));
        tcp.write_all(HALF_HEAD)?;
        let slow = closed_after(&mut tcp, Instant::now())?;
        // A body announced as 100 bytes of which 10 arrive.
        let mut tcp = TcpStream::connect(agent_addr())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let auth = format!("Authorization: Bearer {TOKEN}\r\n");
        let head =
            format!("POST /v1/recordings HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 100\r\n\r\n");
        tcp.write_all(head.as_bytes())?;
        tcp.write_all(b"{\"name\":\"x")?;
        let sent = Instant::now();
        let answer = read_answer(&mut tcp)?;
        Ok((idle, slow, (answer, sent.elapsed())))
    })?;
    let (second, three_halves) = (Duration::from_secs(1), Duration::from_millis(1500));
    ensure!(
        idle >= 2 * second - second / 10 && idle < 2 * second + second / 2,
        "idle connection closed after {idle:?}"
    );
    ensure!(
        slow >= second - second / 10 && slow < three_halves,
        "half a second head closed after {slow:?}"
    );
    let ((status, message), took) = body;
    ensure!(
        status == 408 && message.contains("--body-read-timeout"),
        "{status} {message}"
    );
    ensure!(
        took >= second - second / 10 && took < three_halves,
        "408 after {took:?}"
    );
    let api = Api {
        ns: &topo.client_ns,
        base: format!("http://{AGENT}"),
    };
    let m = api.metrics()?;
    for kind in ["idle", "header_read", "body_read"] {
        let n = sample(&m, "capture_agent_timeouts_total", &[("kind", kind)]);
        ensure!(n == Some(1.0), "{kind}: {n:?}");
    }
    let out = agent.stop(libc::SIGTERM)?;
    ensure!(out.status.success(), "{}", out.stderr.join("\n"));
    Ok(())
}
