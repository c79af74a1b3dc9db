//! Per-client rate limits on login and register (credential stuffing, account spam), with
//! `governor`'s GCRA: smooth refill, a burst allowance, and a `Retry-After` that tells the client
//! exactly when its next attempt is allowed.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::request::Parts,
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};

use crate::{app::AppState, error::ApiError};

/// A keyed limiter: one bucket per client address.
pub struct ClientLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    trust_forwarded_for: bool,
}

impl ClientLimiter {
    /// `per_minute` attempts per client and minute, `burst` at once.
    pub fn new(per_minute: u32, burst: u32, trust_forwarded_for: bool) -> Arc<Self> {
        let per_minute = NonZeroU32::new(per_minute.max(1)).expect("max(1) is non-zero");
        let burst = NonZeroU32::new(burst.max(1)).expect("max(1) is non-zero");
        Arc::new(Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            trust_forwarded_for,
        })
    }

    /// Takes one attempt from `client`'s bucket, or says how long to wait.
    pub fn check(&self, client: IpAddr) -> Result<(), ApiError> {
        self.limiter.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }

    /// Forgets clients whose buckets are full again, so memory stays bounded.
    pub fn spawn_cleanup(self: &Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let limiter = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => limiter.limiter.retain_recent(),
                    () = shutdown.cancelled() => break,
                }
            }
        });
    }

    fn client_address(&self, parts: &Parts) -> IpAddr {
        if self.trust_forwarded_for {
            // The rightmost entry is the one our proxy appended; everything left of it was
            // written by the client and could name a fresh bucket on every attempt.
            let forwarded = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.rsplit(',').next())
                .and_then(|last| last.trim().parse().ok());
            if let Some(address) = forwarded {
                return address;
            }
        }
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(address)| address.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }
}

/// Extracting this charges one attempt to the calling client: put it first in the arguments of
/// a rate-limited handler.
pub struct AuthAttempt;

impl FromRequestParts<AppState> for AuthAttempt {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let limiter = &state.auth_limiter;
        limiter.check(limiter.client_address(parts))?;
        Ok(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_past_its_burst_is_told_when_to_retry_and_others_are_not_affected() {
        let limiter = ClientLimiter::new(6, 2, false);
        let fan = IpAddr::from([10, 0, 0, 1]);
        assert!(limiter.check(fan).is_ok());
        assert!(limiter.check(fan).is_ok());
        match limiter.check(fan) {
            Err(ApiError::RateLimited { retry_after_secs }) => assert!((1..=10).contains(&retry_after_secs)),
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert!(limiter.check(IpAddr::from([10, 0, 0, 2])).is_ok());
    }
}
