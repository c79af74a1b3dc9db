//! The consumer of the `payments` queue. Payment-workers are competing consumers: each takes up
//! to `prefetch` messages at a time and handles them concurrently (a charge mostly waits on the
//! gateway, so concurrency, not CPU, sets the throughput). Per-payment correctness does not
//! depend on who gets which message: it rests on the conditional updates of [`crate::store`]
//! and the gateway's idempotency keys.
//!
//! A message is acknowledged after its transaction committed and its outbox rows were published
//! (or left to the sweep); a transient failure requeues it after a short backoff; a message that
//! cannot be decoded, or names a payment that does not exist, is rejected to the dead-letter
//! exchange and counted. On shutdown the consumer is cancelled, in-flight messages finish and
//! are acknowledged, and closing the channel hands the prefetched rest back to RabbitMQ.

use std::{sync::Arc, time::Duration};

use common::contracts::PaymentsMessage;
use futures::StreamExt as _;
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    handler::{self, Context, HandleError},
    metrics,
};

/// How long a message that failed transiently waits before it is requeued (a requeued message
/// comes straight back; the wait keeps a broken database from being hammered).
const REQUEUE_AFTER: Duration = Duration::from_millis(500);

/// Consumes the `payments` queue until `shutdown`, re-subscribing after a lost channel.
pub async fn consume(context: Arc<Context>, prefetch: u16, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(100);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match subscribe(&context, prefetch).await {
            Ok((channel, consumer)) => {
                delay = Duration::from_millis(100);
                run(&context, &channel, consumer, &shutdown).await;
                if let Err(err) = channel.close(200, "closing".into()).await {
                    tracing::debug!(error = %err, "payments channel already closed");
                }
            }
            Err(err) => tracing::warn!(error = %err, retry_in = ?delay, "cannot subscribe to the payments queue"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn subscribe(context: &Context, prefetch: u16) -> anyhow::Result<(Channel, Consumer)> {
    let channel = context.broker.channel().await?;
    // Bounded prefetch: at most this many charges in flight per worker, and a crashed worker
    // hands back at most this many messages.
    channel.basic_qos(prefetch.max(1), BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            context.broker.topology().payments_queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(prefetch, "consuming the payments queue");
    Ok((channel, consumer))
}

async fn run(context: &Arc<Context>, channel: &Channel, mut consumer: Consumer, shutdown: &CancellationToken) {
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    in_flight.spawn(handle(Arc::clone(context), delivery));
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "payments consumer failed");
                    break;
                }
                None => {
                    tracing::info!("payments consumer ended");
                    break;
                }
            },
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            () = shutdown.cancelled() => {
                // No new deliveries; the ones already handed to us finish below.
                let tag = consumer.tag();
                if let Err(err) = channel.basic_cancel(tag, BasicCancelOptions::default()).await {
                    tracing::debug!(error = %err, "cannot cancel the payments consumer");
                }
                break;
            }
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// Handles one delivery and acknowledges, requeues or dead-letters it.
async fn handle(context: Arc<Context>, delivery: Delivery) {
    let message = match PaymentsMessage::decode(&delivery.data) {
        Ok(message) => message,
        Err(err) => {
            tracing::warn!(error = %err, "undecodable payments message; dead-lettering it");
            metrics::dead_lettered("undecodable");
            reject(&delivery).await;
            return;
        }
    };
    let (kind, message_id) = match &message {
        PaymentsMessage::ChargePayment(e) => ("ChargePayment", e.message_id),
        PaymentsMessage::GatewayEvent(e) => ("GatewayEvent", e.message_id),
        PaymentsMessage::BookingConfirmRejected(e) => ("booking.confirm_rejected", e.message_id),
        PaymentsMessage::BookingCancelled(e) => ("booking.cancelled", e.message_id),
    };
    let span = tracing::info_span!("payments_message", kind, %message_id, redelivered = delivery.redelivered);
    tracing::Instrument::instrument(settle(&context, &delivery, &message), span).await;
}

async fn settle(context: &Context, delivery: &Delivery, message: &PaymentsMessage) {
    match dispatch(context, message).await {
        Ok(()) => {
            if let Err(err) = delivery.acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(error = %err, "cannot acknowledge; the message will be redelivered");
            }
        }
        Err(err) if err.is_transient() => {
            tracing::warn!(error = %err, "transient failure; requeueing");
            metrics::transient(err.label());
            tokio::time::sleep(REQUEUE_AFTER).await;
            if let Err(err) = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
            {
                tracing::warn!(error = %err, "cannot requeue");
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "permanent failure; dead-lettering");
            metrics::dead_lettered(err.label());
            reject(delivery).await;
        }
    }
}

async fn dispatch(context: &Context, message: &PaymentsMessage) -> Result<(), HandleError> {
    match message {
        PaymentsMessage::ChargePayment(envelope) => handler::charge_payment(context, &envelope.payload).await,
        PaymentsMessage::GatewayEvent(envelope) => handler::gateway_event(context, &envelope.payload).await,
        PaymentsMessage::BookingConfirmRejected(envelope) => {
            handler::confirm_rejected(context, &envelope.payload).await
        }
        PaymentsMessage::BookingCancelled(envelope) => handler::cancelled(context, &envelope.payload).await,
    }
}

/// Rejects without requeue: the queue dead-letters it.
async fn reject(delivery: &Delivery) {
    if let Err(err) = delivery.acker.reject(BasicRejectOptions { requeue: false }).await {
        tracing::warn!(error = %err, "cannot reject a delivery");
    }
}
