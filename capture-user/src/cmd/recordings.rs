//! `capture recordings list|show|delete`, `capture inspect`, `capture export`: look at and
//! manage what was recorded.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::cmd::record::print_summary;
use crate::cmd::store_args::StoreArgs;
use crate::files::gor::{to_payload, write_payload};
use crate::files::pending::{PendingMap, is_interim};
use crate::message::HttpVersion;
use crate::packet::Timestamp;
use crate::store::StoredKind;

/// `capture recordings` subcommands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum RecordingsCommand {
    /// One line per recording: name, state, messages, bytes, start time, source.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Everything about one recording, including its window and drops.
    Show {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Print the catalog entry as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a recording and the messages no other recording shares.
    Delete {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Arguments of `capture inspect`.
#[derive(Clone, Debug, clap::Args)]
pub struct InspectArgs {
    /// Recording to dump.
    pub name: String,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Print each message's bytes too (as text, non-printable bytes escaped).
    #[arg(long)]
    pub bytes: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Arguments of `capture export`.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportArgs {
    /// Recording to export.
    pub name: String,
    /// Write GoReplay's file format here.
    #[arg(long, value_name = "FILE")]
    pub gor: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs `capture recordings ...`.
pub fn run_recordings(cmd: RecordingsCommand) -> anyhow::Result<()> {
    match cmd {
        RecordingsCommand::List { store: args } => {
            let mut store = args.to_config()?.open()?;
            let list = store.list()?;
            if list.is_empty() {
                eprintln!("no recordings in {}", args.to_config()?.describe());
            }
            let mut out = std::io::stdout().lock();
            for r in list {
                writeln!(
                    out,
                    "{}\t{}\t{} messages\t{} bytes\t{}\t{}",
                    r.name,
                    r.state,
                    r.messages,
                    r.bytes,
                    Timestamp(r.started_at_ns).to_rfc3339(),
                    r.source
                )?;
            }
            Ok(())
        }
        RecordingsCommand::Show { name, store, json } => {
            let rec = store.to_config()?.open()?.get(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rec)?);
            } else {
                print_summary(&rec);
                println!("name: {}", rec.name);
                println!("state: {}", rec.state);
                if let Some(why) = &rec.reason {
                    println!("reason: {why}");
                }
                println!("backend: {}", rec.backend);
                println!("source: {}", rec.source);
                println!("started: {}", Timestamp(rec.started_at_ns).to_rfc3339());
                if let Some(stopped) = rec.stopped_at_ns {
                    println!("stopped: {}", Timestamp(stopped).to_rfc3339());
                }
                for (p, o) in &rec.start {
                    let end = rec.end.as_ref().and_then(|e| e.get(p)).map(i64::to_string);
                    println!(
                        "window partition {p}: [{o}, {})",
                        end.unwrap_or_else(|| "open".into())
                    );
                }
                println!("messages: {}", rec.messages);
                println!("bytes: {}", rec.bytes);
                for (k, v) in &rec.drops {
                    println!("drop {k}: {v}");
                }
                for (k, v) in &rec.interfaces {
                    println!("interface {k}: {v} packets");
                }
            }
            Ok(())
        }
        RecordingsCommand::Delete { name, store } => {
            store.to_config()?.open()?.delete(&name)?;
            eprintln!("deleted recording {name}");
            Ok(())
        }
    }
}

/// Runs `capture inspect`.
pub fn run_inspect(args: InspectArgs) -> anyhow::Result<()> {
    let mut store = args.store.to_config()?.open()?;
    let mut out = std::io::stdout().lock();
    let mut shown = 0u64;
    let mut write_error = None;
    store.read(&args.name, &mut |m| {
        if args.limit.is_some_and(|l| shown >= l) {
            return false;
        }
        shown += 1;
        let http = m.to_http();
        let mut line = format!("{} node={}", http.summary_line(), m.meta.node);
        if args.bytes {
            line.push('\n');
            line.push_str(&String::from_utf8_lossy(&m.bytes).escape_debug().to_string());
        }
        if let Err(e) = writeln!(out, "{line}") {
            write_error = Some(e);
            return false;
        }
        true
    })?;
    if let Some(e) = write_error {
        return Err(e).context("writing to stdout");
    }
    Ok(())
}

/// Most requests `capture export` keeps waiting for their response (to write the response's
/// latency): answered requests are forgotten at once, and beyond this many unanswered ones
/// the oldest is forgotten and counted, so the export's memory does not grow with the
/// recording.
const EXPORT_MAX_PENDING: usize = 100_000;

/// Runs `capture export`.
pub fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    let mut store = args.store.to_config()?.open()?;
    let file = std::fs::File::create(&args.gor)
        .with_context(|| format!("creating {}", args.gor.display()))?;
    let mut out = std::io::BufWriter::new(file);
    // (run, request id) to the request's capture time.
    let mut request_ts = PendingMap::new(EXPORT_MAX_PENDING);
    let mut written = 0u64;
    let mut skipped_http2 = 0u64;
    let mut error = None;
    store.read(&args.name, &mut |m| {
        if m.meta.version == HttpVersion::Http2 {
            // GoReplay's payloads are HTTP/1 messages: HTTP/2 has no place in them.
            skipped_http2 += 1;
            return true;
        }
        let request_ts_of = |request_id: Option<u64>| request_id.map(|r| (m.meta.run, r));
        let payload = match &m.meta.kind {
            StoredKind::Request { .. } => {
                request_ts.insert((m.meta.run, m.meta.id), m.meta.first_ts);
                to_payload(&m, None)
            }
            StoredKind::Response { status } if is_interim(*status) => {
                let req = request_ts_of(m.meta.request_id).and_then(|k| request_ts.get(&k));
                to_payload(&m, req.copied())
            }
            StoredKind::Response { .. } => {
                let req = request_ts_of(m.meta.request_id).and_then(|k| request_ts.remove(&k));
                to_payload(&m, req)
            }
        };
        if let Err(e) = write_payload(&mut out, &payload) {
            error = Some(e);
            return false;
        }
        written += 1;
        true
    })?;
    if let Some(e) = error {
        return Err(e).with_context(|| format!("writing {}", args.gor.display()));
    }
    out.flush()
        .with_context(|| format!("writing {}", args.gor.display()))?;
    eprintln!(
        "exported {written} messages of {} to {}",
        args.name,
        args.gor.display()
    );
    if skipped_http2 > 0 {
        eprintln!(
            "left out {skipped_http2} HTTP/2 messages: GoReplay files hold HTTP/1 only (replay the recording itself to send them)"
        );
    }
    if request_ts.evicted() > 0 {
        eprintln!(
            "{} requests waited for a response while {EXPORT_MAX_PENDING} later ones did and were forgotten: a response that came for one afterwards was written with latency 0",
            request_ts.evicted()
        );
    }
    Ok(())
}
