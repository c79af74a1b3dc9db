//! Organizer webhooks end to end: a tiny axum receiver stands in for the organizer's endpoint.

mod support;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use support::World;
use tokio::sync::{Mutex, mpsc};

const SECRET: &str = "whsec_organizer_test_secret";

struct Receiver {
    /// Answers to give, in order; 200 once they run out.
    answers: Mutex<Vec<StatusCode>>,
    requests: mpsc::UnboundedSender<(HeaderMap, Bytes)>,
}

async fn receive(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    receiver.requests.send((headers, body)).unwrap();
    let mut answers = receiver.answers.lock().await;
    if answers.is_empty() {
        StatusCode::OK
    } else {
        answers.remove(0)
    }
}

fn verify(signature: &str, body: &[u8]) -> bool {
    let mut parts = signature.split(',');
    let (Some(t), Some(v1)) = (
        parts.next().and_then(|p| p.strip_prefix("t=")),
        parts.next().and_then(|p| p.strip_prefix("v1=")),
    ) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let fresh = (time::OffsetDateTime::now_utc().unix_timestamp() - t.parse::<i64>().unwrap()).abs() < 300;
    expected == v1 && fresh
}

#[tokio::test]
async fn an_organizer_webhook_is_delivered_signed_and_retried_after_a_server_error() {
    let (requests, mut received) = mpsc::unbounded_channel();
    let receiver = Arc::new(Receiver {
        answers: Mutex::new(vec![StatusCode::SERVICE_UNAVAILABLE]),
        requests,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let app = Router::new().route("/hooks", post(receive)).with_state(receiver);
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut world = World::new().await;
    let smtp = world.start_sink("127.0.0.1:0".parse().unwrap(), None).await;
    world.start_notifier(smtp).await;
    let booking = world
        .seed_booking("org-fan@example.test", 2, Some((&url, SECRET)))
        .await;
    let confirmed = booking.confirmed();

    world.publish(booking.show, &confirmed).await;

    let wait = Duration::from_secs(30);
    let (first_headers, first_body) = tokio::time::timeout(wait, received.recv()).await.unwrap().unwrap();
    let (headers, body) = tokio::time::timeout(wait, received.recv()).await.unwrap().unwrap();
    assert_eq!(first_body, body, "the retry posts the same body");
    for (headers, body) in [(&first_headers, &first_body), (&headers, &body)] {
        let signature = headers["floodgate-signature"].to_str().unwrap();
        assert!(verify(signature, body), "bad signature {signature}");
        assert_eq!(headers["floodgate-event-id"], confirmed.message_id.to_string().as_str());
        assert_eq!(headers["content-type"], "application/json");
    }
    assert!(
        !verify(headers["floodgate-signature"].to_str().unwrap(), b"{}"),
        "the signature covers the body"
    );
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["type"], "booking.confirmed");
    assert_eq!(json["id"], confirmed.message_id.to_string());
    assert_eq!(json["event_id"], booking.event.to_string());
    assert_eq!(json["show_id"], booking.show.to_string());
    assert_eq!(json["data"]["booking_id"], booking.booking.to_string());
    assert_eq!(json["data"]["ticket_ids"].as_array().unwrap().len(), 2);

    let attempts = world.wait_for_status(booking.booking, "webhook", "sent", wait).await;
    assert_eq!(attempts, 2);
    // The fan's e-mail went out once, independently of the webhook's retry.
    world.wait_for_status(booking.booking, "email", "sent", wait).await;
    assert_eq!(world.mails().len(), 1);
    assert_eq!(
        world
            .metric(
                "floodgate_notifications_retried_total",
                &[("kind", "booking_confirmed"), ("channel", "webhook")]
            )
            .await,
        1.0
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(800), received.recv())
            .await
            .is_err(),
        "delivered once it answered 200"
    );
    world.stop().await;
    server.abort();
}
