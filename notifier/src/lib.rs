//! The notifier: turns domain events (`booking.confirmed`, `booking.cancelled`,
//! `refund.succeeded`, `hold.expired`, `waitlist.offered`) into e-mails over SMTP and signed
//! organizer webhooks, each exactly once in effect, with retries through TTL queues.
//!
//! - [`config`]: settings from the environment.
//! - [`events`]: the facts consumed, and which notifications each one calls for.
//! - [`store`]: the SQL (recipients, tickets, catalog titles; the `notification` ledger).
//! - [`render`]: e-mail contents from HTML and text templates (`templates/`).
//! - [`qr`]: ticket QR codes as PNG images.
//! - [`mail`]: sending through SMTP (lettre), failures sorted into transient and permanent.
//! - [`webhook`]: signed organizer webhooks.
//! - [`delivery`]: one notification from claim to outcome (the dedupe rule).
//! - [`topology`]: the notifier's queues, and retry / dead-letter routing.
//! - [`consumer`]: the queue consumer (prefetch, concurrency, ack after the outcome is recorded).
//! - [`service`]: the process (admin server, readiness, drain).
//! - [`metrics`]: Prometheus metrics.
//! - [`sink`]: the local SMTP sink that stores every message as an `.eml` file.

pub mod config;
pub mod consumer;
pub mod delivery;
pub mod events;
pub mod mail;
pub mod metrics;
pub mod qr;
pub mod render;
pub mod service;
pub mod sink;
pub mod store;
pub mod topology;
pub mod webhook;
