//! Fan accounts for load tests.
//!
//! Registering through the API would spend the benchmark on argon2, which is slow on purpose
//! (tens of milliseconds of CPU per account). Load-test fans are therefore seeded straight into
//! PostgreSQL with a deliberately cheap argon2id hash (8 KiB, one pass), and then log in through
//! the real `/auth/login`, which verifies that hash with the parameters it carries. Their e-mail
//! addresses are `loadgen-fan-<n>@loadgen.invalid`, so re-runs reuse them and nobody confuses
//! them with real accounts.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use argon2::{Algorithm, Argon2, Params, Version, password_hash::PasswordHasher as _};
use futures::{StreamExt as _, stream};
use indicatif::ProgressBar;
use uuid::Uuid;

/// The password of every load-test fan.
pub(crate) const PASSWORD: &str = "loadgen fan password";

/// A logged-in fan.
#[derive(Debug, Clone)]
pub struct Fan {
    /// Position in the run (0-based).
    pub index: usize,
    /// Access token.
    pub access_token: String,
}

pub(crate) fn email(n: usize) -> String {
    format!("loadgen-fan-{n}@loadgen.invalid")
}

/// Makes sure fans `first..first + count` exist.
pub async fn ensure_accounts(database_url: &str, first: usize, count: usize) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(database_url)
        .await?;
    let cheap = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(8, 1, 1, None).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let hash = cheap
        .hash_password(PASSWORD.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string();
    for chunk_start in (first..first + count).step_by(10_000) {
        let chunk_end = (chunk_start + 10_000).min(first + count);
        let ids: Vec<Uuid> = (chunk_start..chunk_end).map(|_| Uuid::now_v7()).collect();
        let emails: Vec<String> = (chunk_start..chunk_end).map(email).collect();
        sqlx::query(
            "INSERT INTO app_user (app_user_id, email, name, password_hash)
             SELECT id, email, 'Load Test Fan', $3 FROM UNNEST($1::uuid[], $2::text[]) AS f (id, email)
             ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(&emails)
        .bind(&hash)
        .execute(&pool)
        .await
        .context("cannot seed fan accounts (is DATABASE_URL the deployment's database?)")?;
    }
    pool.close().await;
    Ok(())
}

/// How often a login the API answers "busy" (429, 503) is tried before the run gives up.
const LOGIN_ATTEMPTS: u32 = 10;

/// Logs fans `first..first + count` in through the API, `concurrency` at a time.
pub async fn log_in(
    client: &reqwest::Client,
    api: &str,
    first: usize,
    count: usize,
    concurrency: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<Fan>> {
    let url = Arc::new(format!("{api}/api/v1/auth/login"));
    let results: Vec<anyhow::Result<Fan>> = stream::iter(first..first + count)
        .map(|n| {
            let client = client.clone();
            let url = Arc::clone(&url);
            async move {
                // A crowd logging in at once can find the API's database pool busy: like a real
                // client, wait as told (`Retry-After`) and try again.
                let mut attempts = 0;
                let response = loop {
                    let response = client
                        .post(url.as_str())
                        .json(&serde_json::json!({"email": email(n), "password": PASSWORD}))
                        .send()
                        .await?;
                    let busy = matches!(response.status().as_u16(), 429 | 503);
                    attempts += 1;
                    if !busy || attempts == LOGIN_ATTEMPTS {
                        break response;
                    }
                    let wait = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|value| value.to_str().ok()?.parse().ok())
                        .unwrap_or(1_u64);
                    tokio::time::sleep(Duration::from_secs(wait.clamp(1, 10))).await;
                };
                let status = response.status();
                let body: serde_json::Value = response.json().await?;
                let token = body["access_token"].as_str().with_context(|| {
                    format!("login of fan {n} failed with {status}: {body} (raise AUTH_RATE_PER_MINUTE?)")
                })?;
                Ok(Fan {
                    index: n - first,
                    access_token: token.to_owned(),
                })
            }
        })
        .buffer_unordered(concurrency)
        .inspect(|_| progress.inc(1))
        .collect()
        .await;
    let mut fans = results.into_iter().collect::<anyhow::Result<Vec<Fan>>>()?;
    fans.sort_by_key(|fan| fan.index);
    Ok(fans)
}
