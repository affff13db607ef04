//! `capture agent`: the HTTP control API (see [`crate::agent`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::agent::{AgentConfig, read_token, serve};
use crate::cmd::store_args::StoreArgs;

/// Arguments of `capture agent`.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// Address to serve the API on (e.g. 0.0.0.0:9300; beyond loopback needs --token-file).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9300")]
    pub listen: SocketAddr,

    /// File holding the bearer token every call (but /healthz) must carry.
    #[arg(long, value_name = "FILE", env = "CAPTURE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Replays may only target these HOST:PORT pairs (repeatable; default: any).
    #[arg(long = "allow-target", value_name = "HOST:PORT")]
    pub allow_targets: Vec<String>,

    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs `capture agent`.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let token = args.token_file.as_ref().map(read_token).transpose()?;
    serve(AgentConfig {
        listen: args.listen,
        token,
        store: args.store.to_config()?,
        allow_targets: args.allow_targets,
    })
    .await
}
