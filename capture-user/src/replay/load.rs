//! Turning a source (a recording, a GoReplay file, a pcap) and options into a replay ready to
//! start: options checked, the source opened (so a wrong name fails before anything is sent),
//! and the feed that will read, filter, sample, plan and prepare it as the replay goes. The
//! command line and the agent both come through here with a [`ReplayOptions`], whose `Default`
//! is the one place the replay defaults live.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::files::{FileFormat, MessageFile};
use crate::message::HttpMessage;
use crate::replay::diff::{DiffRules, EndpointNamer};
use crate::replay::engine::{DiffSetup, Differ, Endpoint, EngineConfig, Replay, StartError};
use crate::replay::feed::{FeedOptions, MessageSource};
use crate::replay::report::Tally;
use crate::replay::rewrite::{CopyHeader, Rewrites};
use crate::replay::sample::SamplePercent;
use crate::replay::schedule::{Pace, Shape};
use crate::replay::select::Filters;
use crate::replay::shard::Shard;
use crate::replay::source::{Lookahead, from_stored};
use crate::replay::target::Target;
use crate::replay::tls::{TlsClient, TlsSetupError, TlsTrust};
use crate::store::{RecordingState, StoreConfig};

/// Why options give no replay (the caller's to fix, not the node's).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("--concurrency must be at least 1")]
    NoConcurrency,
    #[error("--connections must be at least 1")]
    NoConnections,
    #[error("--look-ahead-requests must be at least 1")]
    NoLookahead,
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
    /// GoReplay files record no connections (each request stands alone): their requests share
    /// a pool of connections, and `--sample` and `--shard` take requests.
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
    /// This replay's part of the recording (`--shard`).
    pub shard: Shard,
    /// When the schedule starts (`--start-at`), for several replays started together.
    pub start_at: Option<SystemTime>,
    /// Stop sending after this long.
    pub exit_after: Option<Duration>,
    /// Most connections open at once for recorded connections.
    pub concurrency: usize,
    /// Keep-alive connections per copy for requests without a recorded connection.
    pub connections: usize,
    /// How far ahead of the replay the source is read (see [`Lookahead`]).
    pub lookahead: Lookahead,
    pub connect_timeout: Duration,
    /// From the first byte sent to the last byte of the final response.
    pub timeout: Duration,
    pub filters: Filters,
    pub rewrites: Rewrites,
    /// `--diff`: compare each answer with the recorded one.
    pub diff: Option<DiffOptions>,
    /// `--ca-file`, `--insecure` and the server name, for https targets.
    pub tls: TlsTrust,
}

/// What `--diff` compares, how endpoints are named, and where else requests go.
#[derive(Clone, Debug)]
pub struct DiffOptions {
    pub rules: DiffRules,
    pub endpoints: Arc<EndpointNamer>,
    /// `--baseline`, resolved: a target running the recorded version, to learn noise from.
    pub baseline: Option<Endpoint>,
    /// `--diff-out FILE.jsonl`.
    pub out: Option<PathBuf>,
}

impl ReplayOptions {
    /// Recorded timing as recorded, unless a speed, a rate or `max` is asked for.
    pub const DEFAULT_SPEED: f64 = 1.0;

    fn shape(&self) -> Shape {
        Shape {
            pace: self.pace,
            loops: self.loops,
            copies: self.copies,
        }
    }
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
            shard: Shard::WHOLE,
            start_at: None,
            exit_after: None,
            concurrency: 256,
            connections: 16,
            lookahead: Lookahead::default(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            filters: Filters::default(),
            rewrites: Rewrites::default(),
            diff: None,
            tls: TlsTrust::default(),
        }
    }
}

/// The `--diff` options from their command-line (or API) forms; an error names the bad one.
pub fn diff_options(
    ignore_headers: &[String],
    ignore: &[String],
    endpoint_patterns: &[String],
    baseline: Option<Endpoint>,
    out: Option<PathBuf>,
) -> anyhow::Result<DiffOptions> {
    Ok(DiffOptions {
        rules: DiffRules::new(ignore_headers, ignore)?,
        endpoints: Arc::new(EndpointNamer::new(endpoint_patterns)?),
        baseline,
        out,
    })
}

/// Where the target (and the baseline, when there is one) are reached: resolved, with TLS set
/// up for https as `trust` says. `--ca-file` and `--insecure` with no https target are
/// refused (they would silently do nothing), as is an https target nothing would verify.
pub async fn endpoints(
    target: &Target,
    baseline: Option<&Target>,
    trust: &TlsTrust,
) -> anyhow::Result<(Endpoint, Option<Endpoint>)> {
    use anyhow::Context as _;
    let any_https = target.is_tls() || baseline.is_some_and(Target::is_tls);
    if (trust.ca_file.is_some() || trust.insecure) && !any_https {
        return Err(TlsSetupError::NotHttps {
            target: target.to_string(),
        }
        .into());
    }
    let target = endpoint(target, trust).await?;
    let baseline = match baseline {
        Some(b) => Some(endpoint(b, trust).await.context("--baseline")?),
        None => None,
    };
    Ok((target, baseline))
}

/// One target's endpoint (see [`endpoints`]).
async fn endpoint(target: &Target, trust: &TlsTrust) -> anyhow::Result<Endpoint> {
    // TLS first: a refused setup is the user's to fix whether or not the host resolves.
    let tls = if target.is_tls() {
        let url = target.to_string();
        Some(std::sync::Arc::new(TlsClient::new(
            &url,
            &target.host,
            trust,
        )?))
    } else {
        None
    };
    Ok(Endpoint {
        address: target.resolve().await?,
        tls,
    })
}

/// A replay ready to start: its source open and its options checked.
pub struct LoadedReplay {
    /// "recording R", "GoReplay file F", ...
    pub source_name: String,
    /// What the read position counts up to (messages of a recording, bytes of a file).
    pub source_size: Option<u64>,
    /// "messages" or "bytes".
    pub source_size_unit: &'static str,
    source: Box<dyn MessageSource>,
    feed: FeedOptions,
}

impl LoadedReplay {
    /// Starts reading and sending to `target` on the current runtime.
    pub fn start(self, target: Endpoint, options: &ReplayOptions) -> Result<Replay, StartError> {
        let (source, feed) = (self.source, self.feed);
        let differ = match &options.diff {
            Some(diff) => Some(
                Differ::new(DiffSetup {
                    rules: diff.rules.clone(),
                    baseline: diff.baseline.is_some(),
                    out: diff.out.clone(),
                })
                .map_err(StartError::DiffOut)?,
            ),
            None => None,
        };
        Replay::start(
            Box::new(move |sink| crate::replay::feed::run(source, feed, sink)),
            Tally::new(options.copies),
            EngineConfig {
                target,
                connect_timeout: options.connect_timeout,
                response_timeout: options.timeout,
                concurrency: options.concurrency,
                pool: options.connections,
                exit_after: options.exit_after,
                copy_header: options.copy_header.clone(),
                start_at: options.start_at,
                baseline: options.diff.as_ref().and_then(|d| d.baseline.clone()),
            },
            differ,
        )
    }
}

/// A recording in a store, read from its start on each pass.
struct RecordingSource {
    store: StoreConfig,
    name: String,
    messages: u64,
}

impl MessageSource for RecordingSource {
    fn name(&self) -> String {
        format!("recording {}", self.name)
    }

    fn has_connections(&self) -> bool {
        true
    }

    fn size(&self) -> Option<u64> {
        (self.messages > 0).then_some(self.messages)
    }

    fn read(&mut self, visit: &mut dyn FnMut(HttpMessage, u64) -> bool) -> anyhow::Result<()> {
        let mut store = self.store.open()?;
        let mut read = 0u64;
        store.read(&self.name, &mut |m| {
            read += 1;
            visit(from_stored(m), read)
        })?;
        Ok(())
    }
}

/// A pcap or GoReplay file, read from its start on each pass.
struct FileSource {
    path: PathBuf,
    ports: Vec<u16>,
    format: FileFormat,
    size: u64,
}

impl FileSource {
    /// Opens the file once, so a missing or unknown file fails before the replay starts.
    fn open(path: &Path, ports: &[u16], format: FileFormat) -> anyhow::Result<Self> {
        let size = MessageFile::open(path, ports, format)?.size();
        Ok(Self {
            path: path.to_path_buf(),
            ports: ports.to_vec(),
            format,
            size,
        })
    }
}

impl MessageSource for FileSource {
    fn name(&self) -> String {
        match self.format {
            FileFormat::Gor => format!("GoReplay file {}", self.path.display()),
            _ => format!("pcap {}", self.path.display()),
        }
    }

    fn has_connections(&self) -> bool {
        self.format != FileFormat::Gor
    }

    fn size(&self) -> Option<u64> {
        (self.size > 0).then_some(self.size)
    }

    fn read(&mut self, visit: &mut dyn FnMut(HttpMessage, u64) -> bool) -> anyhow::Result<()> {
        MessageFile::open(&self.path, &self.ports, self.format)?.visit(visit)?;
        Ok(())
    }

    /// GoReplay payloads are copied out of the reader's buffer one by one.
    fn bytes_are_own(&self) -> bool {
        self.format == FileFormat::Gor
    }
}

/// Checks the options and opens the source (blocking: stores and files); what the replay
/// will read as it goes.
pub fn load_replay(
    source: &ReplaySource,
    store: &StoreConfig,
    options: &ReplayOptions,
) -> anyhow::Result<LoadedReplay> {
    if options.concurrency == 0 {
        return Err(LoadError::NoConcurrency.into());
    }
    if options.connections == 0 {
        return Err(LoadError::NoConnections.into());
    }
    if options.lookahead.requests == 0 {
        return Err(LoadError::NoLookahead.into());
    }
    crate::replay::schedule::check(options.shape())?;
    let rewrites = match &options.copy_header {
        Some(header) => header.add_to(&options.rewrites)?,
        None => options.rewrites.clone(),
    };
    let opened: Box<dyn MessageSource> = match source {
        ReplaySource::Recording(name) => {
            let recording = store.open()?.get(name)?;
            if recording.state == RecordingState::Recording {
                log::warn!("recording {name} is still running; replaying what it holds so far");
            }
            Box::new(RecordingSource {
                store: store.clone(),
                name: name.clone(),
                messages: recording.messages,
            })
        }
        ReplaySource::Gor(path) => Box::new(FileSource::open(path, &[], FileFormat::Gor)?),
        ReplaySource::Pcap { file, ports } => {
            Box::new(FileSource::open(file, ports, FileFormat::Pcap)?)
        }
    };
    Ok(LoadedReplay {
        source_name: opened.name(),
        source_size: opened.size(),
        source_size_unit: match source {
            ReplaySource::Recording(_) => "messages",
            _ => "bytes",
        },
        source: opened,
        feed: FeedOptions {
            lookahead: options.lookahead,
            filters: options.filters.clone(),
            sample: options.sample,
            shard: options.shard,
            shape: options.shape(),
            rewrites,
            copy_header: options.copy_header.clone(),
            diff_endpoints: options.diff.as_ref().map(|d| d.endpoints.clone()),
        },
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

    #[test]
    fn options_that_cannot_work_are_refused_before_the_source_is_opened() {
        let store = StoreConfig::default();
        let source = ReplaySource::Recording("nowhere".into());
        for (options, flag) in [
            (
                ReplayOptions {
                    concurrency: 0,
                    ..ReplayOptions::default()
                },
                "--concurrency",
            ),
            (
                ReplayOptions {
                    connections: 0,
                    ..ReplayOptions::default()
                },
                "--connections",
            ),
            (
                ReplayOptions {
                    copies: 0,
                    ..ReplayOptions::default()
                },
                "--copies",
            ),
        ] {
            let err = load_replay(&source, &store, &options).err().unwrap();
            assert!(err.to_string().contains(flag), "{err:#}");
        }
    }
}
