//! Driving a `capture agent` process from tests: starting it with a token file, calling its
//! API with curl from inside a namespace, reading /metrics through the reference Prometheus
//! parser, and raw TCP from a thread moved into the agent's namespace (for what curl cannot
//! do: half-sent heads, thousands of connections, timing single calls).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::capture::CaptureRun;
use crate::netns::Topology;
use crate::run_ok;

/// The token the agents of the tests are started with.
pub const TOKEN: &str = "s3cret-token-for-tests";

/// An agent in a namespace and how to call it.
pub struct Api<'a> {
    pub ns: &'a str,
    /// `http://ADDR` or `https://ADDR`.
    pub base: String,
}

/// One parsed /metrics sample: name, labels (a JSON object), value.
pub type Sample = (String, Value, f64);

impl Api<'_> {
    /// Calls the API with curl (from the agent's namespace) and returns status and JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> Result<(u16, Value)> {
        let (status, text) = self.raw(method, path, body, token)?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("{method} {path}: not JSON: {text}"))?
        };
        Ok((status, value))
    }

    /// Calls the API with curl and returns status and body text.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> Result<(u16, String)> {
        let mut cmd = Topology::exec(self.ns, "curl");
        cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}"]);
        if let Some(token) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        if let Some(body) = body {
            cmd.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        cmd.arg(format!("{}{path}", self.base));
        let out = run_ok(&mut cmd)?;
        let text = String::from_utf8(out.stdout)?;
        let (body, code) = text.rsplit_once('\n').context("no status from curl")?;
        Ok((code.trim().parse()?, body.to_string()))
    }

    /// A call with [`TOKEN`] that must succeed (2xx); its JSON body.
    pub fn ok(&self, method: &str, path: &str, body: Option<&str>) -> Result<Value> {
        let (status, v) = self.call(method, path, body, Some(TOKEN))?;
        ensure!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        Ok(v)
    }

    /// Polls a replay until it is no longer running.
    pub fn wait_replay(&self, id: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.ok("GET", &format!("/v1/replays/{id}"), None)?;
            if v["state"] != "running" && v["state"] != "finishing" {
                return Ok(v);
            }
            ensure!(Instant::now() < deadline, "replay {id} still running: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The metrics, parsed by prometheus-client into (name, labels, value) samples.
    pub fn metrics(&self) -> Result<Vec<Sample>> {
        let (status, text) = self.raw("GET", "/metrics", None, Some(TOKEN))?;
        ensure!(status == 200, "/metrics: {status}");
        parse_metrics(&text)
    }
}

/// Prometheus text parsed by the reference parser (Python's prometheus-client), so a
/// malformed exposition fails the test.
pub fn parse_metrics(text: &str) -> Result<Vec<Sample>> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let out = crate::python_with_stdin(script, text.as_bytes())?;
    ensure!(
        out.status.success(),
        "prometheus-client rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The value of the sample `name` whose labels include `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, v)| *v)
}

/// Starts `capture agent --listen LISTEN --token-file DATA_DIR/token EXTRA...` in `ns` with
/// [`TOKEN`]. Beyond loopback without `--tls-cert` in `extra`, it adds
/// `--insecure-plain-http` (the tests' veth pairs are the whole network).
pub fn start_agent(
    ns: &str,
    listen: &str,
    data_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<CaptureRun> {
    let token_file = data_dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let mut args = vec![
        "agent".to_string(),
        "--listen".into(),
        listen.into(),
        "--token-file".into(),
        token_file.display().to_string(),
    ];
    let addr: SocketAddr = listen.parse().context("--listen of a test agent")?;
    if !addr.ip().is_loopback() && !extra.contains(&"--tls-cert") {
        args.push("--insecure-plain-http".into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    CaptureRun::start_with_env(ns, &args, env)
}

/// Runs `f` on a thread of its own inside network namespace `ns` (setns(2) moves only the
/// calling thread): sockets it opens live in `ns` and stay usable from any thread.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns(2) with a descriptor we own; it changes this thread's namespace only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        f()
    })
}

/// [`spawn_in_netns`], waiting for its result.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    spawn_in_netns(ns, f)
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// One request over a fresh connection (`Connection: close`): the status and how long it
/// took from connect to the whole answer.
pub fn timed_get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<(u16, Duration)> {
    let started = Instant::now();
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: agent\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)?;
    let took = started.elapsed();
    Ok((status_of(&answer)?, took))
}

/// The status code of a raw HTTP/1.1 answer.
pub fn status_of(answer: &[u8]) -> Result<u16> {
    let line = answer.split(|b| *b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    match text.split_whitespace().nth(1).map(str::parse::<u16>) {
        Some(Ok(code)) if text.starts_with("HTTP/1.") => Ok(code),
        _ => bail!("not an HTTP answer: {:?}", String::from_utf8_lossy(answer)),
    }
}

/// Open descriptors of process `pid`.
pub fn open_fds(pid: i32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("/proc/{pid}/fd"))?
        .count())
}

/// Raises this process's open-file limit to its hard limit (thousands of test connections).
pub fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit");
        }
    }
    Ok(lim.rlim_cur)
}
