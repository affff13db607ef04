//! `capture agent`: the HTTP control API (see [`crate::agent`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::agent::{AgentConfig, ServerLimits, open_token_file, serve, tls};
use crate::cmd::store_args::StoreArgs;

/// Arguments of `capture agent`.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// Address to serve the API on (e.g. 0.0.0.0:9300; beyond loopback needs --token-file,
    /// and --tls-cert/--tls-key or --insecure-plain-http).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9300")]
    pub listen: SocketAddr,

    /// File holding the bearer token every call (but /healthz) must carry; read again when
    /// it changes (rotation without a restart).
    #[arg(long, value_name = "FILE", env = "CAPTURE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// PEM certificate chain to serve the API over TLS with (e.g. cert-manager's tls.crt);
    /// read again when it changes.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (e.g. cert-manager's tls.key).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve plain HTTP beyond loopback: the token and every answer then cross the network
    /// in clear text.
    #[arg(long, conflicts_with = "tls_cert")]
    pub insecure_plain_http: bool,

    /// A request head must arrive whole within this, from the connection's accept (TLS
    /// handshake included) or the first byte of the request; else the connection closes
    /// (slowloris). Counted in capture_agent_timeouts_total{kind="header_read"}.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,

    /// A kept-alive connection silent this long between requests is closed (a slow reader
    /// of an answer is not silent). Counted as kind="idle".
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    pub idle_timeout: Duration,

    /// A request body must arrive whole within this once the call reads it; else 408.
    /// Counted as kind="body_read".
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub body_read_timeout: Duration,

    /// Calls that touch the store or the kernel (recordings, starting replays) answer 503
    /// after this; their work goes on, look again later. Counted as kind="handling".
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub handling_deadline: Duration,

    /// Open connections at most; beyond, a new one is accepted and closed at once, nothing
    /// sent (counted in capture_agent_connections_refused_total), and served again once
    /// others close. Lowered to fit the open-file limit if needed.
    #[arg(long, value_name = "N", default_value_t = ServerLimits::default().max_connections,
          value_parser = connections)]
    pub max_connections: usize,

    /// On SIGTERM, how long calls in progress may take before recordings and replays are
    /// ended regardless.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub drain_timeout: Duration,

    /// Replays may only target these HOST:PORT pairs (repeatable; default: any).
    #[arg(long = "allow-target", value_name = "HOST:PORT")]
    pub allow_targets: Vec<String>,

    /// Threads that write replays' requests and read their answers, shared by the replays
    /// the agent runs and apart from the two threads that serve the API (whose calls never
    /// queue behind a replay's tasks). Default: half the CPUs, at least one (as `replay`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub send_threads: Option<u16>,

    #[command(flatten)]
    pub store: StoreArgs,
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 10s, 500ms, 2m)"))?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

fn connections(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err("expects a number of connections from 1 to 1000000".into()),
    }
}

impl AgentArgs {
    fn limits(&self) -> ServerLimits {
        ServerLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            body_read_timeout: self.body_read_timeout,
            handling_deadline: self.handling_deadline,
            max_connections: self.max_connections,
            drain_timeout: self.drain_timeout,
        }
    }
}

/// Runs `capture agent`; its replays send on `replay_runtime` (see `--send-threads`), or on
/// the current runtime when there is none.
pub async fn run(
    args: AgentArgs,
    replay_runtime: Option<tokio::runtime::Handle>,
) -> anyhow::Result<()> {
    let limits = args.limits();
    let token = args
        .token_file
        .map(open_token_file)
        .transpose()?
        .map(Arc::new);
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(tls::open(cert, key)?)),
        _ => None,
    };
    let max_connections = fit_descriptors(limits.max_connections)?;
    serve(AgentConfig {
        listen: args.listen,
        token,
        tls,
        insecure_plain_http: args.insecure_plain_http,
        limits: ServerLimits {
            max_connections,
            ..limits
        },
        store: args.store.to_config()?,
        allow_targets: args.allow_targets,
        replay_runtime,
    })
    .await
}

/// Descriptors the agent keeps for itself beyond its connections (store, eBPF maps, rings).
const RESERVED_FDS: u64 = 256;

/// Raises the open-file limit to its hard limit, and lowers the connection cap (with a
/// warning) when even that leaves too few descriptors for it.
fn fit_descriptors(max_connections: usize) -> anyhow::Result<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("reading RLIMIT_NOFILE");
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            log::warn!("raising RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    let (cap, lowered) = connection_cap(max_connections, lim.rlim_cur);
    if lowered {
        eprintln!(
            "agent: --max-connections {max_connections} lowered to {cap}: the open-file limit \
             is {}; raise it (ulimit -n, LimitNOFILE) for more",
            lim.rlim_cur
        );
    }
    Ok(cap)
}

/// The connection cap that fits `nofile` descriptors, and whether it is below `asked`.
fn connection_cap(asked: usize, nofile: u64) -> (usize, bool) {
    let fits = usize::try_from(nofile.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    let cap = asked.min(fits).max(1);
    (cap, cap < asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_the_agent() {
        assert_eq!(connection_cap(8192, 20_000), (8192, false));
        assert_eq!(connection_cap(8192, 1024), (768, true));
        assert_eq!(connection_cap(10, 100), (1, true));
    }

    #[test]
    fn durations_must_be_positive_and_say_how_to_write_them() {
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("0s"), Err("must be more than 0".into()));
        assert!(duration("soon").is_err_and(|e| e.contains("e.g. 10s")));
    }
}
