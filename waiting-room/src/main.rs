use waiting_room::service::{self, ServiceConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ServiceConfig::from_env()?;
    common::telemetry::init("waiting-room", config.common.log_format);
    service::run(config, common::shutdown::on_signal()).await
}
