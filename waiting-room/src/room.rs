//! The fan-facing operations of a waiting room, as ingress uses them: join, status, leave,
//! heartbeats, session end. Each multi-key step is one Lua script, so it is atomic.

use std::{sync::LazyLock, time::Duration};

use common::ids::{ShowId, UserId};
use redis::{AsyncCommands as _, Script, aio::ConnectionManager};

use crate::keys::Keys;

static JOIN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/join.lua")));
static STATUS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/status.lua")));
static LEAVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/leave.lua")));

/// Redis could not be reached or answered an error: the caller answers 503.
#[derive(Debug, thiserror::Error)]
#[error("waiting room store unavailable: {0}")]
pub struct Unavailable(#[from] pub redis::RedisError);

/// A fan's place in a show's waiting room.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    /// The room is not open to joins (before the pre-queue, or the sale is over).
    Closed,
    /// The fan has no place (never joined, left, or forfeited it by going quiet).
    NotQueued,
    /// Nothing is left to sell.
    SoldOut,
    /// In the pre-queue: numbered at random at the on-sale.
    Prequeue,
    /// In line.
    Waiting {
        /// Queue number.
        number: u64,
        /// Highest number passed so far.
        serving: u64,
        /// Measured admissions per second (0 while paused).
        rate_per_second: f64,
    },
    /// Admitted: may shop until the session deadline.
    Admitted {
        /// Queue number.
        number: u64,
        /// Session deadline, Unix milliseconds.
        session_deadline_ms: u64,
    },
}

impl Place {
    /// The word of the API's `state` field.
    pub fn state(&self) -> &'static str {
        match self {
            Self::Closed | Self::NotQueued => "closed",
            Self::SoldOut => "sold_out",
            Self::Prequeue => "prequeue",
            Self::Waiting { .. } => "waiting",
            Self::Admitted { .. } => "admitted",
        }
    }

    /// Fans ahead in line (position - 1) and position, for a waiting fan.
    pub fn position(&self) -> Option<u64> {
        match self {
            Self::Waiting { number, serving, .. } => Some(number.saturating_sub(*serving)),
            _ => None,
        }
    }

    /// Estimated seconds until admission, when a rate has been measured.
    pub fn eta_seconds(&self) -> Option<u64> {
        match (self, self.position()) {
            (Self::Waiting { rate_per_second, .. }, Some(position)) if *rate_per_second > 0.0 => {
                Some((position as f64 / rate_per_second).ceil() as u64)
            }
            _ => None,
        }
    }

    fn from_script(state: &str, number: u64, serving: u64, deadline_ms: u64, rate_milli: u64) -> Self {
        match state {
            "admitted" => Self::Admitted {
                number,
                session_deadline_ms: deadline_ms,
            },
            "waiting" => Self::Waiting {
                number,
                serving,
                rate_per_second: rate_milli as f64 / 1000.0,
            },
            "prequeue" => Self::Prequeue,
            "sold_out" => Self::SoldOut,
            "not_queued" => Self::NotQueued,
            _ => Self::Closed,
        }
    }
}

/// Client settings for the waiting room's Redis: short timeouts, so an outage turns into quick
/// 503s instead of hanging requests, and background reconnection.
pub async fn connect(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// The waiting rooms of all shows, over one Redis connection.
#[derive(Clone)]
pub struct WaitingRoom {
    redis: ConnectionManager,
    prefix: String,
}

/// Wall-clock time in Unix milliseconds, the unit of every time stored in a room.
pub fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

impl WaitingRoom {
    /// Rooms whose keys start with `prefix`.
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The keys of `show`.
    pub fn keys(&self, show: ShowId) -> Keys {
        Keys::new(&self.prefix, show)
    }

    /// Joins `user` to `show`'s room; returns the place and whether it is new. Rejoining returns
    /// the same place.
    #[tracing::instrument(skip(self), fields(show_id = %show))]
    pub async fn join(&self, show: ShowId, user: UserId) -> Result<(Place, bool), Unavailable> {
        let keys = self.keys(show);
        let mut redis = self.redis.clone();
        let (state, number, serving, deadline, rate, new): (String, u64, u64, u64, u64, u64) = JOIN
            .key(&keys.cfg)
            .key(&keys.pre)
            .key(&keys.queue)
            .key(&keys.seq)
            .key(&keys.serving)
            .key(&keys.active)
            .key(&keys.admitted)
            .key(&keys.heartbeat)
            .arg(user.to_string())
            .arg(now_ms())
            .invoke_async(&mut redis)
            .await?;
        let place = Place::from_script(&state, number, serving, deadline, rate);
        Ok((place, new == 1))
    }

    /// `user`'s place in `show`'s room (also records that the fan is still there).
    #[tracing::instrument(skip(self), fields(show_id = %show))]
    pub async fn status(&self, show: ShowId, user: UserId) -> Result<Place, Unavailable> {
        let keys = self.keys(show);
        let mut redis = self.redis.clone();
        let (state, number, serving, deadline, rate): (String, u64, u64, u64, u64) = STATUS
            .key(&keys.cfg)
            .key(&keys.pre)
            .key(&keys.queue)
            .key(&keys.serving)
            .key(&keys.active)
            .key(&keys.admitted)
            .key(&keys.heartbeat)
            .arg(user.to_string())
            .arg(now_ms())
            .invoke_async(&mut redis)
            .await?;
        Ok(Place::from_script(&state, number, serving, deadline, rate))
    }

    /// `user` leaves: the place or the admitted session is freed. Returns whether there was one.
    #[tracing::instrument(skip(self), fields(show_id = %show))]
    pub async fn leave(&self, show: ShowId, user: UserId) -> Result<bool, Unavailable> {
        let keys = self.keys(show);
        let mut redis = self.redis.clone();
        let removed: u64 = LEAVE
            .key(&keys.pre)
            .key(&keys.queue)
            .key(&keys.active)
            .key(&keys.admitted)
            .key(&keys.heartbeat)
            .arg(user.to_string())
            .invoke_async(&mut redis)
            .await?;
        Ok(removed == 1)
    }

    /// Ends an admitted session (booking confirmed): frees the active slot at once.
    #[tracing::instrument(skip(self), fields(show_id = %show))]
    pub async fn end_session(&self, show: ShowId, user: UserId) -> Result<(), Unavailable> {
        let keys = self.keys(show);
        let mut redis = self.redis.clone();
        let _: u64 = redis.zrem(&keys.active, user.to_string()).await?;
        Ok(())
    }

    /// Records that `users` are still there, in one command. Only fans with a place are touched
    /// (`XX`), so a stale socket cannot resurrect a forfeited place.
    pub async fn heartbeat(&self, show: ShowId, users: &[UserId]) -> Result<(), Unavailable> {
        if users.is_empty() {
            return Ok(());
        }
        let keys = self.keys(show);
        let now = now_ms();
        let mut command = redis::cmd("ZADD");
        command.arg(&keys.heartbeat).arg("XX");
        for user in users {
            command.arg(now).arg(user.to_string());
        }
        let mut redis = self.redis.clone();
        let _: u64 = command.query_async(&mut redis).await?;
        Ok(())
    }

    /// The room's public state: `state`, `serving`, `seed_sha256` and, after the on-sale,
    /// `seed`, `prequeue_size`.
    pub async fn public_state(&self, show: ShowId) -> Result<RoomInfo, Unavailable> {
        let keys = self.keys(show);
        let mut redis = self.redis.clone();
        let (fields, serving): (std::collections::HashMap<String, String>, Option<u64>) = redis::pipe()
            .hgetall(&keys.cfg)
            .get(&keys.serving)
            .query_async(&mut redis)
            .await?;
        Ok(RoomInfo {
            state: fields.get("state").cloned().unwrap_or_else(|| "closed".to_owned()),
            serving: serving.unwrap_or(0),
            seed_sha256: fields.get("seed_sha256").cloned(),
            seed: fields.get("seed").cloned(),
            prequeue_size: fields.get("prequeue_size").and_then(|v| v.parse().ok()),
        })
    }

    /// The room's admission log: every place the admitter passed, oldest first. Read in pages, so
    /// a log of 200,000 places never makes one huge reply.
    pub async fn admission_log(&self, show: ShowId) -> Result<Vec<AdmissionRecord>, Unavailable> {
        const PAGE: usize = 10_000;
        let keys = self.keys(show);
        let mut redis = self.redis.clone();
        let mut records = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let page: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(&keys.admission_log)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut redis)
                .await?;
            let Some((last, _)) = page.last() else { break };
            // Exclusive start: the next page begins after the last entry read.
            start = format!("({last}");
            let full = page.len() == PAGE;
            records.extend(page.iter().map(|(id, fields)| AdmissionRecord::from_entry(id, fields)));
            if !full {
                break;
            }
        }
        Ok(records)
    }

    /// Checks that Redis answers (readiness).
    pub async fn ping(&self) -> Result<(), Unavailable> {
        let mut redis = self.redis.clone();
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        Ok(())
    }
}

/// One place the admitter passed, as its admission log recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionRecord {
    /// The log entry's id (`<ms>-<seq>`, Redis time): its order in the log.
    pub id: String,
    /// When it was passed, Unix milliseconds (Redis's clock).
    pub at_ms: u64,
    /// The queue number.
    pub number: u64,
    /// The fan, as stored (a user id, unless the entry is malformed).
    pub user: String,
    /// Admitted (`true`) or skipped because the fan had gone quiet (`false`).
    pub admitted: bool,
}

impl AdmissionRecord {
    fn from_entry(id: &str, fields: &[String]) -> Self {
        let field = |name: &str| {
            fields
                .chunks_exact(2)
                .find(|pair| pair[0] == name)
                .map(|pair| pair[1].as_str())
        };
        Self {
            id: id.to_owned(),
            at_ms: id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0),
            number: field("n").and_then(|n| n.parse().ok()).unwrap_or(0),
            user: field("u").unwrap_or_default().to_owned(),
            admitted: field("o") == Some("a"),
        }
    }
}

/// A room's public state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomInfo {
    /// scheduled, prequeue, open, paused, sold_out, closed.
    pub state: String,
    /// Highest number passed.
    pub serving: u64,
    /// SHA-256 of the shuffle seed, published before the on-sale.
    pub seed_sha256: Option<String>,
    /// The seed, revealed at the on-sale.
    pub seed: Option<String>,
    /// How many fans the shuffle numbered.
    pub prequeue_size: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_and_eta_follow_the_serving_number_and_the_rate() {
        let place = Place::Waiting {
            number: 150,
            serving: 100,
            rate_per_second: 10.0,
        };
        assert_eq!(place.position(), Some(50));
        assert_eq!(place.eta_seconds(), Some(5));
        let paused = Place::Waiting {
            number: 150,
            serving: 100,
            rate_per_second: 0.0,
        };
        assert_eq!(paused.eta_seconds(), None);
        assert_eq!(Place::Prequeue.position(), None);
    }
}
