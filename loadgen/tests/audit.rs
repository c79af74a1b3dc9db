//! The flash-sale audit against real PostgreSQL and Redis: a small, consistent sale seeded straight
//! into a fresh database (plus a matching gateway ledger, mail directory and waiting room) passes
//! every check; each corruption a real bug could cause is then reported by the check that guards
//! against it, naming the rows.
//!
//! Needs `TEST_DATABASE_URL` (a role that may create databases) and Redis at `REDIS_URL`
//! (default redis://127.0.0.1:6379); each test uses its own database and Redis key prefix and
//! removes them.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use common::{
    ids::{ShowId, UserId},
    testing::TestDatabase,
};
use loadgen::audit::{
    self, Admitted, Ledger, LedgerCharge, LedgerMetadata, LedgerRefund, Report, RoomSources, Sources, name,
};
use redis::AsyncCommands as _;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;
use waiting_room::{
    keys::Keys,
    shuffle::{self, Seed},
};

/// Price of every seat, in cents.
const PRICE: i64 = 2500;
/// Seats of the venue.
const SEATS: usize = 10;

/// A settled sale of one show, seeded consistently everywhere the audit reads.
struct Sale {
    db: TestDatabase,
    show: ShowId,
    /// The venue's seats, by index.
    seats: Vec<Uuid>,
    /// Confirmed, seats 0 and 1, paid with `pi_paid`.
    paid: Uuid,
    /// Confirmed, seat 2, paid with `pi_single`.
    single: Uuid,
    /// Held, seats 3 and 4, not paid yet.
    held: Uuid,
    ledger: Ledger,
    mail_dir: PathBuf,
    /// Confirmation e-mail file of each confirmed booking.
    confirmation_mail: Vec<(Uuid, PathBuf)>,
    redis: redis::aio::MultiplexedConnection,
    redis_url: String,
    keys: Keys,
    prefix: String,
    /// Fans by queue number (index 0 = number 1).
    queue: Vec<UserId>,
    admissions: Vec<Admitted>,
}

impl Sale {
    async fn seed() -> Self {
        let db = TestDatabase::create().await;
        let show = ShowId::new();
        let seats: Vec<Uuid> = (0..SEATS).map(|_| Uuid::now_v7()).collect();
        let (paid, single, held, refunded) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut tx = db.pool().begin().await.expect("a transaction");
        seed_catalog(&mut tx, show, &seats).await;
        let fan = insert_user(&mut tx).await;
        insert_booking(&mut tx, show, fan, paid, "confirmed", &seats[0..2]).await;
        insert_booking(&mut tx, show, fan, single, "confirmed", &seats[2..3]).await;
        insert_booking(&mut tx, show, fan, held, "held", &seats[3..5]).await;
        insert_booking(&mut tx, show, fan, refunded, "refunded", &seats[5..6]).await;
        insert_payment(&mut tx, paid, "pi_paid", 2 * PRICE, "succeeded").await;
        insert_payment(&mut tx, single, "pi_single", PRICE, "succeeded").await;
        let refunded_payment = insert_payment(&mut tx, refunded, "pi_refunded", PRICE, "refunded").await;
        sqlx::query(
            "INSERT INTO refund (refund_id, payment_id, amount_cents, reason, status, idempotency_key, gateway_reference)
             VALUES ($1, $2, $3, 'booking_cancelled', 'succeeded', $4, 're_refunded')",
        )
        .bind(Uuid::now_v7())
        .bind(refunded_payment)
        .bind(PRICE)
        .bind(Uuid::now_v7().to_string())
        .execute(&mut *tx)
        .await
        .expect("a refund");
        sqlx::query("UPDATE show SET sold_count = 3 WHERE show_id = $1")
            .bind(show)
            .execute(&mut *tx)
            .await
            .expect("the sold count");
        // Notifications of every e-mail the sink holds (the audit maps Message-IDs through them).
        let mail_dir = std::env::temp_dir().join(format!("floodgate-audit-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&mail_dir).expect("a mail directory");
        let mut confirmation_mail = Vec::new();
        for booking in [paid, single, refunded] {
            let file = insert_email(&mut tx, &mail_dir, booking, "booking_confirmed").await;
            confirmation_mail.push((booking, file));
        }
        insert_email(&mut tx, &mail_dir, refunded, "booking_cancelled").await;
        insert_email(&mut tx, &mail_dir, refunded, "refund_succeeded").await;
        tx.commit().await.expect("a consistent sale commits");
        // Mail the audit must ignore: someone else's message, and a half-written file.
        write_mail(&mail_dir, Uuid::now_v7(), "Unrelated");
        std::fs::write(mail_dir.join(".1-half.eml.tmp"), "Message-ID: <x").expect("a temporary file");

        let charge = |intent: &str, amount, booking: Uuid, show: ShowId| LedgerCharge {
            payment_intent: intent.to_owned(),
            amount,
            metadata: LedgerMetadata {
                payment_id: Some(Uuid::now_v7().to_string()),
                booking_id: Some(booking.to_string()),
                show_id: Some(show.to_string()),
            },
        };
        let ledger = Ledger {
            charges: vec![
                charge("pi_paid", 2 * PRICE, paid, show),
                charge("pi_single", PRICE, single, show),
                charge("pi_refunded", PRICE, refunded, show),
                // Another show's sale on the same simulator.
                charge("pi_elsewhere", 999, Uuid::now_v7(), ShowId::new()),
            ],
            refunds: vec![LedgerRefund {
                id: "re_refunded".to_owned(),
                payment_intent: "pi_refunded".to_owned(),
                amount: PRICE,
                metadata: LedgerMetadata {
                    payment_id: Some(refunded_payment.to_string()),
                    ..LedgerMetadata::default()
                },
            }],
        };

        // The waiting room after its on-sale: six pre-queue fans numbered by the seed, two who
        // joined during the shuffle, one ordinary arrival; numbers 1-3 admitted.
        let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let mut redis = redis::Client::open(redis_url.as_str())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("Redis answers");
        let prefix = format!("audit-test-{}:", Uuid::new_v4().simple());
        let keys = Keys::new(&prefix, show);
        let seed = Seed::random();
        let prequeue: Vec<UserId> = (0..6).map(|_| UserId::new()).collect();
        let mut queue = shuffle::order(&seed, &prequeue);
        let mut late: Vec<UserId> = (0..2).map(|_| UserId::new()).collect();
        late.sort_by_key(ToString::to_string);
        queue.extend(late);
        queue.push(UserId::new());
        let _: () = redis
            .hset_multiple(
                &keys.cfg,
                &[
                    ("state", "open".to_owned()),
                    ("seed", seed.to_hex()),
                    ("seed_sha256", seed.commitment()),
                    ("prequeue_size", "6".to_owned()),
                    ("late_size", "2".to_owned()),
                ],
            )
            .await
            .expect("the room's state");
        let _: () = redis.set(&keys.seed, seed.to_hex()).await.expect("the seed");
        for (number, user) in (1_u64..).zip(&queue) {
            let _: () = if number <= 3 {
                log_admission(&mut redis, &keys, number, *user).await;
                redis.hset(&keys.admitted, user.to_string(), number).await
            } else {
                redis.zadd(&keys.queue, user.to_string(), number).await
            }
            .expect("a numbered fan");
        }
        let _: () = redis.set(&keys.serving, 3).await.expect("the serving number");
        let admissions = (0..3)
            .map(|i| Admitted {
                user: queue[i],
                number: i as u64 + 1,
            })
            .collect();

        Self {
            db,
            show,
            seats,
            paid,
            single,
            held,
            ledger,
            mail_dir,
            confirmation_mail,
            redis,
            redis_url,
            keys,
            prefix,
            queue,
            admissions,
        }
    }

    fn pool(&self) -> &PgPool {
        self.db.pool()
    }

    /// Audits the sale, then removes its Redis keys and mail directory (before the caller's
    /// assertions, so a failing test leaves nothing behind; the database drops itself).
    async fn audit(mut self) -> Report {
        let report = audit::run(&Sources {
            database_url: self.db.url().to_owned(),
            show: self.show,
            ledger: Some(self.ledger.clone()),
            mail_dir: Some(self.mail_dir.clone()),
            room: Some(RoomSources {
                redis_url: self.redis_url.clone(),
                key_prefix: self.prefix.clone(),
            }),
            admissions: self.admissions.clone(),
        })
        .await;
        let keys: Vec<String> = self.keys.all().iter().map(|key| (*key).to_owned()).collect();
        let _: Result<(), _> = self.redis.del(keys).await;
        let _ = std::fs::remove_dir_all(&self.mail_dir);
        report.expect("the audit reads every source")
    }
}

/// The check's violations, after making sure it ran.
fn violations<'a>(report: &'a Report, check: &str) -> &'a [String] {
    let found = report.check(check).expect("the report has every check");
    assert_eq!(found.skipped, None, "{check} was skipped");
    &found.violations
}

/// Asserts that `check` reports a violation mentioning every one of `rows`.
fn assert_reported(report: &Report, check: &str, rows: &[&str]) {
    let found = violations(report, check);
    assert!(
        found
            .iter()
            .any(|violation| rows.iter().all(|row| violation.contains(row))),
        "{check} should name {rows:?}; it reported {found:?}\n{}",
        report.to_markdown()
    );
    assert!(!report.passed());
}

async fn seed_catalog(tx: &mut Transaction<'_, Postgres>, show: ShowId, seats: &[Uuid]) {
    let (venue, section, event) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "INSERT INTO venue (venue_id, name, city, address, timezone, seat_count)
         VALUES ($1, 'Audit Hall', 'Ghent', 'Kouter 1', 'Europe/Brussels', $2)",
    )
    .bind(venue)
    .bind(seats.len() as i32)
    .execute(&mut **tx)
    .await
    .expect("a venue");
    sqlx::query("INSERT INTO section (section_id, venue_id, name, position) VALUES ($1, $2, 'Floor', 0)")
        .bind(section)
        .bind(venue)
        .execute(&mut **tx)
        .await
        .expect("a section");
    sqlx::query(
        "INSERT INTO seat (seat_id, venue_id, section_id, seat_index, row_label, number, x, y, tier)
         SELECT s.id, $1, $2, (s.i - 1)::int, 'A', s.i::int, s.i::real, 0, 'standard'
         FROM UNNEST($3::uuid[]) WITH ORDINALITY AS s (id, i)",
    )
    .bind(venue)
    .bind(section)
    .bind(seats)
    .execute(&mut **tx)
    .await
    .expect("seats");
    sqlx::query("INSERT INTO event (event_id, title, category, city) VALUES ($1, 'Audit Live', 'music', 'Ghent')")
        .bind(event)
        .execute(&mut **tx)
        .await
        .expect("an event");
    sqlx::query(
        "INSERT INTO show (show_id, event_id, venue_id, starts_at, on_sale_at, prequeue_opens_at, status, currency,
                           max_tickets_per_user, hold_seconds, admit_per_second, max_active, capacity)
         VALUES ($1, $2, $3, now() + interval '30 days', now() - interval '1 hour', now() - interval '2 hours',
                 'on_sale', 'EUR', 4, 600, 100, 1000, $4)",
    )
    .bind(show)
    .bind(event)
    .bind(venue)
    .bind(seats.len() as i32)
    .execute(&mut **tx)
    .await
    .expect("a show");
    sqlx::query(
        "INSERT INTO show_seat (show_id, seat_id, seat_index, tier)
         SELECT $1, seat_id, seat_index, tier FROM seat WHERE venue_id = $2",
    )
    .bind(show)
    .bind(venue)
    .execute(&mut **tx)
    .await
    .expect("the show's seat map");
}

async fn insert_user(tx: &mut Transaction<'_, Postgres>) -> Uuid {
    let user = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO app_user (app_user_id, email, name, password_hash)
         VALUES ($1, $2, 'Fan', '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA')",
    )
    .bind(user)
    .bind(format!("fan-{}@example.test", user.simple()))
    .execute(&mut **tx)
    .await
    .expect("a fan");
    user
}

/// A booking of `seats` in `status`, with everything the booking-worker writes alongside: its
/// seats (released once it ended), the seat map, and tickets (voided once cancelled).
async fn insert_booking(
    tx: &mut Transaction<'_, Postgres>,
    show: ShowId,
    user: Uuid,
    booking: Uuid,
    status: &str,
    seats: &[Uuid],
) {
    let total = PRICE * seats.len() as i64;
    let was_confirmed = matches!(status, "confirmed" | "cancelled" | "refunded");
    let ended = !matches!(status, "held" | "payment_pending" | "confirmed");
    sqlx::query(
        "INSERT INTO booking (booking_id, show_id, app_user_id, status, command_id, expires_at, seat_count,
                              subtotal_cents, total_cents, currency, confirmed_at, cancelled_at)
         VALUES ($1, $2, $3, $4, $5, now() + interval '10 minutes', $6, $7, $7, 'EUR',
                 CASE WHEN $8 THEN now() END, CASE WHEN $9 THEN now() END)",
    )
    .bind(booking)
    .bind(show)
    .bind(user)
    .bind(status)
    .bind(Uuid::now_v7())
    .bind(seats.len() as i32)
    .bind(total)
    .bind(was_confirmed)
    .bind(ended)
    .execute(&mut **tx)
    .await
    .expect("a booking");
    sqlx::query(
        "INSERT INTO booking_seat (booking_id, show_id, seat_id, price_cents, released_at)
         SELECT $1, $2, seat_id, $3, CASE WHEN $4 THEN now() END FROM UNNEST($5::uuid[]) AS s (seat_id)",
    )
    .bind(booking)
    .bind(show)
    .bind(PRICE as i32)
    .bind(ended)
    .bind(seats)
    .execute(&mut **tx)
    .await
    .expect("the booking's seats");
    if !ended {
        sqlx::query(
            "UPDATE show_seat SET status = $3, booking_id = $4, version = version + 1
             WHERE show_id = $1 AND seat_id = ANY($2)",
        )
        .bind(show)
        .bind(seats)
        .bind(if status == "confirmed" { "sold" } else { "held" })
        .bind(booking)
        .execute(&mut **tx)
        .await
        .expect("the seat map");
    }
    if was_confirmed {
        sqlx::query(
            "INSERT INTO ticket (ticket_id, booking_id, show_id, seat_id, code, signature, voided_at)
             SELECT gen_random_uuid(), $1, $2, seat_id, gen_random_uuid()::text, 'signed',
                    CASE WHEN $3 THEN now() END
             FROM UNNEST($4::uuid[]) AS s (seat_id)",
        )
        .bind(booking)
        .bind(show)
        .bind(ended)
        .bind(seats)
        .execute(&mut **tx)
        .await
        .expect("tickets");
    }
}

async fn insert_payment(
    tx: &mut Transaction<'_, Postgres>,
    booking: Uuid,
    intent: &str,
    amount: i64,
    status: &str,
) -> Uuid {
    let payment = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO payment (payment_id, booking_id, amount_cents, currency, status, idempotency_key, card_token,
                              gateway_reference, refunded_cents)
         VALUES ($1, $2, $3, 'EUR', $4, $5, 'tok_visa', $6, CASE WHEN $4 = 'refunded' THEN $3 ELSE 0 END)",
    )
    .bind(payment)
    .bind(booking)
    .bind(amount)
    .bind(status)
    .bind(payment.to_string())
    .bind(intent)
    .execute(&mut **tx)
    .await
    .expect("a payment");
    payment
}

/// Records a sent e-mail notification and writes the message the sink would have stored.
async fn insert_email(tx: &mut Transaction<'_, Postgres>, dir: &std::path::Path, booking: Uuid, kind: &str) -> PathBuf {
    let notification = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO notification (notification_id, dedupe_key, kind, channel, recipient, booking_id, subject,
                                   status, attempts, sent_at)
         VALUES ($1, $2, $3, 'email', 'fan@example.test', $4, $3, 'sent', 1, now())",
    )
    .bind(notification)
    .bind(format!("{}:{kind}:email", Uuid::now_v7()))
    .bind(kind)
    .bind(booking)
    .execute(&mut **tx)
    .await
    .expect("a notification");
    write_mail(dir, notification, kind)
}

/// An `.eml` file shaped like the SMTP sink's: envelope lines, then the message lettre built.
fn write_mail(dir: &std::path::Path, notification: Uuid, subject: &str) -> PathBuf {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let path = dir.join(format!("{stamp}-{}.eml", Uuid::now_v7().simple()));
    let message = format!(
        "Return-Path: <tickets@floodgate.test>\r\nDelivered-To: fan@example.test\r\n\
         From: Floodgate <tickets@floodgate.test>\r\nTo: Fan <fan@example.test>\r\nSubject: {subject}\r\n\
         Message-ID: <{notification}@floodgate>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
         Your booking is confirmed.\r\n--b--\r\n"
    );
    std::fs::write(&path, message).expect("an e-mail file");
    path
}

#[tokio::test]
async fn a_consistent_sale_passes_every_check() {
    let sale = Sale::seed().await;
    let report = sale.audit().await;
    assert!(report.passed(), "{}", report.to_markdown());
    for check in &report.checks {
        assert_eq!(check.skipped, None, "{} was skipped", check.name);
    }
    let checked = |check: &str| report.check(check).map(|c| c.checked);
    // Seats 0-4 are held or sold; both confirmed bookings have tickets and one e-mail each; the
    // ledger's three charges are this show's (the fourth is another show's); eight fans were
    // numbered by the shuffle and three admitted (three log entries, three admission tokens).
    assert_eq!(checked(name::ONE_LIVE_BOOKING_PER_SEAT), Some(5));
    assert_eq!(checked(name::SEAT_COUNTS), Some(SEATS as u64));
    assert_eq!(checked(name::CHARGES_MATCHED), Some(3));
    assert_eq!(checked(name::TICKETS_PER_SEAT), Some(2));
    assert_eq!(checked(name::ONE_CONFIRMATION_EMAIL), Some(2));
    assert_eq!(checked(name::PREQUEUE_ORDER), Some(8));
    assert_eq!(checked(name::ADMISSION_ORDER), Some(6));
}

#[tokio::test]
async fn a_seat_in_two_live_bookings_is_reported_with_both_bookings() {
    let sale = Sale::seed().await;
    // The bug: the unique index that stops a second live booking of a seat is gone (a migration
    // lost it) and the writer hands seat 0, sold to `paid`, to a new hold as well (the seat map
    // now names the new hold). Dropped in this test's own throwaway database only.
    sqlx::query("DROP INDEX booking_seat_one_live_booking")
        .execute(sale.pool())
        .await
        .expect("the index drops");
    let mut tx = sale.pool().begin().await.expect("a transaction");
    let fan = insert_user(&mut tx).await;
    let second = Uuid::now_v7();
    insert_booking(&mut tx, sale.show, fan, second, "held", &sale.seats[0..1]).await;
    tx.commit().await.expect("the double booking commits without the index");
    let (seat, paid) = (sale.seats[0].to_string(), sale.paid.to_string());
    let report = sale.audit().await;
    assert_reported(
        &report,
        name::ONE_LIVE_BOOKING_PER_SEAT,
        &[&seat, &paid, &second.to_string()],
    );
}

#[tokio::test]
async fn a_paid_booking_without_tickets_is_reported_by_the_money_and_ticket_checks() {
    let sale = Sale::seed().await;
    // The bug: a confirmation committed without its tickets (nothing references a ticket, so no
    // constraint objects).
    sqlx::query("DELETE FROM ticket WHERE booking_id = $1")
        .bind(sale.single)
        .execute(sale.pool())
        .await
        .expect("the tickets go");
    let single = sale.single.to_string();
    let seat = sale.seats[2].to_string();
    let report = sale.audit().await;
    assert_reported(
        &report,
        name::CHARGES_MATCHED,
        &["pi_single", &single, "no valid tickets"],
    );
    assert_reported(&report, name::TICKETS_PER_SEAT, &[&single, &seat]);
}

#[tokio::test]
async fn a_booking_charged_twice_is_reported_with_both_charges() {
    let mut sale = Sale::seed().await;
    // The bug: a retry charged the card again under a new idempotency key.
    let mut again = sale.ledger.charges[0].clone();
    again.payment_intent = "pi_paid_again".to_owned();
    sale.ledger.charges.push(again);
    let paid = sale.paid.to_string();
    let report = sale.audit().await;
    assert_reported(&report, name::NO_DOUBLE_CHARGE, &[&paid, "pi_paid", "pi_paid_again"]);
}

#[tokio::test]
async fn a_confirmed_booking_without_its_email_is_reported() {
    let sale = Sale::seed().await;
    // The bug: the notifier recorded the e-mail but it never reached the sink.
    let (booking, file) = &sale.confirmation_mail[1];
    assert_eq!(*booking, sale.single);
    std::fs::remove_file(file).expect("the e-mail goes");
    let single = sale.single.to_string();
    let report = sale.audit().await;
    assert_reported(
        &report,
        name::ONE_CONFIRMATION_EMAIL,
        &[&single, "no booking-confirmed e-mail"],
    );
}

#[tokio::test]
async fn a_prequeue_numbered_against_the_revealed_seed_is_reported() {
    let mut sale = Sale::seed().await;
    // The bug: numbers 4 and 5 swapped, as if the open script had numbered another order.
    let (fourth, fifth) = (sale.queue[3].to_string(), sale.queue[4].to_string());
    let _: () = sale
        .redis
        .zadd_multiple(&sale.keys.queue, &[(5, fourth.as_str()), (4, fifth.as_str())])
        .await
        .expect("the numbers swap");
    let report = sale.audit().await;
    assert_reported(&report, name::PREQUEUE_ORDER, &["pre-queue number 4", &fifth, &fourth]);
    assert_reported(&report, name::PREQUEUE_ORDER, &["pre-queue number 5", &fourth, &fifth]);
}

/// Appends an admission to the room's log, as the admitter's script does.
async fn log_admission(redis: &mut redis::aio::MultiplexedConnection, keys: &Keys, number: u64, user: UserId) {
    let _: String = redis::cmd("XADD")
        .arg(&keys.admission_log)
        .arg("*")
        .arg(&[
            ("n", number.to_string()),
            ("u", user.to_string()),
            ("o", "a".to_owned()),
        ])
        .query_async(redis)
        .await
        .expect("an admission logged");
}

#[tokio::test]
async fn a_fan_admitted_out_of_turn_is_reported() {
    let mut sale = Sale::seed().await;
    // The bug: fan 5 got an admission token the admitter never gave it.
    let early = sale.queue[4];
    sale.admissions.push(Admitted { user: early, number: 5 });
    let report = sale.audit().await;
    assert_reported(
        &report,
        name::ADMISSION_ORDER,
        &[&early.to_string(), "number 5", "admission log does not record"],
    );
}

#[tokio::test]
async fn an_admission_log_out_of_queue_order_is_reported() {
    let mut sale = Sale::seed().await;
    // The bug: fan 5 was let in, then fan 4, who was ahead of it.
    let (fourth, fifth) = (sale.queue[3], sale.queue[4]);
    let (mut redis, keys) = (sale.redis.clone(), sale.keys.clone());
    log_admission(&mut redis, &keys, 5, fifth).await;
    log_admission(&mut redis, &keys, 4, fourth).await;
    sale.admissions.push(Admitted { user: fifth, number: 5 });
    sale.admissions.push(Admitted {
        user: fourth,
        number: 4,
    });
    let report = sale.audit().await;
    assert_reported(
        &report,
        name::ADMISSION_ORDER,
        &["number 4", &fourth.to_string(), "after number 5", &fifth.to_string()],
    );
}

#[tokio::test]
async fn a_booking_that_expired_without_releasing_its_seats_is_reported() {
    let sale = Sale::seed().await;
    // The bug: the expiry sweep changed the status but left the seats held for the booking.
    sqlx::query("UPDATE booking SET status = 'expired' WHERE booking_id = $1")
        .bind(sale.held)
        .execute(sale.pool())
        .await
        .expect("the booking expires");
    let (held, seat) = (sale.held.to_string(), sale.seats[3].to_string());
    let report = sale.audit().await;
    assert_reported(
        &report,
        name::SEAT_MAP_MATCHES_BOOKINGS,
        &[&held, &seat, "is expired but still holds seat"],
    );
}

#[tokio::test]
async fn a_sold_count_that_disagrees_with_the_seat_map_is_reported() {
    let sale = Sale::seed().await;
    // The bug: a batch sold a seat without counting it.
    sqlx::query("UPDATE show SET sold_count = 2 WHERE show_id = $1")
        .bind(sale.show)
        .execute(sale.pool())
        .await
        .expect("the count changes");
    let show = sale.show.to_string();
    let report = sale.audit().await;
    assert_reported(
        &report,
        name::SEAT_COUNTS,
        &[&show, "show.sold_count is 2, but 3 seats are sold"],
    );
}
