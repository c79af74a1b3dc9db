//! The Floodgate load generator: drives a running Floodgate the way a crowd of fans would and
//! measures it. The `loadgen` binary is a thin command line over this library; the integration
//! tests call the same entry points.
//!
//! - [`queue`]: `loadgen queue`, the waiting-room benchmark (joins, held WebSockets, position
//!   latency, admission lag and order, ingress memory per connection).
//! - [`holds`]: `loadgen holds`, the booking-pipeline benchmark (admitted fans asking for holds
//!   on one show: holds/s, seats/s, latency, conflicts) ending in a PostgreSQL audit.
//! - [`baseline`]: `loadgen baseline`, this machine's raw PostgreSQL and RabbitMQ ceilings, and
//!   the pipeline's share of them.
//! - [`audit`]: the flash-sale correctness audit over PostgreSQL, the gateway ledger, the SMTP
//!   sink and the waiting room (no double sale, money matches tickets, fair queue order).
//! - [`chaos`]: the faults `loadgen flash-sale --chaos` injects into a running deployment (kill
//!   the show's writer, restart workers, pause the admission controller), found from its pid files.
//! - [`chart`]: PNG charts of a run's time series, stacked panels with event markers.
//! - [`flash`]: `loadgen flash-sale`, a whole on-sale rehearsed (fans who queue, buy, pay and
//!   cancel; chaos), ending in the [`audit`] and a report with charts.
//! - [`fans`]: fan accounts and their access tokens.
//! - [`report`]: latency histograms, progress bars, process memory and CPU.

pub mod audit;
pub mod baseline;
pub mod chaos;
pub mod chart;
pub mod fans;
pub mod flash;
pub mod holds;
pub mod queue;
pub mod report;
