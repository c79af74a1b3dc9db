//! The notifier's queues (DESIGN.md "Message topology"):
//!
//! - `notifier`: durable quorum queue bound to `events` for every fact the notifier handles
//!   (`booking.confirmed.*`, ...). A message it rejects (unreadable) or that keeps crashing
//!   consumers (delivery limit) goes to the `dead-letter` exchange.
//! - `notifier.retry.<n>`: where a delivery waits after its n-th transient failure. Each message
//!   carries its own TTL (the backoff, so a configuration change needs no queue re-declaration)
//!   and, once expired, dead-letters back to `notifier` through the default exchange. One queue
//!   per attempt keeps waits of one length together: RabbitMQ expires messages only at a queue's
//!   head, so a short wait queued behind a long one would otherwise wait as long.
//!
//! The headers [`ATTEMPTS_HEADER`] and [`CHANNEL_HEADER`] travel with a retried copy: how many
//! attempts its delivery has had, and which channel it is for (the fact's other notifications
//! are not repeated).

use lapin::{
    Channel,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};

use crate::{config::RetryPolicy, events::Kind};

/// Attempts made so far by the delivery a retried copy is for.
pub const ATTEMPTS_HEADER: &str = "x-floodgate-attempts";
/// The channel (`email`, `webhook`) a retried copy is for.
pub const CHANNEL_HEADER: &str = "x-floodgate-channel";
/// Why a dead-lettered notification was given up.
pub const ERROR_HEADER: &str = "x-floodgate-error";

/// How often a message of the main queue may be redelivered (consumer crashes, requeues) before
/// RabbitMQ dead-letters it: a poison message cannot loop for ever.
pub const DELIVERY_LIMIT: i64 = 10;

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    // Quorum queues replicate across the cluster and survive a node loss (DESIGN.md).
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    arguments
}

/// Declares the notifier's queue with its bindings and the retry queues. Idempotent.
pub async fn declare(
    channel: &Channel,
    topology: &common::mq::Topology,
    retry: &RetryPolicy,
) -> Result<(), lapin::Error> {
    let mut main = quorum();
    main.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
    main.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(topology.dead_letter_exchange().into()),
    );
    channel
        .queue_declare(topology.notifier_queue().into(), QueueDeclareOptions::durable(), main)
        .await?;
    for kind in Kind::ALL {
        channel
            .queue_bind(
                topology.notifier_queue().into(),
                topology.events_exchange().into(),
                format!("{}.*", kind.message_type()).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for attempt in 1..=retry.retry_levels() {
        let mut arguments = quorum();
        // The default exchange routes by queue name: expired copies go straight back.
        arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(topology.notifier_queue().into()),
        );
        // Expired copies are moved with publisher confirms inside RabbitMQ, never dropped
        // (at-least-once dead-lettering needs reject-publish overflow).
        arguments.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        arguments.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        channel
            .queue_declare(
                topology.notifier_retry_queue(attempt).into(),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await?;
    }
    Ok(())
}

/// Deletes the notifier's queues (tests cleaning up their prefix).
pub async fn delete(
    channel: &Channel,
    topology: &common::mq::Topology,
    retry: &RetryPolicy,
) -> Result<(), lapin::Error> {
    let queues = (1..=retry.retry_levels())
        .map(|attempt| topology.notifier_retry_queue(attempt))
        .chain([topology.notifier_queue()]);
    for queue in queues {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
    }
    Ok(())
}
