//! Hold results coming back from the booking-workers.
//!
//! Each ingress instance consumes the `events` exchange through its own exclusive, auto-deleted
//! queue bound to `hold.*.*`, and hands each result to the request waiting for it
//! (`POST /holds?wait=`), if one is waiting on this instance, and to the fan's WebSockets on
//! this instance (`hold_result`, and `booking` when a hold is released or lapses). Results are notifications: the
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
        let booking_change = match kind.as_deref() {
            Some(HoldReleased::TYPE) => contracts::decode::<HoldReleased>(body)
                .ok()
                .map(|e| (e.payload.user_id, e.payload.booking_id, "released")),
            Some(HoldExpired::TYPE) => contracts::decode::<HoldExpired>(body)
                .ok()
                .map(|e| (e.payload.user_id, e.payload.booking_id, "expired")),
            _ => None,
        };
        if let Some((user, booking, status)) = booking_change {
            self.tell_sockets(
                user,
                &serde_json::json!({"type": "booking", "booking_id": booking, "status": status}),
            );
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
        channel
            .queue_bind(
                queue.name().clone(),
                broker.topology().events_exchange().into(),
                "hold.*.*".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
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
