//! The notifier as a service: configuration, the consumer, the admin server (`/readyz` checks
//! PostgreSQL and RabbitMQ) and the drain on shutdown.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use common::{
    admin::Readiness,
    mq::{Broker, Topology},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::NotifierConfig,
    consumer::{self, Context},
    delivery::Deliverer,
    mail::Mailer,
    render::Renderer,
    webhook::WebhookClient,
};

/// A notifier ready to run (tests start it in-process).
pub struct Service {
    context: Arc<Context>,
    readiness: Readiness,
}

impl Service {
    /// Connects to PostgreSQL (lazily) and RabbitMQ (the broker may come later), and prepares the
    /// SMTP and HTTP clients.
    pub async fn build(config: NotifierConfig) -> anyhow::Result<Self> {
        crate::metrics::register();
        let db = common::db::pool(&config.common.database_url, config.common.database_max_connections)
            .context("invalid DATABASE_URL")?;
        let mailer = Mailer::new(&config.smtp_url, config.smtp_timeout, &config.mail_from)?;
        let webhooks = WebhookClient::new(config.webhook_timeout).context("cannot build the HTTP client")?;
        let broker = Broker::start(
            &config.common.amqp_url,
            "notifier",
            Topology::new(config.common.mq_prefix.clone()),
            Duration::from_secs(10),
        )
        .await;
        let readiness = Readiness::new()
            .with_postgres(db.clone())
            .with_rabbitmq(Arc::clone(&broker));
        let deliverer = Deliverer::new(db, Renderer::new(&config.public_url), mailer, webhooks, config.lease);
        let context = Arc::new(Context {
            broker,
            deliverer,
            retry: config.retry.clone(),
            prefetch: config.prefetch,
        });
        Ok(Self { context, readiness })
    }

    /// Runs until `shutdown`: serves the admin port and consumes; then drains.
    pub async fn run_until_stopped(self, admin: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { context, readiness } = self;
        let supervisor = context.broker.spawn_supervisor(shutdown.clone());
        let admin = tokio::spawn(common::admin::serve(admin, readiness, shutdown.clone()));
        // Returns once shutdown is asked and the messages in hand are settled.
        consumer::run(Arc::clone(&context), shutdown).await;
        let _ = supervisor.await;
        context.broker.close().await;
        admin
            .await
            .context("admin server task failed")?
            .context("admin server failed")?;
        tracing::info!("notifier stopped");
        Ok(())
    }
}

/// Binds the admin port, then runs the service (the binary's entry point).
pub async fn run(config: NotifierConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let admin = TcpListener::bind(config.common.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.common.admin_listen))?;
    tracing::info!(admin = %config.common.admin_listen, smtp = %config.smtp_url, "notifier running");
    Service::build(config).await?.run_until_stopped(admin, shutdown).await
}
