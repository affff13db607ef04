//! Replay: sending a recording's requests to a target. This module holds the sans-IO parts
//! (when each request is due, and the statistics of what happened); the I/O shell that opens
//! connections and sends is built on top of them.

pub mod schedule;
pub mod stats;
