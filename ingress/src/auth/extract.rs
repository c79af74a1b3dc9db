//! Route guards: [`AuthUser`] requires a valid access token; [`Organizer`] and [`Admin`] also
//! require the role. A missing or bad token is 401, a wrong role 403.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use common::ids::UserId;

use crate::{app::AppState, domain::Role, error::ApiError};

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    /// Who is calling.
    pub user_id: UserId,
    /// The role in the access token.
    pub role: Role,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing_token", "An `Authorization: Bearer` access token is required.")
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("invalid_token", "The Authorization header must be `Bearer <token>`.")
            })?;
        let claims = state.tokens.verify(token).map_err(|err| {
            tracing::debug!(error = %err, "access token refused");
            ApiError::unauthorized("invalid_token", "The access token is invalid or expired.")
        })?;
        Ok(Self {
            user_id: claims.sub,
            role: claims.role,
        })
    }
}

/// A caller with role `organizer` or `admin`.
#[derive(Debug, Clone, Copy)]
pub struct Organizer(pub AuthUser);

impl Organizer {
    /// Whether the caller may act on an object created by `owner` (admins may act on any).
    pub fn may_manage(&self, owner: Option<UserId>) -> bool {
        self.0.role == Role::Admin || owner == Some(self.0.user_id)
    }
}

impl FromRequestParts<AppState> for Organizer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if !user.role.can_organize() {
            return Err(ApiError::Forbidden {
                code: "forbidden",
                detail: "This call needs the organizer or admin role.".to_owned(),
            });
        }
        Ok(Self(user))
    }
}

/// A caller with role `admin`.
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub AuthUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::Forbidden {
                code: "forbidden",
                detail: "This call needs the admin role.".to_owned(),
            });
        }
        Ok(Self(user))
    }
}
