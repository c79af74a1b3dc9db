//! `webhook_event`: the gateway events ingress has received, keyed by the gateway's event id so
//! a replayed or duplicated delivery is recognised.

use sqlx::PgExecutor;

/// Records a gateway event; `false` when its id is already recorded (a replay). Run inside the
/// transaction that is committed only once the event is queued: a concurrent delivery of the
/// same id waits on the row lock until that outcome is known.
#[tracing::instrument(skip(db, payload))]
pub async fn insert(
    db: impl PgExecutor<'_>,
    event_id: &str,
    event_type: &str,
    payload: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO webhook_event (gateway_event_id, event_type, payload) VALUES ($1, $2, $3)
         ON CONFLICT (gateway_event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(event_type)
    .bind(payload)
    .execute(db)
    .await?;
    Ok(inserted.rows_affected() == 1)
}
