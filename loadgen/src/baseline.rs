//! `loadgen baseline`: the raw ceilings of this machine, measured under the same conditions as
//! `loadgen holds`, so the pipeline's figures can be read as a share of what the hardware does.
//!
//! - PostgreSQL: one session updates `--pg-batch` seats per transaction (`UPDATE ... FROM
//!   UNNEST($1::int[])`, then a durable `COMMIT`) of a `--pg-rows` scratch table, for
//!   `--seconds`. The seats are taken in order, batch after batch, as best-available holds fill
//!   a venue row by row. The table lives in a scratch schema `loadgen_baseline_<pid>` of the
//!   deployment's database (its WAL and disk are the pipeline's), created for the run and
//!   dropped after it; Floodgate's own tables are never touched.
//! - RabbitMQ: a scratch durable quorum queue; one connection publishes persistent messages
//!   with publisher confirms, keeping `--mq-window` unconfirmed, while another connection
//!   consumes them (prefetch 512, acknowledged in groups as the booking-worker does) for
//!   `--seconds`; the queue is deleted afterwards.
//!
//! The ceiling is the lower of PostgreSQL seats/s and RabbitMQ messages/s: a hold is at least one
//! command message and one seat write. [`Ratio`] is the pipeline's share of it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::{StreamExt as _, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection as _, Executor as _, PgConnection};

use crate::{
    holds::{database_url, run_env},
    report::{Latency, Summary},
};

/// `loadgen baseline` options.
#[derive(Debug, clap::Args)]
pub struct BaselineArgs {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The deployment's database (the scratch schema is created in it).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Rows of the scratch seat table.
    #[arg(long, default_value_t = 50_000)]
    pg_rows: i32,
    /// Seats updated per transaction.
    #[arg(long, default_value_t = 100)]
    pg_batch: i32,
    /// The deployment's RabbitMQ.
    #[arg(long, env = "AMQP_URL")]
    amqp_url: Option<String>,
    /// Unconfirmed publishes in flight.
    #[arg(long, default_value_t = 256)]
    mq_window: usize,
    /// Bytes per message (a hold command's envelope is about 400).
    #[arg(long, default_value_t = 400)]
    mq_payload_bytes: usize,
    /// Skip PostgreSQL.
    #[arg(long)]
    skip_postgres: bool,
    /// Skip RabbitMQ.
    #[arg(long)]
    skip_rabbitmq: bool,
    /// A `loadgen holds` result: report its share of these ceilings.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Where to write the JSON result.
    #[arg(long, default_value = "loadgen-baseline.json")]
    out: PathBuf,
}

/// PostgreSQL's figures.
#[derive(Debug, Serialize)]
pub struct PostgresBaseline {
    /// Measured seconds.
    pub seconds: f64,
    /// Transactions committed.
    pub transactions: u64,
    /// Seats updated.
    pub seats: u64,
    /// Seats per transaction.
    pub seats_per_transaction: i32,
    /// Transactions per second.
    pub transactions_per_second: f64,
    /// Seats per second: the ceiling.
    pub seats_per_second: f64,
    /// BEGIN to COMMIT done, per transaction.
    pub transaction_latency: Summary,
    /// Server settings that decide durability and its cost.
    pub server_version: String,
    /// `fsync`.
    pub fsync: String,
    /// `synchronous_commit` of the session (set to `on`).
    pub synchronous_commit: String,
    /// `wal_sync_method`.
    pub wal_sync_method: String,
}

/// RabbitMQ's figures.
#[derive(Debug, Serialize)]
pub struct RabbitBaseline {
    /// From the first publish to the last delivery.
    pub seconds: f64,
    /// Messages published and confirmed.
    pub confirmed: u64,
    /// Messages consumed.
    pub consumed: u64,
    /// Confirmed per second of publishing.
    pub confirmed_per_second: f64,
    /// Consumed per second, end to end: the ceiling.
    pub messages_per_second: f64,
    /// Publish to confirm.
    pub confirm_latency: Summary,
    /// Publish to delivery.
    pub end_to_end_latency: Summary,
    /// Unconfirmed publishes in flight.
    pub window: usize,
    /// Bytes per message.
    pub payload_bytes: usize,
}

/// The JSON result of `loadgen baseline`.
#[derive(Debug, Serialize)]
pub struct BaselineResult {
    /// PostgreSQL, unless skipped.
    pub postgres: Option<PostgresBaseline>,
    /// RabbitMQ, unless skipped.
    pub rabbitmq: Option<RabbitBaseline>,
    /// The lower ceiling, per second.
    pub ceiling_per_second: Option<f64>,
    /// Which one it is.
    pub ceiling: Option<String>,
    /// A `loadgen holds` result compared with it.
    pub comparison: Option<Ratio>,
}

/// The pipeline's share of the machine's ceiling.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ratio {
    /// The pipeline's holds per second.
    pub holds_per_second: f64,
    /// The pipeline's seats per second.
    pub seats_per_second: f64,
    /// PostgreSQL seats/s of the baseline.
    pub postgres_seats_per_second: Option<f64>,
    /// RabbitMQ messages/s of the baseline.
    pub rabbitmq_messages_per_second: Option<f64>,
    /// The lower of the two.
    pub ceiling_per_second: f64,
    /// seats/s ÷ ceiling.
    pub seats_ratio: f64,
    /// holds/s ÷ ceiling.
    pub holds_ratio: f64,
}

/// The lower of the ceilings that were measured, and its name.
fn ceiling(postgres: Option<f64>, rabbitmq: Option<f64>) -> Option<(f64, &'static str)> {
    match (postgres, rabbitmq) {
        (Some(pg), Some(mq)) if mq < pg => Some((mq, "rabbitmq")),
        (Some(pg), _) => Some((pg, "postgres")),
        (None, Some(mq)) => Some((mq, "rabbitmq")),
        (None, None) => None,
    }
}

/// The pipeline's figures as a share of the baseline's lower ceiling.
pub fn ratio(
    holds_per_second: f64,
    seats_per_second: f64,
    postgres: Option<f64>,
    rabbitmq: Option<f64>,
) -> Option<Ratio> {
    let (ceiling, _) = ceiling(postgres, rabbitmq)?;
    (ceiling > 0.0).then(|| Ratio {
        holds_per_second,
        seats_per_second,
        postgres_seats_per_second: postgres,
        rabbitmq_messages_per_second: rabbitmq,
        ceiling_per_second: ceiling,
        seats_ratio: seats_per_second / ceiling,
        holds_ratio: holds_per_second / ceiling,
    })
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The ratio of a holds run to the baseline result in `path`.
pub fn ratio_from_files(path: &Path, holds_per_second: f64, seats_per_second: f64) -> anyhow::Result<Ratio> {
    let baseline = read_json(path)?;
    ratio(
        holds_per_second,
        seats_per_second,
        baseline["postgres"]["seats_per_second"].as_f64(),
        baseline["rabbitmq"]["messages_per_second"].as_f64(),
    )
    .with_context(|| format!("{} has no ceiling", path.display()))
}

/// Runs the measurements and writes the result.
pub async fn run(args: BaselineArgs) -> anyhow::Result<()> {
    let seconds = Duration::from_secs(args.seconds.max(1));
    let postgres = if args.skip_postgres {
        None
    } else {
        let url = database_url(args.database_url.clone());
        tracing::info!(
            seconds = seconds.as_secs(),
            "PostgreSQL: batched seat updates in one session"
        );
        Some(postgres(&url, args.pg_rows, args.pg_batch, seconds).await?)
    };
    let rabbitmq = if args.skip_rabbitmq {
        None
    } else {
        let url = args
            .amqp_url
            .clone()
            .or_else(|| run_env("AMQP_URL"))
            .unwrap_or_else(|| common::config::defaults::AMQP_URL.to_owned());
        tracing::info!(
            seconds = seconds.as_secs(),
            "RabbitMQ: confirmed publishes through a quorum queue"
        );
        Some(rabbitmq(&url, args.mq_window, args.mq_payload_bytes, seconds).await?)
    };
    let pg = postgres.as_ref().map(|pg| pg.seats_per_second);
    let mq = rabbitmq.as_ref().map(|mq| mq.messages_per_second);
    let comparison = match &args.compare {
        Some(path) => {
            let holds = read_json(path)?;
            let figure = |name: &str| {
                holds[name]
                    .as_f64()
                    .with_context(|| format!("{} has no `{name}`", path.display()))
            };
            ratio(figure("holds_per_second")?, figure("seats_per_second")?, pg, mq)
        }
        None => None,
    };
    let lower = ceiling(pg, mq);
    let result = BaselineResult {
        postgres,
        rabbitmq,
        ceiling_per_second: lower.map(|(value, _)| value),
        ceiling: lower.map(|(_, name)| name.to_owned()),
        comparison,
    };
    let json = serde_json::to_string_pretty(&result)?;
    std::fs::write(&args.out, &json).with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{json}");
    if let Some(ratio) = &result.comparison {
        println!(
            "\npipeline: {:.0} seats/s = {:.1}% and {:.0} holds/s = {:.1}% of the ceiling ({:.0}/s)",
            ratio.seats_per_second,
            ratio.seats_ratio * 100.0,
            ratio.holds_per_second,
            ratio.holds_ratio * 100.0,
            ratio.ceiling_per_second
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// The seats of batch `n`: `batch` consecutive indexes, wrapping around the table.
fn batch_seats(n: u64, batch: i32, rows: i32) -> Vec<i32> {
    let rows = i64::from(rows.max(1));
    let start = (n as i64 * i64::from(batch)) % rows;
    (0..i64::from(batch)).map(|i| ((start + i) % rows) as i32).collect()
}

async fn postgres(url: &str, rows: i32, batch: i32, seconds: Duration) -> anyhow::Result<PostgresBaseline> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("cannot connect to PostgreSQL")?;
    let schema = format!("loadgen_baseline_{}", std::process::id());
    // The schema name is ours (a number), so formatting it into the SQL is safe.
    conn.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .await
        .with_context(|| format!("cannot create the scratch schema {schema}"))?;
    let measured = measure_postgres(&mut conn, &schema, rows, batch, seconds).await;
    let dropped = conn
        .execute(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await;
    conn.close().await.ok();
    dropped.with_context(|| format!("cannot drop the scratch schema {schema}"))?;
    measured
}

async fn setting(conn: &mut PgConnection, name: &str) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT current_setting($1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

async fn measure_postgres(
    conn: &mut PgConnection,
    schema: &str,
    rows: i32,
    batch: i32,
    seconds: Duration,
) -> anyhow::Result<PostgresBaseline> {
    // Shaped like show_seat: a status, the booking holding the seat, a version.
    conn.execute(AssertSqlSafe(format!(
        "CREATE TABLE {schema}.seat (
             seat_index integer PRIMARY KEY,
             status     text    NOT NULL DEFAULT 'available',
             booking_id uuid,
             version    bigint  NOT NULL DEFAULT 0
         )"
    )))
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.seat (seat_index) SELECT generate_series(0, $1 - 1)"
    )))
    .bind(rows)
    .execute(&mut *conn)
    .await?;
    conn.execute(AssertSqlSafe(format!("VACUUM ANALYZE {schema}.seat")))
        .await?;
    // Durable commits whatever the server's default: the pipeline's commits are.
    conn.execute("SET synchronous_commit = on").await?;
    let server_version = setting(conn, "server_version").await?;
    let fsync = setting(conn, "fsync").await?;
    let synchronous_commit = setting(conn, "synchronous_commit").await?;
    let wal_sync_method = setting(conn, "wal_sync_method").await?;

    let update: Arc<str> = format!(
        "UPDATE {schema}.seat AS seat
         SET status = CASE seat.status WHEN 'available' THEN 'held' ELSE 'available' END,
             booking_id = CASE seat.status WHEN 'available' THEN $2::uuid END,
             version = seat.version + 1
         FROM UNNEST($1::int[]) AS chosen (seat_index)
         WHERE seat.seat_index = chosen.seat_index"
    )
    .into();
    let mut latency = Latency::default();
    let mut transactions = 0_u64;
    let mut seats = 0_u64;
    let started = Instant::now();
    while started.elapsed() < seconds {
        let begun = Instant::now();
        let mut tx = conn.begin().await?;
        let updated = sqlx::query(AssertSqlSafe(Arc::clone(&update)))
            .bind(batch_seats(transactions, batch, rows))
            .bind(uuid::Uuid::now_v7())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        latency.record(begun.elapsed());
        transactions += 1;
        seats += updated;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(PostgresBaseline {
        seconds: elapsed,
        transactions,
        seats,
        seats_per_transaction: batch,
        transactions_per_second: transactions as f64 / elapsed,
        seats_per_second: seats as f64 / elapsed,
        transaction_latency: latency.summary(),
        server_version,
        fsync,
        synchronous_commit,
        wal_sync_method,
    })
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ

/// Prefetch of the consumer (the booking-worker's: two batches of 256).
const PREFETCH: u16 = 512;
/// Deliveries acknowledged at once (the booking-worker acknowledges a batch with one ack).
const ACK_EVERY: u64 = 64;

/// A message: the microseconds since the run began (to time its trip), then padding.
fn payload(since_start: Duration, size: usize) -> Vec<u8> {
    let micros = u64::try_from(since_start.as_micros()).unwrap_or(u64::MAX);
    let mut body = micros.to_be_bytes().to_vec();
    body.resize(size.max(8), b'x');
    body
}

fn sent_at(body: &[u8]) -> Option<Duration> {
    let micros = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    Some(Duration::from_micros(micros))
}

async fn rabbitmq(url: &str, window: usize, size: usize, seconds: Duration) -> anyhow::Result<RabbitBaseline> {
    let properties = || ConnectionProperties::default().with_connection_name("loadgen-baseline".into());
    let publishing = Connection::connect(url, properties())
        .await
        .context("cannot connect to RabbitMQ")?;
    let consuming = Connection::connect(url, properties()).await?;
    let queue = format!("loadgen.baseline.{}", uuid::Uuid::new_v4().simple());
    let channel = publishing.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    channel
        .queue_declare(queue.clone().into(), QueueDeclareOptions::durable(), arguments)
        .await
        .with_context(|| format!("cannot declare the scratch queue {queue}"))?;
    let measured = measure_rabbitmq(&publishing, &consuming, &queue, window, size, seconds).await;
    let deleted = channel
        .queue_delete(queue.clone().into(), QueueDeleteOptions::default())
        .await;
    channel.close(200, "done".into()).await.ok();
    publishing.close(200, "done".into()).await.ok();
    consuming.close(200, "done".into()).await.ok();
    deleted.with_context(|| format!("cannot delete the scratch queue {queue}"))?;
    measured
}

async fn confirmed(confirm: PublisherConfirm, sent: Instant) -> (Result<Confirmation, lapin::Error>, Duration) {
    let confirmation = confirm.await;
    (confirmation, sent.elapsed())
}

async fn measure_rabbitmq(
    publishing: &Connection,
    consuming: &Connection,
    queue: &str,
    window: usize,
    size: usize,
    seconds: Duration,
) -> anyhow::Result<RabbitBaseline> {
    let started = Instant::now();
    let consumer_channel = consuming.create_channel().await?;
    consumer_channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.into(),
            "loadgen-baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // The consumer counts deliveries until told how many were published, or gives up 30 s later.
    let (total_tx, mut total_rx) = tokio::sync::watch::channel(None::<u64>);
    let consumer_task = tokio::spawn(async move {
        let mut latency = Latency::default();
        let mut consumed = 0_u64;
        let mut last = started;
        loop {
            if total_rx.borrow().is_some_and(|total| consumed >= total) {
                break;
            }
            let next = tokio::select! {
                next = consumer.next() => next,
                changed = total_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                () = tokio::time::sleep(Duration::from_secs(30)) => break,
            };
            let Some(Ok(delivery)) = next else { break };
            let now = started.elapsed();
            if let Some(sent) = sent_at(&delivery.data) {
                latency.record(now.saturating_sub(sent));
            }
            consumed += 1;
            last = Instant::now();
            if consumed.is_multiple_of(ACK_EVERY) {
                delivery.acker.ack(BasicAckOptions { multiple: true }).await?;
            }
        }
        anyhow::Ok((consumed, last, latency))
    });

    let channel = Arc::new(publishing.create_channel().await?);
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let properties = BasicProperties::default().with_delivery_mode(2);
    let mut pending = FuturesUnordered::new();
    let mut confirm_latency = Latency::default();
    let mut published = 0_u64;
    let mut confirmed_count = 0_u64;
    let mut nacked = 0_u64;
    loop {
        let publishing = started.elapsed() < seconds;
        if publishing && pending.len() < window {
            let sent = Instant::now();
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &payload(started.elapsed(), size),
                    properties.clone(),
                )
                .await?;
            pending.push(confirmed(confirm, sent));
            published += 1;
            continue;
        }
        let Some((confirmation, elapsed)) = pending.next().await else {
            break;
        };
        confirm_latency.record(elapsed);
        if confirmation?.is_ack() {
            confirmed_count += 1;
        } else {
            nacked += 1;
        }
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    if nacked > 0 {
        tracing::warn!(nacked, "the broker refused some publishes");
    }
    total_tx.send(Some(published)).ok();
    let (consumed, last, end_to_end) = consumer_task.await.context("the consumer task failed")??;
    consumer_channel.close(200, "done".into()).await.ok();
    let seconds = last
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(publish_seconds);
    Ok(RabbitBaseline {
        seconds,
        confirmed: confirmed_count,
        consumed,
        confirmed_per_second: confirmed_count as f64 / publish_seconds,
        messages_per_second: consumed as f64 / seconds,
        confirm_latency: confirm_latency.summary(),
        end_to_end_latency: end_to_end.summary(),
        window,
        payload_bytes: size.max(8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_taken_against_the_lower_ceiling() {
        let ratio = ratio(2_000.0, 5_000.0, Some(50_000.0), Some(20_000.0)).expect("a ceiling");
        assert_eq!(ratio.ceiling_per_second, 20_000.0);
        assert!((ratio.seats_ratio - 0.25).abs() < 1e-12);
        assert!((ratio.holds_ratio - 0.1).abs() < 1e-12);
        assert_eq!(ceiling(Some(10.0), Some(20.0)), Some((10.0, "postgres")));
        assert_eq!(ceiling(None, Some(20.0)), Some((20.0, "rabbitmq")));
        assert_eq!(super::ratio(1.0, 1.0, None, None), None);
    }

    #[test]
    fn batches_walk_the_table_in_order_and_wrap_around() {
        assert_eq!(batch_seats(0, 3, 10), vec![0, 1, 2]);
        assert_eq!(batch_seats(3, 3, 10), vec![9, 0, 1]);
        let seats = batch_seats(12_345, 100, 50_000);
        let mut distinct = seats.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 100);
        assert!(seats.iter().all(|seat| (0..50_000).contains(seat)));
    }

    #[test]
    fn a_message_carries_its_send_time() {
        let body = payload(Duration::from_micros(123_456), 400);
        assert_eq!(body.len(), 400);
        assert_eq!(sent_at(&body), Some(Duration::from_micros(123_456)));
        assert_eq!(sent_at(b"short"), None);
    }
}
