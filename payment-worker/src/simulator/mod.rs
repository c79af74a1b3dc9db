//! The gateway simulator: an in-memory, Stripe-shaped payment gateway for development, tests and
//! the load generator (DESIGN.md "Payments"). Bodies are JSON (Stripe itself takes form
//! encoding; the shapes of objects and errors are Stripe's).
//!
//! API:
//! - `POST /v1/payment_intents` `{amount, currency, payment_method, metadata}`: created and
//!   confirmed at once. `200` with the intent (`status: succeeded`), or `402` with a `card_error`
//!   whose `payment_intent` has `status: requires_payment_method` and `last_payment_error`.
//! - `GET /v1/payment_intents/{id}`.
//! - `GET /v1/payment_intents/search?query=metadata['<key>']:'<value>'` (Stripe's search
//!   syntax, one metadata clause): how a client that lost an answer finds its charge again
//!   (the payment-worker searches by `metadata['payment_id']`).
//! - `POST /v1/refunds` `{payment_intent, amount?, metadata?}` (whole remainder when `amount` is
//!   absent; never more than was charged); `GET /v1/refunds/{id}`.
//! - `GET /v1/_ledger`: every charge, decline and refund taken, with totals (tests, loadgen).
//! - `GET /healthz`.
//!
//! `Idempotency-Key` on both `POST`s, as Stripe: the same key with the same parameters returns
//! the stored answer (header `Idempotent-Replayed: true`); with other parameters, `400`
//! `idempotency_error`; while the first request is still being processed, `409`
//! `idempotency_key_in_use`. A `5xx` is never stored, so a retry after it runs again.
//!
//! Test card tokens: `tok_visa` (also `tok_mastercard`, `tok_amex`) succeeds;
//! `tok_chargeDeclined` is declined with `card_declined`; `tok_timeout_after_charge` charges and
//! stores the answer, then holds the response for `hang` (longer than any client timeout);
//! `tok_flaky` answers `500` the first time a key is used, then succeeds; `tok_slow` answers
//! after `slow`. Any other token: `400 resource_missing`.
//!
//! Webhooks: see [`webhooks`]; signatures: see [`signature`].

pub use common::signature;
pub mod webhooks;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use common::config::{ConfigError, env_or, env_string};
use rand::RngExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::webhooks::{DeliveryConfig, Emitter};

/// The webhook secret used when `GATEWAY_WEBHOOK_SECRET` is unset (ingress's default must be
/// the same; `scripts/up` should set a real one).
pub const DEVELOPMENT_WEBHOOK_SECRET: &str = common::config::defaults::GATEWAY_WEBHOOK_SECRET;

/// Settings of the simulator.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// `GATEWAY_SIM_LISTEN` (127.0.0.1:8090).
    pub listen: SocketAddr,
    /// `GATEWAY_WEBHOOK_URL` (http://127.0.0.1:8080/api/v1/payments/webhook; `off` disables).
    pub webhook_url: Option<String>,
    /// `GATEWAY_WEBHOOK_SECRET`.
    pub webhook_secret: String,
    /// `GATEWAY_SIM_DUPLICATES`: deliveries of each event (1).
    pub duplicates: u32,
    /// `GATEWAY_SIM_SHUFFLE`: shuffle each window's deliveries (false).
    pub shuffle: bool,
    /// `GATEWAY_SIM_WEBHOOK_WINDOW_MS`: how long events gather before delivery (50).
    pub webhook_window: Duration,
    /// `GATEWAY_SIM_WEBHOOK_ATTEMPTS`: attempts per delivery (10).
    pub webhook_attempts: u32,
    /// `GATEWAY_SIM_WEBHOOK_RETRY_MS`: first retry delay, doubling (500).
    pub webhook_retry: Duration,
    /// `GATEWAY_SIM_SLOW_MS`: how long `tok_slow` takes (3000).
    pub slow: Duration,
    /// `GATEWAY_SIM_HANG_MS`: how long `tok_timeout_after_charge` holds its answer (30000).
    pub hang: Duration,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            webhook_url: Some("http://127.0.0.1:8080/api/v1/payments/webhook".to_owned()),
            webhook_secret: DEVELOPMENT_WEBHOOK_SECRET.to_owned(),
            duplicates: 1,
            shuffle: false,
            webhook_window: Duration::from_millis(50),
            webhook_attempts: 10,
            webhook_retry: Duration::from_millis(500),
            slow: Duration::from_secs(3),
            hang: Duration::from_secs(30),
        }
    }
}

impl SimulatorConfig {
    /// Reads the settings from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let url = env_string(
            "GATEWAY_WEBHOOK_URL",
            defaults.webhook_url.as_deref().unwrap_or_default(),
        );
        Ok(Self {
            listen: env_or("GATEWAY_SIM_LISTEN", defaults.listen)?,
            webhook_url: (url != "off").then_some(url),
            webhook_secret: env_string("GATEWAY_WEBHOOK_SECRET", DEVELOPMENT_WEBHOOK_SECRET),
            duplicates: env_or("GATEWAY_SIM_DUPLICATES", defaults.duplicates)?,
            shuffle: env_or("GATEWAY_SIM_SHUFFLE", defaults.shuffle)?,
            webhook_window: Duration::from_millis(env_or("GATEWAY_SIM_WEBHOOK_WINDOW_MS", 50)?),
            webhook_attempts: env_or("GATEWAY_SIM_WEBHOOK_ATTEMPTS", defaults.webhook_attempts)?,
            webhook_retry: Duration::from_millis(env_or("GATEWAY_SIM_WEBHOOK_RETRY_MS", 500)?),
            slow: Duration::from_millis(env_or("GATEWAY_SIM_SLOW_MS", 3000)?),
            hang: Duration::from_millis(env_or("GATEWAY_SIM_HANG_MS", 30_000)?),
        })
    }
}

/// A new object id such as `pi_3f9a...`.
pub(crate) fn new_id(prefix: &str) -> String {
    let bytes: [u8; 12] = rand::rng().random();
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{suffix}")
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Where a key's request stands.
enum Idempotent {
    /// Being processed: a concurrent request with the key gets 409.
    InFlight { params: Value },
    /// Answered: the same request gets this answer again.
    Done {
        params: Value,
        status: StatusCode,
        body: Value,
    },
}

#[derive(Default)]
struct Ledger {
    charges: Vec<Value>,
    declines: Vec<Value>,
    refunds: Vec<Value>,
}

#[derive(Default)]
struct Inner {
    intents: HashMap<String, Value>,
    refunds: HashMap<String, Value>,
    /// Per endpoint and key.
    keys: HashMap<(&'static str, String), Idempotent>,
    /// Keys (or bodies, without a key) `tok_flaky` already failed once.
    flaky_failed: HashSet<String>,
    ledger: Ledger,
}

/// The simulator's state, shared by its handlers.
#[derive(Clone)]
pub struct Simulator {
    config: Arc<SimulatorConfig>,
    inner: Arc<Mutex<Inner>>,
    emitter: Emitter,
}

impl Simulator {
    /// A simulator delivering webhooks until `shutdown`.
    pub fn new(config: SimulatorConfig, shutdown: CancellationToken) -> Self {
        let emitter = webhooks::spawn(
            DeliveryConfig {
                url: config.webhook_url.clone(),
                secret: config.webhook_secret.clone(),
                duplicates: config.duplicates,
                shuffle: config.shuffle,
                window: config.webhook_window,
                max_attempts: config.webhook_attempts.max(1),
                retry_min: config.webhook_retry,
            },
            shutdown,
        );
        Self {
            config: Arc::new(config),
            inner: Arc::new(Mutex::new(Inner::default())),
            emitter,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The HTTP API.
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { Json(json!({ "status": "alive" })) }))
            .route("/v1/payment_intents", post(create_intent))
            .route("/v1/payment_intents/search", get(search_intents))
            .route("/v1/payment_intents/{id}", get(get_intent))
            .route("/v1/refunds", post(create_refund))
            .route("/v1/refunds/{id}", get(get_refund))
            .route("/v1/_ledger", get(ledger))
            .with_state(self)
    }
}

/// Serves the simulator on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, config: SimulatorConfig, shutdown: CancellationToken) -> std::io::Result<()> {
    let simulator = Simulator::new(config, shutdown.clone());
    axum::serve(listener, simulator.router())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// A Stripe-shaped error answer.
fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> (StatusCode, Value) {
    (
        status,
        json!({ "error": { "type": kind, "code": code, "message": message } }),
    )
}

fn invalid(code: &str, message: &str) -> (StatusCode, Value) {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
}

fn respond((status, body): (StatusCode, Value)) -> Response {
    (status, Json(body)).into_response()
}

/// What to do with a request carrying an idempotency key.
enum Admission {
    /// Process it (the key, if any, is now in flight).
    Proceed,
    /// Answer this at once.
    Answer(Response),
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

impl Simulator {
    fn admit(&self, endpoint: &'static str, key: Option<&str>, params: &Value) -> Admission {
        let Some(key) = key else {
            return Admission::Proceed;
        };
        let mut inner = self.lock();
        match inner.keys.get(&(endpoint, key.to_owned())) {
            None => {
                inner.keys.insert(
                    (endpoint, key.to_owned()),
                    Idempotent::InFlight { params: params.clone() },
                );
                Admission::Proceed
            }
            Some(Idempotent::InFlight { params: first } | Idempotent::Done { params: first, .. })
                if first != params =>
            {
                Admission::Answer(respond(error(
                    StatusCode::BAD_REQUEST,
                    "idempotency_error",
                    "idempotency_key_reused",
                    "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                )))
            }
            Some(Idempotent::InFlight { .. }) => Admission::Answer(respond(error(
                StatusCode::CONFLICT,
                "idempotency_error",
                "idempotency_key_in_use",
                "There is currently another in-progress request using this Idempotency-Key.",
            ))),
            Some(Idempotent::Done { status, body, .. }) => {
                let mut response = (*status, Json(body.clone())).into_response();
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                Admission::Answer(response)
            }
        }
    }

    /// Stores the answer for the key (a 5xx is forgotten instead, so a retry runs again).
    fn settle(&self, endpoint: &'static str, key: Option<&str>, params: Value, answer: &(StatusCode, Value)) {
        let Some(key) = key else { return };
        let mut inner = self.lock();
        if answer.0.is_server_error() {
            inner.keys.remove(&(endpoint, key.to_owned()));
        } else {
            inner.keys.insert(
                (endpoint, key.to_owned()),
                Idempotent::Done {
                    params,
                    status: answer.0,
                    body: answer.1.clone(),
                },
            );
        }
    }
}

/// `POST /v1/payment_intents` parameters.
#[derive(Debug, Deserialize)]
struct CreateIntent {
    amount: i64,
    currency: String,
    payment_method: String,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
}

async fn create_intent(State(sim): State<Simulator>, headers: HeaderMap, Json(params): Json<Value>) -> Response {
    const ENDPOINT: &str = "payment_intents";
    let key = idempotency_key(&headers);
    if let Admission::Answer(response) = sim.admit(ENDPOINT, key.as_deref(), &params) {
        return response;
    }
    let answer = match serde_json::from_value::<CreateIntent>(params.clone()) {
        Err(err) => invalid("parameter_invalid", &err.to_string()),
        Ok(request) if request.amount <= 0 => invalid("parameter_invalid_integer", "amount must be positive"),
        Ok(request) => {
            if request.payment_method == "tok_slow" {
                tokio::time::sleep(sim.config.slow).await;
            }
            let flaky_key = key.clone().unwrap_or_else(|| params.to_string());
            if request.payment_method == "tok_flaky" && sim.lock().flaky_failed.insert(flaky_key) {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "internal_error",
                    "Simulated gateway failure (tok_flaky); retry with the same key.",
                )
            } else {
                sim.confirm(request, key.as_deref())
            }
        }
    };
    sim.settle(ENDPOINT, key.as_deref(), params.clone(), &answer);
    if params["payment_method"] == "tok_timeout_after_charge" && answer.0.is_success() {
        // The charge is taken and its answer stored; this response arrives after the client
        // gave up, and only a retry with the same key learns the outcome.
        tokio::time::sleep(sim.config.hang).await;
    }
    respond(answer)
}

impl Simulator {
    /// Creates and confirms an intent: the charge, the ledger entry and its webhook.
    fn confirm(&self, request: CreateIntent, key: Option<&str>) -> (StatusCode, Value) {
        let declined = match request.payment_method.as_str() {
            "tok_visa" | "tok_mastercard" | "tok_amex" | "tok_slow" | "tok_flaky" | "tok_timeout_after_charge" => false,
            "tok_chargeDeclined" => true,
            other => return invalid("resource_missing", &format!("No such token: '{other}'")),
        };
        let id = new_id("pi");
        let mut intent = json!({
            "id": id,
            "object": "payment_intent",
            "amount": request.amount,
            "amount_received": if declined { 0 } else { request.amount },
            "amount_refunded": 0,
            "currency": request.currency.to_ascii_lowercase(),
            "payment_method": request.payment_method,
            "metadata": request.metadata,
            "created": now(),
            "status": if declined { "requires_payment_method" } else { "succeeded" },
            "last_payment_error": null,
        });
        let entry = json!({
            "payment_intent": id,
            "amount": request.amount,
            "currency": request.currency.to_ascii_lowercase(),
            "payment_method": request.payment_method,
            "metadata": intent["metadata"],
            "idempotency_key": key,
            "created": now(),
        });
        if declined {
            intent["last_payment_error"] = json!({
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "generic_decline",
                "message": "Your card was declined.",
            });
        }
        {
            let mut inner = self.lock();
            inner.intents.insert(id.clone(), intent.clone());
            if declined {
                inner.ledger.declines.push(entry);
            } else {
                inner.ledger.charges.push(entry);
            }
        }
        if declined {
            self.emitter.emit("payment_intent.payment_failed", intent.clone());
            (
                StatusCode::PAYMENT_REQUIRED,
                json!({ "error": {
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "generic_decline",
                    "message": "Your card was declined.",
                    "payment_intent": intent,
                }}),
            )
        } else {
            self.emitter.emit("payment_intent.succeeded", intent.clone());
            (StatusCode::OK, intent)
        }
    }
}

async fn get_intent(State(sim): State<Simulator>, Path(id): Path<String>) -> Response {
    match sim.lock().intents.get(&id) {
        Some(intent) => Json(intent.clone()).into_response(),
        None => respond(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            &format!("No such payment_intent: '{id}'"),
        )),
    }
}

#[derive(Deserialize)]
struct SearchQuery {
    query: String,
}

/// Parses `metadata['key']:'value'`.
fn metadata_clause(query: &str) -> Option<(&str, &str)> {
    let rest = query.trim().strip_prefix("metadata['")?;
    let (key, rest) = rest.split_once("']:")?;
    let value = rest.strip_prefix('\'')?.strip_suffix('\'')?;
    Some((key, value))
}

async fn search_intents(State(sim): State<Simulator>, Query(search): Query<SearchQuery>) -> Response {
    let Some((key, value)) = metadata_clause(&search.query) else {
        return respond(invalid(
            "parameter_invalid",
            "only `metadata['<key>']:'<value>'` queries are supported",
        ));
    };
    let mut data: Vec<Value> = sim
        .lock()
        .intents
        .values()
        .filter(|intent| intent["metadata"][key] == value)
        .cloned()
        .collect();
    data.sort_by_key(|intent| intent["created"].as_i64());
    Json(json!({ "object": "search_result", "data": data, "has_more": false })).into_response()
}

/// `POST /v1/refunds` parameters.
#[derive(Debug, Deserialize)]
struct CreateRefund {
    payment_intent: String,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
}

async fn create_refund(State(sim): State<Simulator>, headers: HeaderMap, Json(params): Json<Value>) -> Response {
    const ENDPOINT: &str = "refunds";
    let key = idempotency_key(&headers);
    if let Admission::Answer(response) = sim.admit(ENDPOINT, key.as_deref(), &params) {
        return response;
    }
    let answer = match serde_json::from_value::<CreateRefund>(params.clone()) {
        Err(err) => invalid("parameter_invalid", &err.to_string()),
        Ok(request) => sim.refund(request, key.as_deref()),
    };
    sim.settle(ENDPOINT, key.as_deref(), params, &answer);
    respond(answer)
}

impl Simulator {
    fn refund(&self, request: CreateRefund, key: Option<&str>) -> (StatusCode, Value) {
        let refund = {
            let mut inner = self.lock();
            let Some(intent) = inner.intents.get_mut(&request.payment_intent) else {
                return invalid(
                    "resource_missing",
                    &format!("No such payment_intent: '{}'", request.payment_intent),
                );
            };
            if intent["status"] != "succeeded" {
                return invalid("charge_not_succeeded", "This payment intent has no successful charge.");
            }
            let charged = intent["amount"].as_i64().unwrap_or_default();
            let refunded = intent["amount_refunded"].as_i64().unwrap_or_default();
            let remaining = charged - refunded;
            let amount = request.amount.unwrap_or(remaining);
            if remaining <= 0 {
                return invalid("charge_already_refunded", "This charge has already been refunded.");
            }
            if amount <= 0 || amount > remaining {
                return invalid(
                    "amount_too_large",
                    &format!("Refund amount ({amount}) is greater than the unrefunded amount ({remaining})."),
                );
            }
            intent["amount_refunded"] = json!(refunded + amount);
            let refund = json!({
                "id": new_id("re"),
                "object": "refund",
                "amount": amount,
                "currency": intent["currency"],
                "payment_intent": request.payment_intent,
                "metadata": request.metadata,
                "status": "succeeded",
                "created": now(),
            });
            inner
                .refunds
                .insert(refund["id"].as_str().unwrap_or_default().to_owned(), refund.clone());
            let mut entry = refund.clone();
            entry["idempotency_key"] = json!(key);
            inner.ledger.refunds.push(entry);
            refund
        };
        self.emitter.emit("refund.succeeded", refund.clone());
        (StatusCode::OK, refund)
    }
}

async fn get_refund(State(sim): State<Simulator>, Path(id): Path<String>) -> Response {
    match sim.lock().refunds.get(&id) {
        Some(refund) => Json(refund.clone()).into_response(),
        None => respond(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            &format!("No such refund: '{id}'"),
        )),
    }
}

async fn ledger(State(sim): State<Simulator>) -> Json<Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = sim.emitter.stats();
    let inner = sim.lock();
    let sum = |entries: &[Value]| entries.iter().filter_map(|e| e["amount"].as_i64()).sum::<i64>();
    Json(json!({
        "charges": inner.ledger.charges,
        "declines": inner.ledger.declines,
        "refunds": inner.ledger.refunds,
        "charged_cents": sum(&inner.ledger.charges),
        "refunded_cents": sum(&inner.ledger.refunds),
        "webhooks": {
            "events": stats.events.load(Relaxed),
            "delivered": stats.delivered.load(Relaxed),
            "failed_attempts": stats.failed_attempts.load(Relaxed),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metadata_search_clause_is_parsed() {
        assert_eq!(
            metadata_clause("metadata['payment_id']:'abc-1'"),
            Some(("payment_id", "abc-1"))
        );
        assert_eq!(metadata_clause("status:'succeeded'"), None);
        assert_eq!(metadata_clause("metadata['a']:b"), None);
    }
}
