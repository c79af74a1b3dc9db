//! Hold results and booking facts coming back from the workers.
//!
//! Each ingress instance consumes the `events` exchange through its own exclusive, auto-deleted
//! queue bound to `hold.*.*`, `booking.*.*`, `payment.*.*`, `refund.*.*` and `waitlist.*.*`, and
//! hands each hold result to the request waiting for it (`POST /holds?wait=`), if one is waiting
//! on this instance, and every fact to the fan's WebSockets on this instance (`hold_result`, and
//! `booking` when a hold is released or lapses, a payment starts, succeeds or fails, a booking is
//! confirmed, cancelled or refunded, or a waitlist offer arrives). Results are notifications: the
//! queue is consumed without acknowledgements, and a result this instance misses (it was
//! reconnecting) is still in PostgreSQL for `GET /hold-requests/{id}`; a waiting request then
//! answers 202 when its wait runs out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    contracts::{self, HoldExpired, HoldPlaced, HoldRejected, HoldReleased, Message as _},
    ids::{CommandId, UserId},
    mq::Broker,
};
use futures::StreamExt as _;
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The result of a hold request.
#[derive(Debug, Clone)]
pub enum HoldOutcome {
    /// Granted.
    Placed(HoldPlaced),
    /// Refused.
    Rejected(HoldRejected),
}

/// Requests waiting for their result on this instance.
#[derive(Default)]
pub struct Results {
    /// Several requests may wait for one command (the same `Idempotency-Key` sent twice).
    waiting: Mutex<HashMap<CommandId, Vec<oneshot::Sender<HoldOutcome>>>>,
    /// The open WebSockets of each fan on this instance.
    sockets: Mutex<HashMap<UserId, Vec<mpsc::Sender<serde_json::Value>>>>,
    consuming: std::sync::atomic::AtomicBool,
}

/// A fan's WebSocket listening for its results; unregisters on drop.
pub struct SocketSubscription {
    results: Arc<Results>,
    user: UserId,
    /// Messages for the socket (`{"type": "hold_result" | "booking", ...}`).
    pub messages: mpsc::Receiver<serde_json::Value>,
}

impl Drop for SocketSubscription {
    fn drop(&mut self) {
        self.messages.close();
        let mut sockets = self.results.sockets();
        if let Some(senders) = sockets.get_mut(&self.user) {
            senders.retain(|sender| !sender.is_closed());
            if senders.is_empty() {
                sockets.remove(&self.user);
            }
        }
    }
}

/// The facts this instance listens to (`<entity>.<fact>.<show_id>`): hold results, and what
/// happens to bookings afterwards (payments, confirmation, cancellation, refunds, waitlist
/// offers), which fans see live as `booking` messages.
const BOUND_EVENTS: &[&str] = &["hold.*.*", "booking.*.*", "payment.*.*", "refund.*.*", "waitlist.*.*"];

fn rfc3339(at: time::OffsetDateTime) -> Option<String> {
    at.format(&time::format_description::well_known::Rfc3339).ok()
}

/// The `booking` WebSocket message a fact means for its fan, or `None` for other facts (hold
/// results, show facts). `status` is the booking's status after the fact, when the fact says;
/// payment and refund facts carry `payment` / `refund` instead. Facts after the hold also name
/// themselves in `event`.
fn booking_message(kind: &str, body: &[u8]) -> Option<(UserId, serde_json::Value)> {
    use contracts::{
        BookingCancelled, BookingConfirmRejected, BookingConfirmed, BookingPaymentFailed, BookingPaymentPending,
        ChargeFailed, ChargeSucceeded, RefundSucceeded, WaitlistOffered, decode,
    };
    use serde_json::json;
    Some(match kind {
        HoldReleased::TYPE => {
            let fact = decode::<HoldReleased>(body).ok()?.payload;
            (
                fact.user_id,
                json!({"type": "booking", "booking_id": fact.booking_id, "status": "released"}),
            )
        }
        HoldExpired::TYPE => {
            let fact = decode::<HoldExpired>(body).ok()?.payload;
            (
                fact.user_id,
                json!({"type": "booking", "booking_id": fact.booking_id, "status": "expired"}),
            )
        }
        BookingPaymentPending::TYPE => {
            let fact = decode::<BookingPaymentPending>(body).ok()?.payload;
            (
                fact.user_id,
                json!({"type": "booking", "event": kind, "booking_id": fact.booking_id, "status": "payment_pending",
                       "payment": {"payment_id": fact.payment_id, "status": "processing"},
                       "expires_at": rfc3339(fact.expires_at)}),
            )
        }
        BookingPaymentFailed::TYPE => {
            let fact = decode::<BookingPaymentFailed>(body).ok()?.payload;
            (
                fact.user_id,
                json!({"type": "booking", "event": kind, "booking_id": fact.booking_id, "status": fact.status,
                       "payment": {"payment_id": fact.payment_id, "status": "failed", "failure_code": fact.code}}),
            )
        }
        BookingConfirmed::TYPE => {
            let fact = decode::<BookingConfirmed>(body).ok()?.payload;
            (
                fact.user_id,
                json!({"type": "booking", "event": kind, "booking_id": fact.booking_id, "status": "confirmed",
                       "payment": {"payment_id": fact.payment_id, "status": "succeeded"},
                       "ticket_ids": fact.ticket_ids, "total_cents": fact.total_cents, "currency": fact.currency}),
            )
        }
        BookingConfirmRejected::TYPE => {
            let fact = decode::<BookingConfirmRejected>(body).ok()?.payload;
            (
                fact.user_id,
                json!({"type": "booking", "event": kind, "booking_id": fact.booking_id, "status": fact.booking_status,
                       "payment": {"payment_id": fact.payment_id, "status": "succeeded"}}),
            )
        }
        BookingCancelled::TYPE => {
            let fact = decode::<BookingCancelled>(body).ok()?.payload;
            (
                fact.user_id,
                json!({"type": "booking", "event": kind, "booking_id": fact.booking_id, "status": "cancelled",
                       "refund_cents": fact.refund_cents, "currency": fact.currency}),
            )
        }
        ChargeSucceeded::TYPE => {
            let fact = decode::<ChargeSucceeded>(body).ok()?.payload;
            (
                fact.user_id,
                json!({"type": "booking", "event": kind, "booking_id": fact.booking_id,
                       "payment": {"payment_id": fact.payment_id, "status": "succeeded",
                                   "amount_cents": fact.amount_cents, "currency": fact.currency}}),
            )
        }
        ChargeFailed::TYPE => {
            let fact = decode::<ChargeFailed>(body).ok()?.payload;
            (
                fact.user_id,
                json!({"type": "booking", "event": kind, "booking_id": fact.booking_id,
                       "payment": {"payment_id": fact.payment_id, "status": "failed", "failure_code": fact.code}}),
            )
        }
        RefundSucceeded::TYPE => {
            let fact = decode::<RefundSucceeded>(body).ok()?.payload;
            let mut message = json!({"type": "booking", "event": kind, "booking_id": fact.booking_id,
                "refund": {"refund_id": fact.refund_id, "payment_id": fact.payment_id,
                           "amount_cents": fact.amount_cents, "currency": fact.currency, "reason": fact.reason}});
            // A cancelled booking is `refunded` once its money is back; a refunded late charge
            // leaves its (expired or released) booking as it was.
            if fact.reason == "cancelled" {
                message["status"] = "refunded".into();
            }
            (fact.user_id, message)
        }
        WaitlistOffered::TYPE => {
            let fact = decode::<WaitlistOffered>(body).ok()?.payload;
            (
                fact.user_id,
                json!({"type": "booking", "event": kind, "booking_id": fact.booking_id, "status": "held",
                       "waitlist_entry_id": fact.waitlist_entry_id, "seats": fact.seats,
                       "total_cents": fact.total_cents, "currency": fact.currency,
                       "expires_at": rfc3339(fact.expires_at)}),
            )
        }
        _ => return None,
    })
}

/// Messages a socket may fall behind by before newer ones are dropped (it can always poll).
const SOCKET_BACKLOG: usize = 16;

/// Removes the waiter when the request ends, whether or not the result came.
pub struct Waiter {
    results: Arc<Results>,
    command: CommandId,
    receiver: Option<oneshot::Receiver<HoldOutcome>>,
}

impl Waiter {
    /// Waits up to `wait` for the result.
    pub async fn wait(mut self, wait: Duration) -> Option<HoldOutcome> {
        let receiver = self.receiver.take()?;
        tokio::time::timeout(wait, receiver).await.ok()?.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Our receiver goes first, so our sender reads as closed and is the one removed.
        drop(self.receiver.take());
        let mut waiting = self.results.lock();
        if let Some(senders) = waiting.get_mut(&self.command) {
            senders.retain(|sender| !sender.is_closed());
            if senders.is_empty() {
                waiting.remove(&self.command);
            }
        }
    }
}

impl Results {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CommandId, Vec<oneshot::Sender<HoldOutcome>>>> {
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers interest in `command`'s result; register before publishing the command, so
    /// the result cannot arrive first.
    pub fn register(self: &Arc<Self>, command: CommandId) -> Waiter {
        let (sender, receiver) = oneshot::channel();
        self.lock().entry(command).or_default().push(sender);
        Waiter {
            results: Arc::clone(self),
            command,
            receiver: Some(receiver),
        }
    }

    fn sockets(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Vec<mpsc::Sender<serde_json::Value>>>> {
        self.sockets.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribes a fan's WebSocket to the fan's results.
    pub fn subscribe(self: &Arc<Self>, user: UserId) -> SocketSubscription {
        let (sender, messages) = mpsc::channel(SOCKET_BACKLOG);
        self.sockets().entry(user).or_default().push(sender);
        SocketSubscription {
            results: Arc::clone(self),
            user,
            messages,
        }
    }

    fn tell_sockets(&self, user: UserId, message: &serde_json::Value) {
        if let Some(senders) = self.sockets().get(&user) {
            for sender in senders {
                let _ = sender.try_send(message.clone());
            }
        }
    }

    /// Whether the results queue is being consumed (readiness).
    pub fn is_consuming(&self) -> bool {
        self.consuming.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn deliver(&self, body: &[u8]) {
        let kind = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|value| value["type"].as_str().map(str::to_owned));
        if let Some((user, message)) = kind.as_deref().and_then(|kind| booking_message(kind, body)) {
            self.tell_sockets(user, &message);
            return;
        }
        let outcome = match kind.as_deref() {
            Some(HoldPlaced::TYPE) => contracts::decode::<HoldPlaced>(body)
                .ok()
                .map(|envelope| HoldOutcome::Placed(envelope.payload)),
            Some(HoldRejected::TYPE) => contracts::decode::<HoldRejected>(body)
                .ok()
                .map(|envelope| HoldOutcome::Rejected(envelope.payload)),
            _ => None,
        };
        let Some(outcome) = outcome else {
            return;
        };
        let (command, user, message) = match &outcome {
            HoldOutcome::Placed(placed) => (
                placed.command_id,
                placed.user_id,
                serde_json::json!({
                    "type": "hold_result", "request_id": placed.command_id, "status": "held",
                    "booking_id": placed.booking_id, "seats": placed.seats, "total_cents": placed.total_cents,
                    "currency": placed.currency,
                    "expires_at": placed.expires_at.format(&time::format_description::well_known::Rfc3339).ok(),
                }),
            ),
            HoldOutcome::Rejected(rejected) => (
                rejected.command_id,
                rejected.user_id,
                serde_json::json!({
                    "type": "hold_result", "request_id": rejected.command_id, "status": "rejected",
                    "code": rejected.code.as_str(), "unavailable_seat_ids": rejected.unavailable_seat_ids,
                }),
            ),
        };
        self.tell_sockets(user, &message);
        for sender in self.lock().remove(&command).unwrap_or_default() {
            let _ = sender.send(outcome.clone());
        }
    }

    /// Consumes this instance's results queue until `shutdown`, re-subscribing after broker
    /// outages.
    pub async fn run(self: Arc<Self>, broker: Arc<Broker>, shutdown: CancellationToken) {
        loop {
            if let Err(err) = self.consume(&broker, &shutdown).await {
                tracing::warn!(error = %err, "hold results consumer stopped; re-subscribing");
            }
            self.consuming.store(false, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn consume(&self, broker: &Broker, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let channel = broker.channel().await?;
        // Server-named, exclusive and auto-deleted: it lives exactly as long as this instance's
        // connection, so a crashed instance leaves nothing behind.
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        for routing_key in BOUND_EVENTS {
            channel
                .queue_bind(
                    queue.name().clone(),
                    broker.topology().events_exchange().into(),
                    (*routing_key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        self.consuming.store(true, std::sync::atomic::Ordering::Relaxed);
        loop {
            tokio::select! {
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => self.deliver(&delivery.data),
                    Some(Err(err)) => return Err(err.into()),
                    None => anyhow::bail!("the results consumer was cancelled"),
                },
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use common::{
        contracts::{BookingPaymentFailed, Envelope, RefundSucceeded},
        ids::{BookingId, PaymentId, RefundId, ShowId},
    };

    use super::*;

    fn body<T: contracts::Message>(payload: T) -> Vec<u8> {
        serde_json::to_vec(&Envelope::new(Some(ShowId::new()), payload)).unwrap()
    }

    #[test]
    fn payment_and_refund_facts_become_booking_messages_for_their_fan_only() {
        let results = Arc::new(Results::default());
        let (fan, other) = (UserId::new(), UserId::new());
        let mut socket = results.subscribe(fan);
        let mut others = results.subscribe(other);
        let (booking, payment) = (BookingId::new(), PaymentId::new());
        results.deliver(&body(BookingPaymentFailed {
            user_id: fan,
            booking_id: booking,
            payment_id: payment,
            code: "card_declined".to_owned(),
            status: "held".to_owned(),
        }));
        let message = socket.messages.try_recv().unwrap();
        assert_eq!(message["type"], "booking");
        assert_eq!(message["event"], "booking.payment_failed");
        assert_eq!(message["status"], "held");
        assert_eq!(message["payment"]["failure_code"], "card_declined");

        for (reason, status) in [("cancelled", Some("refunded")), ("confirm_rejected", None)] {
            results.deliver(&body(RefundSucceeded {
                user_id: fan,
                booking_id: booking,
                payment_id: payment,
                refund_id: RefundId::new(),
                amount_cents: 5000,
                currency: "EUR".to_owned(),
                reason: reason.to_owned(),
            }));
            let message = socket.messages.try_recv().unwrap();
            assert_eq!(message["event"], "refund.succeeded");
            assert_eq!(message["refund"]["amount_cents"], 5000);
            assert_eq!(message["status"].as_str(), status, "{reason}");
        }
        assert!(others.messages.try_recv().is_err(), "another fan hears nothing");
    }
}
