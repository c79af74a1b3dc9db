//! The flash-sale correctness audit: after a sale has settled, reads PostgreSQL, the gateway
//! simulator's ledger, the SMTP sink's mail directory and the waiting room's Redis state, and
//! checks the promises Floodgate makes (DESIGN.md):
//!
//! 1. [`name::ONE_LIVE_BOOKING_PER_SEAT`]: no seat is claimed by two live bookings.
//! 2. [`name::SEAT_COUNTS`]: sold <= capacity, and held + sold + available (+ blocked) = capacity.
//! 3. [`name::SEAT_MAP_MATCHES_BOOKINGS`]: `show_seat` and `booking_seat` tell the same story.
//! 4. [`name::CHARGES_MATCHED`]: every charge kept is for a confirmed booking with tickets, and
//!    every confirmed booking kept a charge.
//! 5. [`name::NO_DOUBLE_CHARGE`]: no booking has two charges kept; no refund without its charge.
//! 6. [`name::TICKETS_PER_SEAT`]: exactly one valid ticket per seat of a confirmed booking.
//! 7. [`name::ONE_CONFIRMATION_EMAIL`]: exactly one booking-confirmed e-mail per confirmed booking.
//! 8. [`name::PREQUEUE_ORDER`]: the pre-queue was numbered in the order the revealed seed gives.
//! 9. [`name::ADMISSION_ORDER`]: the room's admission log (written by the admitter's Lua script,
//!    stamped with Redis time) passed places in strictly increasing queue-number order, and every
//!    admission a fan was told of is in that log with the fan's number.
//!
//! Every database check reads one REPEATABLE READ snapshot, with one set-based statement (or two)
//! per check, so a show of 50,000 seats and 30,000 bookings audits in seconds. A violation names
//! its rows (seat, booking, payment intent, user ids), so it can be looked up at once.
//!
//! How an e-mail is tied to its booking: the notifier sends each e-mail with
//! `Message-ID: <notification_id@floodgate>` (notifier `mail.rs`), and the `notification` row
//! names the booking and the kind. The audit reads only the headers of each `.eml` file and maps
//! the Message-IDs through that table; copies of one message (a resend after a crash keeps its
//! Message-ID) count as one e-mail, as a mail client shows them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use common::ids::{ShowId, UserId};
use serde::{Deserialize, Serialize};
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;
use waiting_room::{
    keys::Keys,
    room::AdmissionRecord,
    shuffle::{self, Seed},
};

/// The names of the checks, as they appear in the report.
pub mod name {
    /// No seat in two live bookings.
    pub const ONE_LIVE_BOOKING_PER_SEAT: &str = "one_live_booking_per_seat";
    /// Seat counts add up to the capacity.
    pub const SEAT_COUNTS: &str = "seat_counts";
    /// `show_seat` agrees with `booking_seat`.
    pub const SEAT_MAP_MATCHES_BOOKINGS: &str = "seat_map_matches_bookings";
    /// Every charge kept is for a confirmed, ticketed booking (and the reverse).
    pub const CHARGES_MATCHED: &str = "charges_matched";
    /// No booking charged twice.
    pub const NO_DOUBLE_CHARGE: &str = "no_double_charge";
    /// One valid ticket per seat of a confirmed booking.
    pub const TICKETS_PER_SEAT: &str = "tickets_per_seat";
    /// One booking-confirmed e-mail per confirmed booking.
    pub const ONE_CONFIRMATION_EMAIL: &str = "one_confirmation_email";
    /// The pre-queue order matches the revealed seed.
    pub const PREQUEUE_ORDER: &str = "prequeue_order";
    /// No fan admitted out of queue order.
    pub const ADMISSION_ORDER: &str = "admission_order";
}

/// Booking statuses in which a booking owns its seats.
const LIVE_STATUSES: [&str; 3] = ["held", "payment_pending", "confirmed"];

// ---------------------------------------------------------------------------------------------
// Inputs

/// Where the audit reads from. Only the bookings, charges and e-mails of `show` count.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The deployment's PostgreSQL.
    pub database_url: String,
    /// The show audited.
    pub show: ShowId,
    /// The gateway simulator's ledger ([`fetch_ledger`]); `None`: the payment checks are skipped.
    pub ledger: Option<Ledger>,
    /// The SMTP sink's directory of `.eml` files; `None`: the e-mail check is skipped.
    pub mail_dir: Option<PathBuf>,
    /// The waiting room's Redis; `None`: the pre-queue check is skipped.
    pub room: Option<RoomSources>,
    /// The admissions fans were told of (admission tokens received); each must be in the room's
    /// admission log. Empty: only the log's own order is checked.
    pub admissions: Vec<Admitted>,
}

/// Where the waiting room of the show lives.
#[derive(Debug, Clone)]
pub struct RoomSources {
    /// `REDIS_URL` of the deployment.
    pub redis_url: String,
    /// `REDIS_KEY_PREFIX` of the deployment (empty by default).
    pub key_prefix: String,
}

/// An admission a fan was told of: the user and queue number its admission token binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitted {
    /// The fan.
    pub user: UserId,
    /// The fan's queue number.
    pub number: u64,
}

/// The gateway simulator's ledger (`GET /v1/_ledger`): every charge taken and refund paid.
/// Declines are left out: they move no money.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ledger {
    /// Successful charges.
    #[serde(default)]
    pub charges: Vec<LedgerCharge>,
    /// Successful refunds.
    #[serde(default)]
    pub refunds: Vec<LedgerRefund>,
}

/// One successful charge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerCharge {
    /// The gateway's payment intent id (`pi_...`).
    pub payment_intent: String,
    /// Minor units.
    pub amount: i64,
    /// What the payment-worker attached: `payment_id`, `booking_id`, `show_id`.
    #[serde(default)]
    pub metadata: LedgerMetadata,
}

/// One successful refund.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerRefund {
    /// The gateway's refund id (`re_...`).
    pub id: String,
    /// The intent refunded.
    pub payment_intent: String,
    /// Minor units.
    pub amount: i64,
    /// What the payment-worker attached: `refund_id`, `payment_id`.
    #[serde(default)]
    pub metadata: LedgerMetadata,
}

/// The metadata the payment-worker puts on charges and refunds (payment-worker `handler.rs`).
/// Kept as text: a malformed value makes a row unattributable, not the ledger unreadable.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LedgerMetadata {
    /// The `payment` row.
    #[serde(default)]
    pub payment_id: Option<String>,
    /// The booking paid for (charges).
    #[serde(default)]
    pub booking_id: Option<String>,
    /// The booking's show (charges).
    #[serde(default)]
    pub show_id: Option<String>,
}

impl LedgerMetadata {
    fn booking(&self) -> Option<Uuid> {
        self.booking_id.as_deref().and_then(|id| id.parse().ok())
    }

    fn show(&self) -> Option<Uuid> {
        self.show_id.as_deref().and_then(|id| id.parse().ok())
    }

    fn payment(&self) -> Option<Uuid> {
        self.payment_id.as_deref().and_then(|id| id.parse().ok())
    }
}

/// Reads the gateway simulator's ledger (`GET {gateway_url}/v1/_ledger`).
pub async fn fetch_ledger(client: &reqwest::Client, gateway_url: &str) -> anyhow::Result<Ledger> {
    let url = format!("{}/v1/_ledger", gateway_url.trim_end_matches('/'));
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway simulator at {url}"))?
        .error_for_status()
        .with_context(|| format!("GET {url} failed"))?;
    response
        .json()
        .await
        .with_context(|| format!("GET {url} answered something other than a ledger"))
}

// ---------------------------------------------------------------------------------------------
// Outputs

/// The audit's outcome: one entry per check, in a fixed order.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable identifier (see [`name`]).
    pub name: &'static str,
    /// What it checks, in a sentence.
    pub description: &'static str,
    /// Rows (seats, bookings, charges, fans) it looked at.
    pub checked: u64,
    /// Why it did not run, when it did not (a source was not given).
    pub skipped: Option<String>,
    /// Every violation, naming its rows.
    pub violations: Vec<String>,
}

impl Check {
    fn new(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            checked: 0,
            skipped: None,
            violations: Vec::new(),
        }
    }

    fn skip(mut self, why: impl Into<String>) -> Self {
        self.skipped = Some(why.into());
        self
    }

    /// Passed: ran (or was skipped) without a violation.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Violations listed per failed check in the Markdown summary (the JSON has them all).
const MARKDOWN_VIOLATIONS: usize = 20;

impl Report {
    /// No check found a violation (skipped checks do not fail the audit).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(Check::passed)
    }

    /// The check called `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|check| check.name == name)
    }

    /// A Markdown summary: a table of the checks, then the first violations of each failed one.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("| check | rows checked | violations | result |\n|---|---:|---:|---|\n");
        for check in &self.checks {
            let result = match (&check.skipped, check.passed()) {
                (_, false) => "FAILED".to_owned(),
                (Some(why), true) => format!("skipped: {why}"),
                (None, true) => "passed".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {result} |",
                check.name,
                check.checked,
                check.violations.len()
            );
        }
        for check in self.checks.iter().filter(|check| !check.passed()) {
            let _ = write!(out, "\n### {}\n\n{}\n\n", check.name, check.description);
            for violation in check.violations.iter().take(MARKDOWN_VIOLATIONS) {
                let _ = writeln!(out, "- {violation}");
            }
            if check.violations.len() > MARKDOWN_VIOLATIONS {
                let _ = writeln!(out, "- ... and {} more", check.violations.len() - MARKDOWN_VIOLATIONS);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// Runs every check against `sources`. Run it once the sale has settled (no holds, payments or
/// e-mails in flight): a confirmation still on its way to the mail sink would be reported as
/// missing. `Err` only when a source cannot be read at all; violations are in the report.
pub async fn run(sources: &Sources) -> anyhow::Result<Report> {
    let show = sources.show;
    // Mail first, then the database snapshot: every Message-ID read then has its notification
    // row in the snapshot (the notifier records it before sending).
    let mail = match &sources.mail_dir {
        Some(dir) => {
            let dir = dir.clone();
            Some(
                tokio::task::spawn_blocking(move || scan_mail(&dir))
                    .await
                    .context("the mail scan panicked")??,
            )
        }
        None => None,
    };

    let mut connection = PgConnection::connect(&sources.database_url)
        .await
        .context("cannot connect to PostgreSQL")?;
    let mut tx = connection.begin().await?;
    // One snapshot, so the checks agree with each other even if a writer is still busy.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let mut checks = vec![
        one_live_booking_per_seat(&mut tx, show).await?,
        seat_counts(&mut tx, show).await?,
        seat_map_matches_bookings(&mut tx, show).await?,
    ];
    match &sources.ledger {
        Some(ledger) => {
            let (matched, double) = charges(&mut tx, show, ledger).await?;
            checks.push(matched);
            checks.push(double);
        }
        None => {
            checks.push(Check::new(name::CHARGES_MATCHED, CHARGES_MATCHED).skip("no gateway ledger"));
            checks.push(Check::new(name::NO_DOUBLE_CHARGE, NO_DOUBLE_CHARGE).skip("no gateway ledger"));
        }
    }
    checks.push(tickets_per_seat(&mut tx, show).await?);
    checks.push(match &mail {
        Some(mail) => one_confirmation_email(&mut tx, show, mail).await?,
        None => Check::new(name::ONE_CONFIRMATION_EMAIL, ONE_CONFIRMATION_EMAIL).skip("no mail directory"),
    });
    tx.rollback().await?;
    connection.close().await.ok();

    match &sources.room {
        Some(room) => {
            let facts = room_facts(room, show).await?;
            checks.push(judge_prequeue(&facts));
            checks.push(judge_admissions(&facts.admission_log, &sources.admissions));
        }
        None => {
            checks.push(Check::new(name::PREQUEUE_ORDER, PREQUEUE_ORDER).skip("no waiting-room Redis"));
            checks.push(Check::new(name::ADMISSION_ORDER, ADMISSION_ORDER).skip("no waiting-room Redis"));
        }
    }
    Ok(Report { checks })
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn list(ids: &[Uuid]) -> String {
    ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------------------------------------
// 1. One live booking per seat

const ONE_LIVE_BOOKING_PER_SEAT: &str = "No seat is claimed by two live (held, payment_pending, confirmed) bookings, \
     counting both the bookings' own seats (booking_seat) and the seat map (show_seat).";

/// A seat and every live booking claiming it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct SeatClaims {
    seat_id: Uuid,
    bookings: Vec<Uuid>,
}

async fn one_live_booking_per_seat(tx: &mut PgConnection, show: ShowId) -> anyhow::Result<Check> {
    // Every claimed seat comes back (one row per seat, at most the capacity), so the check also
    // reports how many seats it looked at.
    let claims: Vec<SeatClaims> = sqlx::query_as(
        "WITH claim AS (
             SELECT bs.seat_id, bs.booking_id
             FROM booking_seat bs JOIN booking b ON b.booking_id = bs.booking_id
             WHERE bs.show_id = $1 AND bs.released_at IS NULL AND b.status = ANY($2)
             UNION
             SELECT ss.seat_id, ss.booking_id
             FROM show_seat ss JOIN booking b ON b.booking_id = ss.booking_id
             WHERE ss.show_id = $1 AND ss.status IN ('held', 'sold') AND b.status = ANY($2))
         SELECT seat_id, array_agg(booking_id ORDER BY booking_id) AS bookings
         FROM claim GROUP BY seat_id",
    )
    .bind(show)
    .bind(&LIVE_STATUSES[..])
    .fetch_all(&mut *tx)
    .await
    .context("reading the seats' live bookings")?;
    Ok(judge_seat_claims(&claims))
}

fn judge_seat_claims(claims: &[SeatClaims]) -> Check {
    let mut check = Check::new(name::ONE_LIVE_BOOKING_PER_SEAT, ONE_LIVE_BOOKING_PER_SEAT);
    check.checked = claims.len() as u64;
    check.violations = claims
        .iter()
        .filter(|claim| claim.bookings.len() > 1)
        .map(|claim| format!("seat {} is in live bookings {}", claim.seat_id, list(&claim.bookings)))
        .collect();
    check
}

// ---------------------------------------------------------------------------------------------
// 2. Seat counts

const SEAT_COUNTS: &str = "Sold <= capacity and available + held + sold + blocked = capacity, where the capacity is the \
     venue's seat count; show.capacity and show.sold_count agree with the seat map.";

/// The show's seat map in numbers.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
struct SeatCounts {
    venue_seats: i64,
    capacity: i64,
    sold_count: i64,
    seat_rows: i64,
    available: i64,
    held: i64,
    sold: i64,
    blocked: i64,
}

async fn seat_counts(tx: &mut PgConnection, show: ShowId) -> anyhow::Result<Check> {
    let counts: Option<SeatCounts> = sqlx::query_as(
        "SELECT v.seat_count::bigint AS venue_seats, s.capacity::bigint AS capacity,
                s.sold_count::bigint AS sold_count, count(ss.seat_id) AS seat_rows,
                count(ss.seat_id) FILTER (WHERE ss.status = 'available') AS available,
                count(ss.seat_id) FILTER (WHERE ss.status = 'held') AS held,
                count(ss.seat_id) FILTER (WHERE ss.status = 'sold') AS sold,
                count(ss.seat_id) FILTER (WHERE ss.status = 'blocked') AS blocked
         FROM show s
         JOIN venue v ON v.venue_id = s.venue_id
         LEFT JOIN show_seat ss ON ss.show_id = s.show_id
         WHERE s.show_id = $1
         GROUP BY v.seat_count, s.capacity, s.sold_count",
    )
    .bind(show)
    .fetch_optional(&mut *tx)
    .await
    .context("counting the show's seats")?;
    let counts = counts.with_context(|| format!("show {show} does not exist"))?;
    Ok(judge_seat_counts(show, &counts))
}

fn judge_seat_counts(show: ShowId, counts: &SeatCounts) -> Check {
    let mut check = Check::new(name::SEAT_COUNTS, SEAT_COUNTS);
    check.checked = count(counts.seat_rows);
    let capacity = counts.venue_seats;
    let mut fail = |text: String| check.violations.push(format!("show {show}: {text}"));
    if counts.sold > capacity {
        fail(format!(
            "{} seats sold, more than the {capacity} seats of the venue",
            counts.sold
        ));
    }
    let accounted = counts.available + counts.held + counts.sold + counts.blocked;
    if accounted != capacity {
        fail(format!(
            "available {} + held {} + sold {} + blocked {} = {accounted}, but the venue has {capacity} seats",
            counts.available, counts.held, counts.sold, counts.blocked
        ));
    }
    if counts.seat_rows != accounted {
        fail(format!(
            "{} show_seat rows have an unknown status",
            counts.seat_rows - accounted
        ));
    }
    if counts.capacity != capacity {
        fail(format!(
            "show.capacity is {}, but the venue has {capacity} seats",
            counts.capacity
        ));
    }
    if counts.sold_count != counts.sold {
        fail(format!(
            "show.sold_count is {}, but {} seats are sold",
            counts.sold_count, counts.sold
        ));
    }
    check
}

// ---------------------------------------------------------------------------------------------
// 3. Seat map matches bookings

const SEAT_MAP_MATCHES_BOOKINGS: &str = "Every held or sold seat (show_seat) is a live seat of the booking it names, held for a \
     held/payment_pending booking and sold for a confirmed one; every seat a booking still holds \
     (booking_seat, not released) is in a live booking and marked so in the seat map.";

/// A disagreement between the seat map and the bookings' seats.
#[derive(Debug, Clone, sqlx::FromRow)]
struct SeatMapRow {
    seat_id: Uuid,
    /// show_seat's booking and status (held/sold), when the seat map says it is taken.
    map_booking: Option<Uuid>,
    map_status: Option<String>,
    /// The booking holding the seat in booking_seat (not released) and its status.
    claim_booking: Option<Uuid>,
    booking_status: Option<String>,
}

async fn seat_map_matches_bookings(tx: &mut PgConnection, show: ShowId) -> anyhow::Result<Check> {
    let checked: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM show_seat WHERE show_id = $1 AND status IN ('held', 'sold'))
              + (SELECT count(*) FROM booking_seat WHERE show_id = $1 AND released_at IS NULL)",
    )
    .bind(show)
    .fetch_one(&mut *tx)
    .await?;
    let rows: Vec<SeatMapRow> = sqlx::query_as(
        "WITH map AS (
             SELECT seat_id, booking_id, status FROM show_seat
             WHERE show_id = $1 AND status IN ('held', 'sold')),
         claim AS (
             SELECT bs.seat_id, bs.booking_id, b.status
             FROM booking_seat bs JOIN booking b ON b.booking_id = bs.booking_id
             WHERE bs.show_id = $1 AND bs.released_at IS NULL)
         SELECT coalesce(m.seat_id, c.seat_id) AS seat_id, m.booking_id AS map_booking,
                m.status AS map_status, c.booking_id AS claim_booking, c.status AS booking_status
         FROM map m FULL JOIN claim c ON c.seat_id = m.seat_id AND c.booking_id = m.booking_id
         WHERE m.seat_id IS NULL OR c.seat_id IS NULL
            OR NOT ((m.status = 'sold' AND c.status = 'confirmed')
                    OR (m.status = 'held' AND c.status IN ('held', 'payment_pending')))",
    )
    .bind(show)
    .fetch_all(&mut *tx)
    .await
    .context("comparing the seat map with the bookings")?;
    let mut check = judge_seat_map(&rows);
    check.checked = count(checked);
    Ok(check)
}

fn judge_seat_map(rows: &[SeatMapRow]) -> Check {
    let mut check = Check::new(name::SEAT_MAP_MATCHES_BOOKINGS, SEAT_MAP_MATCHES_BOOKINGS);
    for row in rows {
        let seat = row.seat_id;
        let violation = match (
            row.map_booking,
            row.map_status.as_deref(),
            row.claim_booking,
            row.booking_status.as_deref(),
        ) {
            (Some(booking), Some(status), None, _) => Some(format!(
                "seat {seat} is {status} for booking {booking} in the seat map, but that booking does not hold it"
            )),
            (None, _, Some(booking), Some(status)) if LIVE_STATUSES.contains(&status) => Some(format!(
                "booking {booking} ({status}) holds seat {seat}, but the seat map does not give it to that booking"
            )),
            (None, _, Some(booking), Some(status)) => {
                Some(format!("booking {booking} is {status} but still holds seat {seat}"))
            }
            (Some(booking), Some(map_status), Some(_), Some(status)) if !LIVE_STATUSES.contains(&status) => Some(
                format!("booking {booking} is {status} but still holds seat {seat} ({map_status} in the seat map)"),
            ),
            (Some(booking), Some(map_status), Some(_), Some(status)) => {
                let agrees = matches!(
                    (map_status, status),
                    ("sold", "confirmed") | ("held", "held" | "payment_pending")
                );
                (!agrees).then(|| {
                    format!("seat {seat} is {map_status} in the seat map, but its booking {booking} is {status}")
                })
            }
            _ => None,
        };
        check.violations.extend(violation);
    }
    check
}

// ---------------------------------------------------------------------------------------------
// 4 and 5. Charges

const CHARGES_MATCHED: &str = "Every charge the gateway kept (not fully refunded) is for a confirmed booking of the show \
     that has valid tickets and costs what was kept; every confirmed booking with a price kept a charge.";

const NO_DOUBLE_CHARGE: &str = "No booking has more than one charge kept (successful and not fully refunded); every refund \
     refers to a charge in the ledger and refunds never exceed it.";

/// A booking a charge names, or a confirmed booking of the show.
#[derive(Debug, Clone, sqlx::FromRow)]
struct ChargedBooking {
    booking_id: Uuid,
    show_id: Uuid,
    status: String,
    total_cents: i64,
    valid_tickets: i64,
}

/// A payment of the show a refund may refer to.
#[derive(Debug, Clone, sqlx::FromRow)]
struct ShowPayment {
    payment_id: Uuid,
    gateway_reference: Option<String>,
}

async fn charges(tx: &mut PgConnection, show: ShowId, ledger: &Ledger) -> anyhow::Result<(Check, Check)> {
    let named: Vec<Uuid> = ledger
        .charges
        .iter()
        .filter_map(|charge| charge.metadata.booking())
        .collect();
    let bookings: Vec<ChargedBooking> = sqlx::query_as(
        "SELECT b.booking_id, b.show_id, b.status, b.total_cents, coalesce(t.valid, 0) AS valid_tickets
         FROM booking b
         LEFT JOIN (SELECT booking_id, count(*) AS valid FROM ticket
                    WHERE show_id = $1 AND voided_at IS NULL GROUP BY booking_id) t
                ON t.booking_id = b.booking_id
         WHERE (b.show_id = $1 AND b.status = 'confirmed') OR b.booking_id = ANY($2)",
    )
    .bind(show)
    .bind(&named)
    .fetch_all(&mut *tx)
    .await
    .context("reading the charged bookings")?;
    let bookings: HashMap<Uuid, ChargedBooking> = bookings
        .into_iter()
        .map(|booking| (booking.booking_id, booking))
        .collect();

    // Refunds of intents the ledger has no charge for belong to no show by their intent; their
    // payment (metadata, or the intent as the payment's gateway reference) says whether they are
    // this show's.
    let charged: BTreeSet<&str> = ledger.charges.iter().map(|c| c.payment_intent.as_str()).collect();
    let orphans: Vec<&LedgerRefund> = ledger
        .refunds
        .iter()
        .filter(|refund| !charged.contains(refund.payment_intent.as_str()))
        .collect();
    let show_payments: Vec<ShowPayment> = if orphans.is_empty() {
        Vec::new()
    } else {
        let ids: Vec<Uuid> = orphans.iter().filter_map(|r| r.metadata.payment()).collect();
        let intents: Vec<&str> = orphans.iter().map(|r| r.payment_intent.as_str()).collect();
        sqlx::query_as(
            "SELECT p.payment_id, p.gateway_reference
             FROM payment p JOIN booking b ON b.booking_id = p.booking_id
             WHERE b.show_id = $1 AND (p.payment_id = ANY($2) OR p.gateway_reference = ANY($3))",
        )
        .bind(show)
        .bind(&ids)
        .bind(&intents)
        .fetch_all(&mut *tx)
        .await
        .context("reading the payments of refunds without a charge")?
    };
    let books = Books::new(show, ledger, &bookings);
    Ok((
        judge_charges_matched(&books, &bookings),
        judge_double_charges(&books, &show_payments),
    ))
}

/// The ledger seen from one show: its charges, and what was refunded of each intent.
struct Books<'a> {
    show: ShowId,
    ledger: &'a Ledger,
    /// The show's charges and the booking each is for.
    charges: Vec<(&'a LedgerCharge, Option<Uuid>)>,
    /// Intent -> refunded total.
    refunded: HashMap<&'a str, i64>,
}

impl<'a> Books<'a> {
    fn new(show: ShowId, ledger: &'a Ledger, bookings: &HashMap<Uuid, ChargedBooking>) -> Self {
        let mut refunded: HashMap<&str, i64> = HashMap::new();
        for refund in &ledger.refunds {
            *refunded.entry(refund.payment_intent.as_str()).or_default() += refund.amount;
        }
        // A charge is the show's when the booking it names is, or, for a booking the database
        // does not know, when its metadata says so.
        let charges = ledger
            .charges
            .iter()
            .filter_map(|charge| {
                let booking = charge.metadata.booking();
                let ours = match booking.and_then(|id| bookings.get(&id)) {
                    Some(known) => known.show_id == show.as_uuid(),
                    None => charge.metadata.show() == Some(show.as_uuid()),
                };
                ours.then_some((charge, booking))
            })
            .collect();
        Self {
            show,
            ledger,
            charges,
            refunded,
        }
    }

    fn kept(&self, charge: &LedgerCharge) -> i64 {
        charge.amount - self.refunded.get(charge.payment_intent.as_str()).copied().unwrap_or(0)
    }
}

fn judge_charges_matched(books: &Books<'_>, bookings: &HashMap<Uuid, ChargedBooking>) -> Check {
    let mut check = Check::new(name::CHARGES_MATCHED, CHARGES_MATCHED);
    check.checked = books.charges.len() as u64;
    let mut kept_by_booking: HashMap<Uuid, i64> = HashMap::new();
    for (charge, booking) in &books.charges {
        let kept = books.kept(charge);
        if kept <= 0 {
            continue;
        }
        let intent = &charge.payment_intent;
        let Some(booking_id) = booking else {
            check
                .violations
                .push(format!("charge {intent} kept {kept} but names no booking"));
            continue;
        };
        *kept_by_booking.entry(*booking_id).or_default() += kept;
        match bookings.get(booking_id) {
            None => check.violations.push(format!(
                "charge {intent} kept {kept} for booking {booking_id}, which does not exist"
            )),
            Some(booking) if booking.status != "confirmed" => check.violations.push(format!(
                "charge {intent} kept {kept} for booking {booking_id}, which is {} and was not refunded",
                booking.status
            )),
            Some(booking) if booking.valid_tickets == 0 => check.violations.push(format!(
                "charge {intent} kept {kept} for confirmed booking {booking_id}, which has no valid tickets"
            )),
            Some(booking) if booking.total_cents != kept => check.violations.push(format!(
                "charge {intent} kept {kept} for booking {booking_id}, which costs {}",
                booking.total_cents
            )),
            Some(_) => {}
        }
    }
    // The other way round: a confirmed booking with a price kept money for it.
    let mut unpaid: Vec<&ChargedBooking> = bookings
        .values()
        .filter(|booking| {
            booking.show_id == books.show.as_uuid()
                && booking.status == "confirmed"
                && booking.total_cents > 0
                && !kept_by_booking.contains_key(&booking.booking_id)
        })
        .collect();
    unpaid.sort_by_key(|booking| booking.booking_id);
    for booking in unpaid {
        let id = booking.booking_id;
        let charged = books.charges.iter().any(|(_, charged)| *charged == Some(id));
        check.violations.push(if charged {
            format!("confirmed booking {id} had every charge refunded but keeps its seats")
        } else {
            format!(
                "confirmed booking {id} (total {}) has no charge in the gateway's ledger",
                booking.total_cents
            )
        });
    }
    check
}

fn judge_double_charges(books: &Books<'_>, show_payments: &[ShowPayment]) -> Check {
    let mut check = Check::new(name::NO_DOUBLE_CHARGE, NO_DOUBLE_CHARGE);
    let mut by_booking: BTreeMap<Uuid, Vec<&LedgerCharge>> = BTreeMap::new();
    for (charge, booking) in &books.charges {
        if let Some(booking) = booking {
            by_booking.entry(*booking).or_default().push(charge);
        }
    }
    check.checked = by_booking.len() as u64;
    for (booking, charges) in &by_booking {
        let kept: Vec<String> = charges
            .iter()
            .filter(|charge| books.kept(charge) > 0)
            .map(|charge| format!("{} ({})", charge.payment_intent, books.kept(charge)))
            .collect();
        if kept.len() > 1 {
            check.violations.push(format!(
                "booking {booking} is charged {} times: {}",
                kept.len(),
                kept.join(", ")
            ));
        }
        for charge in charges {
            if books.kept(charge) < 0 {
                check.violations.push(format!(
                    "charge {} of booking {booking} was refunded {}, more than its {}",
                    charge.payment_intent,
                    charge.amount - books.kept(charge),
                    charge.amount
                ));
            }
        }
    }
    let charged: BTreeSet<&str> = books.ledger.charges.iter().map(|c| c.payment_intent.as_str()).collect();
    for refund in &books.ledger.refunds {
        if charged.contains(refund.payment_intent.as_str()) {
            continue;
        }
        let ours = show_payments.iter().any(|payment| {
            Some(payment.payment_id) == refund.metadata.payment()
                || payment.gateway_reference.as_deref() == Some(refund.payment_intent.as_str())
        });
        if ours {
            check.violations.push(format!(
                "refund {} of {} refers to {}, which the ledger has no charge for",
                refund.id, refund.amount, refund.payment_intent
            ));
        }
    }
    check
}

// ---------------------------------------------------------------------------------------------
// 6. Tickets

const TICKETS_PER_SEAT: &str = "Every seat of a confirmed booking has exactly one valid ticket, and no valid ticket is for a \
     seat its booking no longer holds or for a booking that is not confirmed.";

/// A (booking, seat) whose valid tickets are not exactly one for a held seat of a confirmed
/// booking.
#[derive(Debug, Clone, sqlx::FromRow)]
struct TicketRow {
    booking_id: Uuid,
    seat_id: Uuid,
    status: String,
    /// The seat is a live seat of the confirmed booking.
    in_booking: bool,
    valid: i64,
}

async fn tickets_per_seat(tx: &mut PgConnection, show: ShowId) -> anyhow::Result<Check> {
    let confirmed: i64 = sqlx::query_scalar("SELECT count(*) FROM booking WHERE show_id = $1 AND status = 'confirmed'")
        .bind(show)
        .fetch_one(&mut *tx)
        .await?;
    let rows: Vec<TicketRow> = sqlx::query_as(
        "WITH seat AS (
             SELECT bs.booking_id, bs.seat_id
             FROM booking_seat bs JOIN booking b ON b.booking_id = bs.booking_id
             WHERE bs.show_id = $1 AND b.status = 'confirmed' AND bs.released_at IS NULL),
         valid AS (
             SELECT booking_id, seat_id, count(*) AS n FROM ticket
             WHERE show_id = $1 AND voided_at IS NULL GROUP BY booking_id, seat_id)
         SELECT coalesce(s.booking_id, v.booking_id) AS booking_id, coalesce(s.seat_id, v.seat_id) AS seat_id,
                b.status, s.seat_id IS NOT NULL AS in_booking, coalesce(v.n, 0) AS valid
         FROM seat s FULL JOIN valid v ON v.booking_id = s.booking_id AND v.seat_id = s.seat_id
         JOIN booking b ON b.booking_id = coalesce(s.booking_id, v.booking_id)
         WHERE s.seat_id IS NULL OR coalesce(v.n, 0) <> 1",
    )
    .bind(show)
    .fetch_all(&mut *tx)
    .await
    .context("comparing tickets with the bookings' seats")?;
    let mut check = judge_tickets(&rows);
    check.checked = count(confirmed);
    Ok(check)
}

fn judge_tickets(rows: &[TicketRow]) -> Check {
    let mut check = Check::new(name::TICKETS_PER_SEAT, TICKETS_PER_SEAT);
    // One line per booking and kind of fault: a booking left without tickets is one violation,
    // not one per seat.
    let mut missing: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
    for row in rows {
        let (booking, seat) = (row.booking_id, row.seat_id);
        if !row.in_booking {
            check.violations.push(format!(
                "booking {booking} ({}) has {} valid ticket(s) for seat {seat}, which it does not hold as a confirmed booking",
                row.status, row.valid
            ));
        } else if row.valid == 0 {
            missing.entry(booking).or_default().push(seat);
        } else if row.valid > 1 {
            check.violations.push(format!(
                "booking {booking} has {} valid tickets for seat {seat}",
                row.valid
            ));
        }
    }
    for (booking, mut seats) in missing {
        seats.sort();
        check.violations.push(format!(
            "confirmed booking {booking} has no valid ticket for seat(s) {}",
            list(&seats)
        ));
    }
    check
}

// ---------------------------------------------------------------------------------------------
// 7. E-mails

const ONE_CONFIRMATION_EMAIL: &str = "Every confirmed booking got exactly one booking-confirmed e-mail (copies with one \
     Message-ID count once), and no booking that was never confirmed got one.";

/// What the mail directory holds.
#[derive(Debug, Clone, Default)]
struct MailScan {
    /// Distinct notification ids found in Message-ID headers.
    notifications: Vec<Uuid>,
}

/// Reads the Message-ID of every `.eml` file in `dir` (headers only: the bodies carry QR images).
fn scan_mail(dir: &Path) -> anyhow::Result<MailScan> {
    let mut notifications = BTreeSet::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read the mail directory {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let stored = path.extension().is_some_and(|ext| ext == "eml")
            // The sink writes `.<name>.tmp` first and renames it once complete.
            && !path.file_name().is_some_and(|name| name.to_string_lossy().starts_with('.'));
        if !stored {
            continue;
        }
        let file = std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if let Some(id) = message_id(std::io::BufReader::new(file))?
            .as_deref()
            .and_then(notification_of_message_id)
        {
            notifications.insert(id);
        }
    }
    Ok(MailScan {
        notifications: notifications.into_iter().collect(),
    })
}

/// Headers longer than this are not an e-mail the notifier wrote.
const MAX_HEADER_BYTES: usize = 256 * 1024;

/// The value of the top-level `Message-ID` header (unfolded), if any.
fn message_id(mut reader: impl std::io::BufRead) -> std::io::Result<Option<String>> {
    let mut header = String::new();
    let mut line = Vec::new();
    let mut read = 0;
    let found = |header: &str| {
        let (field, value) = header.split_once(':')?;
        field
            .trim()
            .eq_ignore_ascii_case("message-id")
            .then(|| value.trim().to_owned())
    };
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        read += n;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.starts_with([' ', '\t']) && n > 0 {
            // A folded continuation of the header before.
            header.push_str(text);
            continue;
        }
        if let Some(value) = found(&header) {
            return Ok(Some(value));
        }
        if n == 0 || text.is_empty() || read > MAX_HEADER_BYTES {
            return Ok(None);
        }
        header = text.to_owned();
    }
}

/// `<0190...@floodgate>` -> the notification id.
fn notification_of_message_id(value: &str) -> Option<Uuid> {
    let inner = value.trim().strip_prefix('<')?.strip_suffix('>')?;
    let (local, _domain) = inner.split_once('@')?;
    local.parse().ok()
}

/// A booking of the show with its booking-confirmed e-mails.
#[derive(Debug, Clone, sqlx::FromRow)]
struct EmailRow {
    booking_id: Uuid,
    status: String,
    /// `confirmed_at` is set: the booking was confirmed at some point (it may be cancelled now).
    was_confirmed: bool,
    emails: Vec<Uuid>,
}

async fn one_confirmation_email(tx: &mut PgConnection, show: ShowId, mail: &MailScan) -> anyhow::Result<Check> {
    let rows: Vec<EmailRow> = sqlx::query_as(
        "SELECT b.booking_id, b.status, b.confirmed_at IS NOT NULL AS was_confirmed,
                coalesce(array_agg(n.notification_id ORDER BY n.notification_id)
                         FILTER (WHERE n.notification_id IS NOT NULL), '{}') AS emails
         FROM booking b
         LEFT JOIN notification n
                ON n.booking_id = b.booking_id AND n.kind = 'booking_confirmed' AND n.channel = 'email'
               AND n.notification_id = ANY($2)
         WHERE b.show_id = $1 AND (b.status = 'confirmed' OR n.notification_id IS NOT NULL)
         GROUP BY b.booking_id, b.status, b.confirmed_at",
    )
    .bind(show)
    .bind(&mail.notifications)
    .fetch_all(&mut *tx)
    .await
    .context("matching e-mails with bookings")?;
    Ok(judge_emails(&rows))
}

fn judge_emails(rows: &[EmailRow]) -> Check {
    let mut check = Check::new(name::ONE_CONFIRMATION_EMAIL, ONE_CONFIRMATION_EMAIL);
    for row in rows {
        let booking = row.booking_id;
        let n = row.emails.len();
        if row.status == "confirmed" {
            check.checked += 1;
            if n == 0 {
                check
                    .violations
                    .push(format!("confirmed booking {booking} has no booking-confirmed e-mail"));
            }
        }
        if !row.was_confirmed && n > 0 {
            check.violations.push(format!(
                "booking {booking} ({}) was never confirmed but got a booking-confirmed e-mail (notification {})",
                row.status,
                list(&row.emails)
            ));
        } else if n > 1 {
            check.violations.push(format!(
                "booking {booking} got {n} booking-confirmed e-mails (notifications {})",
                list(&row.emails)
            ));
        }
    }
    check
}

// ---------------------------------------------------------------------------------------------
// 8. Pre-queue order

const PREQUEUE_ORDER: &str = "The revealed seed matches its published SHA-256 commitment; the pre-queue fans still in the \
     room (waiting or admitted) hold numbers 1..P in the order SHA-256(seed || user id) gives, and \
     fans who joined during the shuffle follow in user-id order.";

/// The room's state as Redis has it.
#[derive(Debug, Clone, Default)]
struct RoomFacts {
    /// The room's `cfg` hash.
    cfg: HashMap<String, String>,
    /// The secret seed key (kept after the reveal).
    stored_seed: Option<String>,
    /// Fans and their numbers: the waiting queue's entries, then the admitted hash's.
    numbered: Vec<(String, u64)>,
    /// Every place the admitter passed, in the order it passed them.
    admission_log: Vec<AdmissionRecord>,
}

async fn room_facts(room: &RoomSources, show: ShowId) -> anyhow::Result<RoomFacts> {
    use redis::AsyncCommands as _;
    let keys = Keys::new(&room.key_prefix, show);
    let client = redis::Client::open(room.redis_url.as_str()).context("invalid Redis URL")?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .context("cannot connect to Redis")?;
    let cfg: HashMap<String, String> = redis.hgetall(&keys.cfg).await?;
    let stored_seed: Option<String> = redis.get(&keys.seed).await?;
    let numbered_up_to = ["prequeue_size", "late_size"]
        .iter()
        .filter_map(|field| cfg.get(*field).and_then(|value| value.parse::<u64>().ok()))
        .sum::<u64>();
    let mut numbered = Vec::new();
    if numbered_up_to > 0 {
        // Scores are whole queue numbers, read as floats to be independent of the protocol.
        let waiting: Vec<(String, f64)> = redis.zrangebyscore_withscores(&keys.queue, 1, numbered_up_to).await?;
        numbered.extend(waiting.into_iter().map(|(user, number)| (user, number as u64)));
        let admitted: HashMap<String, String> = redis.hgetall(&keys.admitted).await?;
        numbered.extend(admitted.into_iter().filter_map(|(user, number)| {
            let number: u64 = number.parse().ok()?;
            (number <= numbered_up_to).then_some((user, number))
        }));
    }
    let redis = waiting_room::room::connect(&room.redis_url)
        .await
        .context("cannot connect to Redis")?;
    let admission_log = waiting_room::WaitingRoom::new(redis, room.key_prefix.clone())
        .admission_log(show)
        .await
        .context("cannot read the admission log")?;
    Ok(RoomFacts {
        cfg,
        stored_seed,
        numbered,
        admission_log,
    })
}

fn judge_prequeue(room: &RoomFacts) -> Check {
    let mut check = Check::new(name::PREQUEUE_ORDER, PREQUEUE_ORDER);
    let Some(state) = room.cfg.get("state") else {
        return check.skip("the show has no waiting room under this key prefix");
    };
    let Some(revealed) = room.cfg.get("seed") else {
        return check.skip(format!("the seed is not revealed yet (room {state})"));
    };
    let Some(seed) = Seed::from_hex(revealed) else {
        check
            .violations
            .push(format!("the revealed seed {revealed:?} is not 64 hex digits"));
        return check;
    };
    match room.cfg.get("seed_sha256") {
        None => check
            .violations
            .push("no seed commitment (seed_sha256) was published".to_owned()),
        Some(commitment) if *commitment != seed.commitment() => check.violations.push(format!(
            "the published commitment is {commitment}, but SHA-256 of the revealed seed is {}",
            seed.commitment()
        )),
        Some(_) => {}
    }
    if let Some(stored) = &room.stored_seed
        && Seed::from_hex(stored) != Some(seed)
    {
        check.violations.push(format!(
            "the revealed seed {revealed} is not the seed the room drew ({stored})"
        ));
    }
    let size = |field: &str| room.cfg.get(field).and_then(|value| value.parse::<u64>().ok());
    let Some(prequeue) = size("prequeue_size") else {
        check
            .violations
            .push("the seed is revealed but prequeue_size is missing".to_owned());
        return check;
    };
    let late = size("late_size").unwrap_or(0);

    // One number per fan, one fan per number.
    let mut by_user: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_number: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (user, number) in &room.numbered {
        if let Some(other) = by_user.insert(user, *number)
            && other != *number
        {
            check
                .violations
                .push(format!("user {user} holds two queue numbers, {other} and {number}"));
        }
        let holders = by_number.entry(*number).or_default();
        if !holders.contains(&user.as_str()) {
            holders.push(user);
        }
    }
    for (number, holders) in &by_number {
        if holders.len() > 1 {
            check
                .violations
                .push(format!("queue number {number} went to users {}", holders.join(", ")));
        }
    }

    // The pre-queue, by rank: the order of any subset of fans is the seed's order restricted to
    // it, so fans who left or were skipped do not matter.
    let members: Vec<(u64, UserId)> = by_user
        .iter()
        .filter(|(_, number)| (1..=prequeue).contains(*number))
        .filter_map(|(user, number)| match user.parse::<UserId>() {
            Ok(id) => Some((*number, id)),
            Err(_) => {
                check
                    .violations
                    .push(format!("pre-queue member {user:?} (number {number}) is not a user id"));
                None
            }
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let users: Vec<UserId> = members.iter().map(|(_, user)| *user).collect();
    let expected = shuffle::order(&seed, &users);
    for ((number, got), want) in members.iter().zip(&expected) {
        if got != want {
            check.violations.push(format!(
                "pre-queue number {number} went to user {got}, but the seed ranks user {want} there"
            ));
        }
    }

    // Fans who joined while the shuffle ran: numbered after it in user-id order (open.lua).
    let latecomers: Vec<(u64, &str)> = by_user
        .iter()
        .filter(|(_, number)| (prequeue + 1..=prequeue + late).contains(*number))
        .map(|(user, number)| (*number, *user))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for pair in latecomers.windows(2) {
        let ((first, a), (second, b)) = (pair[0], pair[1]);
        if a > b {
            check.violations.push(format!(
                "late arrival {a} got number {first}, before {b} with {second}, against user-id order"
            ));
        }
    }
    check.checked = (members.len() + latecomers.len()) as u64;
    check
}

// ---------------------------------------------------------------------------------------------
// 9. Admission order

const ADMISSION_ORDER: &str = "The room's admission log passed places in strictly increasing queue-number order (so no \
     number was admitted twice and nobody was let in ahead of an earlier number still waiting), \
     and every admission a fan was told of is in the log, for that fan and number.";

fn judge_admissions(log: &[AdmissionRecord], told: &[Admitted]) -> Check {
    let mut check = Check::new(name::ADMISSION_ORDER, ADMISSION_ORDER);
    if log.is_empty() && told.is_empty() {
        return check.skip("nobody was admitted");
    }
    check.checked = (log.len() + told.len()) as u64;
    let verb = |record: &AdmissionRecord| if record.admitted { "admitted" } else { "skipped" };
    for pair in log.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        if after.number <= before.number {
            check.violations.push(format!(
                "number {} (user {}) was {} at log entry {}, after number {} (user {}) was {} at {}",
                after.number,
                after.user,
                verb(after),
                after.id,
                before.number,
                before.user,
                verb(before),
                before.id
            ));
        }
    }
    let logged: BTreeSet<(&str, u64)> = log
        .iter()
        .filter(|record| record.admitted)
        .map(|record| (record.user.as_str(), record.number))
        .collect();
    for fan in told {
        let user = fan.user.to_string();
        if !logged.contains(&(user.as_str(), fan.number)) {
            check.violations.push(format!(
                "user {user} was admitted with number {}, which the room's admission log does not record for them",
                fan.number
            ));
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Uuid {
        Uuid::now_v7()
    }

    #[test]
    fn a_seat_claimed_by_two_bookings_is_named_with_both() {
        let (seat, a, b) = (id(), id(), id());
        let check = judge_seat_claims(&[
            SeatClaims {
                seat_id: id(),
                bookings: vec![a],
            },
            SeatClaims {
                seat_id: seat,
                bookings: vec![a, b],
            },
        ]);
        assert_eq!(check.checked, 2);
        assert_eq!(check.violations, [format!("seat {seat} is in live bookings {a}, {b}")]);
    }

    #[test]
    fn seat_counts_that_add_up_pass_and_an_oversale_does_not() {
        let show = ShowId::new();
        let good = SeatCounts {
            venue_seats: 10,
            capacity: 10,
            sold_count: 3,
            seat_rows: 10,
            available: 4,
            held: 2,
            sold: 3,
            blocked: 1,
        };
        assert!(judge_seat_counts(show, &good).passed());
        let oversold = SeatCounts {
            sold: 11,
            sold_count: 11,
            available: 0,
            held: 0,
            blocked: 0,
            seat_rows: 11,
            ..good
        };
        let check = judge_seat_counts(show, &oversold);
        assert!(
            check
                .violations
                .iter()
                .any(|v| v.contains("11 seats sold, more than the 10"))
        );
        assert!(
            check
                .violations
                .iter()
                .any(|v| v.contains("= 11, but the venue has 10"))
        );
    }

    #[test]
    fn a_seat_map_disagreeing_with_the_bookings_names_seat_and_booking() {
        let (seat, booking) = (id(), id());
        let row = |map_status: Option<&str>, claim: bool, status: &str| SeatMapRow {
            seat_id: seat,
            map_booking: map_status.map(|_| booking),
            map_status: map_status.map(str::to_owned),
            claim_booking: claim.then_some(booking),
            booking_status: claim.then(|| status.to_owned()),
        };
        let check = judge_seat_map(&[
            row(Some("sold"), false, ""),
            row(None, true, "held"),
            row(None, true, "expired"),
            row(Some("held"), true, "confirmed"),
            row(Some("sold"), true, "confirmed"),
        ]);
        assert_eq!(check.violations.len(), 4, "{:?}", check.violations);
        assert!(check.violations[2].contains(&format!("booking {booking} is expired but still holds seat {seat}")));
        assert!(check.violations[3].contains("is held in the seat map, but its booking"));
    }

    fn charge(intent: &str, amount: i64, booking: Uuid, show: ShowId) -> LedgerCharge {
        LedgerCharge {
            payment_intent: intent.to_owned(),
            amount,
            metadata: LedgerMetadata {
                payment_id: Some(id().to_string()),
                booking_id: Some(booking.to_string()),
                show_id: Some(show.to_string()),
            },
        }
    }

    fn refund(id_: &str, intent: &str, amount: i64) -> LedgerRefund {
        LedgerRefund {
            id: id_.to_owned(),
            payment_intent: intent.to_owned(),
            amount,
            metadata: LedgerMetadata::default(),
        }
    }

    fn booking(show: ShowId, status: &str, total: i64, tickets: i64) -> ChargedBooking {
        ChargedBooking {
            booking_id: id(),
            show_id: show.as_uuid(),
            status: status.to_owned(),
            total_cents: total,
            valid_tickets: tickets,
        }
    }

    #[test]
    fn kept_charges_need_a_confirmed_ticketed_booking_and_refunded_ones_do_not() {
        let (show, other_show) = (ShowId::new(), ShowId::new());
        let paid = booking(show, "confirmed", 5000, 2);
        let cancelled = booking(show, "refunded", 3000, 0);
        let unticketed = booking(show, "confirmed", 4000, 0);
        let free_ride = booking(show, "confirmed", 2000, 1);
        let ledger = Ledger {
            charges: vec![
                charge("pi_paid", 5000, paid.booking_id, show),
                charge("pi_cancelled", 3000, cancelled.booking_id, show),
                charge("pi_unticketed", 4000, unticketed.booking_id, show),
                // Another show's charge, for a booking this database does not know: ignored.
                charge("pi_elsewhere", 100, id(), other_show),
            ],
            refunds: vec![refund("re_1", "pi_cancelled", 3000)],
        };
        let bookings: HashMap<Uuid, ChargedBooking> = [paid, cancelled, unticketed.clone(), free_ride.clone()]
            .into_iter()
            .map(|b| (b.booking_id, b))
            .collect();
        let books = Books::new(show, &ledger, &bookings);
        let check = judge_charges_matched(&books, &bookings);
        assert_eq!(check.checked, 3);
        assert_eq!(check.violations.len(), 2, "{:?}", check.violations);
        assert!(check.violations[0].contains(&format!(
            "charge pi_unticketed kept 4000 for confirmed booking {}, which has no valid tickets",
            unticketed.booking_id
        )));
        assert!(check.violations[1].contains(&format!("confirmed booking {}", free_ride.booking_id)));
        assert!(judge_double_charges(&books, &[]).passed());
    }

    #[test]
    fn two_kept_charges_for_one_booking_and_an_orphan_refund_are_reported() {
        let show = ShowId::new();
        let paid = booking(show, "confirmed", 5000, 1);
        let payment = id();
        let ledger = Ledger {
            charges: vec![
                charge("pi_1", 5000, paid.booking_id, show),
                charge("pi_2", 5000, paid.booking_id, show),
                charge("pi_3", 5000, paid.booking_id, show),
            ],
            refunds: vec![
                refund("re_1", "pi_3", 5000),
                LedgerRefund {
                    metadata: LedgerMetadata {
                        payment_id: Some(payment.to_string()),
                        ..LedgerMetadata::default()
                    },
                    ..refund("re_2", "pi_lost", 700)
                },
            ],
        };
        let bookings: HashMap<Uuid, ChargedBooking> = [(paid.booking_id, paid.clone())].into();
        let books = Books::new(show, &ledger, &bookings);
        let check = judge_double_charges(
            &books,
            &[ShowPayment {
                payment_id: payment,
                gateway_reference: None,
            }],
        );
        assert_eq!(
            check.violations,
            [
                format!(
                    "booking {} is charged 2 times: pi_1 (5000), pi_2 (5000)",
                    paid.booking_id
                ),
                "refund re_2 of 700 refers to pi_lost, which the ledger has no charge for".to_owned(),
            ]
        );
    }

    #[test]
    fn missing_duplicate_and_stray_tickets_are_reported_per_booking() {
        let (booking, other, seat_a, seat_b, seat_c) = (id(), id(), id(), id(), id());
        let row = |booking_id, seat_id, status: &str, in_booking, valid| TicketRow {
            booking_id,
            seat_id,
            status: status.to_owned(),
            in_booking,
            valid,
        };
        let check = judge_tickets(&[
            row(booking, seat_a, "confirmed", true, 0),
            row(booking, seat_b, "confirmed", true, 0),
            row(booking, seat_c, "confirmed", true, 2),
            row(other, seat_a, "cancelled", false, 1),
        ]);
        assert_eq!(check.violations.len(), 3, "{:?}", check.violations);
        assert!(check.violations[0].contains(&format!("booking {booking} has 2 valid tickets for seat {seat_c}")));
        assert!(check.violations[1].starts_with(&format!("booking {other} (cancelled) has 1 valid ticket(s)")));
        let mut seats = [seat_a, seat_b];
        seats.sort();
        assert!(check.violations[2].ends_with(&list(&seats)));
    }

    #[test]
    fn a_message_id_is_read_from_folded_headers_and_mapped_to_its_notification() {
        let notification = id();
        let eml = format!(
            "Return-Path: <noreply@floodgate.test>\r\nDelivered-To: fan@example.test\r\nSubject: Your\r\n tickets\r\n\
             Message-ID:\r\n <{notification}@floodgate>\r\nContent-Type: text/plain\r\n\r\nMessage-ID: <{}@floodgate>\r\n",
            id()
        );
        let value = message_id(eml.as_bytes()).unwrap();
        assert_eq!(
            value.as_deref().and_then(notification_of_message_id),
            Some(notification)
        );
        assert_eq!(
            message_id("Subject: x\r\n\r\nMessage-ID: <a@b>\r\n".as_bytes()).unwrap(),
            None
        );
        assert_eq!(notification_of_message_id("<not-a-uuid@floodgate>"), None);
    }

    #[test]
    fn a_confirmed_booking_needs_exactly_one_email_and_an_unconfirmed_one_none() {
        let row = |status: &str, was_confirmed, emails: usize| EmailRow {
            booking_id: id(),
            status: status.to_owned(),
            was_confirmed,
            emails: (0..emails).map(|_| id()).collect(),
        };
        let rows = [
            row("confirmed", true, 1),
            row("confirmed", true, 0),
            row("confirmed", true, 2),
            row("refunded", true, 1),
            row("expired", false, 1),
        ];
        let check = judge_emails(&rows);
        assert_eq!(check.checked, 3);
        assert_eq!(check.violations.len(), 3, "{:?}", check.violations);
        assert!(check.violations[0].contains(&format!("{} has no booking-confirmed", rows[1].booking_id)));
        assert!(check.violations[1].contains("got 2 booking-confirmed e-mails"));
        assert!(check.violations[2].contains("was never confirmed"));
    }

    fn opened_room(prequeue: &[UserId], late: &[UserId]) -> RoomFacts {
        let seed = Seed::random();
        let mut numbered: Vec<(String, u64)> = shuffle::order(&seed, prequeue)
            .iter()
            .zip(1..)
            .map(|(user, number)| (user.to_string(), number))
            .collect();
        let mut late: Vec<String> = late.iter().map(ToString::to_string).collect();
        late.sort();
        numbered.extend(late.iter().cloned().zip(prequeue.len() as u64 + 1..));
        RoomFacts {
            cfg: [
                ("state", "open".to_owned()),
                ("seed", seed.to_hex()),
                ("seed_sha256", seed.commitment()),
                ("prequeue_size", prequeue.len().to_string()),
                ("late_size", late.len().to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            stored_seed: Some(seed.to_hex()),
            numbered,
            admission_log: Vec::new(),
        }
    }

    #[test]
    fn a_prequeue_numbered_in_the_seeds_order_passes_even_with_fans_gone() {
        let users: Vec<UserId> = (0..20).map(|_| UserId::new()).collect();
        let late: Vec<UserId> = (0..3).map(|_| UserId::new()).collect();
        let mut room = opened_room(&users, &late);
        // Fans 3 and 9 left or were skipped: the others keep their numbers.
        room.numbered.retain(|(_, number)| *number != 3 && *number != 9);
        let check = judge_prequeue(&room);
        assert!(check.passed(), "{:?}", check.violations);
        assert_eq!(check.checked, 21);
    }

    #[test]
    fn swapped_prequeue_numbers_and_a_broken_commitment_are_reported() {
        let users: Vec<UserId> = (0..10).map(|_| UserId::new()).collect();
        let mut room = opened_room(&users, &[]);
        let (first, second) = (room.numbered[1].1, room.numbered[4].1);
        room.numbered[1].1 = second;
        room.numbered[4].1 = first;
        room.cfg.insert("seed_sha256".to_owned(), "00".repeat(32));
        let check = judge_prequeue(&room);
        assert_eq!(check.violations.len(), 3, "{:?}", check.violations);
        assert!(check.violations[0].starts_with("the published commitment is 0000"));
        assert!(check.violations[1].starts_with(&format!("pre-queue number 2 went to user {}", room.numbered[4].0)));
        assert!(check.violations[2].starts_with(&format!("pre-queue number 5 went to user {}", room.numbered[1].0)));
    }

    #[test]
    fn a_room_before_its_sale_is_skipped_not_failed() {
        let room = RoomFacts {
            cfg: [("state".to_owned(), "prequeue".to_owned())].into(),
            ..RoomFacts::default()
        };
        let check = judge_prequeue(&room);
        assert!(check.passed());
        assert!(check.skipped.is_some_and(|why| why.contains("prequeue")));
    }

    #[test]
    fn a_log_out_of_queue_order_and_an_admission_missing_from_it_are_reported() {
        let record = |number: u64, user: UserId, admitted| AdmissionRecord {
            id: format!("{}-0", 1_000 + number),
            at_ms: 1_000 + number,
            number,
            user: user.to_string(),
            admitted,
        };
        let users: Vec<UserId> = (0..5).map(|_| UserId::new()).collect();
        // Number 2 was skipped (its fan had gone quiet).
        let in_order: Vec<AdmissionRecord> = (0..4).map(|i| record(i as u64 + 1, users[i], i != 1)).collect();
        let told = |i: usize, number| Admitted { user: users[i], number };
        assert!(judge_admissions(&in_order, &[told(0, 1), told(2, 3)]).passed());

        // Number 5 let in ahead of number 3; a fan told of an admission the log never made; a
        // skipped place is no admission either.
        let jumped = vec![
            in_order[0].clone(),
            in_order[1].clone(),
            record(5, users[4], true),
            in_order[2].clone(),
        ];
        let check = judge_admissions(&jumped, &[told(0, 1), told(3, 4), told(1, 2)]);
        assert_eq!(check.checked, 7);
        assert_eq!(
            check.violations,
            [
                format!(
                    "number 3 (user {}) was admitted at log entry 1003-0, after number 5 (user {}) was admitted at 1005-0",
                    users[2], users[4]
                ),
                format!(
                    "user {} was admitted with number 4, which the room's admission log does not record for them",
                    users[3]
                ),
                format!(
                    "user {} was admitted with number 2, which the room's admission log does not record for them",
                    users[1]
                ),
            ]
        );
    }

    #[test]
    fn the_markdown_summary_lists_failed_checks_with_their_first_violations() {
        let mut failed = Check::new(name::SEAT_COUNTS, SEAT_COUNTS);
        failed.checked = 10;
        failed.violations = (0..25).map(|i| format!("violation {i}")).collect();
        let report = Report {
            checks: vec![
                failed,
                Check::new(name::PREQUEUE_ORDER, PREQUEUE_ORDER).skip("no waiting-room Redis"),
            ],
        };
        assert!(!report.passed());
        let markdown = report.to_markdown();
        assert!(markdown.contains("| seat_counts | 10 | 25 | FAILED |"));
        assert!(markdown.contains("| prequeue_order | 0 | 0 | skipped: no waiting-room Redis |"));
        assert!(markdown.contains("- violation 19\n- ... and 5 more"));
        assert!(!markdown.contains("violation 20"));
    }
}
