//! What every Floodgate process shares: configuration, telemetry, the database pool and
//! migrations, RabbitMQ topology and publishing, message contracts, the admin server and shutdown.
//!
//! - [`config`]: typed settings from environment variables, defaulting to the local services.
//! - [`telemetry`]: `tracing` set-up (text or JSON logs, `RUST_LOG` filter).
//! - [`db`]: the PostgreSQL pool and the embedded migrations.
//! - [`mq`]: RabbitMQ connection, exchanges and queues, publishing with confirms.
//! - [`contracts`]: the message envelope and the messages processes exchange.
//! - [`ids`]: typed identifiers (`ShowId`, `SeatId`, ...).
//! - [`availability`]: the per-show seat availability snapshot in Redis.
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics` on each process's admin port.
//! - [`shutdown`]: SIGTERM/SIGINT turned into a cancellation token.
//! - [`tickets`]: unguessable, signed ticket codes.
//! - [`signature`]: timestamped HMAC signatures of webhooks.
//! - `testing` (feature): a fresh database per test.
//!
//! It also sets the global allocator of every Floodgate binary (and test): mimalloc. Under the
//! flash-sale rehearsal glibc's malloc and free were 17% of ingress's CPU (perf), spent on the
//! many small, short-lived allocations of requests and messages, which mimalloc serves from
//! per-thread free lists.

pub mod admin;
pub mod availability;
pub mod config;
pub mod contracts;
pub mod db;
pub mod ids;
pub mod mq;
pub mod shutdown;
pub mod signature;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tickets;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
