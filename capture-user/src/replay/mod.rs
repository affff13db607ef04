//! Replay: sending a recording's requests to a target. The sans-IO parts decide what is sent
//! (`source`, `select`), when (`schedule`), how answers are read (`response`) and what is
//! reported (`report`); `engine` is the async shell that opens connections and sends.

pub mod engine;
pub mod report;
pub mod response;
pub mod schedule;
pub mod select;
pub mod source;
