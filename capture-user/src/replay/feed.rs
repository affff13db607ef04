//! The reading side of a replay, on a thread of its own: reads the source pass after pass
//! (`--loop`), turns its messages into requests in capture order, filters, samples, plans,
//! takes this shard's part, prepares them and hands each send to the engine. Blocking; its
//! memory is bounded by the look-ahead and the engine's queue, never by the source's size.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::message::{HttpMessage, HttpVersion};
use crate::replay::diff::EndpointNamer;
use crate::replay::engine::{FeedSink, PlannedSend, PreparedRequest, RecordedExchange, Route};
use crate::replay::report::SourceSummary;
use crate::replay::rewrite::{CopyHeader, Rewrites};
use crate::replay::sample::{SampleKey, SamplePercent, SampleStats, SampleUnit, keeps, unit_for};
use crate::replay::schedule::{Planner, Shape};
use crate::replay::select::{Filters, RequestHead};
use crate::replay::sequence::AnswerOrder;
use crate::replay::shard::Shard;
use crate::replay::source::{Lookahead, ReplayRequest, RequestStream};

/// Requests the sample's unit is chosen on (see `sample::unit_for`): the first this many of
/// the source, read once before the replay (a fraction of a second).
pub const SAMPLE_UNIT_PREFIX: usize = 100_000;

/// A source of messages that can be read from its start as often as asked (once per loop).
pub trait MessageSource: Send {
    /// "recording R", "GoReplay file F", ...
    fn name(&self) -> String;
    /// False for sources that record no connections (GoReplay files): their requests share
    /// a pool of connections, and `--sample` and `--shard` take requests, not connections.
    fn has_connections(&self) -> bool;
    /// What the read position counts up to, when known.
    fn size(&self) -> Option<u64>;
    /// Calls `visit` with each message in the source's order until it returns false; the
    /// position (messages or bytes, as `size` counts) after each.
    fn read(&mut self, visit: &mut dyn FnMut(HttpMessage, u64) -> bool) -> anyhow::Result<()>;
    /// True when each message's bytes are an allocation of their own, not a slice of a larger
    /// read that keeping them would keep alive: the feed then keeps them without a copy.
    fn bytes_are_own(&self) -> bool {
        false
    }
}

/// What the feed does to the source's requests, the options of one replay.
#[derive(Clone, Debug)]
pub struct FeedOptions {
    pub lookahead: Lookahead,
    pub filters: Filters,
    pub sample: Option<SamplePercent>,
    pub shard: Shard,
    pub shape: Shape,
    /// With the copy header added, when there is one (checked before the replay starts).
    pub rewrites: Rewrites,
    pub copy_header: Option<CopyHeader>,
    /// `--diff`: requests carry their recorded response and their endpoint, named by this.
    pub diff_endpoints: Option<Arc<EndpointNamer>>,
}

/// What `--sample` has kept so far.
struct SampleCount {
    percent: SamplePercent,
    unit: SampleUnit,
    units: HashSet<u64>,
    units_kept: HashSet<u64>,
    requests: u64,
    requests_kept: u64,
}

impl SampleCount {
    fn keeps(&mut self, r: &ReplayRequest, count: bool) -> bool {
        let id = match self.unit {
            SampleUnit::Connection => r.conn,
            SampleUnit::Request => r.id,
        };
        let kept = keeps(self.percent, id);
        if count {
            self.requests += 1;
            self.requests_kept += u64::from(kept);
            // Requests are units of their own: counting them needs no set.
            if self.unit == SampleUnit::Connection {
                self.units.insert(id);
                if kept {
                    self.units_kept.insert(id);
                }
            }
        }
        kept
    }

    fn stats(&self) -> SampleStats {
        let (units, units_kept) = match self.unit {
            SampleUnit::Connection => (self.units.len() as u64, self.units_kept.len() as u64),
            SampleUnit::Request => (self.requests, self.requests_kept),
        };
        SampleStats {
            percent: self.percent.percent(),
            unit: self.unit,
            units,
            units_kept,
            requests: self.requests,
            requests_kept: self.requests_kept,
        }
    }
}

/// Reads `source` and hands its sends to `sink`; what it held, whatever happened.
pub fn run(
    mut source: Box<dyn MessageSource>,
    options: FeedOptions,
    sink: &FeedSink,
) -> SourceSummary {
    let mut summary = SourceSummary {
        name: source.name(),
        shard: (options.shard.count > 1).then_some(options.shard),
        ..SourceSummary::default()
    };
    if let Some(size) = source.size() {
        sink.position.total.store(size, Ordering::Relaxed);
    }
    if let Err(e) = feed(source.as_mut(), &options, sink, &mut summary) {
        summary.read_error = Some(format!("{e:#}"));
    }
    summary
}

/// The per-replay state of the feed.
struct Feeder<'a> {
    options: &'a FeedOptions,
    sink: &'a FeedSink,
    has_connections: bool,
    planner: Planner,
    sample: Option<SampleCount>,
    summary: &'a mut SourceSummary,
    first_pass: bool,
    /// HTTP/2: which requests waited for the earlier answers of their connection.
    answer_order: AnswerOrder,
}

fn feed(
    source: &mut dyn MessageSource,
    options: &FeedOptions,
    sink: &FeedSink,
    summary: &mut SourceSummary,
) -> anyhow::Result<()> {
    let has_connections = source.has_connections();
    let sample = match options.sample {
        Some(percent) => Some(SampleCount {
            percent,
            unit: sample_unit(source, options, has_connections)?,
            units: HashSet::new(),
            units_kept: HashSet::new(),
            requests: 0,
            requests_kept: 0,
        }),
        None => None,
    };
    let mut feeder = Feeder {
        options,
        sink,
        has_connections,
        planner: Planner::new(options.shape)?,
        sample,
        summary,
        first_pass: true,
        answer_order: AnswerOrder::default(),
    };
    let result = feeder.passes(source);
    feeder.summary.sample = feeder.sample.as_ref().map(SampleCount::stats);
    result
}

impl Feeder<'_> {
    fn passes(&mut self, source: &mut dyn MessageSource) -> anyhow::Result<()> {
        for pass in 0..self.options.shape.loops {
            if pass > 0 {
                self.planner.next_pass();
                self.first_pass = false;
                self.answer_order = AnswerOrder::default();
            }
            let mut stream = RequestStream::new(self.options.lookahead);
            if source.bytes_are_own() {
                stream = stream.taking_bytes_as_they_are();
            }
            if self.options.diff_endpoints.is_some() {
                stream = stream.keeping_responses();
            }
            let mut ready = Vec::new();
            let mut failed = None;
            let mut going = true;
            source.read(&mut |m, position| {
                if self.first_pass {
                    self.sink.position.read.store(position, Ordering::Relaxed);
                }
                stream.push(m, &mut ready);
                going = self.hand_on(&mut ready, &mut failed);
                going
            })?;
            if going {
                stream.finish(&mut ready);
                self.hand_on(&mut ready, &mut failed);
            }
            if self.first_pass {
                self.summary.stats = stream.stats();
            }
            if let Some(e) = failed {
                return Err(e);
            }
            if self.sink.is_closed() {
                break;
            }
        }
        Ok(())
    }

    /// Plans and sends the requests in `ready`; false when the replay wants no more.
    fn hand_on(
        &mut self,
        ready: &mut Vec<ReplayRequest>,
        failed: &mut Option<anyhow::Error>,
    ) -> bool {
        for r in ready.drain(..) {
            match self.one(r) {
                Ok(true) => {}
                Ok(false) => return false,
                Err(e) => {
                    *failed = Some(e);
                    return false;
                }
            }
        }
        !self.sink.is_closed()
    }

    /// Filters, samples, plans, shards and prepares one request; false when the replay wants
    /// no more.
    fn one(&mut self, r: ReplayRequest) -> anyhow::Result<bool> {
        use anyhow::Context as _;
        let count = self.first_pass;
        let after_earlier_answers = r.version == HttpVersion::Http2
            && self
                .answer_order
                .after_earlier_answers(r.conn, r.ts_ns, r.recorded_latency);
        if !self.options.filters.is_empty() {
            let head = RequestHead::parse(&r.bytes)
                .with_context(|| format!("recorded request {} {}", r.method, r.uri))?;
            if !self.options.filters.matches(&head) {
                self.summary.filtered_out += u64::from(count);
                return Ok(true);
            }
        }
        if let Some(sample) = &mut self.sample
            && !sample.keeps(&r, count)
        {
            return Ok(true);
        }
        // Planned before the shard is taken: every shard plans the same schedule.
        let due = self.planner.due(r.ts_ns);
        let unit = if self.has_connections { r.conn } else { r.id };
        if !self.options.shard.keeps(unit) {
            self.summary.other_shards += u64::from(count);
            return Ok(true);
        }
        let mut prepared = prepare(
            &r,
            &self.options.rewrites,
            self.options.copy_header.as_ref(),
        )?;
        prepared.after_earlier_answers = after_earlier_answers;
        let recorded_conn = r.conn;
        if let Some(endpoints) = &self.options.diff_endpoints {
            prepared.recorded = Some(Box::new(recorded_exchange(r, endpoints)));
        }
        let request = Arc::new(prepared);
        for conn in self.planner.conns(recorded_conn) {
            let route = if self.has_connections {
                Route::Recorded(conn)
            } else {
                Route::Pool { copy: conn.copy }
            };
            let send = PlannedSend {
                due,
                route,
                request: request.clone(),
            };
            if !self.sink.send(send) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The `--sample` unit, chosen on the first `SAMPLE_UNIT_PREFIX` requests the filters keep.
fn sample_unit(
    source: &mut dyn MessageSource,
    options: &FeedOptions,
    has_connections: bool,
) -> anyhow::Result<SampleUnit> {
    if !has_connections {
        return Ok(SampleUnit::Request);
    }
    let mut keys = Vec::new();
    let mut stream = RequestStream::new(options.lookahead);
    let mut ready = Vec::new();
    let take = |ready: &mut Vec<ReplayRequest>, keys: &mut Vec<SampleKey>| {
        for r in ready.drain(..) {
            let kept = options.filters.is_empty()
                || RequestHead::parse(&r.bytes).is_ok_and(|h| options.filters.matches(&h));
            if kept && keys.len() < SAMPLE_UNIT_PREFIX {
                keys.push(SampleKey {
                    conn: r.conn,
                    request: r.id,
                });
            }
        }
        keys.len() < SAMPLE_UNIT_PREFIX
    };
    let mut whole = true;
    source.read(&mut |m, _| {
        stream.push(m, &mut ready);
        whole = take(&mut ready, &mut keys);
        whole
    })?;
    if whole {
        stream.finish(&mut ready);
        take(&mut ready, &mut keys);
    }
    Ok(unit_for(&keys, true))
}

/// Applies rewrites (the copy header's included, see `CopyHeader::add_to`), and finds where the
/// copy header goes when there is one: the bytes the request is sent as.
pub fn prepare(
    r: &ReplayRequest,
    rewrites: &Rewrites,
    copy_header: Option<&CopyHeader>,
) -> anyhow::Result<PreparedRequest> {
    use anyhow::Context as _;
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
        version: r.version,
        body_len: r.body_len,
        after_earlier_answers: false,
        recorded_status: r.recorded_status,
        copy_slot,
        recorded: None,
    })
}

/// What `--diff` compares the answer to `r` with, and under which endpoint it counts.
fn recorded_exchange(r: ReplayRequest, endpoints: &EndpointNamer) -> RecordedExchange {
    RecordedExchange {
        request_id: r.id,
        endpoint: endpoints.name(&r.method, &r.uri),
        request_line: format!("{} {}", r.method, r.uri),
        response: r.recorded_response,
        latency: r.recorded_latency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageKind;
    use crate::packet::Timestamp;
    use crate::replay::schedule::Pace;
    use bytes::Bytes;
    use std::time::Duration;

    /// Requests in memory: `conns` connections of `per_conn` requests each, 1 ms apart.
    struct Memory {
        messages: Vec<HttpMessage>,
        has_connections: bool,
        reads: usize,
    }

    impl Memory {
        fn new(conns: u64, per_conn: u64, has_connections: bool) -> Self {
            let addr: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
            let messages = (0..conns * per_conn)
                .map(|i| HttpMessage {
                    id: i + 1,
                    conn_id: 1 + i % conns,
                    kind: MessageKind::Request {
                        method: "GET".into(),
                        uri: format!("/{i}").as_str().into(),
                    },
                    version: HttpVersion::Http11,
                    request_id: None,
                    first_ts: Timestamp(1_000_000_000 + i * 1_000_000),
                    last_ts: Timestamp(1_000_000_000 + i * 1_000_000),
                    src: addr,
                    dst: addr,
                    bytes: Bytes::from(format!("GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n")),
                    body_len: 0,
                    complete: true,
                })
                .collect();
            Self {
                messages,
                has_connections,
                reads: 0,
            }
        }
    }

    impl MessageSource for Memory {
        fn name(&self) -> String {
            "memory".into()
        }
        fn has_connections(&self) -> bool {
            self.has_connections
        }
        fn size(&self) -> Option<u64> {
            Some(self.messages.len() as u64)
        }
        fn read(&mut self, visit: &mut dyn FnMut(HttpMessage, u64) -> bool) -> anyhow::Result<()> {
            self.reads += 1;
            for (i, m) in self.messages.iter().enumerate() {
                if !visit(m.clone(), i as u64 + 1) {
                    break;
                }
            }
            Ok(())
        }
    }

    fn options(shard: Shard, loops: u32, sample: Option<&str>) -> FeedOptions {
        FeedOptions {
            lookahead: Lookahead::default(),
            filters: Filters::default(),
            sample: sample.map(|s| s.parse().unwrap()),
            shard,
            shape: Shape {
                pace: Pace::Original { speed: 1.0 },
                loops,
                copies: 1,
            },
            rewrites: Rewrites::default(),
            copy_header: None,
            diff_endpoints: None,
        }
    }

    /// (due, route, request bytes) of every send, and the summary.
    fn sends(
        source: Memory,
        options: FeedOptions,
    ) -> (Vec<(Duration, Route, Bytes)>, SourceSummary) {
        let (sink, rx) = FeedSink::channel(1 << 20);
        let summary = run(Box::new(source), options, &sink);
        drop(sink);
        let got = rx
            .iter()
            .map(|s| (s.due, s.route, s.request.bytes.clone()))
            .collect();
        (got, summary)
    }

    fn recorded(route: Route) -> u64 {
        match route {
            Route::Recorded(conn) => conn.recorded,
            Route::Pool { .. } => panic!("pooled"),
        }
    }

    #[test]
    fn shards_split_by_connection_cover_everything_once_and_keep_the_whole_schedule() {
        let (whole, summary) = sends(Memory::new(200, 3, true), options(Shard::WHOLE, 1, None));
        assert_eq!(whole.len(), 600);
        assert_eq!(summary.stats.requests, 600);
        let mut union = Vec::new();
        let mut owner = std::collections::HashMap::new();
        for index in 1..=2 {
            let shard = Shard { index, count: 2 };
            let (part, summary) = sends(Memory::new(200, 3, true), options(shard, 1, None));
            assert_eq!(summary.other_shards + part.len() as u64, 600);
            assert!(part.len() > 200 && part.len() < 400, "{}", part.len());
            for (_, route, _) in &part {
                let first = *owner.entry(recorded(*route)).or_insert(index);
                assert_eq!(first, index, "a connection in two parts");
            }
            union.extend(part);
        }
        union.sort_by_key(|(due, _, bytes)| (*due, bytes.clone()));
        let mut expected = whole.clone();
        expected.sort_by_key(|(due, _, bytes)| (*due, bytes.clone()));
        assert_eq!(union, expected, "same sends at the same due times");
    }

    #[test]
    fn without_recorded_connections_requests_share_the_pool_and_shard_alone() {
        let (all, _) = sends(
            Memory::new(50, 2, false),
            options(Shard { index: 1, count: 2 }, 1, None),
        );
        assert!(all.iter().all(|(_, r, _)| *r == Route::Pool { copy: 0 }));
        assert!(all.len() > 30 && all.len() < 70, "{}", all.len());
    }

    #[test]
    fn loops_read_the_source_again_one_span_later() {
        let (sent, summary) = sends(Memory::new(2, 2, true), options(Shard::WHOLE, 2, None));
        let dues: Vec<u128> = sent.iter().map(|(d, _, _)| d.as_millis()).collect();
        assert_eq!(dues, vec![0, 1, 2, 3, 3, 4, 5, 6]);
        assert_eq!(summary.stats.requests, 4, "counted once");
        let iterations: Vec<u32> = sent
            .iter()
            .map(|(_, r, _)| match r {
                Route::Recorded(c) => c.iteration,
                Route::Pool { .. } => 9,
            })
            .collect();
        assert_eq!(iterations, vec![0, 0, 0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn a_sample_keeps_connections_whole_stably_and_says_what_it_kept() {
        // 300 connections of 2 requests: the connection is the unit.
        let (kept, summary) = sends(
            Memory::new(300, 2, true),
            options(Shard::WHOLE, 1, Some("10%")),
        );
        let stats = summary.sample.unwrap();
        assert_eq!(stats.unit, SampleUnit::Connection);
        assert_eq!((stats.units, stats.requests), (300, 600));
        assert_eq!(kept.len() as u64, stats.requests_kept);
        assert_eq!(stats.requests_kept, 2 * stats.units_kept);
        assert!(kept.windows(2).all(|w| w[0].0 <= w[1].0));
        let (again, _) = sends(
            Memory::new(300, 2, true),
            options(Shard::WHOLE, 1, Some("10%")),
        );
        assert_eq!(again, kept);
        // Eight long connections: the request is the unit.
        let (_, summary) = sends(
            Memory::new(8, 100, true),
            options(Shard::WHOLE, 1, Some("10%")),
        );
        assert_eq!(summary.sample.unwrap().unit, SampleUnit::Request);
    }

    #[test]
    fn prepared_requests_carry_the_copy_header_slot_after_the_rewrites() {
        let request = ReplayRequest {
            id: 1,
            conn: 1,
            ts_ns: 0,
            method: "GET".into(),
            uri: "/a".into(),
            bytes: Bytes::from("GET /a HTTP/1.1\r\nHost: h\r\nX-Copy: old\r\n\r\n"),
            version: HttpVersion::Http11,
            body_len: 0,
            recorded_status: Some(200),
            recorded_response: None,
            recorded_latency: None,
        };
        let mut rewrites = Rewrites::default();
        rewrites.add_set_header("X-Replay: 1").unwrap();
        let header = CopyHeader::new("X-Copy").unwrap();
        let with_header = header.add_to(&rewrites).unwrap();
        let prepared = prepare(&request, &with_header, Some(&header)).unwrap();
        let slot = prepared.copy_slot.unwrap();
        assert_eq!(
            String::from_utf8(header.tag(&prepared.bytes, slot, 3)).unwrap(),
            "GET /a HTTP/1.1\r\nHost: h\r\nX-Replay: 1\r\nX-Copy: 3\r\n\r\n"
        );
        // Without a copy header: as recorded, no slot.
        let plain = prepare(&request, &Rewrites::default(), None).unwrap();
        assert_eq!(plain.bytes, request.bytes);
        assert_eq!(plain.copy_slot, None);
        // A copy header the rewrites also name is refused.
        let mut clash = Rewrites::default();
        clash.add_drop_header("x-copy").unwrap();
        let err = header.add_to(&clash).unwrap_err();
        assert!(err.to_string().contains("--copy-header X-Copy"), "{err:#}");
    }
}
