//! Black-box tests of ingress: the real service, in-process on port 0, against real PostgreSQL
//! (a fresh database per test) and RabbitMQ (a fresh name prefix per test).

mod accounts;
mod catalog;
mod helpers;
mod holds;
mod hygiene;
mod journey;
mod openapi;
mod operations;
mod payments;
mod queue;
