//! The payment-worker as a service: configuration, the consumer, the periodic sweep (stuck
//! payments, pending refunds, unpublished outbox rows), the admin server and the drain.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use common::{
    admin::Readiness,
    config::{CommonConfig, ConfigError, defaults, env_or, env_string},
    mq::{Broker, Topology},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    gateway::{PaymentGateway, http::HttpGateway},
    handler::{self, Context, HandlerConfig},
    outbox, store, worker,
};

/// Settings of the `payment-worker` process.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Shared settings (admin port 9103).
    pub common: CommonConfig,
    /// `GATEWAY_URL`: the gateway's base URL (http://127.0.0.1:8090, the simulator).
    pub gateway_url: String,
    /// `GATEWAY_TIMEOUT_MS`: one gateway request's limit; past it the outcome is unknown (10000).
    pub gateway_timeout: Duration,
    /// Retries.
    pub handler: HandlerConfig,
    /// `PAYMENT_PREFETCH`: messages handled at once by this worker (16).
    pub prefetch: u16,
    /// `PAYMENT_SWEEP_MS`: how often the sweep runs (5000).
    pub sweep_interval: Duration,
    /// `PAYMENT_STUCK_AFTER_MS`: a payment in `processing` (or a refund `pending`) untouched
    /// this long is reconciled (60000).
    pub stuck_after: Duration,
    /// `PAYMENT_RELAY_AGE_MS`: an outbox row unpublished this long is published by the sweep
    /// (5000).
    pub relay_age: Duration,
}

impl ServiceConfig {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(defaults::ADMIN_PORT_PAYMENT_WORKER)?,
            gateway_url: env_string("GATEWAY_URL", "http://127.0.0.1:8090"),
            gateway_timeout: Duration::from_millis(env_or("GATEWAY_TIMEOUT_MS", 10_000)?),
            handler: HandlerConfig {
                gateway_attempts: env_or("PAYMENT_GATEWAY_ATTEMPTS", 4)?,
                retry_min: Duration::from_millis(env_or("PAYMENT_GATEWAY_RETRY_MS", 200)?),
            },
            prefetch: env_or("PAYMENT_PREFETCH", 16)?,
            sweep_interval: Duration::from_millis(env_or("PAYMENT_SWEEP_MS", 5000)?),
            stuck_after: Duration::from_millis(env_or("PAYMENT_STUCK_AFTER_MS", 60_000)?),
            relay_age: Duration::from_millis(env_or("PAYMENT_RELAY_AGE_MS", 5000)?),
        })
    }
}

/// A running payment-worker (tests start it in-process).
pub struct Service {
    context: Arc<Context>,
    config: ServiceConfig,
    readiness: Readiness,
}

impl Service {
    /// Connects to PostgreSQL and RabbitMQ (either may come later) and builds the gateway
    /// adapter.
    pub async fn build(config: ServiceConfig) -> anyhow::Result<Self> {
        crate::metrics::register();
        let db = common::db::pool(&config.common.database_url, config.common.database_max_connections)?;
        let broker = Broker::start(
            &config.common.amqp_url,
            "payment-worker",
            Topology::new(config.common.mq_prefix.clone()),
            Duration::from_secs(10),
        )
        .await;
        let gateway: Arc<dyn PaymentGateway> = Arc::new(
            HttpGateway::new(&config.gateway_url, config.gateway_timeout).context("cannot build the gateway client")?,
        );
        let readiness = Readiness::new()
            .with_postgres(db.clone())
            .with_rabbitmq(Arc::clone(&broker))
            .with_check("gateway", {
                let gateway = Arc::clone(&gateway);
                move || {
                    let gateway = Arc::clone(&gateway);
                    async move { gateway.ping().await }
                }
            });
        let context = Arc::new(Context {
            db,
            broker,
            gateway,
            config: config.handler.clone(),
        });
        Ok(Self {
            context,
            config,
            readiness,
        })
    }

    /// Runs until `shutdown`: serves the admin port, consumes the payments queue, sweeps.
    pub async fn run_until_stopped(self, admin: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            context,
            config,
            readiness,
        } = self;
        let supervisor = context.broker.spawn_supervisor(shutdown.clone());
        let admin = tokio::spawn(common::admin::serve(admin, readiness, shutdown.clone()));
        let sweeper = tokio::spawn(sweep_loop(Arc::clone(&context), config.clone(), shutdown.clone()));
        worker::consume(Arc::clone(&context), config.prefetch, shutdown.clone()).await;
        // Drain: the consumer has finished its in-flight messages; the sweep stops between
        // passes; only then does the connection close.
        let _ = sweeper.await;
        let _ = supervisor.await;
        context.broker.close().await;
        admin
            .await
            .context("admin server task failed")?
            .context("admin server failed")?;
        tracing::info!("payment-worker stopped");
        Ok(())
    }
}

/// Binds the admin port, then runs the service (the binary's entry point).
pub async fn run(config: ServiceConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let admin = TcpListener::bind(config.common.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.common.admin_listen))?;
    tracing::info!(admin = %config.common.admin_listen, gateway = %config.gateway_url, "payment-worker running");
    Service::build(config).await?.run_until_stopped(admin, shutdown).await
}

/// Payments or refunds one sweep pass takes at most.
const SWEEP_BATCH: i64 = 50;

/// The periodic sweep. Each pass claims what it takes (pushing `updated_at` forward), so
/// replicas sweeping at the same time share the work instead of repeating it.
async fn sweep_loop(context: Arc<Context>, config: ServiceConfig, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.sweep_interval) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(err) = sweep_once(&context, &config).await {
            tracing::warn!(error = %err, "payment sweep failed");
        }
    }
}

/// One pass: stuck payments are reconciled, pending refunds asked again, left-over outbox rows
/// published.
pub async fn sweep_once(context: &Context, config: &ServiceConfig) -> anyhow::Result<()> {
    for payment in store::claim_stuck_payments(&context.db, config.stuck_after, SWEEP_BATCH).await? {
        tracing::info!(payment_id = %payment, "reconciling a payment stuck in processing");
        if let Err(err) = handler::reconcile_stuck(context, payment).await {
            tracing::warn!(payment_id = %payment, error = %err, "reconciliation failed; next sweep");
        }
    }
    for refund in store::claim_pending_refunds(&context.db, config.stuck_after, SWEEP_BATCH).await? {
        tracing::info!(refund_id = %refund, "retrying a pending refund");
        if let Err(err) = handler::retry_refund(context, refund).await {
            tracing::warn!(refund_id = %refund, error = %err, "refund retry failed; next sweep");
        }
    }
    let published = outbox::sweep(&context.db, &context.broker, config.relay_age).await?;
    if published > 0 {
        tracing::info!(rows = published, "outbox sweep published left-over messages");
    }
    Ok(())
}
