//! HTTP hygiene on every route family: bad input is a 4xx problem+json, never a 500, and
//! changes nothing; request ids, CORS, unknown routes and methods.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, show_body};

/// Sends a raw body and returns the response.
async fn raw(app: &TestApp, method: Method, path: &str, token: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut request = app
        .request(method, path)
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn malformed_json_wrong_types_unknown_fields_and_huge_bodies_are_4xx_problems_on_every_writing_route() {
    let app = TestApp::spawn().await;
    let organizer = app.organizer_token().await;
    let venue = app.small_venue(&organizer, 1, 4).await;
    let event = app.event(&organizer, "Hygiene").await;
    let show = app.show(&organizer, &event, &venue).await;
    let show_id = show["show_id"].as_str().unwrap();
    let user_id = app
        .send(Method::GET, "/api/v1/me", Some(&organizer), None)
        .await
        .json::<Value>()
        .await
        .unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = app.admin_token().await;

    // (method, path, token, a valid body to corrupt)
    let routes: Vec<(Method, String, Option<String>, Value)> = vec![
        (
            Method::POST,
            "/api/v1/auth/register".into(),
            None,
            json!({"email": "x@example.com", "password": "a long enough password", "name": "X"}),
        ),
        (
            Method::POST,
            "/api/v1/auth/login".into(),
            None,
            json!({"email": "x@example.com", "password": "whatever"}),
        ),
        (
            Method::POST,
            "/api/v1/auth/refresh".into(),
            None,
            json!({"refresh_token": "abc"}),
        ),
        (
            Method::POST,
            "/api/v1/auth/logout".into(),
            None,
            json!({"refresh_token": "abc"}),
        ),
        (
            Method::POST,
            "/api/v1/admin/venues".into(),
            Some(organizer.clone()),
            json!({"name": "V", "city": "C", "address": "A", "timezone": "UTC",
                   "sections": [{"name": "S", "rows": [{"label": "A", "seats": 2, "tier": "floor"}]}]}),
        ),
        (
            Method::POST,
            "/api/v1/admin/events".into(),
            Some(organizer.clone()),
            json!({"title": "T", "category": "concert", "city": "C"}),
        ),
        (
            Method::POST,
            "/api/v1/admin/shows".into(),
            Some(organizer.clone()),
            show_body(&event, &venue, json!({"floor": 1})),
        ),
        (
            Method::PATCH,
            format!("/api/v1/admin/shows/{show_id}/waiting-room"),
            Some(organizer.clone()),
            json!({"admit_per_second": 10}),
        ),
        (
            Method::PUT,
            format!("/api/v1/admin/users/{user_id}/role"),
            Some(admin.clone()),
            json!({"role": "organizer"}),
        ),
        (
            Method::POST,
            "/api/v1/admin/promo-codes".into(),
            Some(organizer.clone()),
            json!({"code": "HYGIENE", "show_id": show_id, "percent_off": 10, "max_uses": 5,
                   "valid_until": "2031-01-01T00:00:00Z"}),
        ),
        (
            Method::POST,
            "/api/v1/checkin".into(),
            Some(organizer.clone()),
            json!({"code": "abc"}),
        ),
        (
            Method::POST,
            format!("/api/v1/shows/{show_id}/waitlist"),
            Some(organizer.clone()),
            json!({"quantity": 1}),
        ),
        (
            Method::POST,
            format!("/api/v1/bookings/{}/payments", uuid::Uuid::now_v7()),
            Some(organizer.clone()),
            json!({"payment_method": "card", "card_token": "tok_visa"}),
        ),
    ];

    let before = app.row_counts().await;
    for (method, path, token, valid) in &routes {
        let token = token.as_deref();
        let what = format!("{method} {path}");

        let response = raw(&app, method.clone(), path, token, b"{not json".to_vec()).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "malformed_json").await;

        let mut unknown = valid.clone();
        unknown["surprise"] = json!(true);
        let response = raw(&app, method.clone(), path, token, serde_json::to_vec(&unknown).unwrap()).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;

        let mut wrong_types = valid.clone();
        for value in wrong_types.as_object_mut().unwrap().values_mut() {
            *value = json!({"unexpected": "object"});
        }
        let response = raw(
            &app,
            method.clone(),
            path,
            token,
            serde_json::to_vec(&wrong_types).unwrap(),
        )
        .await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;

        let response = raw(&app, method.clone(), path, token, b"[]".to_vec()).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;

        let mut huge = valid.clone();
        huge["padding"] = json!("x".repeat(1 << 20));
        let response = raw(&app, method.clone(), path, token, serde_json::to_vec(&huge).unwrap()).await;
        assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

        let mut plain = app.request(method.clone(), path).header("content-type", "text/plain");
        if let Some(token) = token {
            plain = plain.bearer_auth(token);
        }
        let response = plain.body(serde_json::to_vec(valid).unwrap()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{what}");
        assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    }
    assert_eq!(app.row_counts().await, before, "a refused request changed rows");
}

#[tokio::test]
async fn negative_and_absurd_numbers_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let organizer = app.organizer_token().await;
    let venue = app.small_venue(&organizer, 1, 4).await;
    let event = app.event(&organizer, "Numbers").await;
    let show = app.show(&organizer, &event, &venue).await;
    let show_id = show["show_id"].as_str().unwrap();
    let before = app.row_counts().await;

    let venue_with = |seats: Value| {
        json!({"name": "V", "city": "C", "address": "A", "timezone": "UTC",
               "sections": [{"name": "S", "rows": [{"label": "A", "seats": seats, "tier": "floor"}]}]})
    };
    for (seats, code) in [
        (json!(-5), "out_of_range"),
        (json!(0), "out_of_range"),
        (json!(5000), "out_of_range"),
        (json!(1_000_000), "too_many_seats"),
        (json!(1e12), "invalid_body"),
        (json!(2.5), "invalid_body"),
        (json!("10"), "invalid_body"),
    ] {
        let response = app
            .send(
                Method::POST,
                "/api/v1/admin/venues",
                Some(&organizer),
                Some(venue_with(seats)),
            )
            .await;
        assert_problem(response, StatusCode::BAD_REQUEST, code).await;
    }
    let mut body = show_body(&event, &venue, json!({"floor": -1}));
    let response = app
        .send(
            Method::POST,
            "/api/v1/admin/shows",
            Some(&organizer),
            Some(body.clone()),
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "out_of_range").await;
    body["prices"] = json!({"floor": 100});
    for (field, value) in [
        ("hold_seconds", json!(1_000_000_000)),
        ("max_tickets_per_user", json!(-1)),
        ("max_tickets_per_user", json!(0)),
        ("cancel_cutoff_seconds", json!(-60)),
    ] {
        let mut bad = body.clone();
        bad[field] = value;
        let response = app
            .send(Method::POST, "/api/v1/admin/shows", Some(&organizer), Some(bad))
            .await;
        assert_problem(response, StatusCode::BAD_REQUEST, "out_of_range").await;
    }
    let mut bad = body.clone();
    bad["waiting_room"]["admit_per_second"] = json!(0);
    let response = app
        .send(Method::POST, "/api/v1/admin/shows", Some(&organizer), Some(bad))
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "out_of_range").await;
    let mut bad = body.clone();
    bad["on_sale_at"] = json!("2032-01-01T00:00:00Z");
    let response = app
        .send(Method::POST, "/api/v1/admin/shows", Some(&organizer), Some(bad))
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_schedule").await;
    let mut bad = body.clone();
    bad["starts_at"] = json!("not a date");
    let response = app
        .send(Method::POST, "/api/v1/admin/shows", Some(&organizer), Some(bad))
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;

    let response = app
        .send(
            Method::PATCH,
            &format!("/api/v1/admin/shows/{show_id}/waiting-room"),
            Some(&organizer),
            Some(json!({"max_active": -3})),
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "out_of_range").await;

    for query in [
        "limit=0",
        "limit=-1",
        "limit=1000000",
        "limit=abc",
        "from=yesterday",
        "cursor=%27%3B--",
        "nope=1",
    ] {
        let response = app
            .request(Method::GET, &format!("/api/v1/events?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    assert_eq!(app.row_counts().await, before);
}

#[tokio::test]
async fn sql_injection_in_queries_and_path_ids_is_harmless() {
    let app = TestApp::spawn().await;
    let organizer = app.organizer_token().await;
    app.event(&organizer, "Safe Event").await;
    let before = app.row_counts().await;

    for q in [
        "'; DROP TABLE event; --",
        "\" OR 1=1 --",
        "%' OR '1'='1",
        "x') UNION SELECT password_hash FROM app_user --",
    ] {
        let response = app
            .request(Method::GET, "/api/v1/events")
            .query(&[("q", q)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{q}");
        let page: Value = response.json().await.unwrap();
        assert!(page["items"].as_array().unwrap().is_empty(), "{q} matched {page}");
    }
    let control: Value = app.get_json("/api/v1/events").await;
    assert_eq!(control["items"].as_array().unwrap().len(), 1);

    for path in [
        "/api/v1/events/1%27%20OR%20%271%27=%271",
        "/api/v1/venues/%27;DROP%20TABLE%20venue;--",
        "/api/v1/shows/00000000-0000-0000-0000-00000000000x/seats",
        "/api/v1/shows/1;DELETE%20FROM%20show/availability",
    ] {
        let response = app.request(Method::GET, path).send().await.unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_path").await;
    }
    let response = app
        .send(
            Method::GET,
            "/api/v1/admin/shows/'%20OR%201=1/stats",
            Some(&organizer),
            None,
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_path").await;
    for path in ["/api/v1/events/", "/api/v1/shows/", "/api/v1/venues/"] {
        let missing = app
            .request(Method::GET, &format!("{path}{}", uuid::Uuid::now_v7()))
            .send()
            .await
            .unwrap();
        assert_problem(missing, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(app.row_counts().await, before);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_and_every_answer_has_a_request_id() {
    let app = TestApp::spawn().await;
    let response = app.request(Method::GET, "/api/v1/nothing-here").send().await.unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    assert_problem(response, StatusCode::NOT_FOUND, "no_route").await;
    let response = app.request(Method::DELETE, "/api/v1/events").send().await.unwrap();
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;

    let response = app
        .request(Method::GET, "/api/v1/events")
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-123");
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let app = TestApp::spawn_with(|config| config.cors_allowed_origins = vec!["https://tickets.example".into()]).await;
    let preflight = |origin: &'static str| {
        app.request(Method::OPTIONS, "/api/v1/auth/login")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://tickets.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://tickets.example"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(!refused.headers().contains_key("access-control-allow-origin"));
}
