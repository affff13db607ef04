//! Peers for the `--tls` tests and benchmark: a test CA, nginx serving TLS with its
//! certificate, curl trusting it, and `capture messages --tls` run around some traffic.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Result, ensure};

use crate::capture::{CaptureRun, Inspected, parse_inspected};
use crate::multiset;
use crate::netns::Topology;
use crate::nginx::{AccessLogEntry, Nginx};
use crate::pki::{make_ca, make_server_cert};
use crate::run_ok;

/// A test CA and a server certificate for the topology's server address.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA certificate's path, for `--cacert` and `--ca-file`.
    pub ca: String,
}

impl Pki {
    pub fn new(topo: &Topology) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        make_ca(dir.path(), "ca")?;
        make_server_cert(
            dir.path(),
            "ca",
            &format!("IP:{}", topo.server_ip),
            "server",
            "0x2001",
        )?;
        let ca = dir.path().join("ca.crt").to_string_lossy().to_string();
        Ok(Self { dir, ca })
    }

    /// nginx serving TLS on `ports` in the server namespace (HTTP/2 by ALPN too with `h2`).
    pub fn nginx(&self, topo: &Topology, ports: &[u16], h2: bool) -> Result<Nginx> {
        let d = self.dir.path();
        Nginx::start_tls(
            &topo.server_ns,
            ports,
            &d.join("server.crt"),
            &d.join("server.key"),
            h2,
        )
    }
}

/// A topology, its CA and nginx serving TLS on `ports`.
pub fn tls_peers(tag: &str, ports: &[u16], h2: bool) -> Result<(Topology, Pki, Nginx)> {
    let topo = Topology::new(tag)?;
    let pki = Pki::new(&topo)?;
    let nginx = pki.nginx(&topo, ports, h2)?;
    Ok((topo, pki, nginx))
}

/// `https://SERVER:PORT/PATH` of the topology's server.
pub fn url(topo: &Topology, port: u16, path: &str) -> String {
    format!("https://{}:{port}{path}", topo.server_ip)
}

/// curl from the client namespace, trusting the test CA `ca`, answers discarded.
pub fn curl(topo: &Topology, ca: &str, args: &[&str]) -> Result<()> {
    run_ok(
        topo.client("curl")
            .args(["-sS", "-o", "/dev/null", "--cacert", ca])
            .args(args),
    )?;
    Ok(())
}

/// (method, URI) of each request among `messages`.
pub fn requests_of(messages: &[Inspected]) -> Vec<(String, String)> {
    messages.iter().filter_map(|m| m.request.clone()).collect()
}

/// (method, URI) of each access log entry.
pub fn logged(log: &[AccessLogEntry]) -> Vec<(String, String)> {
    log.iter()
        .map(|e| (e.method.clone(), e.uri.clone()))
        .collect()
}

/// Every request has a response that answers it (and a 100 Continue before it, when the
/// client asked for one), but for at most `in_flight` (wrk's requests cut off when it
/// stops: nginx logs them, but the answer never got through), and every response answers
/// a request.
pub fn assert_paired(messages: &[Inspected], in_flight: usize) -> Result<()> {
    let requests: Vec<u64> = messages
        .iter()
        .filter(|m| m.request.is_some())
        .map(|m| m.id)
        .collect();
    let answered = multiset(messages.iter().filter_map(|m| m.answers));
    let unanswered: Vec<&u64> = requests
        .iter()
        .filter(|id| !answered.contains_key(id))
        .collect();
    ensure!(
        unanswered.len() <= in_flight,
        "requests not answered: {unanswered:?}"
    );
    ensure!(
        answered.len() + unanswered.len() == requests.len(),
        "responses to unknown requests"
    );
    Ok(())
}

/// `capture messages --tls --tls-side SIDE --port PORT` while `traffic` runs; the printed
/// messages and stderr (the counters last), with how many message lines say `http2`.
pub fn messages_during(
    topo: &Topology,
    side: &str,
    port: u16,
    traffic: impl FnOnce() -> Result<()>,
) -> Result<(Vec<Inspected>, Vec<String>, usize)> {
    messages_during_with(topo, &["--tls-side", side], port, traffic)
}

/// [`messages_during`] with other `capture messages --tls` options.
pub fn messages_during_with(
    topo: &Topology,
    options: &[&str],
    port: u16,
    traffic: impl FnOnce() -> Result<()>,
) -> Result<(Vec<Inspected>, Vec<String>, usize)> {
    let port_arg = port.to_string();
    let mut args = vec![
        "messages",
        "--tls",
        "--port",
        &port_arg,
        "--ring-size",
        "64MiB",
    ];
    args.extend(options);
    let run = CaptureRun::start(&topo.client_ns, &args)?;
    traffic()?;
    messages_of(run)
}

/// Stops a `capture messages --tls` run with Ctrl-C half a second after the traffic:
/// its messages (each checked to say `tls`), stderr and how many were HTTP/2.
pub fn messages_of(run: CaptureRun) -> Result<(Vec<Inspected>, Vec<String>, usize)> {
    std::thread::sleep(Duration::from_millis(500));
    let out = run.stop(libc::SIGINT)?;
    ensure!(out.status.success(), "{}", out.stderr.join("\n"));
    let messages = out
        .stdout
        .iter()
        .map(|l| parse_inspected(l))
        .collect::<Result<Vec<_>>>()?;
    let untagged: Vec<&String> = out.stdout.iter().filter(|l| !l.ends_with(" tls")).collect();
    ensure!(
        untagged.is_empty(),
        "every message says tls: {:?}",
        &untagged[..untagged.len().min(5)]
    );
    let http2 = out.stdout.iter().filter(|l| l.contains(" http2 ")).count();
    Ok((messages, out.stderr, http2))
}

/// A process doing TLS on a port the tests do not capture: Python's ssl module (the host's
/// libssl) as client and server over loopback, exchanging 64 bytes about a thousand times a
/// second until dropped. The node's other TLS users, which only a probe scoped to the
/// servers spares.
pub struct BackgroundTls {
    child: Child,
}

impl BackgroundTls {
    /// Starts it in the client namespace on `port` with `pki`'s certificate; returns once
    /// the handshake is done.
    pub fn start(topo: &Topology, pki: &Pki, port: u16) -> Result<Self> {
        let d = pki.dir.path();
        let script = format!(
            "import socket, ssl, threading, time\n\
             srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
             srv.load_cert_chain('{crt}', '{key}')\n\
             cli = ssl.create_default_context(cafile='{ca}')\n\
             cli.check_hostname = False\n\
             listener = socket.create_server(('127.0.0.1', {port}))\n\
             accepted = {{}}\n\
             def accept():\n    conn, _ = listener.accept()\n    accepted['s'] = srv.wrap_socket(conn, server_side=True)\n\
             t = threading.Thread(target=accept)\n\
             t.start()\n\
             c = cli.wrap_socket(socket.create_connection(('127.0.0.1', {port})))\n\
             t.join()\n\
             s = accepted['s']\n\
             print('ready', flush=True)\n\
             while True:\n    c.sendall(b'x' * 64)\n    s.recv(64)\n    time.sleep(0.001)\n",
            crt = d.join("server.crt").display(),
            key = d.join("server.key").display(),
            ca = pki.ca,
        );
        let mut child = topo
            .client("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("python's stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let running = Self { child };
        ensure!(
            line.trim() == "ready",
            "the TLS loop did not start: {line:?}"
        );
        Ok(running)
    }
}

impl Drop for BackgroundTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
