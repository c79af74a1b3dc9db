//! Password hashing with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes, 1 lane, as
//! OWASP recommends). Hashing is CPU-heavy by design, so it runs on the blocking pool and never
//! stalls the async workers that serve other requests.

use anyhow::Context;
use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};

/// At most this many hashes run at once (each takes 19 MiB and a core for tens of milliseconds):
/// a login flood queues here instead of exhausting memory through the blocking pool.
const CONCURRENT_HASHES: usize = 8;
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_HASHES);

/// A PHC hash of a password nobody knows, verified against when the account does not exist so
/// that "unknown e-mail" and "wrong password" take the same time.
static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Hashes `password` into a PHC string with a fresh random salt.
pub async fn hash(password: String) -> anyhow::Result<String> {
    let _permit = HASHING.acquire().await.context("hashing semaphore closed")?;
    tokio::task::spawn_blocking(move || hash_blocking(&password))
        .await
        .context("password hashing task failed")?
}

fn hash_blocking(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| anyhow::anyhow!("cannot hash password: {err}"))
}

/// Checks `password` against a stored PHC hash, or against a dummy hash when there is none.
/// Returns false for a wrong password and for a missing account alike.
pub async fn verify(password: String, stored: Option<String>) -> anyhow::Result<bool> {
    let _permit = HASHING.acquire().await.context("hashing semaphore closed")?;
    tokio::task::spawn_blocking(move || {
        let exists = stored.is_some();
        let hash = match stored {
            Some(hash) => hash,
            None => match DUMMY_HASH.get() {
                Some(hash) => hash.clone(),
                None => {
                    let hash = hash_blocking("not the password of anyone at all")?;
                    DUMMY_HASH.get_or_init(|| hash).clone()
                }
            },
        };
        let parsed = PasswordHash::new(&hash).map_err(|err| anyhow::anyhow!("stored hash unreadable: {err}"))?;
        let matches = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        Ok(exists && matches)
    })
    .await
    .context("password verification task failed")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let stored = hash("correct horse battery staple".into()).await.unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(
            verify("correct horse battery staple".into(), Some(stored.clone()))
                .await
                .unwrap()
        );
        assert!(!verify("wrong horse battery staple".into(), Some(stored)).await.unwrap());
        assert!(!verify("anything".into(), None).await.unwrap());
    }
}
