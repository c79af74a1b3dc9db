//! The admission controller: each tick, for every show whose room is live, it takes (or renews)
//! the show's lease, moves the room through its states, opens the sale with the auditable
//! shuffle, admits the next fans, and publishes the serving number.
//!
//! Time is a parameter (`now_ms`), so tests drive the controller tick by tick without sleeping.

use std::{collections::HashMap, sync::LazyLock, time::Duration};

use common::ids::{ShowId, UserId};
use redis::{AsyncCommands as _, Script, aio::ConnectionManager};
use serde::Serialize;

use crate::{
    keys::Keys,
    metrics,
    room::Unavailable,
    shuffle::{self, Seed},
};

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/admit.lua")));
static OPEN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/open.lua")));
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local held = redis.call('GET', KEYS[1])
         if held == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
         if not held then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
         return 0",
    )
});

/// A show's schedule and settings as the organizer set them (PostgreSQL), plus what is still
/// for sale.
#[derive(Debug, Clone)]
pub struct ShowSettings {
    /// The show.
    pub show_id: ShowId,
    /// When fans may start joining (Unix ms).
    pub prequeue_opens_at_ms: u64,
    /// When the sale starts (Unix ms).
    pub on_sale_at_ms: u64,
    /// Admissions per second.
    pub admit_per_second: u32,
    /// Admitted sessions at once.
    pub max_active: u32,
    /// Paused by the organizer.
    pub paused: bool,
    /// Seats still sellable.
    pub sellable: u64,
    /// How far behind the show's booking pipeline is: the age its writer last reported for its
    /// latest batch's oldest command, if that report is recent.
    pub booking_lag_ms: Option<u64>,
}

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Tick length (default 250 ms).
    pub tick: Duration,
    /// How long an admitted fan may shop.
    pub session: Duration,
    /// How long a fan may go quiet before the place is forfeited.
    pub grace: Duration,
    /// Most forfeited places skipped in one tick (bounds the script's run time).
    pub max_skips_per_tick: u32,
    /// The booking lag admission holds back on (see [`next_share`]); zero turns that off.
    pub max_booking_lag: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(250),
            session: Duration::from_secs(900),
            grace: Duration::from_secs(30),
            max_skips_per_tick: 5_000,
            max_booking_lag: Duration::from_secs(1),
        }
    }
}

/// What one tick did for one show.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TickOutcome {
    /// Whether this replica holds the show's lease (false: another replica admits).
    pub leader: bool,
    /// The room's state after the tick.
    pub state: String,
    /// Fans admitted in this tick.
    pub admitted: u64,
    /// Places forfeited in this tick.
    pub skipped: u64,
    /// The serving number.
    pub serving: u64,
    /// Admitted sessions.
    pub active: u64,
    /// Fans in line.
    pub waiting: u64,
}

/// What is published on a show's channel after each tick.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RoomUpdate {
    /// The room's state.
    pub state: String,
    /// The serving number.
    pub serving: u64,
    /// Measured admissions per second.
    pub rate: f64,
}

#[derive(Debug)]
struct ShowPace {
    credit: f64,
    last_tick_ms: Option<u64>,
    rate: f64,
    /// Share of the configured rate admitted now ([`next_share`]).
    share: f64,
}

impl Default for ShowPace {
    fn default() -> Self {
        Self {
            credit: 0.0,
            last_tick_ms: None,
            rate: 0.0,
            share: 1.0,
        }
    }
}

/// Least share of the configured rate admitted while the booking pipeline lags: admission slows
/// down, it never stops on its own (a writer that reports lag is alive and working).
pub const MIN_ADMISSION_SHARE: f64 = 0.05;

/// The share of the configured admission rate to admit at next, from the current one and the
/// booking pipeline's lag (additive increase, multiplicative decrease, as TCP paces a link).
/// Fans admitted faster than the show's single writer applies their commands only wait in its
/// queue, where holds take seconds and lapse; so while the lag is over `max_lag` the share is cut
/// by 30% each tick, and while it is under half of it the share grows back by 2 points a tick
/// (from the floor to all of it in about 12 s at 250 ms ticks). In between, or without a recent
/// report (an idle queue), it holds. A zero `max_lag` admits at the configured rate always.
pub fn next_share(share: f64, lag_ms: Option<u64>, max_lag: Duration) -> f64 {
    let max_ms = max_lag.as_millis() as u64;
    if max_ms == 0 {
        return 1.0;
    }
    let next = match lag_ms {
        Some(lag) if lag > max_ms => share * 0.7,
        Some(lag) if lag * 2 > max_ms => share,
        _ => share + 0.02,
    };
    next.clamp(MIN_ADMISSION_SHARE, 1.0)
}

/// One replica of the admission controller.
pub struct Controller {
    redis: ConnectionManager,
    prefix: String,
    config: ControllerConfig,
    /// This replica's lease token: the fencing value its scripts present.
    lease_token: String,
    pace: HashMap<ShowId, ShowPace>,
}

fn desired_state(show: &ShowSettings, current: Option<&str>, now_ms: u64) -> &'static str {
    if now_ms < show.prequeue_opens_at_ms {
        "scheduled"
    } else if now_ms < show.on_sale_at_ms {
        "prequeue"
    } else if matches!(current, None | Some("scheduled" | "prequeue")) {
        // The sale opens with the shuffle; the state is set by the open script.
        "open"
    } else if show.paused {
        "paused"
    } else if show.sellable == 0 {
        "sold_out"
    } else {
        "open"
    }
}

impl Controller {
    /// A replica with a fresh lease token.
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>, config: ControllerConfig) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            config,
            lease_token: uuid::Uuid::new_v4().to_string(),
            pace: HashMap::new(),
        }
    }

    /// One tick for one show at time `now_ms`.
    #[tracing::instrument(skip(self, show), fields(show_id = %show.show_id))]
    pub async fn tick_show(&mut self, show: &ShowSettings, now_ms: u64) -> Result<TickOutcome, Unavailable> {
        let keys = Keys::new(&self.prefix, show.show_id);
        let mut redis = self.redis.clone();
        // A lease of three ticks: a paused or crashed replica loses it quickly, a healthy one
        // renews it every tick.
        let lease_ms = (self.config.tick.as_millis() as u64 * 3).max(750);
        let leader: u64 = LEASE
            .key(&keys.lease)
            .arg(&self.lease_token)
            .arg(lease_ms)
            .invoke_async(&mut redis)
            .await?;
        metrics::lease_held(show.show_id, leader == 1);
        if leader != 1 {
            self.pace.remove(&show.show_id);
            return Ok(TickOutcome {
                leader: false,
                state: String::new(),
                admitted: 0,
                skipped: 0,
                serving: 0,
                active: 0,
                waiting: 0,
            });
        }

        let current: Option<String> = redis.hget(&keys.cfg, "state").await?;
        let desired = desired_state(show, current.as_deref(), now_ms);
        redis::pipe()
            .hset_multiple(
                &keys.cfg,
                &[
                    ("admit_per_second", show.admit_per_second.to_string()),
                    ("max_active", show.max_active.to_string()),
                    ("on_sale_at_ms", show.on_sale_at_ms.to_string()),
                    ("session_seconds", self.config.session.as_secs().to_string()),
                ],
            )
            .ignore()
            .query_async::<()>(&mut redis)
            .await?;
        if desired == "open" && matches!(current.as_deref(), None | Some("scheduled" | "prequeue")) {
            if current.is_none() || current.as_deref() == Some("scheduled") {
                // Straight to the sale (the pre-queue window was missed): open from an empty
                // pre-queue so the state machine stays one path.
                let _: () = redis.hset(&keys.cfg, "state", "prequeue").await?;
            }
            let seed = self.seed(&keys).await?;
            self.open(&keys, &seed).await?;
        } else {
            if matches!(desired, "scheduled" | "prequeue") {
                self.seed(&keys).await?;
            }
            if current.as_deref() != Some(desired) {
                let _: () = redis.hset(&keys.cfg, "state", desired).await?;
                tracing::info!(from = ?current, to = desired, "room state changed");
            }
        }

        let state: String = redis.hget(&keys.cfg, "state").await?;
        let pace = self.pace.entry(show.show_id).or_default();
        let elapsed_s = pace
            .last_tick_ms
            .map(|last| now_ms.saturating_sub(last) as f64 / 1000.0)
            .unwrap_or(self.config.tick.as_secs_f64())
            .min(1.0);
        pace.last_tick_ms = Some(now_ms);
        pace.share = next_share(pace.share, show.booking_lag_ms, self.config.max_booking_lag);
        metrics::admission_share(show.show_id, pace.share, show.booking_lag_ms);
        let budget = if state == "open" {
            pace.credit += f64::from(show.admit_per_second) * pace.share * elapsed_s;
            (pace.credit.floor() as u64).min(show.sellable)
        } else {
            pace.credit = 0.0;
            0
        };
        let result: Vec<i64> = ADMIT
            .key(&keys.cfg)
            .key(&keys.queue)
            .key(&keys.serving)
            .key(&keys.active)
            .key(&keys.admitted)
            .key(&keys.heartbeat)
            .key(&keys.lease)
            .key(&keys.admission_log)
            .arg(&self.lease_token)
            .arg(now_ms)
            .arg(budget)
            .arg(self.config.session.as_millis() as u64)
            .arg(self.config.grace.as_millis() as u64)
            .arg(self.config.max_skips_per_tick)
            .invoke_async(&mut redis)
            .await?;
        if result.first() == Some(&-1) {
            // The lease moved between our renewal and the script: the other replica admits.
            return Ok(TickOutcome {
                leader: false,
                state,
                admitted: 0,
                skipped: 0,
                serving: 0,
                active: 0,
                waiting: 0,
            });
        }
        let [admitted, serving, active, skipped, waiting] = <[i64; 5]>::try_from(result)
            .unwrap_or_default()
            .map(|v| v.max(0) as u64);
        if admitted == budget {
            pace.credit -= admitted as f64;
        } else {
            // Fewer fans than the budget (or the active cap bound): unused credit must not pile
            // up into a burst later.
            pace.credit = pace.credit.fract();
        }
        if elapsed_s > 0.0 {
            pace.rate = 0.8 * pace.rate + 0.2 * (admitted as f64 / elapsed_s);
        }
        let rate = if state == "open" { pace.rate } else { 0.0 };
        let update = RoomUpdate {
            state: state.clone(),
            serving,
            rate,
        };
        redis::pipe()
            .hset(&keys.cfg, "rate_milli", (rate * 1000.0) as u64)
            .ignore()
            .publish(&keys.channel, serde_json::to_string(&update).unwrap_or_default())
            .ignore()
            .query_async::<()>(&mut redis)
            .await?;
        metrics::observe_tick(show.show_id, admitted, skipped, serving, active, waiting);
        Ok(TickOutcome {
            leader: true,
            state,
            admitted,
            skipped,
            serving,
            active,
            waiting,
        })
    }

    /// The show's seed: drawn once (the first replica to get there wins), its commitment
    /// published in the room's state before the sale. The commitment is rewritten from the
    /// stored seed on every tick before the sale, so the two always agree, even if a Redis crash
    /// lost a freshly drawn seed (then a new one is drawn and committed to, visibly).
    async fn seed(&self, keys: &Keys) -> Result<Seed, Unavailable> {
        let mut redis = self.redis.clone();
        let candidate = Seed::random();
        let _: bool = redis.set_nx(&keys.seed, candidate.to_hex()).await?;
        let stored: String = redis.get(&keys.seed).await?;
        let seed = Seed::from_hex(&stored).unwrap_or(candidate);
        let _: () = redis.hset(&keys.cfg, "seed_sha256", seed.commitment()).await?;
        Ok(seed)
    }

    /// Numbers the pre-queue in the seed's order and opens the sale.
    async fn open(&self, keys: &Keys, seed: &Seed) -> Result<(), Unavailable> {
        let mut redis = self.redis.clone();
        let members: Vec<String> = redis.smembers(&keys.pre).await?;
        let users: Vec<UserId> = members.iter().filter_map(|member| member.parse().ok()).collect();
        let ordered = shuffle::order(seed, &users);
        let mut invocation = OPEN.prepare_invoke();
        invocation
            .key(&keys.cfg)
            .key(&keys.pre)
            .key(&keys.queue)
            .key(&keys.seq)
            .key(&keys.lease)
            .arg(&self.lease_token)
            .arg(seed.to_hex());
        for user in &ordered {
            invocation.arg(user.to_string());
        }
        let last: i64 = invocation.invoke_async(&mut redis).await?;
        tracing::info!(
            prequeue = ordered.len(),
            numbered = last,
            "sale opened; pre-queue shuffled, seed revealed"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(paused: bool, sellable: u64) -> ShowSettings {
        ShowSettings {
            show_id: ShowId::new(),
            prequeue_opens_at_ms: 1_000,
            on_sale_at_ms: 2_000,
            admit_per_second: 10,
            max_active: 10,
            paused,
            sellable,
            booking_lag_ms: None,
        }
    }

    #[test]
    fn admission_slows_while_the_booking_pipeline_lags_and_recovers_after() {
        let max = Duration::from_secs(1);
        // Behind: cut by 30% a tick, down to the floor and no further.
        assert!((next_share(1.0, Some(1_500), max) - 0.7).abs() < 1e-9);
        let mut share = 1.0;
        for _ in 0..50 {
            share = next_share(share, Some(5_000), max);
        }
        assert!((share - MIN_ADMISSION_SHARE).abs() < 1e-9);
        // Between half the limit and the limit: held.
        assert!((next_share(0.5, Some(700), max) - 0.5).abs() < 1e-9);
        // Caught up (or nothing reported recently: an idle queue): back up by 2 points a tick.
        assert!((next_share(0.5, Some(100), max) - 0.52).abs() < 1e-9);
        assert!((next_share(0.5, None, max) - 0.52).abs() < 1e-9);
        assert!((next_share(0.999, Some(10), max) - 1.0).abs() < 1e-9);
        // Turned off: always the whole rate.
        assert!((next_share(0.1, Some(60_000), Duration::ZERO) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_room_follows_the_schedule_then_pause_and_inventory() {
        let open = show(false, 5);
        assert_eq!(desired_state(&open, None, 500), "scheduled");
        assert_eq!(desired_state(&open, Some("scheduled"), 1_500), "prequeue");
        assert_eq!(desired_state(&open, Some("prequeue"), 2_000), "open");
        assert_eq!(desired_state(&open, Some("open"), 3_000), "open");
        assert_eq!(desired_state(&show(true, 5), Some("open"), 3_000), "paused");
        assert_eq!(desired_state(&show(false, 0), Some("open"), 3_000), "sold_out");
        assert_eq!(desired_state(&open, Some("sold_out"), 3_000), "open");
    }
}
