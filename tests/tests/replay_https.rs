//! `capture replay --target https://...` end to end: plain HTTP (and h2c) traffic recorded
//! against nginx, replayed to nginx serving TLS with a certificate from a test CA made with the
//! openssl CLI. nginx's access log is the ground truth (method, URI, body length); the
//! summary says how the certificate was checked, and a handshake that fails is counted as
//! such.

use std::path::Path;

use anyhow::{Result, ensure};
use serde_json::Value;
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::{AccessLogEntry, Nginx, curl_h2c};
use tests::pki::{make_ca, make_server_cert};
use tests::replay::{
    assert_detail, get, json_count, log_from, replay, replay_refused, target, write_gor,
};
use tests::{multiset, run_ok};

const PLAIN: u16 = 8080;
const TLS: u16 = 8443;

/// What identifies a request in the access log: method, URI, body length.
fn key(e: &AccessLogEntry) -> (String, String, String) {
    (e.method.clone(), e.uri.clone(), e.content_length.clone())
}

fn https(topo: &Topology) -> String {
    format!("https://{}:{TLS}", topo.server_ip)
}

/// A CA `ca` and, signed by it, a certificate for `san` written as `CN.crt`/`CN.key` in `pki`.
fn ca_and_cert(pki: &Path, ca: &str, san: &str, cn: &str) -> Result<()> {
    make_ca(pki, ca)?;
    make_server_cert(pki, ca, san, cn, "0x1001")?;
    Ok(())
}

fn nginx_tls(topo: &Topology, pki: &Path, cn: &str, http2: bool) -> Result<Nginx> {
    let (cert, key) = (pki.join(format!("{cn}.crt")), pki.join(format!("{cn}.key")));
    Nginx::start_tls(&topo.server_ns, &[TLS], &cert, &key, http2)
}

fn failures(summary: &Value, kind: &str) -> u64 {
    summary["failures"][kind].as_u64().unwrap_or(0)
}

#[test]
fn recorded_http_replays_byte_exact_inside_tls_verified_refused_or_loudly_insecure() -> Result<()> {
    let topo = Topology::new("rtls")?;
    let pki = tempfile::tempdir()?;
    let pki = pki.path();
    ca_and_cert(pki, "ca", &format!("IP:{}", topo.server_ip), "server")?;
    make_ca(pki, "other")?;
    let (ca, other) = (pki.join("ca.crt"), pki.join("other.crt"));
    let (ca, other) = (ca.to_string_lossy(), other.to_string_lossy());

    // Record GETs on one keep-alive connection and a 1 MB POST, in plain HTTP.
    let plain = Nginx::start(&topo.server_ns, &[PLAIN])?;
    let data = tempfile::tempdir()?;
    let store = [
        "--data-dir".to_string(),
        data.path().display().to_string(),
        "--ring-size".to_string(),
        "32MiB".to_string(),
    ];
    let run = CaptureRun::record(&topo.client_ns, &topo.client_if, "plain", &store)?;
    let url = |path: &str| format!("{}{path}", target(&topo, PLAIN));
    let mut curl = topo.client("curl");
    curl.arg("-sS");
    for i in 0..5 {
        curl.args(["-o", "/dev/null", &url(&format!("/index.html?i={i}"))]);
    }
    run_ok(&mut curl)?;
    let body = data.path().join("body");
    std::fs::write(&body, vec![b'b'; 1 << 20])?;
    run_ok(topo.client("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "--data-binary",
        &format!("@{}", body.display()),
        &url("/upload?big=1"),
    ]))?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    run.stop_ok()?;
    let recorded = plain.access_log()?;
    assert_eq!(recorded.len(), 6);
    assert!(
        recorded
            .iter()
            .any(|e| e.content_length == (1 << 20).to_string())
    );
    drop(plain);

    // Verified against the CA: what reaches the TLS server is the recording.
    let nginx = nginx_tls(&topo, pki, "server", false)?;
    let d = data.path();
    let (ok, summary, stderr) = replay(
        &topo,
        d,
        &["plain", "--target", &https(&topo), "--ca-file", &ca],
    )?;
    assert!(ok, "{stderr}");
    assert_eq!(json_count(&summary, "completed"), 6, "{summary}");
    assert_eq!(json_count(&summary, "failed"), 0, "{summary}");
    assert_eq!(summary["statuses"]["200"].as_u64(), Some(6), "{summary}");
    assert_eq!(summary["tls"]["insecure"], Value::Bool(false), "{summary}");
    let log = log_from(&nginx, 0, 6)?;
    assert_eq!(
        multiset(log.iter().map(key)),
        multiset(recorded.iter().map(key))
    );
    // The GETs shared one connection, as recorded: session tickets did not make it look closed.
    assert_eq!(json_count(&summary, "connections"), 2, "{summary}");

    // Nothing to verify with: refused up front, naming both ways out, in one line.
    let refused = replay_refused(&topo, d, &["plain", "--target", &https(&topo)])?;
    let line = refused.trim();
    ensure!(
        line.contains("--ca-file") && line.contains("--insecure") && !line.contains('\n'),
        "{refused}"
    );

    // A CA that did not sign the certificate: every request fails the handshake.
    let (ok, summary, stderr) = replay(
        &topo,
        d,
        &["plain", "--target", &https(&topo), "--ca-file", &other],
    )?;
    assert!(!ok, "{stderr}");
    assert_eq!(failures(&summary, "tls_handshake"), 6, "{summary}");
    assert_eq!(json_count(&summary, "completed"), 0, "{summary}");
    assert!(stderr.contains("tls_handshake=6"), "{stderr}");
    // Which check failed, in rustls's words: the issuer is not the CA given.
    assert_detail(
        &summary,
        "tls_handshake",
        "invalid peer certificate: UnknownIssuer",
    );

    // --insecure against the same: through, and said loudly.
    let before = nginx.access_log()?.len();
    let (ok, summary, stderr) = replay(
        &topo,
        d,
        &["plain", "--target", &https(&topo), "--insecure"],
    )?;
    assert!(ok, "{stderr}");
    assert_eq!(json_count(&summary, "completed"), 6, "{summary}");
    assert_eq!(summary["tls"]["insecure"], Value::Bool(true), "{summary}");
    assert!(stderr.contains("INSECURE"), "{stderr}");
    assert_eq!(log_from(&nginx, before, 6)?.len(), 6);
    let text = topo
        .client(&tests::capture_bin().to_string_lossy())
        .args([
            "replay",
            "plain",
            "--target",
            &https(&topo),
            "--insecure",
            "--quiet",
            "--data-dir",
        ])
        .arg(d)
        .output()?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("tls: INSECURE"), "{text}");
    Ok(())
}

/// Bodies larger than the socket buffers, over a link slower than replay writes: the socket
/// is full when the last plaintext goes to TLS, and those last records must still leave.
/// (They used to wait in rustls's buffer, unflushed, until the response timeout; about one
/// upload in two hit it here, so eight make the check all but certain.)
#[test]
fn large_bodies_reach_the_tls_server_whole_over_a_slow_link() -> Result<()> {
    const BODY: usize = 2 << 20;
    const UPLOADS: u64 = 8;
    let topo = Topology::new("rslow")?;
    let pki = tempfile::tempdir()?;
    let pki = pki.path();
    ca_and_cert(pki, "ca", &format!("IP:{}", topo.server_ip), "server")?;
    let ca = pki.join("ca.crt").to_string_lossy().to_string();
    let nginx = nginx_tls(&topo, pki, "server", false)?;
    // Small send buffers in the client's namespace and 200 Mbit/s out of it: the socket is
    // full whenever replay writes.
    run_ok(
        topo.client("sysctl")
            .args(["-qw", "net.ipv4.tcp_wmem=4096 4096 4096"]),
    )?;
    let shape = format!(
        "qdisc add dev {} root tbf rate 200mbit burst 64kb latency 2s",
        topo.client_if
    );
    run_ok(topo.client("tc").args(shape.split(' ')))?;
    let data = tempfile::tempdir()?;
    let gor = data.path().join("uploads.gor");
    let body = "u".repeat(BODY);
    let upload = |i: u64| {
        let head = format!("POST /upload?slow={i} HTTP/1.1\r\nHost: origin.example\r\n");
        (i, format!("{head}Content-Length: {BODY}\r\n\r\n{body}"))
    };
    write_gor(&gor, &(0..UPLOADS).map(upload).collect::<Vec<_>>())?;
    let gor = gor.to_string_lossy().to_string();
    let args = [
        "--gor",
        &gor,
        "--target",
        &https(&topo),
        "--ca-file",
        &ca,
        "--timeout",
        "20s",
    ];
    let (ok, summary, stderr) = replay(&topo, data.path(), &args)?;
    assert!(ok, "{stderr}");
    assert_eq!(json_count(&summary, "completed"), UPLOADS, "{summary}");
    let log = log_from(&nginx, 0, UPLOADS as usize)?;
    assert_eq!(log.len(), UPLOADS as usize, "{log:?}");
    for e in &log {
        assert_eq!(
            (e.status, &e.content_length),
            (200, &BODY.to_string()),
            "{e:?}"
        );
        assert!(e.request_length >= BODY as u64, "{e:?}");
    }
    Ok(())
}

#[test]
fn the_host_flag_names_the_server_for_sni_and_verification() -> Result<()> {
    let topo = Topology::new("rsni")?;
    let pki = tempfile::tempdir()?;
    let pki = pki.path();
    // The certificate names name.test only, not the server's IP.
    ca_and_cert(pki, "ca", "DNS:name.test", "named")?;
    let ca = pki.join("ca.crt").to_string_lossy().to_string();
    let nginx = nginx_tls(&topo, pki, "named", false)?;
    let data = tempfile::tempdir()?;
    let gor = data.path().join("gets.gor");
    write_gor(
        &gor,
        &[
            (0, get("/index.html?sni=1", "")),
            (5, get("/index.html?sni=2", "")),
        ],
    )?;
    let gor = gor.to_string_lossy().to_string();
    let args = ["--gor", &gor, "--target", &https(&topo), "--ca-file", &ca];

    let (ok, summary, stderr) = replay(&topo, data.path(), &args)?;
    assert!(!ok, "the IP is not in the certificate: {stderr}");
    assert_eq!(failures(&summary, "tls_handshake"), 2, "{summary}");
    assert_detail(&summary, "tls_handshake", "certificate not valid for name");

    let mut named = args.to_vec();
    named.extend(["--host", "name.test:8443"]);
    let (ok, summary, stderr) = replay(&topo, data.path(), &named)?;
    assert!(ok, "{stderr}");
    assert_eq!(json_count(&summary, "completed"), 2, "{summary}");
    assert_eq!(summary["tls"]["server_name"], "name.test", "{summary}");
    let log = log_from(&nginx, 0, 2)?;
    assert!(
        log.iter()
            .all(|e| e.host == "name.test:8443" && e.status == 200),
        "{log:?}"
    );
    Ok(())
}

#[test]
fn recorded_h2c_replays_as_http2_inside_tls_and_a_server_without_h2_is_named() -> Result<()> {
    let topo = Topology::new("rh2s")?;
    let pki = tempfile::tempdir()?;
    let pki = pki.path();
    ca_and_cert(pki, "ca", &format!("IP:{}", topo.server_ip), "server")?;
    let ca = pki.join("ca.crt").to_string_lossy().to_string();

    let h2c = Nginx::start_h2c(&topo.server_ns, &[PLAIN])?;
    let data = tempfile::tempdir()?;
    let store = ["--data-dir".to_string(), data.path().display().to_string()];
    let run = CaptureRun::record(&topo.server_ns, &topo.server_if, "h2", &store)?;
    let url = |path: &str| format!("{}{path}", target(&topo, PLAIN));
    for path in ["/index.html?h=1", "/index.html?h=2", "/missing?h=3"] {
        curl_h2c(&topo, &url(path), &[])?;
    }
    let body = data.path().join("body");
    std::fs::write(&body, vec![b'p'; 70_000])?;
    let body = format!("@{}", body.display());
    curl_h2c(&topo, &url("/upload?h=4"), &["--data-binary", &body])?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    run.stop_ok()?;
    let recorded = h2c.access_log()?;
    assert_eq!(recorded.len(), 4);
    drop(h2c);

    let nginx = nginx_tls(&topo, pki, "server", true)?;
    let args = ["h2", "--target", &https(&topo), "--ca-file", &ca];
    let (ok, summary, stderr) = replay(&topo, data.path(), &args)?;
    assert!(ok, "{stderr}");
    assert_eq!(json_count(&summary, "completed"), 4, "{summary}\n{stderr}");
    assert_eq!(json_count(&summary, "status_mismatches"), 0, "{summary}");
    let log = log_from(&nginx, 0, 4)?;
    assert_eq!(
        multiset(log.iter().map(key)),
        multiset(recorded.iter().map(key))
    );
    drop(nginx);

    // The same to a TLS server that speaks HTTP/1 only: named as such, nothing sent.
    let _http1 = nginx_tls(&topo, pki, "server", false)?;
    let (ok, summary, stderr) = replay(&topo, data.path(), &args)?;
    assert!(!ok, "{stderr}");
    assert_eq!(failures(&summary, "tls_no_h2"), 4, "{summary}");
    Ok(())
}
