//! The payment-worker: charges and refunds through a gateway adapter, settles gateway webhooks,
//! and reconciles what it could not settle; plus the gateway simulator it talks to in
//! development and tests (DESIGN.md "Payments").
//!
//! - [`gateway`]: the `PaymentGateway` trait and its Stripe-shaped HTTP adapter.
//! - [`simulator`]: the in-memory gateway simulator (binary `gateway-simulator`).
//! - [`handler`]: what each `payments` queue message does (charge, webhook, refund).
//! - [`worker`]: the competing consumer of the `payments` queue.
//! - [`store`]: the SQL of `payment`, `refund` and `webhook_event`.
//! - [`outbox`]: outbox rows written with state changes, published after commit and swept.
//! - [`ids`]: deterministic command, message and refund ids.
//! - [`service`]: configuration, the sweep, the admin server, the drain.
//! - [`metrics`]: Prometheus metrics.

pub mod gateway;
pub mod handler;
pub mod ids;
pub mod metrics;
pub mod outbox;
pub mod service;
pub mod simulator;
pub mod store;
pub mod worker;
