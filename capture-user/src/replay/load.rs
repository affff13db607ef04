//! Turning a source (a recording, a GoReplay file, a pcap) into a replay ready to start:
//! read, keep the complete requests, filter, sample, rewrite and plan. The command line and the agent
//! both come through here with a [`ReplayOptions`], whose `Default` is the one place the
//! replay defaults live.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::files::{FileFormat, read_messages};
use crate::replay::engine::{EngineConfig, PreparedRequest, Replay};
use crate::replay::report::Tally;
use crate::replay::rewrite::{CopyHeader, Rewrites};
use crate::replay::sample::{SampleKey, SamplePercent, SampleStats, choose};
use crate::replay::schedule::{Pace, Planned, Recorded, Shape, plan};
use crate::replay::select::{Filters, RequestHead};
use crate::replay::source::{ReplayRequest, SourceStats, from_stored, requests_from_messages};
use crate::store::{RecordingState, StoreConfig};

/// Why a source and options give no replay (the caller's to fix, not the node's).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("--concurrency must be at least 1")]
    NoConcurrency,
    #[error("{source_name} has no requests to replay ({details})")]
    NothingToReplay {
        source_name: String,
        details: String,
    },
}

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

/// Keeps a stable `percent` of the requests (see `sample`), in order, and says what it kept.
pub fn sample(
    requests: Vec<ReplayRequest>,
    percent: SamplePercent,
    has_connections: bool,
) -> (Vec<ReplayRequest>, SampleStats) {
    let keys: Vec<SampleKey> = requests
        .iter()
        .map(|r| SampleKey {
            conn: r.conn,
            request: r.id,
        })
        .collect();
    let (keep, stats) = choose(&keys, percent, has_connections);
    let kept = requests
        .into_iter()
        .zip(keep)
        .filter_map(|(r, keep)| keep.then_some(r))
        .collect();
    (kept, stats)
}

/// Applies rewrites, and finds where the copy header goes when there is one: the bytes each
/// request is sent as.
pub fn prepare(
    requests: &[ReplayRequest],
    rewrites: &Rewrites,
    copy_header: Option<&CopyHeader>,
) -> anyhow::Result<Vec<PreparedRequest>> {
    let with_copy_header;
    let rewrites = match copy_header {
        Some(header) => {
            with_copy_header = header.add_to(rewrites)?;
            &with_copy_header
        }
        None => rewrites,
    };
    requests
        .iter()
        .map(|r| {
            let what = || format!("rewriting {} {}", r.method, r.uri);
            let bytes = if rewrites.is_empty() {
                r.bytes.clone()
            } else {
                bytes::Bytes::from(rewrites.apply(&r.bytes).with_context(what)?.into_owned())
            };
            let copy_slot = match copy_header {
                Some(_) => Some(CopyHeader::slot(&bytes).with_context(what)?),
                None => None,
            };
            Ok(PreparedRequest {
                bytes,
                recorded_status: r.recorded_status,
                copy_slot,
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

impl ReplaySource {
    /// GoReplay files record no connections (each request stands alone), so `--sample`
    /// samples their requests.
    pub fn has_connections(&self) -> bool {
        !matches!(self, Self::Gor(_))
    }
}

/// How to replay, whoever asks (the command line or the agent).
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub pace: Pace,
    /// Passes over the whole set, one after the other.
    pub loops: u32,
    /// Passes at the same time, each on its own connections (`--copies`).
    pub copies: u32,
    /// Tags each request with its copy's number (`--copy-header`).
    pub copy_header: Option<CopyHeader>,
    /// Replays a stable share of the traffic (`--sample`).
    pub sample: Option<SamplePercent>,
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
            copies: 1,
            copy_header: None,
            sample: None,
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
    /// What `--sample` kept, when asked.
    pub sample: Option<SampleStats>,
    /// Distinct requests (before loops and copies).
    pub requests: usize,
    /// Concurrent copies the plan holds.
    pub copies: u32,
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
        let tally = Tally::new(self.plan.len() as u64, self.copies).with_sample(self.sample);
        Replay::start(
            self.prepared,
            self.plan,
            tally,
            EngineConfig {
                target: address,
                connect_timeout: options.connect_timeout,
                response_timeout: options.timeout,
                concurrency: options.concurrency,
                exit_after: options.exit_after,
                copy_header: options.copy_header.clone(),
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

/// The shape the options ask for.
fn shape_of(options: &ReplayOptions) -> Shape {
    Shape {
        pace: options.pace,
        loops: options.loops,
        copies: options.copies,
    }
}

/// Reads the source (blocking: stores and files), selects, samples, rewrites and plans.
pub fn load_replay(
    source: &ReplaySource,
    store: &StoreConfig,
    options: &ReplayOptions,
) -> anyhow::Result<LoadedReplay> {
    if options.concurrency == 0 {
        return Err(LoadError::NoConcurrency.into());
    }
    crate::replay::schedule::check(shape_of(options))?;
    let (source_name, messages) = read_source(source, store)?;
    let (requests, source_stats) = requests_from_messages(&messages);
    drop(messages);
    let (requests, filtered_out) = select(requests, &options.filters)?;
    let (requests, sampled) = match options.sample {
        Some(percent) => {
            let (kept, stats) = sample(requests, percent, source.has_connections());
            (kept, Some(stats))
        }
        None => (requests, None),
    };
    if requests.is_empty() {
        let details = format!(
            "{} complete requests, {} incomplete skipped, {} left out by --filter{}",
            source_stats.requests,
            source_stats.incomplete_skipped,
            filtered_out,
            sampled.map_or(String::new(), |s| format!(
                ", none of {} {} kept by --sample {}%: ask for more",
                s.units,
                s.unit.plural(),
                s.percent
            )),
        );
        return Err(LoadError::NothingToReplay {
            source_name,
            details,
        }
        .into());
    }
    let recorded: Vec<Recorded> = requests
        .iter()
        .map(|r| Recorded {
            conn: r.conn,
            ts_ns: r.ts_ns,
        })
        .collect();
    let plan = plan(&recorded, shape_of(options))?;
    let prepared = prepare(&requests, &options.rewrites, options.copy_header.as_ref())?;
    Ok(LoadedReplay {
        source_name,
        source: source_stats,
        filtered_out,
        sample: sampled,
        requests: requests.len(),
        copies: options.copies,
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

    fn request(id: u64, conn: u64, head: &str) -> ReplayRequest {
        ReplayRequest {
            id,
            conn,
            ts_ns: id * 1000,
            method: "GET".into(),
            uri: format!("/{id}"),
            bytes: bytes::Bytes::from(head.to_string()),
            recorded_status: Some(200),
        }
    }

    #[test]
    fn a_sample_keeps_requests_in_order_and_connections_whole() {
        // 300 connections of 2 requests: the connection is the unit.
        let requests: Vec<ReplayRequest> = (0..600)
            .map(|i| request(i + 1, 1 + i % 300, "GET / HTTP/1.1\r\n\r\n"))
            .collect();
        let percent: SamplePercent = "10%".parse().unwrap();
        let (kept, stats) = sample(requests.clone(), percent, true);
        assert_eq!(stats.unit, crate::replay::sample::SampleUnit::Connection);
        assert_eq!(kept.len() as u64, stats.requests_kept);
        assert_eq!(stats.requests_kept, 2 * stats.units_kept);
        assert!(kept.windows(2).all(|w| w[0].ts_ns < w[1].ts_ns));
        // The same again; as a GoReplay file (no connections) the unit is the request.
        assert_eq!(sample(requests.clone(), percent, true).0, kept);
        let (_, stats) = sample(requests, percent, false);
        assert_eq!(stats.unit, crate::replay::sample::SampleUnit::Request);
    }

    #[test]
    fn prepared_requests_carry_the_copy_header_slot_after_the_rewrites() {
        let requests = vec![request(
            1,
            1,
            "GET /a HTTP/1.1\r\nHost: h\r\nX-Copy: old\r\n\r\n",
        )];
        let mut rewrites = Rewrites::default();
        rewrites.add_set_header("X-Replay: 1").unwrap();
        let header = CopyHeader::new("X-Copy").unwrap();
        let prepared = prepare(&requests, &rewrites, Some(&header)).unwrap();
        let slot = prepared[0].copy_slot.unwrap();
        assert_eq!(
            String::from_utf8(header.tag(&prepared[0].bytes, slot, 3)).unwrap(),
            "GET /a HTTP/1.1\r\nHost: h\r\nX-Replay: 1\r\nX-Copy: 3\r\n\r\n"
        );
        // Without a copy header: as recorded, no slot.
        let plain = prepare(&requests, &Rewrites::default(), None).unwrap();
        assert_eq!(plain[0].bytes, requests[0].bytes);
        assert_eq!(plain[0].copy_slot, None);
        // A copy header the rewrites also name is refused.
        let mut clash = Rewrites::default();
        clash.add_drop_header("x-copy").unwrap();
        let err = prepare(&requests, &clash, Some(&header)).unwrap_err();
        assert!(
            format!("{err:#}").contains("--copy-header X-Copy"),
            "{err:#}"
        );
    }
}
