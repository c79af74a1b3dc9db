//! The database constraints that make a double sale, a double charge or a lost refund
//! impossible, each tried against a fresh, migrated PostgreSQL database.

use common::testing::TestDatabase;
use sqlx::PgPool;

/// A venue with two seats, an event, a show on it (capacity 2), a fan and two held bookings.
const FIXTURE: &str = r#"
INSERT INTO app_user (app_user_id, email, name, password_hash)
VALUES ('00000000-0000-7000-8000-000000000001', 'fan@example.com', 'Fan', '$argon2id$x');
INSERT INTO venue (venue_id, name, city, address, timezone, seat_count)
VALUES ('00000000-0000-7000-8000-000000000010', 'Hall', 'Utrecht', 'Street 1', 'Europe/Amsterdam', 2);
INSERT INTO section (section_id, venue_id, name, position)
VALUES ('00000000-0000-7000-8000-000000000011', '00000000-0000-7000-8000-000000000010', 'Floor', 0);
INSERT INTO seat (seat_id, venue_id, section_id, seat_index, row_label, number, x, y, tier) VALUES
 ('00000000-0000-7000-8000-000000000021', '00000000-0000-7000-8000-000000000010', '00000000-0000-7000-8000-000000000011', 0, 'A', 1, 0, 0, 'floor'),
 ('00000000-0000-7000-8000-000000000022', '00000000-0000-7000-8000-000000000010', '00000000-0000-7000-8000-000000000011', 1, 'A', 2, 1, 0, 'floor');
INSERT INTO event (event_id, title, category, city)
VALUES ('00000000-0000-7000-8000-000000000030', 'Gig', 'concert', 'Utrecht');
INSERT INTO show (show_id, event_id, venue_id, starts_at, on_sale_at, currency, max_tickets_per_user,
                  hold_seconds, admit_per_second, max_active, prequeue_opens_at, capacity)
VALUES ('00000000-0000-7000-8000-000000000040', '00000000-0000-7000-8000-000000000030',
        '00000000-0000-7000-8000-000000000010', now() + interval '30 days', now(), 'EUR', 6, 600, 10, 100, now(), 2);
INSERT INTO show_seat (show_id, seat_id, seat_index, tier)
SELECT '00000000-0000-7000-8000-000000000040', seat_id, seat_index, tier FROM seat;
INSERT INTO booking (booking_id, show_id, app_user_id, status, command_id, expires_at, seat_count,
                     subtotal_cents, total_cents, currency) VALUES
 ('00000000-0000-7000-8000-000000000051', '00000000-0000-7000-8000-000000000040', '00000000-0000-7000-8000-000000000001',
  'held', '00000000-0000-7000-8000-000000000061', now() + interval '10 minutes', 1, 5000, 5000, 'EUR'),
 ('00000000-0000-7000-8000-000000000052', '00000000-0000-7000-8000-000000000040', '00000000-0000-7000-8000-000000000001',
  'held', '00000000-0000-7000-8000-000000000062', now() + interval '10 minutes', 1, 5000, 5000, 'EUR');
"#;

const SHOW: &str = "00000000-0000-7000-8000-000000000040";
const SEAT: &str = "00000000-0000-7000-8000-000000000021";
const BOOKING_1: &str = "00000000-0000-7000-8000-000000000051";
const BOOKING_2: &str = "00000000-0000-7000-8000-000000000052";

async fn fixture() -> TestDatabase {
    let db = TestDatabase::create().await;
    sqlx::raw_sql(FIXTURE).execute(db.pool()).await.expect("fixture loads");
    db
}

async fn run(pool: &PgPool, sql: &str) -> Result<u64, String> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .map(|done| done.rows_affected())
        .map_err(|err| match err {
            sqlx::Error::Database(db) => db.constraint().unwrap_or("(no constraint)").to_owned(),
            other => other.to_string(),
        })
}

fn book(booking: &str) -> String {
    format!(
        "INSERT INTO booking_seat (booking_id, show_id, seat_id, price_cents) VALUES ('{booking}', '{SHOW}', '{SEAT}', 5000)"
    )
}

#[tokio::test]
async fn a_seat_cannot_be_in_two_live_bookings_but_can_be_rebooked_once_released() {
    let db = fixture().await;
    run(db.pool(), &book(BOOKING_1)).await.unwrap();
    assert_eq!(
        run(db.pool(), &book(BOOKING_2)).await,
        Err("booking_seat_one_live_booking".into())
    );

    run(
        db.pool(),
        &format!("UPDATE booking_seat SET released_at = now() WHERE booking_id = '{BOOKING_1}'"),
    )
    .await
    .unwrap();
    run(db.pool(), &book(BOOKING_2)).await.unwrap();
}

#[tokio::test]
async fn a_held_or_sold_seat_always_names_a_booking_of_its_own_show() {
    let db = fixture().await;
    let without_booking = format!("UPDATE show_seat SET status = 'sold' WHERE seat_id = '{SEAT}'");
    assert_eq!(
        run(db.pool(), &without_booking).await,
        Err("show_seat_booking_iff_taken".into())
    );

    let available_with_booking = format!("UPDATE show_seat SET booking_id = '{BOOKING_1}' WHERE seat_id = '{SEAT}'");
    assert_eq!(
        run(db.pool(), &available_with_booking).await,
        Err("show_seat_booking_iff_taken".into())
    );

    // A seat held for a booking that does not list it (checked at commit).
    let held = format!("UPDATE show_seat SET status = 'held', booking_id = '{BOOKING_1}' WHERE seat_id = '{SEAT}'");
    assert_eq!(run(db.pool(), &held).await, Err("show_seat_in_its_booking".into()));
    run(db.pool(), &book(BOOKING_1)).await.unwrap();
    assert_eq!(run(db.pool(), &held).await, Ok(1));
    let unknown_booking =
        format!("UPDATE show_seat SET booking_id = '00000000-0000-7000-8000-0000000000ff' WHERE seat_id = '{SEAT}'");
    assert_eq!(
        run(db.pool(), &unknown_booking).await,
        Err("show_seat_booking_same_show".into())
    );
}

#[tokio::test]
async fn a_show_never_sells_more_than_its_capacity() {
    let db = fixture().await;
    assert_eq!(
        run(
            db.pool(),
            &format!("UPDATE show SET sold_count = 2 WHERE show_id = '{SHOW}'")
        )
        .await,
        Ok(1)
    );
    assert_eq!(
        run(
            db.pool(),
            &format!("UPDATE show SET sold_count = 3 WHERE show_id = '{SHOW}'")
        )
        .await,
        Err("show_sold_within_capacity".into())
    );
}

#[tokio::test]
async fn a_seat_exists_once_per_show_and_a_command_creates_at_most_one_booking() {
    let db = fixture().await;
    let again =
        format!("INSERT INTO show_seat (show_id, seat_id, seat_index, tier) VALUES ('{SHOW}', '{SEAT}', 7, 'floor')");
    // show_seat is partitioned: the violated key is the primary key of the show's partition.
    let violated = run(db.pool(), &again).await.unwrap_err();
    assert!(
        violated.starts_with("show_seat_p") && violated.ends_with("_pkey"),
        "{violated}"
    );
    let same_command = format!(
        "INSERT INTO booking (booking_id, show_id, app_user_id, status, command_id, expires_at, seat_count,
                              subtotal_cents, total_cents, currency)
         VALUES ('00000000-0000-7000-8000-000000000053', '{SHOW}', '00000000-0000-7000-8000-000000000001', 'held',
                 '00000000-0000-7000-8000-000000000061', now(), 1, 1, 1, 'EUR')"
    );
    assert_eq!(
        run(db.pool(), &same_command).await,
        Err("booking_command_unique".into())
    );
}

fn payment(id: &str, key: &str, status: &str) -> String {
    format!(
        "INSERT INTO payment (payment_id, booking_id, amount_cents, currency, status, idempotency_key, card_token)
         VALUES ('{id}', '{BOOKING_1}', 5000, 'EUR', '{status}', '{key}', 'tok_visa')"
    )
}

#[tokio::test]
async fn a_booking_is_charged_at_most_once_and_never_refunded_beyond_its_charge() {
    let db = fixture().await;
    let pool = db.pool();
    run(
        pool,
        &payment("00000000-0000-7000-8000-000000000071", "key-1", "failed"),
    )
    .await
    .unwrap();
    // A failed attempt does not block a retry with a new key...
    run(
        pool,
        &payment("00000000-0000-7000-8000-000000000072", "key-2", "processing"),
    )
    .await
    .unwrap();
    // ...but a second live charge of the same booking is refused, as is a reused key.
    assert_eq!(
        run(
            pool,
            &payment("00000000-0000-7000-8000-000000000073", "key-3", "processing")
        )
        .await,
        Err("payment_one_live_charge_per_booking".into())
    );
    assert_eq!(
        run(
            pool,
            &payment("00000000-0000-7000-8000-000000000074", "key-2", "failed")
        )
        .await,
        Err("payment_idempotency_key_unique".into())
    );
    assert_eq!(
        run(
            pool,
            "UPDATE payment SET refunded_cents = 5001 WHERE idempotency_key = 'key-2'"
        )
        .await,
        Err("payment_refund_within_amount".into())
    );
}

#[tokio::test]
async fn gateway_events_promo_usage_and_tickets_cannot_be_duplicated() {
    let db = fixture().await;
    let pool = db.pool();
    let event = "INSERT INTO webhook_event (gateway_event_id, event_type, payload) VALUES ('evt_1', 'payment_intent.succeeded', '{}')";
    run(pool, event).await.unwrap();
    assert_eq!(run(pool, event).await, Err("webhook_event_pkey".into()));

    run(
        pool,
        "INSERT INTO promo_code (promo_code_id, code, percent_off, max_uses, used_count, valid_until)
               VALUES ('00000000-0000-7000-8000-000000000081', 'SPRING', 10, 1, 1, now() + interval '1 day')",
    )
    .await
    .unwrap();
    assert_eq!(
        run(pool, "UPDATE promo_code SET used_count = used_count + 1").await,
        Err("promo_code_usage_within_limit".into())
    );

    run(pool, &book(BOOKING_1)).await.unwrap();
    let ticket = |id: &str, code: &str| {
        format!(
            "INSERT INTO ticket (ticket_id, booking_id, show_id, seat_id, code, signature)
             VALUES ('{id}', '{BOOKING_1}', '{SHOW}', '{SEAT}', '{code}', 'sig')"
        )
    };
    run(pool, &ticket("00000000-0000-7000-8000-000000000091", "code-1"))
        .await
        .unwrap();
    assert_eq!(
        run(pool, &ticket("00000000-0000-7000-8000-000000000092", "code-2")).await,
        Err("ticket_one_valid_per_seat".into())
    );
}
