//! Real captures made by others (Zeek's HTTP test traces in ../shared/pcaps/zeek-http):
//! `capture messages --pcap` must list the same requests and response codes as tshark, in the
//! same order; the deliberately broken traces must not crash and must report their anomalies
//! as counted drops or incomplete messages.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use tests::{capture_bin, run_ok, zeek_pcaps_dir};

/// What `capture messages --pcap` printed.
#[derive(Debug)]
struct Listing {
    requests: Requests,
    /// (status, incomplete)
    responses: Vec<(u16, bool)>,
    incomplete_requests: usize,
    counters: HashMap<String, u64>,
}

fn capture_listing(file: &Path) -> Result<Listing> {
    let out = run_ok(
        Command::new(capture_bin())
            .arg("messages")
            .arg("--pcap")
            .arg(file),
    )?;
    let mut listing = Listing {
        requests: Vec::new(),
        responses: Vec::new(),
        incomplete_requests: 0,
        counters: HashMap::new(),
    };
    for line in String::from_utf8(out.stdout)?.lines() {
        // TIME conn=N id=N SRC > DST request METHOD URI body=N [incomplete]
        // TIME conn=N id=N SRC > DST response STATUS [to=N] body=N [incomplete]
        let (head, tail) = line.rsplit_once(" body=").context("no body= in line")?;
        let incomplete = tail.ends_with(" incomplete");
        let fields: Vec<&str> = head.splitn(7, ' ').collect();
        ensure!(fields.len() == 7, "unexpected line {line:?}");
        let (kind, rest) = fields[6].split_once(' ').context("no kind")?;
        match kind {
            "request" => {
                let (method, uri) = rest.split_once(' ').unwrap_or((rest, ""));
                listing.requests.push((method.to_string(), uri.to_string()));
                listing.incomplete_requests += usize::from(incomplete);
            }
            "response" => {
                let status = rest.split(' ').next().unwrap_or("").parse()?;
                listing.responses.push((status, incomplete));
            }
            other => anyhow::bail!("unknown kind {other} in {line:?}"),
        }
    }
    let stderr = String::from_utf8(out.stderr)?;
    let counters = stderr
        .lines()
        .find_map(|l| l.strip_prefix("counters: "))
        .context("no counters line")?;
    for pair in counters.split_whitespace() {
        let (k, v) = pair.split_once('=').context("counter")?;
        listing.counters.insert(k.to_string(), v.parse()?);
    }
    Ok(listing)
}

/// (method, URI) of each request, in order.
type Requests = Vec<(String, String)>;

/// tshark's (requests, response codes) for a file (gunzipped first when needed).
fn tshark_listing(file: &Path) -> Result<(Requests, Vec<u16>)> {
    let dir = tempfile::tempdir()?;
    let readable = if file.extension().is_some_and(|e| e == "gz") {
        let plain = dir.path().join("trace.pcap");
        let out = run_ok(Command::new("gzip").arg("-dc").arg(file))?;
        std::fs::write(&plain, out.stdout)?;
        plain
    } else {
        file.to_path_buf()
    };
    let fields = |filter: &str, fields: &[&str]| -> Result<Vec<String>> {
        let mut cmd = Command::new("tshark");
        cmd.arg("-r")
            .arg(&readable)
            .args(["-Y", filter, "-T", "fields"]);
        for f in fields {
            cmd.args(["-e", f]);
        }
        Ok(String::from_utf8(run_ok(&mut cmd)?.stdout)?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    };
    let requests = fields("http.request", &["http.request.method", "http.request.uri"])?
        .into_iter()
        .map(|l| {
            let (m, u) = l.split_once('\t').unwrap_or((&l, ""));
            (m.to_string(), u.to_string())
        })
        .collect();
    let codes = fields("http.response", &["http.response.code"])?
        .iter()
        .map(|c| c.parse().context("response code"))
        .collect::<Result<_>>()?;
    Ok((requests, codes))
}

fn trace(name: &str) -> std::path::PathBuf {
    zeek_pcaps_dir().join(name)
}

/// Traces where capture and tshark must agree exactly (requests in order, codes in order).
const AGREEING: &[&str] = &[
    "100-continue.pcap",
    "byteranges.pcap",
    "content-length-overflow.pcap",
    "docker-http-upgrade.pcap",
    "get-without-fins.pcap",
    "get.pcap",
    "get_nosyn.pcap",
    "http-post-large.pcap",
    "http_large_req_8001.pcap",
    "m57-long-49583-80.pcap",
    "methods.pcap",
    "no-uri.pcap",
    "pipelined-requests.pcap",
    "smuggle-http-request.pcap",
    "websocket.pcap",
    "cooper-grill-dvwa.pcapng",
    "1000-requests-one-dropped-response.pcap.gz",
];

#[test]
fn every_trace_in_the_folder_is_covered() -> Result<()> {
    let mut covered: Vec<&str> = AGREEING.to_vec();
    covered.push("entity_gap.pcap");
    for entry in std::fs::read_dir(zeek_pcaps_dir())? {
        let name = entry?.file_name().to_string_lossy().to_string();
        if name.ends_with(".md") {
            continue;
        }
        ensure!(
            covered.contains(&name.as_str()),
            "{name} is not covered by a test"
        );
    }
    Ok(())
}

#[test]
fn requests_and_response_codes_equal_tsharks() -> Result<()> {
    for name in AGREEING {
        let ours = capture_listing(&trace(name)).with_context(|| name.to_string())?;
        let (requests, codes) = tshark_listing(&trace(name))?;
        assert!(!requests.is_empty(), "{name}: tshark found no requests");
        assert_eq!(ours.requests, requests, "{name}: requests differ");
        let our_codes: Vec<u16> = ours.responses.iter().map(|r| r.0).collect();
        assert_eq!(our_codes, codes, "{name}: response codes differ");
    }
    Ok(())
}

#[test]
fn entity_gap_reports_the_gap_and_an_incomplete_response_where_tshark_gives_up() -> Result<()> {
    let ours = capture_listing(&trace("entity_gap.pcap"))?;
    let (requests, codes) = tshark_listing(&trace("entity_gap.pcap"))?;
    assert_eq!(ours.requests, requests);
    // tshark cannot reassemble the response across the hole and lists none; capture keeps
    // the bytes it has, marked incomplete, and counts the gap.
    assert!(codes.is_empty());
    assert_eq!(ours.responses, vec![(200, true)]);
    assert_eq!(ours.counters["gaps"], 1);
    assert_eq!(ours.counters["gap_bytes"], 1448);
    assert_eq!(ours.counters["incomplete_messages"], 1);
    Ok(())
}

#[test]
fn broken_traces_report_their_anomalies_as_counters_or_incomplete_messages() -> Result<()> {
    // No SYN: the connection is picked up midstream, yet both messages are whole.
    let c = capture_listing(&trace("get_nosyn.pcap"))?;
    assert_eq!(c.counters["connections_midstream"], 1);
    assert_eq!(c.responses, vec![(200, false)]);
    // No FIN: the response still ends by its length; the connection closes at end of input.
    let c = capture_listing(&trace("get-without-fins.pcap"))?;
    assert_eq!(c.responses, vec![(200, false)]);
    assert_eq!(c.counters["incomplete_messages"], 0);
    // Content-Length of 2.2 GB with 100 bytes sent: the response is incomplete, not invented.
    let c = capture_listing(&trace("content-length-overflow.pcap"))?;
    assert_eq!(c.responses, vec![(200, true)]);
    assert_eq!(c.counters["incomplete_messages"], 1);
    // 1000 pipelined requests, one response lost from the capture: a counted gap, 999 responses.
    let c = capture_listing(&trace("1000-requests-one-dropped-response.pcap.gz"))?;
    assert_eq!(c.requests.len(), 1000);
    assert_eq!(c.responses.len(), 999);
    assert_eq!(c.counters["gaps"], 1);
    // Upgrades stop the framing, and what follows is counted, not parsed as HTTP.
    for name in ["websocket.pcap", "docker-http-upgrade.pcap"] {
        let c = capture_listing(&trace(name))?;
        assert_eq!(c.counters["upgrades"], 1, "{name}");
        assert!(c.counters["tunnel_bytes_ignored"] > 0, "{name}");
    }
    // Malformed request lines that the server answered are kept, and counted.
    let c = capture_listing(&trace("methods.pcap"))?;
    assert!(c.counters["lenient_heads"] > 0);
    // Non-IP frames in the pcapng are counted by reason.
    let c = capture_listing(&trace("cooper-grill-dvwa.pcapng"))?;
    assert_eq!(c.counters["decode_error_not_ip"], 16);
    Ok(())
}

#[test]
fn truncated_and_garbage_files_fail_with_one_clear_line_after_printing_what_was_read() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let full = std::fs::read(trace("get.pcap"))?;
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &full[..full.len() - 100])?;
    let out = Command::new(capture_bin())
        .args(["messages", "--pcap"])
        .arg(&cut)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains("cut.pcap") && error[0].contains("truncated"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("request GET /download/CHANGES.bro-aux.txt")
    );

    let junk = dir.path().join("junk.pcap");
    std::fs::write(&junk, b"this is not a capture file")?;
    let out = Command::new(capture_bin())
        .args(["messages", "--pcap"])
        .arg(&junk)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not a pcap or pcapng file"), "{stderr}");
    Ok(())
}
