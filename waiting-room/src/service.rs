//! The admission controller as a service: configuration, the tick loop, the admin server.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use common::{
    admin::Readiness,
    availability,
    config::{CommonConfig, ConfigError, defaults, env_or},
    ids::ShowId,
};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    WaitingRoom,
    controller::{Controller, ControllerConfig},
    room::{self, now_ms},
    store,
};

/// Settings of the `waiting-room` process.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Shared settings (admin port 9101).
    pub common: CommonConfig,
    /// `WAITING_ROOM_TICK_MS` (250), `WAITING_ROOM_SESSION_SECONDS` (900),
    /// `WAITING_ROOM_GRACE_SECONDS` (30), `WAITING_ROOM_MAX_BOOKING_LAG_MS` (1000; 0 turns
    /// the back-off off).
    pub controller: ControllerConfig,
}

impl ServiceConfig {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(defaults::ADMIN_PORT_WAITING_ROOM)?,
            controller: ControllerConfig {
                tick: Duration::from_millis(env_or("WAITING_ROOM_TICK_MS", 250)?),
                session: Duration::from_secs(env_or("WAITING_ROOM_SESSION_SECONDS", 900)?),
                grace: Duration::from_secs(env_or("WAITING_ROOM_GRACE_SECONDS", 30)?),
                max_booking_lag: Duration::from_millis(env_or("WAITING_ROOM_MAX_BOOKING_LAG_MS", 1_000)?),
                ..ControllerConfig::default()
            },
        })
    }
}

/// Runs the controller until `shutdown`: one tick over every live show per tick interval.
pub async fn run(config: ServiceConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = common::db::pool(&config.common.database_url, config.common.database_max_connections)?;
    let redis = room::connect(&config.common.redis_url)
        .await
        .context("invalid REDIS_URL")?;
    let rooms = WaitingRoom::new(redis.clone(), config.common.redis_key_prefix.clone());
    let readiness = Readiness::new()
        .with_postgres(pool.clone())
        .with_check("redis", move || {
            let rooms = rooms.clone();
            async move { rooms.ping().await.map_err(|err| err.to_string()) }
        });
    let admin_listener = TcpListener::bind(config.common.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.common.admin_listen))?;
    tracing::info!(admin = %config.common.admin_listen, tick = ?config.controller.tick, "admission controller running");
    let admin = tokio::spawn(common::admin::serve(admin_listener, readiness, shutdown.clone()));

    let mut snapshots = redis.clone();
    let prefix = config.common.redis_key_prefix.clone();
    let mut controller = Controller::new(redis, config.common.redis_key_prefix.clone(), config.controller.clone());
    let mut counted = Counted::default();
    let mut interval = tokio::time::interval(config.controller.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => break,
        }
        tick_all(&pool, &mut snapshots, &prefix, &mut controller, &mut counted).await;
    }
    admin
        .await
        .context("admin server task failed")?
        .context("admin server failed")?;
    tracing::info!("admission controller stopped");
    Ok(())
}

async fn tick_all(
    pool: &PgPool,
    redis: &mut ConnectionManager,
    prefix: &str,
    controller: &mut Controller,
    counted: &mut Counted,
) {
    let live = match store::live_shows(pool).await {
        Ok(shows) => shows,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read shows; skipping this tick");
            return;
        }
    };
    // A show whose sellable seats cannot be told skips this tick (rather than looking sold out).
    let mut shows = Vec::with_capacity(live.len());
    for mut show in live {
        match sellable(pool, redis, prefix, show.show_id, counted).await {
            Ok(seats) => {
                show.sellable = seats;
                show.booking_lag_ms = booking_lag(redis, prefix, show.show_id).await;
                shows.push(show);
            }
            Err(err) => {
                tracing::warn!(show_id = %show.show_id, error = %err, "cannot tell the seats still sellable");
            }
        }
    }
    for show in &shows {
        if let Err(err) = controller.tick_show(show, now_ms()).await {
            tracing::warn!(show_id = %show.show_id, error = %err, "admission tick failed");
        }
    }
}

/// A lag report older than this is no news: the writer took no batch since (an idle queue).
const LAG_REPORT_FRESH_MS: u64 = 5_000;

/// The booking lag the show's writer last reported, if recent; `None` when it cannot be read
/// (admission then goes on as if the pipeline kept up: a Redis hiccup must not stall a sale).
async fn booking_lag(redis: &mut ConnectionManager, prefix: &str, show: ShowId) -> Option<u64> {
    let keys = availability::Keys::new(prefix, show);
    match availability::lag(redis, &keys).await {
        Ok(Some((lag_ms, age_ms))) if age_ms <= LAG_REPORT_FRESH_MS => Some(lag_ms),
        Ok(_) => None,
        Err(err) => {
            tracing::debug!(show_id = %show, error = %err, "cannot read the booking lag");
            None
        }
    }
}

/// How long a show's seats counted in PostgreSQL are taken as still true.
const COUNTED_FOR: Duration = Duration::from_secs(5);

/// Seats counted in PostgreSQL, by show, and when.
type Counted = HashMap<ShowId, (Instant, u64)>;

/// Seats still sellable: the counts the show's writer publishes with its availability snapshot
/// after every batch; from PostgreSQL only before its first snapshot, i.e. before the writer has
/// applied anything (it publishes the snapshot when it takes the show, before its first batch),
/// so nothing has been sold yet and a count a few seconds old is as good as a fresh one. Without
/// that reuse every replica counted every show's seats at every tick until the first hold
/// request: 6 replicas made PostgreSQL a third of a 2-core machine during a waiting-room run.
async fn sellable(
    pool: &PgPool,
    redis: &mut ConnectionManager,
    prefix: &str,
    show: ShowId,
    counted: &mut Counted,
) -> anyhow::Result<u64> {
    let keys = availability::Keys::new(prefix, show);
    if let Some(counts) = availability::counts(redis, &keys).await? {
        counted.remove(&show);
        return Ok(u64::from(counts.available));
    }
    if let Some((at, seats)) = counted.get(&show)
        && at.elapsed() < COUNTED_FOR
    {
        return Ok(*seats);
    }
    let seats = store::available_seats(pool, show).await?;
    counted.insert(show, (Instant::now(), seats));
    Ok(seats)
}
