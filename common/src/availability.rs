//! The availability snapshot of a show in Redis (DESIGN.md "Seat availability"): one bit per
//! seat index (set = available, most significant bit first, as `SETBIT` lays it out), one status
//! byte per seat index (`a`vailable, `h`eld, `s`old, `b`locked: the seat map's `status`), the
//! counts by status and a version, written by the show's single writer after each committed batch
//! and read by ingress (`/seats`, `/availability`) and the admission controller (seats still
//! sellable), so fans refreshing the map never touch PostgreSQL.
//!
//! Writes are fenced like the database: the snapshot remembers the writer epoch that wrote it,
//! and a write from an older epoch (a paused worker waking up after a failover) is refused, so a
//! zombie cannot paint stale seats over its successor's snapshot. The bitmap and the counts
//! change together in one script, and readers fetch both in one transaction.

use redis::{AsyncCommands as _, Script, aio::ConnectionManager};

use crate::{contracts::SeatCounts, ids::ShowId};

/// The Redis keys of one show's snapshot; hash-tagged by show like the waiting room's.
#[derive(Debug, Clone)]
pub struct Keys {
    /// String: the bitmap.
    pub bits: String,
    /// String: one status byte per seat.
    pub status: String,
    /// Hash: `available`, `held`, `sold`, `blocked`, `version`, `epoch`, and the writer's lag:
    /// `lag_ms` (how long its latest batch's oldest command had waited), `lag_at_ms` (when).
    pub meta: String,
}

impl Keys {
    /// The keys of `show` under `prefix` (`REDIS_KEY_PREFIX`).
    pub fn new(prefix: &str, show: ShowId) -> Self {
        Self {
            bits: format!("{prefix}av:{{{show}}}:bits"),
            status: format!("{prefix}av:{{{show}}}:status"),
            meta: format!("{prefix}av:{{{show}}}:meta"),
        }
    }
}

/// A show's availability as last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Bit `i` (MSB first) set when seat index `i` is available.
    pub bitmap: Vec<u8>,
    /// Byte `i`: the status of seat index `i` ([`status_byte`]).
    pub statuses: Vec<u8>,
    /// Counts by status.
    pub counts: SeatCounts,
    /// Grows with every write; `(writer epoch << 32) | batch number`.
    pub version: u64,
}

/// The version of the `batch`-th write of the writer with `epoch`: later epochs always compare
/// higher, so clients and ETags never see the version go back after a failover.
pub fn version(epoch: i64, batch: u32) -> u64 {
    (u64::try_from(epoch).unwrap_or(0) << 32) | u64::from(batch)
}

/// Whether a fenced write was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The snapshot now reflects the write.
    Applied,
    /// A newer writer owns the snapshot (or, for an incremental write, none exists yet).
    Fenced,
}

const REBUILD: &str = r"
local current = tonumber(redis.call('HGET', KEYS[2], 'epoch') or '-1')
if current > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[8])
redis.call('HSET', KEYS[2], 'epoch', ARGV[1], 'version', ARGV[3], 'available', ARGV[4],
  'held', ARGV[5], 'sold', ARGV[6], 'blocked', ARGV[7])
return 1
";

const APPLY: &str = r"
local current = tonumber(redis.call('HGET', KEYS[2], 'epoch') or '-1')
if current ~= tonumber(ARGV[1]) then return 0 end
for i = 7, #ARGV, 2 do
  local status = ARGV[i + 1]
  redis.call('SETBIT', KEYS[1], ARGV[i], status == 'a' and 1 or 0)
  redis.call('SETRANGE', KEYS[3], ARGV[i], status)
end
redis.call('HSET', KEYS[2], 'version', ARGV[2], 'available', ARGV[3], 'held', ARGV[4],
  'sold', ARGV[5], 'blocked', ARGV[6])
return 1
";

/// Replaces the whole snapshot (a writer taking over a show), unless a newer epoch wrote it.
pub async fn rebuild(
    redis: &mut ConnectionManager,
    keys: &Keys,
    epoch: i64,
    snapshot: &Snapshot,
) -> redis::RedisResult<Written> {
    let applied: i32 = Script::new(REBUILD)
        .key(&keys.bits)
        .key(&keys.meta)
        .arg(epoch)
        .arg(snapshot.bitmap.as_slice())
        .arg(snapshot.version)
        .arg(snapshot.counts.available)
        .arg(snapshot.counts.held)
        .arg(snapshot.counts.sold)
        .arg(snapshot.counts.blocked)
        .arg(snapshot.statuses.as_slice())
        .key(&keys.status)
        .invoke_async(redis)
        .await?;
    Ok(if applied == 1 {
        Written::Applied
    } else {
        Written::Fenced
    })
}

/// Applies the seats that changed in one batch (`(index, status byte)`) and the new counts, if
/// the snapshot still belongs to `epoch`.
pub async fn apply(
    redis: &mut ConnectionManager,
    keys: &Keys,
    epoch: i64,
    changes: &[(u32, u8)],
    counts: SeatCounts,
    version: u64,
) -> redis::RedisResult<Written> {
    let script = Script::new(APPLY);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(&keys.bits)
        .key(&keys.meta)
        .key(&keys.status)
        .arg(epoch)
        .arg(version)
        .arg(counts.available)
        .arg(counts.held)
        .arg(counts.sold)
        .arg(counts.blocked);
    for (index, status) in changes {
        invocation.arg(*index).arg(&[*status][..]);
    }
    let applied: i32 = invocation.invoke_async(redis).await?;
    Ok(if applied == 1 {
        Written::Applied
    } else {
        Written::Fenced
    })
}

/// Reads the snapshot (bitmap and counts from the same moment); `None` before any writer has
/// published one.
pub async fn read(redis: &mut ConnectionManager, keys: &Keys) -> redis::RedisResult<Option<Snapshot>> {
    type Raw = (Option<Vec<u8>>, Option<Vec<u8>>, std::collections::HashMap<String, u64>);
    let (bitmap, statuses, meta): Raw = redis::pipe()
        .atomic()
        .get(&keys.bits)
        .get(&keys.status)
        .hgetall(&keys.meta)
        .query_async(redis)
        .await?;
    let Some(version) = meta.get("version").copied() else {
        return Ok(None);
    };
    let count = |name: &str| meta.get(name).copied().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    Ok(Some(Snapshot {
        bitmap: bitmap.unwrap_or_default(),
        statuses: statuses.unwrap_or_default(),
        counts: SeatCounts {
            available: count("available"),
            held: count("held"),
            sold: count("sold"),
            blocked: count("blocked"),
        },
        version,
    }))
}

/// Reads only the counts (the admission controller's "seats still sellable").
pub async fn counts(redis: &mut ConnectionManager, keys: &Keys) -> redis::RedisResult<Option<SeatCounts>> {
    // The version is `(epoch << 32) | batch`: past u32 from the first writer on, so every field
    // is read as u64 and the counts narrowed after.
    let values: Vec<Option<u64>> = redis::cmd("HMGET")
        .arg(&keys.meta)
        .arg(&["version", "available", "held", "sold", "blocked"])
        .query_async(redis)
        .await?;
    let [Some(_version), available, held, sold, blocked] = values.as_slice() else {
        return Ok(None);
    };
    let count = |n: &Option<u64>| n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    Ok(Some(SeatCounts {
        available: count(available),
        held: count(held),
        sold: count(sold),
        blocked: count(blocked),
    }))
}

const REPORT_LAG: &str = r"
local now = redis.call('TIME')
redis.call('HSET', KEYS[1], 'lag_ms', ARGV[1], 'lag_at_ms', now[1] * 1000 + math.floor(now[2] / 1000))
return 1
";

/// Records how long the writer's latest batch's oldest command had waited in the show's queue
/// (the booking pipeline's lag, which the admission controller holds admissions back on),
/// stamped with Redis's clock.
pub async fn report_lag(redis: &mut ConnectionManager, keys: &Keys, lag_ms: u64) -> redis::RedisResult<()> {
    let _: i32 = Script::new(REPORT_LAG)
        .key(&keys.meta)
        .arg(lag_ms)
        .invoke_async(redis)
        .await?;
    Ok(())
}

/// The writer's lag as last reported, and when (Unix ms, Redis's clock), with Redis's clock
/// now: `(lag_ms, age_ms)`; `None` when none was ever reported.
pub async fn lag(redis: &mut ConnectionManager, keys: &Keys) -> redis::RedisResult<Option<(u64, u64)>> {
    let (values, (seconds, micros)): (Vec<Option<u64>>, (u64, u64)) = redis::pipe()
        .cmd("HMGET")
        .arg(&keys.meta)
        .arg(&["lag_ms", "lag_at_ms"])
        .cmd("TIME")
        .query_async(redis)
        .await?;
    let [Some(lag_ms), Some(at_ms)] = values.as_slice() else {
        return Ok(None);
    };
    let now_ms = seconds * 1000 + micros / 1000;
    Ok(Some((*lag_ms, now_ms.saturating_sub(*at_ms))))
}

/// Deletes a show's snapshot (tests cleaning up).
pub async fn delete(redis: &mut ConnectionManager, keys: &Keys) -> redis::RedisResult<()> {
    redis.del::<_, ()>(&[&keys.bits, &keys.meta, &keys.status]).await
}

/// The status byte of a seat status name (`available` → `a`, ...); `?` for an unknown one.
pub fn status_byte(status: &str) -> u8 {
    match status {
        "available" => b'a',
        "held" => b'h',
        "sold" => b's',
        "blocked" => b'b',
        _ => b'?',
    }
}

/// The status name of a status byte.
pub fn status_name(byte: u8) -> &'static str {
    match byte {
        b'a' => "available",
        b'h' => "held",
        b's' => "sold",
        b'b' => "blocked",
        _ => "unknown",
    }
}
