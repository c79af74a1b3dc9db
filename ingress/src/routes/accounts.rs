//! API.md "Accounts": register, login, refresh (rotating), logout, me, my bookings.

use axum::{Json, extract::State, http::StatusCode};
use common::ids::{BookingId, ShowId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    app::AppState,
    auth::{extract::AuthUser, password, rate_limit::AuthAttempt, tokens},
    domain::{self, Email, NewPassword, Role},
    error::{ApiError, ApiJson, ApiQuery, Problem},
    routes::pagination,
    store::{bookings, sessions, users},
};

/// `POST /auth/register` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// E-mail address (the login).
    pub email: String,
    /// At least 10 characters, not a common password.
    pub password: String,
    /// Display name.
    pub name: String,
}

/// An account.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserResponse {
    /// Id.
    pub user_id: UserId,
    /// E-mail.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl TryFrom<users::UserRow> for UserResponse {
    type Error = ApiError;

    fn try_from(row: users::UserRow) -> Result<Self, ApiError> {
        let role = Role::parse(&row.role)
            .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("unknown role {} in database", row.role)))?;
        Ok(Self {
            user_id: row.app_user_id,
            email: row.email,
            name: row.name,
            role,
            created_at: row.created_at,
        })
    }
}

/// `POST /auth/login` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// E-mail.
    pub email: String,
    /// Password.
    pub password: String,
}

/// Tokens issued by login and refresh.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Opaque token for `/auth/refresh`; single use.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// `POST /auth/refresh` and `/auth/logout` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from login or the previous refresh.
    pub refresh_token: String,
}

/// Creates a customer account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "accounts", request_body = RegisterRequest,
    responses(
        (status = 201, body = UserResponse),
        (status = 400, description = "Malformed e-mail, weak password, bad body", body = Problem),
        (status = 409, description = "The e-mail is taken", body = Problem),
        (status = 429, description = "Too many attempts from this client", body = Problem),
    ))]
pub async fn register(
    _attempt: AuthAttempt,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<UserResponse>), ApiError> {
    let email = Email::parse(&body.email)?;
    let password = NewPassword::parse(&body.password, &email)?;
    let name = domain::text("name", &body.name, 1, 200)?;
    let hash = password::hash(password.expose().to_owned()).await?;
    let row = users::insert(
        &state.db,
        UserId::new(),
        email.as_str(),
        &name,
        &hash,
        Role::Customer.as_str(),
    )
    .await
    .map_err(|err| ApiError::conflict_on_unique(err, "email_taken", "An account with this e-mail already exists."))?;
    Ok((StatusCode::CREATED, Json(row.try_into()?)))
}

/// Exchanges e-mail and password for tokens.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "accounts", request_body = LoginRequest,
    responses(
        (status = 200, body = TokenResponse),
        (status = 401, description = "Unknown e-mail or wrong password (same answer)", body = Problem),
        (status = 429, body = Problem),
    ))]
pub async fn login(
    _attempt: AuthAttempt,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let invalid = || ApiError::unauthorized("invalid_credentials", "E-mail or password is wrong.");
    // A malformed e-mail or an oversized password cannot match; answer exactly like a miss.
    let user = match Email::parse(&body.email) {
        Ok(email) if body.password.len() <= 1024 => users::find_by_email(&state.db, email.as_str()).await?,
        _ => None,
    };
    let stored = user.as_ref().map(|user| user.password_hash.clone());
    if !password::verify(body.password, stored).await? {
        return Err(invalid());
    }
    let user = user.ok_or_else(invalid)?;
    let role = Role::parse(&user.role).ok_or_else(invalid)?;
    issue_tokens(&state.db, &state, user.app_user_id, role, Uuid::now_v7())
        .await
        .map(Json)
}

/// Stores a new refresh token of `family` through `db` and returns it with an access token.
async fn issue_tokens(
    db: impl sqlx::PgExecutor<'_>,
    state: &AppState,
    user: UserId,
    role: Role,
    family: Uuid,
) -> Result<TokenResponse, ApiError> {
    let refresh_token = tokens::new_refresh_token();
    let expires_at = OffsetDateTime::now_utc() + state.refresh_ttl;
    sessions::insert(
        db,
        Uuid::now_v7(),
        user,
        family,
        &tokens::hash_refresh_token(&refresh_token),
        expires_at,
    )
    .await?;
    Ok(TokenResponse {
        access_token: state.tokens.issue(user, role)?,
        refresh_token,
        token_type: "Bearer",
        expires_in: state.tokens.access_ttl().as_secs(),
    })
}

/// Rotates a refresh token: the presented one stops working, a new pair is issued. Presenting
/// an already rotated token revokes its whole family (it was probably stolen).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "accounts", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = Problem)))]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let invalid = || {
        ApiError::unauthorized(
            "invalid_refresh_token",
            "The refresh token is invalid, expired or revoked.",
        )
    };
    let hash = tokens::hash_refresh_token(&body.refresh_token);
    let mut tx = state.db.begin().await?;
    let Some(session) = sessions::find_by_hash_for_update(&mut *tx, &hash).await? else {
        return Err(invalid());
    };
    if session.revoked_at.is_some() {
        let revoked = sessions::revoke_family(&mut *tx, session.family_id).await?;
        tx.commit().await?;
        tracing::warn!(user_id = %session.app_user_id, revoked, "rotated refresh token reused; family revoked");
        return Err(invalid());
    }
    if session.expires_at <= OffsetDateTime::now_utc() {
        return Err(invalid());
    }
    let user = users::find_by_id(&mut *tx, session.app_user_id)
        .await?
        .ok_or_else(invalid)?;
    let role = Role::parse(&user.role).ok_or_else(invalid)?;
    sessions::revoke(&mut *tx, session.session_id).await?;
    let issued = issue_tokens(&mut *tx, &state, user.app_user_id, role, session.family_id).await?;
    tx.commit().await?;
    Ok(Json(issued))
}

/// Revokes a refresh token. Idempotent: an unknown or already revoked token is also 204.
/// (Access tokens are short-lived and simply expire.)
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "accounts", request_body = RefreshRequest,
    responses((status = 204, description = "Revoked"), (status = 400, description = "Malformed body", body = Problem)))]
pub async fn logout(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    sessions::revoke_by_hash(&state.db, &tokens::hash_refresh_token(&body.refresh_token)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account.
#[utoipa::path(get, path = "/api/v1/me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = UserResponse), (status = 401, body = Problem)))]
pub async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<UserResponse>, ApiError> {
    let row = users::find_by_id(&state.db, user.user_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "The account no longer exists."))?;
    Ok(Json(row.try_into()?))
}

/// One of the caller's bookings.
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingSummary {
    /// Id.
    pub booking_id: BookingId,
    /// Show.
    pub show_id: ShowId,
    /// held, payment_pending, confirmed, cancelled, refunded, expired, released.
    pub status: String,
    /// Seats in the booking.
    pub seat_count: i32,
    /// Amount due or paid, minor units.
    pub total_cents: i64,
    /// Currency.
    pub currency: String,
    /// When a hold lapses.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// A page of bookings.
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingPage {
    /// Bookings, newest first.
    pub items: Vec<BookingSummary>,
    /// Cursor of the next page, absent on the last one.
    pub next_cursor: Option<String>,
}

/// The caller's bookings, newest first.
#[utoipa::path(get, path = "/api/v1/me/bookings", tag = "accounts", security(("bearer" = [])), params(pagination::PageQuery),
    responses((status = 200, body = BookingPage), (status = 401, body = Problem)))]
pub async fn my_bookings(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<pagination::PageQuery>,
) -> Result<Json<BookingPage>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let before = query
        .cursor
        .as_deref()
        .map(pagination::decode)
        .transpose()?
        .map(|(_, id)| BookingId(id));
    let rows = bookings::for_user(&state.db, user.user_id, before, limit + 1).await?;
    let (rows, next_cursor) = pagination::page(rows, limit, |row| pagination::encode(0.0, row.booking_id.as_uuid()));
    let items = rows
        .into_iter()
        .map(|row| BookingSummary {
            booking_id: row.booking_id,
            show_id: row.show_id,
            status: row.status,
            seat_count: row.seat_count,
            total_cents: row.total_cents,
            currency: row.currency,
            expires_at: row.expires_at,
            created_at: row.created_at,
        })
        .collect();
    Ok(Json(BookingPage { items, next_cursor }))
}
