//! `smtp-sink`: a local SMTP server that accepts every message and stores it as an `.eml` file
//! (`SMTP_SINK_LISTEN`, default 127.0.0.1:2525; `SMTP_SINK_DIR`, default `.run/mail`).

use notifier::sink::{SinkConfig, SmtpSink};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = SinkConfig::from_env()?;
    let log_format = common::config::env_or("LOG_FORMAT", common::config::LogFormat::Text)?;
    common::telemetry::init("smtp-sink", log_format);
    let sink = SmtpSink::bind(config).await?;
    sink.run_until_stopped(common::shutdown::on_signal()).await?;
    Ok(())
}
