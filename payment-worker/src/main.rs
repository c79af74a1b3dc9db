use payment_worker::service::{self, ServiceConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ServiceConfig::from_env()?;
    common::telemetry::init("payment-worker", config.common.log_format);
    service::run(config, common::shutdown::on_signal()).await
}
