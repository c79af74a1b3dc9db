//! The admin port: health, readiness and metrics.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{TestApp, test_config};

#[tokio::test]
async fn health_readiness_and_metrics_answer_on_the_admin_port_not_the_public_one() {
    let app = TestApp::spawn().await;
    app.request(Method::GET, "/api/v1/events").send().await.unwrap();

    let health = app
        .client
        .get(format!("{}/healthz", app.admin_base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // Ready once every dependency answers and the hold-results queue is consumed (a moment
    // after start).
    let ready = app.wait_until_ready().await;
    assert_eq!(ready["checks"]["postgres"], "ok");
    assert_eq!(ready["checks"]["rabbitmq"], "ok");

    let metrics = app
        .client
        .get(format!("{}/metrics", app.admin_base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("floodgate_http_requests_total{method=\"GET\",route=\"/api/v1/events\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("floodgate_http_request_duration_seconds_bucket"));
    assert!(text.contains("process_resident_memory_bytes"));

    let not_public = app.request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(not_public.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn readiness_fails_while_postgres_is_unreachable_but_the_process_stays_alive() {
    // Nothing listens on port 1: the lazy pool cannot connect.
    let prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
    let mut config = test_config("postgres://floodgate:floodgate@127.0.0.1:1/floodgate", &prefix);
    config.bootstrap_admin = None;
    let app = ingress::Application::build(config)
        .await
        .expect("starts without a database");
    let admin = format!("http://{}", app.admin_addr());
    let api = format!("http://{}", app.api_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = reqwest::Client::new();

    assert_eq!(
        client.get(format!("{admin}/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let ready = client.get(format!("{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: Value = ready.json().await.unwrap();
    assert_ne!(ready["checks"]["postgres"], "ok");

    // Requests needing the database answer 503 with Retry-After, not 500.
    let events = client.get(format!("{api}/api/v1/events")).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(events.headers().contains_key("retry-after"));

    shutdown.cancel();
    running.await.unwrap().unwrap();
    // This app declared only the shared topology under its own prefix; remove it.
    let url = common::config::env_string("AMQP_URL", common::config::defaults::AMQP_URL);
    let connection = common::mq::connect(&url, "test-cleanup").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    common::mq::Topology::new(prefix).delete(&channel, &[]).await.unwrap();
}
