use notifier::{config::NotifierConfig, service};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = NotifierConfig::from_env()?;
    common::telemetry::init("notifier", config.common.log_format);
    service::run(config, common::shutdown::on_signal()).await
}
