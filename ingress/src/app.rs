//! Building and running the ingress service: the state every handler shares, the middleware
//! stack every route gets (request ids, a span per request, metrics, CORS, body limit,
//! compression, panics as opaque 500s), the public listener and the admin listener.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderName, HeaderValue, Method, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use common::{admin::Readiness, config::Secret, db, ids::UserId, mq, tickets::TicketSigner};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::{
    catch_panic::CatchPanicLayer,
    compression::CompressionLayer,
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use waiting_room::{AdmissionTokens, WaitingRoom};

use crate::{
    auth::{password, rate_limit::ClientLimiter, tokens::TokenKeys},
    config::IngressConfig,
    domain::{Email, Role},
    error::{self, ApiError},
    metrics,
    room::RoomHub,
    routes,
    store::{sessions, users},
};

/// Request bodies above this size are refused with 413 (API.md "Conventions").
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// How long a publish may wait for the broker's confirm before the caller answers 503.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL.
    pub db: PgPool,
    /// Access-token keys.
    pub tokens: Arc<TokenKeys>,
    /// Refresh-token lifetime.
    pub refresh_ttl: Duration,
    /// Login/register limiter.
    pub auth_limiter: Arc<ClientLimiter>,
    /// RabbitMQ (show queues are declared when shows are created).
    pub broker: Arc<mq::Broker>,
    /// Waiting rooms: operations, this instance's subscription and heartbeats.
    pub hub: Arc<RoomHub>,
    /// Signs and verifies admission tokens.
    pub admission_tokens: Arc<AdmissionTokens>,
    /// Origins allowed to open the waiting-room WebSocket.
    pub ws_allowed_origins: Arc<[String]>,
    /// The longest a waiting fan goes without hearing the serving number move.
    pub ws_position_max_interval: Duration,
    /// Cancelled at shutdown: long-lived sockets close with "server restarting".
    pub shutdown: CancellationToken,
    /// Hold requests: results from the writers, show terms, request bookkeeping.
    pub holds: Arc<routes::holds::HoldsContext>,
    /// Seat layouts and availability snapshots.
    pub seat_maps: Arc<crate::seatmap::SeatMaps>,
    /// Verifies ticket signatures at check-in.
    pub ticket_signer: Arc<TicketSigner>,
    /// The HMAC key of the payment gateway's webhook signatures.
    pub gateway_webhook_secret: Secret,
}

/// A built, bound, not yet running ingress.
pub struct Application {
    api_listener: TcpListener,
    admin_listener: TcpListener,
    router: Router,
    readiness: Readiness,
    state: AppState,
    redis_url: String,
}

impl Application {
    /// Connects to the dependencies, applies migrations (unless disabled), creates the first
    /// admin if asked to, declares the RabbitMQ topology and binds both listeners.
    pub async fn build(config: IngressConfig) -> anyhow::Result<Self> {
        crate::metrics::register();
        if config.uses_development_secret() {
            tracing::warn!(
                "a development secret is in use (JWT_SECRET, ADMISSION_TOKEN_KEYS or GATEWAY_WEBHOOK_SECRET unset); \
                 never do this in production"
            );
        }
        let pool = db::pool(&config.common.database_url, config.common.database_max_connections)?;
        if config.migrate_on_start {
            db::migrate(&pool).await.context("cannot apply migrations")?;
        }
        if let Some((email, password)) = &config.bootstrap_admin {
            ensure_admin(&pool, email, password).await?;
        }
        let broker = mq::Broker::start(
            &config.common.amqp_url,
            "ingress",
            mq::Topology::new(config.common.mq_prefix.clone()),
            CONFIRM_TIMEOUT,
        )
        .await;
        let redis = waiting_room::room::connect(&config.common.redis_url)
            .await
            .context("invalid REDIS_URL")?;
        let holds = Arc::new(routes::holds::HoldsContext::new(
            redis.clone(),
            config.common.redis_key_prefix.clone(),
        ));
        let seat_maps = Arc::new(crate::seatmap::SeatMaps::new(
            redis.clone(),
            config.common.redis_key_prefix.clone(),
        ));
        let hub = RoomHub::new(WaitingRoom::new(redis, config.common.redis_key_prefix.clone()));
        let admission_tokens = AdmissionTokens::from_key_list(config.admission_token_keys.expose())?;
        let state = AppState {
            db: pool.clone(),
            tokens: Arc::new(TokenKeys::new(
                &config.jwt_secret,
                config.jwt_previous_secret.as_ref(),
                config.access_token_ttl,
            )),
            refresh_ttl: config.refresh_token_ttl,
            auth_limiter: ClientLimiter::new(
                config.auth_rate_per_minute,
                config.auth_rate_burst,
                config.trust_forwarded_for,
            ),
            broker,
            hub,
            admission_tokens: Arc::new(admission_tokens),
            ws_allowed_origins: config.ws_allowed_origins.clone().into(),
            ws_position_max_interval: config.ws_position_max_interval,
            shutdown: CancellationToken::new(),
            holds,
            seat_maps,
            ticket_signer: Arc::new(TicketSigner::new(config.ticket_signing_key.expose())),
            gateway_webhook_secret: config.gateway_webhook_secret.clone(),
        };
        let hub = Arc::clone(&state.hub);
        let readiness = Readiness::new()
            .with_postgres(pool)
            .with_rabbitmq(Arc::clone(&state.broker))
            .with_check("hold_results", {
                let results = Arc::clone(&state.holds.results);
                move || {
                    let consuming = results.is_consuming();
                    async move {
                        if consuming {
                            Ok(())
                        } else {
                            Err("not consuming hold results yet".to_owned())
                        }
                    }
                }
            })
            .with_check("redis", move || {
                let hub = Arc::clone(&hub);
                async move { hub.rooms().ping().await.map_err(|err| err.to_string()) }
            });
        let router = router(state.clone(), &config.cors_allowed_origins);
        let api_listener = TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.api_listen))?;
        let admin_listener = TcpListener::bind(config.common.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.common.admin_listen))?;
        Ok(Self {
            api_listener,
            admin_listener,
            router,
            readiness,
            state,
            redis_url: config.common.redis_url.clone(),
        })
    }

    /// The public API address (useful with port 0 in tests).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_listener.local_addr().expect("a bound listener has an address")
    }

    /// The shared state (tests drive extractors with it).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests and closes the
    /// broker connection.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(api = %self.api_addr(), admin = %self.admin_addr(), "ingress listening");
        self.state.auth_limiter.spawn_cleanup(shutdown.clone());
        let broker = self.state.broker.spawn_supervisor(shutdown.clone());
        let hub = self.state.hub.spawn(self.redis_url.clone(), shutdown.clone());
        let results =
            tokio::spawn(Arc::clone(&self.state.holds.results).run(Arc::clone(&self.state.broker), shutdown.clone()));
        // Sockets watch the state's token; tie it to the process's.
        let sockets = self.state.shutdown.clone();
        let watcher = shutdown.clone();
        tokio::spawn(async move {
            watcher.cancelled().await;
            sockets.cancel();
        });
        let api = axum::serve(
            self.api_listener,
            self.router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown({
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        });
        let admin = common::admin::serve(self.admin_listener, self.readiness, shutdown.clone());
        let (api, admin) = tokio::join!(api, admin);
        api.context("API server failed")?;
        admin.context("admin server failed")?;
        // In-flight requests have drained; only now let the broker connection go.
        broker.await.context("broker supervisor failed")?;
        hub.await.context("waiting-room hub failed")?;
        results.await.context("hold results consumer failed")?;
        self.state.broker.close().await;
        tracing::info!("ingress stopped");
        Ok(())
    }
}

/// Makes the account named by `FLOODGATE_ADMIN_EMAIL`/`FLOODGATE_ADMIN_PASSWORD` an admin
/// with that password: created when missing, promoted and its password re-set when it exists.
/// The configured credentials are authoritative, so an operator who rotates them (or a
/// re-provisioned demo) can always log in. Several replicas starting at once race harmlessly:
/// the unique e-mail index lets one insert win.
async fn ensure_admin(pool: &PgPool, email: &str, password: &Secret) -> anyhow::Result<()> {
    let email = Email::parse(email).map_err(|err| anyhow::anyhow!("FLOODGATE_ADMIN_EMAIL: {err}"))?;
    if let Some(existing) = users::find_by_email(pool, email.as_str()).await? {
        let promote = existing.role != Role::Admin.as_str();
        let reset = !password::verify(password.expose().to_owned(), Some(existing.password_hash)).await?;
        if promote {
            users::set_role(pool, existing.app_user_id, Role::Admin.as_str()).await?;
        }
        if reset {
            let hash = password::hash(password.expose().to_owned()).await?;
            users::set_password(pool, existing.app_user_id, &hash).await?;
        }
        if promote || reset {
            // Whoever held this account's refresh tokens before must not inherit admin rights.
            let revoked = sessions::revoke_all_for_user(pool, existing.app_user_id).await?;
            tracing::info!(email = %email, promote, reset, revoked, "configured admin credentials applied");
        }
        return Ok(());
    }
    let hash = password::hash(password.expose().to_owned()).await?;
    match users::insert(
        pool,
        UserId::new(),
        email.as_str(),
        "Administrator",
        &hash,
        Role::Admin.as_str(),
    )
    .await
    {
        Ok(_) => tracing::info!(email = %email, "admin account created"),
        Err(err) if matches!(&err, sqlx::Error::Database(db) if db.is_unique_violation()) => {}
        Err(err) => return Err(err.into()),
    }
    Ok(())
}

/// The full router with its middleware; public so tests can drive it with `oneshot`.
pub fn router(state: AppState, cors_origins: &[String]) -> Router {
    let (api, openapi) = routes::api().split_for_parts();
    let openapi_json: Arc<str> = openapi
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
        .into();
    let x_request_id = HeaderName::from_static("x-request-id");
    api.route(
        "/api/v1/openapi.json",
        get(move || {
            let body = Arc::clone(&openapi_json);
            async move { ([(header::CONTENT_TYPE, "application/json")], body.to_string()) }
        }),
    )
    .fallback(error::no_route)
    .method_not_allowed_fallback(error::method_not_allowed)
    .with_state(state)
    // Layers run bottom-up for requests: the request id exists before the span is made, the
    // span wraps everything else, and the id is copied to the response last.
    .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
    .layer(CompressionLayer::new())
    .layer(cors(cors_origins))
    .layer(CatchPanicLayer::custom(|_panic: Box<dyn std::any::Any + Send>| {
        ApiError::Unexpected(anyhow::anyhow!("handler panicked")).into_response()
    }))
    .layer(middleware::from_fn(track_metrics))
    .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        tracing::info_span!("request", method = %request.method(), uri = %request.uri().path(), request_id)
    }))
    .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
    .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|origin| origin.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("admission-token"),
        ])
        .expose_headers([
            header::ETAG,
            header::RETRY_AFTER,
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(600))
}

async fn track_metrics(request: Request, next: Next) -> Response {
    // The route template, never the raw path: ids in labels would explode cardinality.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics::observe_request(method.as_str(), &route, response.status().as_u16(), started.elapsed());
    response
}
