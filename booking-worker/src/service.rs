//! The booking-worker as a service: configuration, show discovery, the outbox relay's sweep, the
//! admin server, and the drain on shutdown.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use common::{
    admin::Readiness,
    config::{CommonConfig, ConfigError, defaults, env_or},
    ids::ShowId,
    mq::{Broker, Topology},
    tickets::TicketSigner,
};
use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    store,
    worker::{self, Context, WorkerConfig},
};

/// Settings of the `booking-worker` process.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Shared settings (admin port 9102).
    pub common: CommonConfig,
    /// Batching.
    pub worker: WorkerConfig,
    /// How often on-sale shows are looked for (`BOOKING_DISCOVERY_MS`, 2000).
    pub discovery_interval: Duration,
    /// How often the relay sweeps the outbox (`BOOKING_RELAY_SWEEP_MS`, 1000).
    pub relay_interval: Duration,
    /// How old an unpublished outbox row must be before the sweep takes it: younger rows are
    /// still being published by the worker that wrote them (`BOOKING_RELAY_AGE_MS`, 5000).
    pub relay_age: Duration,
}

impl ServiceConfig {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(defaults::ADMIN_PORT_BOOKING_WORKER)?,
            worker: WorkerConfig {
                batch_max: env_or("BOOKING_BATCH_MAX", 256)?,
                batch_wait: Duration::from_millis(env_or("BOOKING_BATCH_WAIT_MS", 5)?),
                payment_grace: Duration::from_secs(env_or("BOOKING_PAYMENT_GRACE_SECONDS", 120)?),
                ticket_signer: TicketSigner::new(common::config::ticket_signing_key().expose()),
                ..WorkerConfig::default()
            },
            discovery_interval: Duration::from_millis(env_or("BOOKING_DISCOVERY_MS", 2000)?),
            relay_interval: Duration::from_millis(env_or("BOOKING_RELAY_SWEEP_MS", 1000)?),
            relay_age: Duration::from_millis(env_or("BOOKING_RELAY_AGE_MS", 5000)?),
        })
    }
}

/// A running booking-worker (tests start it in-process).
pub struct Service {
    context: Arc<Context>,
    config: ServiceConfig,
    readiness: Readiness,
}

impl Service {
    /// Connects to PostgreSQL, Redis and RabbitMQ (the broker may come later).
    pub async fn build(config: ServiceConfig) -> anyhow::Result<Self> {
        crate::metrics::register();
        let db = common::db::pool(&config.common.database_url, config.common.database_max_connections)?;
        let redis = waiting_room::room::connect(&config.common.redis_url)
            .await
            .context("invalid REDIS_URL")?;
        let broker = Broker::start(
            &config.common.amqp_url,
            "booking-worker",
            Topology::new(config.common.mq_prefix.clone()),
            Duration::from_secs(10),
        )
        .await;
        let readiness = Readiness::new()
            .with_postgres(db.clone())
            .with_rabbitmq(Arc::clone(&broker))
            .with_check("redis", {
                let redis = redis.clone();
                move || {
                    let mut redis = redis.clone();
                    async move {
                        redis::cmd("PING")
                            .query_async::<()>(&mut redis)
                            .await
                            .map_err(|err| err.to_string())
                    }
                }
            });
        let context = Arc::new(Context {
            db,
            redis,
            redis_prefix: config.common.redis_key_prefix.clone(),
            broker,
            config: config.worker.clone(),
            clock: Arc::new(time::OffsetDateTime::now_utc),
        });
        Ok(Self {
            context,
            config,
            readiness,
        })
    }

    /// Replaces the clock (tests drive hold expiry with it).
    pub fn with_clock(mut self, clock: Arc<dyn Fn() -> time::OffsetDateTime + Send + Sync>) -> Self {
        Arc::get_mut(&mut self.context)
            .expect("the context is not shared before run")
            .clock = clock;
        self
    }

    /// Runs until `shutdown`: serves the admin port, discovers shows and consumes their queues.
    pub async fn run_until_stopped(self, admin: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            context,
            config,
            readiness,
        } = self;
        let supervisor = context.broker.spawn_supervisor(shutdown.clone());
        let admin = tokio::spawn(common::admin::serve(admin, readiness, shutdown.clone()));
        let relay = tokio::spawn(relay(
            Arc::clone(&context),
            config.relay_interval,
            config.relay_age,
            shutdown.clone(),
        ));
        let mut shows: HashMap<ShowId, JoinHandle<()>> = HashMap::new();
        let mut interval = tokio::time::interval(config.discovery_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = shutdown.cancelled() => break,
            }
            match store::shows_to_serve(&context.db).await {
                Ok(found) => {
                    for show in found {
                        shows.entry(show).or_insert_with(|| {
                            tracing::info!(%show, "serving show");
                            tokio::spawn(worker::serve_show(Arc::clone(&context), show, shutdown.clone()))
                        });
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot look for on-sale shows"),
            }
        }
        // Drain: each show consumer finishes its batch (committed, published, acknowledged) and
        // closes its channel; only then does the connection close.
        for (_, task) in shows {
            let _ = task.await;
        }
        let _ = relay.await;
        let _ = supervisor.await;
        context.broker.close().await;
        admin
            .await
            .context("admin server task failed")?
            .context("admin server failed")?;
        tracing::info!("booking-worker stopped");
        Ok(())
    }
}

/// Binds the admin port, then runs the service (the binary's entry point).
pub async fn run(config: ServiceConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let admin = TcpListener::bind(config.common.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.common.admin_listen))?;
    tracing::info!(admin = %config.common.admin_listen, "booking-worker running");
    Service::build(config).await?.run_until_stopped(admin, shutdown).await
}

/// The outbox relay's sweep: publishes rows a worker committed but did not get to publish (it
/// crashed, or the broker was down), oldest first. Consumers deduplicate by message id, so a row
/// published twice (published, then the worker died before marking it) is harmless.
async fn relay(context: Arc<Context>, interval: Duration, age: Duration, shutdown: CancellationToken) {
    let mut last_prune = std::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(err) = sweep(&context.db, &context, age).await {
            tracing::warn!(error = %err, "outbox sweep failed");
        }
        if last_prune.elapsed() >= OUTBOX_PRUNE_EVERY {
            last_prune = std::time::Instant::now();
            match store::prune_outbox(&context.db, OUTBOX_KEEP, 10_000).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, "pruned published outbox rows"),
                Err(err) => tracing::warn!(error = %err, "outbox pruning failed"),
            }
        }
    }
}

/// Published outbox rows are kept this long (for inspection after an incident), then deleted.
const OUTBOX_KEEP: Duration = Duration::from_secs(3600);
/// How often the relay prunes them.
const OUTBOX_PRUNE_EVERY: Duration = Duration::from_secs(60);

async fn sweep(db: &PgPool, context: &Context, age: Duration) -> anyhow::Result<()> {
    let Ok(publisher) = context.broker.publisher() else {
        return Ok(());
    };
    let mut tx = db.begin().await?;
    let rows = store::unpublished(&mut tx, age, 500).await?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut published = Vec::with_capacity(rows.len());
    for row in &rows {
        let body = serde_json::to_vec(&row.body)?;
        let kind = row.body["type"].as_str().unwrap_or_default();
        match publisher
            .broadcast_raw(
                &row.exchange,
                &row.routing_key,
                &row.message_id.to_string(),
                kind,
                &body,
            )
            .await
        {
            Ok(()) => published.push(row.outbox_id),
            // Keep the order: stop at the first failure and try again next sweep.
            Err(err) => {
                tracing::warn!(error = %err, "relay cannot publish; will retry");
                break;
            }
        }
    }
    store::mark_published(&mut tx, &published).await?;
    tx.commit().await?;
    tracing::info!(rows = published.len(), "outbox relay published left-over events");
    Ok(())
}
