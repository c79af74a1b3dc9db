//! Typed configuration read from environment variables. Every setting has a default that points
//! at the local services `scripts/up` starts, so a process runs with no configuration at all.

use std::{fmt, net::SocketAddr, str::FromStr};

/// A setting that is present but cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    /// The variable's name.
    pub name: String,
    /// The value found.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

/// Reads `name` and parses it, or returns `default` when it is unset or empty.
pub fn env_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().parse().map_err(|err: T::Err| ConfigError {
            name: name.to_owned(),
            value,
            reason: err.to_string(),
        }),
        _ => Ok(default),
    }
}

/// Reads `name` as a string, or `default` when it is unset or empty.
pub fn env_string(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => default.to_owned(),
    }
}

/// A secret value: usable, but never printed by `Debug` or `Display`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call it only where the value is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default, for a terminal).
    Text,
    /// One JSON object per line (`LOG_FORMAT=json`, for log shippers).
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "pretty" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("expected `text` or `json`, got `{other}`")),
        }
    }
}

/// Default local service addresses (DESIGN.md "Processes").
pub mod defaults {
    /// PostgreSQL as `scripts/up` provisions it. Without TLS: on loopback it protects nothing,
    /// and because sqlx does not set `TCP_NODELAY`, TLS records of a large statement ended in a
    /// ~40 ms wait for a delayed ACK (measured: booking batches 166 ms with TLS, 94 ms without).
    /// A remote database should use `sslmode=verify-full`.
    pub const DATABASE_URL: &str = "postgres://floodgate:floodgate@127.0.0.1:5432/floodgate?sslmode=disable";
    /// Redis.
    pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
    /// RabbitMQ, default vhost.
    pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    /// The public API port of ingress.
    pub const API_PORT: u16 = 8080;
    /// Admin ports, one per process.
    pub const ADMIN_PORT_INGRESS: u16 = 9100;
    /// Admin port of the admission controller.
    pub const ADMIN_PORT_WAITING_ROOM: u16 = 9101;
    /// Admin port of the booking-worker.
    pub const ADMIN_PORT_BOOKING_WORKER: u16 = 9102;
    /// Admin port of the payment-worker.
    pub const ADMIN_PORT_PAYMENT_WORKER: u16 = 9103;
    /// Admin port of the notifier.
    pub const ADMIN_PORT_NOTIFIER: u16 = 9104;
    /// The development secret of gateway webhooks when `GATEWAY_WEBHOOK_SECRET` is unset: the
    /// gateway simulator signs with it and ingress verifies with it (`scripts/up` sets a real one).
    pub const GATEWAY_WEBHOOK_SECRET: &str = "floodgate-development-webhook-secret";
    /// The development ticket key used when `TICKET_SIGNING_KEY` is unset (`scripts/up` sets one).
    pub const TICKET_SIGNING_KEY: &str = "floodgate-development-ticket-key-do-not-use";
}

/// `TICKET_SIGNING_KEY`: the key ticket codes are signed with, shared by the booking-worker
/// (which issues tickets) and ingress (which checks them in). Warns when the development key is
/// in use.
pub fn ticket_signing_key() -> Secret {
    let key = env_string("TICKET_SIGNING_KEY", defaults::TICKET_SIGNING_KEY);
    if key == defaults::TICKET_SIGNING_KEY {
        tracing::warn!("TICKET_SIGNING_KEY is unset: using the development ticket key");
    }
    Secret::new(key)
}

/// Settings every process has.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `DATABASE_MAX_CONNECTIONS` (default 10).
    pub database_max_connections: u32,
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `REDIS_KEY_PREFIX`: prepended to every Redis key (tests isolate themselves with it).
    pub redis_key_prefix: String,
    /// `AMQP_URL`.
    pub amqp_url: String,
    /// `MQ_PREFIX`: prepended to every exchange and queue name (tests isolate themselves with it).
    pub mq_prefix: String,
    /// `ADMIN_LISTEN`: where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin_listen: SocketAddr,
    /// `LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
}

impl CommonConfig {
    /// Reads the common settings; `default_admin_port` is the process's own admin port.
    pub fn from_env(default_admin_port: u16) -> Result<Self, ConfigError> {
        Ok(Self {
            database_url: env_string("DATABASE_URL", defaults::DATABASE_URL),
            database_max_connections: env_or("DATABASE_MAX_CONNECTIONS", 10)?,
            redis_url: env_string("REDIS_URL", defaults::REDIS_URL),
            redis_key_prefix: env_string("REDIS_KEY_PREFIX", ""),
            amqp_url: env_string("AMQP_URL", defaults::AMQP_URL),
            mq_prefix: env_string("MQ_PREFIX", ""),
            admin_listen: env_or("ADMIN_LISTEN", SocketAddr::from(([127, 0, 0, 1], default_admin_port)))?,
            log_format: env_or("LOG_FORMAT", LogFormat::Text)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses_known_words_and_refuses_others() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("yaml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn secrets_are_never_printed() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn a_missing_variable_falls_back_to_its_default() {
        let value: u32 = env_or("FLOODGATE_TEST_SURELY_UNSET_VARIABLE", 7).unwrap();
        assert_eq!(value, 7);
    }
}
