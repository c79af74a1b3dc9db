//! Ingress: the public HTTP API of Floodgate (accounts, catalog, organizer/admin calls, the
//! waiting room, holds, payments, tickets and check-in, gateway webhooks), stateless so any
//! number of replicas can run.
//!
//! - [`app`]: state, middleware stack, listeners, run and drain.
//! - [`config`]: settings from the environment.
//! - [`routes`]: the handlers, each with its OpenAPI description.
//! - [`auth`]: passwords, tokens, role guards, rate limits.
//! - [`domain`]: request values parsed into domain types.
//! - [`store`]: the SQL, one statement per function.
//! - [`error`]: problem+json errors and the extractors that produce them.
//! - [`idempotency`]: `Idempotency-Key`: derived ids and body fingerprints.
//! - [`seatmap`]: cached seat layouts plus the Redis availability snapshot.
//! - [`results`]: hold results and booking, payment, refund and waitlist facts from the workers,
//!   handed to waiting requests and the fans' WebSockets.
//! - [`room`]: this instance's waiting-room subscriptions and batched heartbeats.
//! - [`metrics`]: Prometheus metrics.

pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod idempotency;
pub mod metrics;
pub mod results;
pub mod room;
pub mod routes;
pub mod seatmap;
pub mod store;

pub use app::Application;
pub use config::IngressConfig;
