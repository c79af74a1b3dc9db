//! The one error type of the HTTP API, rendered as RFC 9457 problem+json with a stable `code`,
//! and the request extractors whose rejections become such problems.
//!
//! A 500 is opaque to the client: its cause is logged in the request's span and the body only
//! says that something went wrong.

use axum::{
    Json,
    extract::{
        FromRequest, FromRequestParts, Request,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};

/// An API failure. Each variant documents its status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed syntax or an invalid value.
    #[error("{detail}")]
    BadRequest {
        /// Stable machine word.
        code: &'static str,
        /// Human explanation.
        detail: String,
    },
    /// 401: no valid credentials (sent with `WWW-Authenticate: Bearer`).
    #[error("{detail}")]
    Unauthorized {
        /// Stable machine word.
        code: &'static str,
        /// Human explanation.
        detail: String,
    },
    /// 403: authenticated, but the role does not allow the call.
    #[error("{detail}")]
    Forbidden {
        /// Stable machine word.
        code: &'static str,
        /// Human explanation.
        detail: String,
    },
    /// 404: no such object, or one the caller may not see.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 404: no route has this path.
    #[error("no such route")]
    NoRoute,
    /// 405: the path exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the request conflicts with the current state.
    #[error("{detail}")]
    Conflict {
        /// Stable machine word.
        code: &'static str,
        /// Human explanation.
        detail: String,
    },
    /// 413: the body exceeds the 64 KiB limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but semantically impossible.
    #[error("{detail}")]
    Unprocessable {
        /// Stable machine word.
        code: &'static str,
        /// Human explanation.
        detail: String,
    },
    /// 429: the client's rate limit is exhausted (with `Retry-After`).
    #[error("too many requests")]
    RateLimited {
        /// Seconds until a retry may succeed.
        retry_after_secs: u64,
    },
    /// 503: a dependency is down or overloaded (with `Retry-After`).
    #[error("{detail}")]
    Unavailable {
        /// Stable machine word.
        code: &'static str,
        /// Human explanation.
        detail: String,
    },
    /// 500: a bug or an unexpected failure; logged, never described to the client.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Seconds a client should wait before retrying after a 503.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

impl ApiError {
    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            detail: detail.into(),
        }
    }

    /// A 401 with `code`.
    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Unauthorized {
            code,
            detail: detail.into(),
        }
    }

    /// A 409 with `code`.
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            detail: detail.into(),
        }
    }

    /// A 422 with `code`.
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Unprocessable {
            code,
            detail: detail.into(),
        }
    }

    /// Maps a unique-constraint violation to 409 `code`; any other database error maps as usual.
    /// The one place where "already exists" is decided.
    pub fn conflict_on_unique(err: sqlx::Error, code: &'static str, detail: &str) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::conflict(code, detail),
            _ => err.into(),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine word of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::Forbidden { code, .. }
            | Self::Conflict { code, .. }
            | Self::Unprocessable { code, .. }
            | Self::Unavailable { code, .. } => code,
            Self::NotFound(_) => "not_found",
            Self::NoRoute => "no_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unexpected(_) => "internal_error",
        }
    }
}

/// The problem+json body (RFC 9457) plus Floodgate's stable `code`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `urn:floodgate:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the status.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// Stable machine word (`seats_unavailable`, `not_admitted`, ...).
    pub code: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Unexpected(err) => {
                // The cause goes to the log (inside the request span), never to the client.
                tracing::error!(error = ?err, "unexpected error");
                "An unexpected error occurred; it has been logged.".to_owned()
            }
            other => other.to_string(),
        };
        let code = self.code();
        let problem = Problem {
            kind: format!("urn:floodgate:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            code: code.to_owned(),
        };
        let mut response = (status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let retry_after = match &self {
            Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            Self::Unavailable { .. } => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(self, Self::Unauthorized { .. }) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A problem+json response with extra members (e.g. `unavailable_seat_ids` on a 409), for
/// answers that are not an [`ApiError`] because they carry data.
pub fn problem_response(
    status: StatusCode,
    code: &str,
    detail: &str,
    extra: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Response {
    let mut problem = serde_json::Map::new();
    problem.insert("type".into(), format!("urn:floodgate:problem:{code}").into());
    problem.insert("title".into(), status.canonical_reason().unwrap_or("Error").into());
    problem.insert("status".into(), status.as_u16().into());
    problem.insert("detail".into(), detail.into());
    problem.insert("code".into(), code.into());
    extra(&mut problem);
    let mut response = (status, Json(problem)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            // The pool could not get a connection in time, or the server went away: transient.
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(error = %err, "database unavailable");
                Self::Unavailable {
                    code: "database_unavailable",
                    detail: "The service is temporarily unavailable; retry shortly.".to_owned(),
                }
            }
            other => Self::Unexpected(other.into()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(err) => Self::bad_request(
                "malformed_json",
                format!("The body is not valid JSON: {}", err.body_text()),
            ),
            JsonRejection::JsonDataError(err) => Self::bad_request(
                "invalid_body",
                format!(
                    "The body does not match the expected shape: {}",
                    without_type_names(&err.body_text())
                ),
            ),
            JsonRejection::MissingJsonContentType(_) => {
                Self::UnsupportedMediaType("Expected a body with `Content-Type: application/json`.".to_owned())
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            other => Self::bad_request("invalid_body", other.body_text()),
        }
    }
}

/// serde names the Rust type it expected ("expected struct RegisterRequest"); clients get the
/// shape instead, never an internal name.
fn without_type_names(message: &str) -> String {
    let message = message.replace("Failed to deserialize the JSON body into the target type: ", "");
    let mut out = String::with_capacity(message.len());
    let mut words = message.split(' ').peekable();
    while let Some(word) = words.next() {
        match word {
            "struct" | "enum" => {
                out.push_str(if word == "struct" {
                    "an object"
                } else {
                    "one of the allowed values"
                });
                if let Some(name) = words.next() {
                    // Keep punctuation that followed the type name ("RegisterRequest," -> ",").
                    out.extend(name.chars().skip_while(|c| c.is_alphanumeric() || *c == '_'));
                }
            }
            other => out.push_str(other),
        }
        if words.peek().is_some() {
            out.push(' ');
        }
    }
    out
}

/// A JSON request body whose rejections (syntax, shape, unknown fields, size, content type)
/// become problem+json errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// Path parameters; a value that does not parse (a malformed id) is a 400 `invalid_path`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection: PathRejection| Self::Rejection::bad_request("invalid_path", rejection.body_text()))
    }
}

/// Query parameters; wrong types or unknown values are a 400 `invalid_query`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection: QueryRejection| Self::Rejection::bad_request("invalid_query", rejection.body_text()))
    }
}

/// The fallback for paths no route has.
pub async fn no_route() -> ApiError {
    ApiError::NoRoute
}

/// The fallback for a known path with an unsupported method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_their_rust_type_names() {
        assert_eq!(
            without_type_names("invalid type: sequence, expected struct RegisterRequest at line 1 column 1"),
            "invalid type: sequence, expected an object at line 1 column 1"
        );
        assert_eq!(
            without_type_names("role: unknown variant `x`, expected enum Role, or so"),
            "role: unknown variant `x`, expected one of the allowed values, or so"
        );
        assert_eq!(without_type_names("missing field `email`"), "missing field `email`");
    }
}
