//! capture: record live HTTP traffic with eBPF and replay it later.
//!
//! The data flows one way through one module per stage (see the README's module tour):
//! `live` (eBPF load/attach, ring drain) or a pcap source -> [`packet`] -> [`decode`] ->
//! TCP reassembly -> HTTP framing -> sinks.

pub mod counters;
pub mod decode;
pub mod files;
pub mod http;
pub mod http2;
pub mod message;
pub mod packet;
pub mod pipeline;
pub mod protocol;
pub mod reassembly;
pub mod recorder;
pub mod redact;
pub mod replay;
pub mod store;
pub mod sync;
pub mod tls;
pub mod units;

pub mod agent;
pub mod cmd;
pub mod live;
