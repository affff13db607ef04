//! The embedded backend (the default, no server needed): SQLite in WAL mode in a data
//! directory. Several processes can use one data directory at once (a recorder and
//! `capture recordings list`, or two recorders), which a single-process store could not.
//!
//! Layout: `messages(offset INTEGER PRIMARY KEY AUTOINCREMENT, meta BLOB, bytes BLOB)` where
//! offsets only grow and are never reused (partition 0 of a recording's window);
//! `message_tags(recording, offset)` says which recordings each message belongs to, which
//! makes overlapping windows exact; `recordings(name, json)` is the catalog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    FragmentJoiner, MessageMeta, Recording, RecordingState, RecordingSummary, Store, StoreError,
    StoredMessage, exists_error, fragments, meta_for, node_name, resolve_interrupted,
    validate_name,
};
use crate::message::HttpMessage;
use crate::packet::Timestamp;

/// Largest stored fragment; larger messages are split (keeps every row modest).
pub const FRAGMENT_BYTES: usize = 8 << 20;

/// Messages queued before a flush is forced (bounds memory between flushes).
pub const MAX_QUEUED_MESSAGES: usize = 10_000;

/// The embedded store in one data directory.
pub struct EmbeddedStore {
    path: PathBuf,
    db: Connection,
    queue: Vec<(MessageMeta, bytes::Bytes)>,
    node: String,
    run: u64,
    fragment_bytes: usize,
}

fn backend_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            backend_err(
                dir,
                format!("cannot create the data directory ({e}); pass --data-dir DIR"),
            )
        })?;
        let path = dir.join("capture.sqlite");
        let db = Connection::open(&path).map_err(|e| backend_err(&path, e))?;
        db.busy_timeout(Duration::from_secs(10))
            .map_err(|e| backend_err(&path, e))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS messages (
                 offset INTEGER PRIMARY KEY AUTOINCREMENT,
                 meta BLOB NOT NULL,
                 bytes BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS message_tags (
                 recording TEXT NOT NULL,
                 offset INTEGER NOT NULL,
                 PRIMARY KEY (recording, offset)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS recordings (
                 name TEXT PRIMARY KEY,
                 json TEXT NOT NULL);",
        )
        .map_err(|e| backend_err(&path, e))?;
        Ok(Self {
            path,
            db,
            queue: Vec::new(),
            node: node_name(),
            run: Timestamp::now().0,
            fragment_bytes: FRAGMENT_BYTES,
        })
    }

    /// Sets the fragment size (tests use a small one to exercise splitting).
    pub fn with_fragment_bytes(mut self, bytes: usize) -> Self {
        self.fragment_bytes = bytes.max(1);
        self
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        backend_err(&self.path, e)
    }

    /// Offset the next stored message will get.
    fn next_offset(&self) -> Result<i64, StoreError> {
        let seq: Option<i64> = self
            .db
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'messages'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(seq.unwrap_or(0) + 1)
    }

    fn load(&self, name: &str) -> Result<Option<Recording>, StoreError> {
        let json: Option<String> = self
            .db
            .query_row("SELECT json FROM recordings WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| self.err(format!("catalog entry {name}: {e}")))
        })
        .transpose()
    }

    fn save(&self, rec: &Recording) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(|e| self.err(e))?;
        self.db
            .execute(
                "INSERT INTO recordings (name, json) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET json = excluded.json",
                params![rec.name, json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn resolved(&self, rec: Recording) -> Result<Recording, StoreError> {
        let end = self.next_offset()?;
        let resolved = resolve_interrupted(rec.clone(), || BTreeMap::from([(0, end)]));
        if resolved != rec {
            self.save(&resolved)?;
        }
        Ok(resolved)
    }
}

fn encode(meta: &MessageMeta) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(meta)
}

impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn begin(&mut self, name: &str, source: &str) -> Result<Recording, StoreError> {
        validate_name(name)?;
        self.flush()?;
        if let Some(existing) = self.load(name)? {
            return Err(exists_error(&self.resolved(existing)?));
        }
        let rec = Recording::started(
            name,
            "embedded",
            None,
            BTreeMap::from([(0, self.next_offset()?)]),
            source,
        );
        self.save(&rec)?;
        Ok(rec)
    }

    fn append(&mut self, message: &HttpMessage, recordings: &[String]) -> Result<(), StoreError> {
        let meta = meta_for(message, &self.node, self.run, recordings);
        self.queue
            .extend(fragments(&meta, &message.bytes, self.fragment_bytes));
        if self.queue.len() >= MAX_QUEUED_MESSAGES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let tx = self
            .db
            .transaction()
            .map_err(|e| backend_err(&self.path, e))?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO messages (meta, bytes) VALUES (?1, ?2)")
                .map_err(|e| backend_err(&self.path, e))?;
            let mut tag = tx
                .prepare_cached("INSERT INTO message_tags (recording, offset) VALUES (?1, ?2)")
                .map_err(|e| backend_err(&self.path, e))?;
            for (meta, bytes) in &self.queue {
                let encoded = encode(meta).map_err(|e| backend_err(&self.path, e))?;
                insert
                    .execute(params![encoded, &bytes[..]])
                    .map_err(|e| backend_err(&self.path, e))?;
                let offset = tx.last_insert_rowid();
                for name in &meta.recordings {
                    tag.execute(params![name, offset])
                        .map_err(|e| backend_err(&self.path, e))?;
                }
            }
        }
        tx.commit().map_err(|e| backend_err(&self.path, e))?;
        self.queue.clear();
        Ok(())
    }

    fn end(&mut self, name: &str, summary: RecordingSummary) -> Result<Recording, StoreError> {
        self.flush()?;
        let mut rec = self
            .load(name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        if rec.state != RecordingState::Recording {
            return Err(StoreError::NotActive(name.to_string()));
        }
        rec.end = Some(BTreeMap::from([(0, self.next_offset()?)]));
        rec.stopped_at_ns = Some(Timestamp::now().0);
        rec.state = RecordingState::Complete;
        rec.owner = None;
        rec.messages = summary.messages;
        rec.bytes = summary.bytes;
        rec.drops = summary.drops;
        self.save(&rec)?;
        Ok(rec)
    }

    fn list(&mut self) -> Result<Vec<Recording>, StoreError> {
        let names: Vec<String> = {
            let mut stmt = self
                .db
                .prepare("SELECT name FROM recordings ORDER BY name")
                .map_err(|e| self.err(e))?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        names.iter().map(|n| self.get(n)).collect()
    }

    fn get(&mut self, name: &str) -> Result<Recording, StoreError> {
        let rec = self
            .load(name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        self.resolved(rec)
    }

    fn delete(&mut self, name: &str) -> Result<(), StoreError> {
        let rec = self.get(name)?;
        if rec.state == RecordingState::Recording {
            return Err(StoreError::Backend {
                path: self.path.display().to_string(),
                message: format!("recording {name} is still running; stop it first"),
            });
        }
        let tx = self
            .db
            .transaction()
            .map_err(|e| backend_err(&self.path, e))?;
        tx.execute(
            "DELETE FROM messages WHERE offset IN (
                 SELECT offset FROM message_tags t WHERE t.recording = ?1
                 AND NOT EXISTS (SELECT 1 FROM message_tags o WHERE o.offset = t.offset AND o.recording <> ?1))",
            [name],
        )
        .map_err(|e| backend_err(&self.path, e))?;
        tx.execute("DELETE FROM message_tags WHERE recording = ?1", [name])
            .map_err(|e| backend_err(&self.path, e))?;
        tx.execute("DELETE FROM recordings WHERE name = ?1", [name])
            .map_err(|e| backend_err(&self.path, e))?;
        tx.commit().map_err(|e| backend_err(&self.path, e))
    }

    fn read(
        &mut self,
        name: &str,
        visit: &mut dyn FnMut(StoredMessage) -> bool,
    ) -> Result<(), StoreError> {
        let rec = self.get(name)?;
        let start = rec.start.get(&0).copied().unwrap_or(1);
        let end = match &rec.end {
            Some(end) => end.get(&0).copied().unwrap_or(start),
            None => self.next_offset()?,
        };
        let mut stmt = self
            .db
            .prepare(
                "SELECT m.offset, m.meta, m.bytes FROM message_tags t JOIN messages m ON m.offset = t.offset
                 WHERE t.recording = ?1 AND t.offset >= ?2 AND t.offset < ?3 ORDER BY t.offset",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![name, start, end])
            .map_err(|e| self.err(e))?;
        let mut joiner = FragmentJoiner::default();
        while let Some(row) = rows.next().map_err(|e| backend_err(&self.path, e))? {
            let offset: i64 = row.get(0).map_err(|e| backend_err(&self.path, e))?;
            let meta: Vec<u8> = row.get(1).map_err(|e| backend_err(&self.path, e))?;
            let bytes: Vec<u8> = row.get(2).map_err(|e| backend_err(&self.path, e))?;
            let position = format!("offset {offset}");
            let meta: MessageMeta =
                postcard::from_bytes(&meta).map_err(|e| StoreError::Corrupt {
                    position: position.clone(),
                    message: e.to_string(),
                })?;
            if let Some(message) = joiner.push(meta, &bytes, &position)?
                && !visit(message)
            {
                break;
            }
        }
        Ok(())
    }
}
