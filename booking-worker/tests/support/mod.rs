//! Shared by the booking-worker's integration tests: a fresh database, a queue prefix and a key
//! prefix per test; shows and fans seeded straight into PostgreSQL; commands published the way
//! ingress publishes them (with confirms, on the `shows` exchange); checks of the invariants.

#![allow(dead_code)] // each test binary uses part of it

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use booking_worker::{
    service::{Service, ServiceConfig},
    worker::WorkerConfig,
};
use common::{
    availability,
    config::{CommonConfig, LogFormat},
    contracts::{Envelope, HoldSeats, SeatSelection},
    ids::{BookingId, CommandId, SeatId, ShowId, UserId},
    mq::{self, Publisher, Topology},
    testing::TestDatabase,
};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: &str) -> String {
    common::config::env_string(name, default)
}

/// A show of `rows` × `per_row` seats (tier A in the first half of the rows, B after), on sale.
pub struct TestShow {
    pub show: ShowId,
    pub seats: Vec<SeatId>,
}

pub async fn seed_show(db: &PgPool, rows: u32, per_row: u32, max_per_user: i32, hold_seconds: i32) -> TestShow {
    let venue = uuid::Uuid::now_v7();
    let section = uuid::Uuid::now_v7();
    let event = uuid::Uuid::now_v7();
    let show = ShowId::new();
    let n = rows * per_row;
    sqlx::query("INSERT INTO venue (venue_id, name, city, address, timezone, seat_count) VALUES ($1, 'Hall', 'Oslo', 'Street 1', 'Europe/Oslo', $2)")
        .bind(venue)
        .bind(n as i32)
        .execute(db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO section (section_id, venue_id, name, position) VALUES ($1, $2, 'Floor', 0)")
        .bind(section)
        .bind(venue)
        .execute(db)
        .await
        .unwrap();
    let seats: Vec<SeatId> = (0..n).map(|_| SeatId::new()).collect();
    let indices: Vec<i32> = (0..n as i32).collect();
    let row_labels: Vec<String> = (0..n).map(|i| format!("R{}", i / per_row + 1)).collect();
    let numbers: Vec<i32> = (0..n).map(|i| (i % per_row) as i32 + 1).collect();
    let xs: Vec<f32> = (0..n).map(|i| (i % per_row) as f32).collect();
    let ys: Vec<f32> = (0..n).map(|i| (i / per_row) as f32).collect();
    let tiers: Vec<&str> = (0..n)
        .map(|i| if i / per_row < rows.div_ceil(2) { "A" } else { "B" })
        .collect();
    sqlx::query(
        "INSERT INTO seat (seat_id, venue_id, section_id, seat_index, row_label, number, x, y, tier)
         SELECT s, $1, $2, i, r, n, x, y, t
         FROM UNNEST($3::uuid[], $4::int[], $5::text[], $6::int[], $7::real[], $8::real[], $9::text[])
              AS u (s, i, r, n, x, y, t)",
    )
    .bind(venue)
    .bind(section)
    .bind(&seats)
    .bind(&indices)
    .bind(&row_labels)
    .bind(&numbers)
    .bind(&xs)
    .bind(&ys)
    .bind(&tiers)
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
         VALUES ($1, $2, $3, now() + interval '30 days', now() - interval '1 minute', 'on_sale', 'EUR', $4, $5,
                 100, 1000, now() - interval '2 minutes', $6)",
    )
    .bind(show)
    .bind(event)
    .bind(venue)
    .bind(max_per_user)
    .bind(hold_seconds)
    .bind(n as i32)
    .execute(db)
    .await
    .unwrap();
    sqlx::query("INSERT INTO show_price (show_id, tier, price_cents) VALUES ($1, 'A', 5000), ($1, 'B', 3000)")
        .bind(show)
        .execute(db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO show_seat (show_id, seat_id, seat_index, tier)
         SELECT $1, seat_id, seat_index, tier FROM seat WHERE venue_id = $2",
    )
    .bind(show)
    .bind(venue)
    .execute(db)
    .await
    .unwrap();
    TestShow { show, seats }
}

pub async fn seed_users(db: &PgPool, count: usize) -> Vec<UserId> {
    let users: Vec<UserId> = (0..count).map(|_| UserId::new()).collect();
    let emails: Vec<String> = users.iter().map(|user| format!("{user}@example.test")).collect();
    sqlx::query(
        "INSERT INTO app_user (app_user_id, email, name, password_hash)
         SELECT u, e, 'Fan', 'not-a-hash' FROM UNNEST($1::uuid[], $2::text[]) AS x (u, e)",
    )
    .bind(&users)
    .bind(&emails)
    .execute(db)
    .await
    .unwrap();
    users
}

/// One test's world: database, prefixes, a publisher, a controllable clock and the worker.
pub struct Harness {
    /// The per-test database on the shared server (`None` when the test brings its own).
    pub database: Option<TestDatabase>,
    database_url: String,
    pool: PgPool,
    pub topology: Topology,
    pub redis_prefix: String,
    pub publisher: Publisher,
    pub connection: lapin::Connection,
    pub clock: Arc<AtomicI64>,
    pub shutdown: CancellationToken,
    pub worker: Option<tokio::task::JoinHandle<()>>,
    pub shows: Vec<ShowId>,
}

impl Harness {
    pub async fn new() -> Self {
        let database = TestDatabase::create().await;
        let url = database.url().to_owned();
        let pool = database.pool().clone();
        Self::with(Some(database), url, pool).await
    }

    /// A harness on a database the test provides, already migrated (a private PostgreSQL
    /// cluster the test can restart, say).
    pub async fn on_database(url: &str) -> Self {
        let pool = common::db::pool(url, 10).unwrap();
        Self::with(None, url.to_owned(), pool).await
    }

    async fn with(database: Option<TestDatabase>, database_url: String, pool: PgPool) -> Self {
        let topology = Topology::new(format!("test-{}.", uuid::Uuid::new_v4().simple()));
        let connection = mq::connect(&env("AMQP_URL", common::config::defaults::AMQP_URL), "booking-test")
            .await
            .unwrap();
        let publisher = Publisher::new(&connection, Duration::from_secs(10)).await.unwrap();
        topology.declare(publisher.channel()).await.unwrap();
        Self {
            database,
            database_url,
            pool,
            topology,
            redis_prefix: format!("test-{}:", uuid::Uuid::new_v4().simple()),
            publisher,
            connection,
            clock: Arc::new(AtomicI64::new(OffsetDateTime::now_utc().unix_timestamp())),
            shutdown: CancellationToken::new(),
            worker: None,
            shows: Vec::new(),
        }
    }

    pub fn config(&self) -> ServiceConfig {
        ServiceConfig {
            common: CommonConfig {
                database_url: self.database_url.clone(),
                database_max_connections: 8,
                redis_url: env("REDIS_URL", common::config::defaults::REDIS_URL),
                redis_key_prefix: self.redis_prefix.clone(),
                amqp_url: env("AMQP_URL", common::config::defaults::AMQP_URL),
                mq_prefix: self.topology.prefix().to_owned(),
                admin_listen: "127.0.0.1:0".parse().unwrap(),
                log_format: LogFormat::Text,
            },
            worker: WorkerConfig {
                batch_max: 64,
                batch_wait: Duration::from_millis(5),
                retry_min: Duration::from_millis(50),
                ..WorkerConfig::default()
            },
            discovery_interval: Duration::from_millis(200),
            relay_interval: Duration::from_millis(200),
            relay_age: Duration::from_millis(500),
        }
    }

    pub fn db(&self) -> &PgPool {
        &self.pool
    }

    /// The environment of a `booking-worker` child process serving this harness's world: its
    /// database, prefixes, fast discovery and relay, JSON logs (tests read them).
    pub fn worker_env(&self, amqp_url: &str) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.database_url.clone()),
            ("REDIS_URL", env("REDIS_URL", common::config::defaults::REDIS_URL)),
            ("REDIS_KEY_PREFIX", self.redis_prefix.clone()),
            ("AMQP_URL", amqp_url.to_owned()),
            ("MQ_PREFIX", self.topology.prefix().to_owned()),
            ("ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
            ("BOOKING_DISCOVERY_MS", "100".to_owned()),
            ("BOOKING_RELAY_SWEEP_MS", "200".to_owned()),
            ("BOOKING_RELAY_AGE_MS", "500".to_owned()),
            ("BOOKING_BATCH_MAX", "32".to_owned()),
            ("RUST_LOG", "info,sqlx=warn,lapin=warn".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
        ]
    }

    /// How many of `commands` have a stored result (`None` while the database is unreachable).
    pub async fn count_results(&self, commands: &[CommandId]) -> Option<i64> {
        sqlx::query_scalar("SELECT count(*) FROM hold_request WHERE hold_request_id = ANY($1)")
            .bind(commands)
            .fetch_one(self.db())
            .await
            .ok()
    }

    /// The show's fencing epoch (`None` while the database is unreachable).
    pub async fn writer_epoch(&self, show: ShowId) -> Option<i64> {
        sqlx::query_scalar("SELECT writer_epoch FROM show WHERE show_id = $1")
            .bind(show)
            .fetch_one(self.db())
            .await
            .ok()
    }

    /// Stamps every `hold_request` row, as it is inserted, with the epoch of the batch writing
    /// it (the high half of the `inventory_version` that batch's fence just set on the show row)
    /// and with the show's current `writer_epoch`, plus an insertion sequence. Test databases
    /// only: it proves which writer wrote which result.
    pub async fn stamp_results_with_writer_epochs(&self) {
        sqlx::raw_sql(
            "ALTER TABLE hold_request ADD COLUMN test_seq bigserial, ADD COLUMN test_batch_epoch bigint,
                                     ADD COLUMN test_current_epoch bigint;
             CREATE FUNCTION test_stamp_writer_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 SELECT inventory_version >> 32, writer_epoch INTO NEW.test_batch_epoch, NEW.test_current_epoch
                 FROM show WHERE show_id = NEW.show_id;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER test_stamp_writer_epoch BEFORE INSERT ON hold_request
                 FOR EACH ROW EXECUTE FUNCTION test_stamp_writer_epoch();",
        )
        .execute(self.db())
        .await
        .unwrap();
    }

    /// With [`Self::stamp_results_with_writer_epochs`]: every result was written by the show's
    /// writer of the moment (no zombie commit) and, in insertion order, no result of an older
    /// writer follows one of a newer writer. Returns how many results each epoch wrote.
    pub async fn assert_results_written_by_the_current_writer(&self, show: ShowId) -> Vec<(i64, i64)> {
        let stale: Vec<(CommandId, i64, i64)> = sqlx::query_as(
            "SELECT hold_request_id, test_batch_epoch, test_current_epoch FROM hold_request
             WHERE show_id = $1 AND test_batch_epoch IS DISTINCT FROM test_current_epoch",
        )
        .bind(show)
        .fetch_all(self.db())
        .await
        .unwrap();
        assert!(
            stale.is_empty(),
            "results written by a writer that was no longer current: {stale:?}"
        );
        let backwards: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT test_batch_epoch < max(test_batch_epoch) OVER (ORDER BY test_seq) AS back
                                   FROM hold_request WHERE show_id = $1) d
             WHERE back",
        )
        .bind(show)
        .fetch_one(self.db())
        .await
        .unwrap();
        assert_eq!(backwards, 0, "an older writer wrote results after a newer one");
        sqlx::query_as(
            "SELECT test_batch_epoch, count(*) FROM hold_request WHERE show_id = $1
             GROUP BY test_batch_epoch ORDER BY test_batch_epoch",
        )
        .bind(show)
        .fetch_all(self.db())
        .await
        .unwrap()
    }

    /// Messages waiting in the dead-letter queue.
    pub async fn dead_lettered(&self) -> u32 {
        let channel = self.connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(
                self.topology.dead_letter_queue().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "done".into()).await;
        queue.message_count()
    }

    /// Nothing was dead-lettered: every accepted command was applied, none given up on.
    pub async fn assert_nothing_dead_lettered(&self) {
        assert_eq!(self.dead_lettered().await, 0, "commands were dead-lettered");
    }

    /// No command made two bookings, and each held result names the booking of its command.
    pub async fn assert_one_booking_per_command(&self, show: ShowId) {
        let twice: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT command_id FROM booking WHERE show_id = $1
             GROUP BY command_id HAVING count(*) > 1) d",
        )
        .bind(show)
        .fetch_one(self.db())
        .await
        .unwrap();
        assert_eq!(twice, 0, "a command made two bookings");
        let strays: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM booking b
             FULL JOIN hold_request h ON h.booking_id = b.booking_id
             WHERE coalesce(b.show_id, h.show_id) = $1
               AND (h.hold_request_id IS NULL OR b.booking_id IS NULL AND h.status = 'held'
                    OR h.hold_request_id <> b.command_id)",
        )
        .bind(show)
        .fetch_one(self.db())
        .await
        .unwrap();
        assert_eq!(
            strays, 0,
            "a booking without its hold result, or a result naming another command's booking"
        );
    }

    pub async fn show(&mut self, rows: u32, per_row: u32, max_per_user: i32) -> TestShow {
        let show = seed_show(self.db(), rows, per_row, max_per_user, 120).await;
        self.topology
            .declare_show_queue(self.publisher.channel(), show.show)
            .await
            .unwrap();
        self.shows.push(show.show);
        show
    }

    pub async fn start_worker(&mut self) {
        let clock = Arc::clone(&self.clock);
        let service = Service::build(self.config())
            .await
            .unwrap()
            .with_clock(Arc::new(move || {
                OffsetDateTime::from_unix_timestamp(clock.load(Ordering::SeqCst)).unwrap()
            }));
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = self.shutdown.clone();
        self.worker = Some(tokio::spawn(async move {
            service.run_until_stopped(admin, shutdown).await.unwrap();
        }));
    }

    /// Stops the worker and waits until it has drained.
    async fn stop_worker(&mut self) {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            tokio::time::timeout(Duration::from_secs(30), worker)
                .await
                .expect("the worker drains within 30 s")
                .unwrap();
        }
    }

    /// Stops the worker (it drains) and starts a new one, which loads the show from the store.
    pub async fn restart_worker(&mut self) {
        self.stop_worker().await;
        self.shutdown = CancellationToken::new();
        self.start_worker().await;
    }

    pub fn advance(&self, seconds: i64) {
        self.clock.fetch_add(seconds, Ordering::SeqCst);
    }

    pub async fn publish<T: common::contracts::Message>(&self, show: ShowId, payload: T) {
        let envelope = Envelope::new(Some(show), payload);
        self.publisher
            .publish(&self.topology.shows_exchange(), &show.to_string(), &envelope)
            .await
            .unwrap();
    }

    pub async fn hold(&self, show: ShowId, user: UserId, selection: SeatSelection) -> CommandId {
        let command = CommandId::new();
        self.publish(
            show,
            HoldSeats {
                command_id: command,
                user_id: user,
                selection,
                promo_code: None,
            },
        )
        .await;
        command
    }

    /// Waits until every command has a stored result; returns `command -> (booking, code)`.
    pub async fn results(&self, commands: &[CommandId]) -> HashMap<CommandId, (Option<BookingId>, Option<String>)> {
        for _ in 0..300 {
            let rows: Vec<(CommandId, Option<BookingId>, Option<String>)> = sqlx::query_as(
                "SELECT hold_request_id, booking_id, code FROM hold_request WHERE hold_request_id = ANY($1)",
            )
            .bind(commands)
            .fetch_all(self.db())
            .await
            .unwrap();
            if rows.len() == commands.len() {
                return rows.into_iter().map(|(c, b, code)| (c, (b, code))).collect();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not every hold request got a result in 30 s");
    }

    /// The Redis snapshot says what PostgreSQL says, seat by seat and in the counts.
    pub async fn assert_snapshot_matches_database(&self, show: ShowId) {
        let mut redis = waiting_room::room::connect(&env("REDIS_URL", common::config::defaults::REDIS_URL))
            .await
            .unwrap();
        let keys = availability::Keys::new(&self.redis_prefix, show);
        let mut last = String::new();
        for _ in 0..50 {
            let snapshot = availability::read(&mut redis, &keys).await.unwrap();
            let rows: Vec<(i32, String)> =
                sqlx::query_as("SELECT seat_index, status FROM show_seat WHERE show_id = $1 ORDER BY seat_index")
                    .bind(show)
                    .fetch_all(self.db())
                    .await
                    .unwrap();
            // The show row's sold count is kept by the writer in the same transaction.
            let sold_count: i32 = sqlx::query_scalar("SELECT sold_count FROM show WHERE show_id = $1")
                .bind(show)
                .fetch_one(self.db())
                .await
                .unwrap();
            if let Some(snapshot) = snapshot {
                let statuses: Vec<u8> = rows.iter().map(|(_, s)| availability::status_byte(s)).collect();
                let mut bitmap = vec![0_u8; rows.len().div_ceil(8)];
                for (index, status) in &rows {
                    if status == "available" {
                        bitmap[*index as usize / 8] |= 0x80 >> (*index as usize % 8);
                    }
                }
                let count = |name: &str| rows.iter().filter(|(_, s)| s == name).count() as u32;
                if snapshot.statuses == statuses
                    && snapshot.bitmap == bitmap
                    && snapshot.counts.available == count("available")
                    && snapshot.counts.held == count("held")
                    && snapshot.counts.sold == count("sold")
                    && sold_count as u32 == count("sold")
                {
                    return;
                }
                last = format!(
                    "snapshot {:?} vs database {:?} (show.sold_count {sold_count})",
                    snapshot.counts,
                    (count("available"), count("held"))
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the Redis snapshot does not match PostgreSQL: {last}");
    }

    /// No seat in two live bookings; show_seat and booking_seat tell the same story.
    pub async fn assert_no_double_booking(&self, show: ShowId) {
        let doubles: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT seat_id FROM booking_seat bs JOIN booking b USING (booking_id)
             WHERE bs.show_id = $1 AND bs.released_at IS NULL AND b.status IN ('held', 'payment_pending', 'confirmed')
             GROUP BY seat_id HAVING count(*) > 1) d",
        )
        .bind(show)
        .fetch_one(self.db())
        .await
        .unwrap();
        assert_eq!(doubles, 0, "a seat is in two live bookings");
        let mismatched: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM show_seat ss
             LEFT JOIN booking_seat bs ON bs.show_id = ss.show_id AND bs.seat_id = ss.seat_id AND bs.released_at IS NULL
             WHERE ss.show_id = $1 AND ((ss.status IN ('held', 'sold')) <> (bs.booking_id IS NOT NULL)
                                        OR (ss.status IN ('held', 'sold') AND ss.booking_id <> bs.booking_id))",
        )
        .bind(show)
        .fetch_one(self.db())
        .await
        .unwrap();
        assert_eq!(mismatched, 0, "show_seat and booking_seat disagree");
    }

    pub async fn stop(mut self) {
        self.stop_worker().await;
        let channel = self.connection.create_channel().await.unwrap();
        self.topology.delete(&channel, &self.shows).await.unwrap();
        let mut redis = waiting_room::room::connect(&env("REDIS_URL", common::config::defaults::REDIS_URL))
            .await
            .unwrap();
        for show in &self.shows {
            availability::delete(&mut redis, &availability::Keys::new(&self.redis_prefix, *show))
                .await
                .unwrap();
        }
        let _ = self.connection.close(200, "done".into()).await;
    }
}

pub fn seats(seats: &[SeatId]) -> SeatSelection {
    SeatSelection::Seats {
        seat_ids: seats.to_vec(),
    }
}
