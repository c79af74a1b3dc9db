//! A fan's whole journey through the public API, with every process of the flow running
//! in-process against the real services: ingress, the admission controller (ticked by the test),
//! the booking-worker, the payment-worker, the gateway simulator over HTTP (whose webhooks come
//! back to ingress), the notifier and the SMTP sink.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use notifier::{config::NotifierConfig, sink::SinkConfig};
use payment_worker::simulator::SimulatorConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use waiting_room::controller::{Controller, ControllerConfig, ShowSettings};

use crate::{helpers::assert_problem, holds::Sale};

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap()
}

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The processes behind ingress that the journey needs, stopped on drop.
struct Backend {
    stop: CancellationToken,
    mail_dir: PathBuf,
}

impl Backend {
    async fn start(sale: &Sale) -> Self {
        let stop = CancellationToken::new();
        let app = &sale.app;

        let gateway = tokio::net::TcpListener::bind(local()).await.unwrap();
        let gateway_url = format!("http://{}", gateway.local_addr().unwrap());
        let simulator = SimulatorConfig {
            webhook_url: Some(format!("{}/api/v1/payments/webhook", app.base)),
            ..SimulatorConfig::default()
        };
        tokio::spawn(payment_worker::simulator::serve(gateway, simulator, stop.clone()));

        let mut payments = payment_worker::service::ServiceConfig::from_env().unwrap();
        payments.common.database_url = app.db.url().to_owned();
        payments.common.mq_prefix = app.mq_prefix().to_owned();
        payments.common.redis_key_prefix = app.redis_prefix().to_owned();
        payments.common.admin_listen = local();
        payments.gateway_url = gateway_url;
        let service = payment_worker::service::Service::build(payments).await.unwrap();
        let admin = tokio::net::TcpListener::bind(local()).await.unwrap();
        tokio::spawn(service.run_until_stopped(admin, stop.clone()));

        let mail_dir = std::env::temp_dir().join(format!("journey-mail-{}", uuid::Uuid::new_v4().simple()));
        let sink = notifier::sink::SmtpSink::bind(SinkConfig {
            listen: local(),
            dir: mail_dir.clone(),
            reject_domain: None,
        })
        .await
        .unwrap();
        let smtp = sink.local_addr().unwrap();
        tokio::spawn(sink.run_until_stopped(stop.clone()));
        let mut mail = NotifierConfig::from_env().unwrap();
        mail.common.database_url = app.db.url().to_owned();
        mail.common.mq_prefix = app.mq_prefix().to_owned();
        mail.common.redis_key_prefix = app.redis_prefix().to_owned();
        mail.common.admin_listen = local();
        mail.smtp_url = format!("smtp://{smtp}");
        let service = notifier::service::Service::build(mail).await.unwrap();
        let admin = tokio::net::TcpListener::bind(local()).await.unwrap();
        tokio::spawn(service.run_until_stopped(admin, stop.clone()));
        Self { stop, mail_dir }
    }

    /// The text of every e-mail the sink received so far (quoted-printable soft breaks undone).
    fn mails(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.mail_dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
            .map(|mail| mail.replace("=\r\n", "").replace("=\n", ""))
            .collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.mail_dir);
    }
}

async fn json_of(response: reqwest::Response, status: StatusCode) -> Value {
    let got = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(got, status, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn a_fan_joins_is_admitted_holds_pays_gets_tickets_checks_in_once_and_receives_the_email() {
    let sale = Sale::start(2, 5).await;
    let backend = Backend::start(&sale).await;
    let app = &sale.app;
    let fan = app.customer_token().await;
    let me = json_of(
        app.send(Method::GET, "/api/v1/me", Some(&fan), None).await,
        StatusCode::OK,
    )
    .await;
    let email = me["email"].as_str().unwrap().to_owned();

    // The waiting room: the controller opens it, the fan joins, the next tick lets them in.
    let redis = waiting_room::room::connect(&common::config::env_string(
        "REDIS_URL",
        common::config::defaults::REDIS_URL,
    ))
    .await
    .unwrap();
    let mut controller = Controller::new(redis, app.redis_prefix(), ControllerConfig::default());
    let settings = ShowSettings {
        show_id: sale.show,
        prequeue_opens_at_ms: now_ms() - 10_000,
        on_sale_at_ms: now_ms() - 5_000,
        admit_per_second: 10,
        max_active: 100,
        paused: false,
        sellable: 10,
        booking_lag_ms: None,
    };
    let start = now_ms();
    controller.tick_show(&settings, start).await.unwrap();
    let queue = format!("/api/v1/shows/{}/queue", sale.show);
    let joined = json_of(
        app.send(Method::POST, &queue, Some(&fan), None).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(joined["state"], "waiting");
    controller.tick_show(&settings, start + 1_000).await.unwrap();
    let status = json_of(app.send(Method::GET, &queue, Some(&fan), None).await, StatusCode::OK).await;
    assert_eq!(status["state"], "admitted", "{status}");
    let admission = status["admission_token"].as_str().unwrap().to_owned();

    // Hold the two best seats, and wait for the writer's answer.
    let held = app
        .request(Method::POST, &format!("/api/v1/shows/{}/holds?wait=10", sale.show))
        .bearer_auth(&fan)
        .header("admission-token", &admission)
        .header("idempotency-key", "journey-hold")
        .json(&json!({"best_available": {"quantity": 2, "adjacent": true}}))
        .send()
        .await
        .unwrap();
    let held = json_of(held, StatusCode::CREATED).await;
    let booking = held["booking_id"].as_str().unwrap().to_owned();
    let held_seats: Vec<String> = held["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|seat| seat["seat_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(held_seats.len(), 2);

    // Pay with a card the simulator accepts; the booking becomes confirmed.
    let paid = app
        .request(Method::POST, &format!("/api/v1/bookings/{booking}/payments"))
        .bearer_auth(&fan)
        .header("idempotency-key", "journey-payment")
        .json(&json!({"payment_method": "card", "card_token": "tok_visa"}))
        .send()
        .await
        .unwrap();
    let paid = json_of(paid, StatusCode::ACCEPTED).await;
    let payment = paid["payment_id"].as_str().unwrap().to_owned();
    let mut confirmed = Value::Null;
    for _ in 0..300 {
        confirmed = json_of(
            app.send(Method::GET, &format!("/api/v1/bookings/{booking}"), Some(&fan), None)
                .await,
            StatusCode::OK,
        )
        .await;
        if confirmed["status"] == "confirmed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(confirmed["status"], "confirmed", "{confirmed}");
    let payment_status = json_of(
        app.send(Method::GET, &format!("/api/v1/payments/{payment}"), Some(&fan), None)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(payment_status["status"], "succeeded");

    // Tickets, one per seat, each with its QR image.
    let tickets = json_of(
        app.send(
            Method::GET,
            &format!("/api/v1/bookings/{booking}/tickets"),
            Some(&fan),
            None,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let tickets = tickets.as_array().unwrap().clone();
    assert_eq!(tickets.len(), 2);
    for ticket in &tickets {
        assert!(held_seats.contains(&ticket["seat"]["seat_id"].as_str().unwrap().to_owned()));
        let qr = app
            .send(
                Method::GET,
                &format!("/api/v1/tickets/{}/qr.svg", ticket["ticket_id"].as_str().unwrap()),
                Some(&fan),
                None,
            )
            .await;
        assert_eq!(qr.status(), StatusCode::OK);
        assert_eq!(qr.headers()["content-type"], "image/svg+xml");
        assert!(qr.text().await.unwrap().contains("<svg"));
    }

    // At the door: the first scan admits, the second is refused with the first time.
    let door = app.admin_token().await;
    let code = tickets[0]["code"].as_str().unwrap();
    let first = json_of(
        app.send(
            Method::POST,
            "/api/v1/checkin",
            Some(&door),
            Some(json!({"code": code})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(first["ticket_id"], tickets[0]["ticket_id"]);
    let again = app
        .send(
            Method::POST,
            "/api/v1/checkin",
            Some(&door),
            Some(json!({"code": code})),
        )
        .await;
    let again = assert_problem(again, StatusCode::CONFLICT, "already_checked_in").await;
    assert_eq!(again["checked_in_at"], first["checked_in_at"]);

    // The e-mail with the tickets reached the SMTP server: to the fan, every code, every seat.
    let mut mail = None;
    for _ in 0..300 {
        mail = backend
            .mails()
            .into_iter()
            .find(|mail| mail.contains("Your booking is confirmed"));
        if mail.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mail = mail.expect("the confirmation e-mail arrives");
    assert!(mail.contains(&email), "addressed to the fan");
    for ticket in &tickets {
        assert!(
            mail.contains(ticket["code"].as_str().unwrap()),
            "every ticket code is in the e-mail"
        );
        let seat = &ticket["seat"];
        let row = seat["row"].as_str().unwrap();
        let number = seat["number"].to_string();
        assert!(
            mail.lines()
                .any(|line| line.starts_with("Ticket ") && line.contains(row) && line.contains(&number)),
            "seat row {row} number {number} is listed"
        );
    }
    assert_eq!(
        backend
            .mails()
            .iter()
            .filter(|mail| mail.contains("Your booking is confirmed"))
            .count(),
        1
    );
}

/// Polls `GET path` as `token` until `done` holds for the body; returns it.
async fn poll(app: &crate::helpers::TestApp, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut body = Value::Null;
    for _ in 0..300 {
        body = json_of(app.send(Method::GET, path, Some(token), None).await, StatusCode::OK).await;
        if done(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never reached the expected state: {body}");
}

#[tokio::test]
async fn a_cancellation_on_a_sold_out_show_refunds_and_offers_the_seat_to_the_first_waitlisted_fan_by_email() {
    let sale = Sale::start(1, 2).await;
    let backend = Backend::start(&sale).await;
    let app = &sale.app;
    let fans = sale.fans(3).await;
    let (buyer, first, second) = (&fans[0], &fans[1], &fans[2]);

    // The buyer takes the whole (two-seat) show and pays.
    let held = json_of(
        sale.hold(buyer, json!({"best_available": {"quantity": 2}}), Some("buy"), 10)
            .await,
        StatusCode::CREATED,
    )
    .await;
    let booking = held["booking_id"].as_str().unwrap().to_owned();
    let paid = app
        .request(Method::POST, &format!("/api/v1/bookings/{booking}/payments"))
        .bearer_auth(&buyer.0)
        .header("idempotency-key", "pay")
        .json(&json!({"payment_method": "card", "card_token": "tok_visa"}))
        .send()
        .await
        .unwrap();
    json_of(paid, StatusCode::ACCEPTED).await;
    let path = format!("/api/v1/bookings/{booking}");
    poll(app, &path, &buyer.0, |b| b["status"] == "confirmed").await;

    // Sold out: two fans join the waitlist, in this order; the first wants both seats.
    let waitlist = format!("/api/v1/shows/{}/waitlist", sale.show);
    for (fan, quantity) in [(first, 2), (second, 1)] {
        let joined = app
            .send(
                Method::POST,
                &waitlist,
                Some(&fan.0),
                Some(json!({"quantity": quantity})),
            )
            .await;
        assert_eq!(json_of(joined, StatusCode::CREATED).await["status"], "waiting");
    }

    // The buyer cancels: refunded, and the first fan in line is offered both seats.
    let cancelled = app
        .request(Method::POST, &format!("/api/v1/bookings/{booking}/cancel"))
        .bearer_auth(&buyer.0)
        .send()
        .await
        .unwrap();
    json_of(cancelled, StatusCode::ACCEPTED).await;
    poll(app, &path, &buyer.0, |b| b["status"] == "refunded").await;
    let offers = poll(app, "/api/v1/me/bookings", &first.0, |page| {
        page["items"].as_array().is_some_and(|items| !items.is_empty())
    })
    .await;
    assert_eq!(offers["items"][0]["status"], "held", "{offers}");
    assert_eq!(offers["items"][0]["seat_count"], 2, "{offers}");
    let others = json_of(
        app.send(Method::GET, "/api/v1/me/bookings", Some(&second.0), None)
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(
        others["items"].as_array().unwrap().is_empty(),
        "the second in line waits"
    );

    // The offer reaches the first fan's inbox.
    let me = json_of(
        app.send(Method::GET, "/api/v1/me", Some(&first.0), None).await,
        StatusCode::OK,
    )
    .await;
    let email = me["email"].as_str().unwrap().to_owned();
    let mut offered = false;
    for _ in 0..300 {
        offered = backend
            .mails()
            .iter()
            .any(|mail| mail.contains("seats came back") && mail.contains(&email));
        if offered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(offered, "the waitlist offer is e-mailed to the first fan in line");
}

#[tokio::test]
async fn a_declined_card_leaves_the_booking_held_and_another_card_pays_it() {
    let sale = Sale::start(1, 4).await;
    let _backend = Backend::start(&sale).await;
    let app = &sale.app;
    let fan = &sale.fans(1).await[0];
    let held = json_of(
        sale.hold(fan, json!({"seat_ids": [sale.seats[0]]}), Some("hold"), 10)
            .await,
        StatusCode::CREATED,
    )
    .await;
    let booking = held["booking_id"].as_str().unwrap().to_owned();
    let pay = |key: &'static str, card: &'static str| {
        app.request(Method::POST, &format!("/api/v1/bookings/{booking}/payments"))
            .bearer_auth(&fan.0)
            .header("idempotency-key", key)
            .json(&json!({"payment_method": "card", "card_token": card}))
            .send()
    };
    let declined = json_of(pay("first", "tok_chargeDeclined").await.unwrap(), StatusCode::ACCEPTED).await;
    let declined = declined["payment_id"].as_str().unwrap().to_owned();
    let failed = poll(app, &format!("/api/v1/payments/{declined}"), &fan.0, |p| {
        p["status"] == "failed"
    })
    .await;
    assert_eq!(failed["failure_code"], "card_declined", "{failed}");
    let path = format!("/api/v1/bookings/{booking}");
    poll(app, &path, &fan.0, |b| b["status"] == "held").await;

    let accepted = json_of(pay("second", "tok_visa").await.unwrap(), StatusCode::ACCEPTED).await;
    assert_ne!(accepted["payment_id"].as_str().unwrap(), declined);
    poll(app, &path, &fan.0, |b| b["status"] == "confirmed").await;
    // Paying again, with yet another key, is refused: the booking is paid.
    let again = pay("third", "tok_visa").await.unwrap();
    assert_problem(again, StatusCode::CONFLICT, "already_paid").await;
}
