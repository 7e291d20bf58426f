//! What routing reads besides the product catalog: what has happened today and lenders' records
//! ([`ActivityCache`]), and enterprises as matching sees them ([`EnterpriseCache`]).
//!
//! Both are caches, never authorities. Today's usage is a scoring input and a first filter; the
//! daily capacity itself is taken atomically in SQL when a referral is created
//! (`storage::referrals::take_capacity`), so a stale count can cost a retry but never a referral
//! over capacity. Usage is read again after [`USAGE_TTL`] and counted up locally by every
//! routing of this replica in between; lenders' records (months of referrals) after
//! [`STATS_TTL`].
//!
//! Enterprises are cached for PreviewMatches only (SubmitNeed reads the enterprise it routes in
//! its own call, so a designation granted or revoked a moment ago on another replica always
//! counts). Entries are dropped by `finmatch_enterprises_changed`, which every change of an
//! enterprise or its designations sends in its transaction, and are trusted only while this
//! replica's listener is connected (see [`super::catalog`]): with the listener down every preview
//! reads the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use uuid::Uuid;

use super::catalog::Catalog;
use super::enterprises::Enterprise;
use super::{App, Result};
use crate::matching::{Activity, LenderStats};
use crate::storage::{self, Connection};

/// The channel enterprise changes are notified on (payload: the enterprise id).
pub const ENTERPRISES_CHANGED: &str = "finmatch_enterprises_changed";

/// How far back a lender's approvals and answers count towards its score.
const STATS_WINDOW: TimeDelta = TimeDelta::days(90);
/// How long lender records are reused before they are counted again. Counting scans months of
/// referrals; a score input that lags by seconds changes no guarantee.
const STATS_TTL: TimeDelta = TimeDelta::seconds(30);
/// How long today's usage is reused (with this replica's own routings counted in) before it is
/// read again, so other replicas' routings count within this much.
const USAGE_TTL: TimeDelta = TimeDelta::seconds(1);
/// Enterprises kept for previews at most; beyond it the cache starts over.
const ENTERPRISES_MAX: usize = 20_000;
/// How long a cached enterprise is used before it is read again, whatever the notifications say.
const ENTERPRISE_TTL: Duration = Duration::from_secs(60);

/// Everything scoring needs besides the need and its enterprise: the catalog, and what has
/// happened so far.
pub(crate) struct Market {
    pub catalog: Arc<Catalog>,
    pub activity: Arc<Activity>,
    pub day: NaiveDate,
}

/// Today's usage and every lender's record, as one [`Activity`] shared by concurrent routings.
#[derive(Debug, Default)]
pub struct ActivityCache {
    current: Mutex<Option<Snapshot>>,
    /// While positive, lender records once read are kept whatever their age (see
    /// [`App::pin_lender_stats`]).
    pins: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Snapshot {
    day: NaiveDate,
    usage_read_at: DateTime<Utc>,
    stats_read_at: DateTime<Utc>,
    stats: Arc<HashMap<Uuid, LenderStats>>,
    activity: Arc<Activity>,
}

impl ActivityCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Snapshot>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The activity of `day` if it was read less than [`USAGE_TTL`] before `now`.
    fn fresh(&self, day: NaiveDate, now: DateTime<Utc>) -> Option<Arc<Activity>> {
        self.lock()
            .as_ref()
            .filter(|s| s.day == day && (now - s.usage_read_at).abs() < USAGE_TTL)
            .map(|s| s.activity.clone())
    }

    /// Lender records read less than [`STATS_TTL`] before `now`.
    fn fresh_stats(&self, now: DateTime<Utc>) -> Option<Arc<HashMap<Uuid, LenderStats>>> {
        let pinned = self.pins.load(Ordering::SeqCst) > 0;
        self.lock()
            .as_ref()
            .filter(|s| pinned || (now - s.stats_read_at).abs() < STATS_TTL)
            .map(|s| s.stats.clone())
    }

    /// Counts referrals this replica has just created (committed) on `day`.
    pub(crate) fn record(&self, day: NaiveDate, created: &[(Uuid, Uuid)]) {
        if created.is_empty() {
            return;
        }
        let mut current = self.lock();
        let Some(snapshot) = current.as_mut().filter(|s| s.day == day) else {
            return;
        };
        let activity = Arc::make_mut(&mut snapshot.activity);
        for &(product_id, lender_id) in created {
            *activity
                .product_referrals_today
                .entry(product_id)
                .or_default() += 1;
            activity
                .lender_stats
                .entry(lender_id)
                .or_default()
                .referrals_today += 1;
        }
    }
}

/// Enterprises for previews, by id.
#[derive(Debug, Default)]
pub struct EnterpriseCache {
    entries: Mutex<HashMap<Uuid, (Instant, Arc<Enterprise>)>>,
    /// Counts every eviction, so a read that raced one is not cached.
    generation: AtomicU64,
}

impl EnterpriseCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Instant, Arc<Enterprise>)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, id: Uuid) -> Option<Arc<Enterprise>> {
        self.lock()
            .get(&id)
            .filter(|(at, _)| at.elapsed() < ENTERPRISE_TTL)
            .map(|(_, e)| e.clone())
    }

    /// Keeps `enterprise`, read when the generation was `generation`, unless something was
    /// evicted since.
    fn put(&self, generation: u64, enterprise: Arc<Enterprise>) {
        let mut entries = self.lock();
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if entries.len() >= ENTERPRISES_MAX {
            entries.clear();
        }
        entries.insert(enterprise.id, (Instant::now(), enterprise));
    }

    /// Forgets one enterprise (it changed).
    pub(crate) fn evict(&self, id: Uuid) {
        let mut entries = self.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.remove(&id);
    }

    /// Forgets every enterprise (notifications may have been missed).
    pub(crate) fn clear(&self) {
        let mut entries = self.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.clear();
    }
}

/// Keeps lender records as first read until dropped (see [`App::pin_lender_stats`]).
pub struct StatsPin(App);

impl Drop for StatsPin {
    fn drop(&mut self) {
        self.0.activity_cache().pins.fetch_sub(1, Ordering::SeqCst);
    }
}

impl App {
    /// Keeps lenders' records as they are first read from now on, until the pin is dropped,
    /// instead of counting them again every [`STATS_TTL`]: a scripted run (the demo loader) then
    /// scores the same way however long it takes, and plays the same round every time.
    pub fn pin_lender_stats(&self) -> StatsPin {
        self.activity_cache().pins.fetch_add(1, Ordering::SeqCst);
        StatsPin(self.clone())
    }

    /// The catalog with what has happened so far, as of `now`, reading the database only when
    /// the cached usage is older than [`USAGE_TTL`].
    pub(crate) async fn market(
        &self,
        conn: &mut Connection,
        catalog: Arc<Catalog>,
        now: DateTime<Utc>,
    ) -> Result<Market> {
        self.market_with(Some(conn), catalog, now).await
    }

    /// Like [`App::market`], taking a connection only when the usage must be read again.
    pub(crate) async fn market_now(
        &self,
        catalog: Arc<Catalog>,
        now: DateTime<Utc>,
    ) -> Result<Market> {
        self.market_with(None, catalog, now).await
    }

    /// The market, reading usage through `conn` when given, else through a pooled connection
    /// taken only when the cached usage is stale.
    async fn market_with(
        &self,
        conn: Option<&mut Connection>,
        catalog: Arc<Catalog>,
        now: DateTime<Utc>,
    ) -> Result<Market> {
        let day = self.calendar().day(now);
        let activity = match (self.activity_cache().fresh(day, now), conn) {
            (Some(activity), _) => activity,
            (None, Some(conn)) => self.read_activity(conn, &catalog, now).await?,
            (None, None) => {
                let mut conn = self.conn().await?;
                self.read_activity(&mut conn, &catalog, now).await?
            }
        };
        Ok(Market {
            catalog,
            activity,
            day,
        })
    }

    /// Reads today's usage (and lender records when they are due) into the cache.
    async fn read_activity(
        &self,
        conn: &mut Connection,
        catalog: &Catalog,
        now: DateTime<Utc>,
    ) -> Result<Arc<Activity>> {
        let day = self.calendar().day(now);
        let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        let (stats, stats_read_at) = match self.activity_cache().fresh_stats(now) {
            Some(stats) => (stats, None),
            None => {
                let stats: HashMap<Uuid, LenderStats> =
                    storage::referrals::lender_stats(conn, now - STATS_WINDOW, now)
                        .await?
                        .into_iter()
                        .map(|row| {
                            (
                                row.lender_id,
                                LenderStats {
                                    approvals: count(row.approvals),
                                    decisions: count(row.decisions),
                                    sla_met: count(row.sla_met),
                                    sla_due: count(row.sla_due),
                                    referrals_today: 0,
                                },
                            )
                        })
                        .collect();
                (Arc::new(stats), Some(now))
            }
        };
        let mut activity = Activity {
            lender_stats: stats.as_ref().clone(),
            ..Activity::default()
        };
        for usage in storage::referrals::usage_on(conn, day).await? {
            let referrals = count(i64::from(usage.referrals));
            activity
                .product_referrals_today
                .insert(usage.product_id, referrals);
            if let Some(product) = catalog.products().get(usage.product_id) {
                activity
                    .lender_stats
                    .entry(product.lender_id)
                    .or_default()
                    .referrals_today += referrals;
            }
        }
        let activity = Arc::new(activity);
        let mut current = self.activity_cache().lock();
        let stats_read_at = stats_read_at
            .or(current.as_ref().map(|s| s.stats_read_at))
            .unwrap_or(now);
        *current = Some(Snapshot {
            day,
            usage_read_at: now,
            stats_read_at,
            stats,
            activity: activity.clone(),
        });
        Ok(activity)
    }

    /// The enterprise for a preview: from the cache while the change listener is connected,
    /// otherwise (and on a miss) from the database.
    pub(crate) async fn enterprise_for_preview(&self, id: Uuid) -> Result<Arc<Enterprise>> {
        let cache = self.enterprise_cache();
        let trusted = self.listening();
        if trusted && let Some(enterprise) = cache.get(id) {
            return Ok(enterprise);
        }
        let generation = cache.generation.load(Ordering::SeqCst);
        let enterprise = {
            let mut conn = self.conn().await?;
            Arc::new(super::enterprises::load(&mut conn, id).await?)
        };
        if trusted {
            cache.put(generation, enterprise.clone());
        }
        Ok(enterprise)
    }
}
