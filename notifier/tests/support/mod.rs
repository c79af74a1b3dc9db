//! Shared by the notifier's integration tests: a fresh database, a RabbitMQ prefix and a mail
//! directory per test; the real SMTP sink in-process on an ephemeral port; the notifier
//! in-process; bookings with tickets seeded straight into PostgreSQL; facts published the way the
//! booking-worker's relay publishes them (on `events`, routing key `<type>.<show_id>`).

#![allow(dead_code)] // each test binary uses part of it

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use common::{
    config::{CommonConfig, LogFormat, defaults},
    contracts::{BookingConfirmed, Envelope, HeldSeat, Message, event_routing_key},
    ids::{BookingId, EventId, PaymentId, SeatId, ShowId, TicketId, UserId},
    mq::{self, Publisher, Topology},
    testing::TestDatabase,
};
use notifier::{
    config::{NotifierConfig, RetryPolicy},
    service::Service,
    sink::{SinkConfig, SmtpSink},
};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: &str) -> String {
    common::config::env_string(name, default)
}

/// A confirmed booking with its tickets.
pub struct Booking {
    pub user: UserId,
    pub event: EventId,
    pub show: ShowId,
    pub booking: BookingId,
    pub tickets: Vec<TicketId>,
    pub codes: Vec<String>,
    pub seats: Vec<HeldSeat>,
    pub total_cents: i64,
}

impl Booking {
    /// The fact the booking-worker publishes when it confirms the booking.
    pub fn confirmed(&self) -> Envelope<BookingConfirmed> {
        Envelope::new(
            Some(self.show),
            BookingConfirmed {
                user_id: self.user,
                booking_id: self.booking,
                payment_id: PaymentId::new(),
                seats: self.seats.clone(),
                ticket_ids: self.tickets.clone(),
                total_cents: self.total_cents,
                currency: "EUR".into(),
            },
        )
    }
}

/// One test's world.
pub struct World {
    database: TestDatabase,
    pub topology: Topology,
    pub connection: lapin::Connection,
    pub publisher: Publisher,
    pub mail_dir: PathBuf,
    pub retry: RetryPolicy,
    pub admin: Option<SocketAddr>,
    shutdown: CancellationToken,
    notifier: Option<JoinHandle<()>>,
    sinks: Vec<(CancellationToken, JoinHandle<()>)>,
}

impl World {
    pub async fn new() -> Self {
        let database = TestDatabase::create().await;
        let topology = Topology::new(format!("test-{}.", uuid::Uuid::new_v4().simple()));
        let connection = mq::connect(&env("AMQP_URL", defaults::AMQP_URL), "notifier-test")
            .await
            .unwrap();
        let publisher = Publisher::new(&connection, Duration::from_secs(10)).await.unwrap();
        topology.declare(publisher.channel()).await.unwrap();
        let retry = RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(200),
            max: Duration::from_secs(2),
        };
        // Declared before the notifier runs, so a fact published before it subscribes is kept.
        notifier::topology::declare(publisher.channel(), &topology, &retry)
            .await
            .unwrap();
        let mail_dir = std::env::temp_dir().join(format!("notifier-test-{}", uuid::Uuid::new_v4().simple()));
        Self {
            database,
            topology,
            connection,
            publisher,
            mail_dir,
            retry,
            admin: None,
            shutdown: CancellationToken::new(),
            notifier: None,
            sinks: Vec::new(),
        }
    }

    pub fn db(&self) -> &PgPool {
        self.database.pool()
    }

    /// Starts the real SMTP sink on `listen` (port 0: any); returns its address.
    pub async fn start_sink(&mut self, listen: SocketAddr, reject_domain: Option<&str>) -> SocketAddr {
        let sink = SmtpSink::bind(SinkConfig {
            listen,
            dir: self.mail_dir.clone(),
            reject_domain: reject_domain.map(str::to_owned),
        })
        .await
        .unwrap();
        let addr = sink.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { sink.run_until_stopped(stop).await.unwrap() }
        });
        self.sinks.push((stop, task));
        addr
    }

    pub fn config(&self, smtp: SocketAddr) -> NotifierConfig {
        NotifierConfig {
            common: CommonConfig {
                database_url: self.database.url().to_owned(),
                database_max_connections: 5,
                redis_url: env("REDIS_URL", defaults::REDIS_URL),
                redis_key_prefix: String::new(),
                amqp_url: env("AMQP_URL", defaults::AMQP_URL),
                mq_prefix: self.topology.prefix().to_owned(),
                admin_listen: "127.0.0.1:0".parse().unwrap(),
                log_format: LogFormat::Text,
            },
            smtp_url: format!("smtp://{smtp}"),
            smtp_timeout: Duration::from_secs(5),
            mail_from: "Floodgate <tickets@floodgate.test>".into(),
            public_url: "http://tickets.test".into(),
            webhook_timeout: Duration::from_secs(5),
            prefetch: 8,
            retry: self.retry.clone(),
            lease: Duration::from_secs(30),
        }
    }

    /// Runs the notifier in-process, sending through `smtp`.
    pub async fn start_notifier(&mut self, smtp: SocketAddr) {
        common::telemetry::init("notifier-test", LogFormat::Text);
        let service = Service::build(self.config(smtp)).await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.admin = Some(admin.local_addr().unwrap());
        let shutdown = self.shutdown.clone();
        self.notifier = Some(tokio::spawn(async move {
            service.run_until_stopped(admin, shutdown).await.unwrap();
        }));
    }

    /// Seeds a fan, a show and a confirmed booking of `seats` seats with their tickets; the
    /// event posts webhooks to `webhook` (URL, secret) when given.
    pub async fn seed_booking(&self, email: &str, seats: usize, webhook: Option<(&str, &str)>) -> Booking {
        let db = self.db();
        let user = UserId::new();
        sqlx::query("INSERT INTO app_user (app_user_id, email, name, password_hash) VALUES ($1, $2, 'Ada Fan', 'x')")
            .bind(user)
            .bind(email)
            .execute(db)
            .await
            .unwrap();
        let (venue, section, event, show) = (
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7(),
            EventId::new(),
            ShowId::new(),
        );
        sqlx::query("INSERT INTO venue (venue_id, name, city, address, timezone, seat_count) VALUES ($1, 'Konserthus', 'Oslo', 'Street 1', 'Europe/Oslo', $2)")
            .bind(venue)
            .bind(seats as i32)
            .execute(db)
            .await
            .unwrap();
        sqlx::query("INSERT INTO section (section_id, venue_id, name, position) VALUES ($1, $2, 'Balcony', 0)")
            .bind(section)
            .bind(venue)
            .execute(db)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO event (event_id, title, category, city, webhook_url, webhook_secret)
             VALUES ($1, 'The Floodgates Live', 'music', 'Oslo', $2, $3)",
        )
        .bind(event)
        .bind(webhook.map(|(url, _)| url))
        .bind(webhook.map(|(_, secret)| secret))
        .execute(db)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO show (show_id, event_id, venue_id, starts_at, on_sale_at, status, currency, max_tickets_per_user,
                               hold_seconds, admit_per_second, max_active, prequeue_opens_at, capacity, sold_count)
             VALUES ($1, $2, $3, '2026-12-05 19:00:00+00', now() - interval '1 day', 'on_sale', 'EUR', 10, 120,
                     100, 1000, now() - interval '2 days', $4, $4)",
        )
        .bind(show)
        .bind(event)
        .bind(venue)
        .bind(seats as i32)
        .execute(db)
        .await
        .unwrap();
        let booking = BookingId::new();
        let price = 4500_i64;
        let total = price * seats as i64;
        let mut tx = db.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO booking (booking_id, show_id, app_user_id, status, command_id, expires_at, seat_count,
                                  subtotal_cents, total_cents, currency, confirmed_at)
             VALUES ($1, $2, $3, 'confirmed', $4, now() + interval '5 minutes', $5, $6, $6, 'EUR', now())",
        )
        .bind(booking)
        .bind(show)
        .bind(user)
        .bind(uuid::Uuid::now_v7())
        .bind(seats as i32)
        .bind(total)
        .execute(&mut *tx)
        .await
        .unwrap();
        let mut held = Vec::new();
        let mut tickets = Vec::new();
        let mut codes = Vec::new();
        for n in 0..seats {
            let seat = SeatId::new();
            sqlx::query(
                "INSERT INTO seat (seat_id, venue_id, section_id, seat_index, row_label, number, x, y, tier)
                 VALUES ($1, $2, $3, $4, 'C', $5, $4, 0, 'A')",
            )
            .bind(seat)
            .bind(venue)
            .bind(section)
            .bind(n as i32)
            .bind(n as i32 + 11)
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO show_seat (show_id, seat_id, seat_index, tier, status, booking_id)
                 VALUES ($1, $2, $3, 'A', 'sold', $4)",
            )
            .bind(show)
            .bind(seat)
            .bind(n as i32)
            .bind(booking)
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query("INSERT INTO booking_seat (booking_id, show_id, seat_id, price_cents) VALUES ($1, $2, $3, $4)")
                .bind(booking)
                .bind(show)
                .bind(seat)
                .bind(price as i32)
                .execute(&mut *tx)
                .await
                .unwrap();
            let ticket = TicketId::new();
            let code = format!("TKT{}", uuid::Uuid::new_v4().simple());
            sqlx::query(
                "INSERT INTO ticket (ticket_id, booking_id, show_id, seat_id, code, signature)
                 VALUES ($1, $2, $3, $4, $5, 'sig')",
            )
            .bind(ticket)
            .bind(booking)
            .bind(show)
            .bind(seat)
            .bind(&code)
            .execute(&mut *tx)
            .await
            .unwrap();
            held.push(HeldSeat {
                seat_id: seat,
                index: n as u32,
                tier: "A".into(),
                price_cents: price,
            });
            tickets.push(ticket);
            codes.push(code);
        }
        tx.commit().await.unwrap();
        Booking {
            user,
            event,
            show,
            booking,
            tickets,
            codes,
            seats: held,
            total_cents: total,
        }
    }

    /// Publishes a fact as the outbox relay does.
    pub async fn publish<T: Message>(&self, show: ShowId, envelope: &Envelope<T>) {
        self.publisher
            .publish(
                &self.topology.events_exchange(),
                &event_routing_key::<T>(show),
                envelope,
            )
            .await
            .unwrap();
    }

    /// The stored messages (`.eml` files), oldest first.
    pub fn mails(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.mail_dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|path| std::fs::read_to_string(path).unwrap())
            .collect()
    }

    /// Waits until at least `count` messages are stored.
    pub async fn wait_for_mails(&self, count: usize, within: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mails = self.mails();
            if mails.len() >= count {
                return mails;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {count} e-mails arrived in {within:?}",
                mails.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of a metric of the notifier's `/metrics` whose labels include `labels` (0 when
    /// absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let admin = self.admin.expect("the notifier runs");
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
            .filter(|line| {
                labels
                    .iter()
                    .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `metric` reaches `at_least`.
    pub async fn wait_for_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let value = self.metric(name, labels).await;
            if value >= at_least {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}{labels:?} is {value}, not {at_least}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `(channel, status, attempts)` of the booking's notifications.
    pub async fn notifications(&self, booking: BookingId) -> Vec<(String, String, i32)> {
        sqlx::query_as("SELECT channel, status, attempts FROM notification WHERE booking_id = $1 ORDER BY channel")
            .bind(booking)
            .fetch_all(self.db())
            .await
            .unwrap()
    }

    /// Waits until the booking's notification on `channel` has `status`.
    pub async fn wait_for_status(&self, booking: BookingId, channel: &str, status: &str, within: Duration) -> i32 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let rows = self.notifications(booking).await;
            if let Some((_, _, attempts)) = rows.iter().find(|(c, s, _)| c == channel && s == status) {
                return *attempts;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {channel} notification {status} after {within:?}: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Messages waiting in the dead-letter queue.
    pub async fn dead_lettered(&self) -> Vec<lapin::message::BasicGetMessage> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut messages = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.topology.dead_letter_queue().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            messages.push(message);
        }
        let _ = channel.close(200, "done".into()).await;
        messages
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(notifier) = self.notifier.take() {
            tokio::time::timeout(Duration::from_secs(30), notifier)
                .await
                .expect("the notifier drains within 30 s")
                .unwrap();
        }
        for (stop, task) in self.sinks.drain(..) {
            stop.cancel();
            task.await.unwrap();
        }
        let channel = self.connection.create_channel().await.unwrap();
        notifier::topology::delete(&channel, &self.topology, &self.retry)
            .await
            .unwrap();
        self.topology.delete(&channel, &[]).await.unwrap();
        let _ = self.connection.close(200, "done".into()).await;
        let _ = std::fs::remove_dir_all(&self.mail_dir);
    }
}

/// A local address where nothing listens (bound, then released).
pub fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}
