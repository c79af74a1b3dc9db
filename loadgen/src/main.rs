//! The `loadgen` command line: one subcommand per scenario of the [`loadgen`] library.

use clap::{Parser, Subcommand};
use loadgen::{baseline, flash, holds, queue};

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
    /// A whole on-sale rehearsed: fans arrive, queue, buy, pay and cancel; then an audit and a
    /// report with charts. Exits non-zero when the audit finds a violation.
    FlashSale(Box<flash::FlashArgs>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("loadgen", common::config::LogFormat::Text);
    match Cli::parse().command {
        Command::Queue(args) => queue::run(args).await,
        Command::Holds(args) => holds::run(args).await,
        Command::Baseline(args) => baseline::run(args).await,
        Command::FlashSale(args) => {
            let outcome = flash::run(*args).await?;
            println!("{}", outcome.report.markdown());
            println!("report: {}", outcome.out_dir.join("report.md").display());
            if outcome.passed() {
                Ok(())
            } else {
                anyhow::bail!("the audit found violations or fans lost their place (see the report)")
            }
        }
    }
}
