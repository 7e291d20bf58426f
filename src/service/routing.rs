//! Routing: the one routine that turns a need's ranked candidates into referrals (first
//! routing, re-routing, the SLA sweeper), and the conversions matching reads a need and an
//! enterprise through. The products come from [`super::catalog`], lenders' records and today's
//! usage from [`super::market`]. Neither is the authority for capacity or for whether a product
//! is active: both are checked in SQL when a referral is created ([`take_routes`]).

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::catalog::Catalog;
use super::enterprises::Enterprise;
use super::{App, Error, Result};
use crate::domain::{
    AmountMinor, Bps, CollateralSet, IndustryCode, ListCode, NeedStatus, ReferralEventKind,
    ReferralStatus, RegionCode, TermMonths,
};
use crate::matching::{Candidate, MatchEnterprise, MatchNeed, RoutingPolicy, evaluate};
use crate::storage::needs::NeedRow;
use crate::storage::referrals::{NewReferral, NewReferralEvent, ReferralRow};
use crate::storage::{self, Connection};

/// One factor of a referral's score, as stored in `referrals.factors` and shown to callers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreFactor {
    pub name: String,
    pub value_bps: i32,
    pub weight_bps: i32,
    pub points: i32,
    pub note: String,
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
                id: crate::domain::ids::child_id(need.id),
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
