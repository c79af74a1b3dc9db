//! E-mail delivery end to end: real PostgreSQL, RabbitMQ and the real SMTP sink in-process.

mod support;

use std::time::Duration;

use support::{World, free_address};

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_confirmed_booking_sends_the_fan_one_email_with_their_seats_and_ticket_qr_codes() {
    let mut world = World::new().await;
    let smtp = world.start_sink("127.0.0.1:0".parse().unwrap(), None).await;
    world.start_notifier(smtp).await;
    let booking = world.seed_booking("ada@example.test", 2, None).await;

    world.publish(booking.show, &booking.confirmed()).await;

    let mails = world.wait_for_mails(1, WITHIN).await;
    let mail = &mails[0];
    assert!(mail.contains("Delivered-To: ada@example.test"), "{mail}");
    assert!(mail.contains("To: \"Ada Fan\" <ada@example.test>"), "{mail}");
    assert!(mail.contains("Subject: Your tickets for The Floodgates Live"), "{mail}");
    assert!(
        mail.contains("Balcony, row C, seat 11") && mail.contains("Balcony, row C, seat 12"),
        "{mail}"
    );
    for code in &booking.codes {
        assert!(mail.contains(code), "ticket code {code} missing: {mail}");
    }
    assert!(mail.contains("Total paid: EUR 90.00"), "{mail}");
    assert_eq!(
        mail.matches("Content-Type: image/png").count(),
        2,
        "one QR image per ticket"
    );
    assert!(mail.contains("Content-ID: <ticket-1@floodgate>") && mail.contains("Content-ID: <ticket-2@floodgate>"));
    assert!(
        mail.contains("Saturday 05 December 2026, 20:00"),
        "the show's local time: {mail}"
    );

    let attempts = world.wait_for_status(booking.booking, "email", "sent", WITHIN).await;
    assert_eq!(attempts, 1);
    assert_eq!(
        world
            .metric(
                "floodgate_notifications_sent_total",
                &[("kind", "booking_confirmed"), ("channel", "email")]
            )
            .await,
        1.0
    );
    let admin = world.admin.unwrap();
    let ready = reqwest::get(format!("http://{admin}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "PostgreSQL and RabbitMQ answer");
    // No webhook is configured for the event: nothing recorded for it.
    assert_eq!(world.notifications(booking.booking).await.len(), 1);
    assert_eq!(world.mails().len(), 1);
    world.stop().await;
}

#[tokio::test]
async fn the_same_booking_confirmed_event_delivered_twice_sends_one_email() {
    let mut world = World::new().await;
    let smtp = world.start_sink("127.0.0.1:0".parse().unwrap(), None).await;
    world.start_notifier(smtp).await;
    let booking = world.seed_booking("twice@example.test", 1, None).await;
    let confirmed = booking.confirmed();

    // The relay may publish an outbox row twice (published, then crashed before marking it).
    world.publish(booking.show, &confirmed).await;
    world.publish(booking.show, &confirmed).await;

    world
        .wait_for_metric(
            "floodgate_notifications_duplicates_total",
            &[("kind", "booking_confirmed"), ("channel", "email")],
            1.0,
            WITHIN,
        )
        .await;
    assert_eq!(world.mails().len(), 1, "one e-mail for one fact");
    assert_eq!(
        world
            .metric(
                "floodgate_notifications_sent_total",
                &[("kind", "booking_confirmed"), ("channel", "email")]
            )
            .await,
        1.0
    );
    let rows = world.notifications(booking.booking).await;
    assert_eq!(rows, vec![("email".to_owned(), "sent".to_owned(), 1)]);
    world.stop().await;
}

#[tokio::test]
async fn an_email_that_fails_while_smtp_is_down_arrives_later_through_the_retry_queue() {
    let mut world = World::new().await;
    let smtp = free_address(); // nothing listens here yet
    world.start_notifier(smtp).await;
    let booking = world.seed_booking("patient@example.test", 1, None).await;

    world.publish(booking.show, &booking.confirmed()).await;

    world.wait_for_status(booking.booking, "email", "failed", WITHIN).await;
    world
        .wait_for_metric(
            "floodgate_notifications_retried_total",
            &[("kind", "booking_confirmed"), ("channel", "email")],
            1.0,
            WITHIN,
        )
        .await;
    assert!(world.mails().is_empty());

    // The SMTP server comes up; the next retry gets through.
    world.start_sink(smtp, None).await;
    let mails = world.wait_for_mails(1, WITHIN).await;
    assert!(mails[0].contains("Delivered-To: patient@example.test"));
    assert!(mails[0].contains(&booking.codes[0]));
    let attempts = world.wait_for_status(booking.booking, "email", "sent", WITHIN).await;
    assert!(attempts >= 2, "sent on a retry, attempt {attempts}");
    assert!(world.dead_lettered().await.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.mails().len(), 1, "sent once, not once per attempt");
    world.stop().await;
}

#[tokio::test]
async fn a_permanently_refused_email_is_dead_lettered_and_counted() {
    let mut world = World::new().await;
    let smtp = world
        .start_sink("127.0.0.1:0".parse().unwrap(), Some("bounce.test"))
        .await;
    world.start_notifier(smtp).await;
    let booking = world.seed_booking("gone@bounce.test", 1, None).await;
    let confirmed = booking.confirmed();

    world.publish(booking.show, &confirmed).await;

    let attempts = world.wait_for_status(booking.booking, "email", "dead", WITHIN).await;
    assert_eq!(attempts, 1, "a 5xx is not retried");
    assert_eq!(
        world
            .metric(
                "floodgate_notifications_dead_lettered_total",
                &[
                    ("kind", "booking_confirmed"),
                    ("channel", "email"),
                    ("reason", "permanent")
                ]
            )
            .await,
        1.0
    );
    assert_eq!(
        world
            .metric("floodgate_notifications_retried_total", &[("channel", "email")])
            .await,
        0.0
    );
    let dead = world.dead_lettered().await;
    assert_eq!(dead.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&dead[0].delivery.data).unwrap();
    assert_eq!(body["message_id"], confirmed.message_id.to_string());
    let header = |name: &str| {
        let headers = dead[0].delivery.properties.headers().clone().unwrap_or_default();
        headers
            .inner()
            .iter()
            .find(|(key, _)| key.as_str() == name)
            .map(|(_, value)| match value {
                lapin::types::AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
                other => format!("{other:?}"),
            })
    };
    assert_eq!(header("x-floodgate-channel").as_deref(), Some("email"));
    let error = header("x-floodgate-error").unwrap();
    assert!(error.contains("550") && error.contains("permanent"), "{error}");
    assert!(world.mails().is_empty());
    world.stop().await;
}
