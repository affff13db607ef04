//! Turning a source (a recording, a GoReplay file, a pcap) into a replay ready to start:
//! read, keep the complete requests, filter, rewrite and plan. The command line and the agent
//! both come through here with a [`ReplayOptions`], whose `Default` is the one place the
//! replay defaults live.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::files::{FileFormat, read_messages};
use crate::replay::engine::{EngineConfig, PreparedRequest, Replay};
use crate::replay::rewrite::Rewrites;
use crate::replay::schedule::{Pace, Planned, Recorded, plan};
use crate::replay::select::{Filters, RequestHead};
use crate::replay::source::{ReplayRequest, SourceStats, from_stored, requests_from_messages};
use crate::store::{RecordingState, StoreConfig};

/// Applies filters: the requests that pass, in order.
pub fn select(
    requests: Vec<ReplayRequest>,
    filters: &Filters,
) -> anyhow::Result<(Vec<ReplayRequest>, u64)> {
    if filters.is_empty() {
        return Ok((requests, 0));
    }
    let total = requests.len() as u64;
    let mut kept = Vec::with_capacity(requests.len());
    for r in requests {
        let head = RequestHead::parse(&r.bytes)
            .with_context(|| format!("recorded request {} {}", r.method, r.uri))?;
        if filters.matches(&head) {
            kept.push(r);
        }
    }
    let filtered_out = total - kept.len() as u64;
    Ok((kept, filtered_out))
}

/// Applies rewrites: the bytes each request is sent as.
pub fn prepare(
    requests: &[ReplayRequest],
    rewrites: &Rewrites,
) -> anyhow::Result<Vec<PreparedRequest>> {
    requests
        .iter()
        .map(|r| {
            let bytes = if rewrites.is_empty() {
                r.bytes.clone()
            } else {
                bytes::Bytes::from(
                    rewrites
                        .apply(&r.bytes)
                        .with_context(|| format!("rewriting {} {}", r.method, r.uri))?
                        .into_owned(),
                )
            };
            Ok(PreparedRequest {
                bytes,
                recorded_status: r.recorded_status,
            })
        })
        .collect()
}

/// The pace the flags ask for.
pub fn pace_of(speed: f64, rate: Option<f64>, max: bool) -> Pace {
    match (max, rate) {
        (true, _) => Pace::Max,
        (false, Some(per_second)) => Pace::Rate { per_second },
        (false, None) => Pace::Original { speed },
    }
}

/// Rewrites from their textual specs (as flags or API fields give them).
pub fn rewrites_from(
    urls: &[String],
    set_headers: &[String],
    drop_headers: &[String],
    host: Option<&str>,
) -> anyhow::Result<Rewrites> {
    let mut rewrites = Rewrites::default();
    for spec in urls {
        rewrites.add_url_rewrite(spec)?;
    }
    for spec in set_headers {
        rewrites.add_set_header(spec)?;
    }
    for name in drop_headers {
        rewrites.add_drop_header(name)?;
    }
    if let Some(host) = host {
        rewrites.set_host(host)?;
    }
    Ok(rewrites)
}

/// Where the requests come from.
#[derive(Clone, Debug)]
pub enum ReplaySource {
    Recording(String),
    Gor(PathBuf),
    Pcap { file: PathBuf, ports: Vec<u16> },
}

/// How to replay, whoever asks (the command line or the agent).
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub pace: Pace,
    /// Passes over the whole set, one after the other.
    pub loops: u32,
    /// Stop sending after this long.
    pub exit_after: Option<Duration>,
    /// Most connections open at once.
    pub concurrency: usize,
    pub connect_timeout: Duration,
    /// From the first byte sent to the last byte of the final response.
    pub timeout: Duration,
    pub filters: Filters,
    pub rewrites: Rewrites,
}

impl ReplayOptions {
    /// Recorded timing as recorded, unless a speed, a rate or `max` is asked for.
    pub const DEFAULT_SPEED: f64 = 1.0;
}

impl Default for ReplayOptions {
    /// The defaults `capture replay --help` shows and the agent applies to fields a call
    /// leaves out.
    fn default() -> Self {
        Self {
            pace: Pace::Original {
                speed: Self::DEFAULT_SPEED,
            },
            loops: 1,
            exit_after: None,
            concurrency: 256,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            filters: Filters::default(),
            rewrites: Rewrites::default(),
        }
    }
}

/// A replay ready to start: what will be sent and when.
pub struct LoadedReplay {
    /// "recording R", "GoReplay file F", ...
    pub source_name: String,
    pub source: SourceStats,
    pub filtered_out: u64,
    /// Distinct requests (before loops).
    pub requests: usize,
    pub prepared: Vec<PreparedRequest>,
    pub plan: Vec<Planned>,
}

impl LoadedReplay {
    /// Planned time from the first send to the last.
    pub fn span(&self) -> Duration {
        self.plan.last().map(|p| p.due).unwrap_or_default()
    }

    /// Starts sending to `address` on the current runtime.
    pub fn start(self, address: SocketAddr, options: &ReplayOptions) -> Replay {
        Replay::start(
            self.prepared,
            self.plan,
            EngineConfig {
                target: address,
                connect_timeout: options.connect_timeout,
                response_timeout: options.timeout,
                concurrency: options.concurrency,
                exit_after: options.exit_after,
            },
        )
    }
}

/// Reads a source's messages (blocking: stores and files), with a name for it in messages.
fn read_source(
    source: &ReplaySource,
    store: &StoreConfig,
) -> anyhow::Result<(String, Vec<crate::message::HttpMessage>)> {
    Ok(match source {
        ReplaySource::Gor(path) => {
            let (messages, _) = read_messages(path, &[], FileFormat::Gor)?;
            (format!("GoReplay file {}", path.display()), messages)
        }
        ReplaySource::Pcap { file, ports } => {
            let (messages, _) = read_messages(file, ports, FileFormat::Pcap)?;
            (format!("pcap {}", file.display()), messages)
        }
        ReplaySource::Recording(name) => {
            let mut store = store.open()?;
            let recording = store.get(name)?;
            if recording.state == RecordingState::Recording {
                log::warn!("recording {name} is still running; replaying what it holds so far");
            }
            let mut stored = Vec::new();
            store.read(name, &mut |m| {
                stored.push(m);
                true
            })?;
            (format!("recording {name}"), from_stored(stored))
        }
    })
}

/// Reads the source (blocking: stores and files), selects, rewrites and plans.
pub fn load_replay(
    source: &ReplaySource,
    store: &StoreConfig,
    options: &ReplayOptions,
) -> anyhow::Result<LoadedReplay> {
    if options.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    crate::replay::schedule::check(options.pace, options.loops)?;
    let (source_name, messages) = read_source(source, store)?;
    let (requests, source_stats) = requests_from_messages(&messages);
    drop(messages);
    let (requests, filtered_out) = select(requests, &options.filters)?;
    if requests.is_empty() {
        bail!(
            "{source_name} has no requests to replay ({} complete requests, {} incomplete skipped, {} left out by --filter)",
            source_stats.requests,
            source_stats.incomplete_skipped,
            filtered_out
        );
    }
    let recorded: Vec<Recorded> = requests
        .iter()
        .map(|r| Recorded {
            conn: r.conn,
            ts_ns: r.ts_ns,
        })
        .collect();
    let plan = plan(&recorded, options.pace, options.loops)?;
    let prepared = prepare(&requests, &options.rewrites)?;
    Ok(LoadedReplay {
        source_name,
        source: source_stats,
        filtered_out,
        requests: requests.len(),
        prepared,
        plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_follows_the_flags() {
        assert_eq!(pace_of(2.0, None, false), Pace::Original { speed: 2.0 });
        assert_eq!(
            pace_of(1.0, Some(50.0), false),
            Pace::Rate { per_second: 50.0 }
        );
        assert_eq!(pace_of(1.0, None, true), Pace::Max);
    }
}
