//! `promo_code`: organizers create codes here; the booking-worker applies them (and counts
//! their uses) when a hold names one.

use common::ids::{PromoCodeId, ShowId, UserId};
use sqlx::{PgExecutor, prelude::FromRow};
use time::OffsetDateTime;

/// A promo code as stored.
#[derive(Debug, Clone, FromRow)]
pub struct PromoCodeRow {
    /// Id.
    pub promo_code_id: PromoCodeId,
    /// The code fans type (matched case-insensitively).
    pub code: String,
    /// The show it is valid for; every show when `None`.
    pub show_id: Option<ShowId>,
    /// Percentage off the subtotal.
    pub percent_off: Option<i32>,
    /// Fixed amount off the subtotal, minor units.
    pub amount_off_cents: Option<i32>,
    /// Bookings that may use it.
    pub max_uses: i32,
    /// Bookings that did.
    pub used_count: i32,
    /// Last moment it applies.
    pub valid_until: OffsetDateTime,
    /// Creator.
    pub created_by: Option<UserId>,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// A new promo code.
#[derive(Debug, Clone)]
pub struct NewPromoCode {
    /// Id.
    pub promo_code_id: PromoCodeId,
    /// The code, upper-cased.
    pub code: String,
    /// The show, or every show.
    pub show_id: Option<ShowId>,
    /// Percentage off.
    pub percent_off: Option<i32>,
    /// Amount off.
    pub amount_off_cents: Option<i32>,
    /// Uses allowed.
    pub max_uses: i32,
    /// Expiry.
    pub valid_until: OffsetDateTime,
    /// Creator.
    pub created_by: UserId,
}

/// Inserts a code; a code that already exists for the same show (or globally) is a unique
/// violation (`promo_code_unique`).
#[tracing::instrument(skip_all, fields(promo_code_id = %code.promo_code_id))]
pub async fn insert(db: impl PgExecutor<'_>, code: &NewPromoCode) -> Result<PromoCodeRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO promo_code (promo_code_id, code, show_id, percent_off, amount_off_cents, max_uses,
                                 valid_until, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING promo_code_id, code, show_id, percent_off, amount_off_cents, max_uses, used_count,
                   valid_until, created_by, created_at",
    )
    .bind(code.promo_code_id)
    .bind(&code.code)
    .bind(code.show_id)
    .bind(code.percent_off)
    .bind(code.amount_off_cents)
    .bind(code.max_uses)
    .bind(code.valid_until)
    .bind(code.created_by)
    .fetch_one(db)
    .await
}
