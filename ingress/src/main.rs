use clap::{Parser, Subcommand};
use ingress::{Application, IngressConfig};

/// Floodgate's public HTTP API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations, then exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = IngressConfig::from_env()?;
    common::telemetry::init("ingress", config.common.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let pool = common::db::pool(&config.common.database_url, 2)?;
            common::db::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Serve => {
            // Every WebSocket is a file: take all the descriptors the hard limit allows.
            match rlimit::increase_nofile_limit(u64::MAX) {
                Ok(limit) => tracing::info!(open_files = limit, "file descriptor limit"),
                Err(err) => tracing::warn!(error = %err, "cannot raise the file descriptor limit"),
            }
            let shutdown = common::shutdown::on_signal();
            let app = Application::build(config).await?;
            app.run_until_stopped(shutdown).await
        }
    }
}
