//! nginx as the real HTTP peer: started in a namespace with its own config, docroot and
//! access log in a temporary directory, stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Topology;

/// A running nginx.
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

/// One access log line, in the format this helper configures.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLogEntry {
    pub method: String,
    pub uri: String,
    pub status: u16,
    /// Request length in bytes (request line, headers and body).
    pub request_length: u64,
    /// Response body bytes sent.
    pub body_bytes_sent: u64,
    /// When nginx finished the request (seconds since the epoch, ms resolution).
    pub msec: f64,
    /// The Host header as received ("" when absent).
    pub host: String,
    /// The X-Replay header ("" when absent), for rewrite tests.
    pub x_replay: String,
    /// The X-Drop-Me header ("" when absent), for rewrite tests.
    pub x_drop_me: String,
    /// The X-Copy header ("" when absent), for `replay --copies --copy-header X-Copy`.
    pub x_copy: String,
    /// The request body, for the proxied `POST /upload` when it fit in memory (1 MiB);
    /// "" otherwise. JSON escapes are undone.
    pub request_body: String,
    /// The Content-Length request header ("" when absent).
    pub content_length: String,
    /// The Authorization request header ("" when absent), for redaction tests.
    pub authorization: String,
}

impl Nginx {
    /// Starts nginx in namespace `ns` listening on `ports` (IPv4 and IPv6). Serves files
    /// from its docroot (see [`Nginx::docroot`]); `POST /upload` accepts bodies up to 64 MiB
    /// and answers 200 after reading them.
    pub fn start(ns: &str, ports: &[u16]) -> Result<Self> {
        Self::start_with(ns, ports, "")
    }

    /// As [`Nginx::start`], with `server_extra` added to the server block (e.g. gzip
    /// settings, a default type).
    pub fn start_with(ns: &str, ports: &[u16], server_extra: &str) -> Result<Self> {
        Self::start_listening(ns, ports, "", server_extra)
    }

    /// As [`Nginx::start`], serving HTTP/2 in clear text (h2c with prior knowledge: nginx
    /// 1.22 has no `Upgrade: h2c`) on `ports`.
    pub fn start_h2c(ns: &str, ports: &[u16]) -> Result<Self> {
        Self::start_listening(ns, ports, " http2", "")
    }

    /// As [`Nginx::start`], serving HTTPS (TLS 1.2 and 1.3) on `ports` with the PEM
    /// certificate chain `cert` and its key `key`, for every server name (the default
    /// server); with `http2`, HTTP/2 by ALPN as well as HTTP/1.1.
    pub fn start_tls(
        ns: &str,
        ports: &[u16],
        cert: &Path,
        key: &Path,
        http2: bool,
    ) -> Result<Self> {
        let listen = if http2 { " ssl http2" } else { " ssl" };
        let tls = format!(
            "ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;",
            cert.display(),
            key.display()
        );
        Self::start_listening(ns, ports, listen, &tls)
    }

    /// Starts nginx with `listen_params` after each listen's port.
    fn start_listening(
        ns: &str,
        ports: &[u16],
        listen_params: &str,
        server_extra: &str,
    ) -> Result<Self> {
        let dir = tempfile::tempdir().context("creating nginx temp dir")?;
        let root = dir.path().join("www");
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), "hello from nginx\n")?;
        let listens: String = ports
            .iter()
            .map(|p| format!("listen {p}{listen_params}; listen [::]:{p}{listen_params};\n"))
            .collect();
        let d = dir.path().display();
        let conf = format!(
            r#"
daemon off;
master_process off;
worker_processes 1;
user root;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    log_format capture escape=json '$request_method\t$request_uri\t$status\t$request_length\t$body_bytes_sent\t$msec\t$http_host\t$http_x_replay\t$http_x_drop_me\t$http_x_copy\t$request_body\t$content_length\t$http_authorization';
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    client_max_body_size 64m;
    server {{
        {listens}
        root {root};
        access_log {d}/access.log capture;
        {server_extra}
        location = /upload {{
            # nginx reads the whole body before proxying (request buffering), so every byte
            # crosses the wire before the answer; the sink answers 200.
            client_max_body_size 64m;
            client_body_buffer_size 1m;
            proxy_pass http://127.0.0.1:{sink};
        }}
    }}
    server {{
        listen 127.0.0.1:{sink};
        access_log off;
        location / {{ return 200 "ok\n"; }}
    }}
}}
"#,
            root = root.display(),
            // The upload sink's port, apart for each nginx a namespace runs.
            sink = 19000 + ports.first().copied().unwrap_or(0) % 1000,
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Topology::exec(ns, "nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nginx (installed by `cargo xtask setup`)")?;
        let nginx = Nginx { child, dir };
        nginx.wait_listening(ns, ports)?;
        Ok(nginx)
    }

    /// Directory nginx serves files from.
    pub fn docroot(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    fn wait_listening(&self, ns: &str, ports: &[u16]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Topology::exec(ns, "ss").args(["-Htln"]).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            if ports.iter().all(|p| text.contains(&format!(":{p} "))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
                bail!("nginx did not listen on {ports:?} within 10 s; error.log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Parses the access log written so far.
    pub fn access_log(&self) -> Result<Vec<AccessLogEntry>> {
        parse_access_log(&self.dir.path().join("access.log"))
    }
}

fn parse_access_log(path: &Path) -> Result<Vec<AccessLogEntry>> {
    // Lossy: a logged binary request body (escape=json leaves bytes over 0x7f as they are)
    // must not make the whole log unreadable.
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // nginx writes a long line (a logged 1 MB body) in several pieces: a line without its
    // newline is still being written, so it is left for the next read.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| {
            // Tabs inside values are escaped (escape=json), so splitting on tabs is exact.
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 13 {
                bail!("unexpected access log line {line:?}");
            }
            Ok(AccessLogEntry {
                method: unescape_json(f[0]),
                uri: unescape_json(f[1]),
                status: f[2].parse()?,
                request_length: f[3].parse()?,
                body_bytes_sent: f[4].parse()?,
                msec: f[5].parse()?,
                host: unescape_json(f[6]),
                x_replay: unescape_json(f[7]),
                x_drop_me: unescape_json(f[8]),
                x_copy: unescape_json(f[9]),
                request_body: unescape_json(f[10]),
                content_length: unescape_json(f[11]),
                authorization: unescape_json(f[12]),
            })
        })
        .collect()
}

/// Undoes nginx's `escape=json` (\\", \\\\, \\n, \\r, \\t, \\uXXXX).
fn unescape_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    out.push(ch);
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request with `curl --http2-prior-knowledge ARGS URL` from `topo`'s client (the body
/// is discarded). One URL per call: curl 7.88 fails the second request of a prior-knowledge
/// connection ("Error in the HTTP2 framing layer").
pub fn curl_h2c(topo: &Topology, url: &str, args: &[&str]) -> Result<()> {
    crate::run_ok(
        topo.client("curl")
            .args(["-sS", "--http2-prior-knowledge", "-o", "/dev/null"])
            .args(args)
            .arg(url),
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_nginx_is_still_writing_is_left_for_the_next_read() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("access.log");
        let line = "GET\t/a\t200\t10\t5\t1.000\th\t\t\t\t\t\t\n";
        std::fs::write(&path, format!("{line}POST\t/upload\t200\t1048744\t3\t1.0"))?;
        let log = parse_access_log(&path)?;
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].uri, "/a");
        std::fs::write(&path, format!("{line}{line}"))?;
        assert_eq!(parse_access_log(&path)?.len(), 2);
        Ok(())
    }
}
