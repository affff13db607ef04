//! Small helpers for the few locks shared between threads.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, carrying on past a panic of another holder: every value behind these locks
/// (counters, spare buffers, status snapshots) stays usable whatever that thread was doing.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
