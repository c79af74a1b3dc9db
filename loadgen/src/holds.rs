//! `loadgen holds`: the booking-pipeline benchmark.
//!
//! Drives one show the way an on-sale does, through the public API only: loadgen (unless given
//! `--show`) creates a venue of `--seats` seats, an event and a show already on sale whose
//! waiting room admits without limit; `--fans` fans log in, join the room and wait for their
//! admission; then they ask for holds (`POST /shows/{id}/holds?wait=10`), `--concurrency` at a
//! time, until each fan has made its `--holds-per-fan` requests or the show is sold out.
//!
//! The request mix: a `--hot-share` of requests asks for specific seats (1-4 neighbours in one of
//! the `--hot-rows` front rows, where everyone wants to sit, so most of them collide); the rest
//! asks for the best 1-4 seats available, some of them side by side (`adjacent`) and some in one
//! price tier. The mix is drawn from `--seed`, so two runs ask for the same things.
//!
//! Phases are timed separately; only the hold phase counts for holds/s, seats/s and requests/s.
//! Before its clock starts, one extra fan's warm-up hold makes the booking-worker take over the
//! show (load its seats, rebuild the snapshot), which is a one-off cost of the first command.
//!
//! The run ends with an audit straight from PostgreSQL (see [`Audit`]); a failed audit makes the
//! command fail after the result is written.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use common::ids::ShowId;
use futures::{StreamExt as _, stream};
use indicatif::MultiProgress;
use serde::Serialize;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

use crate::{
    baseline,
    fans::{self, Fan},
    report::{self, Latency, Summary, bar},
};

/// `loadgen holds` options.
#[derive(Debug, clap::Args)]
pub struct HoldsArgs {
    /// The API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// The admin account that creates the show (default: `.run/env`, then the environment).
    #[arg(long)]
    admin_email: Option<String>,
    /// Its password (default: `.run/env`, then the environment).
    #[arg(long)]
    admin_password: Option<String>,
    /// Use this show instead of creating one (its waiting room is opened wide for the run).
    #[arg(long)]
    show: Option<ShowId>,
    /// Seats of the venue loadgen creates.
    #[arg(long, default_value_t = 50_000)]
    seats: usize,
    /// Tickets one fan may hold in the show loadgen creates.
    #[arg(long, default_value_t = 6)]
    max_tickets_per_user: u32,
    /// Fans taking part.
    #[arg(long, default_value_t = 20_000)]
    fans: usize,
    /// Number of the first fan account (runs use disjoint ranges so their fans have no holds yet).
    #[arg(long, default_value_t = 0)]
    first_fan: usize,
    /// Hold requests in flight at once (also logins, joins and status polls).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Hold requests each fan makes, one after the other.
    #[arg(long, default_value_t = 2)]
    holds_per_fan: usize,
    /// Share of requests for specific seats in the hot rows.
    #[arg(long, default_value_t = 0.2)]
    hot_share: f64,
    /// How many front rows are hot.
    #[arg(long, default_value_t = 4)]
    hot_rows: usize,
    /// Share of best-available requests that want their seats side by side.
    #[arg(long, default_value_t = 0.3)]
    adjacent_share: f64,
    /// Share of best-available requests restricted to one price tier.
    #[arg(long, default_value_t = 0.1)]
    tier_share: f64,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `?wait=` of each hold request, seconds (at most 10).
    #[arg(long, default_value_t = 10)]
    wait: u64,
    /// Send no `Idempotency-Key` (by default each request has a fresh one, as a client would).
    #[arg(long)]
    no_idempotency_key: bool,
    /// Give up on fans not admitted after this many seconds.
    #[arg(long, default_value_t = 120)]
    admission_timeout: u64,
    /// The deployment's database (fans are seeded there; the audit reads it).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// The booking-worker's metrics, scraped before and after the hold phase.
    #[arg(long, default_value = "http://127.0.0.1:9102/metrics")]
    worker_metrics: String,
    /// A `loadgen baseline` result: report the pipeline's share of the machine's ceilings.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Where to write the JSON result.
    #[arg(long, default_value = "loadgen-holds.json")]
    out: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Settings from `.run/env`

/// A value from `.run/env` (written by `scripts/up` with `printf %q`), if the file has it.
pub fn run_env(key: &str) -> Option<String> {
    let text = std::fs::read_to_string(".run/env").ok()?;
    env_file_value(&text, key)
}

/// `key`'s value in an env file of `KEY=value` lines, undoing the shell quoting `printf %q`
/// produces for ordinary values (backslash escapes, single or double quotes).
fn env_file_value(text: &str, key: &str) -> Option<String> {
    let raw = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))?;
    let mut value = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.extend(chars.next()),
            '\'' => value.extend(chars.by_ref().take_while(|c| *c != '\'')),
            '"' => value.extend(chars.by_ref().take_while(|c| *c != '"')),
            c => value.push(c),
        }
    }
    Some(value)
}

/// The deployment's database URL: the flag or `DATABASE_URL`, then `.run/env`, then the default.
pub fn database_url(flag: Option<String>) -> String {
    flag.or_else(|| run_env("DATABASE_URL"))
        .unwrap_or_else(|| common::config::defaults::DATABASE_URL.to_owned())
}

// ---------------------------------------------------------------------------------------------
// The show

/// A row of the generated venue.
#[derive(Debug, Serialize)]
pub(crate) struct RowSpec {
    label: String,
    seats: usize,
    tier: &'static str,
}

/// A section of the generated venue.
#[derive(Debug, Serialize)]
pub(crate) struct SectionSpec {
    name: String,
    rows: Vec<RowSpec>,
}

/// Rows per generated section.
const ROWS_PER_SECTION: usize = 25;

/// Price of each tier of the generated venue, cents.
const TIER_PRICES: [(&str, i64); 3] = [("floor", 12_000), ("lower", 8_000), ("upper", 5_000)];

/// A venue of exactly `seats` seats within the API's limits (at most 1,000 seats a row, 500 rows
/// a section, 200 sections) and its 64 KiB body limit: rows of 100 seats (wider for very large
/// venues), 25 rows a section; the front fifth of the sections is `floor`, the next two fifths
/// `lower`, the rest `upper`.
pub(crate) fn venue_layout(seats: usize) -> Vec<SectionSpec> {
    let row_width = seats.div_ceil(1000).max(100);
    let rows = seats.div_ceil(row_width);
    let sections = rows.div_ceil(ROWS_PER_SECTION);
    let mut left = seats;
    (0..sections)
        .map(|section| {
            let tier = match section * 5 / sections.max(1) {
                0 => "floor",
                1 | 2 => "lower",
                _ => "upper",
            };
            let rows = (0..ROWS_PER_SECTION)
                .map_while(|row| {
                    let width = left.min(row_width);
                    left -= width;
                    (width > 0).then(|| RowSpec {
                        label: format!("R{}", row + 1),
                        seats: width,
                        tier,
                    })
                })
                .collect();
            SectionSpec {
                name: format!("S{}", section + 1),
                rows,
            }
        })
        .collect()
}

/// The price of every tier a layout uses.
fn tier_prices(layout: &[SectionSpec]) -> BTreeMap<&'static str, i64> {
    let tiers: std::collections::BTreeSet<&str> = layout.iter().flat_map(|s| &s.rows).map(|r| r.tier).collect();
    TIER_PRICES
        .iter()
        .filter(|(tier, _)| tiers.contains(tier))
        .copied()
        .collect()
}

/// An admin's authenticated calls.
pub(crate) struct AdminApi {
    client: reqwest::Client,
    api: String,
    token: String,
}

impl AdminApi {
    pub(crate) async fn login(
        client: &reqwest::Client,
        api: &str,
        email: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let (status, body) = send(client.post(format!("{api}/api/v1/auth/login")).json(&json!({
            "email": email, "password": password,
        })))
        .await?;
        let token = body["access_token"]
            .as_str()
            .with_context(|| format!("admin login as {email} failed with {status}: {body}"))?;
        Ok(Self {
            client: client.clone(),
            api: api.to_owned(),
            token: token.to_owned(),
        })
    }

    /// The admin of a benchmark run: `token` as it is, or else a login with `email` and
    /// `password`, each defaulting to `.run/env` (which `scripts/up` writes), then the
    /// environment (`FLOODGATE_ADMIN_EMAIL`, `FLOODGATE_ADMIN_PASSWORD`).
    pub(crate) async fn from_flags(
        client: &reqwest::Client,
        api: &str,
        token: Option<&str>,
        email: Option<&str>,
        password: Option<&str>,
    ) -> anyhow::Result<Self> {
        if let Some(token) = token {
            return Ok(Self::with_token(client, api, token));
        }
        let setting = |flag: Option<&str>, key: &str| {
            flag.map(str::to_owned)
                .or_else(|| run_env(key))
                .or_else(|| std::env::var(key).ok())
        };
        let (Some(email), Some(password)) = (
            setting(email, "FLOODGATE_ADMIN_EMAIL"),
            setting(password, "FLOODGATE_ADMIN_PASSWORD"),
        ) else {
            bail!("no admin account: pass --admin-email and --admin-password (or run where scripts/up wrote .run/env)");
        };
        Self::login(client, api, &email, &password).await
    }

    /// Calls made with a token the caller already has.
    pub(crate) fn with_token(client: &reqwest::Client, api: &str, token: &str) -> Self {
        Self {
            client: client.clone(),
            api: api.to_owned(),
            token: token.to_owned(),
        }
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let (status, answer) = send(
            self.client
                .request(method.clone(), format!("{}{path}", self.api))
                .bearer_auth(&self.token)
                .json(body),
        )
        .await?;
        if status != expect {
            bail!("{method} {path} answered {status}: {answer}");
        }
        Ok(answer)
    }
}

pub(crate) async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

pub(crate) fn rfc3339(at: OffsetDateTime) -> anyhow::Result<String> {
    Ok(at.format(&Rfc3339)?)
}

/// A generated venue of `seats` seats and an event, created through the admin API for a
/// benchmark run (`what` names them); returns their ids and the prices of the venue's tiers.
pub(crate) async fn venue_and_event(
    admin: &AdminApi,
    seats: usize,
    what: &str,
) -> anyhow::Result<(Value, Value, BTreeMap<&'static str, i64>)> {
    let tag = &Uuid::now_v7().simple().to_string()[..12];
    let layout = venue_layout(seats);
    let venue = admin
        .call(
            reqwest::Method::POST,
            "/api/v1/admin/venues",
            &json!({
                "name": format!("Loadgen Arena {tag}"),
                "city": "Loadgen", "address": "1 Benchmark Way", "timezone": "UTC",
                "sections": layout,
            }),
            201,
        )
        .await?;
    let event = admin
        .call(
            reqwest::Method::POST,
            "/api/v1/admin/events",
            &json!({
                "title": format!("Loadgen {what} {tag}"),
                "category": "benchmark", "city": "Loadgen",
                "description": format!("Created by loadgen {what}."),
            }),
            201,
        )
        .await?;
    Ok((
        venue["venue_id"].clone(),
        event["event_id"].clone(),
        tier_prices(&layout),
    ))
}

/// Creates a venue of `seats` seats, an event and a show that is on sale now (for a benchmark
/// that `what` names), its waiting room admitting `admit_per_second`.
pub(crate) async fn create_show_on_sale(
    admin: &AdminApi,
    seats: usize,
    max_tickets: u32,
    admit_per_second: u32,
    what: &str,
) -> anyhow::Result<ShowId> {
    let (venue_id, event_id, prices) = venue_and_event(admin, seats, what).await?;
    let now = OffsetDateTime::now_utc();
    // On sale since a few seconds, so the room opens at the controller's next tick; the show
    // starts in two hours, so the waiting-room controller stops counting its seats soon after
    // the run instead of for weeks.
    let show = admin
        .call(
            reqwest::Method::POST,
            "/api/v1/admin/shows",
            &json!({
                "event_id": event_id, "venue_id": venue_id,
                "starts_at": rfc3339(now + time::Duration::hours(2))?,
                "on_sale_at": rfc3339(now - time::Duration::seconds(5))?,
                "currency": "EUR", "prices": prices,
                "max_tickets_per_user": max_tickets,
                // Longer than any run: no hold lapses before the audit.
                "hold_seconds": 3600,
                "waiting_room": {
                    "admit_per_second": admit_per_second, "max_active": 1_000_000,
                    "prequeue_opens_at": rfc3339(now - time::Duration::minutes(1))?,
                },
            }),
            201,
        )
        .await?;
    show_id_of(&show)
}

/// The id in a `POST /admin/shows` answer.
pub(crate) fn show_id_of(show: &Value) -> anyhow::Result<ShowId> {
    show["show_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("the show answer has no show_id: {show}"))
}

// ---------------------------------------------------------------------------------------------
// The request mix

/// SplitMix64: a small, seedable generator, so the mix is the same from run to run.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant at these sizes).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64) < p
    }
}

/// One hold request.
#[derive(Debug, Clone, PartialEq)]
enum HoldRequest {
    /// These seats (neighbours in a hot row).
    Seats(Vec<Uuid>),
    /// The best available.
    Best {
        quantity: u32,
        tier: Option<String>,
        adjacent: bool,
    },
}

impl HoldRequest {
    fn body(&self) -> Value {
        match self {
            Self::Seats(seats) => json!({ "seat_ids": seats }),
            Self::Best {
                quantity,
                tier,
                adjacent,
            } => {
                let mut best = json!({ "quantity": quantity, "adjacent": adjacent });
                if let Some(tier) = tier {
                    best["tier"] = json!(tier);
                }
                json!({ "best_available": best })
            }
        }
    }

    fn is_hot(&self) -> bool {
        matches!(self, Self::Seats(_))
    }
}

/// How requests are drawn.
#[derive(Debug, Clone)]
struct Mix {
    hot_share: f64,
    adjacent_share: f64,
    tier_share: f64,
    /// Seats per request: 1 to this.
    max_quantity: u32,
}

/// The seats fans fight over: each hot row's seat ids in seat-number order.
pub(crate) type HotRows = Vec<Vec<Uuid>>;

/// Each fan's requests, in the order the fan makes them.
fn plan(mix: &Mix, hot: &HotRows, tiers: &[String], fans: usize, per_fan: usize, seed: u64) -> Vec<Vec<HoldRequest>> {
    let mut rng = SplitMix64(seed);
    let max_quantity = mix.max_quantity.max(1) as usize;
    let mut draw = move || {
        let quantity = 1 + rng.below(max_quantity);
        if !hot.is_empty() && rng.chance(mix.hot_share) {
            let row = &hot[rng.below(hot.len())];
            let quantity = quantity.min(row.len());
            let start = rng.below(row.len() - quantity + 1);
            return HoldRequest::Seats(row[start..start + quantity].to_vec());
        }
        let adjacent = quantity > 1 && rng.chance(mix.adjacent_share);
        let tier = (!tiers.is_empty() && rng.chance(mix.tier_share)).then(|| tiers[rng.below(tiers.len())].clone());
        HoldRequest::Best {
            quantity: quantity as u32,
            tier,
            adjacent,
        }
    };
    (0..fans).map(|_| (0..per_fan).map(|_| draw()).collect()).collect()
}

/// A seat of the show's map (`GET /shows/{id}/seats`), as far as loadgen cares.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct MapSeat {
    seat_id: Uuid,
    index: i64,
    section: String,
    row: String,
    number: i64,
    tier: String,
}

/// The first `count` rows in layout order (seat indexes are dense in layout order, front first).
pub(crate) fn hot_rows(seats: &[MapSeat], count: usize) -> HotRows {
    let mut ordered: Vec<&MapSeat> = seats.iter().collect();
    ordered.sort_by_key(|seat| seat.index);
    let mut rows: Vec<((&str, &str), Vec<&MapSeat>)> = Vec::new();
    for seat in ordered {
        let key = (seat.section.as_str(), seat.row.as_str());
        if let Some((_, row)) = rows.iter_mut().find(|(row, _)| *row == key) {
            row.push(seat);
        } else if rows.len() < count {
            rows.push((key, vec![seat]));
        }
    }
    rows.into_iter()
        .map(|(_, mut row)| {
            row.sort_by_key(|seat| seat.number);
            row.into_iter().map(|seat| seat.seat_id).collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Waiting room

/// What the waiting-room phase measured.
#[derive(Debug, Serialize)]
struct AdmissionReport {
    /// Fans that joined (the warm-up fan included).
    joined: usize,
    join_seconds: f64,
    joins_per_second: f64,
    join_latency: Summary,
    /// Fans holding an admission token.
    admitted: usize,
    /// From the first join to the last fan seen admitted.
    admission_seconds: f64,
    /// From a fan's join answer to loadgen seeing it admitted. Loadgen polls the waiting fans
    /// (every 250 ms) only once all have joined, so this is an upper bound that includes the
    /// rest of the join phase, not the controller's admission lag.
    join_to_admitted: Summary,
    /// Status polls made.
    polls: u64,
    /// Joins or polls that failed (transport errors, 4xx/5xx).
    errors: u64,
}

/// A fan's room state from a queue answer: the admission token once admitted.
fn admission_token(body: &Value) -> Option<String> {
    (body["state"] == "admitted")
        .then(|| body["admission_token"].as_str().map(str::to_owned))
        .flatten()
}

/// Joins the room until it is open (the controller opens it at its first tick after creation).
pub(crate) async fn wait_until_open(client: &reqwest::Client, url: &str, fan: &Fan) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let (status, body) = send(client.post(url).bearer_auth(&fan.access_token)).await?;
        if matches!(status, 200 | 201) && body["state"] != "closed" {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the show's waiting room is not open after 30 s: {status} {body}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Joins every fan to the room and polls until each is admitted; returns the tokens.
async fn admit(
    client: &reqwest::Client,
    api: &str,
    show: ShowId,
    fans: &[Fan],
    concurrency: usize,
    timeout: Duration,
    progress: &MultiProgress,
) -> anyhow::Result<(Vec<Option<String>>, AdmissionReport)> {
    let url = Arc::new(format!("{api}/api/v1/shows/{show}/queue"));
    wait_until_open(client, &url, &fans[0]).await?;
    let joining = progress.add(bar(fans.len(), "join"));
    let admitted_bar = progress.add(bar(fans.len(), "admitted"));
    let errors = AtomicU64::new(0);
    let started = Instant::now();
    let joins: Vec<(Option<String>, Duration, Instant)> = stream::iter(fans)
        .map(|fan| {
            let client = client.clone();
            let url = Arc::clone(&url);
            let errors = &errors;
            async move {
                let begun = Instant::now();
                let token = match send(client.post(url.as_str()).bearer_auth(&fan.access_token)).await {
                    Ok((200 | 201, body)) => admission_token(&body),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                };
                (token, begun.elapsed(), Instant::now())
            }
        })
        .buffered(concurrency)
        .inspect(|(token, _, _)| {
            joining.inc(1);
            if token.is_some() {
                admitted_bar.inc(1);
            }
        })
        .collect()
        .await;
    let join_seconds = started.elapsed().as_secs_f64();
    joining.finish();
    let mut join_latency = Latency::default();
    let mut join_to_admitted = Latency::default();
    let mut tokens = Vec::with_capacity(fans.len());
    let mut joined_at = Vec::with_capacity(fans.len());
    let mut last_admitted = started;
    for (token, elapsed, at) in joins {
        join_latency.record(elapsed);
        if token.is_some() {
            join_to_admitted.record(Duration::ZERO);
            last_admitted = last_admitted.max(at);
        }
        tokens.push(token);
        joined_at.push(at);
    }
    let joined = fans.len() - errors.load(Ordering::Relaxed) as usize;

    // Poll the fans still waiting, all of them once per round, until each has its token.
    let mut polls = 0_u64;
    loop {
        let waiting: Vec<usize> = (0..fans.len()).filter(|i| tokens[*i].is_none()).collect();
        if waiting.is_empty() || started.elapsed() > timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        polls += waiting.len() as u64;
        let answers: Vec<(usize, Option<String>, Instant)> = stream::iter(waiting)
            .map(|i| {
                let client = client.clone();
                let url = Arc::clone(&url);
                let errors = &errors;
                async move {
                    let token = match send(client.get(url.as_str()).bearer_auth(&fans[i].access_token)).await {
                        Ok((200, body)) => admission_token(&body),
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    };
                    (i, token, Instant::now())
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (i, token, at) in answers {
            if token.is_some() {
                admitted_bar.inc(1);
                join_to_admitted.record(at.saturating_duration_since(joined_at[i]));
                last_admitted = last_admitted.max(at);
                tokens[i] = token;
            }
        }
    }
    admitted_bar.finish();
    let admitted = tokens.iter().filter(|token| token.is_some()).count();
    let report = AdmissionReport {
        joined,
        join_seconds,
        joins_per_second: joined as f64 / join_seconds,
        join_latency: join_latency.summary(),
        admitted,
        admission_seconds: last_admitted.saturating_duration_since(started).as_secs_f64(),
        join_to_admitted: join_to_admitted.summary(),
        polls,
        errors: errors.load(Ordering::Relaxed),
    };
    Ok((tokens, report))
}

// ---------------------------------------------------------------------------------------------
// Hold phase

/// How one hold request ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// 201.
    Held { booking_id: Option<Uuid>, seats: u64 },
    /// 409 with this problem `code`.
    Conflict(String),
    /// 202: the wait ran out before the result.
    Queued,
    /// Any other status.
    Status(u16),
    /// No HTTP answer.
    Error,
}

fn outcome(status: u16, body: &Value) -> Outcome {
    match status {
        201 => Outcome::Held {
            booking_id: body["booking_id"].as_str().and_then(|id| id.parse().ok()),
            seats: body["seats"].as_array().map_or(0, |seats| seats.len() as u64),
        },
        409 => Outcome::Conflict(body["code"].as_str().unwrap_or("unknown").to_owned()),
        202 => Outcome::Queued,
        status => Outcome::Status(status),
    }
}

/// One answered request.
struct Answer {
    outcome: Outcome,
    elapsed: Duration,
    hot: bool,
}

/// Everything the hold phase counts.
#[derive(Default)]
struct HoldStats {
    latency: Latency,
    held_latency: Latency,
    conflict_latency: Latency,
    held: u64,
    seats: u64,
    hot_requests: u64,
    hot_held: u64,
    conflicts: BTreeMap<String, u64>,
    statuses: BTreeMap<String, u64>,
    timed_out: u64,
    errors: u64,
    skipped_sold_out: u64,
    booking_ids: Vec<Uuid>,
}

impl HoldStats {
    fn add(&mut self, answer: Answer) {
        if answer.hot {
            self.hot_requests += 1;
        }
        if answer.outcome != Outcome::Error {
            self.latency.record(answer.elapsed);
        }
        match answer.outcome {
            Outcome::Held { booking_id, seats } => {
                self.held += 1;
                self.seats += seats;
                if answer.hot {
                    self.hot_held += 1;
                }
                self.held_latency.record(answer.elapsed);
                self.booking_ids.extend(booking_id);
            }
            Outcome::Conflict(code) => {
                self.conflict_latency.record(answer.elapsed);
                *self.conflicts.entry(code).or_default() += 1;
            }
            Outcome::Queued => self.timed_out += 1,
            Outcome::Status(status) => *self.statuses.entry(status.to_string()).or_default() += 1,
            Outcome::Error => self.errors += 1,
        }
    }
}

/// One admitted fan, ready to ask for holds.
struct Shopper {
    access_token: String,
    admission_token: String,
    requests: Vec<HoldRequest>,
}

/// Sends one hold request and waits for its result.
async fn hold(
    client: &reqwest::Client,
    url: &str,
    shopper: &Shopper,
    request: &HoldRequest,
    idempotency_key: bool,
) -> Answer {
    let mut call = client
        .post(url)
        .bearer_auth(&shopper.access_token)
        .header("admission-token", &shopper.admission_token)
        .json(&request.body());
    if idempotency_key {
        call = call.header("idempotency-key", Uuid::new_v4().to_string());
    }
    let begun = Instant::now();
    let outcome = match send(call).await {
        Ok((status, body)) => outcome(status, &body),
        Err(err) => {
            tracing::debug!(error = %err, "hold request failed");
            Outcome::Error
        }
    };
    Answer {
        outcome,
        elapsed: begun.elapsed(),
        hot: request.is_hot(),
    }
}

/// Watches the show's availability (the Redis snapshot, as fans see it): moves the seat bar and
/// says when the show is sold out.
fn watch_availability(
    client: reqwest::Client,
    url: String,
    seats_bar: indicatif::ProgressBar,
    sold_out: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok((200, body)) = send(client.get(&url)).await {
                let taken = body["counts"]["held"].as_u64().unwrap_or(0) + body["counts"]["sold"].as_u64().unwrap_or(0);
                seats_bar.set_position(taken);
                if body["counts"]["available"].as_u64() == Some(0) {
                    sold_out.store(true, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Booking-worker metrics

/// Sums of a Prometheus histogram family over all its label sets: `_sum`, `_count` and the
/// cumulative buckets by upper bound.
#[derive(Debug, Clone, Default, PartialEq)]
struct HistogramSums {
    sum: f64,
    count: f64,
    /// (le, cumulative count), ascending by le.
    buckets: Vec<(f64, f64)>,
}

/// Reads histogram `name` out of a Prometheus text exposition.
fn histogram(text: &str, name: &str) -> HistogramSums {
    let mut sums = HistogramSums::default();
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
        match metric.strip_prefix(name) {
            Some("_sum") => sums.sum += value,
            Some("_count") => sums.count += value,
            Some("_bucket") => {
                let le = labels
                    .split(',')
                    .find_map(|label| label.trim().strip_prefix("le=\""))
                    .and_then(|le| le.trim_end_matches(['"', '}']).parse::<f64>().ok());
                if let Some(le) = le {
                    buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += value;
                }
            }
            _ => {}
        }
    }
    sums.buckets = buckets.into_values().collect();
    sums.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    sums
}

/// What a histogram gained between two scrapes.
fn delta(before: &HistogramSums, after: &HistogramSums) -> HistogramSums {
    HistogramSums {
        sum: after.sum - before.sum,
        count: after.count - before.count,
        buckets: after
            .buckets
            .iter()
            .map(|(le, count)| {
                let earlier = before.buckets.iter().find(|(b, _)| b == le).map_or(0.0, |(_, c)| *c);
                (*le, count - earlier)
            })
            .collect(),
    }
}

/// A histogram's gain, summarised.
#[derive(Debug, Serialize, PartialEq)]
struct Distribution {
    count: u64,
    mean: f64,
    /// Upper bound of the bucket holding the median (a bucketed estimate).
    p50_at_most: f64,
    /// Upper bound of the bucket holding the 99th percentile.
    p99_at_most: f64,
}

fn distribution(gain: &HistogramSums) -> Distribution {
    let quantile = |q: f64| {
        let target = gain.count * q;
        gain.buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= target && *cumulative > 0.0)
            .map_or(f64::INFINITY, |(le, _)| *le)
    };
    Distribution {
        count: gain.count.max(0.0) as u64,
        mean: if gain.count > 0.0 { gain.sum / gain.count } else { 0.0 },
        p50_at_most: quantile(0.5),
        p99_at_most: quantile(0.99),
    }
}

/// The booking-worker's histograms this benchmark explains its figures with.
const WORKER_HISTOGRAMS: [&str; 4] = [
    "floodgate_booking_batch_size_commands",
    "floodgate_booking_batch_seconds",
    "floodgate_booking_hold_latency_seconds",
    "floodgate_booking_queue_wait_seconds",
];

async fn scrape(client: &reqwest::Client, url: &str) -> Option<String> {
    let response = client.get(url).timeout(Duration::from_secs(5)).send().await.ok()?;
    response.error_for_status().ok()?.text().await.ok()
}

fn worker_report(before: Option<&str>, after: Option<&str>) -> Option<BTreeMap<&'static str, Distribution>> {
    let (before, after) = (before?, after?);
    Some(
        WORKER_HISTOGRAMS
            .iter()
            .map(|name| {
                let gain = delta(&histogram(before, name), &histogram(after, name));
                (name.trim_start_matches("floodgate_booking_"), distribution(&gain))
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Audit

/// What the audit reads from PostgreSQL.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AuditFacts {
    /// Seats with more than one live booking (held, payment_pending or confirmed): must be 0.
    pub seats_in_two_live_bookings: i64,
    /// `show.capacity`.
    pub capacity: i64,
    /// `show.sold_count`.
    pub sold_count: i64,
    /// show_seat rows by status.
    pub available: i64,
    /// Held seats.
    pub held: i64,
    /// Sold seats.
    pub sold: i64,
    /// Blocked seats.
    pub blocked: i64,
    /// Rows with any other status (the schema forbids them).
    pub other: i64,
    /// Live booking_seat rows of live bookings: the seats bookings say they hold or bought.
    pub live_booking_seats: i64,
    /// Bookings loadgen was told about (201) that the database has as held.
    pub answered_bookings_held: i64,
    /// Seats of those bookings still attached to them.
    pub answered_booking_seats: i64,
}

/// The audit's verdict: every check that failed, in words.
#[derive(Debug, Serialize, PartialEq)]
pub struct AuditVerdict {
    /// No failure.
    pub passed: bool,
    /// What failed.
    pub failures: Vec<String>,
}

/// Judges the facts against what the API answered: `held_answers` 201s naming
/// `held_answer_seats` seats.
pub fn evaluate(facts: &AuditFacts, held_answers: u64, held_answer_seats: u64) -> AuditVerdict {
    let mut failures = Vec::new();
    if facts.seats_in_two_live_bookings != 0 {
        failures.push(format!(
            "{} seats are in two live bookings at once",
            facts.seats_in_two_live_bookings
        ));
    }
    if facts.other != 0 {
        failures.push(format!("{} seats have an unknown status", facts.other));
    }
    let accounted = facts.available + facts.held + facts.sold + facts.blocked;
    if accounted != facts.capacity {
        failures.push(format!(
            "available {} + held {} + sold {} + blocked {} = {accounted}, but the capacity is {}",
            facts.available, facts.held, facts.sold, facts.blocked, facts.capacity
        ));
    }
    if facts.sold != facts.sold_count {
        failures.push(format!(
            "{} seats are sold but show.sold_count says {}",
            facts.sold, facts.sold_count
        ));
    }
    if facts.held + facts.sold != facts.live_booking_seats {
        failures.push(format!(
            "{} seats are held or sold but live bookings hold {} seats",
            facts.held + facts.sold,
            facts.live_booking_seats
        ));
    }
    if u64::try_from(facts.answered_bookings_held).ok() != Some(held_answers) {
        failures.push(format!(
            "the API answered {held_answers} holds (201) but {} of those bookings are held in the database",
            facts.answered_bookings_held
        ));
    }
    if u64::try_from(facts.answered_booking_seats).ok() != Some(held_answer_seats) {
        failures.push(format!(
            "the API answered {held_answer_seats} held seats but those bookings hold {} seats",
            facts.answered_booking_seats
        ));
    }
    AuditVerdict {
        passed: failures.is_empty(),
        failures,
    }
}

/// Reads the audit's facts for `show`; `answered` are the bookings the API said it held.
async fn audit_facts(database_url: &str, show: ShowId, answered: &[Uuid]) -> anyhow::Result<AuditFacts> {
    use sqlx::Row as _;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await?;
    // One snapshot, so the counts agree with each other even if a writer is still busy.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let seats_in_two_live_bookings: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT bs.seat_id
             FROM booking_seat bs JOIN booking b ON b.booking_id = bs.booking_id
             WHERE bs.show_id = $1 AND bs.released_at IS NULL
               AND b.status IN ('held', 'payment_pending', 'confirmed')
             GROUP BY bs.seat_id HAVING count(*) > 1) AS doubled",
    )
    .bind(show)
    .fetch_one(&mut *tx)
    .await?;
    let counts = sqlx::query(
        "SELECT s.capacity::bigint AS capacity, s.sold_count::bigint AS sold_count,
                count(ss.seat_id) FILTER (WHERE ss.status = 'available') AS available,
                count(ss.seat_id) FILTER (WHERE ss.status = 'held') AS held,
                count(ss.seat_id) FILTER (WHERE ss.status = 'sold') AS sold,
                count(ss.seat_id) FILTER (WHERE ss.status = 'blocked') AS blocked,
                count(ss.seat_id) FILTER (WHERE ss.status NOT IN ('available', 'held', 'sold', 'blocked')) AS other
         FROM show s LEFT JOIN show_seat ss ON ss.show_id = s.show_id
         WHERE s.show_id = $1
         GROUP BY s.capacity, s.sold_count",
    )
    .bind(show)
    .fetch_one(&mut *tx)
    .await?;
    let live_booking_seats: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM booking_seat bs JOIN booking b ON b.booking_id = bs.booking_id
         WHERE bs.show_id = $1 AND bs.released_at IS NULL
           AND b.status IN ('held', 'payment_pending', 'confirmed')",
    )
    .bind(show)
    .fetch_one(&mut *tx)
    .await?;
    let answered_bookings_held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM booking WHERE booking_id = ANY($1) AND status = 'held'")
            .bind(answered)
            .fetch_one(&mut *tx)
            .await?;
    let answered_booking_seats: i64 =
        sqlx::query_scalar("SELECT count(*) FROM booking_seat WHERE booking_id = ANY($1) AND released_at IS NULL")
            .bind(answered)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    pool.close().await;
    Ok(AuditFacts {
        seats_in_two_live_bookings,
        capacity: counts.try_get("capacity")?,
        sold_count: counts.try_get("sold_count")?,
        available: counts.try_get("available")?,
        held: counts.try_get("held")?,
        sold: counts.try_get("sold")?,
        blocked: counts.try_get("blocked")?,
        other: counts.try_get("other")?,
        live_booking_seats,
        answered_bookings_held,
        answered_booking_seats,
    })
}

// ---------------------------------------------------------------------------------------------
// The run

/// The hold phase's figures.
#[derive(Debug, Serialize)]
struct HoldPhase {
    seconds: f64,
    requests: u64,
    requests_per_second: f64,
    holds: u64,
    holds_per_second: f64,
    seats: u64,
    seats_per_second: f64,
    /// From sending the request to its answer (201, 409, 202, ...).
    latency: Summary,
    latency_held: Summary,
    latency_conflict: Summary,
    /// 409s by problem code.
    conflicts: BTreeMap<String, u64>,
    /// Requests for specific hot seats, and how many of them got their seats.
    hot_requests: u64,
    hot_held: u64,
    /// 202: the `?wait=` ran out.
    timed_out: u64,
    /// Other statuses.
    statuses: BTreeMap<String, u64>,
    /// No HTTP answer.
    errors: u64,
    /// Requests not made because the show was sold out.
    skipped_sold_out: u64,
    sold_out: bool,
}

/// The JSON result of `loadgen holds`.
#[derive(Debug, Serialize)]
struct HoldsResult {
    show_id: ShowId,
    show_created: bool,
    capacity: i64,
    fans: usize,
    first_fan: usize,
    concurrency: usize,
    holds_per_fan: usize,
    hot_share: f64,
    setup_seconds: f64,
    login_seconds: f64,
    waiting_room: AdmissionReport,
    warm_up_seconds: f64,
    hold_phase: HoldPhase,
    /// Convenience copies of the headline figures (what `loadgen baseline --compare` reads).
    holds_per_second: f64,
    seats_per_second: f64,
    /// CPU used during the hold phase by command name, in cores (2.0 = both cores of a
    /// 2-core machine).
    cpu_cores_during_holds: BTreeMap<String, f64>,
    /// The booking-worker's histograms over the hold phase (`None` if not scraped).
    booking_worker: Option<BTreeMap<&'static str, Distribution>>,
    audit: AuditFacts,
    audit_verdict: AuditVerdict,
    ratio: Option<baseline::Ratio>,
}

/// Runs the benchmark and writes the result; fails if the audit does.
pub async fn run(args: HoldsArgs) -> anyhow::Result<()> {
    if args.fans == 0 || args.concurrency == 0 {
        bail!("--fans and --concurrency must be at least 1");
    }
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    tracing::debug!(open_files = limit, "file descriptor limit");
    let database_url = database_url(args.database_url.clone());
    let api = args.api.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency + 8)
        .timeout(Duration::from_secs(60))
        .build()?;

    // Setup: the show.
    let started = Instant::now();
    let admin = AdminApi::from_flags(
        &client,
        &api,
        None,
        args.admin_email.as_deref(),
        args.admin_password.as_deref(),
    )
    .await?;
    let (show, show_created) = match args.show {
        Some(show) => {
            admin
                .call(
                    reqwest::Method::PATCH,
                    &format!("/api/v1/admin/shows/{show}/waiting-room"),
                    &json!({"admit_per_second": 100_000, "max_active": 1_000_000, "paused": false}),
                    200,
                )
                .await?;
            (show, false)
        }
        None => {
            let show =
                create_show_on_sale(&admin, args.seats, args.max_tickets_per_user, 100_000, "hold benchmark").await?;
            (show, true)
        }
    };
    tracing::info!(%show, created = show_created, "show");
    let show_info = admin
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/shows/{show}"),
            &Value::Null,
            200,
        )
        .await?;
    let capacity = show_info["capacity"].as_i64().unwrap_or(0);
    let max_tickets = show_info["max_tickets_per_user"].as_u64().unwrap_or(4) as u32;
    let (status, map) = send(client.get(format!("{api}/api/v1/shows/{show}/seats"))).await?;
    if status != 200 {
        bail!("GET /shows/{show}/seats answered {status}");
    }
    let seats: Vec<MapSeat> = serde_json::from_value(map["seats"].clone()).context("unexpected seat map")?;
    let hot = hot_rows(&seats, args.hot_rows);
    let mut tiers: Vec<String> = seats.iter().map(|seat| seat.tier.clone()).collect();
    tiers.sort();
    tiers.dedup();
    drop(seats);
    let mix = Mix {
        hot_share: args.hot_share,
        adjacent_share: args.adjacent_share,
        tier_share: args.tier_share,
        max_quantity: max_tickets.min(4),
    };
    let plans = plan(&mix, &hot, &tiers, args.fans, args.holds_per_fan, args.seed);
    let setup_seconds = started.elapsed().as_secs_f64();

    // Fans (plus one for the warm-up), logged in.
    let started = Instant::now();
    fans::ensure_accounts(&database_url, args.first_fan, args.fans + 1).await?;
    let progress = MultiProgress::new();
    let login = progress.add(bar(args.fans + 1, "login"));
    let mut fans = fans::log_in(&client, &api, args.first_fan, args.fans + 1, args.concurrency, &login).await?;
    login.finish();
    let login_seconds = started.elapsed().as_secs_f64();
    let Some(warm_up_fan) = fans.pop() else {
        bail!("no fans logged in");
    };
    fans.insert(0, warm_up_fan);

    // Waiting room: everyone joins and waits for admission (the warm-up fan first).
    let (tokens, waiting_room) = admit(
        &client,
        &api,
        show,
        &fans,
        args.concurrency,
        Duration::from_secs(args.admission_timeout),
        &progress,
    )
    .await?;
    let mut admitted = fans.into_iter().zip(tokens).map(|(fan, token)| {
        token.map(|admission_token| Shopper {
            access_token: fan.access_token,
            admission_token,
            requests: Vec::new(),
        })
    });
    let warm_up = admitted
        .next()
        .flatten()
        .with_context(|| format!("the warm-up fan was not admitted: {waiting_room:?}"))?;
    let shoppers: Vec<Shopper> = admitted
        .zip(plans)
        .filter_map(|(shopper, requests)| Some(Shopper { requests, ..shopper? }))
        .collect();
    if shoppers.is_empty() {
        bail!("no fan was admitted: {waiting_room:?}");
    }
    let hold_url = format!("{api}/api/v1/shows/{show}/holds?wait={}", args.wait.min(10));

    // Warm-up: the first command makes the booking-worker take the show over.
    let started = Instant::now();
    loop {
        let answer = hold(
            &client,
            &hold_url,
            &warm_up,
            &HoldRequest::Best {
                quantity: 1,
                tier: None,
                adjacent: false,
            },
            true,
        )
        .await;
        if matches!(answer.outcome, Outcome::Held { .. } | Outcome::Conflict(_)) {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the warm-up hold got no result within 60 s: {:?}", answer.outcome);
        }
    }
    let warm_up_seconds = started.elapsed().as_secs_f64();

    // The hold phase.
    let total: usize = shoppers.iter().map(|shopper| shopper.requests.len()).sum();
    let requests_bar = progress.add(bar(total, "holds"));
    let seats_bar = progress.add(bar(usize::try_from(capacity).unwrap_or(0), "seats"));
    let sold_out = Arc::new(AtomicBool::new(false));
    let watcher = watch_availability(
        client.clone(),
        format!("{api}/api/v1/shows/{show}/availability"),
        seats_bar.clone(),
        Arc::clone(&sold_out),
    );
    let stats = Mutex::new(HoldStats::default());
    let worker_before = scrape(&client, &args.worker_metrics).await;
    let cpu_before = report::cpu_seconds_by_command();
    let idempotency_key = !args.no_idempotency_key;
    let started = Instant::now();
    stream::iter(&shoppers)
        .for_each_concurrent(args.concurrency, |shopper| {
            let (client, url, stats, sold_out, requests_bar) = (&client, &hold_url, &stats, &sold_out, &requests_bar);
            async move {
                for request in &shopper.requests {
                    if sold_out.load(Ordering::Relaxed) {
                        stats.lock().expect("not poisoned").skipped_sold_out += 1;
                    } else {
                        let answer = hold(client, url, shopper, request, idempotency_key).await;
                        stats.lock().expect("not poisoned").add(answer);
                    }
                    requests_bar.inc(1);
                }
            }
        })
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = report::cpu_seconds_by_command();
    let worker_after = scrape(&client, &args.worker_metrics).await;
    requests_bar.finish();
    // One last look at the availability before the bar stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    watcher.abort();
    seats_bar.finish();

    let stats = stats.into_inner().expect("not poisoned");
    let requests = stats.latency.summary().count + stats.errors;
    let hold_phase = HoldPhase {
        seconds,
        requests,
        requests_per_second: requests as f64 / seconds,
        holds: stats.held,
        holds_per_second: stats.held as f64 / seconds,
        seats: stats.seats,
        seats_per_second: stats.seats as f64 / seconds,
        latency: stats.latency.summary(),
        latency_held: stats.held_latency.summary(),
        latency_conflict: stats.conflict_latency.summary(),
        conflicts: stats.conflicts.clone(),
        hot_requests: stats.hot_requests,
        hot_held: stats.hot_held,
        timed_out: stats.timed_out,
        statuses: stats.statuses.clone(),
        errors: stats.errors,
        skipped_sold_out: stats.skipped_sold_out,
        sold_out: sold_out.load(Ordering::Relaxed),
    };

    // Audit. Holds answered 202 may still land: give the writer a moment to drain first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let audit = audit_facts(&database_url, show, &stats.booking_ids).await?;
    let audit_verdict = evaluate(&audit, stats.held, stats.seats);

    let ratio = match &args.baseline {
        Some(path) => Some(baseline::ratio_from_files(
            path,
            hold_phase.holds_per_second,
            hold_phase.seats_per_second,
        )?),
        None => None,
    };
    let result = HoldsResult {
        show_id: show,
        show_created,
        capacity,
        fans: args.fans,
        first_fan: args.first_fan,
        concurrency: args.concurrency,
        holds_per_fan: args.holds_per_fan,
        hot_share: args.hot_share,
        setup_seconds,
        login_seconds,
        waiting_room,
        warm_up_seconds,
        holds_per_second: hold_phase.holds_per_second,
        seats_per_second: hold_phase.seats_per_second,
        hold_phase,
        cpu_cores_during_holds: report::cpu_shares(&cpu_before, &cpu_after, seconds),
        booking_worker: worker_report(worker_before.as_deref(), worker_after.as_deref()),
        audit,
        audit_verdict,
        ratio,
    };
    let json = serde_json::to_string_pretty(&result)?;
    std::fs::write(&args.out, &json).with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{json}");
    let phase = &result.hold_phase;
    println!(
        "\nholds: {:.0} holds/s, {:.0} seats/s, {:.0} requests/s over {:.1} s; latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms; conflicts {:?}",
        phase.holds_per_second,
        phase.seats_per_second,
        phase.requests_per_second,
        phase.seconds,
        phase.latency.p50_ms,
        phase.latency.p95_ms,
        phase.latency.p99_ms,
        phase.conflicts,
    );
    if result.audit_verdict.passed {
        println!("audit: passed");
        Ok(())
    } else {
        println!("audit: FAILED");
        for failure in &result.audit_verdict.failures {
            println!("  - {failure}");
        }
        bail!("the audit failed: {}", result.audit_verdict.failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> AuditFacts {
        AuditFacts {
            seats_in_two_live_bookings: 0,
            capacity: 100,
            sold_count: 5,
            available: 60,
            held: 30,
            sold: 5,
            blocked: 5,
            other: 0,
            live_booking_seats: 35,
            answered_bookings_held: 10,
            answered_booking_seats: 25,
        }
    }

    #[test]
    fn a_consistent_show_passes_the_audit() {
        assert_eq!(
            evaluate(&facts(), 10, 25),
            AuditVerdict {
                passed: true,
                failures: vec![]
            }
        );
    }

    #[test]
    fn a_seat_in_two_live_bookings_fails_the_audit() {
        let verdict = evaluate(
            &AuditFacts {
                seats_in_two_live_bookings: 1,
                ..facts()
            },
            10,
            25,
        );
        assert!(!verdict.passed);
        assert!(verdict.failures[0].contains("two live bookings"), "{verdict:?}");
    }

    #[test]
    fn seats_that_do_not_add_up_to_the_capacity_fail_the_audit() {
        let verdict = evaluate(
            &AuditFacts {
                available: 59,
                ..facts()
            },
            10,
            25,
        );
        assert_eq!(verdict.failures.len(), 1, "{verdict:?}");
        assert!(verdict.failures[0].contains("capacity is 100"));
    }

    #[test]
    fn a_201_the_database_does_not_have_fails_the_audit() {
        let verdict = evaluate(&facts(), 11, 27);
        assert_eq!(verdict.failures.len(), 2, "{verdict:?}");
    }

    #[test]
    fn held_seats_without_a_live_booking_fail_the_audit() {
        let verdict = evaluate(
            &AuditFacts {
                live_booking_seats: 34,
                ..facts()
            },
            10,
            25,
        );
        assert!(!verdict.passed);
    }

    fn map(rows: &[(&str, &str, usize)]) -> Vec<MapSeat> {
        let mut seats = Vec::new();
        for (section, row, count) in rows {
            for number in 1..=*count {
                seats.push(MapSeat {
                    seat_id: Uuid::new_v4(),
                    index: seats.len() as i64,
                    section: (*section).to_owned(),
                    row: (*row).to_owned(),
                    number: number as i64,
                    tier: "floor".to_owned(),
                });
            }
        }
        // The API's order is not the layout's.
        seats.reverse();
        seats
    }

    #[test]
    fn hot_rows_are_the_front_rows_in_seat_order() {
        let seats = map(&[("S1", "R1", 5), ("S1", "R2", 5), ("S2", "R1", 5)]);
        let hot = hot_rows(&seats, 2);
        assert_eq!(hot.len(), 2);
        let by_id = |id: &Uuid| seats.iter().find(|seat| seat.seat_id == *id).expect("known seat");
        assert!(
            hot[0]
                .iter()
                .all(|id| by_id(id).section == "S1" && by_id(id).row == "R1")
        );
        assert!(hot[1].iter().all(|id| by_id(id).row == "R2"));
        let numbers: Vec<i64> = hot[0].iter().map(|id| by_id(id).number).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn the_mix_has_the_asked_shares_and_hot_requests_are_neighbours_in_one_hot_row() {
        let seats = map(&[("S1", "R1", 10), ("S1", "R2", 10), ("S1", "R3", 10)]);
        let hot = hot_rows(&seats, 2);
        let mix = Mix {
            hot_share: 0.2,
            adjacent_share: 0.3,
            tier_share: 0.1,
            max_quantity: 4,
        };
        let plans = plan(&mix, &hot, &["floor".to_owned()], 5_000, 2, 7);
        assert_eq!(plans.len(), 5_000);
        let requests: Vec<&HoldRequest> = plans.iter().flatten().collect();
        assert_eq!(requests.len(), 10_000);
        let hot_count = requests.iter().filter(|request| request.is_hot()).count();
        assert!((1_800..2_200).contains(&hot_count), "{hot_count} hot requests");
        for request in &requests {
            match request {
                HoldRequest::Seats(ids) => {
                    assert!((1..=4).contains(&ids.len()));
                    let row = hot.iter().find(|row| row.contains(&ids[0])).expect("a hot row");
                    let start = row.iter().position(|id| *id == ids[0]).expect("in the row");
                    assert_eq!(&row[start..start + ids.len()], ids.as_slice(), "neighbours in order");
                }
                HoldRequest::Best { quantity, adjacent, .. } => {
                    assert!((1..=4).contains(quantity));
                    assert!(!adjacent || *quantity > 1);
                }
            }
        }
        let adjacent = requests
            .iter()
            .filter(|request| matches!(request, HoldRequest::Best { adjacent: true, .. }))
            .count();
        assert!(adjacent > 1_000, "{adjacent} adjacent requests");
        // Same seed, same mix.
        assert_eq!(plan(&mix, &hot, &[], 10, 2, 7)[3], plan(&mix, &hot, &[], 10, 2, 7)[3]);
    }

    #[test]
    fn request_bodies_match_the_api() {
        let body = HoldRequest::Best {
            quantity: 2,
            tier: Some("floor".to_owned()),
            adjacent: true,
        }
        .body();
        assert_eq!(
            body,
            json!({"best_available": {"quantity": 2, "adjacent": true, "tier": "floor"}})
        );
        let seat = Uuid::nil();
        assert_eq!(HoldRequest::Seats(vec![seat]).body(), json!({"seat_ids": [seat]}));
    }

    #[test]
    fn the_generated_venue_has_exactly_the_seats_asked_within_the_api_limits() {
        for seats in [1, 99, 100, 2_501, 50_000, 150_000] {
            let layout = venue_layout(seats);
            let total: usize = layout.iter().flat_map(|s| &s.rows).map(|row| row.seats).sum();
            assert_eq!(total, seats);
            assert!(layout.len() <= 200);
            assert!(layout.iter().all(|s| !s.rows.is_empty() && s.rows.len() <= 500));
            assert!(layout.iter().flat_map(|s| &s.rows).all(|row| row.seats <= 1000));
            let body = serde_json::to_vec(&layout).expect("serialises");
            assert!(body.len() < 60 * 1024, "{seats} seats: {} bytes", body.len());
        }
        let tiers: Vec<&str> = venue_layout(50_000).iter().map(|s| s.rows[0].tier).collect();
        assert_eq!(tiers.first(), Some(&"floor"));
        assert_eq!(tiers.last(), Some(&"upper"));
    }

    #[test]
    fn answers_are_sorted_by_status_and_code() {
        let held = outcome(201, &json!({"booking_id": Uuid::nil(), "seats": [{}, {}]}));
        assert_eq!(
            held,
            Outcome::Held {
                booking_id: Some(Uuid::nil()),
                seats: 2
            }
        );
        assert_eq!(
            outcome(409, &json!({"code": "limit_exceeded"})),
            Outcome::Conflict("limit_exceeded".to_owned())
        );
        assert_eq!(outcome(202, &json!({})), Outcome::Queued);
        assert_eq!(outcome(503, &Value::Null), Outcome::Status(503));
    }

    #[test]
    fn histogram_deltas_give_means_and_bucketed_percentiles() {
        let before = "# HELP x\nfloodgate_booking_batch_seconds_bucket{le=\"0.001\"} 1\n\
                      floodgate_booking_batch_seconds_bucket{le=\"0.002\"} 1\n\
                      floodgate_booking_batch_seconds_bucket{le=\"+Inf\"} 1\n\
                      floodgate_booking_batch_seconds_sum 0.001\nfloodgate_booking_batch_seconds_count 1\n";
        let after = "floodgate_booking_batch_seconds_bucket{le=\"0.001\"} 51\n\
                     floodgate_booking_batch_seconds_bucket{le=\"0.002\"} 100\n\
                     floodgate_booking_batch_seconds_bucket{le=\"+Inf\"} 101\n\
                     floodgate_booking_batch_seconds_sum 0.151\nfloodgate_booking_batch_seconds_count 101\n";
        let name = "floodgate_booking_batch_seconds";
        let gain = delta(&histogram(before, name), &histogram(after, name));
        let summary = distribution(&gain);
        assert_eq!(summary.count, 100);
        assert!((summary.mean - 0.0015).abs() < 1e-9);
        assert_eq!(summary.p50_at_most, 0.001);
        assert_eq!(summary.p99_at_most, 0.002);
        // Label sets are summed: a per-show histogram reads as one.
        let labelled = "q_bucket{show_id=\"a\",le=\"1\"} 2\nq_bucket{show_id=\"b\",le=\"1\"} 3\nq_count 5\nq_sum 1\n";
        assert_eq!(histogram(labelled, "q").buckets, vec![(1.0, 5.0)]);
    }

    #[test]
    fn env_file_values_are_unquoted_like_the_shell_would() {
        let text = "# Written by scripts/up\nFLOODGATE_ADMIN_EMAIL=admin@floodgate.local\n\
                    FLOODGATE_ADMIN_PASSWORD=Fg-abc\\ def\nDATABASE_URL='postgres://a:b@h/d'\n";
        assert_eq!(
            env_file_value(text, "FLOODGATE_ADMIN_EMAIL").as_deref(),
            Some("admin@floodgate.local")
        );
        assert_eq!(
            env_file_value(text, "FLOODGATE_ADMIN_PASSWORD").as_deref(),
            Some("Fg-abc def")
        );
        assert_eq!(
            env_file_value(text, "DATABASE_URL").as_deref(),
            Some("postgres://a:b@h/d")
        );
        assert_eq!(env_file_value(text, "FLOODGATE_ADMIN"), None);
    }
}
