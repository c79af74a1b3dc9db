//! API.md "Organizer/admin": promo codes.
//!
//! A code is either a percentage or a fixed amount off a booking's subtotal, for one show (of
//! the caller's events) or, created by an admin only, for every show. Codes are stored upper
//! case and matched case-insensitively by the booking-worker, which applies them to holds and
//! counts their uses.

use axum::{Json, extract::State, http::StatusCode};
use common::ids::{PromoCodeId, ShowId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::{
    app::AppState,
    auth::extract::Organizer,
    domain::Role,
    error::{ApiError, ApiJson, Problem},
    store::{promo_codes, shows},
};

/// `POST /admin/promo-codes` body: exactly one of `percent_off` and `amount_off_cents`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePromoCodeRequest {
    /// 3-32 letters, digits, `-` or `_`; case does not matter.
    pub code: String,
    /// The show it is valid for (one of the caller's); absent: every show (admins only).
    #[serde(default)]
    pub show_id: Option<ShowId>,
    /// 1-100 percent off.
    #[serde(default)]
    pub percent_off: Option<i64>,
    /// A fixed amount off, minor units of the show's currency (at least 1).
    #[serde(default)]
    pub amount_off_cents: Option<i64>,
    /// How many bookings may use it (at least 1).
    pub max_uses: i64,
    /// Last moment it applies (in the future).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub valid_until: OffsetDateTime,
}

/// A promo code.
#[derive(Debug, Serialize, ToSchema)]
pub struct PromoCodeResponse {
    /// Id.
    pub promo_code_id: PromoCodeId,
    /// The code, upper case.
    pub code: String,
    /// Its show; absent: every show.
    pub show_id: Option<ShowId>,
    /// Percent off.
    pub percent_off: Option<i32>,
    /// Amount off, minor units.
    pub amount_off_cents: Option<i32>,
    /// Bookings that may use it.
    pub max_uses: i32,
    /// Bookings that did.
    pub used_count: i32,
    /// Last moment it applies.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub valid_until: OffsetDateTime,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<promo_codes::PromoCodeRow> for PromoCodeResponse {
    fn from(row: promo_codes::PromoCodeRow) -> Self {
        Self {
            promo_code_id: row.promo_code_id,
            code: row.code,
            show_id: row.show_id,
            percent_off: row.percent_off,
            amount_off_cents: row.amount_off_cents,
            max_uses: row.max_uses,
            used_count: row.used_count,
            valid_until: row.valid_until,
            created_at: row.created_at,
        }
    }
}

/// The request as a new code, or a 422 naming the first bad value.
fn parse(
    body: &CreatePromoCodeRequest,
    now: OffsetDateTime,
) -> Result<(String, Option<i32>, Option<i32>, i32), ApiError> {
    let code = body.code.trim();
    if !(3..=32).contains(&code.len()) || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ApiError::unprocessable(
            "invalid_code",
            "`code` must be 3 to 32 letters, digits, `-` or `_`.",
        ));
    }
    let (percent, amount) = match (body.percent_off, body.amount_off_cents) {
        (Some(percent), None) if (1..=100).contains(&percent) => (i32::try_from(percent).ok(), None),
        (None, Some(amount)) if amount >= 1 => match i32::try_from(amount) {
            Ok(amount) => (None, Some(amount)),
            Err(_) => {
                return Err(ApiError::unprocessable(
                    "invalid_discount",
                    "`amount_off_cents` is too large.",
                ));
            }
        },
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::unprocessable(
                "invalid_discount",
                "Give exactly one of `percent_off` and `amount_off_cents`.",
            ));
        }
        _ => {
            return Err(ApiError::unprocessable(
                "invalid_discount",
                "`percent_off` must be 1 to 100; `amount_off_cents` at least 1.",
            ));
        }
    };
    let max_uses = i32::try_from(body.max_uses)
        .ok()
        .filter(|uses| *uses >= 1)
        .ok_or_else(|| ApiError::unprocessable("invalid_max_uses", "`max_uses` must be 1 to 2147483647."))?;
    if body.valid_until <= now {
        return Err(ApiError::unprocessable(
            "invalid_valid_until",
            "`valid_until` must be in the future.",
        ));
    }
    Ok((code.to_uppercase(), percent, amount, max_uses))
}

/// Creates a promo code.
#[utoipa::path(post, path = "/api/v1/admin/promo-codes", tag = "admin", security(("bearer" = [])),
    request_body = CreatePromoCodeRequest,
    responses((status = 201, body = PromoCodeResponse),
        (status = 400, body = Problem),
        (status = 403, description = "not an organizer, or a code for every show by a non-admin", body = Problem),
        (status = 404, description = "the show is unknown or another organizer's", body = Problem),
        (status = 409, description = "promo_code_exists", body = Problem),
        (status = 422, description = "invalid_code, invalid_discount, invalid_max_uses or invalid_valid_until", body = Problem)))]
pub async fn create_promo_code(
    State(state): State<AppState>,
    organizer: Organizer,
    ApiJson(body): ApiJson<CreatePromoCodeRequest>,
) -> Result<(StatusCode, Json<PromoCodeResponse>), ApiError> {
    let (code, percent_off, amount_off_cents, max_uses) = parse(&body, OffsetDateTime::now_utc())?;
    match body.show_id {
        Some(show) => {
            let found = shows::find(&state.db, show).await?;
            if !found.is_some_and(|found| organizer.may_manage(found.owner)) {
                return Err(ApiError::NotFound("show"));
            }
        }
        // A code for every show discounts other organizers' shows too.
        None if organizer.0.role != Role::Admin => {
            return Err(ApiError::Forbidden {
                code: "forbidden",
                detail: "Only an admin may create a code for every show; give a `show_id`.".to_owned(),
            });
        }
        None => {}
    }
    let new = promo_codes::NewPromoCode {
        promo_code_id: PromoCodeId::new(),
        code,
        show_id: body.show_id,
        percent_off,
        amount_off_cents,
        max_uses,
        valid_until: body.valid_until,
        created_by: organizer.0.user_id,
    };
    let created = promo_codes::insert(&state.db, &new).await.map_err(|err| {
        ApiError::conflict_on_unique(err, "promo_code_exists", "This code already exists for this show.")
    })?;
    tracing::info!(promo_code_id = %created.promo_code_id, "promo code created");
    Ok((StatusCode::CREATED, Json(created.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str, percent: Option<i64>, amount: Option<i64>, uses: i64) -> CreatePromoCodeRequest {
        CreatePromoCodeRequest {
            code: code.to_owned(),
            show_id: None,
            percent_off: percent,
            amount_off_cents: amount,
            max_uses: uses,
            valid_until: OffsetDateTime::now_utc() + time::Duration::days(1),
        }
    }

    #[test]
    fn a_code_has_exactly_one_sane_discount() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            parse(&body("spring-25", Some(25), None, 10), now).unwrap(),
            ("SPRING-25".to_owned(), Some(25), None, 10)
        );
        assert_eq!(
            parse(&body("FIVE", None, Some(500), 1), now).unwrap(),
            ("FIVE".to_owned(), None, Some(500), 1)
        );
        for (bad, code) in [
            (body("X", Some(10), None, 1), "invalid_code"),
            (body("has space", Some(10), None, 1), "invalid_code"),
            (body("BOTH", Some(10), Some(100), 1), "invalid_discount"),
            (body("NEITHER", None, None, 1), "invalid_discount"),
            (body("ZERO", Some(0), None, 1), "invalid_discount"),
            (body("MORE", Some(101), None, 1), "invalid_discount"),
            (body("NEG", None, Some(-5), 1), "invalid_discount"),
            (body("HUGE", None, Some(i64::MAX), 1), "invalid_discount"),
            (body("USES", Some(10), None, 0), "invalid_max_uses"),
        ] {
            assert_eq!(parse(&bad, now).unwrap_err().code(), code, "{bad:?}");
        }
        let mut past = body("PAST", Some(10), None, 1);
        past.valid_until = now - time::Duration::seconds(1);
        assert_eq!(parse(&past, now).unwrap_err().code(), "invalid_valid_until");
    }
}
