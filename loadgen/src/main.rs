//! The Floodgate load generator: drives a running Floodgate the way a crowd of fans would and
//! measures it. Run `loadgen --help` for the scenarios.
//!
//! - [`queue`]: `loadgen queue`, the waiting-room benchmark (joins, held WebSockets, position
//!   latency, admission lag and order, ingress memory per connection).
//! - [`fans`]: fan accounts and their access tokens.
//! - [`report`]: latency histograms and the JSON result.

mod fans;
mod queue;
mod report;

use clap::{Parser, Subcommand};

/// Floodgate's load generator.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join N fans to a show's waiting room and hold their WebSockets.
    Queue(queue::QueueArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("loadgen", common::config::LogFormat::Text);
    match Cli::parse().command {
        Command::Queue(args) => queue::run(args).await,
    }
}
