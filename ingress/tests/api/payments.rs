//! Payments, gateway webhooks, tickets and check-in, promo codes, cancellations, the waitlist,
//! and the booking facts fans hear live. Bookings, payments and tickets are seeded straight into
//! the test's database where the booking-worker would write them, so each route's own checks are
//! tested without depending on the writer; commands the routes publish are read back from the
//! test's own queues.

use std::time::Duration;

use common::{
    contracts::{self, BookingConfirmed, Envelope, HeldSeat},
    ids::{BookingId, CommandId, PaymentId, SeatId, ShowId, TicketId, UserId},
    mq::Topology,
    tickets::TicketSigner,
};
use futures::StreamExt as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use ingress::domain::Role;
use lapin::{options::BasicConsumeOptions, types::FieldTable};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{
    helpers::{TestApp, assert_problem},
    holds::Sale,
};

/// The webhook secret of these tests' apps.
const WEBHOOK_SECRET: &str = "test-gateway-webhook-secret";

/// An ingress (no booking-worker) with an organizer's show of `rows` × `per_row` seats.
struct Shop {
    app: TestApp,
    organizer: String,
    show: ShowId,
    seats: Vec<SeatId>,
}

impl Shop {
    async fn open(rows: usize, per_row: usize) -> Self {
        let app = TestApp::spawn_with(|config| {
            config.gateway_webhook_secret = common::config::Secret::new(WEBHOOK_SECRET);
        })
        .await;
        let organizer = app.organizer_token().await;
        let venue = app.small_venue(&organizer, rows, per_row).await;
        let event = app.event(&organizer, "Payments").await;
        let show = app.show(&organizer, &event, &venue).await;
        let show: ShowId = show["show_id"].as_str().unwrap().parse().unwrap();
        let seats = sqlx::query_scalar("SELECT seat_id FROM show_seat WHERE show_id = $1 ORDER BY seat_index")
            .bind(show)
            .fetch_all(app.db.pool())
            .await
            .unwrap();
        app.wait_until_ready().await;
        Self {
            app,
            organizer,
            show,
            seats,
        }
    }

    /// A new customer and an access token.
    async fn fan(&self) -> (UserId, String) {
        let user = UserId::new();
        sqlx::query("INSERT INTO app_user (app_user_id, email, name, password_hash) VALUES ($1, $2, 'Fan', 'x')")
            .bind(user)
            .bind(format!("{user}@example.test"))
            .execute(self.app.db.pool())
            .await
            .unwrap();
        (user, self.app.state.tokens.issue(user, Role::Customer).unwrap())
    }

    /// A booking of `seats` at 5000 each, as the writer would have stored it.
    async fn booking(&self, user: UserId, status: &str, expires_in_seconds: f64, seats: &[SeatId]) -> BookingId {
        let booking = BookingId::new();
        let total = 5000 * i64::try_from(seats.len()).unwrap();
        sqlx::query(
            "INSERT INTO booking (booking_id, show_id, app_user_id, status, command_id, expires_at, seat_count,
                                  subtotal_cents, total_cents, currency, confirmed_at)
             VALUES ($1, $2, $3, $4::text, $5, now() + make_interval(secs => $6), $7, $8, $8, 'EUR',
                     CASE WHEN $4::text IN ('confirmed', 'cancelled', 'refunded') THEN now() END)",
        )
        .bind(booking)
        .bind(self.show)
        .bind(user)
        .bind(status)
        .bind(CommandId::new())
        .bind(expires_in_seconds)
        .bind(i32::try_from(seats.len()).unwrap())
        .bind(total)
        .execute(self.app.db.pool())
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO booking_seat (booking_id, show_id, seat_id, price_cents)
             SELECT $1, $2, seat, 5000 FROM UNNEST($3::uuid[]) AS seat",
        )
        .bind(booking)
        .bind(self.show)
        .bind(seats)
        .execute(self.app.db.pool())
        .await
        .unwrap();
        booking
    }

    /// A ticket for `seat` of `booking`, signed by `signer`.
    async fn ticket(&self, booking: BookingId, seat: SeatId, signer: &TicketSigner) -> (TicketId, String) {
        let ticket = TicketId::new();
        let issued = signer.issue(self.show, seat);
        sqlx::query(
            "INSERT INTO ticket (ticket_id, booking_id, show_id, seat_id, code, signature) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(ticket)
        .bind(booking)
        .bind(self.show)
        .bind(seat)
        .bind(&issued.code)
        .bind(&issued.signature)
        .execute(self.app.db.pool())
        .await
        .unwrap();
        (ticket, issued.code)
    }

    /// Takes every message waiting in `queue` (the test's own queues), as JSON: consumes until
    /// the queue stays quiet for a moment (show queues are single-active-consumer quorum queues,
    /// which do not support `basic.get`).
    async fn drain(&self, queue: String) -> Vec<Value> {
        let url = common::config::env_string("AMQP_URL", common::config::defaults::AMQP_URL);
        let connection = common::mq::connect(&url, "payments-test").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut messages = Vec::new();
        while let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_millis(700), consumer.next()).await {
            messages.push(serde_json::from_slice(&delivery.unwrap().data).unwrap());
        }
        let _ = connection.close(200, "done".into()).await;
        messages
    }

    fn topology(&self) -> Topology {
        Topology::new(self.app.mq_prefix())
    }

    async fn pay(&self, token: &str, booking: BookingId, key: Option<&str>, body: Value) -> reqwest::Response {
        let mut request = self
            .app
            .request(Method::POST, &format!("/api/v1/bookings/{booking}/payments"))
            .bearer_auth(token)
            .json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.unwrap()
    }

    async fn webhook(&self, body: &[u8], signature: Option<String>) -> reqwest::Response {
        let mut request = self
            .app
            .request(Method::POST, "/api/v1/payments/webhook")
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("gateway-signature", signature);
        }
        request.send().await.unwrap()
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(self.app.db.pool()).await.unwrap()
    }
}

/// The gateway's `Gateway-Signature` for `body` at `timestamp`.
fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let digest: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("t={timestamp},v1={digest}")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn card() -> Value {
    json!({"payment_method": "card", "card_token": "tok_visa"})
}

#[tokio::test]
async fn a_forged_or_stale_webhook_is_refused_and_a_replayed_one_is_queued_once() {
    let shop = Shop::open(1, 2).await;
    let event = json!({"id": "evt_test_1", "object": "event", "type": "payment_intent.succeeded", "created": now(),
                       "data": {"object": {"id": "pi_1", "object": "payment_intent", "status": "succeeded"}}});
    let body = serde_json::to_vec(&event).unwrap();

    for signature in [
        None,
        Some("garbage".to_owned()),
        Some(sign("not the secret", now(), &body)),
        Some(sign(WEBHOOK_SECRET, now(), b"another body")),
    ] {
        let response = shop.webhook(&body, signature).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_signature").await;
    }
    for skew in [-301, 301] {
        let response = shop
            .webhook(&body, Some(sign(WEBHOOK_SECRET, now() + skew, &body)))
            .await;
        assert_problem(response, StatusCode::BAD_REQUEST, "stale_signature").await;
    }
    let not_an_event = br#"{"hello": "world"}"#;
    let response = shop
        .webhook(not_an_event, Some(sign(WEBHOOK_SECRET, now(), not_an_event)))
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_event").await;
    assert_eq!(shop.count("SELECT count(*) FROM webhook_event").await, 0);

    // Genuine, then replayed twice (a fresh signature each time, as a gateway retry sends).
    let mut answers = Vec::new();
    for _ in 0..3 {
        let response = shop.webhook(&body, Some(sign(WEBHOOK_SECRET, now(), &body))).await;
        assert_eq!(response.status(), StatusCode::OK);
        answers.push(response.json::<Value>().await.unwrap());
    }
    assert_eq!(answers[0], json!({"received": true, "duplicate": false}));
    assert_eq!(answers[1], json!({"received": true, "duplicate": true}));
    assert_eq!(answers[2], answers[1]);
    assert_eq!(shop.count("SELECT count(*) FROM webhook_event").await, 1);
    let stored: (String, Value) = sqlx::query_as("SELECT event_type, payload FROM webhook_event")
        .fetch_one(shop.app.db.pool())
        .await
        .unwrap();
    assert_eq!(stored, ("payment_intent.succeeded".to_owned(), event.clone()));

    let queued = shop.drain(shop.topology().payments_queue()).await;
    assert_eq!(queued.len(), 1, "exactly one publish: {queued:?}");
    let body = serde_json::to_vec(&queued[0]).unwrap();
    let contracts::PaymentsMessage::GatewayEvent(envelope) = contracts::PaymentsMessage::decode(&body).unwrap() else {
        panic!("not a gateway event: {}", queued[0]);
    };
    assert_eq!(envelope.payload.event_id, "evt_test_1");
    assert_eq!(envelope.payload.event_type, "payment_intent.succeeded");
    assert_eq!(envelope.payload.object, event["data"]["object"]);
}

#[tokio::test]
async fn a_webhook_the_broker_does_not_take_is_a_503_and_the_retry_is_not_a_replay() {
    let shop = Shop::open(1, 2).await;
    let url = common::config::env_string("AMQP_URL", common::config::defaults::AMQP_URL);
    let connection = common::mq::connect(&url, "payments-test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    // Without the payments queue the broker returns the event instead of confirming it.
    channel
        .queue_delete(
            shop.topology().payments_queue().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let body = br#"{"id": "evt_test_2", "type": "charge.refunded", "data": {"object": {"id": "re_1"}}}"#;
    let response = shop.webhook(body, Some(sign(WEBHOOK_SECRET, now(), body))).await;
    assert_eq!(response.headers()["retry-after"], "2");
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable").await;
    assert_eq!(
        shop.count("SELECT count(*) FROM webhook_event").await,
        0,
        "the record was rolled back"
    );

    shop.topology().declare(&channel).await.unwrap();
    let response = shop.webhook(body, Some(sign(WEBHOOK_SECRET, now(), body))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"received": true, "duplicate": false})
    );
    assert_eq!(shop.drain(shop.topology().payments_queue()).await.len(), 1);
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn promo_codes_are_validated_and_unique_per_show() {
    let shop = Shop::open(1, 2).await;
    let path = "/api/v1/admin/promo-codes";
    let valid_until = "2031-01-01T00:00:00Z";
    let created = shop
        .app
        .create(
            path,
            &shop.organizer,
            json!({"code": "spring-25", "show_id": shop.show, "percent_off": 25, "max_uses": 100, "valid_until": valid_until}),
        )
        .await;
    assert_eq!(created["code"], "SPRING-25");
    assert_eq!(created["show_id"], shop.show.to_string());
    assert_eq!(created["percent_off"], 25);
    assert_eq!(created["amount_off_cents"], Value::Null);
    assert_eq!(created["used_count"], 0);
    assert_eq!(created["valid_until"], valid_until);

    // The same code in another case, for the same show.
    let duplicate = shop
        .app
        .send(
            Method::POST,
            path,
            Some(&shop.organizer),
            Some(
                json!({"code": "Spring-25", "show_id": shop.show, "amount_off_cents": 500, "max_uses": 1,
                        "valid_until": valid_until}),
            ),
        )
        .await;
    assert_problem(duplicate, StatusCode::CONFLICT, "promo_code_exists").await;

    let before = shop.app.row_counts().await;
    for (body, status, code) in [
        (
            json!({"code": "BOTH", "show_id": shop.show, "percent_off": 10, "amount_off_cents": 100, "max_uses": 1, "valid_until": valid_until}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_discount",
        ),
        (
            json!({"code": "NEITHER", "show_id": shop.show, "max_uses": 1, "valid_until": valid_until}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_discount",
        ),
        (
            json!({"code": "TOOMUCH", "show_id": shop.show, "percent_off": 101, "max_uses": 1, "valid_until": valid_until}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_discount",
        ),
        (
            json!({"code": "NEGATIVE", "show_id": shop.show, "amount_off_cents": -1, "max_uses": 1, "valid_until": valid_until}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_discount",
        ),
        (
            json!({"code": "NOUSES", "show_id": shop.show, "percent_off": 10, "max_uses": 0, "valid_until": valid_until}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_max_uses",
        ),
        (
            json!({"code": "PAST", "show_id": shop.show, "percent_off": 10, "max_uses": 1, "valid_until": "2020-01-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_valid_until",
        ),
        (
            json!({"code": "no spaces", "show_id": shop.show, "percent_off": 10, "max_uses": 1, "valid_until": valid_until}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_code",
        ),
        (
            json!({"code": "EXTRA", "show_id": shop.show, "percent_off": 10, "max_uses": 1, "valid_until": valid_until, "x": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"code": "NOSHOW", "show_id": ShowId::new(), "percent_off": 10, "max_uses": 1, "valid_until": valid_until}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        // A code for every show is an admin's call.
        (
            json!({"code": "GLOBAL", "percent_off": 10, "max_uses": 1, "valid_until": valid_until}),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ] {
        let response = shop
            .app
            .send(Method::POST, path, Some(&shop.organizer), Some(body.clone()))
            .await;
        assert_problem(response, status, code).await;
    }
    // Another organizer's show does not exist for them; customers may not create codes.
    let other = shop.app.organizer_token().await;
    let body =
        json!({"code": "THEIRS", "show_id": shop.show, "percent_off": 10, "max_uses": 1, "valid_until": valid_until});
    let response = shop
        .app
        .send(Method::POST, path, Some(&other), Some(body.clone()))
        .await;
    assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    let (_, fan) = shop.fan().await;
    let before_fan = shop.app.row_counts().await;
    let response = shop.app.send(Method::POST, path, Some(&fan), Some(body)).await;
    assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(shop.app.row_counts().await, before_fan);
    assert_eq!(
        before.iter().find(|(table, _)| table == "promo_code").unwrap().1,
        1,
        "refused codes were not stored"
    );

    // An admin may create a code for every show; the same code per show stays possible.
    let admin = shop.app.admin_token().await;
    let global = shop
        .app
        .create(
            path,
            &admin,
            json!({"code": "SPRING-25", "amount_off_cents": 500, "max_uses": 5, "valid_until": valid_until}),
        )
        .await;
    assert_eq!(global["show_id"], Value::Null);
    assert_eq!(global["amount_off_cents"], 500);
    let again = shop
        .app
        .send(
            Method::POST,
            path,
            Some(&admin),
            Some(json!({"code": "spring-25", "percent_off": 5, "max_uses": 5, "valid_until": valid_until})),
        )
        .await;
    assert_problem(again, StatusCode::CONFLICT, "promo_code_exists").await;
}

#[tokio::test]
async fn a_ticket_checks_in_once_and_forged_or_tampered_codes_admit_nobody() {
    let shop = Shop::open(1, 6).await;
    let (fan, _) = shop.fan().await;
    let booking = shop.booking(fan, "confirmed", -60.0, &shop.seats[..5]).await;
    let signer = shop.app.state.ticket_signer.clone();
    let (valid, code) = shop.ticket(booking, shop.seats[0], &signer).await;
    let (_, tampered) = shop
        .ticket(
            booking,
            shop.seats[1],
            &TicketSigner::new("not the server's ticket key!!!!!"),
        )
        .await;
    let (voided, void_code) = shop.ticket(booking, shop.seats[2], &signer).await;
    sqlx::query("UPDATE ticket SET voided_at = now() WHERE ticket_id = $1")
        .bind(voided)
        .execute(shop.app.db.pool())
        .await
        .unwrap();
    let (raced, raced_code) = shop.ticket(booking, shop.seats[3], &signer).await;
    // A row whose code was altered after signing (the signature covers the code).
    let (_, original) = shop.ticket(booking, shop.seats[4], &signer).await;
    let altered = format!("{}x", &original[..original.len() - 1]);
    sqlx::query("UPDATE ticket SET code = $1 WHERE code = $2")
        .bind(&altered)
        .bind(&original)
        .execute(shop.app.db.pool())
        .await
        .unwrap();

    let scan = |code: String, token: String| {
        let app = &shop.app;
        async move {
            app.send(
                Method::POST,
                "/api/v1/checkin",
                Some(&token),
                Some(json!({"code": code})),
            )
            .await
        }
    };
    let organizer = shop.organizer.clone();
    for forged in ["no-such-code".to_owned(), tampered, altered, original, String::new()] {
        assert_problem(
            scan(forged, organizer.clone()).await,
            StatusCode::NOT_FOUND,
            "ticket_not_found",
        )
        .await;
    }
    let (_, customer) = shop.fan().await;
    assert_problem(scan(code.clone(), customer).await, StatusCode::FORBIDDEN, "forbidden").await;
    let stranger = shop.app.organizer_token().await;
    assert_problem(
        scan(code.clone(), stranger).await,
        StatusCode::NOT_FOUND,
        "ticket_not_found",
    )
    .await;

    let first = scan(code.clone(), organizer.clone()).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["ticket_id"], valid.to_string());
    assert_eq!(first["show_id"], shop.show.to_string());
    assert_eq!(
        first["seat"],
        json!({"seat_id": shop.seats[0], "section": "Floor", "row": "R0", "number": 1})
    );
    let again = assert_problem(
        scan(code.clone(), organizer.clone()).await,
        StatusCode::CONFLICT,
        "already_checked_in",
    )
    .await;
    assert_eq!(again["checked_in_at"], first["checked_in_at"], "the first scan's time");
    assert_problem(
        scan(void_code, organizer.clone()).await,
        StatusCode::CONFLICT,
        "ticket_void",
    )
    .await;

    // Two doors scan the same ticket at once: one admits.
    let (a, b) = tokio::join!(
        scan(raced_code.clone(), organizer.clone()),
        scan(raced_code, organizer.clone())
    );
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT]);
    let checked_in: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket WHERE checked_in_at IS NOT NULL")
        .fetch_one(shop.app.db.pool())
        .await
        .unwrap();
    assert_eq!(checked_in, 2);
    let by: Option<UserId> = sqlx::query_scalar("SELECT checked_in_by FROM ticket WHERE ticket_id = $1")
        .bind(raced)
        .fetch_one(shop.app.db.pool())
        .await
        .unwrap();
    assert!(by.is_some(), "the scanning organizer is recorded");
}

#[tokio::test]
async fn a_fan_lists_the_tickets_of_a_confirmed_booking_and_gets_their_qr_images() {
    let shop = Shop::open(1, 4).await;
    let (fan, token) = shop.fan().await;
    let (_, other) = shop.fan().await;
    let booking = shop.booking(fan, "confirmed", -60.0, &shop.seats[1..3]).await;
    let signer = shop.app.state.ticket_signer.clone();
    let (first, first_code) = shop.ticket(booking, shop.seats[1], &signer).await;
    let (second, _) = shop.ticket(booking, shop.seats[2], &signer).await;
    sqlx::query("UPDATE ticket SET voided_at = now() WHERE ticket_id = $1")
        .bind(second)
        .execute(shop.app.db.pool())
        .await
        .unwrap();

    let path = format!("/api/v1/bookings/{booking}/tickets");
    let listed = shop.app.send(Method::GET, &path, Some(&token), None).await;
    assert_eq!(listed.status(), StatusCode::OK);
    let listed: Value = listed.json().await.unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["ticket_id"], first.to_string());
    assert_eq!(listed[0]["code"], first_code);
    assert_eq!(listed[0]["status"], "valid");
    assert_eq!(
        listed[0]["seat"],
        json!({"seat_id": shop.seats[1], "section": "Floor", "row": "R0", "number": 2})
    );
    assert_eq!(listed[1]["status"], "void", "a voided ticket is flagged");
    let foreign = shop.app.send(Method::GET, &path, Some(&other), None).await;
    assert_problem(foreign, StatusCode::NOT_FOUND, "not_found").await;

    let qr = shop
        .app
        .send(
            Method::GET,
            &format!("/api/v1/tickets/{first}/qr.svg"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(qr.status(), StatusCode::OK);
    assert_eq!(qr.headers()["content-type"], "image/svg+xml");
    assert_eq!(qr.headers()["cache-control"], "private, no-store");
    let svg = qr.text().await.unwrap();
    assert!(svg.contains("<svg"), "{svg}");
    assert_eq!(
        svg,
        ingress::routes::tickets::qr_svg(&first_code).unwrap(),
        "the image encodes the ticket's code"
    );
    for (ticket, token) in [(first, &other), (second, &token), (TicketId::new(), &token)] {
        let response = shop
            .app
            .send(
                Method::GET,
                &format!("/api/v1/tickets/{ticket}/qr.svg"),
                Some(token),
                None,
            )
            .await;
        assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    }
}

#[tokio::test]
async fn paying_is_checked_against_the_booking_before_anything_is_queued() {
    let shop = Shop::open(1, 6).await;
    let (fan, token) = shop.fan().await;
    let (_, other) = shop.fan().await;
    let expired = shop.booking(fan, "held", -1.0, &shop.seats[0..1]).await;
    let lapsed = shop.booking(fan, "expired", -60.0, &shop.seats[1..2]).await;
    let pending = shop.booking(fan, "payment_pending", 300.0, &shop.seats[2..3]).await;
    let paid = shop.booking(fan, "confirmed", -60.0, &shop.seats[3..4]).await;
    let held = shop.booking(fan, "held", 300.0, &shop.seats[4..5]).await;
    let before = shop.app.row_counts().await;

    for (booking, status, code) in [
        (expired, StatusCode::CONFLICT, "hold_expired"),
        (lapsed, StatusCode::CONFLICT, "hold_expired"),
        (pending, StatusCode::CONFLICT, "payment_in_progress"),
        (paid, StatusCode::CONFLICT, "already_paid"),
        (BookingId::new(), StatusCode::NOT_FOUND, "not_found"),
    ] {
        let response = shop.pay(&token, booking, Some(&format!("key-{booking}")), card()).await;
        assert_problem(response, status, code).await;
    }
    // Someone else's booking does not exist for this fan.
    let response = shop.pay(&other, held, Some("k"), card()).await;
    assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    // Shape: the key is required, unknown fields and methods are refused.
    let response = shop.pay(&token, held, None, card()).await;
    assert_problem(response, StatusCode::BAD_REQUEST, "idempotency_key_required").await;
    for body in [
        json!({"payment_method": "card", "card_token": "tok_visa", "cvc": "123"}),
        json!({"payment_method": "cash", "card_token": "tok_visa"}),
        json!({"payment_method": "card"}),
    ] {
        let response = shop.pay(&token, held, Some("k2"), body).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    }
    let response = shop
        .pay(
            &token,
            held,
            Some("k3"),
            json!({"payment_method": "card", "card_token": " "}),
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_card_token").await;

    assert_eq!(shop.app.row_counts().await, before, "nothing was written");
    assert!(
        shop.drain(shop.topology().show_queue(shop.show)).await.is_empty(),
        "nothing was queued"
    );
}

#[tokio::test]
async fn the_same_idempotency_key_is_the_same_payment_and_its_status_follows_the_writer() {
    let shop = Shop::open(1, 4).await;
    let (fan, token) = shop.fan().await;
    let (_, other) = shop.fan().await;
    let booking = shop.booking(fan, "held", 300.0, &shop.seats[0..2]).await;

    let first = shop.pay(&token, booking, Some("pay-1"), card()).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "processing");
    let again = shop.pay(&token, booking, Some("pay-1"), card()).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let other_card = shop
        .pay(
            &token,
            booking,
            Some("pay-1"),
            json!({"payment_method": "card", "card_token": "tok_chargeDeclined"}),
        )
        .await;
    assert_problem(other_card, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused").await;
    let payment: PaymentId = first["payment_id"].as_str().unwrap().parse().unwrap();

    // What reached the show's queue: StartPayment for this payment, the same command each time.
    let queued = shop.drain(shop.topology().show_queue(shop.show)).await;
    assert!(!queued.is_empty());
    let mut commands = Vec::new();
    for message in &queued {
        let body = serde_json::to_vec(message).unwrap();
        let contracts::ShowCommand::StartPayment(envelope) = contracts::ShowCommand::decode(&body).unwrap() else {
            panic!("not StartPayment: {message}");
        };
        assert_eq!(envelope.show_id, Some(shop.show));
        assert_eq!(envelope.payload.payment_id, payment);
        assert_eq!(envelope.payload.booking_id, booking);
        assert_eq!(envelope.payload.user_id, fan);
        assert_eq!(envelope.payload.card_token, "tok_visa");
        commands.push(envelope.payload.command_id);
    }
    commands.dedup();
    assert_eq!(commands.len(), 1, "a repeat is the same command");
    let command = commands[0];

    // Before the writer has answered: processing, for its owner only.
    let path = format!("/api/v1/payments/{payment}");
    let status: Value = shop
        .app
        .send(Method::GET, &path, Some(&token), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        status,
        json!({"payment_id": payment, "booking_id": booking, "status": "processing", "amount_cents": 10_000,
               "currency": "EUR", "refunded_cents": 0})
    );
    let foreign = shop.app.send(Method::GET, &path, Some(&other), None).await;
    assert_problem(foreign, StatusCode::NOT_FOUND, "not_found").await;
    let unknown = shop
        .app
        .send(
            Method::GET,
            &format!("/api/v1/payments/{}", PaymentId::new()),
            Some(&token),
            None,
        )
        .await;
    assert_problem(unknown, StatusCode::NOT_FOUND, "not_found").await;

    // The writer refused it (as it records a refusal): failed, with its code.
    sqlx::query(
        "INSERT INTO processed_command (command_id, show_id, command_type, result)
         VALUES ($1, $2, 'StartPayment', '{\"code\": \"hold_expired\"}')",
    )
    .bind(command)
    .bind(shop.show)
    .execute(shop.app.db.pool())
    .await
    .unwrap();
    let status: Value = shop
        .app
        .send(Method::GET, &path, Some(&token), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "failed");
    assert_eq!(status["failure_code"], "hold_expired");
    // A repeat of an answered request is answered again, without a new command.
    let repeat = shop.pay(&token, booking, Some("pay-1"), card()).await;
    assert_eq!(repeat.status(), StatusCode::ACCEPTED);
    assert_eq!(repeat.json::<Value>().await.unwrap(), first);
    assert!(shop.drain(shop.topology().show_queue(shop.show)).await.is_empty());

    // Once the payment row exists, it is the answer, and the booking shows it.
    sqlx::query(
        "INSERT INTO payment (payment_id, booking_id, amount_cents, currency, status, idempotency_key, card_token)
         VALUES ($1, $2, 10000, 'EUR', 'succeeded', $3, 'tok_visa')",
    )
    .bind(payment)
    .bind(booking)
    .bind(payment.to_string())
    .execute(shop.app.db.pool())
    .await
    .unwrap();
    let status: Value = shop
        .app
        .send(Method::GET, &path, Some(&token), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "succeeded");
    assert!(status.get("failure_code").is_none(), "{status}");
    let details: Value = shop
        .app
        .send(Method::GET, &format!("/api/v1/bookings/{booking}"), Some(&token), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(details["payment"], status);
}

#[tokio::test]
async fn only_a_confirmed_booking_can_be_cancelled_and_only_before_the_cut_off() {
    let shop = Shop::open(1, 4).await;
    let (fan, token) = shop.fan().await;
    let (_, other) = shop.fan().await;
    let held = shop.booking(fan, "held", 300.0, &shop.seats[0..1]).await;
    let confirmed = shop.booking(fan, "confirmed", -60.0, &shop.seats[1..2]).await;
    let cancel = |booking: BookingId, token: String, key: Option<&'static str>| {
        let app = &shop.app;
        async move {
            let mut request = app
                .request(Method::POST, &format!("/api/v1/bookings/{booking}/cancel"))
                .bearer_auth(token);
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            request.send().await.unwrap()
        }
    };

    assert_problem(
        cancel(held, token.clone(), None).await,
        StatusCode::CONFLICT,
        "not_cancellable",
    )
    .await;
    assert_problem(
        cancel(confirmed, other.clone(), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(shop.drain(shop.topology().show_queue(shop.show)).await.is_empty());

    let accepted = cancel(confirmed, token.clone(), Some("cancel-1")).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let accepted: Value = accepted.json().await.unwrap();
    let queued = shop.drain(shop.topology().show_queue(shop.show)).await;
    assert_eq!(queued.len(), 1);
    let body = serde_json::to_vec(&queued[0]).unwrap();
    let contracts::ShowCommand::CancelBooking(envelope) = contracts::ShowCommand::decode(&body).unwrap() else {
        panic!("not CancelBooking: {}", queued[0]);
    };
    assert_eq!(envelope.payload.booking_id, confirmed);
    assert_eq!(envelope.payload.user_id, fan);
    assert_eq!(accepted["request_id"], envelope.payload.command_id.to_string());
    // The writer cancelled it; the same key again gets the same answer.
    sqlx::query("UPDATE booking SET status = 'cancelled', cancelled_at = now() WHERE booking_id = $1")
        .bind(confirmed)
        .execute(shop.app.db.pool())
        .await
        .unwrap();
    let repeat = cancel(confirmed, token.clone(), Some("cancel-1")).await;
    assert_eq!(repeat.status(), StatusCode::ACCEPTED);
    assert_eq!(repeat.json::<Value>().await.unwrap(), accepted);
    assert_problem(
        cancel(confirmed, token.clone(), None).await,
        StatusCode::CONFLICT,
        "not_cancellable",
    )
    .await;

    // Past the cut-off (the show starts within its 24-hour cancellation window).
    let late = shop.booking(fan, "confirmed", -60.0, &shop.seats[2..3]).await;
    sqlx::query(
        "UPDATE show SET prequeue_opens_at = now() - interval '2 days', on_sale_at = now() - interval '1 day',
                         starts_at = now() + interval '1 hour' WHERE show_id = $1",
    )
    .bind(shop.show)
    .execute(shop.app.db.pool())
    .await
    .unwrap();
    assert_problem(cancel(late, token, None).await, StatusCode::CONFLICT, "not_cancellable").await;
    assert!(shop.drain(shop.topology().show_queue(shop.show)).await.is_empty());
}

#[tokio::test]
async fn the_waitlist_takes_fans_only_when_the_show_is_sold_out() {
    let shop = Shop::open(1, 3).await;
    let (fan, token) = shop.fan().await;
    let path = format!("/api/v1/shows/{}/waitlist", shop.show);
    let join = |quantity: Value| {
        let (app, path, token) = (&shop.app, path.clone(), token.clone());
        async move {
            app.send(Method::POST, &path, Some(&token), Some(json!({"quantity": quantity})))
                .await
        }
    };
    assert_problem(join(json!(2)).await, StatusCode::CONFLICT, "not_sold_out").await;
    assert_problem(join(json!(0)).await, StatusCode::BAD_REQUEST, "invalid_quantity").await;
    assert_problem(join(json!(7)).await, StatusCode::CONFLICT, "limit_exceeded").await;
    let unknown = shop
        .app
        .send(
            Method::POST,
            &format!("/api/v1/shows/{}/waitlist", ShowId::new()),
            Some(&token),
            Some(json!({"quantity": 1})),
        )
        .await;
    assert_problem(unknown, StatusCode::NOT_FOUND, "not_found").await;
    assert!(shop.drain(shop.topology().show_queue(shop.show)).await.is_empty());

    // Nothing left on sale (no snapshot yet: PostgreSQL decides).
    sqlx::query("UPDATE show_seat SET status = 'blocked' WHERE show_id = $1")
        .bind(shop.show)
        .execute(shop.app.db.pool())
        .await
        .unwrap();
    let joined = join(json!(2)).await;
    assert_eq!(joined.status(), StatusCode::CREATED);
    let joined: Value = joined.json().await.unwrap();
    assert_eq!(joined["status"], "waiting");
    assert_eq!(joined["quantity"], 2);
    let queued = shop.drain(shop.topology().show_queue(shop.show)).await;
    assert_eq!(queued.len(), 1);
    let body = serde_json::to_vec(&queued[0]).unwrap();
    let contracts::ShowCommand::JoinWaitlist(envelope) = contracts::ShowCommand::decode(&body).unwrap() else {
        panic!("not JoinWaitlist: {}", queued[0]);
    };
    assert_eq!(envelope.payload.user_id, fan);
    assert_eq!(envelope.payload.quantity, 2);
    assert_eq!(
        joined["waitlist_entry_id"],
        envelope.payload.waitlist_entry_id.to_string()
    );
}

#[tokio::test]
async fn booking_payment_and_refund_facts_reach_the_fans_sockets_on_this_instance() {
    let shop = Shop::open(1, 2).await;
    let (fan, _) = shop.fan().await;
    let mut socket = shop.app.state.holds.results.subscribe(fan);
    let booking = BookingId::new();
    let payment = PaymentId::new();
    let ticket = TicketId::new();
    let confirmed = Envelope::new(
        Some(shop.show),
        BookingConfirmed {
            user_id: fan,
            booking_id: booking,
            payment_id: payment,
            seats: vec![HeldSeat {
                seat_id: shop.seats[0],
                index: 0,
                tier: "floor".to_owned(),
                price_cents: 5000,
            }],
            ticket_ids: vec![ticket],
            total_cents: 5000,
            currency: "EUR".to_owned(),
        },
    );
    let url = common::config::env_string("AMQP_URL", common::config::defaults::AMQP_URL);
    let connection = common::mq::connect(&url, "payments-test").await.unwrap();
    let publisher = common::mq::Publisher::new(&connection, Duration::from_secs(5))
        .await
        .unwrap();
    let body = serde_json::to_vec(&confirmed).unwrap();
    publisher
        .broadcast_raw(
            &shop.topology().events_exchange(),
            &contracts::event_routing_key::<BookingConfirmed>(shop.show),
            &confirmed.message_id.to_string(),
            &confirmed.kind,
            &body,
        )
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), socket.messages.recv())
        .await
        .expect("the fact arrives within 10 s")
        .unwrap();
    assert_eq!(message["type"], "booking");
    assert_eq!(message["event"], "booking.confirmed");
    assert_eq!(message["booking_id"], booking.to_string());
    assert_eq!(message["status"], "confirmed");
    assert_eq!(message["payment"]["payment_id"], payment.to_string());
    assert_eq!(message["ticket_ids"], json!([ticket]));
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn an_event_can_have_an_organizer_webhook_whose_secret_is_shown_once() {
    let app = TestApp::spawn().await;
    let organizer = app.organizer_token().await;
    let created = app
        .create(
            "/api/v1/admin/events",
            &organizer,
            json!({"title": "Hooked", "category": "concert", "city": "Utrecht",
                   "webhook_url": "https://organizer.example/hooks/floodgate"}),
        )
        .await;
    assert_eq!(created["title"], "Hooked");
    assert_eq!(created["webhook_url"], "https://organizer.example/hooks/floodgate");
    let secret = created["webhook_secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() == 6 + 64, "{secret}");
    let stored: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT webhook_url, webhook_secret FROM event WHERE event_id = $1")
            .bind(uuid::Uuid::parse_str(created["event_id"].as_str().unwrap()).unwrap())
            .fetch_one(app.db.pool())
            .await
            .unwrap();
    assert_eq!(
        stored,
        (
            Some("https://organizer.example/hooks/floodgate".to_owned()),
            Some(secret.to_owned())
        )
    );
    let read = app
        .get_json(&format!("/api/v1/events/{}", created["event_id"].as_str().unwrap()))
        .await;
    assert!(read.get("webhook_secret").is_none(), "{read}");

    let plain = app
        .create(
            "/api/v1/admin/events",
            &organizer,
            json!({"title": "Plain", "category": "concert", "city": "Utrecht"}),
        )
        .await;
    assert!(plain.get("webhook_secret").is_none(), "{plain}");
    for url in [
        "ftp://organizer.example/x",
        "https://",
        "not a url",
        "javascript:alert(1)",
    ] {
        let response = app
            .send(
                Method::POST,
                "/api/v1/admin/events",
                Some(&organizer),
                Some(json!({"title": "Bad", "category": "concert", "city": "Utrecht", "webhook_url": url})),
            )
            .await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_webhook_url").await;
    }
}

#[tokio::test]
async fn a_payment_started_through_the_api_is_created_by_the_shows_writer() {
    let sale = Sale::start(1, 4).await;
    let fans = sale.fans(1).await;
    let held = sale
        .hold(&fans[0], json!({"best_available": {"quantity": 2}}), None, 10)
        .await;
    assert_eq!(held.status(), StatusCode::CREATED);
    let held: Value = held.json().await.unwrap();
    let booking: BookingId = held["booking_id"].as_str().unwrap().parse().unwrap();
    let pay = |key: &'static str| {
        let (app, token) = (&sale.app, fans[0].0.clone());
        async move {
            app.request(Method::POST, &format!("/api/v1/bookings/{booking}/payments"))
                .bearer_auth(token)
                .header("idempotency-key", key)
                .json(&card())
                .send()
                .await
                .unwrap()
        }
    };
    let started = pay("checkout-1").await;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let started: Value = started.json().await.unwrap();
    let payment: PaymentId = started["payment_id"].as_str().unwrap().parse().unwrap();

    let mut row = None;
    for _ in 0..100 {
        row = sqlx::query_as::<_, (String, i64, BookingId)>(
            "SELECT status, amount_cents, booking_id FROM payment WHERE payment_id = $1",
        )
        .bind(payment)
        .fetch_optional(sale.app.db.pool())
        .await
        .unwrap();
        if row.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        row,
        Some(("processing".to_owned(), 10_000, booking)),
        "the writer created the payment"
    );
    let status: Value = sale
        .app
        .send(
            Method::GET,
            &format!("/api/v1/payments/{payment}"),
            Some(&fans[0].0),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "processing");
    assert_eq!(status["amount_cents"], 10_000);
    let details: Value = sale
        .app
        .send(
            Method::GET,
            &format!("/api/v1/bookings/{booking}"),
            Some(&fans[0].0),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(details["status"], "payment_pending");
    assert_eq!(details["payment"]["payment_id"], payment.to_string());
    // The same key is the same payment; a second payment of the booking is refused.
    let again = pay("checkout-1").await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.json::<Value>().await.unwrap(), started);
    assert_problem(pay("checkout-2").await, StatusCode::CONFLICT, "payment_in_progress").await;
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payment")
        .fetch_one(sale.app.db.pool())
        .await
        .unwrap();
    assert_eq!(payments, 1);
}
