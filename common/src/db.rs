//! The PostgreSQL pool and the migrations of the root `migrations/` folder, embedded at build time.

use std::time::Duration;

use sqlx::{
    PgPool,
    migrate::{MigrateError, Migrator},
    postgres::PgPoolOptions,
};

/// Every migration of `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Builds a pool that connects lazily: a process starts (and reports "not ready") while
/// PostgreSQL is down, instead of crashing, and recovers by itself when it returns.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // Fail fast under overload or outage: callers answer 503 rather than queueing forever.
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy(url)
}

/// Applies the pending migrations. Safe to run from several processes at once: sqlx takes an
/// advisory lock for the duration.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}

/// Checks that the database answers, for readiness probes.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
