//! `aenv-bench`: benchmarks of aenv-operator against the real Docker daemon. Each subcommand measures one thing
//! side by side with what it compares to, interleaved in one run so both sides see the same host.
//!
//!   aenv-bench create --rounds 20       # one instance to Running vs `docker run -d`
//!   aenv-bench burst --count 100        # 100 creates at concurrency 8 vs `docker run -d` the same
//!   aenv-bench accept --operator-bin B --baseline-bin A   # creates accepted/s at concurrency 32, two builds
//!   aenv-bench reads --instances 1000   # GET and list rates with 1,000 live instances (wrk), memory, resync
//!   aenv-bench delete --rounds 20       # DELETE answer and removal vs `docker rm -f`
//!   aenv-bench compose --rounds 10      # a stack to Running: aenv-operator vs `docker compose up -d`
//!   aenv-bench claim --pool 50          # a create answered Running from a warm pool vs cold vs `docker run -d`
//!   aenv-bench sdk --rounds 5           # the real SDK's initialize() without and with a warm pool
//!   aenv-bench exec --rounds 50         # exec `true` vs Docker's exec API and CLI; a 1 MiB file round trip
//!   aenv-bench pause --rounds 20        # pause/resume answers and freeze times vs Docker's pause API
//!   aenv-bench fork --count 8           # a fork of 8 from a snapshot until all run vs 8 cold creates
//!   aenv-bench memory --baseline-bin OLD # peak RSS under 8 collected execs of 2 x 16 MiB 8 60 MiB uploads, and their downloads

mod accept;
mod compose;
mod containers;
mod operator;
mod ops;
mod pools;
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
    /// One instance from create to Running, against `docker run -d`, interleaved.
    Create(containers::CreateArgs),
    /// Creates the API accepts per second at a fixed concurrency, and their answer times, for two operator
    /// builds side by side (the controller kept off Docker's critical path).
    Accept(accept::Args),
    /// A burst of creates at a fixed concurrency until all run, against `docker run -d` at the same concurrency.
    Burst(containers::BurstArgs),
    /// GET and list throughput and latency with many live instances (wrk), resident memory, resync cost.
    Reads(containers::ReadsArgs),
    /// DELETE latency and time until the container is gone, against `docker rm -f`.
    Delete(containers::DeleteArgs),
    /// SDK-form creates served from a warm pool (answered Running), against the cold path and `docker run -d`;
    /// a burst of claims; memory per waiting sandbox.
    Claim(pools::ClaimArgs),
    /// Exec of `true` through the operator against Docker's own exec API and CLI; a 1 MiB file round trip.
    Exec(ops::ExecArgs),
    /// Pause and resume through the operator (answer, and until the daemon reports it) against Docker's API.
    Pause(ops::PauseArgs),
    /// A fork of N from a snapshot until all run, against N cold creates.
    Fork(ops::ForkArgs),
    /// Peak resident memory of the operator under concurrent big collected execs, uploads and downloads, side by
    /// side with a baseline build when one is given.
    Memory(ops::MemoryArgs),
    /// The real Python SDK's `Environment(...).initialize()` to healthy, without and with a warm pool.
    Sdk(pools::SdkArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Compose(args) => compose::run(args).await,
        Command::Create(args) => containers::create(args).await,
        Command::Burst(args) => containers::burst(args).await,
        Command::Accept(args) => accept::run(args).await,
        Command::Reads(args) => containers::reads(args).await,
        Command::Delete(args) => containers::delete(args).await,
        Command::Claim(args) => pools::claim(args).await,
        Command::Sdk(args) => pools::sdk(args).await,
        Command::Exec(args) => ops::exec(args).await,
        Command::Pause(args) => ops::pause(args).await,
        Command::Fork(args) => ops::fork(args).await,
        Command::Memory(args) => ops::memory(args).await,
    }
}
