//! Response diffing for `capture replay --diff`: does the target still answer as it did when
//! the traffic was recorded? Each replayed response is decoded (`decode`), compared field by
//! field with its recorded twin (`compare`), and counted per endpoint (`endpoint`, `tally`)
//! into a bounded summary (`summary`) that the terminal, the JSON output and the HTML report
//! show. With `--baseline`, the same requests also go to a target running the recorded
//! version: what differs there too is noise (clocks, random ids), and only the rest is
//! reported as a regression. Sans-IO: the replay engine feeds responses; nothing here does
//! I/O, and memory stays bounded however many requests a replay sends.

pub mod compare;
pub mod decode;
pub mod endpoint;
pub mod summary;
pub mod tally;

pub use compare::{Comparison, DEFAULT_NOISE_HEADERS, DiffRules, RuleError, compare};
pub use decode::{DecodeError, DecodedResponse, decode_response};
pub use endpoint::{EndpointNamer, PatternError};
pub use summary::{
    DiffKind, DiffSummary, Difference, EndpointSummary, Example, FieldClass, FieldSummary,
    LatencyPair,
};
pub use tally::{Baseline, DiffLine, DiffTally, Observation, Outcome, diff_line};
