//! The body of `POST /v1/replays` and the replay options it asks for: the `replay` command's
//! flags as JSON fields, checked, with [`ReplayOptions::default`] for what a call leaves out.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use utoipa::ToSchema;

use super::error::ApiError;
use crate::replay::engine::Endpoint;
use crate::replay::load::{DiffOptions, ReplayOptions, diff_options, pace_of, rewrites_from};
use crate::replay::rewrite::CopyHeader;
use crate::replay::sample::SamplePercent;
use crate::replay::select::{FilterRule, Filters};
use crate::replay::shard::Shard;
use crate::replay::source::Lookahead;
use crate::replay::tls::TlsTrust;
use crate::units::parse_rfc3339;

/// `POST /v1/replays`: what to replay, where, and how (fields as the `replay` command's flags).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartReplay {
    /// Name of the recording to replay.
    pub recording: String,
    /// Where to send: `http://HOST[:PORT]` or `https://HOST[:PORT]` (in the agent's
    /// `--allow-target` list, if it has one). https needs `ca_file` or `insecure`.
    pub target: String,
    /// For an https target or baseline: a PEM file on the agent's node with the CA
    /// certificates to trust (and only them).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// For an https target or baseline: do not verify its certificate; the report's `tls`
    /// says `insecure: true`.
    #[serde(default)]
    pub insecure: bool,
    /// Recorded inter-arrival times divided by this (default 1); not with `rate` or `max`.
    #[serde(default)]
    pub speed: Option<f64>,
    /// Fixed requests per second instead of the recorded timing.
    #[serde(default)]
    pub rate: Option<f64>,
    /// As fast as the connections allow (one request at a time per connection).
    #[serde(default)]
    pub max: bool,
    /// Passes over the whole recording, one after the other (default 1).
    #[serde(default, rename = "loop")]
    pub loops: Option<u32>,
    /// Copies of the traffic sent at once, each on connections of its own (default 1, at most
    /// 1000): the target sees N times the load with the same shape over time; with `rate`,
    /// each copy runs at that rate.
    #[serde(default)]
    pub copies: Option<u32>,
    /// A header that carries each request's copy number (1 to N), e.g. `X-Copy`.
    #[serde(default)]
    pub copy_header: Option<String>,
    /// A stable share of the traffic to replay, e.g. `10%`: the same subset every time. The
    /// unit is the recorded connection (kept whole) when no connection carries more than 1 %
    /// of the requests, the request otherwise.
    #[serde(default)]
    pub sample: Option<String>,
    /// This agent's part of the recording, `I/N` (e.g. `1/2` here and `2/2` on another
    /// node): each recorded connection goes whole to one part, the parts together are the
    /// recording exactly once, each keeps the recorded timing.
    #[serde(default)]
    pub shard: Option<String>,
    /// When the schedule starts, RFC 3339 (e.g. `2026-12-06T12:00:00Z`), so several agents
    /// start one schedule together; default: at once.
    #[serde(default)]
    pub start_at: Option<String>,
    /// How far (recorded time) the recording is read ahead of what is sent (default 5s).
    #[serde(default)]
    pub look_ahead: Option<String>,
    /// Most requests read ahead (default 50000).
    #[serde(default)]
    pub look_ahead_requests: Option<usize>,
    /// Stop sending after this long, e.g. `5m`.
    #[serde(default)]
    pub exit_after: Option<String>,
    /// Most connections open at once (default 256).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Per request, from the first byte sent to the last byte of the response (default 30s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Only requests matching every rule: `method=GET,POST`, `method!=OPTIONS`, `url=REGEX`,
    /// `url!=REGEX`, `header:NAME=REGEX`, `header:NAME!=REGEX`.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Request-target rewrites, `REGEX=>REPLACEMENT` (`$1` for groups), applied in order.
    #[serde(default)]
    pub rewrite_urls: Vec<String>,
    /// Headers to set (replacing any recorded value), `Name: value`.
    #[serde(default)]
    pub set_headers: Vec<String>,
    /// Header names to remove.
    #[serde(default)]
    pub drop_headers: Vec<String>,
    /// Host header to send instead of the recorded one; to an https target, also the server
    /// name asked for (SNI) and verified, without its port.
    #[serde(default)]
    pub host: Option<String>,
    /// Kafka bootstrap brokers to read the recording from, overriding the agent's store.
    #[serde(default)]
    pub kafka: Option<String>,
    /// Kafka topic, overriding the agent's.
    #[serde(default)]
    pub topic: Option<String>,
    /// Compare each answer with the recorded one (status, headers without the usual noise,
    /// decoded body, JSON by path); the summary per endpoint is in the report's `diff`, and
    /// `GET /v1/replays/{id}/report` shows it as a page.
    #[serde(default)]
    pub diff: bool,
    /// Also send every request to this target, running the recorded version (implies
    /// `diff`): what differs there too is reported as noise. Subject to `--allow-target`.
    #[serde(default)]
    pub baseline: Option<String>,
    /// Headers that may differ, on top of the usual noise.
    #[serde(default)]
    pub diff_ignore_headers: Vec<String>,
    /// Fields that may differ: `json:$.meta.generated_at` (`[*]`, `.*` wildcards) or
    /// `header:NAME`.
    #[serde(default)]
    pub diff_ignore: Vec<String>,
    /// Endpoint names by path pattern (`/api/items/*`, `GET /users/{user}/**`) instead of
    /// collapsed ids; first match wins.
    #[serde(default)]
    pub endpoint_patterns: Vec<String>,
}

impl StartReplay {
    /// The replay options this call asks for, the rest from [`ReplayOptions::default`], or a
    /// 400 naming the field.
    pub(super) fn options(&self, baseline: Option<Endpoint>) -> Result<ReplayOptions, ApiError> {
        if self.rate.is_some() && self.max {
            return Err(ApiError::BadRequest("rate and max: choose one".into()));
        }
        if self.speed.is_some() && (self.rate.is_some() || self.max) {
            return Err(ApiError::BadRequest("speed: not with rate or max".into()));
        }
        let rules = self
            .filters
            .iter()
            .map(|f| {
                f.parse::<FilterRule>()
                    .map_err(|e| ApiError::BadRequest(format!("filters: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rewrites = rewrites_from(
            &self.rewrite_urls,
            &self.set_headers,
            &self.drop_headers,
            self.host.as_deref(),
        )
        .map_err(|e| ApiError::BadRequest(format!("rewrites: {e:#}")))?;
        let copy_header = self
            .copy_header
            .as_deref()
            .map(CopyHeader::new)
            .transpose()
            .map_err(|e| ApiError::BadRequest(format!("copy_header: {e}")))?;
        let sample = self
            .sample
            .as_deref()
            .map(str::parse::<SamplePercent>)
            .transpose()
            .map_err(|e| ApiError::BadRequest(format!("sample: {e}")))?;
        let shard = self
            .shard
            .as_deref()
            .map(str::parse::<Shard>)
            .transpose()
            .map_err(|e| ApiError::BadRequest(format!("shard: {e}")))?;
        let start_at = self
            .start_at
            .as_deref()
            .map(parse_rfc3339)
            .transpose()
            .map_err(|e| ApiError::BadRequest(format!("start_at: {e}")))?;
        let defaults = ReplayOptions::default();
        let lookahead = Lookahead {
            time: duration_field("look_ahead", &self.look_ahead)?
                .unwrap_or(defaults.lookahead.time),
            requests: self
                .look_ahead_requests
                .unwrap_or(defaults.lookahead.requests),
        };
        Ok(ReplayOptions {
            pace: pace_of(
                self.speed.unwrap_or(ReplayOptions::DEFAULT_SPEED),
                self.rate,
                self.max,
            ),
            loops: self.loops.unwrap_or(defaults.loops),
            copies: self.copies.unwrap_or(defaults.copies),
            copy_header,
            sample,
            shard: shard.unwrap_or(Shard::WHOLE),
            start_at,
            lookahead,
            exit_after: duration_field("exit_after", &self.exit_after)?,
            concurrency: self.concurrency.unwrap_or(defaults.concurrency),
            timeout: duration_field("timeout", &self.timeout)?.unwrap_or(defaults.timeout),
            filters: Filters::new(rules),
            rewrites,
            diff: self.diff_options(baseline)?,
            tls: self.tls_trust(),
            ..defaults
        })
    }

    /// How https targets are verified, as `ca_file`, `insecure` and `host` ask.
    pub(super) fn tls_trust(&self) -> TlsTrust {
        TlsTrust {
            ca_file: self.ca_file.as_ref().map(PathBuf::from),
            insecure: self.insecure,
            server_name: self.host.clone(),
        }
    }

    /// The `diff` fields' options, when comparing was asked for.
    fn diff_options(&self, baseline: Option<Endpoint>) -> Result<Option<DiffOptions>, ApiError> {
        let diffing = self.diff || self.baseline.is_some();
        let given = !self.diff_ignore_headers.is_empty()
            || !self.diff_ignore.is_empty()
            || !self.endpoint_patterns.is_empty();
        if !diffing {
            return if given {
                Err(ApiError::BadRequest(
                    "diff_ignore_headers, diff_ignore, endpoint_patterns: set diff (or baseline)"
                        .into(),
                ))
            } else {
                Ok(None)
            };
        }
        diff_options(
            &self.diff_ignore_headers,
            &self.diff_ignore,
            &self.endpoint_patterns,
            baseline,
            None,
        )
        .map(Some)
        .map_err(|e| ApiError::BadRequest(format!("diff: {e:#}")))
    }
}

fn duration_field(field: &str, value: &Option<String>) -> Result<Option<Duration>, ApiError> {
    value
        .as_deref()
        .map(|v| {
            humantime::parse_duration(v).map_err(|e| {
                ApiError::BadRequest(format!(
                    "{field}: {v:?} is not a duration like 30s or 5m ({e})"
                ))
            })
        })
        .transpose()
}
