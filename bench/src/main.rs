//! `aenv-bench`: benchmarks of aenv-operator against the real Docker daemon. Each subcommand measures one thing
//! side by side with what it compares to, interleaved in one run so both sides see the same host.
//!
//!   aenv-bench compose --rounds 10      # a stack to Running: aenv-operator vs `docker compose up -d`

mod compose;
mod operator;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "aenv-bench", about = "Benchmarks of aenv-operator against the real Docker daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A compose stack from create to Running: through the operator's REST API against `docker compose up -d`
    /// of the same file (then polling until the main container runs), interleaved round by round.
    Compose(compose::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Compose(args) => compose::run(args).await,
    }
}
