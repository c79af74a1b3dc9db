use anyhow::Context as _;
use common::config::{LogFormat, env_or};
use payment_worker::simulator::{self, SimulatorConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = SimulatorConfig::from_env()?;
    common::telemetry::init("gateway-simulator", env_or("LOG_FORMAT", LogFormat::Text)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, webhook_url = ?config.webhook_url, duplicates = config.duplicates,
        shuffle = config.shuffle, "gateway simulator running");
    simulator::serve(listener, config, common::shutdown::on_signal()).await?;
    tracing::info!("gateway simulator stopped");
    Ok(())
}
