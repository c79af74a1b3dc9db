//! The admin server every process runs on its own port: `/healthz` (the process is alive),
//! `/readyz` (its dependencies answer) and `/metrics` (Prometheus text format). It is kept off
//! the public port so probes and scrapes never compete with fans for the API.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// How long one dependency check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The named dependency checks behind `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, CheckFn)>,
}

impl Readiness {
    /// No checks yet: ready as long as the process runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check; `/readyz` fails while it returns an error or takes over two seconds.
    pub fn with_check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(check()))));
        self
    }

    /// Adds a check that PostgreSQL answers through `pool`.
    pub fn with_postgres(self, pool: sqlx::PgPool) -> Self {
        self.with_check("postgres", move || {
            let pool = pool.clone();
            async move { crate::db::ping(&pool).await.map_err(|err| err.to_string()) }
        })
    }

    /// Adds a check that the RabbitMQ connection is up.
    pub fn with_rabbitmq(self, broker: Arc<crate::mq::Broker>) -> Self {
        self.with_check("rabbitmq", move || {
            let connected = broker.is_connected();
            async move {
                if connected {
                    Ok(())
                } else {
                    Err("connection closed".to_owned())
                }
            }
        })
    }

    async fn run(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let results = futures::future::join_all(self.checks.iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(outcome) => outcome,
                Err(_) => Err("timed out".to_owned()),
            };
            (*name, outcome)
        }))
        .await;
        let mut ready = true;
        let mut report = serde_json::Map::new();
        for (name, outcome) in results {
            let value = match outcome {
                Ok(()) => "ok".to_owned(),
                Err(reason) => {
                    ready = false;
                    tracing::warn!(dependency = name, %reason, "readiness check failed");
                    reason
                }
            };
            report.insert(name.to_owned(), value.into());
        }
        (ready, report)
    }
}

/// The admin router: `/healthz`, `/readyz`, `/metrics`.
pub fn router(readiness: Readiness) -> Router {
    register_build_info();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(readiness))
}

/// Serves the admin router on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, readiness: Readiness, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(readiness))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "alive" }))
}

async fn readyz(State(readiness): State<Arc<Readiness>>) -> Response {
    let (ready, checks) = readiness.run().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": checks,
    });
    (status, Json(body)).into_response()
}

async fn metrics() -> Response {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    match encoder.encode(&prometheus::gather(), &mut buffer) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type().to_owned())], buffer).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Registers a build-info gauge once per process. (CPU, memory and open-file metrics come with
/// the default registry itself: prometheus' `process` feature registers that collector.)
fn register_build_info() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        let info = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("floodgate_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("static metric definition is valid");
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        if let Err(err) = prometheus::register(Box::new(info)) {
            tracing::warn!(error = %err, "build info metric unavailable");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn get_status(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readiness_fails_while_a_check_fails_and_names_it() {
        let readiness = Readiness::new()
            .with_check("good", || async { Ok(()) })
            .with_check("bad", || async { Err("down".to_owned()) });
        let (status, body) = get_status(router(readiness), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"bad\":\"down\""), "{body}");
        assert!(body.contains("\"good\":\"ok\""), "{body}");
    }

    #[tokio::test]
    async fn health_and_metrics_answer_while_ready() {
        let readiness = Readiness::new().with_check("good", || async { Ok(()) });
        let app = router(readiness);
        assert_eq!(get_status(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(get_status(app.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, body) = get_status(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("floodgate_build_info"), "{body}");
    }
}
