//! Ingress: the public HTTP API of Floodgate (accounts, catalog, organizer/admin calls; the
//! waiting room and bookings as they arrive), stateless so any number of replicas can run.
//!
//! - [`app`]: state, middleware stack, listeners, run and drain.
//! - [`config`]: settings from the environment.
//! - [`routes`]: the handlers, each with its OpenAPI description.
//! - [`auth`]: passwords, tokens, role guards, rate limits.
//! - [`domain`]: request values parsed into domain types.
//! - [`store`]: the SQL, one statement per function.
//! - [`error`]: problem+json errors and the extractors that produce them.
//! - [`seatmap`]: cached seat layouts plus the Redis availability snapshot.
//! - [`results`]: hold results from the booking-workers, handed to waiting requests.
//! - [`room`]: this instance's waiting-room subscriptions and batched heartbeats.
//! - [`metrics`]: Prometheus metrics.

pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod results;
pub mod room;
pub mod routes;
pub mod seatmap;
pub mod store;

pub use app::Application;
pub use config::IngressConfig;
