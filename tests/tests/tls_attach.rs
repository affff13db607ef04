//! `--tls` and a library it cannot probe, in a test binary of its own so that no other TLS
//! test maps a libssl (and adds probes) while the probes are counted.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::run_ok;

#[test]
fn a_libssl_that_cannot_be_probed_keeps_no_probe_however_often_the_watcher_retries() -> Result<()> {
    // A library named like libssl with SSL_write but no SSL_read: capture attaches
    // SSL_write's probes, then fails on SSL_read. It must detach them again, or every look
    // of the watcher at the process (when it appears, then 1, 2 and 4 s later) leaves two
    // more probes on SSL_write and its calls are recorded twice.
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("half.c");
    std::fs::write(
        &source,
        "int SSL_write(void *ssl, const void *buf, int num) { return num; }\n",
    )?;
    let library = dir.path().join("libssl.so.3");
    run_ok(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-O0", "-o"])
            .arg(&library)
            .arg(&source),
    )?;
    let topo = Topology::new("tlsa")?;
    let run = CaptureRun::start(&topo.client_ns, &["messages", "--tls", "--port", "7445"])?;
    let objects = run.bpf_objects()?;
    let before = objects.perf_links()?;
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import ctypes, sys, time; ctypes.CDLL(sys.argv[1]); time.sleep(60)",
        ])
        .arg(&library)
        .spawn()?;
    std::thread::sleep(Duration::from_secs(6));
    let after = objects.perf_links();
    let _ = holder.kill();
    let _ = holder.wait();
    let after = after?;
    let out = run.stop(libc::SIGINT)?;
    ensure!(out.status.success(), "{}", out.stderr.join("\n"));
    let stderr = out.stderr.join("\n");
    let refusal = format!("attaching to {}: SSL_read", library.display());
    let tries = stderr.matches(&refusal).count();
    ensure!(
        tries >= 2,
        "the watcher tried the library {tries} times, expected at least 2: {stderr}"
    );
    ensure!(
        after == before,
        "{before} perf_event links before the library was mapped, {after} after {tries} \
         tries: {stderr}"
    );
    Ok(())
}
