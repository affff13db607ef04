//! Replay: sending a recording's requests to a target. The sans-IO parts decide what is sent
//! (`source`, `select`, `sample`, `rewrite`), when and how many times at once (`schedule`), how
//! answers are read (`response`) and what is reported (`report`); `engine` is the async shell
//! that opens connections and sends; `load` joins them into a replay ready to start, for the
//! command line and the agent alike.

pub mod engine;
pub mod load;
pub mod report;
pub mod response;
pub mod rewrite;
pub mod sample;
pub mod schedule;
pub mod select;
pub mod source;
pub mod target;
