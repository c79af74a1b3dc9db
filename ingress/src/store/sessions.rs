//! `session`: refresh tokens, stored as hashes, rotated on every use.

use common::ids::UserId;
use sqlx::{PgExecutor, prelude::FromRow};
use time::OffsetDateTime;
use uuid::Uuid;

/// A refresh-token session as stored.
#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    /// Id.
    pub session_id: Uuid,
    /// Owner.
    pub app_user_id: UserId,
    /// Family of rotated tokens descending from one login.
    pub family_id: Uuid,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// When revoked (rotated, logged out, or family revoked).
    pub revoked_at: Option<OffsetDateTime>,
}

/// Stores a new refresh token's hash.
#[tracing::instrument(skip(db, token_hash))]
pub async fn insert(
    db: impl PgExecutor<'_>,
    session_id: Uuid,
    user: UserId,
    family_id: Uuid,
    token_hash: &[u8],
    expires_at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO session (session_id, app_user_id, family_id, refresh_token_hash, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(session_id)
    .bind(user)
    .bind(family_id)
    .bind(token_hash)
    .bind(expires_at)
    .execute(db)
    .await
    .map(|_| ())
}

/// The session of a token hash, locked for the rest of the transaction so two concurrent
/// refreshes with the same token cannot both rotate it.
#[tracing::instrument(skip_all)]
pub async fn find_by_hash_for_update(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT session_id, app_user_id, family_id, expires_at, revoked_at
         FROM session WHERE refresh_token_hash = $1 FOR UPDATE",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await
}

/// Revokes one session (rotation or logout). Revoking twice is harmless.
#[tracing::instrument(skip(db))]
pub async fn revoke(db: impl PgExecutor<'_>, session_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE session SET revoked_at = coalesce(revoked_at, now()) WHERE session_id = $1")
        .bind(session_id)
        .execute(db)
        .await
        .map(|_| ())
}

/// Revokes every token of a family (a revoked token was presented again: likely stolen).
#[tracing::instrument(skip(db))]
pub async fn revoke_family(db: impl PgExecutor<'_>, family_id: Uuid) -> Result<u64, sqlx::Error> {
    sqlx::query("UPDATE session SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL")
        .bind(family_id)
        .execute(db)
        .await
        .map(|done| done.rows_affected())
}

/// Revokes the session of a token hash (logout); returns whether one was live.
#[tracing::instrument(skip_all)]
pub async fn revoke_by_hash(db: impl PgExecutor<'_>, token_hash: &[u8]) -> Result<bool, sqlx::Error> {
    sqlx::query("UPDATE session SET revoked_at = now() WHERE refresh_token_hash = $1 AND revoked_at IS NULL")
        .bind(token_hash)
        .execute(db)
        .await
        .map(|done| done.rows_affected() > 0)
}

/// Revokes every live session of a user (credentials or role changed by the operator).
#[tracing::instrument(skip(db))]
pub async fn revoke_all_for_user(db: impl PgExecutor<'_>, user: UserId) -> Result<u64, sqlx::Error> {
    sqlx::query("UPDATE session SET revoked_at = now() WHERE app_user_id = $1 AND revoked_at IS NULL")
        .bind(user)
        .execute(db)
        .await
        .map(|done| done.rows_affected())
}
