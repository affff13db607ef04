//! The catalog of recordings: one small SQLite table (name, JSON), written only when a
//! recording starts, ends, is resolved as interrupted or is deleted.
//!
//! The journal is kept (`journal_mode=PERSIST`) rather than WAL: readers then need no `-wal`
//! or `-shm` file to exist or grow, so listing works on a full disk, and a commit reuses the
//! journal's blocks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use crate::store::{Recording, StoreError};

/// The catalog in a data directory.
pub struct Catalog {
    path: PathBuf,
    db: Connection,
}

impl Catalog {
    /// Opens (creating if needed) `catalog.sqlite` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("catalog.sqlite");
        let err = |e: rusqlite::Error| backend(&path, e);
        let db = Connection::open(&path).map_err(err)?;
        db.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        db.query_row("PRAGMA journal_mode=PERSIST", [], |_| Ok(()))
            .map_err(err)?;
        let exists: bool = db
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'recordings'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(err)?
            > 0;
        if !exists {
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS recordings (name TEXT PRIMARY KEY, json TEXT NOT NULL);",
            )
            .map_err(err)?;
        }
        Ok(Self { path, db })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        backend(&self.path, e)
    }

    /// One entry.
    pub fn load(&self, name: &str) -> Result<Option<Recording>, StoreError> {
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

    /// Writes an entry; `Err(true)` when the disk is full (the caller may free space and
    /// retry).
    pub fn save(&self, rec: &Recording) -> Result<(), (bool, StoreError)> {
        let json = serde_json::to_string(rec).map_err(|e| (false, self.err(e)))?;
        self.db
            .execute(
                "INSERT INTO recordings (name, json) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET json = excluded.json",
                params![rec.name, json],
            )
            .map_err(|e| (is_full(&e), self.err(e)))?;
        Ok(())
    }

    /// Removes entries.
    pub fn remove(&self, names: &[String]) -> Result<(), StoreError> {
        for name in names {
            self.db
                .execute("DELETE FROM recordings WHERE name = ?1", [name])
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Every name, sorted.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .db
            .prepare("SELECT name FROM recordings ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

fn backend(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::DiskFull)
}
