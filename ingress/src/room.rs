//! This instance's view of the waiting rooms: one `PSUBSCRIBE` to every show's serving channel,
//! fanned out to the local WebSocket clients through `watch` channels (a tick costs one Redis
//! message per instance, not one per fan), and heartbeats of connected fans batched into one
//! `ZADD` per show every few seconds.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::ids::{ShowId, UserId};
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use waiting_room::{WaitingRoom, controller::RoomUpdate, keys::Keys};

/// How often the batched heartbeats are written.
const HEARTBEAT_FLUSH: Duration = Duration::from_secs(5);

/// The latest update of a show's room and when this instance received it.
#[derive(Debug, Clone)]
pub struct LocalUpdate {
    /// What the admission controller published.
    pub update: RoomUpdate,
    /// Arrival time (fan-out latency is measured from here).
    pub received: Instant,
}

/// Subscriptions and heartbeats of this instance.
pub struct RoomHub {
    rooms: WaitingRoom,
    shows: Mutex<HashMap<ShowId, watch::Sender<Option<LocalUpdate>>>>,
    alive: Mutex<HashMap<ShowId, HashSet<UserId>>>,
}

impl RoomHub {
    /// A hub over `rooms`.
    pub fn new(rooms: WaitingRoom) -> Arc<Self> {
        Arc::new(Self {
            rooms,
            shows: Mutex::default(),
            alive: Mutex::default(),
        })
    }

    /// The room operations.
    pub fn rooms(&self) -> &WaitingRoom {
        &self.rooms
    }

    /// Updates of `show`'s room (the latest one at once, if any arrived yet).
    pub fn watch(&self, show: ShowId) -> watch::Receiver<Option<LocalUpdate>> {
        let mut shows = self.shows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        shows.entry(show).or_insert_with(|| watch::channel(None).0).subscribe()
    }

    /// Notes that `user` is still connected; written at the next flush.
    pub fn mark_alive(&self, show: ShowId, user: UserId) {
        let mut alive = self.alive.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        alive.entry(show).or_default().insert(user);
    }

    fn publish(&self, show: ShowId, update: RoomUpdate) {
        let shows = self.shows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Only shows with local fans have a channel; others are ignored at no cost.
        if let Some(sender) = shows.get(&show) {
            sender.send_replace(Some(LocalUpdate {
                update,
                received: Instant::now(),
            }));
        }
    }

    /// Drops channels nobody listens to any more.
    fn prune(&self) {
        let mut shows = self.shows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        shows.retain(|_, sender| sender.receiver_count() > 0);
    }

    async fn flush_heartbeats(&self) {
        let batch = std::mem::take(&mut *self.alive.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for (show, users) in batch {
            let users: Vec<UserId> = users.into_iter().collect();
            if let Err(err) = self.rooms.heartbeat(show, &users).await {
                tracing::warn!(show_id = %show, error = %err, "cannot record heartbeats");
            }
        }
    }

    /// Runs the subscription (reconnecting after Redis outages) and the heartbeat flusher until
    /// `shutdown`.
    pub fn spawn(self: &Arc<Self>, redis_url: String, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let flusher = {
                let hub = Arc::clone(&hub);
                let shutdown = shutdown.clone();
                async move {
                    let mut tick = tokio::time::interval(HEARTBEAT_FLUSH);
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {
                                hub.flush_heartbeats().await;
                                hub.prune();
                            }
                            () = shutdown.cancelled() => break,
                        }
                    }
                }
            };
            tokio::join!(flusher, hub.listen(redis_url, shutdown));
        })
    }

    async fn listen(&self, redis_url: String, shutdown: CancellationToken) {
        let prefix = self.rooms.prefix().to_owned();
        let mut delay = Duration::from_millis(250);
        loop {
            let session = async {
                let client = redis::Client::open(redis_url.as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.psubscribe(Keys::channel_pattern(&prefix)).await?;
                tracing::info!("subscribed to waiting-room updates");
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let Some(show) = Keys::show_of_channel(&prefix, message.get_channel_name()) else {
                        continue;
                    };
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    match serde_json::from_str::<RoomUpdate>(&payload) {
                        Ok(update) => self.publish(show, update),
                        Err(err) => tracing::warn!(error = %err, "malformed room update"),
                    }
                }
                Ok::<(), redis::RedisError>(())
            };
            tokio::select! {
                outcome = session => {
                    match outcome {
                        Ok(()) => tracing::warn!("waiting-room subscription ended; resubscribing"),
                        Err(err) => tracing::warn!(error = %err, retry_in = ?delay, "waiting-room subscription failed"),
                    }
                }
                () = shutdown.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}
