//! Ingress settings, from environment variables (defaults: the local services, API on
//! 127.0.0.1:8080, admin port 9100).

use std::{net::SocketAddr, time::Duration};

use common::config::{CommonConfig, ConfigError, Secret, defaults, env_or, env_string};

/// The development JWT secret used when `JWT_SECRET` is unset. Start-up warns loudly about it.
const DEV_JWT_SECRET: &str = "floodgate-development-secret-change-me";

/// Everything ingress needs to start.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// Settings shared by every process.
    pub common: CommonConfig,
    /// `API_LISTEN`: the public HTTP API.
    pub api_listen: SocketAddr,
    /// `JWT_SECRET`: HMAC key of access tokens.
    pub jwt_secret: Secret,
    /// `JWT_PREVIOUS_SECRET`: still accepted for verification during a key rotation.
    pub jwt_previous_secret: Option<Secret>,
    /// `ACCESS_TOKEN_TTL_SECONDS` (default 900).
    pub access_token_ttl: Duration,
    /// `REFRESH_TOKEN_TTL_SECONDS` (default 30 days).
    pub refresh_token_ttl: Duration,
    /// `FLOODGATE_ADMIN_EMAIL` / `FLOODGATE_ADMIN_PASSWORD`: an admin account ensured at
    /// start-up (created, or promoted and its password re-set).
    pub bootstrap_admin: Option<(String, Secret)>,
    /// `CORS_ALLOWED_ORIGINS`: comma-separated origins allowed to call the API from a browser.
    pub cors_allowed_origins: Vec<String>,
    /// `AUTH_RATE_PER_MINUTE` / `AUTH_RATE_BURST`: login and register attempts per client.
    pub auth_rate_per_minute: u32,
    /// Burst allowance of the login/register limiter.
    pub auth_rate_burst: u32,
    /// `TRUST_FORWARDED_FOR`: take the client address from the last `X-Forwarded-For` entry
    /// (only behind one proxy that appends it; otherwise clients could pick their own key).
    pub trust_forwarded_for: bool,
    /// `MIGRATE_ON_START` (default true): apply pending migrations before serving.
    pub migrate_on_start: bool,
    /// `ADMISSION_TOKEN_KEYS`: `kid:secret[,kid:secret...]`, the first signs (shared with every
    /// ingress replica).
    pub admission_token_keys: Secret,
    /// `WS_ALLOWED_ORIGINS` (default: the CORS origins): browser origins allowed to open the
    /// waiting-room WebSocket.
    pub ws_allowed_origins: Vec<String>,
    /// `WS_POSITION_MAX_INTERVAL_MS` (default 1,000, the least): the longest a waiting fan goes
    /// without hearing the serving number move. Above it, fans far back hear a move every
    /// twentieth of their ETA, up to this (near the front still every second): fewer messages
    /// and less CPU per fan in a very large room, for a position up to that much older.
    pub ws_position_max_interval: Duration,
    /// `GATEWAY_WEBHOOK_SECRET`: the HMAC key of the payment gateway's webhook signatures
    /// (shared with the gateway; the simulator's development default when unset).
    pub gateway_webhook_secret: Secret,
    /// `TICKET_SIGNING_KEY`: verifies ticket signatures at check-in (shared with the
    /// booking-worker, which issues tickets).
    pub ticket_signing_key: Secret,
}

/// The development webhook secret used when `GATEWAY_WEBHOOK_SECRET` is unset; the gateway
/// simulator signs with the same default, so a local stack works out of the box.
pub const DEV_GATEWAY_WEBHOOK_SECRET: &str = common::config::defaults::GATEWAY_WEBHOOK_SECRET;

/// The development admission key used when `ADMISSION_TOKEN_KEYS` is unset.
const DEV_ADMISSION_KEYS: &str = "dev:floodgate-development-admission-key";

fn origin_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(|origin| origin.trim().to_owned())
        .filter(|origin| !origin.is_empty())
        .collect()
}

impl IngressConfig {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(defaults::ADMIN_PORT_INGRESS)?;
        let previous = env_string("JWT_PREVIOUS_SECRET", "");
        let admin_email = env_string("FLOODGATE_ADMIN_EMAIL", "");
        let admin_password = env_string("FLOODGATE_ADMIN_PASSWORD", "");
        let cors = env_string("CORS_ALLOWED_ORIGINS", "http://127.0.0.1:8080,http://localhost:8080");
        Ok(Self {
            common,
            api_listen: env_or("API_LISTEN", SocketAddr::from(([127, 0, 0, 1], defaults::API_PORT)))?,
            jwt_secret: Secret::new(env_string("JWT_SECRET", DEV_JWT_SECRET)),
            jwt_previous_secret: (!previous.is_empty()).then(|| Secret::new(previous)),
            access_token_ttl: Duration::from_secs(env_or("ACCESS_TOKEN_TTL_SECONDS", 900)?),
            refresh_token_ttl: Duration::from_secs(env_or("REFRESH_TOKEN_TTL_SECONDS", 30 * 86_400)?),
            bootstrap_admin: (!admin_email.is_empty() && !admin_password.is_empty())
                .then(|| (admin_email, Secret::new(admin_password))),
            cors_allowed_origins: origin_list(&cors),
            ws_allowed_origins: origin_list(&env_string("WS_ALLOWED_ORIGINS", &cors)),
            ws_position_max_interval: Duration::from_millis(
                env_or("WS_POSITION_MAX_INTERVAL_MS", 1_000_u64)?.max(1_000),
            ),
            admission_token_keys: Secret::new(env_string("ADMISSION_TOKEN_KEYS", DEV_ADMISSION_KEYS)),
            auth_rate_per_minute: env_or("AUTH_RATE_PER_MINUTE", 30)?,
            auth_rate_burst: env_or("AUTH_RATE_BURST", 10)?,
            trust_forwarded_for: env_or("TRUST_FORWARDED_FOR", false)?,
            migrate_on_start: env_or("MIGRATE_ON_START", true)?,
            gateway_webhook_secret: Secret::new(env_string("GATEWAY_WEBHOOK_SECRET", DEV_GATEWAY_WEBHOOK_SECRET)),
            ticket_signing_key: common::config::ticket_signing_key(),
        })
    }

    /// True when a built-in development secret is in use.
    pub fn uses_development_secret(&self) -> bool {
        self.jwt_secret.expose() == DEV_JWT_SECRET
            || self.admission_token_keys.expose() == DEV_ADMISSION_KEYS
            || self.gateway_webhook_secret.expose() == DEV_GATEWAY_WEBHOOK_SECRET
    }
}
