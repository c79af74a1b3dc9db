//! `app_user`.

use common::ids::UserId;
use sqlx::{PgExecutor, prelude::FromRow};
use time::OffsetDateTime;

/// An account as stored.
#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    /// Id.
    pub app_user_id: UserId,
    /// Lower-cased e-mail.
    pub email: String,
    /// Display name.
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Role name.
    pub role: String,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// Inserts an account; a duplicate e-mail fails with a unique violation.
#[tracing::instrument(skip_all, fields(user_id = %id))]
pub async fn insert(
    db: impl PgExecutor<'_>,
    id: UserId,
    email: &str,
    name: &str,
    password_hash: &str,
    role: &str,
) -> Result<UserRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO app_user (app_user_id, email, name, password_hash, role)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING app_user_id, email, name, password_hash, role, created_at",
    )
    .bind(id)
    .bind(email)
    .bind(name)
    .bind(password_hash)
    .bind(role)
    .fetch_one(db)
    .await
}

/// The account with this (lower-cased) e-mail.
#[tracing::instrument(skip_all)]
pub async fn find_by_email(db: impl PgExecutor<'_>, email: &str) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT app_user_id, email, name, password_hash, role, created_at
         FROM app_user WHERE lower(email) = lower($1)",
    )
    .bind(email)
    .fetch_optional(db)
    .await
}

/// The account with this id.
#[tracing::instrument(skip(db))]
pub async fn find_by_id(db: impl PgExecutor<'_>, id: UserId) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT app_user_id, email, name, password_hash, role, created_at
         FROM app_user WHERE app_user_id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Replaces a user's password hash.
#[tracing::instrument(skip(db, password_hash))]
pub async fn set_password(db: impl PgExecutor<'_>, id: UserId, password_hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE app_user SET password_hash = $2 WHERE app_user_id = $1")
        .bind(id)
        .bind(password_hash)
        .execute(db)
        .await
        .map(|_| ())
}

/// Changes a user's role; returns the updated account, or None if there is no such user.
#[tracing::instrument(skip(db))]
pub async fn set_role(db: impl PgExecutor<'_>, id: UserId, role: &str) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE app_user SET role = $2 WHERE app_user_id = $1
         RETURNING app_user_id, email, name, password_hash, role, created_at",
    )
    .bind(id)
    .bind(role)
    .fetch_optional(db)
    .await
}
