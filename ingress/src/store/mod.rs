//! SQL of the tables ingress owns (accounts, catalog) and its catalog reads: small functions,
//! one statement each, runtime-checked, each exercised by the API tests against PostgreSQL.

pub mod bookings;
pub mod events;
pub mod sessions;
pub mod shows;
pub mod users;
pub mod venues;
