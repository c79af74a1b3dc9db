//! Spawning an isolated ingress and talking to it.

use std::{net::SocketAddr, time::Duration};

use common::{ids::ShowId, mq, testing::TestDatabase};
use futures::StreamExt as _;
use ingress::{Application, IngressConfig};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection as _;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};
use tokio_util::sync::CancellationToken;

/// The secret test apps sign tokens with (tests forge tokens with it too).
pub const JWT_SECRET: &str = "test-secret-for-floodgate-ingress-tests";
/// The admission keys of test apps.
pub const ADMISSION_KEYS: &str = "t1:test-admission-secret-0123456789";
/// The admin every test app creates at start-up.
pub const ADMIN_EMAIL: &str = "admin@floodgate.test";
/// Its password.
pub const ADMIN_PASSWORD: &str = "admin password for tests";

/// A running ingress with its own database and broker prefix; everything is removed on drop.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// `http://127.0.0.1:<admin port>`.
    pub admin_base: String,
    /// Client that keeps no cookies and follows no redirects.
    pub client: reqwest::Client,
    /// The test database (dropped last).
    pub db: TestDatabase,
    /// The app's state (to drive extractors directly).
    pub state: ingress::app::AppState,
    mq_prefix: String,
    redis_prefix: String,
    shutdown: CancellationToken,
}

/// Configuration every test app starts from.
pub fn test_config(database_url: &str, mq_prefix: &str) -> IngressConfig {
    let mut config = IngressConfig::from_env().expect("default configuration is valid");
    config.common.database_url = database_url.to_owned();
    config.common.mq_prefix = mq_prefix.to_owned();
    config.common.redis_key_prefix = mq_prefix.to_owned();
    config.admission_token_keys = common::config::Secret::new(ADMISSION_KEYS);
    config.ws_allowed_origins = vec!["https://tickets.example".to_owned()];
    config.common.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.api_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.jwt_secret = common::config::Secret::new(JWT_SECRET);
    config.jwt_previous_secret = None;
    config.bootstrap_admin = Some((ADMIN_EMAIL.to_owned(), common::config::Secret::new(ADMIN_PASSWORD)));
    // Tests register many accounts from one address; the limiter has its own test.
    config.auth_rate_per_minute = 100_000;
    config.auth_rate_burst = 100_000;
    config.migrate_on_start = false;
    config
}

impl TestApp {
    /// An app with the default test configuration.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Polls `/readyz` until it answers 200 (at most 10 s); returns its body.
    pub async fn wait_until_ready(&self) -> serde_json::Value {
        let mut last = None;
        for _ in 0..100 {
            let response = self
                .client
                .get(format!("{}/readyz", self.admin_base))
                .send()
                .await
                .unwrap();
            let ok = response.status() == reqwest::StatusCode::OK;
            let body: serde_json::Value = response.json().await.unwrap();
            if ok {
                return body;
            }
            last = Some(body);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("not ready after 10 s: {last:?}");
    }

    /// An app whose configuration `adjust` may change.
    pub async fn spawn_with(adjust: impl FnOnce(&mut IngressConfig)) -> Self {
        let db = TestDatabase::create().await;
        let mq_prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
        let mut config = test_config(db.url(), &mq_prefix);
        adjust(&mut config);
        let redis_prefix = config.common.redis_key_prefix.clone();
        let app = Application::build(config).await.expect("ingress builds");
        let state = app.state();
        let base = format!("http://{}", app.api_addr());
        let admin_base = format!("http://{}", app.admin_addr());
        let shutdown = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Self {
            base,
            admin_base,
            client,
            db,
            state,
            mq_prefix,
            redis_prefix,
            shutdown,
        }
    }

    /// The Redis key prefix of this app.
    pub fn redis_prefix(&self) -> &str {
        &self.redis_prefix
    }

    /// The RabbitMQ name prefix of this app (a second app on the same database shares it).
    pub fn mq_prefix(&self) -> &str {
        &self.mq_prefix
    }

    /// A request to `path` (starting with `/api/v1`).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// Sends a JSON body with an optional bearer token.
    pub async fn send(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Response {
        let mut request = self.request(method, path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request reaches the app")
    }

    /// GETs `path` without credentials and expects 200; returns the body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get_query(path, &[]).await
    }

    /// GETs `path?query` without credentials and expects 200; returns the body.
    pub async fn get_query(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let response = self
            .request(Method::GET, path)
            .query(query)
            .send()
            .await
            .expect("request reaches the app");
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    /// Registers an account; returns the response.
    pub async fn register(&self, email: &str, password: &str) -> Response {
        self.send(
            Method::POST,
            "/api/v1/auth/register",
            None,
            Some(json!({"email": email, "password": password, "name": "Test Fan"})),
        )
        .await
    }

    /// Logs in; returns the token response (panics unless 200).
    pub async fn login(&self, email: &str, password: &str) -> Value {
        let response = self
            .send(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "login of {email}");
        response.json().await.unwrap()
    }

    /// A new customer's access token.
    pub async fn customer_token(&self) -> String {
        let email = format!("fan-{}@example.com", uuid::Uuid::new_v4().simple());
        assert_eq!(
            self.register(&email, "a long enough password").await.status(),
            StatusCode::CREATED
        );
        self.login(&email, "a long enough password").await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The start-up admin's access token.
    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A new organizer's access token (registered, promoted by the admin, logged in).
    pub async fn organizer_token(&self) -> String {
        let email = format!("organizer-{}@example.com", uuid::Uuid::new_v4().simple());
        let created = self.register(&email, "a long enough password").await;
        assert_eq!(created.status(), StatusCode::CREATED);
        let user: Value = created.json().await.unwrap();
        let admin = self.admin_token().await;
        let path = format!("/api/v1/admin/users/{}/role", user["user_id"].as_str().unwrap());
        let promoted = self
            .send(Method::PUT, &path, Some(&admin), Some(json!({"role": "organizer"})))
            .await;
        assert_eq!(promoted.status(), StatusCode::OK);
        self.login(&email, "a long enough password").await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// POSTs `body` as `token` and expects 201; returns the created object.
    pub async fn create(&self, path: &str, token: &str, body: Value) -> Value {
        let response = self.send(Method::POST, path, Some(token), Some(body)).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "POST {path}: {body}");
        body
    }

    /// A small venue: one section, `rows` rows of `per_row` seats in tier `floor`.
    pub async fn small_venue(&self, token: &str, rows: usize, per_row: usize) -> Value {
        let rows: Vec<Value> = (0..rows)
            .map(|row| json!({"label": format!("R{row}"), "seats": per_row, "tier": "floor"}))
            .collect();
        self.create(
            "/api/v1/admin/venues",
            token,
            json!({"name": "Small Hall", "city": "Utrecht", "address": "Street 1", "timezone": "Europe/Amsterdam",
                   "sections": [{"name": "Floor", "rows": rows}]}),
        )
        .await
    }

    /// An event titled `title`.
    pub async fn event(&self, token: &str, title: &str) -> Value {
        self.create(
            "/api/v1/admin/events",
            token,
            json!({"title": title, "category": "concert", "description": "A night out", "city": "Utrecht"}),
        )
        .await
    }

    /// A show of `event` at `venue`, pricing tier `floor` at 5000.
    pub async fn show(&self, token: &str, event: &Value, venue: &Value) -> Value {
        self.create(
            "/api/v1/admin/shows",
            token,
            show_body(event, venue, json!({"floor": 5000})),
        )
        .await
    }

    /// Row counts of every table, to prove a refused request changed nothing.
    pub async fn row_counts(&self) -> Vec<(String, i64)> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations' ORDER BY 1",
        )
        .fetch_all(self.db.pool())
        .await
        .unwrap();
        let mut counts = Vec::new();
        for table in tables {
            let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM \"{table}\"")))
                .fetch_one(self.db.pool())
                .await
                .unwrap();
            counts.push((table, count));
        }
        counts
    }
}

/// The body of a show creation.
pub fn show_body(event: &Value, venue: &Value, prices: Value) -> Value {
    json!({
        "event_id": event["event_id"], "venue_id": venue["venue_id"],
        "starts_at": "2031-06-01T20:00:00Z", "on_sale_at": "2031-03-01T10:00:00Z",
        "currency": "EUR", "prices": prices, "max_tickets_per_user": 6, "hold_seconds": 600,
        "waiting_room": {"admit_per_second": 50, "max_active": 500, "prequeue_opens_at": "2031-03-01T09:30:00Z"}
    })
}

/// Asserts a problem+json answer with `status` and `code`; returns the body.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "url {}", response.url());
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["type"].is_string() && body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // Delete this test's exchanges and queues; the database goes when `db` drops.
        // A thread with its own runtime and connections: this one is blocked while we wait.
        let prefix = self.mq_prefix.clone();
        let database_url = self.db.url().to_owned();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let shows: Vec<ShowId> = match sqlx::PgConnection::connect(&database_url).await {
                    Ok(mut connection) => sqlx::query_scalar("SELECT show_id FROM show")
                        .fetch_all(&mut connection)
                        .await
                        .unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                let url = common::config::env_string("AMQP_URL", common::config::defaults::AMQP_URL);
                if let Ok(connection) = mq::connect(&url, "test-cleanup").await
                    && let Ok(channel) = connection.create_channel().await
                {
                    let _ = mq::Topology::new(prefix).delete(&channel, &shows).await;
                    let _ = connection.close(200, "done".into()).await;
                }
            });
        });
        let _ = cleanup.join();
        delete_redis_keys(&self.redis_prefix);
    }
}

/// Deletes every Redis key starting with `prefix` (blocking: called from `Drop`).
pub fn delete_redis_keys(prefix: &str) {
    let url = common::config::env_string("REDIS_URL", common::config::defaults::REDIS_URL);
    if let Ok(client) = redis::Client::open(url)
        && let Ok(mut connection) = client.get_connection()
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut connection)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut connection);
        }
    }
}

/// The `kid` ingress puts on access tokens signed with [`JWT_SECRET`] (tests forge tokens).
pub fn access_kid() -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(JWT_SECRET.as_bytes())[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A client WebSocket.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the show's waiting-room WebSocket as `access` (query parameter) with `origin`.
pub async fn connect(
    app: &TestApp,
    show: &str,
    access: Option<&str>,
    origin: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let mut url = format!("{}/api/v1/shows/{show}/queue/ws", app.base.replace("http://", "ws://"));
    if let Some(access) = access {
        url.push_str(&format!("?access_token={access}"));
    }
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The next JSON text message (10 s at most).
pub async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .unwrap();
        if let tungstenite::Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}
