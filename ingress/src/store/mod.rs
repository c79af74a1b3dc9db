//! SQL of the tables ingress owns (accounts, catalog, promo codes, webhook dedupe, check-ins)
//! and its reads of the workers' tables (bookings, payments, tickets): small functions,
//! one statement each, runtime-checked, each exercised by the API tests against PostgreSQL.

pub mod bookings;
pub mod events;
pub mod payments;
pub mod promo_codes;
pub mod sessions;
pub mod shows;
pub mod tickets;
pub mod users;
pub mod venues;
pub mod waitlist;
pub mod webhooks;
