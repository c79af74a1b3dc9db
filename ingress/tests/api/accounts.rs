//! API.md "Accounts".

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_EMAIL, JWT_SECRET, TestApp, assert_problem};

#[tokio::test]
async fn register_login_refresh_logout_and_me_work_and_a_rotated_refresh_token_stops_working() {
    let app = TestApp::spawn().await;

    let created = app.register("Jane.Doe@Example.com", "correct horse battery").await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let user: Value = created.json().await.unwrap();
    assert_eq!(user["email"], "jane.doe@example.com");
    assert_eq!(user["role"], "customer");

    let tokens = app.login("jane.doe@example.com", "correct horse battery").await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_in"].as_u64().unwrap() > 0);
    let access = tokens["access_token"].as_str().unwrap();
    let me: Value = app
        .send(Method::GET, "/api/v1/me", Some(access), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["user_id"], user["user_id"]);

    let first_refresh = tokens["refresh_token"].as_str().unwrap();
    let refreshed = app
        .send(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": first_refresh})),
        )
        .await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let refreshed: Value = refreshed.json().await.unwrap();
    let second_refresh = refreshed["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second_refresh, first_refresh);
    let me = app
        .send(Method::GET, "/api/v1/me", refreshed["access_token"].as_str(), None)
        .await;
    assert_eq!(me.status(), StatusCode::OK);

    // The old refresh token no longer works...
    let reused = app
        .send(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": first_refresh})),
        )
        .await;
    assert_problem(reused, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    // ...and presenting it revoked the whole family, including the token it was rotated into.
    let after_theft = app
        .send(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": second_refresh})),
        )
        .await;
    assert_problem(after_theft, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;

    // Logout revokes a live refresh token.
    let tokens = app.login("jane.doe@example.com", "correct horse battery").await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let logout = app
        .send(
            Method::POST,
            "/api/v1/auth/logout",
            None,
            Some(json!({"refresh_token": refresh})),
        )
        .await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let after_logout = app
        .send(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh})),
        )
        .await;
    assert_problem(after_logout, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;

    let my_bookings: Value = app
        .send(Method::GET, "/api/v1/me/bookings", Some(access), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(my_bookings["items"], json!([]));
}

#[tokio::test]
async fn a_duplicate_email_is_409_whatever_its_case() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.register("dup@example.com", "a long enough password").await.status(),
        StatusCode::CREATED
    );
    assert_problem(
        app.register("DUP@example.com", "another long password").await,
        StatusCode::CONFLICT,
        "email_taken",
    )
    .await;
}

#[tokio::test]
async fn weak_passwords_and_malformed_emails_are_400_and_create_nothing() {
    let app = TestApp::spawn().await;
    let before = app.row_counts().await;
    for password in ["short", "password123", "aaaaaaaaaaaaaaa", &"x".repeat(200)] {
        assert_problem(
            app.register("weak@example.com", password).await,
            StatusCode::BAD_REQUEST,
            "weak_password",
        )
        .await;
    }
    for email in [
        "not-an-email",
        "a@b",
        "two@@example.com",
        "spaces in@example.com",
        "x@-bad-.com",
    ] {
        assert_problem(
            app.register(email, "a long enough password").await,
            StatusCode::BAD_REQUEST,
            "invalid_email",
        )
        .await;
    }
    assert_eq!(app.row_counts().await, before);
}

#[tokio::test]
async fn unknown_users_and_wrong_passwords_get_the_same_401() {
    let app = TestApp::spawn().await;
    app.register("known@example.com", "a long enough password").await;
    for (email, password) in [
        ("known@example.com", "the wrong password"),
        ("nobody@example.com", "a long enough password"),
    ] {
        let response = app
            .send(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await;
        let body = assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
        assert_eq!(body["detail"], "E-mail or password is wrong.");
    }
}

fn forge(claims: Value, secret: &str, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

#[tokio::test]
async fn tampered_expired_alg_none_and_wrong_audience_tokens_are_401() {
    let app = TestApp::spawn().await;
    let valid = app.customer_token().await;
    let me: Value = app
        .send(Method::GET, "/api/v1/me", Some(&valid), None)
        .await
        .json()
        .await
        .unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    let claims = |aud: &str, exp: u64| {
        json!({"sub": me["user_id"], "role": "admin", "iss": "floodgate", "aud": aud,
               "iat": now - 1000, "exp": exp, "jti": uuid::Uuid::new_v4()})
    };
    let own_kid = crate::helpers::access_kid();

    // A well-formed token with our key works (control), so the refusals below are meaningful.
    let control = forge(claims("floodgate-api", now + 600), JWT_SECRET, Some(&own_kid));
    assert_eq!(
        app.send(Method::GET, "/api/v1/me", Some(&control), None).await.status(),
        StatusCode::OK
    );

    // Tampered: the payload is changed after signing.
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: Value = serde_json::from_slice(&engine.decode(&parts[1]).unwrap()).unwrap();
    payload["role"] = json!("admin");
    parts[1] = engine.encode(serde_json::to_vec(&payload).unwrap());
    let tampered = parts.join(".");
    // Expired past the library's 60 s leeway.
    let expired = forge(claims("floodgate-api", now - 120), JWT_SECRET, Some(&own_kid));
    // Another audience.
    let wrong_audience = forge(claims("somebody-else", now + 600), JWT_SECRET, Some(&own_kid));
    // Another key.
    let wrong_key = forge(claims("floodgate-api", now + 600), "not our secret", Some(&own_kid));
    // alg: none, unsigned.
    let none_header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let none_payload = engine.encode(serde_json::to_vec(&claims("floodgate-api", now + 600)).unwrap());
    let alg_none = format!("{none_header}.{none_payload}.");

    for (what, token) in [
        ("tampered", tampered),
        ("expired", expired),
        ("wrong audience", wrong_audience),
        ("wrong key", wrong_key),
        ("alg none", alg_none),
        ("garbage", "not.a.token".to_owned()),
    ] {
        let response = app.send(Method::GET, "/api/v1/me", Some(&token), None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    let missing = app.send(Method::GET, "/api/v1/me", None, None).await;
    assert_problem(missing, StatusCode::UNAUTHORIZED, "missing_token").await;
}

#[tokio::test]
async fn a_customer_calling_an_admin_route_is_403_and_the_admin_exists_from_start_up() {
    let app = TestApp::spawn().await;
    let customer = app.customer_token().await;
    let response = app
        .send(
            Method::POST,
            "/api/v1/admin/events",
            Some(&customer),
            Some(json!({"title": "Nope", "category": "concert", "city": "Utrecht"})),
        )
        .await;
    assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;

    let admin = app.admin_token().await;
    let me: Value = app
        .send(Method::GET, "/api/v1/me", Some(&admin), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], ADMIN_EMAIL);
    assert_eq!(me["role"], "admin");
    let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM app_user WHERE role = 'admin'")
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(admins, 1);
}

#[tokio::test]
async fn the_configured_admin_credentials_are_applied_at_every_start() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.register("boss@example.com", "the first password").await.status(),
        StatusCode::CREATED
    );

    // Another replica starts with the operator's new admin settings naming that account.
    let mut config = crate::helpers::test_config(app.db.url(), app.mq_prefix());
    config.bootstrap_admin = Some((
        "boss@example.com".into(),
        common::config::Secret::new("the rotated password"),
    ));
    let replica = ingress::Application::build(config).await.unwrap();
    drop(replica);

    let tokens = app.login("boss@example.com", "the rotated password").await;
    let me: Value = app
        .send(Method::GET, "/api/v1/me", tokens["access_token"].as_str(), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");
    let old = app
        .send(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "boss@example.com", "password": "the first password"})),
        )
        .await;
    assert_problem(old, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
}

#[tokio::test]
async fn login_and_register_are_rate_limited_per_client_with_retry_after() {
    let app = TestApp::spawn_with(|config| {
        config.auth_rate_per_minute = 6;
        config.auth_rate_burst = 3;
    })
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for attempt in 0..5 {
        let response = app
            .send(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"email": format!("x{attempt}@example.com"), "password": "whatever it is"})),
            )
            .await;
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
        }
    }
    assert_eq!(&statuses[..3], [StatusCode::UNAUTHORIZED; 3]);
    assert_eq!(&statuses[3..], [StatusCode::TOO_MANY_REQUESTS; 2]);
    assert!((1..=60).contains(&retry_after.expect("Retry-After is set")));
    // Register shares the same bucket.
    let blocked = app.register("limited@example.com", "a long enough password").await;
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
}
