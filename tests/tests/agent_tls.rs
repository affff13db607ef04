//! The agent's API over TLS, checked with independent clients (curl and `openssl s_client`,
//! both OpenSSL) against a CA and certificates the test makes with the openssl CLI: the
//! token works only over a verified connection, a client that trusts another CA fails the
//! handshake, and certificate and token files swapped the way kubelet updates a mounted
//! Secret (a new directory behind the `..data` symlink) are taken up without a restart.
//! Plain HTTP beyond loopback needs `--insecure-plain-http`, and the agent says what it
//! exposes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tests::agent::{Api, TOKEN, sample};
use tests::capture::CaptureRun;
use tests::capture_bin;
use tests::netns::Topology;
use tests::pki::{make_ca, make_server_cert};

/// A directory laid out as kubelet lays out a mounted Secret: each key is a symlink
/// `KEY -> ..data/KEY`, `..data` a symlink to a versioned directory, swapped atomically.
struct SecretDir {
    dir: PathBuf,
    version: u32,
}

impl SecretDir {
    fn new(dir: PathBuf, files: &[(&str, &[u8])]) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut s = Self { dir, version: 0 };
        s.swap(files)?;
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), s.dir.join(name))?;
        }
        Ok(s)
    }

    /// Writes a new version and points `..data` at it in one rename.
    fn swap(&mut self, files: &[(&str, &[u8])]) -> Result<()> {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version))?;
        for (name, bytes) in files {
            std::fs::write(self.dir.join(&version).join(name), bytes)?;
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp)?;
        std::fs::rename(&tmp, self.dir.join("..data"))?;
        Ok(())
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// curl from `ns` over HTTPS trusting `ca`: curl's exit code and the HTTP status (0 when
/// there was none).
fn curl_tls(ns: &str, ca: &Path, url: &str, token: Option<&str>) -> Result<(i32, u16)> {
    let mut cmd = Topology::exec(ns, "curl");
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .arg(url);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.output().context("running curl")?;
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    Ok((out.status.code().unwrap_or(-1), status))
}

/// Subject and serial of the certificate the agent serves to a new connection, as
/// `openssl s_client` (verifying against `ca`) receives it.
fn served_cert(ns: &str, ca: &Path, addr: &str) -> Result<String> {
    let out = Topology::exec(ns, "openssl")
        .args([
            "s_client",
            "-connect",
            addr,
            "-servername",
            "capture-agent",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(ca)
        .stdin(std::process::Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "s_client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write as _;
    x509.stdin.take().context("stdin")?.write_all(&out.stdout)?;
    let out = x509.wait_with_output()?;
    ensure!(out.status.success(), "no certificate in s_client's output");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Polls `f` for up to 5 s (the agent looks at its files every second).
fn within_5s(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if f()? {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not happen within 5 s")
}

/// `capture agent` on `listen` in `ns` with the token and certificate from the Secret-like
/// directories.
fn start_tls_agent(
    ns: &str,
    listen: &str,
    work: &Path,
    tls: &SecretDir,
    token: &SecretDir,
) -> Result<CaptureRun> {
    let data = work.join("data").display().to_string();
    let (token, cert, key) = (
        token.path("token"),
        tls.path("tls.crt"),
        tls.path("tls.key"),
    );
    CaptureRun::start(
        ns,
        &[
            "agent",
            "--listen",
            listen,
            "--token-file",
            &token,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--data-dir",
            &data,
        ],
    )
}

/// /metrics over the same TLS (with the second token): the reloads of both files and the
/// failed handshakes (wrong CA, plain HTTP) are counted.
fn reloads_and_failures_are_counted(ns: &str, ca: &Path, url: &str) -> Result<()> {
    let out = Topology::exec(ns, "curl")
        .args(["-sS", "--cacert"])
        .arg(ca)
        .args(["-H", "Authorization: Bearer second-token", url])
        .output()?;
    let m = tests::agent::parse_metrics(&String::from_utf8_lossy(&out.stdout))?;
    for file in ["tls", "token"] {
        let ok = sample(
            &m,
            "capture_agent_file_reloads_total",
            &[("file", file), ("outcome", "ok")],
        );
        ensure!(ok >= Some(1.0), "{file} reloads: {ok:?}");
    }
    let failed = sample(&m, "capture_agent_tls_handshake_failures_total", &[]);
    ensure!(
        failed >= Some(2.0),
        "handshake failures (wrong CA, plain HTTP): {failed:?}"
    );
    Ok(())
}

#[test]
fn tls_with_a_test_ca_rotation_of_certificate_and_token_without_restart() -> Result<()> {
    let topo = Topology::new("tls")?;
    let work = tempfile::tempdir()?;
    let pki = work.path();
    let ca = make_ca(pki, "ca1")?;
    let wrong_ca = make_ca(pki, "ca2")?;
    let ip = topo.client_ip.clone();
    let san = format!("IP:{ip},DNS:capture-agent");
    let (crt1, key1) = make_server_cert(pki, "ca1", &san, "agent-v1", "0x1001")?;
    let (crt2, key2) = make_server_cert(pki, "ca1", &san, "agent-v2", "0x2002")?;
    let mut tls = SecretDir::new(pki.join("tls"), &[("tls.crt", &crt1), ("tls.key", &key1)])?;
    let mut token = SecretDir::new(pki.join("token"), &[("token", b"first-token\n")])?;
    let listen = format!("{ip}:9300");
    let agent = start_tls_agent(&topo.client_ns, &listen, pki, &tls, &token)?;
    let url = |path: &str| format!("https://{listen}{path}");
    // Called from the other host, across the veth pair.
    let ns = topo.server_ns.as_str();

    assert_eq!(
        curl_tls(ns, &ca, &url("/v1/recordings"), Some("first-token"))?,
        (0, 200)
    );
    assert_eq!(curl_tls(ns, &ca, &url("/v1/recordings"), None)?, (0, 401));
    assert_eq!(curl_tls(ns, &ca, &url("/healthz"), None)?, (0, 200));
    // Another CA: curl refuses the certificate (60), no HTTP exchange happens.
    assert_eq!(curl_tls(ns, &wrong_ca, &url("/healthz"), None)?, (60, 0));
    // Plain HTTP on the TLS port gets nothing.
    let plain = Topology::exec(ns, "curl")
        .args(["-sS", "-m", "5", &format!("http://{listen}/healthz")])
        .output()?;
    ensure!(
        !plain.status.success(),
        "plain HTTP answered on the TLS port"
    );

    let before = served_cert(ns, &ca, &listen)?;
    ensure!(
        before.contains("agent-v1") && before.contains("1001"),
        "{before}"
    );
    tls.swap(&[("tls.crt", &crt2), ("tls.key", &key2)])?;
    let took = within_5s("the new certificate", || {
        Ok(served_cert(ns, &ca, &listen)?.contains("agent-v2"))
    })?;
    let after = served_cert(ns, &ca, &listen)?;
    ensure!(after.contains("serial=2002"), "{after}");

    token.swap(&[("token", b"second-token\n")])?;
    within_5s("the new token", || {
        Ok(curl_tls(ns, &ca, &url("/metrics"), Some("second-token"))?.1 == 200)
    })?;
    assert_eq!(
        curl_tls(ns, &ca, &url("/metrics"), Some("first-token"))?,
        (0, 401)
    );

    reloads_and_failures_are_counted(ns, &ca, &url("/metrics"))?;
    let out = agent.stop(libc::SIGTERM)?;
    ensure!(out.status.success(), "{}", out.stderr.join("\n"));
    ensure!(
        out.stderr
            .iter()
            .any(|l| l.starts_with(&format!("agent listening on https://{listen}"))),
        "{}",
        out.stderr.join("\n")
    );
    eprintln!("new certificate served {took:?} after the swap");
    Ok(())
}

#[test]
fn plain_http_beyond_loopback_must_be_asked_for_and_says_what_it_exposes() -> Result<()> {
    let topo = Topology::new("pln")?;
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let token = data.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n"))?;
    let listen = format!("{}:9300", topo.client_ip);
    let token = token.display().to_string();
    let args = [
        "agent",
        "--listen",
        &listen,
        "--token-file",
        &token,
        "--data-dir",
        &dir,
    ];
    let out = topo
        .client(&capture_bin().to_string_lossy())
        .args(args)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "plain HTTP beyond loopback started: {stderr}"
    );
    ensure!(
        stderr.contains("--tls-cert") && stderr.contains("--insecure-plain-http"),
        "{stderr}"
    );

    let agent = tests::agent::start_agent(
        &topo.client_ns,
        &listen,
        data.path(),
        &["--data-dir", &dir],
        &[],
    )?;
    let api = Api {
        ns: &topo.server_ns,
        base: format!("http://{listen}"),
    };
    assert_eq!(api.raw("GET", "/healthz", None, None)?.0, 200);
    let out = agent.stop(libc::SIGTERM)?;
    let line = out
        .stderr
        .iter()
        .find(|l| l.starts_with("agent listening on http://"))
        .context("no listening line")?;
    ensure!(
        line.contains("WITHOUT TLS") && line.contains("clear text"),
        "{line}"
    );
    Ok(())
}
