//! herald-bench: measures a Herald deployment (or a raw TCP baseline) under load.
//!
//! # Layout
//! - `cli`: the commands and their flags.
//! - `fanout`: subscribers + publishers, delivery counts, loss/duplicate checks, latency.
//! - `connections`: idle-connection setup rate and memory per connection.
//! - `presence`: a join/leave flood on one channel; events delivered, message latency
//!   before and during it, gateway CPU.
//! - `raw`: the baseline server (pre-encoded frames over plain tokio TCP) and its client.
//! - `client`: connecting from many source addresses, tokens, frame field extraction.
//! - `report`: the human table / JSON output and `/proc` readings of the target.

mod cli;
mod client;
mod connections;
mod fanout;
mod presence;
mod publish;
mod raw;
mod report;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    // Many sockets: lift the soft open-file limit to the hard one.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("herald-bench: cannot raise the open-file limit: {e}");
    }
    let threads = cli.threads.unwrap_or(1).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            cli::Command::Fanout(args) => fanout::run(args, cli.json).await,
            cli::Command::Connections(args) => connections::run(args, cli.json).await,
            cli::Command::RawServer(args) => raw::server(args).await,
            cli::Command::Presence(args) => presence::run(args, cli.json).await,
            cli::Command::Publish(args) => publish::run(args, cli.json).await,
        }
    })
}
