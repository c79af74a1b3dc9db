//! The queue consumer: takes facts from the `notifier` queue, delivers their notifications and
//! settles each message once its outcome is safe.
//!
//! Per message: decode (an unreadable message is rejected: the queue dead-letters it), then for
//! each of its channels (or the one channel a retried copy names) one delivery attempt, and:
//! - sent, duplicate, nothing to send: nothing more;
//! - transient failure with attempts left: a copy goes to the retry queue of that attempt with
//!   the backoff as its TTL, and the ledger says `failed`;
//! - permanent failure or attempts exhausted: a copy goes to the `dead-letter` exchange, the
//!   ledger says `dead` and the dead-letter metric counts it;
//! - another replica is sending it: a copy goes to the first retry queue without using up an
//!   attempt.
//!
//! Copies are published with publisher confirms on the consumer's own channel, and the original
//! is acknowledged only after every copy is confirmed: a crash in between redelivers the original
//! and the ledger turns the repeat into duplicates. When a copy cannot be published (the broker
//! is in trouble) the original is requeued instead.
//!
//! Messages are handled concurrently, up to the prefetch; on shutdown the consumer stops taking
//! messages, lets those in hand finish, then closes its channel (which requeues any it never
//! started).

use std::{sync::Arc, time::Duration};

use common::mq::Broker;
use futures::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Confirmation, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
        BasicRejectOptions, ConfirmSelectOptions,
    },
    types::{AMQPValue, FieldTable},
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    config::RetryPolicy,
    delivery::{Deliverer, Failure, Outcome},
    events::{Channel as NotificationChannel, Event},
    metrics,
    topology::{self, ATTEMPTS_HEADER, CHANNEL_HEADER, ERROR_HEADER},
};

/// How long a requeued message waits before it is handed back (the broker is in trouble).
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// What the consumer needs.
pub struct Context {
    /// RabbitMQ.
    pub broker: Arc<Broker>,
    /// The deliveries.
    pub deliverer: Deliverer,
    /// Retries.
    pub retry: RetryPolicy,
    /// Messages in hand at once.
    pub prefetch: u16,
}

/// Consumes until `shutdown`, re-subscribing after the channel or the connection is lost.
pub async fn run(context: Arc<Context>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(100);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match subscribe(&context).await {
            Ok((channel, consumer)) => {
                delay = Duration::from_millis(100);
                consume(&context, &channel, consumer, &shutdown).await;
                if let Err(err) = channel.close(200, "closing".into()).await {
                    tracing::debug!(error = %err, "notifier channel already closed");
                }
            }
            Err(err) => tracing::warn!(error = %err, retry_in = ?delay, "cannot subscribe to the notifier queue"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn subscribe(context: &Context) -> anyhow::Result<(Channel, Consumer)> {
    let channel = context.broker.channel().await?;
    let names = context.broker.topology();
    topology::declare(&channel, names, &context.retry).await?;
    // Retry and dead-letter copies are confirmed before the original is acknowledged.
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    // Prefetch bounds the messages in hand, hence the concurrent sends.
    channel.basic_qos(context.prefetch, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            names.notifier_queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %names.notifier_queue(), "consuming");
    Ok((channel, consumer))
}

async fn consume(context: &Arc<Context>, channel: &Channel, mut consumer: Consumer, shutdown: &CancellationToken) {
    let mut in_hand = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(_) = in_hand.join_next(), if !in_hand.is_empty() => {}
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    in_hand.spawn(handle(Arc::clone(context), channel.clone(), delivery));
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "consumer failed");
                    break;
                }
                None => {
                    tracing::info!("consumer ended (channel closed or cancelled by the broker)");
                    break;
                }
            },
        }
    }
    // Drain: messages in hand finish (sent, copies confirmed, acknowledged) before the channel
    // closes.
    while in_hand.join_next().await.is_some() {}
}

/// Where a message came from: its retry headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retried {
    attempts: u32,
    channel: Option<NotificationChannel>,
}

fn retried(properties: &BasicProperties) -> Retried {
    let headers = properties.headers().as_ref();
    let value = |name: &str| {
        headers.and_then(|headers| {
            headers
                .inner()
                .iter()
                .find(|(key, _)| key.as_str() == name)
                .map(|(_, value)| value.clone())
        })
    };
    let attempts = match value(ATTEMPTS_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u32::try_from(n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => n,
        _ => 0,
    };
    let channel = match value(CHANNEL_HEADER) {
        Some(AMQPValue::LongString(name)) => NotificationChannel::parse(&name.to_string()),
        _ => None,
    };
    Retried { attempts, channel }
}

async fn handle(context: Arc<Context>, channel: Channel, delivery: Delivery) {
    let event = match Event::decode(&delivery.data) {
        Ok(event) => event,
        Err(err) => {
            tracing::error!(error = %err, "unreadable message: dead-lettering it");
            metrics::dead_lettered("none", "none", "undecodable");
            // Rejected without requeue: the queue's dead-letter exchange takes it.
            if let Err(err) = delivery.acker.reject(BasicRejectOptions { requeue: false }).await {
                tracing::warn!(error = %err, "cannot reject a message");
            }
            return;
        }
    };
    let origin = retried(&delivery.properties);
    let channels: Vec<NotificationChannel> = match origin.channel {
        Some(channel) => vec![channel],
        None => event.kind().channels().to_vec(),
    };
    let mut settled = true;
    for target in channels {
        let outcome = context.deliverer.deliver(&event, target).await;
        if let Err(err) = follow_up(&context, &channel, &delivery, &event, target, origin.attempts, outcome).await {
            tracing::warn!(message_id = %event.message_id(), channel = %target, error = %err, "cannot route the delivery's follow-up; requeueing the message");
            settled = false;
        }
    }
    let acked = if settled {
        delivery.acker.ack(BasicAckOptions::default()).await
    } else {
        tokio::time::sleep(REQUEUE_PAUSE).await;
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
    };
    if let Err(err) = acked {
        // The channel is gone: the message comes back, and the ledger makes the repeat harmless.
        tracing::warn!(message_id = %event.message_id(), error = %err, "cannot settle the message");
    }
}

/// Publishes the retry or dead-letter copy an outcome calls for, and records it.
async fn follow_up(
    context: &Context,
    channel: &Channel,
    delivery: &Delivery,
    event: &Event,
    target: NotificationChannel,
    attempts_before: u32,
    outcome: Outcome,
) -> anyhow::Result<()> {
    let kind = event.kind();
    let names = context.broker.topology();
    match outcome {
        Outcome::Sent => {
            tracing::info!(message_id = %event.message_id(), %kind, channel = %target, "notification sent");
            metrics::sent(kind, target);
        }
        Outcome::Duplicate => {
            tracing::info!(message_id = %event.message_id(), %kind, channel = %target, "already delivered; nothing sent");
            metrics::duplicate(kind, target);
        }
        Outcome::NotWanted => {}
        Outcome::Busy => {
            // Not an attempt of ours: the copy keeps the count and waits the shortest delay.
            let wait = context.retry.backoff(1);
            let queue = names.notifier_retry_queue(1);
            if context.retry.retry_levels() > 0 {
                republish(channel, "", &queue, delivery, target, attempts_before, Some(wait), None).await?;
            }
        }
        Outcome::Failed { notification, failure } => {
            let attempts = attempts_before + 1;
            let retry = matches!(failure, Failure::Transient(_)) && attempts < context.retry.max_attempts;
            if retry {
                let wait = context.retry.backoff(attempts);
                let queue = names.notifier_retry_queue(attempts);
                republish(channel, "", &queue, delivery, target, attempts, Some(wait), None).await?;
                tracing::warn!(message_id = %event.message_id(), %kind, channel = %target, attempts, retry_in = ?wait, error = %failure, "delivery failed; will retry");
                metrics::retried(kind, target);
            } else {
                let reason = if matches!(failure, Failure::Permanent(_)) {
                    "permanent"
                } else {
                    "exhausted"
                };
                let error = failure.to_string();
                republish(
                    channel,
                    &names.dead_letter_exchange(),
                    "",
                    delivery,
                    target,
                    attempts,
                    None,
                    Some(&error),
                )
                .await?;
                tracing::error!(message_id = %event.message_id(), %kind, channel = %target, attempts, reason, error = %failure, "delivery given up: dead-lettered");
                metrics::dead_lettered(kind.as_str(), target.as_str(), reason);
            }
            if let Some(notification) = notification {
                context.deliverer.record_failure(notification, !retry, &failure).await;
            }
        }
    }
    Ok(())
}

/// Publishes a copy of `delivery` for `target` and waits for the broker's confirm.
#[allow(clippy::too_many_arguments)] // one call site per destination; a struct would only rename them
async fn republish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    delivery: &Delivery,
    target: NotificationChannel,
    attempts: u32,
    ttl: Option<Duration>,
    error: Option<&str>,
) -> anyhow::Result<()> {
    let mut headers = FieldTable::default();
    headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(i64::from(attempts)));
    headers.insert(CHANNEL_HEADER.into(), AMQPValue::LongString(target.as_str().into()));
    if let Some(error) = error {
        let error: String = error.chars().take(1000).collect();
        headers.insert(ERROR_HEADER.into(), AMQPValue::LongString(error.into()));
    }
    let original = &delivery.properties;
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2) // persistent
        .with_headers(headers);
    if let Some(id) = original.message_id() {
        properties = properties.with_message_id(id.clone());
    }
    if let Some(kind) = original.kind() {
        properties = properties.with_type(kind.clone());
    }
    if let Some(ttl) = ttl {
        properties = properties.with_expiration(ttl.as_millis().to_string().into());
    }
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &delivery.data,
            properties,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => anyhow::bail!("no queue bound for {exchange}/{routing_key}"),
        Confirmation::Nack(_) | Confirmation::NotRequested => anyhow::bail!("the broker refused the copy"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_headers_are_read_back() {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(3));
        headers.insert(CHANNEL_HEADER.into(), AMQPValue::LongString("webhook".into()));
        let properties = BasicProperties::default().with_headers(headers);
        assert_eq!(
            retried(&properties),
            Retried {
                attempts: 3,
                channel: Some(NotificationChannel::Webhook)
            }
        );
        assert_eq!(
            retried(&BasicProperties::default()),
            Retried {
                attempts: 0,
                channel: None
            }
        );
    }
}
