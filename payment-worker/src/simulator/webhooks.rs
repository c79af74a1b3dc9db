//! Webhook delivery, the way a real gateway behaves at its worst: at least once (retried with
//! backoff until a 2xx), optionally several times each, and optionally out of order.
//!
//! Events are gathered for a short window, then every event of the window is repeated
//! `duplicates` times and the whole list shuffled (when asked) before the first attempts are
//! made one after the other, so the receiver sees exactly that order. Retries of a failed
//! delivery run on their own, each signed afresh.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::seq::SliceRandom as _;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::signature;

/// A gateway event, as delivered: `{id, object: "event", type, created, data: {object}}`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique per event (`evt_...`); duplicates of one event share it.
    pub id: String,
    /// Always `event`.
    pub object: &'static str,
    /// `payment_intent.succeeded`, `payment_intent.payment_failed`, `refund.succeeded`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds.
    pub created: i64,
    /// The object the event is about.
    pub data: EventData,
}

/// The `data` of an event.
#[derive(Debug, Clone, Serialize)]
pub struct EventData {
    /// A payment intent or a refund, as `GET` would return it at the time of the event.
    pub object: serde_json::Value,
}

/// How webhooks are delivered.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Where to POST (`None`: events are recorded but not delivered).
    pub url: Option<String>,
    /// The signing secret.
    pub secret: String,
    /// How many times each event is delivered (at least 1).
    pub duplicates: u32,
    /// Whether each window's deliveries are shuffled.
    pub shuffle: bool,
    /// How long events are gathered before a window is delivered.
    pub window: Duration,
    /// Attempts per delivery before giving up.
    pub max_attempts: u32,
    /// First retry delay (doubling).
    pub retry_min: Duration,
}

/// Counters shown in the ledger.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Events emitted.
    pub events: AtomicU64,
    /// Deliveries answered with a 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed (non-2xx or no answer).
    pub failed_attempts: AtomicU64,
}

/// Sends events to the dispatcher task.
#[derive(Clone)]
pub struct Emitter {
    sender: mpsc::UnboundedSender<Event>,
    stats: Arc<DeliveryStats>,
}

impl Emitter {
    /// Queues `object`'s event `kind` for delivery.
    pub fn emit(&self, kind: &str, object: serde_json::Value) {
        let event = Event {
            id: super::new_id("evt"),
            object: "event",
            kind: kind.to_owned(),
            created: OffsetDateTime::now_utc().unix_timestamp(),
            data: EventData { object },
        };
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        // The receiver lives as long as the simulator; after shutdown events are dropped.
        let _ = self.sender.send(event);
    }

    /// The delivery counters.
    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }
}

/// Starts the dispatcher task; it stops at `shutdown`.
pub fn spawn(config: DeliveryConfig, shutdown: CancellationToken) -> Emitter {
    let (sender, receiver) = mpsc::unbounded_channel();
    let stats = Arc::new(DeliveryStats::default());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a default HTTP client builds");
    tokio::spawn(dispatch(
        Arc::new(config),
        client,
        receiver,
        Arc::clone(&stats),
        shutdown,
    ));
    Emitter { sender, stats }
}

async fn dispatch(
    config: Arc<DeliveryConfig>,
    client: reqwest::Client,
    mut receiver: mpsc::UnboundedReceiver<Event>,
    stats: Arc<DeliveryStats>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            event = receiver.recv() => match event {
                Some(event) => event,
                None => return,
            },
            () = shutdown.cancelled() => return,
        };
        let mut window = vec![first];
        let deadline = tokio::time::sleep(config.window);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                event = receiver.recv() => match event {
                    Some(event) => window.push(event),
                    None => break,
                },
                () = &mut deadline => break,
                () = shutdown.cancelled() => return,
            }
        }
        let Some(url) = config.url.clone() else {
            continue;
        };
        let mut deliveries: Vec<Arc<Vec<u8>>> = Vec::new();
        for event in &window {
            let body = Arc::new(serde_json::to_vec(event).expect("events serialise"));
            for _ in 0..config.duplicates.max(1) {
                deliveries.push(Arc::clone(&body));
            }
        }
        if config.shuffle {
            deliveries.shuffle(&mut rand::rng());
        }
        for body in deliveries {
            if deliver(&client, &url, &config.secret, &body).await {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(retry(
                client.clone(),
                url.clone(),
                Arc::clone(&config),
                body,
                Arc::clone(&stats),
                shutdown.clone(),
            ));
        }
    }
}

/// Retries one delivery with doubling delays until a 2xx or `max_attempts`.
async fn retry(
    client: reqwest::Client,
    url: String,
    config: Arc<DeliveryConfig>,
    body: Arc<Vec<u8>>,
    stats: Arc<DeliveryStats>,
    shutdown: CancellationToken,
) {
    let mut delay = config.retry_min;
    for _ in 1..config.max_attempts {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        if deliver(&client, &url, &config.secret, &body).await {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        delay = (delay * 2).min(Duration::from_secs(60));
    }
    tracing::warn!(%url, "webhook delivery abandoned after {} attempts", config.max_attempts);
}

/// One signed POST; true on a 2xx.
async fn deliver(client: &reqwest::Client, url: &str, secret: &str, body: &[u8]) -> bool {
    let header = signature::sign(secret, OffsetDateTime::now_utc().unix_timestamp(), body);
    match client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(signature::HEADER, header)
        .body(body.to_vec())
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => true,
        Ok(response) => {
            tracing::debug!(%url, status = %response.status(), "webhook refused; will retry");
            false
        }
        Err(err) => {
            tracing::debug!(%url, error = %err, "webhook not delivered; will retry");
            false
        }
    }
}
