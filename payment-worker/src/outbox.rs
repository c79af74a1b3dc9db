//! The payment-worker's side of the transactional outbox (DESIGN.md "Message topology"): the
//! messages of a state change are inserted in its transaction, published with confirms right
//! after the commit, and swept again later when that publish did not happen (a crash, a broker
//! outage). The table is shared with the booking-worker, whose relay may also sweep these rows;
//! a row published twice is harmless, as consumers deduplicate by message or command id.
//!
//! Commands to a show (`ConfirmBooking`, `PaymentFailed`, `RecordRefund`) are published
//! `mandatory`: if no show queue takes them the row stays unpublished and is retried. Facts are
//! broadcast on the `events` topic exchange, where having no subscriber is not an error.

use std::time::Duration;

use common::{
    contracts::{Envelope, Message, event_routing_key},
    ids::{MessageId, ShowId},
    mq::{Broker, Topology},
};
use sqlx::{PgConnection, PgPool, prelude::FromRow};

/// A message to write to the outbox.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The envelope's id (deterministic: see [`crate::ids`]).
    pub message_id: MessageId,
    /// Exchange to publish to.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// The whole envelope.
    pub body: serde_json::Value,
}

fn envelope<T: Message>(show: ShowId, id: MessageId, payload: T) -> serde_json::Value {
    let mut envelope = Envelope::new(Some(show), payload);
    envelope.message_id = id;
    serde_json::to_value(&envelope).expect("contracts serialise")
}

/// A command to `show`'s queue (routing key = the show id on the `shows` exchange).
pub fn command<T: Message>(topology: &Topology, show: ShowId, id: MessageId, payload: T) -> Outgoing {
    Outgoing {
        message_id: id,
        exchange: topology.shows_exchange(),
        routing_key: show.to_string(),
        body: envelope(show, id, payload),
    }
}

/// A fact about `show` on the `events` exchange (routing key `<type>.<show_id>`).
pub fn event<T: Message>(topology: &Topology, show: ShowId, id: MessageId, payload: T) -> Outgoing {
    Outgoing {
        message_id: id,
        exchange: topology.events_exchange(),
        routing_key: event_routing_key::<T>(show),
        body: envelope(show, id, payload),
    }
}

/// A row written, to publish after the commit.
#[derive(Debug, Clone, FromRow)]
pub struct Row {
    /// Its id.
    pub outbox_id: i64,
    /// The envelope's id.
    pub message_id: MessageId,
    /// Exchange.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// The envelope.
    pub body: serde_json::Value,
}

/// Inserts `messages` in order; a message id already in the outbox is skipped (the same state
/// change written before). Returns the rows inserted.
#[tracing::instrument(skip_all, fields(messages = messages.len()))]
pub async fn insert(db: &mut PgConnection, messages: &[Outgoing]) -> Result<Vec<Row>, sqlx::Error> {
    let mut rows = Vec::with_capacity(messages.len());
    for message in messages {
        let row: Option<Row> = sqlx::query_as(
            "INSERT INTO outbox (message_id, exchange, routing_key, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (message_id) DO NOTHING
             RETURNING outbox_id, message_id, exchange, routing_key, body",
        )
        .bind(message.message_id)
        .bind(&message.exchange)
        .bind(&message.routing_key)
        .bind(&message.body)
        .fetch_optional(&mut *db)
        .await?;
        rows.extend(row);
    }
    Ok(rows)
}

/// Marks rows as published.
#[tracing::instrument(skip(db, ids), fields(rows = ids.len()))]
pub async fn mark_published(db: impl sqlx::PgExecutor<'_>, ids: &[i64]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE outbox SET published_at = now() WHERE outbox_id = ANY($1) AND published_at IS NULL")
        .bind(ids)
        .execute(db)
        .await?;
    Ok(())
}

/// Rows unpublished for longer than `older_than`, oldest first, locked (`SKIP LOCKED`: several
/// relays sweep without waiting on each other).
#[tracing::instrument(skip(db))]
pub async fn unpublished(db: &mut PgConnection, older_than: Duration, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(
        "SELECT outbox_id, message_id, exchange, routing_key, body FROM outbox
         WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $1)
         ORDER BY outbox_id LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Publishes rows in order with confirms, stopping at the first failure (the rest wait for the
/// sweep, in order). Returns the ids of the rows the broker confirmed.
pub async fn publish(broker: &Broker, rows: &[Row]) -> Vec<i64> {
    let Ok(publisher) = broker.publisher() else {
        tracing::warn!(rows = rows.len(), "broker unavailable; the outbox sweep will publish");
        return Vec::new();
    };
    let shows = broker.topology().shows_exchange();
    let mut published = Vec::with_capacity(rows.len());
    for row in rows {
        let body = serde_json::to_vec(&row.body).expect("JSON values serialise");
        let kind = row.body["type"].as_str().unwrap_or_default();
        let message_id = row.message_id.to_string();
        let result = if row.exchange == shows {
            publisher
                .publish_raw(&row.exchange, &row.routing_key, &message_id, kind, &body)
                .await
        } else {
            publisher
                .broadcast_raw(&row.exchange, &row.routing_key, &message_id, kind, &body)
                .await
        };
        match result {
            Ok(()) => published.push(row.outbox_id),
            Err(err) => {
                tracing::warn!(error = %err, exchange = %row.exchange, routing_key = %row.routing_key,
                    "cannot publish an outbox row; the sweep will retry");
                break;
            }
        }
    }
    published
}

/// Publishes rows just committed and marks them.
pub async fn publish_committed(db: &PgPool, broker: &Broker, rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    let published = publish(broker, rows).await;
    if let Err(err) = mark_published(db, &published).await {
        // They will be published again by a sweep: harmless duplicates.
        tracing::warn!(error = %err, "cannot mark outbox rows as published");
    }
}

/// One sweep: publishes rows left unpublished for longer than `older_than`. Returns how many.
pub async fn sweep(db: &PgPool, broker: &Broker, older_than: Duration) -> Result<usize, sqlx::Error> {
    if !broker.is_connected() {
        return Ok(0);
    }
    let mut tx = db.begin().await?;
    let rows = unpublished(&mut tx, older_than, 500).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let published = publish(broker, &rows).await;
    mark_published(&mut *tx, &published).await?;
    tx.commit().await?;
    Ok(published.len())
}
