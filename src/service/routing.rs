//! Routing: the in-memory product catalog and the one routine that turns a need's ranked
//! candidates into referrals (first routing, re-routing, the SLA sweeper).
//!
//! The catalog is a cache: it is reloaded when `finmatch_products_changed` is notified (from
//! any replica), and a change made through this replica marks it stale so the next caller
//! reloads it first: it never serves products older than the caller's own committed changes.
//! While the listener is not connected (start-up, a broken connection) every caller checks the
//! catalog's version in the database instead, so a missed notification can never leave it stale.
//! It is never the authority for capacity or for whether a product is active: both are checked
//! in SQL when a referral is created.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::enterprises::Enterprise;
use super::lenders::stored_product;
use super::market::ENTERPRISES_CHANGED;
use super::{App, Error, Result};
use crate::domain::{
    AmountMinor, Bps, CollateralSet, IndustryCode, ListCode, NeedStatus, ReferralEventKind,
    ReferralStatus, RegionCode, TermMonths,
};
use crate::matching::{
    Candidate, MatchEnterprise, MatchNeed, MatchProduct, ProductCatalog, RoutingPolicy, evaluate,
};
use crate::storage::catalog::CatalogVersion;
use crate::storage::listen::ListenEvent;
use crate::storage::needs::NeedRow;
use crate::storage::referrals::{NewReferral, NewReferralEvent, ReferralRow};
use crate::storage::{self, Connection};

/// The pause between two tries of a catalog reload that failed, and how many tries a change
/// gets before the watcher leaves the catalog stale (checked against the database per call).
const RELOAD_RETRY: Duration = Duration::from_secs(1);
const RELOAD_TRIES: u32 = 5;

/// The `application_name` of the connection listening for product changes.
pub const PRODUCT_LISTENER_NAME: &str = "finmatch product listener";

/// The channel the products and lenders triggers notify on.
pub const PRODUCTS_CHANGED: &str = "finmatch_products_changed";

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
    /// Set by a change made through this replica: the next caller reloads.
    stale: AtomicBool,
    /// True while the change listener is connected and has loaded the catalog since.
    listening: AtomicBool,
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

    /// Marks the catalog stale after a change committed through this replica.
    pub(crate) fn invalidate(&self) {
        self.stale.store(true, Ordering::SeqCst);
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
            .filter_map(|code| RegionCode::parse_area(code).ok())
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
    /// The product catalog: the cached one while the change listener is connected and nothing
    /// changed through this replica since; otherwise checked against the database's version
    /// and reloaded first if it changed.
    pub(crate) async fn catalog(&self, conn: &mut Connection) -> Result<Arc<Catalog>> {
        let cache = self.products();
        // Cleared before the check, so a change committed during a reload marks it again.
        let stale = cache.stale.swap(false, Ordering::SeqCst);
        let cached = cache.get();
        if !stale && self.listening() {
            return Ok(cached);
        }
        let version = storage::catalog::version(conn).await?;
        if version == cached.version {
            return Ok(cached);
        }
        let fresh = Arc::new(load_catalog(conn).await?);
        cache.set(fresh.clone());
        Ok(fresh)
    }

    /// Like [`App::catalog`], taking a connection only when the catalog must be checked.
    pub(crate) async fn catalog_now(&self) -> Result<Arc<Catalog>> {
        let cache = self.products();
        if !cache.stale.load(Ordering::SeqCst) && self.listening() {
            return Ok(cache.get());
        }
        let mut conn = self.conn().await?;
        self.catalog(&mut conn).await
    }

    /// True while this replica's change listener is connected: the caches it keeps current
    /// (catalog, enterprises) may be trusted without asking the database.
    pub(crate) fn listening(&self) -> bool {
        self.products().listening.load(Ordering::SeqCst)
    }

    /// Whether this replica answers from its cached catalog (and enterprises): its product
    /// listener is live and the catalog was reloaded since it started listening.
    pub fn catalog_trusted(&self) -> bool {
        self.listening()
    }

    /// Reloads the product catalog now.
    pub async fn reload_products(&self) -> Result<usize> {
        let mut conn = self.conn().await?;
        let fresh = Arc::new(load_catalog(&mut conn).await?);
        let count = fresh.len();
        self.products().set(fresh);
        Ok(count)
    }

    /// Keeps the catalog and the enterprise cache current through the one LISTEN mechanism,
    /// `storage::listen`: once listening, clears the enterprise cache and loads the catalog;
    /// then reloads the catalog on `finmatch_products_changed` (once per burst) and drops the
    /// enterprises named by `finmatch_enterprises_changed`. While the listening connection is
    /// lost (until it listens again and the catalog is reloaded) the caches are not trusted and
    /// every call checks the database's catalog version. Runs until the task is dropped.
    pub async fn watch_products(self, database_url: String) {
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let channels = [PRODUCTS_CHANGED, ENTERPRISES_CHANGED];
        let listener =
            storage::listen::listen(&database_url, PRODUCT_LISTENER_NAME, &channels, |event| {
                let _ = tx.send(event);
            });
        let apply = async {
            // Listening, but the catalog not reloaded since: not trusted yet.
            let mut trust_pending = false;
            // A change (or a new connection) the catalog has not been reloaded for; a reload
            // that gave up is owed until one succeeds, and nothing is trusted meanwhile.
            let mut reload_owed = false;
            while let Some(first) = events.recv().await {
                let mut next = Some(first);
                while let Some(event) = next.take() {
                    match event {
                        ListenEvent::Listening => {
                            // Changes made before LISTEN took effect are picked up by this clear
                            // and the reload below.
                            self.enterprise_cache().clear();
                            trust_pending = true;
                            reload_owed = true;
                        }
                        ListenEvent::Lost => {
                            self.products().listening.store(false, Ordering::SeqCst);
                            trust_pending = false;
                        }
                        ListenEvent::Notification { channel, payload } => {
                            if channel == ENTERPRISES_CHANGED {
                                match payload.parse::<Uuid>() {
                                    Ok(id) => self.enterprise_cache().evict(id),
                                    Err(_) => self.enterprise_cache().clear(),
                                }
                            } else {
                                reload_owed = true;
                            }
                        }
                    }
                    next = events.try_recv().ok();
                }
                if reload_owed {
                    if !self.reload_products_until_done().await {
                        continue;
                    }
                    reload_owed = false;
                }
                // Trusted only once nothing that arrived during the reload is left to apply.
                if trust_pending && events.is_empty() {
                    self.products().listening.store(true, Ordering::SeqCst);
                    trust_pending = false;
                    tracing::debug!("product catalog trusted: listening for changes");
                }
            }
        };
        tokio::select! {
            _ = listener => {}
            () = apply => {}
        }
    }

    /// Reloads the catalog, trying again every [`RELOAD_RETRY`] while that fails; false (the
    /// catalog not trusted and marked stale, so calls check the database) when it gave up.
    async fn reload_products_until_done(&self) -> bool {
        for _ in 0..RELOAD_TRIES {
            match self.reload_products().await {
                Ok(count) => {
                    tracing::debug!(products = count, "product catalog reloaded");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reloading the product catalog failed");
                    tokio::time::sleep(RELOAD_RETRY).await;
                }
            }
        }
        self.products().listening.store(false, Ordering::SeqCst);
        self.products().stale.store(true, Ordering::SeqCst);
        false
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
    let collateral: CollateralSet = row.collateral.iter().flatten().copied().collect();
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
    let from = need.status;
    let enterprise = super::enterprises::load(conn, need.enterprise_id).await?;
    let enterprise = match_enterprise(&enterprise, app.calendar().day(now))?;
    let created = top_up(conn, app, catalog, need, &enterprise, target_open, now).await?;
    let to = if storage::referrals::count_open(conn, need.id).await? == 0 {
        NeedStatus::Unmatched
    } else if created.is_empty() {
        from
    } else {
        NeedStatus::Routed
    };
    let need = storage::needs::set_status(conn, need.id, to, created.len() as i32).await?;
    Ok(Onwards { created, to, need })
}

/// Routes the need to the best eligible lenders it has not tried until it has `target_open`
/// open referrals: each referral PENDING with its SLA deadline and a CREATED event, the products'
/// daily capacity taken in SQL by [`take_routes`]. The caller holds the need's row lock and sets
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
    let routes = take_routes(conn, &candidates, want, market.day).await?;
    let counted: Vec<(Uuid, Uuid)> = routes
        .iter()
        .map(|c| (c.product_id(), c.lender_id()))
        .collect();
    app.activity_cache().record(market.day, &counted);
    let mut created: Vec<ReferralRow> = Vec::with_capacity(routes.len());
    for candidate in &routes {
        let factors = serde_json::to_value(score_factors(candidate))
            .map_err(|e| Error::Internal(e.into()))?;
        let referral = storage::referrals::insert(
            conn,
            &NewReferral {
                need_id: need.id,
                lender_id: candidate.lender_id(),
                product_id: candidate.product_id(),
                status: ReferralStatus::Pending,
                score: candidate.score(),
                factors,
                sla_deadline: sla_deadline(&market.catalog, candidate, now),
            },
        )
        .await?;
        storage::referrals::insert_event(
            conn,
            &NewReferralEvent {
                referral_id: referral.id,
                lender_id: referral.lender_id,
                need_id: referral.need_id,
                kind: ReferralEventKind::Created,
                status: ReferralStatus::Pending,
                detail: created_detail(referral.product_id, referral.score, referral.sla_deadline),
            },
        )
        .await?;
        created.push(referral);
    }
    Ok(created)
}

/// When a referral routed now to `candidate`'s product must be decided by.
pub(crate) fn sla_deadline(
    catalog: &Catalog,
    candidate: &Candidate<'_>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let sla_hours = catalog
        .info(candidate.product_id())
        .map_or(24, |info| info.response_sla_hours);
    now + TimeDelta::hours(i64::from(sla_hours))
}

/// The detail of a referral's CREATED event.
pub(crate) fn created_detail(
    product_id: Uuid,
    score: i32,
    sla_deadline: DateTime<Utc>,
) -> serde_json::Value {
    serde_json::json!({
        "product_id": product_id,
        "score": score,
        "sla_deadline": sla_deadline,
    })
}

/// Picks up to `want` of the eligible `candidates` (best first, one product per lender) and takes
/// their products' daily capacity in SQL, in the caller's transaction. A product whose capacity
/// ran out (or that was deactivated) since the catalog and usage were read is passed over for the
/// next best candidate. Returns the routes taken, best first.
///
/// Every statement locks its usage rows in product id order, so concurrent routings do not
/// deadlock on them; only the rare replacement round takes a lock out of that order, and a
/// deadlock there is retried like any conflict.
pub(crate) async fn take_routes<'c, 'a>(
    conn: &mut Connection,
    candidates: &'c [Candidate<'a>],
    want: usize,
    day: NaiveDate,
) -> Result<Vec<&'c Candidate<'a>>> {
    let mut chosen: Vec<&Candidate<'a>> = Vec::with_capacity(want);
    let mut passed_over: Vec<Uuid> = Vec::new();
    loop {
        let round: Vec<&Candidate<'a>> = candidates
            .iter()
            .take_while(|c| c.eligible())
            .filter(|c| !passed_over.contains(&c.product_id()))
            .filter(|c| !chosen.iter().any(|t| t.lender_id() == c.lender_id()))
            .fold(Vec::new(), |mut round, c| {
                if chosen.len() + round.len() < want
                    && !round
                        .iter()
                        .any(|r: &&Candidate<'a>| r.lender_id() == c.lender_id())
                {
                    round.push(c);
                }
                round
            });
        if round.is_empty() {
            break;
        }
        let ids: Vec<Uuid> = round.iter().map(|c| c.product_id()).collect();
        let taken = storage::referrals::take_capacity(conn, &ids, day).await?;
        for candidate in round {
            if taken.contains(&candidate.product_id()) {
                chosen.push(candidate);
            } else {
                passed_over.push(candidate.product_id());
            }
        }
        if chosen.len() == want {
            break;
        }
    }
    // Best first, as ranked.
    chosen.sort_by_key(|c| {
        candidates
            .iter()
            .position(|o| o.product_id() == c.product_id())
    });
    Ok(chosen)
}
