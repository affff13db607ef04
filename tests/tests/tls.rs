//! `--tls`: HTTPS captured as plaintext at OpenSSL's libssl with uprobes, no keys. nginx
//! serves TLS with a certificate from a test CA in one namespace; curl and wrk call it from
//! another. Both ends run on this kernel, so the same capture sees nginx's SSL calls
//! (server side) and curl's and wrk's (client side). nginx's access log is the ground truth.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use tests::capture::{CaptureRun, inspect};
use tests::netns::Topology;
use tests::nginx::AccessLogEntry;
use tests::tls::{
    BackgroundTls, Pki, assert_paired, curl, logged, messages_during, messages_during_with,
    requests_of, tls_peers, url,
};
use tests::{capture_bin, multiset, run_ok};

fn wrk(topo: &Topology, port: u16, seconds: u32, script: &Path) -> Result<()> {
    run_ok(
        topo.client("wrk")
            .args(["-t2", "-c16", &format!("-d{seconds}s"), "-s"])
            .arg(script)
            .arg(url(topo, port, "/")),
    )?;
    Ok(())
}

#[test]
fn server_side_and_client_side_capture_each_equal_nginxs_access_log() -> Result<()> {
    const PORT: u16 = 8443;
    let (topo, pki, nginx) = tls_peers("tlsm", &[PORT], false)?;
    let ca = &pki.ca;
    let work = tempfile::tempdir()?;
    let script = work.path().join("unique.lua");
    std::fs::write(&script, tests::WRK_UNIQUE_URIS_SCRIPT)?;

    // Both sides with reads and writes probed at OpenSSL's internal functions (this host's
    // libssl has them) and connections learnt from the sock tracepoints; then the
    // server side again at the exported SSL_read/SSL_write, and the client side (curl's
    // custom BIO, wrk's SSL_set_fd) with the socket syscall tracepoints instead.
    for (side, exported, syscalls) in [
        ("server", false, false),
        ("client", false, false),
        ("server", true, false),
        ("client", false, true),
    ] {
        let before = nginx.access_log()?.len();
        let mut options = vec!["--tls-side", side];
        if exported {
            options.push("--tls-exported-probes");
        }
        if syscalls {
            options.extend(["--tls-socket-hooks", "syscalls"]);
        }
        let (messages, stderr, _) = messages_during_with(&topo, &options, PORT, || {
            // Several requests on one keep-alive connection, then a POST, then wrk (-c16, 10 s, unique URIs).
            let mut args = vec![];
            let urls: Vec<String> = (0..4)
                .map(|i| url(&topo, PORT, &format!("/index.html?{side}={i}")))
                .collect();
            for u in &urls {
                args.extend(["-o", "/dev/null", u.as_str()]);
            }
            curl(&topo, ca, &args)?;
            curl(
                &topo,
                ca,
                &[
                    "--data-binary",
                    "posted",
                    &url(&topo, PORT, &format!("/upload?{side}")),
                ],
            )?;
            wrk(&topo, PORT, 10, &script)
        })?;
        let log = nginx.access_log()?;
        let log = &log[before..];
        ensure!(log.len() > 1000, "wrk ran: {} requests", log.len());
        assert_eq!(
            multiset(requests_of(&messages)),
            multiset(logged(log)),
            "{side} side: {}",
            stderr.join("\n")
        );
        assert_paired(&messages, 16)?;
        let all = stderr.join("\n");
        ensure!(all.contains("tls_calls_captured="), "{all}");
        // Other tests' processes may map other libssl builds meanwhile; every one here has
        // internal sites, two per library.
        let libraries = counter(&stderr, "tls_libraries")?;
        let sites = counter(&stderr, "tls_internal_sites")?;
        let expected = if exported { 0 } else { 2 * libraries };
        ensure!(
            sites == expected,
            "{side}, exported {exported}: {sites} internal sites, {libraries} libraries: {all}"
        );
        let sock_tracepoints = counter(&stderr, "tls_sock_tracepoints")?;
        let expected = if syscalls { 0 } else { 2 };
        ensure!(
            sock_tracepoints == expected,
            "{side}, syscalls {syscalls}: {sock_tracepoints} sock tracepoints: {all}"
        );
        for lost in [
            "tls_dropped_ring_full=0",
            "tls_unresolved_fd=0",
            "tls_discarded_calls=0",
        ] {
            ensure!(all.contains(lost), "{side}: {lost} expected in {all}");
        }
    }
    Ok(())
}

use tests::capture::run_with_data_dir as capture;

/// Counter `name` on the `counters:` line of capture's stderr.
fn counter(stderr: &[String], name: &str) -> Result<u64> {
    tests::capture::counters_in(stderr)?
        .get(name)
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no {name} in {}", stderr.join("\n")))
}

/// Every file under `dir`, read whole.
fn all_bytes_under(dir: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(all_bytes_under(&path)?);
        } else {
            out.extend(std::fs::read(&path)?);
        }
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_tls_recording_is_redacted_byte_exact_blind_to_other_ports_and_replays_to_https() -> Result<()>
{
    const PORT: u16 = 9443;
    const OTHER: u16 = 9444;
    const SECRET: &str = "Bearer s3cr3t-t0ken-never-stored";
    let topo = Topology::new("tlsr")?;
    let pki = Pki::new(&topo)?;
    let ca = &pki.ca;
    let data = tempfile::tempdir()?;
    let d = data.path().display().to_string();
    // Capture starts before nginx: the server process is one that started later.
    let run = CaptureRun::start(
        &topo.client_ns,
        &[
            "record",
            "--tls",
            "--tls-side",
            "server",
            "--port",
            "9443",
            "--name",
            "tlsrec",
            "--redact-header",
            "Authorization",
            "--data-dir",
            &d,
            "--ring-size",
            "64MiB",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let nginx = pki.nginx(&topo, &[PORT, OTHER], false)?;
    let auth = format!("Authorization: {SECRET}");
    for i in 0..3 {
        curl(
            &topo,
            ca,
            &[
                "-H",
                &auth,
                &url(&topo, PORT, &format!("/index.html?a={i}")),
            ],
        )?;
    }
    let body: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let body_file = data.path().join("body.bin");
    std::fs::write(&body_file, &body)?;
    let at_body = format!("@{}", body_file.display());
    curl(
        &topo,
        ca,
        &["--data-binary", &at_body, &url(&topo, PORT, "/upload")],
    )?;
    // Another TLS port of the same nginx: not recorded.
    for i in 0..3 {
        curl(
            &topo,
            ca,
            &[&url(&topo, OTHER, &format!("/index.html?other={i}"))],
        )?;
    }
    let stderr = run.stop_ok()?;
    ensure!(stderr.contains("tls:"), "{stderr}");

    let log = nginx.access_log()?;
    let on_port: Vec<AccessLogEntry> = log
        .iter()
        .filter(|e| !e.uri.contains("other="))
        .cloned()
        .collect();
    assert_eq!(log.len(), 7);
    let recorded = inspect("tlsrec", data.path())?;
    assert_eq!(multiset(requests_of(&recorded)), multiset(logged(&on_port)));
    assert_paired(&recorded, 0)?;
    ensure!(
        recorded
            .iter()
            .all(|m| m.request.as_ref().is_none_or(|r| !r.1.contains("other=")))
    );
    let show = capture(&["recordings", "show", "tlsrec", "--json"], data.path())?;
    ensure!(
        show.contains("live tls (server side)") && show.contains("headers redacted: authorization"),
        "{show}"
    );

    // Redacted before storage: the marker is there, no byte run of the token anywhere.
    let gor = data.path().join("tlsrec.gor");
    capture(
        &["export", "tlsrec", "--gor", &gor.to_string_lossy()],
        data.path(),
    )?;
    let exported = std::fs::read(&gor)?;
    ensure!(contains(&exported, b"Authorization: [redacted]"));
    std::fs::remove_file(&gor)?;
    let stored = all_bytes_under(data.path())?;
    ensure!(
        !contains(&stored, b"s3cr3t-t0ken"),
        "the token reached the data dir"
    );

    // The 5 MB body byte for byte.
    capture(
        &["export", "tlsrec", "--gor", &gor.to_string_lossy()],
        data.path(),
    )?;
    let file = std::fs::read(&gor)?;
    let after = tests::bytes_after_head(&file, b"POST /upload HTTP/1.1")?;
    assert_eq!(&after[..body.len()], &body[..]);
    assert_eq!(
        &after[body.len()..body.len() + 1],
        b"\n",
        "body longer than sent"
    );

    // Replayed to the HTTPS nginx, verified by the CA: the access log equals the recording.
    let before = nginx.access_log()?.len();
    let out = run_ok(
        topo.client(&capture_bin().to_string_lossy())
            .args([
                "replay",
                "tlsrec",
                "--target",
                &url(&topo, PORT, ""),
                "--ca-file",
                ca,
            ])
            .args(["--quiet", "--data-dir", &d]),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let log = nginx.access_log()?;
    let replayed = &log[before..];
    assert_eq!(
        multiset(replayed.iter().map(|e| (
            e.method.clone(),
            e.uri.clone(),
            e.content_length.clone()
        ))),
        multiset(on_port.iter().map(|e| (
            e.method.clone(),
            e.uri.clone(),
            e.content_length.clone()
        ))),
        "{text}"
    );
    ensure!(replayed.iter().all(|e| e.status == 200), "{replayed:?}");
    Ok(())
}

#[test]
fn stopping_by_ctrl_c_sigterm_or_sigkill_leaves_no_probe_attached() -> Result<()> {
    let topo = Topology::new("tlsk")?;
    // The sock tracepoints (2 raw tracepoint links), or the socket syscalls' (8 perf_event
    // links).
    for (signal, hooks, raw, syscalls) in [
        (libc::SIGINT, "auto", 2, 0),
        (libc::SIGTERM, "syscalls", 0, 8),
        (libc::SIGKILL, "auto", 2, 0),
    ] {
        let run = CaptureRun::start(
            &topo.client_ns,
            &[
                "messages",
                "--tls",
                "--port",
                "7443",
                "--tls-socket-hooks",
                hooks,
            ],
        )?;
        let objects = run.bpf_objects()?;
        // Per library: entry and return probes on the internal read and write functions
        // (this host's libssl has them) and SSL_do_handshake, SSL_set_fd and SSL_free.
        let links = objects.perf_links()?;
        ensure!(
            links >= 8 + syscalls,
            "{links} perf_event links while running with {hooks}"
        );
        let raw_links = objects.links_of_type("raw_tracepoint")?;
        ensure!(
            raw_links == raw,
            "{raw_links} raw tracepoint links while running with {hooks}"
        );
        let out = run.stop(signal)?;
        if signal != libc::SIGKILL {
            ensure!(out.status.success(), "{}", out.stderr.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
        let alive = objects.still_alive()?;
        ensure!(
            alive.is_empty(),
            "after signal {signal}, left behind: {alive:?}"
        );
        ensure!(
            objects.perf_links()? + objects.links_of_type("raw_tracepoint")? == 0,
            "after signal {signal}: probes left"
        );
    }
    Ok(())
}

#[test]
fn alpn_h2_streams_are_framed_as_http2_and_equal_the_access_log() -> Result<()> {
    const PORT: u16 = 8445;
    let (topo, pki, nginx) = tls_peers("tlsh", &[PORT], true)?;
    let ca = &pki.ca;
    let (messages, stderr, http2) = messages_during(&topo, "server", PORT, || {
        for i in 0..3 {
            curl(
                &topo,
                ca,
                &["--http2", &url(&topo, PORT, &format!("/index.html?h2={i}"))],
            )?;
        }
        run_ok(topo.client("h2load").args([
            "-n",
            "2000",
            "-c",
            "4",
            "-m",
            "8",
            &url(&topo, PORT, "/index.html"),
        ]))?;
        Ok(())
    })?;
    let log = nginx.access_log()?;
    ensure!(log.len() == 2003, "{} requests logged", log.len());
    ensure!(
        http2 == messages.len(),
        "ALPN chose h2: {http2} of {} say http2",
        messages.len()
    );
    assert_eq!(
        multiset(requests_of(&messages)),
        multiset(logged(&log)),
        "{}",
        stderr.join("\n")
    );
    assert_paired(&messages, 0)?;
    Ok(())
}

#[test]
fn a_library_in_a_containers_filesystem_mapped_after_capture_began_is_probed_and_recorded()
-> Result<()> {
    const PORT: u16 = 8446;
    let (topo, pki, nginx) = tls_peers("tlsl", &[PORT], false)?;
    let ca = &pki.ca;
    // A libssl that no process maps yet, in no library directory, and at a path that exists
    // only in the client's own mount namespace (as in a container's image): the watcher
    // finds it in that process's maps and opens it through /proc/PID/root.
    let copy = tempfile::tempdir()?;
    let system = std::fs::canonicalize("/usr/lib/x86_64-linux-gnu/libssl.so.3")?;
    std::fs::copy(&system, copy.path().join("libssl.so.3"))?;
    let mountpoint = tempfile::tempdir()?;
    let inside = mountpoint.path().display().to_string();
    // The shell runs for 2 s first, so the watcher first sees this pid with no libssl, as
    // it would a container entrypoint; then it execs Python, whose ssl module loads the
    // copy. Python waits for the watcher, then makes requests on one keep-alive connection.
    let script = format!(
        "import http.client, ssl, time\n\
         time.sleep(3)\n\
         c = http.client.HTTPSConnection('{ip}', {PORT}, context=ssl.create_default_context(cafile='{ca}'))\n\
         for i in range(5):\n    c.request('GET', f'/index.html?late={{i}}')\n    c.getresponse().read()\n",
        ip = topo.server_ip
    );
    let shell = format!(
        "mount --bind {} {inside} && sleep 2 && LD_LIBRARY_PATH={inside} exec python3 -c \"$0\"",
        copy.path().display()
    );
    let (messages, stderr, _) = messages_during(&topo, "client", PORT, || {
        run_ok(
            topo.client("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c", &shell])
                .arg(&script),
        )?;
        Ok(())
    })?;
    let stderr = stderr.join("\n");
    let probed = stderr
        .lines()
        .find_map(|l| l.strip_prefix("tls libraries probed: "))
        .unwrap_or_default();
    ensure!(
        probed
            .split(", ")
            .any(|p| p.starts_with("/proc/") && p.ends_with(&format!("/root{inside}/libssl.so.3"))),
        "the copy was probed through its process's root: {stderr}"
    );
    let log = nginx.access_log()?;
    assert_eq!(log.len(), 5);
    assert_eq!(
        multiset(requests_of(&messages)),
        multiset(logged(&log)),
        "{stderr}"
    );
    assert_paired(&messages, 0)?;
    Ok(())
}

#[test]
fn openssl_3_5_as_a_python_wheel_bundles_it_is_probed_at_its_internal_functions_and_recorded()
-> Result<()> {
    const PORT: u16 = 8449;
    let (topo, pki, nginx) = tls_peers("tlsw", &[PORT], false)?;
    let ca = &pki.ca;
    // psycopg2-binary's wheel bundles OpenSSL 3.5 as auditwheel names it
    // (libssl-HASH.so.3, libcrypto-HASH.so.3). Python's ssl module loads it through
    // libssl.so.3 and libcrypto.so.3 links, so its maps name the wheel's files.
    let wheel_libs = run_ok(Command::new("python3").args([
        "-c",
        "import os, psycopg2; print(os.path.realpath(os.path.join(os.path.dirname(psycopg2.__file__), '..', 'psycopg2_binary.libs')))",
    ]))?;
    let wheel_libs = std::path::PathBuf::from(String::from_utf8(wheel_libs.stdout)?.trim());
    let bundled = |prefix: &str| -> Result<std::path::PathBuf> {
        std::fs::read_dir(&wheel_libs)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .ok_or_else(|| anyhow::anyhow!("no {prefix}* in {}", wheel_libs.display()))
    };
    let (libssl, libcrypto) = (bundled("libssl-")?, bundled("libcrypto-")?);
    // What the probes will find there: the 3.2-on write form, whose byte count is the
    // fifth argument (the host's OpenSSL 3.0 has the four-argument one).
    let sites = capture_user::tls::sites::internal_sites(&std::fs::read(&libssl)?);
    ensure!(
        sites.read.is_some()
            && sites.write.map(|w| w.call)
                == Some(capture_common::tls::TlsCall::WriteInternalFlags),
        "{sites:?}"
    );
    let links = tempfile::tempdir()?;
    std::os::unix::fs::symlink(&libssl, links.path().join("libssl.so.3"))?;
    std::os::unix::fs::symlink(&libcrypto, links.path().join("libcrypto.so.3"))?;
    // The process starts after capture, so the watcher finds the library; it waits for
    // that, prints its OpenSSL's version, then POSTs on one keep-alive connection.
    let script = format!(
        "import http.client, ssl, time\n\
         time.sleep(3)\n\
         print(ssl.OPENSSL_VERSION)\n\
         c = http.client.HTTPSConnection('{ip}', {PORT}, context=ssl.create_default_context(cafile='{ca}'))\n\
         for i in range(4):\n    c.request('POST', f'/upload?wheel={{i}}', body=b'w' * (1000 + i))\n    c.getresponse().read()\n",
        ip = topo.server_ip
    );
    let mut version = String::new();
    let (messages, stderr, _) = messages_during(&topo, "client", PORT, || {
        let out = run_ok(
            topo.client("python3")
                .env("LD_LIBRARY_PATH", links.path())
                .args(["-c", &script]),
        )?;
        version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(())
    })?;
    ensure!(version.starts_with("OpenSSL 3.5"), "Python ran {version:?}");
    let libraries = counter(&stderr, "tls_libraries")?;
    let sites = counter(&stderr, "tls_internal_sites")?;
    let stderr = stderr.join("\n");
    ensure!(
        stderr.contains(&format!("{}", libssl.display())),
        "the wheel's libssl was probed: {stderr}"
    );
    // The host's libssl and the wheel's (and any other test's meanwhile): reads and writes
    // at internal functions in every one.
    ensure!(libraries >= 2, "{stderr}");
    ensure!(sites == 2 * libraries, "{stderr}");
    let log = nginx.access_log()?;
    assert_eq!(log.len(), 4);
    assert_eq!(
        multiset(requests_of(&messages)),
        multiset(logged(&log)),
        "{stderr}"
    );
    assert_paired(&messages, 0)?;
    Ok(())
}

#[test]
fn a_redacted_tls_recording_keeps_the_token_out_of_the_kafka_topic() -> Result<()> {
    const PORT: u16 = 8447;
    const TOKEN: &str = "k4fka-t0ken-never-stored";
    let (topo, pki, nginx) = tls_peers("tlsk2", &[PORT], false)?;
    let ca = &pki.ca;
    let broker = tests::broker::Tansu::start_in(&topo.client_ns)?;
    let bootstrap = broker.bootstrap();
    let port = PORT.to_string();
    let run = CaptureRun::start(
        &topo.client_ns,
        &[
            "record",
            "--tls",
            "--tls-side",
            "server",
            "--port",
            &port,
            "--name",
            "ktls",
            "--redact-header",
            "Authorization",
            "--kafka",
            &bootstrap,
            "--topic",
            "tlssecrets",
        ],
    )?;
    let auth = format!("Authorization: Bearer {TOKEN}");
    for i in 0..4 {
        curl(
            &topo,
            ca,
            &[
                "-H",
                &auth,
                &url(&topo, PORT, &format!("/index.html?k={i}")),
            ],
        )?;
    }
    run.stop_ok()?;
    assert_eq!(nginx.access_log()?.len(), 4);
    let dumped = tests::broker::dump_topic(&topo.client_ns, &bootstrap, "tlssecrets")?;
    ensure!(
        contains(&dumped, b"Authorization: [redacted]"),
        "the marker is stored"
    );
    ensure!(
        contains(&dumped, b"/index.html?k=3"),
        "the requests are stored"
    );
    ensure!(
        !contains(&dumped, TOKEN.as_bytes()),
        "the token reached the topic"
    );
    Ok(())
}

#[test]
fn the_agent_records_tls_when_asked_and_refuses_tls_with_interfaces() -> Result<()> {
    const PORT: u16 = 8448;
    let (topo, pki, nginx) = tls_peers("tlsa", &[PORT], false)?;
    let ca = &pki.ca;
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let _agent = tests::agent::start_agent(
        &topo.client_ns,
        "127.0.0.1:9790",
        data.path(),
        &["--data-dir", &dir],
        &[],
    )?;
    let api = tests::agent::Api {
        ns: &topo.client_ns,
        base: "http://127.0.0.1:9790".to_string(),
    };
    let both = serde_json::json!({"name": "x", "tls": "server", "interfaces": [topo.client_if], "ports": [PORT]});
    let (status, answer) = api.call(
        "POST",
        "/v1/recordings",
        Some(&both.to_string()),
        Some(tests::agent::TOKEN),
    )?;
    ensure!(
        status == 400 && answer.to_string().contains("leave empty with tls"),
        "{status} {answer}"
    );

    // Scoped to the serving processes: nginx alone is probed.
    let body = serde_json::json!({"name": "agtls", "tls": "server", "tls_scope": "servers", "ports": [PORT]});
    let started = api.ok("POST", "/v1/recordings", Some(&body.to_string()))?;
    assert_eq!(started["state"], "recording");
    for i in 0..3 {
        curl(
            &topo,
            ca,
            &[&url(&topo, PORT, &format!("/index.html?agent={i}"))],
        )?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = api.ok("GET", "/v1/recordings/agtls", None)?;
        if v["live"]["messages_written"] == 6 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "6 messages never written: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stopped = api.ok("POST", "/v1/recordings/agtls/stop", None)?;
    assert_eq!(stopped["state"], "complete", "{stopped}");
    assert_eq!(stopped["messages"], 6, "{stopped}");
    let recorded = inspect("agtls", data.path())?;
    assert_eq!(
        multiset(requests_of(&recorded)),
        multiset(logged(&nginx.access_log()?))
    );
    Ok(())
}

#[test]
fn a_server_on_the_port_without_libssl_is_named_as_not_captured() -> Result<()> {
    let topo = Topology::new("tlsu")?;
    // A listener that maps no libssl, as a Go or Envoy server with TLS linked in would be.
    let mut listener = topo
        .server("python3")
        .args([
            "-c",
            "import socket, time\n\
             s = socket.socket(); s.bind(('0.0.0.0', 7444)); s.listen()\n\
             print('listening', flush=True); time.sleep(60)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let stdout = listener
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let run = CaptureRun::start(&topo.client_ns, &["messages", "--tls", "--port", "7444"]);
    let out = run.and_then(|r| r.stop(libc::SIGINT));
    let _ = listener.kill();
    let _ = listener.wait();
    let out = out?;
    let stderr = out.stderr.join("\n");
    ensure!(out.status.success(), "{stderr}");
    let pid = listener.id();
    ensure!(
        stderr.contains(&format!("pid {pid} (python3) on port 7444"))
            && stderr.contains("not captured"),
        "{stderr}"
    );
    Ok(())
}

/// Polls `links` (perf_event links of a capture) until it equals `want`, for up to 10 s;
/// the last count.
fn links_reach(objects: &tests::capture::BpfObjects, want: usize) -> Result<usize> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = objects.perf_links()?;
        if now == want || std::time::Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scoped_to_servers_only_the_processes_serving_the_port_are_probed_as_they_come_and_go()
-> Result<()> {
    const PORT: u16 = 9643;
    const LATER: u16 = 9644;
    let (topo, pki, nginx) = tls_peers("tlss", &[PORT], false)?;
    let ca = &pki.ca;
    // The node's other TLS users: a TLS client and server on a port not captured.
    let _background = BackgroundTls::start(&topo, &pki, 9650)?;
    let get = |port: u16, tag: &str| -> Result<()> {
        let urls: Vec<String> = (0..3)
            .map(|i| url(&topo, port, &format!("/index.html?{tag}={i}")))
            .collect();
        let mut args = vec![];
        for u in &urls {
            args.extend(["-o", "/dev/null", u.as_str()]);
        }
        curl(&topo, ca, &args)
    };

    // The default scope, for contrast: every process mapping libssl traps, so the
    // background loop's calls reach the probes (on a port not captured).
    let (_, stderr, _) = messages_during(&topo, "server", PORT, || {
        get(PORT, "all")?;
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    })?;
    let other = counter(&stderr, "tls_other_ports")?;
    ensure!(
        other > 100,
        "{other} calls on other ports: {}",
        stderr.join("\n")
    );
    ensure!(counter(&stderr, "tls_probed_processes")? == 0);

    // Scoped to the servers: only nginx is probed.
    let before = nginx.access_log()?.len();
    let (port, later_port) = (PORT.to_string(), LATER.to_string());
    let run = CaptureRun::start(
        &topo.client_ns,
        &[
            "messages",
            "--tls",
            "--tls-side",
            "server",
            "--tls-scope",
            "servers",
            "--port",
            &port,
            "--port",
            &later_port,
            "--ring-size",
            "64MiB",
        ],
    )?;
    let objects = run.bpf_objects()?;
    // One process's probes (reads, writes, handshake, SSL_set_fd, SSL_free on this host's
    // libssl); the connection tracepoints are raw tracepoints, not perf_event links.
    let one = objects.perf_links()?;
    ensure!(one >= 8, "{one} perf_event links for nginx");
    get(PORT, "scoped")?;
    let work = tempfile::tempdir()?;
    let script = work.path().join("unique.lua");
    std::fs::write(&script, tests::WRK_UNIQUE_URIS_SCRIPT)?;
    wrk(&topo, PORT, 3, &script)?;

    // A server that starts while capture runs is probed once the watcher sees it listen,
    // and its probes go when it exits.
    let later = pki.nginx(&topo, &[LATER], false)?;
    let both = links_reach(&objects, 2 * one)?;
    ensure!(
        both == 2 * one,
        "{both} links once the second server listens"
    );
    get(LATER, "later")?;
    let later_log = later.access_log()?;
    ensure!(later_log.len() == 3, "{later_log:?}");
    drop(later);
    let after = links_reach(&objects, one)?;
    ensure!(after == one, "{after} links once the second server exited");

    let (messages, stderr, _) = tests::tls::messages_of(run)?;
    let all = stderr.join("\n");
    let log = nginx.access_log()?;
    ensure!(log.len() - before > 500, "wrk ran: {} requests", log.len());
    let mut expected = logged(&log[before..]);
    expected.extend(logged(&later_log));
    assert_eq!(
        multiset(requests_of(&messages)),
        multiset(expected),
        "{all}"
    );
    assert_paired(&messages, 16)?;
    // No call of another process reached the probes: every call was nginx's, on the port.
    let calls = counter(&stderr, "tls_calls")?;
    ensure!(
        calls > 0 && calls == counter(&stderr, "tls_calls_matched")?,
        "{all}"
    );
    ensure!(counter(&stderr, "tls_other_ports")? == 0, "{all}");
    ensure!(counter(&stderr, "tls_probed_processes")? == 1, "{all}");
    ensure!(all.contains("from 1 serving process ("), "{all}");

    // The scope needs the server side, and says so in one line.
    let out = topo
        .client(&capture_bin().to_string_lossy())
        .args([
            "messages",
            "--tls",
            "--tls-scope",
            "servers",
            "--port",
            &port,
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && text.contains("--tls-side server")
            && text.trim().lines().count() == 1,
        "{text}"
    );
    Ok(())
}
