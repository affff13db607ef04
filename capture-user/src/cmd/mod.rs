//! Command-line commands: each parses its own arguments (clap) and is a thin shell over the
//! library stages.

pub mod agent;
pub mod capture_args;
pub mod messages;
pub mod packets;
pub mod record;
pub mod recordings;
pub mod replay;
pub mod store_args;
