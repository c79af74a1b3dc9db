//! The booking-worker: the single writer of each show's seats and bookings (DESIGN.md "The one
//! rule"). It consumes every on-sale show's queue; RabbitMQ's single active consumer makes one
//! worker per show the writer, fenced by the show's `writer_epoch`.
//!
//! - [`allocator`]: the in-memory seat inventory and best-available search.
//! - [`engine`]: one show's state and the rules that turn commands into changes.
//! - [`store`]: the SQL (batched, set-based writes; loading a show; the outbox).
//! - [`worker`]: one show's consumer loop (activation, batches, fencing, retries).
//! - [`service`]: discovery of shows, the outbox relay, the admin server.
//! - [`metrics`]: Prometheus metrics.

pub mod allocator;
pub mod engine;
pub mod metrics;
pub mod service;
pub mod store;
pub mod worker;
