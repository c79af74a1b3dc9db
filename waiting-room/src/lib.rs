//! The virtual waiting room: the Redis model every ingress uses (join, position, leave,
//! heartbeats, admission tokens) and the admission controller the `waiting-room` binary runs.
//!
//! - [`keys`]: key names, hash-tagged by show.
//! - [`room`]: the fan-facing operations, one Lua script each.
//! - [`controller`]: leases, the room's state machine, the on-sale shuffle, admission ticks.
//! - [`shuffle`]: the auditable pre-queue order.
//! - [`token`]: signed admission tokens.
//! - [`store`]: the controller's PostgreSQL reads.
//! - [`service`]: the `waiting-room` process: configuration, tick loop, admin server.
//! - [`metrics`]: Prometheus metrics.

pub mod controller;
pub mod keys;
pub mod metrics;
pub mod room;
pub mod service;
pub mod shuffle;
pub mod store;
pub mod token;

pub use room::{Place, WaitingRoom};
pub use token::AdmissionTokens;
