//! The guard of booking routes: [`Admitted`] requires an access token and an
//! `Admission-Token` that admits that same user to the show named in the path.

use axum::{
    extract::{FromRequestParts, RawPathParams},
    http::request::Parts,
};
use common::ids::ShowId;
use waiting_room::token::AdmissionClaims;

use crate::{app::AppState, auth::extract::AuthUser, error::ApiError};

/// An authenticated fan holding a valid admission to the path's `{show_id}`.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The fan.
    pub user: AuthUser,
    /// What the admission token says.
    pub admission: AdmissionClaims,
}

fn not_admitted(detail: &str) -> ApiError {
    ApiError::Forbidden {
        code: "not_admitted",
        detail: detail.to_owned(),
    }
}

impl FromRequestParts<AppState> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("invalid_path", "The path names no show."))?;
        let show: ShowId = params
            .iter()
            .find(|(name, _)| *name == "show_id")
            .and_then(|(_, value)| value.parse().ok())
            .ok_or_else(|| ApiError::bad_request("invalid_path", "The path names no valid show."))?;
        let token = parts
            .headers
            .get("admission-token")
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| not_admitted("An `Admission-Token` from the show's waiting room is required."))?;
        let admission = state
            .admission_tokens
            .verify(token, user.user_id, show)
            .map_err(|err| {
                tracing::debug!(error = %err, "admission token refused");
                not_admitted("The admission token is invalid, expired, or not for this show and user.")
            })?;
        Ok(Self { user, admission })
    }
}
