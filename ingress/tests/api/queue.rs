//! API.md "Waiting room": the queue endpoints, the WebSocket, the admission-token guard, and a
//! Redis outage. The admission controller is driven tick by tick from the test.

use std::time::Duration;

use axum::{body::Body, routing::get};
use futures::{SinkExt as _, StreamExt as _};
use ingress::auth::admission::Admitted;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tower::ServiceExt as _;
use waiting_room::controller::{Controller, ControllerConfig, ShowSettings};

use crate::helpers::{JWT_SECRET, Socket, TestApp, assert_problem, connect, next_json};

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap()
}

/// A show on sale since a moment ago, created through the API.
async fn show_on_sale(app: &TestApp) -> String {
    let organizer = app.organizer_token().await;
    let venue = app.small_venue(&organizer, 1, 10).await;
    let event = app.event(&organizer, "Queue Night").await;
    app.show(&organizer, &event, &venue).await["show_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn settings(show: &str, admit_per_second: u32) -> ShowSettings {
    ShowSettings {
        show_id: show.parse().unwrap(),
        prequeue_opens_at_ms: now_ms() - 10_000,
        on_sale_at_ms: now_ms() - 5_000,
        admit_per_second,
        max_active: 100,
        paused: false,
        sellable: 10,
        booking_lag_ms: None,
    }
}

async fn controller(app: &TestApp, redis_url: &str) -> Controller {
    let redis = waiting_room::room::connect(redis_url).await.unwrap();
    Controller::new(redis, app.redis_prefix(), ControllerConfig::default())
}

fn redis_url() -> String {
    common::config::env_string("REDIS_URL", common::config::defaults::REDIS_URL)
}

/// A fan: (access token, user id).
async fn fan(app: &TestApp) -> (String, String) {
    let token = app.customer_token().await;
    let me: Value = app
        .send(Method::GET, "/api/v1/me", Some(&token), None)
        .await
        .json()
        .await
        .unwrap();
    (token, me["user_id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_fan_joins_once_sees_the_place_and_gets_an_admission_token_when_admitted() {
    let app = TestApp::spawn().await;
    let show = show_on_sale(&app).await;
    let path = format!("/api/v1/shows/{show}/queue");
    let mut controller = controller(&app, &redis_url()).await;
    let settings = settings(&show, 1);
    let start = now_ms();
    controller.tick_show(&settings, start).await.unwrap();

    let (first, first_id) = fan(&app).await;
    let (second, _) = fan(&app).await;
    let joined = app.send(Method::POST, &path, Some(&first), None).await;
    assert_eq!(joined.status(), StatusCode::CREATED);
    let joined: Value = joined.json().await.unwrap();
    assert_eq!(
        joined,
        json!({"state": "waiting", "number": 1, "position": 1, "ahead": 0})
    );
    let again = app.send(Method::POST, &path, Some(&first), None).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap()["number"], 1);
    let second_place: Value = app
        .send(Method::POST, &path, Some(&second), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (second_place["number"].clone(), second_place["ahead"].clone()),
        (json!(2), json!(1))
    );

    controller.tick_show(&settings, start + 1_000).await.unwrap();
    let admitted: Value = app
        .send(Method::GET, &path, Some(&first), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(admitted["state"], "admitted");
    let token = admitted["admission_token"].as_str().expect("a token once admitted");
    assert!(admitted["expires_at"].is_string());
    let claims = app
        .state
        .admission_tokens
        .verify(token, first_id.parse().unwrap(), show.parse().unwrap())
        .unwrap();
    assert_eq!(claims.num, 1);
    let still_waiting: Value = app
        .send(Method::GET, &path, Some(&second), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still_waiting["state"], "waiting");
    assert_eq!(still_waiting["position"], 1);

    assert_eq!(
        app.send(Method::DELETE, &path, Some(&first), None).await.status(),
        StatusCode::NO_CONTENT
    );
    let left: Value = app
        .send(Method::GET, &path, Some(&first), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(left["state"], "closed");

    let unknown = app
        .send(
            Method::POST,
            &format!("/api/v1/shows/{}/queue", uuid::Uuid::now_v7()),
            Some(&first),
            None,
        )
        .await;
    assert_problem(unknown, StatusCode::NOT_FOUND, "not_found").await;
    let anonymous = app.send(Method::POST, &path, None, None).await;
    assert_problem(anonymous, StatusCode::UNAUTHORIZED, "missing_token").await;
}

#[tokio::test]
async fn the_admission_guard_accepts_only_a_valid_token_of_the_same_user_and_show() {
    let app = TestApp::spawn().await;
    let show: common::ids::ShowId = common::ids::ShowId::new();
    let (access, user) = fan(&app).await;
    let (other_access, _) = fan(&app).await;
    let user: common::ids::UserId = user.parse().unwrap();
    let expires = jsonwebtoken::get_current_timestamp() + 600;
    let tokens = &app.state.admission_tokens;
    let valid = tokens.issue(user, show, 7, expires).unwrap();
    let other_show = tokens.issue(user, common::ids::ShowId::new(), 7, expires).unwrap();
    let expired = tokens
        .issue(user, show, 7, jsonwebtoken::get_current_timestamp() - 60)
        .unwrap();

    let router = axum::Router::new()
        .route(
            "/shows/{show_id}/probe",
            get(|admitted: Admitted| async move { admitted.admission.num.to_string() }),
        )
        .with_state(app.state.clone());
    let call = |access: Option<&str>, admission: Option<&str>| {
        let mut request = axum::http::Request::get(format!("/shows/{show}/probe"));
        if let Some(access) = access {
            request = request.header("authorization", format!("Bearer {access}"));
        }
        if let Some(admission) = admission {
            request = request.header("admission-token", admission);
        }
        router.clone().oneshot(request.body(Body::empty()).unwrap())
    };
    let ok = call(Some(&access), Some(&valid)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(axum::body::to_bytes(ok.into_body(), 100).await.unwrap(), "7");
    for (what, access, admission) in [
        ("no admission token", Some(access.as_str()), None),
        ("another show", Some(access.as_str()), Some(other_show.as_str())),
        ("expired", Some(access.as_str()), Some(expired.as_str())),
        (
            "another user's token",
            Some(other_access.as_str()),
            Some(valid.as_str()),
        ),
        ("garbage", Some(access.as_str()), Some("not-a-token")),
    ] {
        let response = call(access, admission).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{what}");
        let body: Value =
            serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 10_000).await.unwrap()).unwrap();
        assert_eq!(body["code"], "not_admitted", "{what}");
    }
    assert_eq!(
        call(None, Some(&valid)).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

fn handshake_status(outcome: Result<Socket, tungstenite::Error>) -> u16 {
    match outcome {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => 101,
    }
}

#[tokio::test]
async fn a_websocket_fan_hears_positions_then_admitted_and_bad_handshakes_and_frames_are_refused() {
    let app = TestApp::spawn().await;
    let show = show_on_sale(&app).await;
    let path = format!("/api/v1/shows/{show}/queue");
    let mut controller = controller(&app, &redis_url()).await;
    let settings = settings(&show, 4);
    let start = now_ms();
    controller.tick_show(&settings, start).await.unwrap();
    let mut fans = Vec::new();
    for _ in 0..3 {
        let (access, _) = fan(&app).await;
        app.send(Method::POST, &path, Some(&access), None).await;
        fans.push(access);
    }

    let mut socket = connect(&app, &show, Some(&fans[2]), Some("https://tickets.example"))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "position", "position": 3, "ahead": 2, "serving": 0, "eta_seconds": null})
    );

    // One admission: the fan moves up.
    controller.tick_show(&settings, start + 250).await.unwrap();
    let moved = next_json(&mut socket).await;
    assert_eq!(
        (
            moved["type"].clone(),
            moved["position"].clone(),
            moved["serving"].clone()
        ),
        (json!("position"), json!(2), json!(1))
    );
    // A second later the fan's number is reached: the socket delivers the admission token.
    controller.tick_show(&settings, start + 1_250).await.unwrap();
    let admitted = next_json(&mut socket).await;
    assert_eq!(admitted["type"], "admitted");
    assert!(
        admitted["admission_token"]
            .as_str()
            .is_some_and(|token| token.split('.').count() == 3)
    );

    // An oversized frame closes the socket.
    socket
        .send(tungstenite::Message::Text("x".repeat(10_000).into()))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(tungstenite::Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the socket stayed open after an oversized frame");

    assert_eq!(
        handshake_status(connect(&app, &show, Some(&fans[0]), Some("https://evil.example")).await),
        403
    );
    assert_eq!(handshake_status(connect(&app, &show, None, None).await), 401);
    let me: Value = app
        .send(Method::GET, "/api/v1/me", Some(&fans[0]), None)
        .await
        .json()
        .await
        .unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    let expired = jsonwebtoken::encode(
        &{
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            header.kid = Some(crate::helpers::access_kid());
            header
        },
        &json!({"sub": me["user_id"], "role": "customer", "iss": "floodgate", "aud": "floodgate-api",
                "iat": now - 2000, "exp": now - 1000, "jti": uuid::Uuid::new_v4()}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(handshake_status(connect(&app, &show, Some(&expired), None).await), 401);
}

/// With `WS_POSITION_MAX_INTERVAL_MS` above a second, a fan far back hears a serving move only
/// every ETA/20; the socket must go on reading the fan's pings meanwhile, not swallow them into
/// a burst that trips the per-second message limit once the pace allows the next position.
#[tokio::test]
async fn a_fan_far_back_is_paced_but_its_socket_keeps_reading_pings_meanwhile() {
    let app = TestApp::spawn_with(|config| config.ws_position_max_interval = Duration::from_secs(10)).await;
    let show = show_on_sale(&app).await;
    let path = format!("/api/v1/shows/{show}/queue");
    let mut controller = controller(&app, &redis_url()).await;
    let settings = settings(&show, 1);
    let start = now_ms();
    controller.tick_show(&settings, start).await.unwrap();
    let mut last = String::new();
    for _ in 0..60 {
        let (access, _) = fan(&app).await;
        app.send(Method::POST, &path, Some(&access), None).await;
        last = access;
    }
    let mut socket = connect(&app, &show, Some(&last), None).await.unwrap();
    assert_eq!(next_json(&mut socket).await["position"], 60);

    // One admission a second: an ETA of about a minute, so moves are told every ~3 s.
    controller.tick_show(&settings, start + 1_000).await.unwrap();
    let first = next_json(&mut socket).await;
    assert_eq!(
        (first["position"].clone(), first["serving"].clone()),
        (json!(59), json!(1))
    );
    assert!(first["eta_seconds"].as_u64().is_some_and(|eta| eta >= 50), "{first}");
    controller.tick_show(&settings, start + 2_000).await.unwrap();
    // Pings at a polite 3 a second while that move waits for its turn.
    for _ in 0..8 {
        socket
            .send(tungstenite::Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let second = next_json(&mut socket).await;
    assert_eq!(
        (
            second["type"].clone(),
            second["position"].clone(),
            second["serving"].clone()
        ),
        (json!("position"), json!(58), json!(2)),
        "the paced move arrives"
    );
    let after = tokio::time::timeout(Duration::from_secs(1), socket.next()).await;
    assert!(after.is_err(), "the socket said something more (closed it?): {after:?}");
}

/// A private redis-server on a free port, so stopping it disturbs no other test.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn while_redis_is_down_the_queue_answers_503_and_it_recovers_by_itself() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = PrivateRedis::start(port);
    let url = redis.url();
    let app = TestApp::spawn_with(|config| config.common.redis_url = url.clone()).await;
    let show = show_on_sale(&app).await;
    let path = format!("/api/v1/shows/{show}/queue");
    let mut controller = controller(&app, &redis.url()).await;
    controller.tick_show(&settings(&show, 1), now_ms()).await.unwrap();
    let (access, _) = fan(&app).await;
    assert_eq!(
        app.send(Method::POST, &path, Some(&access), None).await.status(),
        StatusCode::CREATED
    );

    redis.stop();
    let down = app.send(Method::POST, &path, Some(&access), None).await;
    assert!(down.headers().contains_key("retry-after"));
    assert_problem(down, StatusCode::SERVICE_UNAVAILABLE, "waiting_room_unavailable").await;
    let ready = app
        .client
        .get(format!("{}/readyz", app.admin_base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Redis comes back (empty: this one keeps nothing); the controller reopens the room and
    // ingress serves again without a restart.
    let _redis = PrivateRedis::start(port);
    let started = std::time::Instant::now();
    loop {
        let _ = controller.tick_show(&settings(&show, 1), now_ms()).await;
        let status = app.send(Method::POST, &path, Some(&access), None).await.status();
        if status == StatusCode::CREATED {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no recovery: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = app
        .client
        .get(format!("{}/readyz", app.admin_base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}
