//! `event` and event search: PostgreSQL full-text search for words, trigram word similarity for
//! typos (per word), keyset pagination on (score, id) so every event is returned exactly once.

use common::ids::{EventId, UserId};
use sqlx::{PgExecutor, prelude::FromRow};
use time::OffsetDateTime;

/// An event as stored.
#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    /// Id.
    pub event_id: EventId,
    /// Title.
    pub title: String,
    /// Category (concert, sport, theatre ...).
    pub category: String,
    /// Description.
    pub description: String,
    /// City.
    pub city: String,
    /// Creator (the organizer who owns it).
    pub created_by: Option<UserId>,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// An event with its search score.
#[derive(Debug, Clone, FromRow)]
pub struct ScoredEventRow {
    /// The event.
    #[sqlx(flatten)]
    pub event: EventRow,
    /// Relevance (0 when there is no query).
    pub score: f32,
}

/// Search filters; `None` means "any".
#[derive(Debug, Default)]
pub struct EventFilter {
    /// Words to look for, typo-tolerant.
    pub q: Option<String>,
    /// City (case-insensitive).
    pub city: Option<String>,
    /// Category (case-insensitive).
    pub category: Option<String>,
    /// Only events with a show starting at or after this time.
    pub from: Option<OffsetDateTime>,
    /// Only events with a show starting before this time.
    pub to: Option<OffsetDateTime>,
    /// Resume after this (score, id).
    pub after: Option<(f32, EventId)>,
    /// Page size.
    pub limit: i64,
}

/// Where the notifier sends an event's booking facts, and the secret it signs them with.
#[derive(Debug, Clone)]
pub struct EventWebhook {
    /// An http(s) URL.
    pub url: String,
    /// The HMAC key (stored as is: the notifier must sign with it).
    pub secret: String,
}

/// Inserts an event, with its organizer webhook when it has one.
#[tracing::instrument(skip_all, fields(event_id = %row.event_id))]
pub async fn insert(
    db: impl PgExecutor<'_>,
    row: &EventRow,
    webhook: Option<&EventWebhook>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO event (event_id, title, category, description, city, created_by, webhook_url, webhook_secret)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(row.event_id)
    .bind(&row.title)
    .bind(&row.category)
    .bind(&row.description)
    .bind(&row.city)
    .bind(row.created_by)
    .bind(webhook.map(|webhook| webhook.url.as_str()))
    .bind(webhook.map(|webhook| webhook.secret.as_str()))
    .execute(db)
    .await
    .map(|_| ())
}

/// An event by id.
#[tracing::instrument(skip(db))]
pub async fn find(db: impl PgExecutor<'_>, id: EventId) -> Result<Option<EventRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_id, title, category, description, city, created_by, created_at
         FROM event WHERE event_id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// How similar (pg_trgm `word_similarity`) each query word must be to some stretch of the title
/// for a typo-tolerant match: "metallca" vs "Metallica World Tour" is 0.67, unrelated words
/// stay well below.
pub const WORD_SIMILARITY_THRESHOLD: f32 = 0.5;

/// Events matching `filter`, best first (newest first without a query).
///
/// A row matches `q` when its full-text document matches the words (stemmed, all of them), or
/// when every word of `q` is similar enough to a stretch of the title (trigram word similarity,
/// which catches misspellings such as "Metalica"). The score is the larger of the text rank and
/// the mean word similarity. The per-word trigram test cannot use an index; catalogs are small
/// (thousands of events), so the scan costs little.
#[tracing::instrument(skip(db))]
pub async fn search(db: impl PgExecutor<'_>, filter: &EventFilter) -> Result<Vec<ScoredEventRow>, sqlx::Error> {
    sqlx::query_as(
        "WITH q AS (
            SELECT websearch_to_tsquery('english', $1) AS ts,
                   array_remove(regexp_split_to_array(lower($1), '[^[:alnum:]]+'), '') AS words
         )
         SELECT * FROM (
            SELECT e.event_id, e.title, e.category, e.description, e.city, e.created_by, e.created_at,
                   CASE WHEN $1::text IS NULL THEN 0::real
                        ELSE greatest(ts_rank(e.search, q.ts),
                                      (SELECT avg(word_similarity(w, lower(e.title))) FROM unnest(q.words) w))::real
                   END AS score
            FROM event e CROSS JOIN q
            WHERE ($1::text IS NULL
                   OR e.search @@ q.ts
                   OR (cardinality(q.words) > 0
                       AND NOT EXISTS (SELECT 1 FROM unnest(q.words) w
                                       WHERE word_similarity(w, lower(e.title)) < $9)))
              AND ($2::text IS NULL OR lower(e.city) = lower($2))
              AND ($3::text IS NULL OR lower(e.category) = lower($3))
              AND (($4::timestamptz IS NULL AND $5::timestamptz IS NULL)
                   OR EXISTS (SELECT 1 FROM show s
                              WHERE s.event_id = e.event_id
                                AND ($4::timestamptz IS NULL OR s.starts_at >= $4)
                                AND ($5::timestamptz IS NULL OR s.starts_at < $5)))
         ) scored
         WHERE ($6::real IS NULL OR (score, event_id) < ($6::real, $7::uuid))
         ORDER BY score DESC, event_id DESC
         LIMIT $8",
    )
    .bind(filter.q.as_deref())
    .bind(filter.city.as_deref())
    .bind(filter.category.as_deref())
    .bind(filter.from)
    .bind(filter.to)
    .bind(filter.after.map(|(score, _)| score))
    .bind(filter.after.map(|(_, id)| id))
    .bind(filter.limit)
    .bind(WORD_SIMILARITY_THRESHOLD)
    .fetch_all(db)
    .await
}
