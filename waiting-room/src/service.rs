//! The admission controller as a service: configuration, the tick loop, the admin server.

use std::time::Duration;

use anyhow::Context as _;
use common::{
    admin::Readiness,
    config::{CommonConfig, ConfigError, defaults, env_or},
};
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
    /// `WAITING_ROOM_GRACE_SECONDS` (30).
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
                ..ControllerConfig::default()
            },
        })
    }
}

/// Runs the controller until `shutdown`: one tick over every live show per tick interval.
pub async fn run(config: ServiceConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = common::db::pool(&config.common.database_url, 4)?;
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

    let mut controller = Controller::new(redis, config.common.redis_key_prefix.clone(), config.controller.clone());
    let mut interval = tokio::time::interval(config.controller.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => break,
        }
        tick_all(&pool, &mut controller).await;
    }
    admin
        .await
        .context("admin server task failed")?
        .context("admin server failed")?;
    tracing::info!("admission controller stopped");
    Ok(())
}

async fn tick_all(pool: &PgPool, controller: &mut Controller) {
    let shows = match store::live_shows(pool).await {
        Ok(shows) => shows,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read shows; skipping this tick");
            return;
        }
    };
    for show in &shows {
        if let Err(err) = controller.tick_show(show, now_ms()).await {
            tracing::warn!(show_id = %show.show_id, error = %err, "admission tick failed");
        }
    }
}
