//! Replay: sending a recording's requests to a target, streamed: the source is read as the
//! replay goes, so memory is bounded by configuration, never by the recording's size. The
//! sans-IO parts decide what is sent (`source`, `select`, `sample`, `shard`, `rewrite`), when
//! and how many times at once (`schedule`; `sequence`: which HTTP/2 streams wait for earlier
//! answers), how answers are read (`response`), how they compare
//! with the recorded ones (`diff`) and what is reported (`report`, `timeline`, the page in
//! `html`); `feed` is the blocking shell that reads the source and plans, `engine`
//! the async shell that paces, opens connections (TCP, or TLS set up by `tls` for https
//! targets) and sends; `load` checks options and opens
//! the source into a replay ready to start, for the command line and the agent alike.

pub mod diff;
pub mod engine;
pub mod feed;
pub mod html;
pub mod load;
pub mod report;
pub mod response;
pub mod rewrite;
pub mod sample;
pub mod schedule;
pub mod select;
pub mod sequence;
pub mod shard;
pub mod source;
pub mod target;
pub mod timeline;
pub mod tls;
