//! Routing: the in-memory product catalog and the one routine that turns a need's ranked
//! candidates into referrals (first routing, re-routing, the SLA sweeper).
//!
//! The catalog is a cache: it is reloaded when `finmatch_products_changed` is notified (from
//! any replica) and whenever its version no longer matches the database, so it never serves
//! products older than the caller's own committed changes. It is never the authority for
//! capacity: the daily count is taken atomically in SQL when a referral is created.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::enterprises::Enterprise;
use super::lenders::stored_product;
use super::{App, Error, Result};
use crate::domain::{
    AmountMinor, Bps, Collateral, CollateralSet, IndustryCode, ListCode, NeedStatus, RegionCode,
    TermMonths,
};
use crate::matching::{
    Activity, Candidate, LenderStats, MatchEnterprise, MatchNeed, MatchProduct, ProductCatalog,
    RoutingPolicy, evaluate,
};
use crate::storage::catalog::CatalogVersion;
use crate::storage::needs::NeedRow;
use crate::storage::referrals::{NewReferral, NewReferralEvent, ReferralRow};
use crate::storage::{self, Connection};

/// The channel the products and lenders triggers notify on.
pub const PRODUCTS_CHANGED: &str = "finmatch_products_changed";

/// How far back a lender's approvals and answers count towards its score.
const STATS_WINDOW: TimeDelta = TimeDelta::days(90);
/// How long lender records are reused before they are counted again. Counting scans months of
/// referrals; a score input that lags by seconds changes no guarantee.
const STATS_TTL: TimeDelta = TimeDelta::seconds(30);

/// One factor of a referral's score, as stored in `referrals.factors` and shown to callers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreFactor {
    pub name: String,
    pub value_bps: i32,
    pub weight_bps: i32,
    pub points: i32,
    pub note: String,
}

/// What the catalog keeps about a product beyond what matching reads.
#[derive(Debug, Clone)]
pub struct ProductInfo {
    pub name: String,
    pub lender_name: String,
    pub response_sla_hours: i32,
}

/// Every product, as matching sees it, at one version of the database.
#[derive(Debug, Default)]
pub struct Catalog {
    version: CatalogVersion,
    products: ProductCatalog,
    info: HashMap<Uuid, ProductInfo>,
}

impl Catalog {
    pub fn info(&self, product_id: Uuid) -> Option<&ProductInfo> {
        self.info.get(&product_id)
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// The products, compiled for the engine.
    pub fn products(&self) -> &ProductCatalog {
        &self.products
    }
}

/// The shared, swappable catalog of one replica.
#[derive(Debug, Default)]
pub struct ProductCache {
    current: RwLock<Arc<Catalog>>,
}

impl ProductCache {
    fn get(&self) -> Arc<Catalog> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set(&self, catalog: Arc<Catalog>) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = catalog;
    }
}

/// Reads every product and lender into a new catalog.
async fn load_catalog(conn: &mut Connection) -> Result<Catalog> {
    let version = storage::catalog::version(conn).await?;
    let rows = storage::catalog::products_with_lenders(conn).await?;
    let mut products = Vec::with_capacity(rows.len());
    let mut info = HashMap::with_capacity(rows.len());
    for (product, lender) in rows {
        let parsed = stored_product(&product)?;
        let regions = storage::lenders::strings(lender.region_codes)
            .iter()
            .filter_map(|code| RegionCode::parse(code).ok())
            .collect();
        products.push(MatchProduct::from_product(
            product.id,
            &parsed,
            lender.active,
            regions,
        ));
        info.insert(
            product.id,
            ProductInfo {
                name: product.name,
                lender_name: lender.name,
                response_sla_hours: product.response_sla_hours,
            },
        );
    }
    Ok(Catalog {
        version,
        products: ProductCatalog::new(products),
        info,
    })
}

impl App {
    /// The product catalog, reloaded first if the database has changed since it was built.
    pub(crate) async fn catalog(&self, conn: &mut Connection) -> Result<Arc<Catalog>> {
        let cached = self.products().get();
        let version = storage::catalog::version(conn).await?;
        if version == cached.version {
            return Ok(cached);
        }
        let fresh = Arc::new(load_catalog(conn).await?);
        self.products().set(fresh.clone());
        Ok(fresh)
    }

    /// Reloads the product catalog now.
    pub async fn reload_products(&self) -> Result<usize> {
        let mut conn = self.conn().await?;
        let fresh = Arc::new(load_catalog(&mut conn).await?);
        let count = fresh.len();
        self.products().set(fresh);
        Ok(count)
    }

    /// Keeps the catalog current: loads it, then reloads it on every `finmatch_products_changed`
    /// notification. Reconnects with backoff when the listening connection breaks; runs until
    /// the task is dropped.
    pub async fn watch_products(self, database_url: String) {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.listen_for_product_changes(&database_url).await {
                Ok(()) => tracing::warn!("product change listener ended; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %e, "product change listener failed; reconnecting")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn listen_for_product_changes(&self, database_url: &str) -> anyhow::Result<()> {
        let (client, mut connection) =
            tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        let driver = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "listening connection closed");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {PRODUCTS_CHANGED}"))
            .await?;
        // Changes made before LISTEN took effect are picked up by this load.
        let count = self.reload_products().await?;
        tracing::debug!(products = count, "product catalog loaded");
        while let Some(table) = rx.recv().await {
            // A burst of changes needs one reload.
            while rx.try_recv().is_ok() {}
            match self.reload_products().await {
                Ok(count) => tracing::debug!(%table, products = count, "product catalog reloaded"),
                Err(e) => tracing::warn!(error = %e, "reloading the product catalog failed"),
            }
        }
        driver.abort();
        drop(client);
        Ok(())
    }
}

/// Everything scoring needs besides the need and its enterprise: the catalog, and what has
/// happened so far (today's usage, every lender's record) read from SQL at `now`.
pub(crate) struct Market {
    pub catalog: Arc<Catalog>,
    pub activity: Activity,
    pub day: NaiveDate,
}

impl App {
    /// The catalog with what has happened so far, as of `now`: today's usage per product (read
    /// every time: capacity and the fair spreading of load depend on it) and every lender's
    /// record (reused for [`STATS_TTL`]: a soft scoring input over months of referrals).
    pub(crate) async fn market(
        &self,
        conn: &mut Connection,
        catalog: Arc<Catalog>,
        now: DateTime<Utc>,
    ) -> Result<Market> {
        let day = now.date_naive();
        let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        let mut activity = Activity {
            lender_stats: self.lender_stats(conn, now).await?.as_ref().clone(),
            ..Activity::default()
        };
        for usage in storage::referrals::usage_on(conn, day).await? {
            let referrals = count(i64::from(usage.referrals));
            activity
                .product_referrals_today
                .insert(usage.product_id, referrals);
            if let Some(product) = catalog.products.get(usage.product_id) {
                activity
                    .lender_stats
                    .entry(product.lender_id)
                    .or_default()
                    .referrals_today += referrals;
            }
        }
        Ok(Market {
            catalog,
            activity,
            day,
        })
    }

    /// Every lender's record over [`STATS_WINDOW`], without today's counts.
    async fn lender_stats(
        &self,
        conn: &mut Connection,
        now: DateTime<Utc>,
    ) -> Result<LenderRecords> {
        if let Some((at, stats)) = self.stats_cache().get()
            && (now - at).abs() < STATS_TTL
        {
            return Ok(stats);
        }
        let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
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
        let stats = Arc::new(stats);
        self.stats_cache().set(now, stats.clone());
        Ok(stats)
    }
}

/// Every lender's record, by lender id.
type LenderRecords = Arc<HashMap<Uuid, LenderStats>>;

/// Lender records computed at one instant, shared for a short while.
#[derive(Debug, Default)]
pub struct StatsCache {
    current: Mutex<Option<(DateTime<Utc>, LenderRecords)>>,
}

impl StatsCache {
    fn get(&self) -> Option<(DateTime<Utc>, LenderRecords)> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set(&self, at: DateTime<Utc>, stats: LenderRecords) {
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((at, stats));
    }
}

/// The enterprise as matching sees it, with the designations valid on `day`.
pub(crate) fn match_enterprise(enterprise: &Enterprise, day: NaiveDate) -> Result<MatchEnterprise> {
    let corrupt = |what: &str| {
        Error::Internal(anyhow::anyhow!(
            "enterprise {} has an invalid {what}",
            enterprise.id
        ))
    };
    Ok(MatchEnterprise {
        region_code: RegionCode::parse(&enterprise.region_code).map_err(|_| corrupt("region"))?,
        industry_code: IndustryCode::parse(&enterprise.industry_code)
            .map_err(|_| corrupt("industry"))?,
        size: enterprise.size,
        designations: enterprise
            .designations
            .iter()
            .filter(|d| d.granted_on <= day && d.expires_on.is_none_or(|end| end >= day))
            .filter_map(|d| ListCode::parse(&d.list_code).ok())
            .collect(),
    })
}

/// A stored need as matching sees it.
pub(crate) fn match_need(row: &NeedRow) -> Result<MatchNeed> {
    let corrupt =
        |what: &str| Error::Internal(anyhow::anyhow!("need {} has an invalid {what}", row.id));
    let collateral: CollateralSet = row
        .collateral
        .iter()
        .flatten()
        .map(|c| c.parse::<Collateral>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| corrupt("collateral"))?;
    Ok(MatchNeed {
        amount: AmountMinor::new(row.amount_minor).map_err(|_| corrupt("amount"))?,
        term: TermMonths::new(row.term_months).map_err(|_| corrupt("term"))?,
        collateral,
        max_rate: row
            .max_rate_bps
            .map(Bps::new)
            .transpose()
            .map_err(|_| corrupt("max rate"))?,
        consent_to_share: row.consent_to_share,
    })
}

/// The explanation of a candidate's score, one entry per factor.
pub(crate) fn score_factors(candidate: &Candidate<'_>) -> Vec<ScoreFactor> {
    candidate
        .factors()
        .map(|f| ScoreFactor {
            name: f.factor.as_str().to_owned(),
            value_bps: f.value_bps,
            weight_bps: f.weight_bps,
            points: f.points,
            note: candidate.factor_note(f.factor),
        })
        .collect()
}

/// How many referrals routing should add so the need has `target_open` open ones, within the
/// policy's limit of lenders per need.
pub(crate) fn wanted(
    policy: &RoutingPolicy,
    target_open: usize,
    open: usize,
    tried: usize,
) -> usize {
    target_open
        .saturating_sub(open)
        .min(policy.remaining_attempts(tried))
}

/// What [`route_onwards`] did to a need.
pub(crate) struct Onwards {
    /// The referrals created, best first.
    pub created: Vec<ReferralRow>,
    /// The need's status afterwards.
    pub to: NeedStatus,
    /// The need as stored afterwards.
    pub need: NeedRow,
}

/// The one step re-routing, the SLA sweeper and a decline share: tops a SUBMITTED or ROUTED need
/// (locked by the caller) up to `target_open` open referrals with the next best untried lenders,
/// then moves it to ROUTED when something was added, or UNMATCHED when it is left with no open
/// referral; otherwise it keeps its status.
pub(crate) async fn route_onwards(
    conn: &mut Connection,
    app: &App,
    catalog: Arc<Catalog>,
    need: &NeedRow,
    target_open: usize,
    now: DateTime<Utc>,
) -> Result<Onwards> {
    let from: NeedStatus = need.status.parse().map_err(|_| {
        Error::Internal(anyhow::anyhow!(
            "need {} has unknown status {:?}",
            need.id,
            need.status
        ))
    })?;
    let enterprise = super::enterprises::load(conn, need.enterprise_id).await?;
    let enterprise = match_enterprise(&enterprise, now.date_naive())?;
    let created = top_up(conn, app, catalog, need, &enterprise, target_open, now).await?;
    let to = if storage::referrals::count_open(conn, need.id).await? == 0 {
        NeedStatus::Unmatched
    } else if created.is_empty() {
        from
    } else {
        NeedStatus::Routed
    };
    let need = storage::needs::set_status(conn, need.id, to.as_str(), created.len() as i32).await?;
    Ok(Onwards { created, to, need })
}

/// Routes the need to the best eligible lenders it has not tried until it has `target_open`
/// open referrals: each referral PENDING with its SLA deadline and a CREATED event, the product's
/// daily capacity taken atomically in SQL (a product whose capacity ran out since the catalog
/// was read is skipped for the next candidate). The caller holds the need's row lock and sets
/// its status. Returns the referrals created, best first.
pub(crate) async fn top_up(
    conn: &mut Connection,
    app: &App,
    catalog: Arc<Catalog>,
    need: &NeedRow,
    enterprise: &MatchEnterprise,
    target_open: usize,
    now: DateTime<Utc>,
) -> Result<Vec<ReferralRow>> {
    let policy = app.policy();
    let tried = storage::referrals::tried_lenders(conn, need.id).await?;
    let open = storage::referrals::count_open(conn, need.id).await?;
    let want = wanted(policy, target_open, open as usize, tried.len());
    if want == 0 || !need.consent_to_share {
        return Ok(Vec::new());
    }
    let market = app.market(conn, catalog, now).await?;
    let match_need = match_need(need)?;
    let candidates = evaluate(
        &match_need,
        enterprise,
        market.catalog.products(),
        &market.activity,
        &tried,
        policy,
    );
    let mut created: Vec<ReferralRow> = Vec::with_capacity(want);
    for candidate in candidates.iter().take_while(|c| c.eligible()) {
        if created.len() == want {
            break;
        }
        if created.iter().any(|r| r.lender_id == candidate.lender_id()) {
            continue;
        }
        if !storage::referrals::take_capacity(conn, candidate.product_id(), market.day).await? {
            continue;
        }
        let sla_hours = market
            .catalog
            .info(candidate.product_id())
            .map_or(24, |info| info.response_sla_hours);
        let factors = serde_json::to_value(score_factors(candidate))
            .map_err(|e| Error::Internal(e.into()))?;
        let referral = storage::referrals::insert(
            conn,
            &NewReferral {
                need_id: need.id,
                lender_id: candidate.lender_id(),
                product_id: candidate.product_id(),
                status: "PENDING",
                score: candidate.score(),
                factors,
                sla_deadline: now + TimeDelta::hours(i64::from(sla_hours)),
            },
        )
        .await?;
        storage::referrals::insert_event(
            conn,
            &NewReferralEvent {
                referral_id: referral.id,
                lender_id: referral.lender_id,
                need_id: referral.need_id,
                kind: "CREATED",
                status: "PENDING",
                detail: serde_json::json!({
                    "product_id": referral.product_id,
                    "score": referral.score,
                    "sla_deadline": referral.sla_deadline,
                }),
            },
        )
        .await?;
        created.push(referral);
    }
    Ok(created)
}
