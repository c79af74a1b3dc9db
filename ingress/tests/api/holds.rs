//! Holds end to end: HTTP in, the show's queue, the real booking-worker (in-process, same
//! database and prefixes), the result back to the waiting request.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use booking_worker::service::{Service, ServiceConfig};
use common::ids::{SeatId, ShowId, UserId};
use ingress::domain::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, assert_problem, connect, next_json};

/// An ingress, a booking-worker, and an on-sale show of `rows` × `per_row` seats.
pub(crate) struct Sale {
    pub(crate) app: TestApp,
    pub(crate) show: ShowId,
    pub(crate) seats: Vec<SeatId>,
    pub(crate) worker: CancellationToken,
}

impl Sale {
    pub(crate) async fn start(rows: usize, per_row: usize) -> Self {
        let app = TestApp::spawn().await;
        let organizer = app.organizer_token().await;
        let venue = app.small_venue(&organizer, rows, per_row).await;
        let event = app.event(&organizer, "Holds").await;
        let show = app.show(&organizer, &event, &venue).await;
        let show: ShowId = show["show_id"].as_str().unwrap().parse().unwrap();
        // On sale now, so the workers discover it.
        sqlx::query(
            "UPDATE show SET prequeue_opens_at = now() - interval '2 minutes', on_sale_at = now() - interval '1 minute',
                             status = 'on_sale' WHERE show_id = $1",
        )
        .bind(show)
        .execute(app.db.pool())
        .await
        .unwrap();
        let seats: Vec<SeatId> =
            sqlx::query_scalar("SELECT seat_id FROM show_seat WHERE show_id = $1 ORDER BY seat_index")
                .bind(show)
                .fetch_all(app.db.pool())
                .await
                .unwrap();

        let mut config = ServiceConfig::from_env().unwrap();
        config.common.database_url = app.db.url().to_owned();
        config.common.mq_prefix = app.mq_prefix().to_owned();
        config.common.redis_key_prefix = app.redis_prefix().to_owned();
        config.common.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.discovery_interval = Duration::from_millis(100);
        let worker = CancellationToken::new();
        let service = Service::build(config).await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tokio::spawn(service.run_until_stopped(admin, worker.clone()));
        app.wait_until_ready().await;
        Self {
            app,
            show,
            seats,
            worker,
        }
    }

    /// `count` fans with an access token and an admission token each.
    pub(crate) async fn fans(&self, count: usize) -> Vec<(String, String)> {
        let users: Vec<UserId> = (0..count).map(|_| UserId::new()).collect();
        let emails: Vec<String> = users.iter().map(|user| format!("{user}@example.test")).collect();
        sqlx::query(
            "INSERT INTO app_user (app_user_id, email, name, password_hash)
             SELECT u, e, 'Fan', 'not-a-hash' FROM UNNEST($1::uuid[], $2::text[]) AS x (u, e)",
        )
        .bind(&users)
        .bind(&emails)
        .execute(self.app.db.pool())
        .await
        .unwrap();
        let expires = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap() + 600;
        users
            .iter()
            .enumerate()
            .map(|(number, user)| {
                let access = self.app.state.tokens.issue(*user, Role::Customer).unwrap();
                let admission = self
                    .app
                    .state
                    .admission_tokens
                    .issue(*user, self.show, number as u64 + 1, expires)
                    .unwrap();
                (access, admission)
            })
            .collect()
    }

    pub(crate) async fn hold(
        &self,
        fan: &(String, String),
        body: Value,
        key: Option<&str>,
        wait: u64,
    ) -> reqwest::Response {
        let mut request = self
            .app
            .request(Method::POST, &format!("/api/v1/shows/{}/holds?wait={wait}", self.show))
            .bearer_auth(&fan.0)
            .header("admission-token", &fan.1)
            .json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.unwrap()
    }
}

impl Drop for Sale {
    fn drop(&mut self) {
        self.worker.cancel();
    }
}

#[tokio::test]
async fn five_hundred_fans_racing_for_ten_seats_get_five_holds_and_conflicts_for_the_rest() {
    let sale = Sale::start(2, 5).await;
    let fans = sale.fans(500).await;
    let pairs: Vec<[SeatId; 2]> = (0..5).map(|k| [sale.seats[2 * k], sale.seats[2 * k + 1]]).collect();
    let sale = Arc::new(sale);
    let requests = fans.into_iter().enumerate().map(|(i, fan)| {
        let sale = Arc::clone(&sale);
        let pair = pairs[i % 5];
        tokio::spawn(async move {
            let response = sale.hold(&fan, json!({"seat_ids": pair}), None, 10).await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        })
    });
    let mut held = 0;
    let mut conflicts = 0;
    for request in futures::future::join_all(requests).await {
        let (status, body) = request.unwrap();
        match status {
            StatusCode::CREATED => {
                held += 1;
                assert_eq!(body["status"], "held");
                assert_eq!(body["seats"].as_array().unwrap().len(), 2);
                assert_eq!(body["total_cents"], 10_000);
            }
            StatusCode::CONFLICT => {
                conflicts += 1;
                assert_eq!(body["code"], "seats_unavailable", "{body}");
                assert!(!body["unavailable_seat_ids"].as_array().unwrap().is_empty());
            }
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    assert_eq!((held, conflicts), (5, 495));
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM booking_seat WHERE show_id = $1 AND released_at IS NULL")
        .bind(sale.show)
        .fetch_one(sale.app.db.pool())
        .await
        .unwrap();
    assert_eq!(live, 10, "each seat in exactly one live booking");
}

#[tokio::test]
async fn the_same_idempotency_key_gets_the_same_hold_and_another_body_is_refused() {
    let sale = Sale::start(1, 8).await;
    let fans = sale.fans(1).await;
    let body = json!({"best_available": {"quantity": 2, "adjacent": true}});
    let first = sale.hold(&fans[0], body.clone(), Some("key-1"), 10).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = sale.hold(&fans[0], body, Some("key-1"), 10).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["booking_id"], first["booking_id"]);
    assert_eq!(again["request_id"], first["request_id"]);
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM booking WHERE show_id = $1")
        .bind(sale.show)
        .fetch_one(sale.app.db.pool())
        .await
        .unwrap();
    assert_eq!(held, 1, "one effect");

    let other = sale
        .hold(&fans[0], json!({"best_available": {"quantity": 1}}), Some("key-1"), 10)
        .await;
    assert_problem(other, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused").await;
}

#[tokio::test]
async fn a_fan_follows_a_request_reads_the_booking_and_releases_it() {
    let sale = Sale::start(1, 6).await;
    let fans = sale.fans(2).await;
    let queued = sale
        .hold(&fans[0], json!({"seat_ids": [sale.seats[0], sale.seats[1]]}), None, 0)
        .await;
    assert_eq!(queued.status(), StatusCode::ACCEPTED);
    let queued: Value = queued.json().await.unwrap();
    assert_eq!(queued["status"], "queued");
    let request = queued["request_id"].as_str().unwrap().to_owned();

    let mut booking = Value::Null;
    for _ in 0..100 {
        let status = sale
            .app
            .send(
                Method::GET,
                &format!("/api/v1/hold-requests/{request}"),
                Some(&fans[0].0),
                None,
            )
            .await;
        assert_eq!(status.status(), StatusCode::OK);
        let status: Value = status.json().await.unwrap();
        if status["status"] == "held" {
            booking = status["booking_id"].clone();
            break;
        }
        assert_eq!(status["status"], "queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let booking = booking.as_str().expect("held within 5 s").to_owned();
    // Someone else's request and booking do not exist for this fan.
    let foreign = sale
        .app
        .send(
            Method::GET,
            &format!("/api/v1/hold-requests/{request}"),
            Some(&fans[1].0),
            None,
        )
        .await;
    assert_problem(foreign, StatusCode::NOT_FOUND, "not_found").await;
    let foreign = sale
        .app
        .send(
            Method::GET,
            &format!("/api/v1/bookings/{booking}"),
            Some(&fans[1].0),
            None,
        )
        .await;
    assert_problem(foreign, StatusCode::NOT_FOUND, "not_found").await;

    let details = sale
        .app
        .send(
            Method::GET,
            &format!("/api/v1/bookings/{booking}"),
            Some(&fans[0].0),
            None,
        )
        .await;
    assert_eq!(details.status(), StatusCode::OK);
    let details: Value = details.json().await.unwrap();
    assert_eq!(details["status"], "held");
    assert_eq!(details["seats"].as_array().unwrap().len(), 2);

    let released = sale
        .app
        .send(
            Method::DELETE,
            &format!("/api/v1/bookings/{booking}"),
            Some(&fans[0].0),
            None,
        )
        .await;
    assert_eq!(released.status(), StatusCode::ACCEPTED);
    // The other fan can now hold those seats.
    let mut status = StatusCode::CONFLICT;
    for _ in 0..50 {
        let response = sale
            .hold(&fans[1], json!({"seat_ids": [sale.seats[0], sale.seats[1]]}), None, 10)
            .await;
        status = response.status();
        if status == StatusCode::CREATED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::CREATED);

    // The seat map and availability come from the writer's snapshot: the two held seats show.
    // (The writer publishes a result before it updates the snapshot, so wait for the map to
    // settle: two reads 100 ms apart with the same version.)
    let mut map = Value::Null;
    for _ in 0..50 {
        let previous = map["version"].clone();
        map = sale.app.get_json(&format!("/api/v1/shows/{}/seats", sale.show)).await;
        if map["counts"]["held"] == 2 && map["version"] == previous {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(map["counts"]["held"], 2, "{map}");
    assert_eq!(map["counts"]["available"], 4);
    assert_eq!(map["seats"][0]["status"], "held");
    assert_eq!(map["seats"][2]["status"], "available");
    let version = map["version"].as_i64().unwrap();
    assert!(version > 0, "a snapshot version, not the initial 0");
    let tag = format!("W/\"{}-{version}\"", sale.show);
    let unchanged = sale
        .app
        .request(Method::GET, &format!("/api/v1/shows/{}/seats", sale.show))
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    let availability = sale
        .app
        .get_json(&format!("/api/v1/shows/{}/availability", sale.show))
        .await;
    assert_eq!(availability["version"], version);
    use base64::Engine as _;
    let bitmap = base64::engine::general_purpose::STANDARD
        .decode(availability["bitmap"].as_str().unwrap())
        .unwrap();
    assert_eq!(bitmap, vec![0b0011_1100], "seats 0 and 1 held, 2 to 5 available");

    let again = sale
        .app
        .send(
            Method::DELETE,
            &format!("/api/v1/bookings/{booking}"),
            Some(&fans[0].0),
            None,
        )
        .await;
    assert_problem(again, StatusCode::CONFLICT, "not_releasable").await;
}

#[tokio::test]
async fn hold_requests_are_checked_before_anything_is_queued() {
    let sale = Sale::start(1, 8).await;
    let fans = sale.fans(2).await;
    let before = sale.app.row_counts().await;
    // No admission token, or another fan's.
    let response = sale
        .app
        .request(Method::POST, &format!("/api/v1/shows/{}/holds", sale.show))
        .bearer_auth(&fans[0].0)
        .json(&json!({"best_available": {"quantity": 1}}))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::FORBIDDEN, "not_admitted").await;
    let borrowed = (fans[0].0.clone(), fans[1].1.clone());
    let response = sale
        .hold(&borrowed, json!({"best_available": {"quantity": 1}}), None, 0)
        .await;
    assert_problem(response, StatusCode::FORBIDDEN, "not_admitted").await;
    // Shapes: both or neither selection, a repeated seat, zero, above the show's limit (6).
    for (body, status, code) in [
        (json!({}), StatusCode::BAD_REQUEST, "invalid_body"),
        (
            json!({"seat_ids": [sale.seats[0]], "best_available": {"quantity": 1}}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"seat_ids": [sale.seats[0], sale.seats[0]]}),
            StatusCode::BAD_REQUEST,
            "invalid_seats",
        ),
        (
            json!({"best_available": {"quantity": 0}}),
            StatusCode::BAD_REQUEST,
            "invalid_quantity",
        ),
        (
            json!({"best_available": {"quantity": 7}}),
            StatusCode::CONFLICT,
            "limit_exceeded",
        ),
        (
            json!({"best_available": {"quantity": 1}, "extra": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ] {
        let response = sale.hold(&fans[0], body, None, 0).await;
        assert_problem(response, status, code).await;
    }
    // A seat of another venue.
    let response = sale
        .hold(&fans[0], json!({"seat_ids": [SeatId::new()]}), None, 10)
        .await;
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_seats").await;
    assert_eq!(sale.app.row_counts().await, before, "nothing was queued or written");
}

#[tokio::test]
async fn the_fans_websocket_hears_the_hold_result_and_the_release() {
    let sale = Sale::start(1, 6).await;
    let fans = sale.fans(1).await;
    let access = fans[0].0.clone();
    // Open the room and admit the fan, as the admission controller would.
    let redis = waiting_room::room::connect(&common::config::env_string(
        "REDIS_URL",
        common::config::defaults::REDIS_URL,
    ))
    .await
    .unwrap();
    let mut controller = waiting_room::controller::Controller::new(
        redis,
        sale.app.redis_prefix(),
        waiting_room::controller::ControllerConfig::default(),
    );
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap();
    let settings = waiting_room::controller::ShowSettings {
        show_id: sale.show,
        prequeue_opens_at_ms: now - 10_000,
        on_sale_at_ms: now - 5_000,
        admit_per_second: 10,
        max_active: 10,
        paused: false,
        sellable: 6,
        booking_lag_ms: None,
    };
    controller.tick_show(&settings, now).await.unwrap();
    let joined = sale
        .app
        .send(
            Method::POST,
            &format!("/api/v1/shows/{}/queue", sale.show),
            Some(&access),
            None,
        )
        .await;
    assert_eq!(joined.status(), StatusCode::CREATED);
    let show = sale.show.to_string();
    let mut socket = connect(&sale.app, &show, Some(&access), None).await.unwrap();
    controller.tick_show(&settings, now + 1_000).await.unwrap();
    let admitted = loop {
        let message = next_json(&mut socket).await;
        if message["type"] == "admitted" {
            break message;
        }
    };
    let fan = (access.clone(), admitted["admission_token"].as_str().unwrap().to_owned());

    let queued = sale
        .hold(
            &fan,
            json!({"best_available": {"quantity": 2, "adjacent": true}}),
            None,
            0,
        )
        .await;
    assert_eq!(queued.status(), StatusCode::ACCEPTED);
    let queued: Value = queued.json().await.unwrap();
    let result = next_json(&mut socket).await;
    assert_eq!(result["type"], "hold_result");
    assert_eq!(result["request_id"], queued["request_id"]);
    assert_eq!(result["status"], "held");
    assert_eq!(result["seats"].as_array().unwrap().len(), 2);
    let booking = result["booking_id"].as_str().unwrap().to_owned();

    let released = sale
        .app
        .send(
            Method::DELETE,
            &format!("/api/v1/bookings/{booking}"),
            Some(&access),
            None,
        )
        .await;
    assert_eq!(released.status(), StatusCode::ACCEPTED);
    let change = next_json(&mut socket).await;
    assert_eq!(
        change,
        json!({"type": "booking", "booking_id": booking, "status": "released"})
    );
}

#[tokio::test]
async fn a_request_the_broker_does_not_take_is_a_503_never_a_202() {
    let sale = Sale::start(1, 4).await;
    let fans = sale.fans(1).await;
    // No writer and no queue for the show: the broker returns the message instead of confirming.
    sale.worker.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connection = common::mq::connect(
        &common::config::env_string("AMQP_URL", common::config::defaults::AMQP_URL),
        "holds-test",
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            common::mq::Topology::new(sale.app.mq_prefix())
                .show_queue(sale.show)
                .into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let response = sale
        .hold(&fans[0], json!({"best_available": {"quantity": 1}}), None, 0)
        .await;
    assert_eq!(response.headers()["retry-after"], "2");
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable").await;
    let _ = connection.close(200, "done".into()).await;
}
