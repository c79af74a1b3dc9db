//! SQL of the booking-worker, the single writer of `show_seat`, `booking`, `booking_seat`,
//! `hold_request`, `processed_command`, `ticket` (issue and void), `waitlist_entry`, new
//! `payment` rows, promo-code usage and (for its events) `outbox`.
//!
//! A batch is written with one statement per table, each taking whole columns as arrays
//! (`UNNEST`), never a statement per seat: a 200-command batch is about ten round trips whatever
//! the number of seats it touches.

use std::collections::HashMap;

use common::ids::{
    BookingId, CommandId, MessageId, PaymentId, PromoCodeId, SeatId, ShowId, TicketId, UserId, WaitlistEntryId,
};
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, Transaction, prelude::FromRow};
use time::OffsetDateTime;

use crate::{
    engine::{
        Batch, BookingStatus, LoadedBooking, LoadedSeat, LoadedWaitlistEntry, Promo, Route, SeatStatus, ShowState,
        ShowTerms,
    },
    worker::WorkerConfig,
};

/// Shows a worker should serve: on sale or about to be (their pre-queue is open), not yet over.
#[tracing::instrument(skip(db))]
pub async fn shows_to_serve(db: impl PgExecutor<'_>) -> Result<Vec<ShowId>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT show_id FROM show
         WHERE status IN ('scheduled', 'on_sale', 'sold_out')
           AND prequeue_opens_at <= now() + interval '10 minutes'
           AND starts_at > now() - interval '1 day'
         ORDER BY on_sale_at",
    )
    .fetch_all(db)
    .await
}

/// Becomes the show's writer: bumps the fencing epoch and returns the new value. From this
/// commit on, every batch of the previous writer fails its epoch check.
#[tracing::instrument(skip(db))]
pub async fn take_over(db: impl PgExecutor<'_>, show: ShowId) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("UPDATE show SET writer_epoch = writer_epoch + 1 WHERE show_id = $1 RETURNING writer_epoch")
        .bind(show)
        .fetch_optional(db)
        .await
}

/// Tables whose planner statistics matter to a writer's statements.
const WRITER_TABLES: [&str; 6] = [
    "hold_request",
    "processed_command",
    "booking",
    "booking_seat",
    "payment",
    "outbox",
];

/// Brings the planner's statistics up to date before a writer starts: the show's `show_seat`
/// partition (its rows were bulk-inserted when the show was created, and autovacuum may not have
/// looked since) and any of the writer's tables never analysed. Stale statistics said "60 rows"
/// of a 20,000-seat show and turned each batch's seat UPDATE into a scan of the whole show
/// (8 ms per batch whatever its size), and `hold_request` lookups into sequential scans
/// (measured with auto_explain, README "The booking pipeline").
#[tracing::instrument(skip(db))]
pub async fn refresh_statistics(db: &PgPool, show: ShowId) -> Result<(), sqlx::Error> {
    let partition: Option<String> =
        sqlx::query_scalar("SELECT tableoid::regclass::text FROM show_seat WHERE show_id = $1 LIMIT 1")
            .bind(show)
            .fetch_optional(db)
            .await?;
    let never: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(relname) FROM pg_stat_user_tables
         WHERE relname = ANY($1) AND last_analyze IS NULL AND last_autoanalyze IS NULL",
    )
    .bind(&WRITER_TABLES[..])
    .fetch_all(db)
    .await?;
    // Names from the catalog (regclass and quote_ident quote them), never from a client.
    for table in partition.into_iter().chain(never) {
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
            .execute(db)
            .await?;
    }
    Ok(())
}

#[derive(FromRow)]
struct TermsRow {
    currency: String,
    hold_seconds: i32,
    max_tickets_per_user: i32,
    starts_at: OffsetDateTime,
    cancel_cutoff_seconds: i32,
}

#[derive(FromRow)]
struct SeatRow {
    seat_id: SeatId,
    seat_index: i32,
    section_id: uuid::Uuid,
    row_label: String,
    number: i32,
    x: f32,
    y: f32,
    tier: String,
    status: String,
    booking_id: Option<BookingId>,
}

#[derive(FromRow)]
struct BookingRow {
    booking_id: BookingId,
    app_user_id: UserId,
    status: String,
    expires_at: OffsetDateTime,
    total_cents: i64,
    promo_code_id: Option<PromoCodeId>,
    waitlist_entry_id: Option<WaitlistEntryId>,
}

#[derive(FromRow)]
struct WaitlistRow {
    waitlist_entry_id: WaitlistEntryId,
    app_user_id: UserId,
    quantity: i32,
}

#[derive(FromRow)]
struct PromoRow {
    promo_code_id: PromoCodeId,
    code: String,
    percent_off: Option<i32>,
    amount_off_cents: Option<i32>,
    remaining: i32,
    valid_until: OffsetDateTime,
}

/// Why a show could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The show does not exist.
    #[error("show {0} does not exist")]
    NoSuchShow(ShowId),
    /// The rows do not make a consistent inventory.
    #[error(transparent)]
    Inconsistent(#[from] crate::engine::LoadError),
    /// A row holds a value the engine does not know.
    #[error("unknown {what} {value:?}")]
    Unknown {
        /// Which column.
        what: &'static str,
        /// Its value.
        value: String,
    },
}

/// Loads a show's terms, seats and live bookings, from one snapshot of the database.
#[tracing::instrument(skip(db))]
pub async fn load_show(db: &PgPool, show: ShowId, config: &WorkerConfig) -> Result<ShowState, LoadError> {
    let mut tx = db.begin().await?;
    // One consistent view of seats and bookings.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let terms: TermsRow = sqlx::query_as(
        "SELECT currency, hold_seconds, max_tickets_per_user, starts_at, cancel_cutoff_seconds
             FROM show WHERE show_id = $1",
    )
    .bind(show)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(LoadError::NoSuchShow(show))?;
    let prices: Vec<(String, i32)> = sqlx::query_as("SELECT tier, price_cents FROM show_price WHERE show_id = $1")
        .bind(show)
        .fetch_all(&mut *tx)
        .await?;
    let seats: Vec<SeatRow> = sqlx::query_as(
        "SELECT ss.seat_id, ss.seat_index, s.section_id, s.row_label, s.number, s.x, s.y, ss.tier, ss.status,
                ss.booking_id
         FROM show_seat ss JOIN seat s USING (seat_id)
         WHERE ss.show_id = $1",
    )
    .bind(show)
    .fetch_all(&mut *tx)
    .await?;
    // Three set-based reads joined here rather than one join in SQL: the standby loads a show
    // in the middle of a rush, when the planner's statistics of these fast-growing tables are
    // stale, and a per-booking nested loop it then chose took 32 s for 4,000 bookings (a full
    // chaos rehearsal). Each of these is one index range scan whatever the statistics say.
    let bookings: Vec<BookingRow> = sqlx::query_as(
        "SELECT booking_id, app_user_id, status, expires_at, total_cents, promo_code_id, waitlist_entry_id
         FROM booking
         WHERE show_id = $1 AND status IN ('held', 'payment_pending', 'confirmed')",
    )
    .bind(show)
    .fetch_all(&mut *tx)
    .await?;
    let booked_seats: Vec<(BookingId, SeatId)> =
        sqlx::query_as("SELECT booking_id, seat_id FROM booking_seat WHERE show_id = $1 AND released_at IS NULL")
            .bind(show)
            .fetch_all(&mut *tx)
            .await?;
    let live_ids: Vec<BookingId> = bookings.iter().map(|booking| booking.booking_id).collect();
    // At most one such payment per booking (the payment_one_live_charge_per_booking index).
    let payments: HashMap<BookingId, PaymentId> = sqlx::query_as(
        "SELECT booking_id, payment_id FROM payment
         WHERE booking_id = ANY($1) AND status IN ('processing', 'succeeded', 'refunded')",
    )
    .bind(&live_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let waitlist: Vec<WaitlistRow> = sqlx::query_as(
        "SELECT waitlist_entry_id, app_user_id, quantity FROM waitlist_entry
         WHERE show_id = $1 AND status = 'waiting'
         ORDER BY created_at, waitlist_entry_id",
    )
    .bind(show)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    let index_of: HashMap<SeatId, u32> = seats
        .iter()
        .map(|seat| (seat.seat_id, u32::try_from(seat.seat_index).unwrap_or(u32::MAX)))
        .collect();
    let mut seats_of: HashMap<BookingId, Vec<u32>> = HashMap::new();
    for (booking, seat) in booked_seats {
        // A booked seat is always one of the show's (booking_seat_booking_same_show and the
        // deferred show_seat_in_its_booking); one that is not could not be sold anyway.
        match index_of.get(&seat) {
            Some(index) => seats_of.entry(booking).or_default().push(*index),
            None => tracing::warn!(%booking, %seat, "a booked seat is not in the show's seat map"),
        }
    }
    let mut rows: HashMap<(uuid::Uuid, String), u32> = HashMap::new();
    let mut loaded = Vec::with_capacity(seats.len());
    for seat in seats {
        let next = rows.len() as u32;
        let row = *rows.entry((seat.section_id, seat.row_label)).or_insert(next);
        loaded.push(LoadedSeat {
            seat_id: seat.seat_id,
            index: u32::try_from(seat.seat_index).unwrap_or(u32::MAX),
            row,
            number: seat.number,
            x: seat.x,
            y: seat.y,
            status: SeatStatus::parse(&seat.status).ok_or_else(|| LoadError::Unknown {
                what: "seat status",
                value: seat.status.clone(),
            })?,
            tier: seat.tier,
            booking_id: seat.booking_id,
        });
    }
    let mut live = Vec::with_capacity(bookings.len());
    for booking in bookings {
        live.push(LoadedBooking {
            booking_id: booking.booking_id,
            user_id: booking.app_user_id,
            status: BookingStatus::parse_live(&booking.status).ok_or_else(|| LoadError::Unknown {
                what: "booking status",
                value: booking.status.clone(),
            })?,
            expires_at: booking.expires_at,
            seats: {
                let mut seats = seats_of.remove(&booking.booking_id).unwrap_or_default();
                seats.sort_unstable();
                seats
            },
            total_cents: booking.total_cents,
            payment_id: payments.get(&booking.booking_id).copied(),
            promo_code_id: booking.promo_code_id,
            waitlist_entry_id: booking.waitlist_entry_id,
        });
    }
    let waitlist = waitlist
        .into_iter()
        .map(|entry| LoadedWaitlistEntry {
            waitlist_entry_id: entry.waitlist_entry_id,
            user_id: entry.app_user_id,
            quantity: u32::try_from(entry.quantity).unwrap_or(0),
        })
        .collect();
    let terms = ShowTerms {
        show_id: show,
        currency: terms.currency,
        hold_seconds: i64::from(terms.hold_seconds),
        max_tickets_per_user: u32::try_from(terms.max_tickets_per_user).unwrap_or(1),
        prices: prices
            .into_iter()
            .map(|(tier, price)| (tier, i64::from(price)))
            .collect(),
        starts_at: terms.starts_at,
        cancel_cutoff: time::Duration::seconds(i64::from(terms.cancel_cutoff_seconds)),
        payment_grace: time::Duration::try_from(config.payment_grace).unwrap_or(time::Duration::minutes(2)),
        ticket_signer: config.ticket_signer.clone(),
    };
    Ok(ShowState::load(terms, loaded, live)?.with_waitlist(waitlist))
}

/// The promo codes named `codes` (upper case) usable for `show` (its own or every show's; the
/// show's own wins), with the uses left as committed now.
#[tracing::instrument(skip(db, codes), fields(codes = codes.len()))]
pub async fn promo_codes(db: &PgPool, show: ShowId, codes: &[String]) -> Result<HashMap<String, Promo>, sqlx::Error> {
    let rows: Vec<PromoRow> = sqlx::query_as(
        "SELECT DISTINCT ON (upper(code)) promo_code_id, upper(code) AS code, percent_off, amount_off_cents,
                max_uses - used_count AS remaining, valid_until
         FROM promo_code
         WHERE upper(code) = ANY($2) AND (show_id = $1 OR show_id IS NULL)
         ORDER BY upper(code), show_id NULLS LAST",
    )
    .bind(show)
    .bind(codes)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                row.code,
                Promo {
                    promo_code_id: row.promo_code_id,
                    percent_off: row.percent_off,
                    amount_off_cents: row.amount_off_cents.map(i64::from),
                    remaining: row.remaining,
                    valid_until: row.valid_until,
                },
            )
        })
        .collect())
}

/// Which of `commands` were applied before (a redelivery after a crash between commit and ack).
#[tracing::instrument(skip(db, commands), fields(commands = commands.len()))]
pub async fn already_applied(db: &PgPool, commands: &[CommandId]) -> Result<Vec<CommandId>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT hold_request_id FROM hold_request WHERE hold_request_id = ANY($1)
         UNION ALL
         SELECT command_id FROM processed_command WHERE command_id = ANY($1)",
    )
    .bind(commands)
    .fetch_all(db)
    .await
}

/// The batch was not written because another worker is the show's writer now.
#[derive(Debug, thiserror::Error)]
#[error("fenced: writer epoch {0} is no longer current")]
pub struct Fenced(pub i64);

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another writer took over: drop the state and stop writing.
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// The database failed (possibly transient).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Writes a whole batch in one transaction, fenced by `epoch`; returns the outbox ids of its
/// events, in order.
#[tracing::instrument(skip_all, fields(show_id = %state.show_id(), epoch))]
pub async fn write_batch(
    db: &PgPool,
    state: &ShowState,
    batch: &Batch,
    epoch: i64,
    version: u64,
    exchanges: &Exchanges,
    published: &[i64],
) -> Result<Vec<i64>, WriteError> {
    let show = state.show_id();
    // A writer that stalls inside this transaction (paused, partitioned) would hold the show
    // row, and the next writer's take-over would wait on it for as long as the stall lasts,
    // whatever RabbitMQ decided: PostgreSQL ends such a session instead, the batch rolls back,
    // and its deliveries are the next writer's. A live writer is never idle here for long.
    let mut tx = db
        .begin_with("BEGIN; SET LOCAL idle_in_transaction_session_timeout = '5s'")
        .await?;
    // The fence: an UPDATE of the show row conditioned on the epoch both takes the row lock
    // (as SELECT ... FOR UPDATE would, serialising with a takeover's bump) and records the new
    // inventory version and sold count (the state after this batch) in one round trip. Zero
    // rows: someone else is the writer.
    let fenced =
        sqlx::query("UPDATE show SET inventory_version = $3, sold_count = $4 WHERE show_id = $1 AND writer_epoch = $2")
            .bind(show)
            .bind(epoch)
            .bind(i64::try_from(version).unwrap_or(i64::MAX))
            .bind(i32::try_from(state.counts().sold).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 0;
    if fenced {
        tx.rollback().await?;
        return Err(Fenced(epoch).into());
    }
    change_bookings(&mut tx, batch).await?;
    end_bookings(&mut tx, batch).await?;
    insert_waitlist(&mut tx, show, batch).await?;
    insert_bookings(&mut tx, show, batch).await?;
    update_waitlist(&mut tx, batch).await?;
    update_seats(&mut tx, show, state, batch).await?;
    insert_payments(&mut tx, state.currency(), batch).await?;
    write_tickets(&mut tx, show, batch).await?;
    record_refunds(&mut tx, batch).await?;
    count_promo_uses(&mut tx, batch).await?;
    insert_results(&mut tx, show, batch).await?;
    let outbox = insert_outbox(&mut tx, batch, exchanges).await?;
    // Rows the previous batches' relay published: marked here instead of in a round trip each.
    mark_published(&mut tx, published).await?;
    tx.commit().await?;
    Ok(outbox)
}

/// The exchanges the outbox rows go to.
#[derive(Debug, Clone)]
pub struct Exchanges {
    /// `events`.
    pub events: String,
    /// `payments`.
    pub payments: String,
}

impl Exchanges {
    fn name(&self, route: Route) -> &str {
        match route {
            Route::Events => &self.events,
            Route::Payments => &self.payments,
        }
    }
}

/// Existing bookings that changed status without ending (payment pending, held again,
/// confirmed): status and expiry; a confirmation records its time.
async fn change_bookings(tx: &mut Transaction<'_, Postgres>, batch: &Batch) -> Result<(), sqlx::Error> {
    if batch.changed.is_empty() {
        return Ok(());
    }
    let ids: Vec<BookingId> = batch.changed.keys().copied().collect();
    let statuses: Vec<&str> = batch.changed.values().map(|change| change.status.as_str()).collect();
    let expiries: Vec<OffsetDateTime> = batch.changed.values().map(|change| change.expires_at).collect();
    sqlx::query(
        "UPDATE booking b SET status = c.status, expires_at = c.expires_at, updated_at = now(),
                confirmed_at = CASE WHEN c.status = 'confirmed' THEN now() ELSE b.confirmed_at END
         FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS c (booking_id, status, expires_at)
         WHERE b.booking_id = c.booking_id",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&expiries)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Existing bookings that ended in the batch: status, and their seats leave them (which frees
/// the one-live-booking index before this batch's new bookings take those seats).
async fn end_bookings(tx: &mut Transaction<'_, Postgres>, batch: &Batch) -> Result<(), sqlx::Error> {
    if batch.ended.is_empty() {
        return Ok(());
    }
    let ids: Vec<BookingId> = batch.ended.iter().map(|(id, _)| *id).collect();
    let statuses: Vec<&str> = batch.ended.iter().map(|(_, status)| status.as_str()).collect();
    sqlx::query(
        "UPDATE booking b SET status = e.status, updated_at = now(),
                cancelled_at = CASE WHEN e.status = 'cancelled' THEN now() ELSE b.cancelled_at END
         FROM UNNEST($1::uuid[], $2::text[]) AS e (booking_id, status)
         WHERE b.booking_id = e.booking_id",
    )
    .bind(&ids)
    .bind(&statuses)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE booking_seat SET released_at = now() WHERE booking_id = ANY($1) AND released_at IS NULL")
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_bookings(tx: &mut Transaction<'_, Postgres>, show: ShowId, batch: &Batch) -> Result<(), sqlx::Error> {
    if batch.new_bookings.is_empty() {
        return Ok(());
    }
    let n = batch.new_bookings.len();
    let (mut ids, mut users, mut statuses, mut commands, mut expiries) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut counts, mut subtotals, mut totals) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut discounts, mut promos, mut entries) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut seat_bookings, mut seat_ids, mut prices, mut released) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for booking in &batch.new_bookings {
        ids.push(booking.booking_id);
        users.push(booking.user_id);
        statuses.push(booking.status.as_str());
        commands.push(booking.command_id);
        expiries.push(booking.expires_at);
        counts.push(booking.seats.len() as i32);
        subtotals.push(booking.subtotal_cents);
        totals.push(booking.total_cents);
        discounts.push(booking.discount_cents);
        promos.push(booking.promo_code_id);
        entries.push(booking.waitlist_entry_id);
        let gone = !matches!(booking.status, BookingStatus::Held);
        for (seat, price) in &booking.seats {
            seat_bookings.push(booking.booking_id);
            seat_ids.push(*seat);
            prices.push(i32::try_from(*price).unwrap_or(i32::MAX));
            released.push(gone);
        }
    }
    sqlx::query(
        "INSERT INTO booking (booking_id, show_id, app_user_id, status, command_id, expires_at, seat_count,
                              subtotal_cents, total_cents, currency, discount_cents, promo_code_id, waitlist_entry_id)
         SELECT b.booking_id, $1, b.app_user_id, b.status, b.command_id, b.expires_at, b.seat_count,
                b.subtotal_cents, b.total_cents, (SELECT currency FROM show WHERE show_id = $1), b.discount_cents,
                b.promo_code_id, b.waitlist_entry_id
         FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::uuid[], $6::timestamptz[], $7::int[], $8::bigint[],
                     $9::bigint[], $10::bigint[], $11::uuid[], $12::uuid[])
              AS b (booking_id, app_user_id, status, command_id, expires_at, seat_count, subtotal_cents, total_cents,
                    discount_cents, promo_code_id, waitlist_entry_id)",
    )
    .bind(show)
    .bind(&ids)
    .bind(&users)
    .bind(&statuses)
    .bind(&commands)
    .bind(&expiries)
    .bind(&counts)
    .bind(&subtotals)
    .bind(&totals)
    .bind(&discounts)
    .bind(&promos)
    .bind(&entries)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO booking_seat (booking_id, show_id, seat_id, price_cents, released_at)
         SELECT s.booking_id, $1, s.seat_id, s.price_cents, CASE WHEN s.released THEN now() END
         FROM UNNEST($2::uuid[], $3::uuid[], $4::int[], $5::bool[]) AS s (booking_id, seat_id, price_cents, released)",
    )
    .bind(show)
    .bind(&seat_bookings)
    .bind(&seat_ids)
    .bind(&prices)
    .bind(&released)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn update_seats(
    tx: &mut Transaction<'_, Postgres>,
    show: ShowId,
    state: &ShowState,
    batch: &Batch,
) -> Result<(), sqlx::Error> {
    if batch.changed_seats.is_empty() {
        return Ok(());
    }
    let n = batch.changed_seats.len();
    let (mut seats, mut statuses, mut bookings) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for index in &batch.changed_seats {
        let (seat, status, booking) = state.seat_row(*index);
        seats.push(seat);
        statuses.push(status.as_str());
        bookings.push(booking);
    }
    sqlx::query(
        "UPDATE show_seat ss SET status = c.status, booking_id = c.booking_id, version = ss.version + 1
         FROM UNNEST($2::uuid[], $3::text[], $4::uuid[]) AS c (seat_id, status, booking_id)
         WHERE ss.show_id = $1 AND ss.seat_id = c.seat_id",
    )
    .bind(show)
    .bind(&seats)
    .bind(&statuses)
    .bind(&bookings)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Waitlist entries the batch created (before the bookings that may offer them seats).
async fn insert_waitlist(tx: &mut Transaction<'_, Postgres>, show: ShowId, batch: &Batch) -> Result<(), sqlx::Error> {
    if batch.waitlist_new.is_empty() {
        return Ok(());
    }
    let ids: Vec<WaitlistEntryId> = batch.waitlist_new.iter().map(|e| e.waitlist_entry_id).collect();
    let users: Vec<UserId> = batch.waitlist_new.iter().map(|e| e.user_id).collect();
    let quantities: Vec<i32> = batch
        .waitlist_new
        .iter()
        .map(|e| i32::try_from(e.quantity).unwrap_or(i32::MAX))
        .collect();
    sqlx::query(
        // clock_timestamp(), read row by row in queue order, keeps the queue order in
        // created_at for the next writer's load (now() is the same for the whole batch).
        "INSERT INTO waitlist_entry (waitlist_entry_id, show_id, app_user_id, quantity, created_at)
         SELECT w.id, $1, w.app_user_id, w.quantity, clock_timestamp()
         FROM UNNEST($2::uuid[], $3::uuid[], $4::int[]) WITH ORDINALITY AS w (id, app_user_id, quantity, n)
         ORDER BY w.n",
    )
    .bind(show)
    .bind(&ids)
    .bind(&users)
    .bind(&quantities)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Waitlist entries that moved on (after the bookings their offers name).
async fn update_waitlist(tx: &mut Transaction<'_, Postgres>, batch: &Batch) -> Result<(), sqlx::Error> {
    if batch.waitlist_changes.is_empty() {
        return Ok(());
    }
    let ids: Vec<WaitlistEntryId> = batch.waitlist_changes.keys().copied().collect();
    let statuses: Vec<&str> = batch.waitlist_changes.values().map(|c| c.status).collect();
    let bookings: Vec<Option<BookingId>> = batch.waitlist_changes.values().map(|c| c.booking_id).collect();
    sqlx::query(
        "UPDATE waitlist_entry w SET status = c.status,
                offered_booking_id = coalesce(c.booking_id, w.offered_booking_id)
         FROM UNNEST($1::uuid[], $2::text[], $3::uuid[]) AS c (id, status, booking_id)
         WHERE w.waitlist_entry_id = c.id",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&bookings)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Payment rows of the charges the batch started.
async fn insert_payments(tx: &mut Transaction<'_, Postgres>, currency: &str, batch: &Batch) -> Result<(), sqlx::Error> {
    if batch.payments.is_empty() {
        return Ok(());
    }
    let ids: Vec<PaymentId> = batch.payments.iter().map(|p| p.payment_id).collect();
    let bookings: Vec<BookingId> = batch.payments.iter().map(|p| p.booking_id).collect();
    let amounts: Vec<i64> = batch.payments.iter().map(|p| p.amount_cents).collect();
    let keys: Vec<&str> = batch.payments.iter().map(|p| p.idempotency_key.as_str()).collect();
    let tokens: Vec<&str> = batch.payments.iter().map(|p| p.card_token.as_str()).collect();
    sqlx::query(
        "INSERT INTO payment (payment_id, booking_id, amount_cents, currency, idempotency_key, card_token)
         SELECT p.payment_id, p.booking_id, p.amount_cents, $1, p.idempotency_key, p.card_token
         FROM UNNEST($2::uuid[], $3::uuid[], $4::bigint[], $5::text[], $6::text[])
              AS p (payment_id, booking_id, amount_cents, idempotency_key, card_token)",
    )
    .bind(currency)
    .bind(&ids)
    .bind(&bookings)
    .bind(&amounts)
    .bind(&keys)
    .bind(&tokens)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Tickets issued by confirmations, and tickets voided by cancellations.
async fn write_tickets(tx: &mut Transaction<'_, Postgres>, show: ShowId, batch: &Batch) -> Result<(), sqlx::Error> {
    if !batch.tickets.is_empty() {
        let ids: Vec<TicketId> = batch.tickets.iter().map(|t| t.ticket_id).collect();
        let bookings: Vec<BookingId> = batch.tickets.iter().map(|t| t.booking_id).collect();
        let seats: Vec<SeatId> = batch.tickets.iter().map(|t| t.seat_id).collect();
        let codes: Vec<&str> = batch.tickets.iter().map(|t| t.code.as_str()).collect();
        let signatures: Vec<&str> = batch.tickets.iter().map(|t| t.signature.as_str()).collect();
        sqlx::query(
            "INSERT INTO ticket (ticket_id, booking_id, show_id, seat_id, code, signature)
             SELECT t.ticket_id, t.booking_id, $1, t.seat_id, t.code, t.signature
             FROM UNNEST($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[])
                  AS t (ticket_id, booking_id, seat_id, code, signature)",
        )
        .bind(show)
        .bind(&ids)
        .bind(&bookings)
        .bind(&seats)
        .bind(&codes)
        .bind(&signatures)
        .execute(&mut **tx)
        .await?;
    }
    if !batch.voided.is_empty() {
        sqlx::query("UPDATE ticket SET voided_at = now() WHERE booking_id = ANY($1) AND voided_at IS NULL")
            .bind(&batch.voided)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Cancelled bookings whose refund went through.
async fn record_refunds(tx: &mut Transaction<'_, Postgres>, batch: &Batch) -> Result<(), sqlx::Error> {
    if batch.refunded.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE booking SET status = 'refunded', updated_at = now()
         WHERE booking_id = ANY($1) AND status = 'cancelled'",
    )
    .bind(&batch.refunded)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Promo-code uses taken and given back; the table's check refuses going over `max_uses`.
async fn count_promo_uses(tx: &mut Transaction<'_, Postgres>, batch: &Batch) -> Result<(), sqlx::Error> {
    let uses: Vec<(PromoCodeId, i32)> = batch
        .promo_uses
        .iter()
        .filter(|(_, n)| **n != 0)
        .map(|(id, n)| (*id, *n))
        .collect();
    if uses.is_empty() {
        return Ok(());
    }
    let ids: Vec<PromoCodeId> = uses.iter().map(|(id, _)| *id).collect();
    let counts: Vec<i32> = uses.iter().map(|(_, n)| *n).collect();
    sqlx::query(
        "UPDATE promo_code p SET used_count = p.used_count + u.n
         FROM UNNEST($1::uuid[], $2::int[]) AS u (id, n)
         WHERE p.promo_code_id = u.id",
    )
    .bind(&ids)
    .bind(&counts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_results(tx: &mut Transaction<'_, Postgres>, show: ShowId, batch: &Batch) -> Result<(), sqlx::Error> {
    if !batch.hold_results.is_empty() {
        let n = batch.hold_results.len();
        let (mut ids, mut users, mut statuses, mut bookings, mut codes, mut details) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for result in &batch.hold_results {
            ids.push(result.command_id);
            users.push(result.user_id);
            statuses.push(if result.booking_id.is_some() {
                "held"
            } else {
                "rejected"
            });
            bookings.push(result.booking_id);
            codes.push(result.rejection.map(|code| code.as_str()));
            details.push(
                (!result.unavailable.is_empty())
                    .then(|| serde_json::json!({ "unavailable_seat_ids": result.unavailable })),
            );
        }
        sqlx::query(
            "INSERT INTO hold_request (hold_request_id, show_id, app_user_id, status, booking_id, code, detail)
             SELECT r.id, $1, r.app_user_id, r.status, r.booking_id, r.code, r.detail
             FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::uuid[], $6::text[], $7::jsonb[])
                  AS r (id, app_user_id, status, booking_id, code, detail)",
        )
        .bind(show)
        .bind(&ids)
        .bind(&users)
        .bind(&statuses)
        .bind(&bookings)
        .bind(&codes)
        .bind(&details)
        .execute(&mut **tx)
        .await?;
    }
    if !batch.processed.is_empty() {
        let ids: Vec<CommandId> = batch.processed.iter().map(|p| p.command_id).collect();
        let kinds: Vec<&str> = batch.processed.iter().map(|p| p.command_type).collect();
        let results: Vec<&serde_json::Value> = batch.processed.iter().map(|p| &p.result).collect();
        sqlx::query(
            "INSERT INTO processed_command (command_id, show_id, command_type, result)
             SELECT p.command_id, $1, p.command_type, p.result
             FROM UNNEST($2::uuid[], $3::text[], $4::jsonb[]) AS p (command_id, command_type, result)",
        )
        .bind(show)
        .bind(&ids)
        .bind(&kinds)
        .bind(&results)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn insert_outbox(
    tx: &mut Transaction<'_, Postgres>,
    batch: &Batch,
    exchanges: &Exchanges,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut outbox_ids = Vec::with_capacity(batch.events.len());
    // Chunks keep each statement under one loopback TCP segment (64 KiB): a larger message
    // ends in a partial segment that Nagle holds back until the server's delayed ACK, ~40 ms.
    for events in batch.events.chunks(OUTBOX_CHUNK) {
        let ids: Vec<MessageId> = events.iter().map(|e| e.message_id).collect();
        let targets: Vec<&str> = events.iter().map(|e| exchanges.name(e.exchange)).collect();
        let keys: Vec<&str> = events.iter().map(|e| e.routing_key.as_str()).collect();
        let bodies: Vec<&serde_json::Value> = events.iter().map(|e| &e.body).collect();
        // WITH ORDINALITY keeps the events' order in their outbox ids, so the relay's sweep
        // publishes them in the order they happened.
        let chunk: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO outbox (message_id, exchange, routing_key, body)
             SELECT o.message_id, o.exchange, o.routing_key, o.body
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) WITH ORDINALITY
                  AS o (message_id, exchange, routing_key, body, n)
             ORDER BY o.n
             RETURNING outbox_id",
        )
        .bind(&ids)
        .bind(&targets)
        .bind(&keys)
        .bind(&bodies)
        .fetch_all(&mut **tx)
        .await?;
        outbox_ids.extend(chunk);
    }
    Ok(outbox_ids)
}

/// Events per outbox statement (an event's envelope is a few hundred bytes).
const OUTBOX_CHUNK: usize = 64;

/// Marks outbox rows as published.
#[tracing::instrument(skip(db, ids), fields(rows = ids.len()))]
pub async fn mark_published(db: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE outbox SET published_at = now() WHERE outbox_id = ANY($1) AND published_at IS NULL")
        .bind(ids)
        .execute(db)
        .await?;
    Ok(())
}

/// An outbox row waiting to be published.
#[derive(Debug, FromRow)]
pub struct Unpublished {
    /// Its id.
    pub outbox_id: i64,
    /// The envelope's message id.
    pub message_id: MessageId,
    /// Where to.
    pub exchange: String,
    /// With which key.
    pub routing_key: String,
    /// The envelope.
    pub body: serde_json::Value,
}

/// Rows left unpublished for longer than `older_than` (a worker died between its commit and
/// its publish), oldest first. `SKIP LOCKED` lets several relays sweep without waiting on each
/// other; the rows stay locked until the caller's transaction ends.
#[tracing::instrument(skip(db))]
pub async fn unpublished(
    db: &mut PgConnection,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<Vec<Unpublished>, sqlx::Error> {
    sqlx::query_as(
        "SELECT outbox_id, message_id, exchange, routing_key, body FROM outbox
         WHERE published_at IS NULL AND created_at < now() - $1::interval
         ORDER BY outbox_id
         LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(older_than)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Deletes up to `limit` outbox rows published longer ago than `older_than`: the outbox is a
/// hand-off, not an archive, and would otherwise grow with every event.
#[tracing::instrument(skip(db))]
pub async fn prune_outbox(
    db: impl PgExecutor<'_>,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE outbox_id IN (
             SELECT outbox_id FROM outbox WHERE published_at < now() - $1::interval ORDER BY outbox_id LIMIT $2)",
    )
    .bind(older_than)
    .bind(limit)
    .execute(db)
    .await?
    .rows_affected())
}
