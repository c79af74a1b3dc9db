//! Shared by the payment-worker's integration tests: a fresh database and a queue prefix per
//! test, the real gateway simulator served over HTTP on an ephemeral port, a webhook receiver
//! standing in for ingress (it checks the signature, records the event in `webhook_event` and
//! queues a `GatewayEvent`), the payment-worker itself in-process, and the queues a test reads
//! to see the commands and events it published.

#![allow(dead_code)] // each test binary uses part of it

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use common::{
    config::{CommonConfig, LogFormat},
    contracts::{ChargePayment, Envelope, GatewayEvent, Message},
    ids::{BookingId, PaymentId, ShowId, UserId},
    mq::{self, PAYMENTS_ROUTING_KEY, Publisher, Topology},
    testing::TestDatabase,
};
use lapin::{
    options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use payment_worker::{
    handler::HandlerConfig,
    service::{Service, ServiceConfig},
    simulator::{self, SimulatorConfig, signature},
};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub const WEBHOOK_SECRET: &str = "whsec_test_secret";

fn env(name: &str, default: &str) -> String {
    common::config::env_string(name, default)
}

/// A simulator on an ephemeral port; returns its base URL.
pub async fn start_simulator(config: SimulatorConfig, shutdown: CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { simulator::serve(listener, config, shutdown).await.unwrap() });
    format!("http://{address}")
}

/// A simulator configuration for tests: fast slow tokens, a short hang, webhooks to `url`.
pub fn simulator_config(webhook_url: Option<String>) -> SimulatorConfig {
    SimulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        webhook_url,
        webhook_secret: WEBHOOK_SECRET.to_owned(),
        webhook_window: Duration::from_millis(20),
        webhook_retry: Duration::from_millis(100),
        // Below the worker's 1 s gateway timeout in the harness: slow, not timed out.
        slow: Duration::from_millis(600),
        hang: Duration::from_secs(4),
        ..SimulatorConfig::default()
    }
}

/// One delivery the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub signature: String,
    pub body: Bytes,
    pub event: Value,
}

/// What the webhook receiver needs and records.
#[derive(Clone)]
pub struct Receiver {
    pub deliveries: Arc<Mutex<Vec<Delivery>>>,
    /// When set, each verified delivery is recorded in `webhook_event` and queued.
    forward: Option<(PgPool, Publisher, Topology)>,
}

impl Receiver {
    /// A receiver that only records what it gets.
    pub fn recording() -> Self {
        Self {
            deliveries: Arc::default(),
            forward: None,
        }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }
}

/// A webhook receiver on an ephemeral port; returns its URL.
pub async fn start_receiver(receiver: Receiver, shutdown: CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    let app = Router::new().route("/webhook", post(receive)).with_state(receiver);
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .unwrap()
    });
    format!("http://{address}/webhook")
}

/// Plays ingress: verify, record (a replayed event id is recorded once), queue. Every delivery
/// is queued, duplicates included: the worst an at-least-once ingress could do.
async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Some(header) = headers.get(signature::HEADER).and_then(|v| v.to_str().ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if signature::verify(WEBHOOK_SECRET, header, &body, now, 300).is_err() {
        return StatusCode::BAD_REQUEST;
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    receiver.deliveries.lock().unwrap().push(Delivery {
        signature: header.to_owned(),
        body: body.clone(),
        event: event.clone(),
    });
    if let Some((db, publisher, topology)) = &receiver.forward {
        let id = event["id"].as_str().unwrap_or_default().to_owned();
        let kind = event["type"].as_str().unwrap_or_default().to_owned();
        if sqlx::query(
            "INSERT INTO webhook_event (gateway_event_id, event_type, payload) VALUES ($1, $2, $3)
             ON CONFLICT (gateway_event_id) DO NOTHING",
        )
        .bind(&id)
        .bind(&kind)
        .bind(&event)
        .execute(db)
        .await
        .is_err()
        {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        let envelope = Envelope::new(
            None,
            GatewayEvent {
                event_id: id,
                event_type: kind,
                object: event["data"]["object"].clone(),
            },
        );
        if publisher
            .publish(&topology.payments_exchange(), PAYMENTS_ROUTING_KEY, &envelope)
            .await
            .is_err()
        {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    StatusCode::OK
}

/// A payment seeded in `processing`, with its booking.
#[derive(Debug, Clone)]
pub struct TestPayment {
    pub payment_id: PaymentId,
    pub booking_id: BookingId,
    pub show_id: ShowId,
    pub user_id: UserId,
    pub amount_cents: i64,
    pub idempotency_key: String,
    pub card_token: String,
}

/// Knobs of a harness.
pub struct Options {
    pub duplicates: u32,
    pub shuffle: bool,
    pub webhook_window: Duration,
    pub stuck_after: Duration,
    /// Whether the receiver queues the webhooks it gets (as ingress does).
    pub forward_webhooks: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duplicates: 1,
            shuffle: false,
            webhook_window: Duration::from_millis(20),
            stuck_after: Duration::from_secs(600),
            forward_webhooks: true,
        }
    }
}

/// One test's world.
pub struct Harness {
    pub database: TestDatabase,
    pub topology: Topology,
    pub connection: lapin::Connection,
    pub publisher: Publisher,
    pub gateway_url: String,
    pub receiver: Receiver,
    pub show: ShowId,
    pub user: UserId,
    commands_queue: String,
    events_queue: String,
    commands_seen: Mutex<Vec<Value>>,
    events_seen: Mutex<Vec<Value>>,
    shutdown: CancellationToken,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    pub async fn new(options: Options) -> Self {
        common::telemetry::init("payment-worker-test", LogFormat::Text);
        let database = TestDatabase::create().await;
        let topology = Topology::new(format!("test-{}.", uuid::Uuid::new_v4().simple()));
        let amqp = env("AMQP_URL", common::config::defaults::AMQP_URL);
        let connection = mq::connect(&amqp, "payment-test").await.unwrap();
        let publisher = Publisher::new(&connection, Duration::from_secs(10)).await.unwrap();
        topology.declare(publisher.channel()).await.unwrap();
        let shutdown = CancellationToken::new();

        let (show, user) = seed_show_and_user(database.pool()).await;
        // Queues of our own receive the commands sent to the show (routing key = the show id)
        // and every event. (The show's real queue is a single-active-consumer quorum queue, which
        // cannot be read with basic.get.)
        let commands_queue = format!("{}test-commands", topology.prefix());
        let events_queue = format!("{}test-events", topology.prefix());
        for (queue, exchange, key) in [
            (&commands_queue, topology.shows_exchange(), show.to_string()),
            (&events_queue, topology.events_exchange(), "#".to_owned()),
        ] {
            publisher
                .channel()
                .queue_declare(
                    queue.clone().into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            publisher
                .channel()
                .queue_bind(
                    queue.clone().into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }

        let receiver = Receiver {
            deliveries: Arc::default(),
            forward: options
                .forward_webhooks
                .then(|| (database.pool().clone(), publisher.clone(), topology.clone())),
        };
        let webhook_url = start_receiver(receiver.clone(), shutdown.clone()).await;
        let gateway_url = start_simulator(
            SimulatorConfig {
                duplicates: options.duplicates,
                shuffle: options.shuffle,
                webhook_window: options.webhook_window,
                ..simulator_config(Some(webhook_url))
            },
            shutdown.clone(),
        )
        .await;

        let config = ServiceConfig {
            common: CommonConfig {
                database_url: database.url().to_owned(),
                database_max_connections: 8,
                redis_url: env("REDIS_URL", common::config::defaults::REDIS_URL),
                redis_key_prefix: String::new(),
                amqp_url: amqp,
                mq_prefix: topology.prefix().to_owned(),
                admin_listen: "127.0.0.1:0".parse().unwrap(),
                log_format: LogFormat::Text,
            },
            gateway_url: gateway_url.clone(),
            // Shorter than the simulator's hang: tok_timeout_after_charge times out.
            gateway_timeout: Duration::from_secs(1),
            handler: HandlerConfig {
                gateway_attempts: 4,
                retry_min: Duration::from_millis(50),
            },
            prefetch: 8,
            sweep_interval: Duration::from_millis(200),
            stuck_after: options.stuck_after,
            relay_age: Duration::from_millis(500),
        };
        let service = Service::build(config).await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let worker = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { service.run_until_stopped(admin, shutdown).await.unwrap() }
        });
        Self {
            database,
            topology,
            connection,
            publisher,
            gateway_url,
            receiver,
            show,
            user,
            commands_queue,
            events_queue,
            commands_seen: Mutex::default(),
            events_seen: Mutex::default(),
            shutdown,
            worker: Some(worker),
        }
    }

    pub fn db(&self) -> &PgPool {
        self.database.pool()
    }

    /// A booking in `payment_pending` and its payment in `processing`, as the booking-worker
    /// writes them.
    pub async fn seed_payment(&self, card_token: &str, amount_cents: i64) -> TestPayment {
        let booking_id = BookingId::new();
        let payment_id = PaymentId::new();
        sqlx::query(
            "INSERT INTO booking (booking_id, show_id, app_user_id, status, command_id, expires_at, seat_count,
                                  subtotal_cents, total_cents, currency)
             VALUES ($1, $2, $3, 'payment_pending', $4, now() + interval '10 minutes', 1, $5, $5, 'EUR')",
        )
        .bind(booking_id)
        .bind(self.show)
        .bind(self.user)
        .bind(uuid::Uuid::now_v7())
        .bind(amount_cents)
        .execute(self.db())
        .await
        .unwrap();
        let idempotency_key = format!("charge-{payment_id}");
        sqlx::query(
            "INSERT INTO payment (payment_id, booking_id, amount_cents, currency, idempotency_key, card_token)
             VALUES ($1, $2, $3, 'EUR', $4, $5)",
        )
        .bind(payment_id)
        .bind(booking_id)
        .bind(amount_cents)
        .bind(&idempotency_key)
        .bind(card_token)
        .execute(self.db())
        .await
        .unwrap();
        TestPayment {
            payment_id,
            booking_id,
            show_id: self.show,
            user_id: self.user,
            amount_cents,
            idempotency_key,
            card_token: card_token.to_owned(),
        }
    }

    /// Publishes `ChargePayment` for `payment` the way the booking-worker's outbox does.
    pub async fn charge(&self, payment: &TestPayment) {
        let envelope = Envelope::new(
            Some(payment.show_id),
            ChargePayment {
                payment_id: payment.payment_id,
                booking_id: payment.booking_id,
                show_id: payment.show_id,
                user_id: payment.user_id,
                amount_cents: payment.amount_cents,
                currency: "EUR".to_owned(),
                card_token: payment.card_token.clone(),
                idempotency_key: payment.idempotency_key.clone(),
            },
        );
        self.publish_payments(&envelope).await;
    }

    pub async fn publish_payments<T: Message>(&self, envelope: &Envelope<T>) {
        self.publisher
            .publish(&self.topology.payments_exchange(), PAYMENTS_ROUTING_KEY, envelope)
            .await
            .unwrap();
    }

    /// Publishes a fact on the `events` exchange, as the booking-worker's relay does.
    pub async fn publish_fact<T: Message>(&self, payload: T) {
        let envelope = Envelope::new(Some(self.show), payload);
        self.publisher
            .publish(
                &self.topology.events_exchange(),
                &common::contracts::event_routing_key::<T>(self.show),
                &envelope,
            )
            .await
            .unwrap();
    }

    pub async fn status(&self, payment: PaymentId) -> String {
        sqlx::query_scalar("SELECT status FROM payment WHERE payment_id = $1")
            .bind(payment)
            .fetch_one(self.db())
            .await
            .unwrap()
    }

    /// Waits until the payment has `status` (30 s at most).
    pub async fn wait_status(&self, payment: PaymentId, status: &str) {
        let mut last = String::new();
        for _ in 0..300 {
            last = self.status(payment).await;
            if last == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("payment {payment} is {last}, not {status}, after 30 s");
    }

    /// The simulator's ledger.
    pub async fn ledger(&self) -> Value {
        reqwest::get(format!("{}/v1/_ledger", self.gateway_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Ledger entries (`charges`, `declines`, `refunds`) of one payment.
    pub async fn ledger_entries(&self, list: &str, payment: PaymentId) -> Vec<Value> {
        self.ledger().await[list]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["metadata"]["payment_id"] == payment.to_string())
            .cloned()
            .collect()
    }

    async fn drain(&self, queue: &str, into: &Mutex<Vec<Value>>) {
        let channel = self.connection.create_channel().await.unwrap();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            into.lock()
                .unwrap()
                .push(serde_json::from_slice(&message.delivery.data).unwrap());
        }
        let _ = channel.close(200, "done".into()).await;
    }

    /// Every command the show's queue received so far (envelopes).
    pub async fn commands(&self) -> Vec<Value> {
        self.drain(&self.commands_queue, &self.commands_seen).await;
        self.commands_seen.lock().unwrap().clone()
    }

    /// Every event published so far (envelopes).
    pub async fn events(&self) -> Vec<Value> {
        self.drain(&self.events_queue, &self.events_seen).await;
        self.events_seen.lock().unwrap().clone()
    }

    /// Messages of `kind` about `payment`.
    pub fn about<'a>(messages: &'a [Value], kind: &str, payment: PaymentId) -> Vec<&'a Value> {
        messages
            .iter()
            .filter(|m| m["type"] == kind && m["payload"]["payment_id"] == payment.to_string())
            .collect()
    }

    /// Waits until a command of `kind` about `payment` arrived (30 s at most); returns it.
    pub async fn wait_command(&self, kind: &str, payment: PaymentId) -> Value {
        for _ in 0..300 {
            let commands = self.commands().await;
            if let Some(found) = Self::about(&commands, kind, payment).first() {
                return (*found).clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {kind} command for payment {payment} in 30 s");
    }

    /// Waits until an event of `kind` about `payment` arrived (30 s at most); returns it.
    pub async fn wait_event(&self, kind: &str, payment: PaymentId) -> Value {
        for _ in 0..300 {
            let events = self.events().await;
            if let Some(found) = Self::about(&events, kind, payment).first() {
                return (*found).clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {kind} event for payment {payment} in 30 s");
    }

    /// Outbox rows of `kind` about `payment`.
    pub async fn outbox_count(&self, kind: &str, payment: PaymentId) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE body->>'type' = $1 AND body->'payload'->>'payment_id' = $2",
        )
        .bind(kind)
        .bind(payment.to_string())
        .fetch_one(self.db())
        .await
        .unwrap()
    }

    /// Messages in the dead-letter queue.
    pub async fn dead_lettered(&self) -> u32 {
        let channel = self.connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(
                self.topology.dead_letter_queue().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "done".into()).await;
        queue.message_count()
    }

    /// Stops the worker (it must drain within 30 s) and deletes the test's topology.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            tokio::time::timeout(Duration::from_secs(30), worker)
                .await
                .expect("the worker drains within 30 s")
                .unwrap();
        }
        let channel = self.connection.create_channel().await.unwrap();
        for queue in [&self.commands_queue, &self.events_queue] {
            channel
                .queue_delete(queue.clone().into(), QueueDeleteOptions::default())
                .await
                .unwrap();
        }
        self.topology.delete(&channel, &[]).await.unwrap();
        let _ = self.connection.close(200, "done".into()).await;
    }
}

async fn seed_show_and_user(db: &PgPool) -> (ShowId, UserId) {
    let venue = uuid::Uuid::now_v7();
    let event = uuid::Uuid::now_v7();
    let show = ShowId::new();
    let user = UserId::new();
    sqlx::query("INSERT INTO venue (venue_id, name, city, address, timezone, seat_count) VALUES ($1, 'Hall', 'Oslo', 'Street 1', 'Europe/Oslo', 10)")
        .bind(venue)
        .execute(db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO event (event_id, title, category, city) VALUES ($1, 'Gig', 'music', 'Oslo')")
        .bind(event)
        .execute(db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO show (show_id, event_id, venue_id, starts_at, on_sale_at, status, currency, max_tickets_per_user,
                           hold_seconds, admit_per_second, max_active, prequeue_opens_at, capacity)
         VALUES ($1, $2, $3, now() + interval '30 days', now() - interval '1 minute', 'on_sale', 'EUR', 4, 120,
                 100, 1000, now() - interval '2 minutes', 10)",
    )
    .bind(show)
    .bind(event)
    .bind(venue)
    .execute(db)
    .await
    .unwrap();
    sqlx::query("INSERT INTO app_user (app_user_id, email, name, password_hash) VALUES ($1, $2, 'Fan', 'not-a-hash')")
        .bind(user)
        .bind(format!("{user}@example.test"))
        .execute(db)
        .await
        .unwrap();
    (show, user)
}
