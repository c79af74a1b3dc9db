//! The Floodgate load generator: drives a running Floodgate the way a crowd of fans would and
//! measures it. Run `loadgen --help` for the scenarios.
//!
//! - [`queue`]: `loadgen queue`, the waiting-room benchmark (joins, held WebSockets, position
//!   latency, admission lag and order, ingress memory per connection).
//! - [`holds`]: `loadgen holds`, the booking-pipeline benchmark (admitted fans asking for holds
//!   on one show: holds/s, seats/s, latency, conflicts) ending in a PostgreSQL audit.
//! - [`baseline`]: `loadgen baseline`, this machine's raw PostgreSQL and RabbitMQ ceilings, and
//!   the pipeline's share of them.
//! - [`fans`]: fan accounts and their access tokens.
//! - [`report`]: latency histograms, progress bars, process memory and CPU.

mod baseline;
mod fans;
mod holds;
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
    /// Admitted fans ask one show for holds; holds/s, seats/s, latency, then an audit.
    Holds(holds::HoldsArgs),
    /// This machine's PostgreSQL and RabbitMQ ceilings (and a holds run's share of them).
    Baseline(baseline::BaselineArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("loadgen", common::config::LogFormat::Text);
    match Cli::parse().command {
        Command::Queue(args) => queue::run(args).await,
        Command::Holds(args) => holds::run(args).await,
        Command::Baseline(args) => baseline::run(args).await,
    }
}
