//! Read-only queries on `waitlist_entry` (the booking-worker writes it).

use common::ids::{ShowId, UserId, WaitlistEntryId};
use sqlx::{PgExecutor, prelude::FromRow};

/// A fan's open place on a waitlist.
#[derive(Debug, Clone, FromRow)]
pub struct EntryRow {
    /// Id.
    pub waitlist_entry_id: WaitlistEntryId,
    /// Seats wanted.
    pub quantity: i32,
    /// waiting or offered.
    pub status: String,
}

/// The caller's open (waiting or offered) entry for the show, if any.
#[tracing::instrument(skip(db))]
pub async fn open_entry(db: impl PgExecutor<'_>, show: ShowId, user: UserId) -> Result<Option<EntryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT waitlist_entry_id, quantity, status FROM waitlist_entry
         WHERE show_id = $1 AND app_user_id = $2 AND status IN ('waiting', 'offered')",
    )
    .bind(show)
    .bind(user)
    .fetch_optional(db)
    .await
}
