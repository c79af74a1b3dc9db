//! One show's consumer: the loop that makes this process the show's single writer while
//! RabbitMQ lets it.
//!
//! Every worker subscribes to every on-sale show's queue; the queue's single-active-consumer
//! flag makes RabbitMQ deliver to one of them and keep the others on standby. A consumer knows it
//! has become the active one when its first delivery arrives: it then takes over the show (bumps
//! the fencing epoch), loads the show into memory and rebuilds the Redis snapshot.
//!
//! Per batch (up to `batch_max` deliveries or `batch_wait` after the first): decode (a message
//! that cannot be decoded is dead-lettered at once, so a poison message never blocks the show),
//! skip commands applied before, apply the rest in queue order, write everything in one fenced
//! transaction, publish the events with confirms, update the snapshot, and only then acknowledge
//! the whole batch with one multiple-ack. A crash anywhere before the ack redelivers the batch,
//! and the command ids make the redelivery harmless.
//!
//! Failures:
//! - fenced (another worker took over): the state is dropped and the channel closed, which
//!   hands the unacknowledged deliveries back to RabbitMQ; the consumer re-subscribes and waits
//!   on standby;
//! - database or Redis trouble while loading or writing: the state is dropped (it may be ahead
//!   of the database), and after a backoff the same deliveries, still unacknowledged and still
//!   in order, are applied again to a freshly loaded state;
//! - channel or connection lost: re-subscribe once the broker is back (the unacknowledged
//!   deliveries are redelivered to whichever consumer RabbitMQ makes active).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{
    availability,
    contracts::{SeatCounts, ShowCommand},
    ids::{CommandId, ShowId},
    mq::Broker,
    tickets::TicketSigner,
};
use futures::StreamExt as _;
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    engine::{Route, ShowState},
    metrics, store,
};

/// How often the show queue's depth is read for the gauge.
const QUEUE_DEPTH_EVERY: Duration = Duration::from_secs(5);

/// The longest the loop sleeps before looking at hold expiry again.
const EXPIRY_RECHECK: Duration = Duration::from_secs(1);

/// Tuning of the consumer loop.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Most commands per batch (`BOOKING_BATCH_MAX`, default 256).
    pub batch_max: u16,
    /// How long a batch waits for more commands after its first (`BOOKING_BATCH_WAIT_MS`, 5).
    pub batch_wait: Duration,
    /// Backoff after a transient failure (doubling up to 5 s).
    pub retry_min: Duration,
    /// How much longer a hold lasts once its payment started (`BOOKING_PAYMENT_GRACE_SECONDS`,
    /// default 120).
    pub payment_grace: Duration,
    /// Signs ticket codes (`TICKET_SIGNING_KEY`).
    pub ticket_signer: TicketSigner,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch_max: 256,
            batch_wait: Duration::from_millis(5),
            retry_min: Duration::from_millis(100),
            payment_grace: Duration::from_secs(120),
            ticket_signer: TicketSigner::new(common::config::defaults::TICKET_SIGNING_KEY),
        }
    }
}

/// What a show consumer needs.
pub struct Context {
    /// PostgreSQL.
    pub db: PgPool,
    /// Redis (the availability snapshot).
    pub redis: ConnectionManager,
    /// `REDIS_KEY_PREFIX`.
    pub redis_prefix: String,
    /// RabbitMQ.
    pub broker: Arc<Broker>,
    /// Tuning.
    pub config: WorkerConfig,
    /// The time (tests move it).
    pub clock: Arc<dyn Fn() -> OffsetDateTime + Send + Sync>,
}

impl Context {
    fn now(&self) -> OffsetDateTime {
        (self.clock)()
    }
}

/// The show while this worker writes it.
struct Writer {
    state: ShowState,
    epoch: i64,
    batches: u32,
    /// Outbox rows published since the last commit, marked in the next batch's transaction.
    published: Arc<Mutex<Vec<i64>>>,
    /// The snapshot missed a write: rebuild it whole at the next batch.
    snapshot_stale: Arc<AtomicBool>,
    /// The previous batch's post-commit work (publish, snapshot, ack), still running while
    /// this batch is applied and written: batches overlap, their post-commit steps do not.
    post: Option<JoinHandle<()>>,
}

impl Writer {
    fn version(&self) -> u64 {
        availability::version(self.epoch, self.batches)
    }
}

/// Lets go of the show's state, once the last batch's post-commit work (its acknowledgement
/// above all) is done: a later ack must never overtake it.
async fn stand_down(writer: &mut Option<Writer>) {
    if let Some(post) = writer.take().and_then(|writer| writer.post) {
        let _ = post.await;
    }
}

/// Why the consumer stopped consuming.
enum Stop {
    /// Shutdown was asked.
    Shutdown,
    /// Re-subscribe (fenced, channel lost, cancelled by the broker).
    Resubscribe,
}

/// Serves `show` until `shutdown`: subscribes, writes while active, re-subscribes after losing
/// the channel or being fenced.
pub async fn serve_show(context: Arc<Context>, show: ShowId, shutdown: CancellationToken) {
    let mut delay = context.config.retry_min;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match subscribe(&context, show).await {
            Ok((channel, consumer)) => {
                delay = context.config.retry_min;
                let stop = consume(&context, show, &channel, consumer, &shutdown).await;
                metrics::active(show, false);
                // Closing the channel hands every unacknowledged delivery back to RabbitMQ.
                if let Err(err) = channel.close(200, "closing".into()).await {
                    tracing::debug!(%show, error = %err, "show channel already closed");
                }
                if matches!(stop, Stop::Shutdown) {
                    return;
                }
            }
            Err(err) => {
                tracing::warn!(%show, error = %err, retry_in = ?delay, "cannot subscribe to the show queue");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn subscribe(context: &Context, show: ShowId) -> anyhow::Result<(Channel, Consumer)> {
    let channel = context.broker.channel().await?;
    let topology = context.broker.topology();
    topology.declare_show_queue(&channel, show).await?;
    // Prefetch two batches: the next batch is already here while this one commits.
    channel
        .basic_qos(context.config.batch_max.saturating_mul(2), BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            topology.show_queue(show).into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(%show, "subscribed to the show queue (active or standby)");
    Ok((channel, consumer))
}

async fn consume(
    context: &Arc<Context>,
    show: ShowId,
    channel: &Channel,
    consumer: Consumer,
    shutdown: &CancellationToken,
) -> Stop {
    let mut writer: Option<Writer> = None;
    let stop = consume_into(context, show, channel, consumer, shutdown, &mut writer).await;
    // The last batch's events and acknowledgement go out before the channel closes.
    stand_down(&mut writer).await;
    stop
}

async fn consume_into(
    context: &Arc<Context>,
    show: ShowId,
    channel: &Channel,
    mut consumer: Consumer,
    shutdown: &CancellationToken,
    writer: &mut Option<Writer>,
) -> Stop {
    let mut depth = tokio::time::interval(QUEUE_DEPTH_EVERY);
    depth.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The age of the latest batch's oldest command when the batch began, and when that was:
    // the oldest message's age, which keeps growing while commands wait and none is taken.
    let mut head: Option<(f64, tokio::time::Instant)> = None;
    loop {
        // The next hold to lapse, looked at again at least every second: the clock is the
        // context's (tests move it), so a timer set from it could oversleep a jump.
        let expiry = writer.as_ref().and_then(|writer| writer.state.next_expiry()).map(|at| {
            let wait = Duration::try_from((at - context.now()).max(time::Duration::ZERO)).unwrap_or_default();
            tokio::time::Instant::now() + wait.min(EXPIRY_RECHECK)
        });
        let first = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Stop::Shutdown,
            delivery = consumer.next() => delivery,
            _ = depth.tick() => {
                let waiting = report_depth(context, show, channel).await;
                let age = match (waiting, head) {
                    (Some(0), _) | (_, None) => 0.0,
                    (_, Some((age, at))) => age + at.elapsed().as_secs_f64(),
                };
                metrics::oldest_message_age(show, age);
                continue;
            }
            () = sleep_until(expiry) => {
                if let Err(stop) = run_batch(context, show, channel, writer, Vec::new(), shutdown).await {
                    return stop;
                }
                continue;
            }
        };
        let Some(Ok(first)) = first else {
            tracing::info!(%show, "show consumer ended (channel closed or consumer cancelled)");
            return Stop::Resubscribe;
        };
        let mut deliveries = vec![first];
        let deadline = tokio::time::Instant::now() + context.config.batch_wait;
        while deliveries.len() < usize::from(context.config.batch_max) {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(delivery))) => deliveries.push(delivery),
                Ok(_) => break,
                Err(_elapsed) => break,
            }
        }
        match run_batch(context, show, channel, writer, deliveries, shutdown).await {
            Ok(Some(age)) => {
                head = Some((age, tokio::time::Instant::now()));
                metrics::oldest_message_age(show, age);
                report_lag(context, show, age);
            }
            Ok(None) => {}
            Err(stop) => return stop,
        }
    }
}

/// Tells the admission controller how far behind the show's queue this writer is (the age of
/// its latest batch's oldest command), so that it admits fewer fans while commands pile up.
/// Sent in the background: the batch loop never waits on it (a slow Redis would otherwise slow
/// the writer by up to its response timeout per batch), and a lost report only leaves the
/// previous one to age out.
fn report_lag(context: &Context, show: ShowId, age_seconds: f64) {
    let keys = availability::Keys::new(&context.redis_prefix, show);
    let lag_ms = (age_seconds * 1000.0).round() as u64;
    let mut redis = context.redis.clone();
    tokio::spawn(async move {
        if let Err(err) = availability::report_lag(&mut redis, &keys, lag_ms).await {
            tracing::debug!(%show, error = %err, "cannot report the writer's lag");
        }
    });
}

/// Ready messages in the show's queue, for the depth gauge (a passive declare: no side
/// effect); `None` when the broker did not say.
async fn report_depth(context: &Context, show: ShowId, channel: &Channel) -> Option<u32> {
    let declared = channel
        .queue_declare(
            context.broker.topology().show_queue(show).into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(queue) => {
            metrics::queue_depth(show, queue.message_count());
            Some(queue.message_count())
        }
        Err(err) => {
            tracing::debug!(%show, error = %err, "cannot read the queue depth");
            None
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A command of the batch with its delivery.
struct Received {
    delivery: Delivery,
    command: ShowCommand,
}

/// Applies and writes one batch, retrying transient failures on the same deliveries until it
/// succeeds, is fenced, or shutdown is asked. Returns how long the batch's oldest command had
/// waited when the batch began.
async fn run_batch(
    context: &Arc<Context>,
    show: ShowId,
    channel: &Channel,
    writer: &mut Option<Writer>,
    deliveries: Vec<Delivery>,
    shutdown: &CancellationToken,
) -> Result<Option<f64>, Stop> {
    let mut received = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        match ShowCommand::decode(&delivery.data) {
            Ok(command) => received.push(Received { delivery, command }),
            Err(err) => {
                // Rejected without requeue: the queue dead-letters it, and the show goes on.
                tracing::error!(%show, error = %err, "undecodable show command: dead-lettering it");
                metrics::dead_lettered("undecodable");
                if let Err(err) = delivery.acker.reject(BasicRejectOptions { requeue: false }).await {
                    tracing::warn!(%show, error = %err, "cannot reject a delivery");
                    return Err(Stop::Resubscribe);
                }
            }
        }
    }
    let waited = received
        .iter()
        .map(|r| occurred_at(&r.command))
        .min()
        .map(|oldest| (context.now() - oldest).as_seconds_f64().max(0.0));
    if let Some(waited) = waited {
        metrics::queue_wait(show, waited);
    }
    settle(context, show, channel, writer, received, shutdown).await?;
    Ok(waited)
}

/// Applies and writes decoded commands until they are committed and acknowledged (retrying
/// transient failures on the same deliveries), fenced, or dead-lettered.
async fn settle(
    context: &Arc<Context>,
    show: ShowId,
    channel: &Channel,
    writer: &mut Option<Writer>,
    received: Vec<Received>,
    shutdown: &CancellationToken,
) -> Result<(), Stop> {
    let started = std::time::Instant::now();
    let mut delay = context.config.retry_min;
    loop {
        if shutdown.is_cancelled() && writer.is_none() {
            // Never activated for these: leave them unacknowledged for the next writer.
            return Err(Stop::Shutdown);
        }
        match attempt(context, show, channel, writer, &received).await {
            Ok(Acked::Later) => {
                metrics::batch(received.len(), started.elapsed().as_secs_f64());
                return Ok(());
            }
            Ok(Acked::Now) => break,
            Err(Failure::Unsubscribed(err)) => {
                tracing::warn!(%show, error = %err, "the show's queue is no longer ours; not taking the show over");
                stand_down(writer).await;
                return Err(Stop::Resubscribe);
            }
            Err(Failure::Fenced) => {
                tracing::warn!(%show, "fenced: another worker is the show's writer now; standing down");
                metrics::fenced(show);
                stand_down(writer).await;
                return Err(Stop::Resubscribe);
            }
            Err(Failure::Permanent(err)) => {
                // The state may be what is wrong: it is reloaded for whatever comes next.
                stand_down(writer).await;
                if received.len() > 1 {
                    // Find the poison: the same commands, in the same order, one per batch.
                    tracing::warn!(%show, error = %err, commands = received.len(), "batch refused by the database; applying its commands one by one");
                    for one in received {
                        Box::pin(settle(context, show, channel, writer, vec![one], shutdown)).await?;
                    }
                    return Ok(());
                }
                tracing::error!(%show, error = %err, "command refused by the database: dead-lettering it");
                metrics::dead_lettered("refused");
                if let Some(poison) = received.first()
                    && let Err(err) = poison
                        .delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await
                {
                    tracing::warn!(%show, error = %err, "cannot reject a delivery");
                    return Err(Stop::Resubscribe);
                }
                return Ok(());
            }
            Err(Failure::Transient(stage, err)) => {
                tracing::warn!(%show, stage, error = %err, retry_in = ?delay, "batch failed; retrying the same deliveries");
                metrics::transient(stage);
                stand_down(writer).await;
                if !channel.status().connected() {
                    return Err(Stop::Resubscribe);
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Err(Stop::Shutdown),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    // Acknowledge the whole batch at once, after the commit and the publishes.
    if let Some(last) = received.last()
        && let Err(err) = last.delivery.acker.ack(BasicAckOptions { multiple: true }).await
    {
        // The channel is gone: the batch will be redelivered and answered from the store.
        tracing::warn!(%show, error = %err, "cannot acknowledge the batch");
        return Err(Stop::Resubscribe);
    }
    if !received.is_empty() {
        metrics::batch(received.len(), started.elapsed().as_secs_f64());
    }
    Ok(())
}

fn occurred_at(command: &ShowCommand) -> OffsetDateTime {
    command.occurred_at()
}

enum Failure {
    Fenced,
    /// The channel is gone: RabbitMQ may have given the queue, these deliveries included, to
    /// another consumer.
    Unsubscribed(lapin::Error),
    /// The database refuses the batch itself (a constraint or a bad value): retrying the same
    /// batch cannot help.
    Permanent(sqlx::Error),
    Transient(&'static str, anyhow::Error),
}

/// One try at a batch: activate if needed, apply, commit, publish, snapshot.
async fn attempt(
    context: &Arc<Context>,
    show: ShowId,
    channel: &Channel,
    writer: &mut Option<Writer>,
    received: &[Received],
) -> Result<Acked, Failure> {
    if writer.is_none() {
        // Only the queue's active consumer may take the show over, and deliveries in hand do
        // not prove this one still is: after a pause (a stalled VM, SIGSTOP) RabbitMQ may have
        // closed the connection for missed heartbeats and handed the queue to a standby, which
        // the client learns only when it next reads the socket. Taking over then would fence the
        // rightful writer. A round trip on the channel (re-stating its prefetch) settles it.
        channel
            .basic_qos(context.config.batch_max.saturating_mul(2), BasicQosOptions::default())
            .await
            .map_err(Failure::Unsubscribed)?;
        *writer = Some(activate(context, show).await?);
    }
    let Some(active) = writer.as_mut() else {
        unreachable!("activated above");
    };
    let ids: Vec<CommandId> = received.iter().map(|r| r.command.command_id()).collect();
    let done = if ids.is_empty() {
        Vec::new()
    } else {
        store::already_applied(&context.db, &ids)
            .await
            .map_err(|err| Failure::Transient("dedupe", err.into()))?
    };
    let now = context.now();
    let mut batch = active.state.begin();
    let codes: Vec<String> = received
        .iter()
        .filter_map(|r| match &r.command {
            ShowCommand::HoldSeats(envelope) => envelope.payload.promo_code.as_deref(),
            _ => None,
        })
        .map(|code| code.trim().to_uppercase())
        .collect();
    if !codes.is_empty() {
        batch.promos = store::promo_codes(&context.db, show, &codes)
            .await
            .map_err(|err| Failure::Transient("promo codes", err.into()))?;
    }
    let mut outcomes = Vec::with_capacity(received.len());
    for r in received {
        let seen = done.contains(&r.command.command_id());
        let outcome = match &r.command {
            ShowCommand::HoldSeats(envelope) => active.state.hold(&mut batch, &envelope.payload, seen, now),
            ShowCommand::ReleaseHold(envelope) => active.state.release(&mut batch, &envelope.payload, seen),
            ShowCommand::StartPayment(envelope) => active.state.start_payment(&mut batch, &envelope.payload, seen, now),
            ShowCommand::ConfirmBooking(envelope) => active.state.confirm(&mut batch, &envelope.payload, seen, now),
            ShowCommand::PaymentFailed(envelope) => {
                active.state.payment_failed(&mut batch, &envelope.payload, seen, now)
            }
            ShowCommand::CancelBooking(envelope) => active.state.cancel(&mut batch, &envelope.payload, seen, now),
            ShowCommand::RecordRefund(envelope) => active.state.record_refund(&mut batch, &envelope.payload, seen),
            ShowCommand::JoinWaitlist(envelope) => active.state.join_waitlist(&mut batch, &envelope.payload, seen),
        };
        outcomes.push(outcome);
    }
    let expired = active.state.expire(&mut batch, now);
    let offered = active.state.offer_waitlist(&mut batch, now);
    if offered > 0 {
        tracing::info!(%show, offered, "seats offered to the waitlist");
    }
    if batch.is_empty() {
        // The caller acknowledges these at once, so the previous batch's (multiple) ack must
        // have gone first: acknowledging a tag twice closes the channel.
        if let Some(previous) = active.post.take() {
            let _ = previous.await;
        }
        return Ok(Acked::Now);
    }
    active.batches += 1;
    let version = active.version();
    active.state.finish(&mut batch, version);
    let topology = context.broker.topology();
    let exchanges = store::Exchanges {
        events: topology.events_exchange(),
        payments: topology.payments_exchange(),
    };
    // Rows earlier batches published, marked in this transaction (lost on failure: the relay
    // then publishes them again, which consumers absorb).
    let published = std::mem::take(&mut *active.published.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    let outbox = match store::write_batch(
        &context.db,
        &active.state,
        &batch,
        active.epoch,
        version,
        &exchanges,
        &published,
    )
    .await
    {
        Ok(outbox) => outbox,
        Err(store::WriteError::Fenced(_)) => return Err(Failure::Fenced),
        Err(store::WriteError::Database(err)) if refused(&err) => return Err(Failure::Permanent(err)),
        Err(store::WriteError::Database(err)) => return Err(Failure::Transient("write", err.into())),
    };
    for (r, outcome) in received.iter().zip(&outcomes) {
        metrics::command(kind(&r.command), outcome.label());
    }
    if expired > 0 {
        tracing::info!(%show, expired, "holds expired");
    }
    metrics::seats(show, active.state.counts());
    // What the post-commit step needs, taken from the state now (the next batch changes it).
    let snapshot = if active.snapshot_stale.swap(false, Ordering::SeqCst) {
        SnapshotWrite::Rebuild(availability::Snapshot {
            bitmap: active.state.bitmap(),
            statuses: active.state.statuses(),
            counts: active.state.counts(),
            version,
        })
    } else {
        SnapshotWrite::Apply {
            changes: batch
                .changed_seats
                .iter()
                .map(|index| (*index, active.state.status_byte(*index)))
                .collect(),
            counts: active.state.counts(),
            version,
        }
    };
    let post = PostCommit {
        show,
        epoch: active.epoch,
        events: std::mem::take(&mut batch.events),
        outbox,
        snapshot,
        holds_published_at: received
            .iter()
            .filter_map(|r| match &r.command {
                ShowCommand::HoldSeats(envelope) => Some(envelope.occurred_at),
                _ => None,
            })
            .collect(),
        ack: received.last().map(|r| r.delivery.acker.clone()),
        published: Arc::clone(&active.published),
        snapshot_stale: Arc::clone(&active.snapshot_stale),
    };
    let previous = active.post.take();
    let context = Arc::clone(context);
    active.post = Some(tokio::spawn(async move {
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        post.run(&context).await;
    }));
    Ok(Acked::Later)
}

/// Whether a batch's deliveries are acknowledged yet.
enum Acked {
    /// Nothing was written (all duplicates, or nothing to do): the caller acknowledges.
    Now,
    /// The post-commit task acknowledges once the events are out.
    Later,
}

/// How the batch reaches the Redis snapshot.
enum SnapshotWrite {
    /// The whole snapshot (first batch, or after a missed write).
    Rebuild(availability::Snapshot),
    /// Only the seats that changed.
    Apply {
        changes: Vec<(u32, u8)>,
        counts: SeatCounts,
        version: u64,
    },
}

/// What happens after a batch committed, in order: its events are published with confirms
/// (rows that do not make it are left to the relay), the snapshot is updated, and the batch is
/// acknowledged. It runs while the next batch is being applied and written.
struct PostCommit {
    show: ShowId,
    epoch: i64,
    events: Vec<crate::engine::OutgoingEvent>,
    outbox: Vec<i64>,
    snapshot: SnapshotWrite,
    holds_published_at: Vec<OffsetDateTime>,
    ack: Option<lapin::Acker>,
    published: Arc<Mutex<Vec<i64>>>,
    snapshot_stale: Arc<AtomicBool>,
}

impl PostCommit {
    async fn run(self, context: &Context) {
        let show = self.show;
        if let Ok(publisher) = context.broker.publisher() {
            let topology = context.broker.topology();
            let (events, payments) = (topology.events_exchange(), topology.payments_exchange());
            let sends = self.events.iter().zip(&self.outbox).map(|(event, id)| {
                let publisher = publisher.clone();
                let exchange = match event.exchange {
                    Route::Events => events.clone(),
                    Route::Payments => payments.clone(),
                };
                async move {
                    let body = serde_json::to_vec(&event.body).unwrap_or_default();
                    let sent = publisher
                        .broadcast_raw(
                            &exchange,
                            &event.routing_key,
                            &event.message_id.to_string(),
                            event.kind,
                            &body,
                        )
                        .await;
                    (sent, *id)
                }
            });
            let mut published = Vec::with_capacity(self.outbox.len());
            for (sent, id) in futures::future::join_all(sends).await {
                match sent {
                    Ok(()) => published.push(id),
                    Err(err) => tracing::warn!(%show, error = %err, "event not published; the relay will retry"),
                }
            }
            self.published
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend(published);
        } else {
            tracing::warn!(%show, "broker unavailable: the outbox relay will publish this batch's events");
        }
        let now = context.now();
        for at in &self.holds_published_at {
            metrics::hold_latency((now - *at).as_seconds_f64().max(0.0));
        }
        let keys = availability::Keys::new(&context.redis_prefix, show);
        let mut redis = context.redis.clone();
        let written = match &self.snapshot {
            SnapshotWrite::Rebuild(snapshot) => availability::rebuild(&mut redis, &keys, self.epoch, snapshot).await,
            SnapshotWrite::Apply { changes, .. } if changes.is_empty() => Ok(availability::Written::Applied),
            SnapshotWrite::Apply {
                changes,
                counts,
                version,
            } => availability::apply(&mut redis, &keys, self.epoch, changes, *counts, *version).await,
        };
        match written {
            Ok(availability::Written::Applied) => {}
            Ok(availability::Written::Fenced) => self.snapshot_stale.store(true, Ordering::SeqCst),
            Err(err) => {
                tracing::warn!(%show, error = %err, "cannot update the availability snapshot; will rebuild it");
                self.snapshot_stale.store(true, Ordering::SeqCst);
            }
        }
        // Acknowledged last, after the commit and the publishes (one multiple-ack for the batch).
        if let Some(ack) = self.ack
            && let Err(err) = ack.ack(BasicAckOptions { multiple: true }).await
        {
            // The channel is gone: the batch will be redelivered and answered from the store.
            tracing::warn!(%show, error = %err, "cannot acknowledge the batch");
        }
    }
}

/// Integrity-constraint violations (SQLSTATE class 23) and data exceptions (22) mean the batch
/// itself is unacceptable; anything else (connection loss, restart, serialization) may pass on
/// a retry.
///
/// One exception: a promo code valid for every show is counted by each show's writer, so two
/// writers may race for its last uses; the loser's batch trips `promo_code_usage_within_limit`
/// and is retried with the counts read afresh, which then refuses the code.
fn refused(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) if db.constraint() == Some("promo_code_usage_within_limit") => false,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("23") || code.starts_with("22")),
        _ => false,
    }
}

fn kind(command: &ShowCommand) -> &'static str {
    match command {
        ShowCommand::HoldSeats(_) => "HoldSeats",
        ShowCommand::ReleaseHold(_) => "ReleaseHold",
        ShowCommand::StartPayment(_) => "StartPayment",
        ShowCommand::ConfirmBooking(_) => "ConfirmBooking",
        ShowCommand::PaymentFailed(_) => "PaymentFailed",
        ShowCommand::CancelBooking(_) => "CancelBooking",
        ShowCommand::RecordRefund(_) => "RecordRefund",
        ShowCommand::JoinWaitlist(_) => "JoinWaitlist",
    }
}

/// Becomes the show's writer.
async fn activate(context: &Context, show: ShowId) -> Result<Writer, Failure> {
    let epoch = store::take_over(&context.db, show)
        .await
        .map_err(|err| Failure::Transient("take_over", err.into()))?
        .ok_or_else(|| Failure::Transient("take_over", anyhow::anyhow!("show {show} does not exist")))?;
    if let Err(err) = store::refresh_statistics(&context.db, show).await {
        tracing::warn!(%show, error = %err, "cannot refresh planner statistics; batches may be slower");
    }
    let state = store::load_show(&context.db, show, &context.config)
        .await
        .map_err(|err| Failure::Transient("load", err.into()))?;
    let writer = Writer {
        state,
        epoch,
        batches: 0,
        published: Arc::new(Mutex::new(Vec::new())),
        snapshot_stale: Arc::new(AtomicBool::new(false)),
        post: None,
    };
    let snapshot = availability::Snapshot {
        bitmap: writer.state.bitmap(),
        statuses: writer.state.statuses(),
        counts: writer.state.counts(),
        version: writer.version(),
    };
    let mut redis = context.redis.clone();
    let keys = availability::Keys::new(&context.redis_prefix, show);
    match availability::rebuild(&mut redis, &keys, epoch, &snapshot).await {
        Ok(availability::Written::Applied) => {}
        Ok(availability::Written::Fenced) => tracing::warn!(%show, "a newer writer owns the availability snapshot"),
        Err(err) => {
            tracing::warn!(%show, error = %err, "cannot rebuild the availability snapshot; will retry");
            writer.snapshot_stale.store(true, Ordering::SeqCst);
        }
    }
    tracing::info!(%show, epoch, counts = ?writer.state.counts(), "became the show's writer");
    metrics::active(show, true);
    metrics::seats(show, writer.state.counts());
    Ok(writer)
}
