//! Settings of the `notifier` process, from environment variables (defaults: the local services
//! and the SMTP sink `scripts/up` starts).

use std::time::Duration;

use common::config::{CommonConfig, ConfigError, defaults, env_or, env_string};

/// Where the local SMTP sink listens by default (DESIGN.md "Processes").
pub const DEFAULT_SMTP_URL: &str = "smtp://127.0.0.1:2525";
/// The sender of every e-mail unless `MAIL_FROM` says otherwise.
pub const DEFAULT_MAIL_FROM: &str = "Floodgate <tickets@floodgate.localhost>";
/// Where fans manage their bookings (links in the e-mails) unless `PUBLIC_URL` says otherwise.
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8080";

/// How deliveries are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per notification, the first included (`NOTIFIER_MAX_ATTEMPTS`, 8).
    pub max_attempts: u32,
    /// Wait after the first failure; doubled after each further one (`NOTIFIER_RETRY_BASE_MS`,
    /// 5000: with 8 attempts a delivery is given up about 10 minutes after its first try).
    pub base: Duration,
    /// Longest wait between two attempts (`NOTIFIER_RETRY_MAX_MS`, 1 hour).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base: Duration::from_secs(5),
            max: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// How long to wait after the `failures`-th failed attempt (1-based): base × 2^(failures−1),
    /// at most `max`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// How many retry queues there are: one per failure that still leaves an attempt.
    pub fn retry_levels(&self) -> u32 {
        self.max_attempts.saturating_sub(1)
    }
}

/// Settings of the notifier.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// Shared settings (admin port 9104).
    pub common: CommonConfig,
    /// `SMTP_URL`: `smtp://host:port` (plain), `smtp://host:port?tls=required` (STARTTLS) or
    /// `smtps://user:pass@host:465` (TLS), as lettre reads it.
    pub smtp_url: String,
    /// `SMTP_TIMEOUT_MS` (10000): one SMTP command's time limit.
    pub smtp_timeout: Duration,
    /// `MAIL_FROM`: the sender, `Name <address>`.
    pub mail_from: String,
    /// `PUBLIC_URL`: the web client's base URL, for links in e-mails.
    pub public_url: String,
    /// `NOTIFIER_WEBHOOK_TIMEOUT_MS` (5000): one webhook POST's time limit.
    pub webhook_timeout: Duration,
    /// `NOTIFIER_PREFETCH` (16): deliveries handled at once per process.
    pub prefetch: u16,
    /// Retries.
    pub retry: RetryPolicy,
    /// `NOTIFIER_LEASE_SECONDS` (120): how long a claimed notification is reserved for the
    /// replica sending it; longer than any single send can take.
    pub lease: Duration,
}

impl NotifierConfig {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults_retry = RetryPolicy::default();
        let retry = RetryPolicy {
            max_attempts: env_or("NOTIFIER_MAX_ATTEMPTS", defaults_retry.max_attempts)?.max(1),
            base: Duration::from_millis(env_or("NOTIFIER_RETRY_BASE_MS", 5000)?),
            max: Duration::from_millis(env_or("NOTIFIER_RETRY_MAX_MS", 3_600_000)?),
        };
        Ok(Self {
            common: CommonConfig::from_env(defaults::ADMIN_PORT_NOTIFIER)?,
            smtp_url: env_string("SMTP_URL", DEFAULT_SMTP_URL),
            smtp_timeout: Duration::from_millis(env_or("SMTP_TIMEOUT_MS", 10_000)?),
            mail_from: env_string("MAIL_FROM", DEFAULT_MAIL_FROM),
            public_url: env_string("PUBLIC_URL", DEFAULT_PUBLIC_URL),
            webhook_timeout: Duration::from_millis(env_or("NOTIFIER_WEBHOOK_TIMEOUT_MS", 5000)?),
            prefetch: env_or("NOTIFIER_PREFETCH", 16)?.max(1),
            retry,
            lease: Duration::from_secs(env_or("NOTIFIER_LEASE_SECONDS", 120)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 40,
            base: Duration::from_millis(200),
            max: Duration::from_secs(1),
        };
        assert_eq!(policy.backoff(1), Duration::from_millis(200));
        assert_eq!(policy.backoff(2), Duration::from_millis(400));
        assert_eq!(policy.backoff(3), Duration::from_millis(800));
        assert_eq!(policy.backoff(4), Duration::from_secs(1));
        assert_eq!(policy.backoff(39), Duration::from_secs(1));
        assert_eq!(policy.retry_levels(), 39);
    }
}
