//! The seat map's two halves: the show's layout (immutable once the show exists: seats,
//! positions, tiers, prices), cached in memory per instance, and the availability snapshot the
//! show's writer keeps in Redis (DESIGN.md "Seat availability"). Together they answer
//! `GET /shows/{id}/seats` and `/availability` without touching PostgreSQL.
//!
//! Before a show's first writer has published a snapshot (or after Redis lost it), and while
//! Redis is unreachable, the routes fall back to PostgreSQL, the source of truth: correct, just
//! slower, and only until the next writer rebuilds the snapshot.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use common::{
    availability::{self, Snapshot},
    ids::{SeatId, ShowId},
};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::store::shows::{self, SeatMapRow};

/// Layouts kept at most; a full cache forgets one at random (layouts are cheap to reload).
const MAX_LAYOUTS: usize = 64;

/// A show's immutable layout.
pub struct Layout {
    /// The seats by index (their `status` column is not used).
    pub seats: Vec<SeatMapRow>,
    /// The show's seat ids, to check a hold request's seats before queueing it.
    pub ids: HashSet<SeatId>,
}

/// Layouts by show, and the Redis connection for snapshots.
pub struct SeatMaps {
    layouts: Mutex<HashMap<ShowId, Arc<Layout>>>,
    /// One layout load at a time: when a sale opens, hundreds of requests miss the cache at
    /// once, and each loading the same 50,000 rows kept PostgreSQL busy for seconds (measured:
    /// 59 loads of 270 ms in the first seconds of `loadgen holds`). The others wait for the
    /// first load and find it in the cache.
    loading: tokio::sync::Mutex<()>,
    redis: ConnectionManager,
    prefix: String,
}

impl SeatMaps {
    /// Snapshots under `prefix` in `redis`.
    pub fn new(redis: ConnectionManager, prefix: String) -> Self {
        Self {
            layouts: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
            redis,
            prefix,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ShowId, Arc<Layout>>> {
        self.layouts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The show's layout, or `None` for an unknown show.
    pub async fn layout(&self, db: &PgPool, show: ShowId) -> Result<Option<Arc<Layout>>, sqlx::Error> {
        if let Some(layout) = self.lock().get(&show) {
            return Ok(Some(Arc::clone(layout)));
        }
        let _loading = self.loading.lock().await;
        if let Some(layout) = self.lock().get(&show) {
            return Ok(Some(Arc::clone(layout)));
        }
        let rows = shows::seat_map(db, show).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let layout = Arc::new(Layout {
            ids: rows.iter().map(|seat| seat.seat_id).collect(),
            seats: rows,
        });
        let mut layouts = self.lock();
        if layouts.len() >= MAX_LAYOUTS
            && let Some(evicted) = layouts.keys().next().copied()
        {
            layouts.remove(&evicted);
        }
        layouts.insert(show, Arc::clone(&layout));
        Ok(Some(layout))
    }

    /// The show's availability snapshot; `None` when there is none or Redis cannot be reached
    /// (the caller then reads PostgreSQL).
    pub async fn snapshot(&self, show: ShowId) -> Option<Snapshot> {
        let mut redis = self.redis.clone();
        match availability::read(&mut redis, &availability::Keys::new(&self.prefix, show)).await {
            Ok(snapshot) => snapshot,
            Err(err) => {
                tracing::warn!(%show, error = %err, "availability snapshot unreadable; reading PostgreSQL");
                None
            }
        }
    }
}
