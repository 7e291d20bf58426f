//! Financing needs: submission (with routing), import, preview, reading, withdrawal,
//! re-routing, and the SLA sweeper.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use diesel_async::AsyncConnection as _;
use uuid::Uuid;

use super::enterprises;
use super::paging::{Cursor, Page, PageRequest};
use super::routing::{
    self, ScoreFactor, match_enterprise, match_need, route_onwards, score_factors, top_up,
};
use super::{App, Error, Idempotency, Principal, Result, audit, error, reason};
use crate::domain::{
    Channel, Collateral, DeclineReason, IndustryPrefix, NeedStatus, NewNeed, Purpose,
    ReferralStatus, RegionPrefix, Role,
};
use crate::matching::{IneligibleReason, evaluate, select_routes};
use crate::storage::needs::{NeedFilter, NeedRow};
use crate::storage::referrals::{NewReferralEvent, ReferralRow};
use crate::storage::{self, Connection, Failure};

/// Who may work with needs.
const INTAKE: &[Role] = &[Role::Operator, Role::Portal];

pub const RPC_SUBMIT: &str = "finmatch.v1.FinancingService/SubmitNeed";
const RPC_WITHDRAW: &str = "finmatch.v1.FinancingService/WithdrawNeed";
const RPC_REROUTE: &str = "finmatch.v1.FinancingService/RerouteNeed";
/// Audit "rpc" of the background SLA sweeper.
const SWEEPER: &str = "finmatch.sweeper";

/// Transactions retried on a serialization conflict or deadlock, at most this often.
const TRIES: u32 = 3;
/// Items written per transaction by ImportNeeds.
pub const IMPORT_BATCH: usize = 100;
/// Rows a sweeper transaction claims at once.
const SWEEP_BATCH: i64 = 100;

/// A need as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub id: Uuid,
    pub enterprise_id: Uuid,
    pub amount_minor: i64,
    pub term_months: i32,
    pub purpose: Purpose,
    pub collateral: Vec<Collateral>,
    pub max_rate_bps: Option<i32>,
    pub needed_by: NaiveDate,
    pub consent_to_share: bool,
    pub channel: Channel,
    pub note: String,
    pub status: NeedStatus,
    pub funded_minor: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A referral as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referral {
    pub id: Uuid,
    pub need_id: Uuid,
    pub lender_id: Uuid,
    pub product_id: Uuid,
    pub status: ReferralStatus,
    pub score: i32,
    pub factors: Vec<ScoreFactor>,
    pub sla_deadline: DateTime<Utc>,
    pub decline_reason: Option<DeclineReason>,
    pub decline_note: Option<String>,
    pub info_request: Option<String>,
    pub approved_amount_minor: Option<i64>,
    pub approved_rate_bps: Option<i32>,
    pub approved_term_months: Option<i32>,
    /// Sum of the disbursements recorded against the referral.
    pub disbursed_minor: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A need with referrals (all of them, or those one call created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedWithReferrals {
    pub need: Need,
    pub referrals: Vec<Referral>,
}

/// What a call with an idempotency key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// Stored now.
    Created(NeedWithReferrals),
    /// An earlier call with the same key and request stored it; its saved response.
    Replayed(Vec<u8>),
}

/// Encodes a response for replay; supplied by the transport, which owns the wire format.
pub type Encoder<'a> = &'a (dyn Fn(&NeedWithReferrals) -> Vec<u8> + Send + Sync);

/// One ImportNeeds item, validated by the transport.
#[derive(Debug, Clone)]
pub struct ImportItem {
    pub index: usize,
    pub idempotency: Idempotency,
    pub need: NewNeed,
}

/// The result of one ImportNeeds item.
#[derive(Debug)]
pub enum ImportOutcome {
    Accepted,
    Replayed,
    Rejected(Error),
}

/// What to preview.
#[derive(Debug, Clone)]
pub enum PreviewSubject {
    Stored(Uuid),
    Unsaved(NewNeed),
}

/// One product scored against a need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchCandidate {
    pub lender_id: Uuid,
    pub product_id: Uuid,
    pub lender_name: String,
    pub product_name: String,
    pub eligible: bool,
    pub score: i32,
    pub factors: Vec<ScoreFactor>,
    /// Every failed filter with the figures compared.
    pub reasons: Vec<(IneligibleReason, String)>,
    /// Would be routed to now.
    pub selected: bool,
}

/// Filters of [`App::list_needs`].
#[derive(Debug, Clone, Default)]
pub struct NeedQuery {
    pub statuses: Vec<NeedStatus>,
    pub enterprise_id: Option<Uuid>,
    pub region_prefix: Option<RegionPrefix>,
    pub industry_prefix: Option<IndustryPrefix>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Referrals marked EXPIRED (deadline passed without a decision).
    pub expired_referrals: usize,
    /// Referrals created to replace them.
    pub rerouted_referrals: usize,
    /// Needs left with no open referral and no lender to try.
    pub unmatched_needs: usize,
    /// Needs marked EXPIRED (needed_by passed).
    pub expired_needs: usize,
}

impl App {
    /// Stores, scores and routes a need in one transaction (see FinancingService.SubmitNeed).
    #[tracing::instrument(skip_all, fields(enterprise_id = %need.enterprise_id()))]
    pub async fn submit_need(
        &self,
        who: &Principal,
        idempotency: Idempotency,
        need: NewNeed,
        encode: Encoder<'_>,
    ) -> Result<Submission> {
        who.require("SubmitNeed", INTAKE)?;
        let submission = error::retry_conflicts(TRIES, || {
            let (who, idempotency, need) = (who.clone(), idempotency.clone(), need.clone());
            async move {
                let mut conn = self.conn().await?;
                let catalog = self.catalog(&mut conn).await?;
                conn.transaction(async move |conn| {
                    submit_in(conn, self, catalog, &who, &idempotency, &need, encode).await
                })
                .await
            }
        })
        .await?;
        if let Submission::Created(stored) = &submission {
            tracing::info!(
                need_id = %stored.need.id,
                referrals = stored.referrals.len(),
                "need submitted"
            );
        }
        Ok(submission)
    }

    /// Stores a batch of ImportNeeds items in one transaction, each in its own savepoint so a
    /// rejected item leaves the others in place. Outcomes are in item order. Fails as a whole
    /// only when the database is unavailable or on an internal error.
    #[tracing::instrument(skip_all, fields(items = items.len()))]
    pub async fn import_needs(
        &self,
        who: &Principal,
        items: Vec<ImportItem>,
        encode: Encoder<'_>,
    ) -> Result<Vec<ImportOutcome>> {
        who.require("ImportNeeds", INTAKE)?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let items = &items;
        error::retry_conflicts(TRIES, || {
            let who = who.clone();
            async move {
                let mut conn = self.conn().await?;
                let catalog = self.catalog(&mut conn).await?;
                conn.transaction(async move |conn| {
                    let mut outcomes = Vec::with_capacity(items.len());
                    for item in items {
                        let outcome = import_one(conn, self, &catalog, &who, item, encode).await?;
                        outcomes.push(outcome);
                    }
                    Ok::<_, Error>(outcomes)
                })
                .await
            }
        })
        .await
    }

    /// The full ranked candidate list for a stored or unsaved need; changes nothing.
    pub async fn preview_matches(
        &self,
        who: &Principal,
        subject: PreviewSubject,
    ) -> Result<Vec<MatchCandidate>> {
        who.require("PreviewMatches", INTAKE)?;
        let now = Utc::now();
        let mut conn = self.conn().await?;
        let catalog = self.catalog(&mut conn).await?;
        let policy = self.policy();
        let (need, enterprise_id, tried, open) = match subject {
            PreviewSubject::Stored(id) => {
                let row = storage::needs::find(&mut conn, id)
                    .await?
                    .ok_or_else(|| Error::not_found("need", id))?;
                let tried = storage::referrals::tried_lenders(&mut conn, id).await?;
                let open = storage::referrals::count_open(&mut conn, id).await? as usize;
                (match_need(&row)?, row.enterprise_id, tried, open)
            }
            PreviewSubject::Unsaved(need) => (
                crate::matching::MatchNeed::from(&need),
                need.enterprise_id(),
                Vec::new(),
                0,
            ),
        };
        let enterprise = enterprises::load(&mut conn, enterprise_id).await?;
        let enterprise = match_enterprise(&enterprise, now.date_naive())?;
        let market = self.market(&mut conn, catalog, now).await?;
        let candidates = evaluate(
            &need,
            &enterprise,
            market.catalog.products(),
            &market.activity,
            &tried,
            policy,
        );
        let k = routing::wanted(policy, policy.top_k, open, tried.len());
        let selected: Vec<Uuid> = select_routes(&candidates, k)
            .iter()
            .map(|c| c.product_id())
            .collect();
        let mut out: Vec<MatchCandidate> = candidates
            .iter()
            .map(|c| {
                let info = market.catalog.info(c.product_id());
                MatchCandidate {
                    lender_id: c.lender_id(),
                    product_id: c.product_id(),
                    lender_name: info.map(|i| i.lender_name.clone()).unwrap_or_default(),
                    product_name: info.map(|i| i.name.clone()).unwrap_or_default(),
                    eligible: c.eligible(),
                    score: c.score(),
                    factors: score_factors(c),
                    reasons: c.reasons().map(|r| (r, c.reason_message(r))).collect(),
                    selected: selected.contains(&c.product_id()),
                }
            })
            .collect();
        // Eligible products keep the routing order; ineligible ones follow by product id.
        out.sort_by_key(|c| (!c.eligible, (!c.eligible).then_some(c.product_id)));
        Ok(out)
    }

    /// A need with all its referrals, oldest first.
    pub async fn get_need(&self, who: &Principal, id: Uuid) -> Result<NeedWithReferrals> {
        who.require("GetNeed", INTAKE)?;
        let mut conn = self.conn().await?;
        let row = storage::needs::find(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found("need", id))?;
        with_referrals(&mut conn, row).await
    }

    pub async fn list_needs(
        &self,
        who: &Principal,
        query: NeedQuery,
        page: PageRequest,
    ) -> Result<Page<Need>> {
        who.require("ListNeeds", INTAKE)?;
        let mut conn = self.conn().await?;
        let filter = NeedFilter {
            statuses: query.statuses.iter().map(|s| s.as_str()).collect(),
            enterprise_id: query.enterprise_id,
            region_prefix: query.region_prefix.as_ref().map(|p| p.as_str()),
            industry_prefix: query.industry_prefix.as_ref().map(|p| p.as_str()),
            created_from: query.created_from,
            created_to: query.created_to,
        };
        let rows = storage::needs::list(
            &mut conn,
            &filter,
            page.after.map(|c| (c.created_at, c.id)),
            page.fetch_limit(),
        )
        .await?;
        let page = page.page(rows, |row| Cursor {
            created_at: row.created_at,
            id: row.id,
        });
        Ok(Page {
            items: page.items.into_iter().map(to_need).collect::<Result<_>>()?,
            next: page.next,
        })
    }

    /// Withdraws a need: WITHDRAWN, its open referrals CANCELLED with events. Withdrawing a
    /// withdrawn need returns it unchanged.
    #[tracing::instrument(skip(self, who, reason))]
    pub async fn withdraw_need(
        &self,
        who: &Principal,
        id: Uuid,
        reason: String,
    ) -> Result<NeedWithReferrals> {
        who.require("WithdrawNeed", INTAKE)?;
        error::retry_conflicts(TRIES, || {
            let (who, reason) = (who.clone(), reason.clone());
            async move {
                self.conn()
                    .await?
                    .transaction(async move |conn| {
                        let row = storage::needs::find_for_update(conn, id)
                            .await?
                            .ok_or_else(|| Error::not_found("need", id))?;
                        let status = need_status(&row)?;
                        if status == NeedStatus::Withdrawn {
                            return with_referrals(conn, row).await;
                        }
                        if !status.can_transition(NeedStatus::Withdrawn) {
                            return Err(illegal_transition(id, status, NeedStatus::Withdrawn));
                        }
                        let cancelled = cancel_open_referrals(conn, id, "need withdrawn").await?;
                        let row =
                            storage::needs::set_status(conn, id, NeedStatus::Withdrawn.as_str(), 0)
                                .await?;
                        audit::record(
                            conn,
                            Some(&who),
                            RPC_WITHDRAW,
                            "need",
                            id,
                            serde_json::json!({
                                "from": status.as_str(),
                                "reason": reason,
                                "cancelled_referrals": cancelled,
                            }),
                        )
                        .await?;
                        with_referrals(conn, row).await
                    })
                    .await
            }
        })
        .await
    }

    /// Routes a SUBMITTED, ROUTED or UNMATCHED need now to the next best untried lenders until
    /// it has `target_open` open referrals (default: the policy's K). Returns the need and the
    /// referrals created by this call.
    #[tracing::instrument(skip(self, who))]
    pub async fn reroute_need(
        &self,
        who: &Principal,
        id: Uuid,
        target_open: Option<usize>,
    ) -> Result<NeedWithReferrals> {
        who.require("RerouteNeed", &[Role::Operator])?;
        let target = target_open.unwrap_or(self.policy().top_k);
        error::retry_conflicts(TRIES, || {
            let who = who.clone();
            async move {
                let mut conn = self.conn().await?;
                let catalog = self.catalog(&mut conn).await?;
                conn.transaction(async move |conn| {
                    let now = Utc::now();
                    let row = storage::needs::find_for_update(conn, id)
                        .await?
                        .ok_or_else(|| Error::not_found("need", id))?;
                    let status = need_status(&row)?;
                    // UNMATCHED is final (DESIGN §1: states only move forward); a need that
                    // new lenders could serve is submitted again.
                    if !matches!(status, NeedStatus::Submitted | NeedStatus::Routed) {
                        return Err(illegal_transition(id, status, NeedStatus::Routed));
                    }
                    if !row.consent_to_share {
                        return Err(Error::precondition(
                            reason::NO_CONSENT,
                            format!(
                                "need {id} has no consent_to_share; it may not be routed to lenders"
                            ),
                        )
                        .with_metadata("need_id", id));
                    }
                    let routing::Onwards {
                        created,
                        to: next,
                        need: row,
                        ..
                    } = route_onwards(conn, self, catalog, &row, target, now).await?;
                    audit::record(
                        conn,
                        Some(&who),
                        RPC_REROUTE,
                        "need",
                        id,
                        serde_json::json!({
                            "from": status.as_str(),
                            "to": next.as_str(),
                            "target_open_referrals": target,
                            "referrals": created.iter().map(|r| r.id).collect::<Vec<_>>(),
                        }),
                    )
                    .await?;
                    Ok(NeedWithReferrals {
                        need: to_need(row)?,
                        referrals: created
                            .into_iter()
                            .map(to_referral)
                            .collect::<Result<_>>()?,
                    })
                })
                .await
            }
        })
        .await
    }

    /// One pass of the SLA sweeper at `now`: expires open needs whose `needed_by` is before
    /// `now`'s date (cancelling their open referrals), then expires undecided referrals past
    /// their deadline and routes their needs to the next best untried lenders (up to the
    /// policy's limit; with none left and nothing open the need becomes UNMATCHED).
    ///
    /// Work is claimed by locking needs with `FOR NO KEY UPDATE SKIP LOCKED`, so replicas
    /// sweeping at once never handle one referral or need twice, and a need some call is
    /// changing right now is left for the next pass. Overdue referrals are handled one need per
    /// transaction, locking the need before its referrals like every other use case (see the
    /// lock order in `service`).
    #[tracing::instrument(skip(self))]
    pub async fn sweep_once(&self, now: DateTime<Utc>) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        // Needs first: a need past needed_by is closed, not routed again.
        loop {
            let expired = error::retry_conflicts(TRIES, || async {
                self.conn()
                    .await?
                    .transaction(async move |conn| expire_needs(conn, now.date_naive()).await)
                    .await
            })
            .await?;
            report.expired_needs += expired;
            if expired < SWEEP_BATCH as usize {
                break;
            }
        }
        loop {
            let (candidates, catalog) = {
                let mut conn = self.conn().await?;
                let candidates =
                    storage::referrals::needs_with_overdue(&mut conn, now, SWEEP_BATCH).await?;
                if candidates.is_empty() {
                    break;
                }
                (candidates, self.catalog(&mut conn).await?)
            };
            let mut handled = 0;
            for &need_id in &candidates {
                let batch = error::retry_conflicts(TRIES, || {
                    let catalog = catalog.clone();
                    async move {
                        self.conn()
                            .await?
                            .transaction(async move |conn| {
                                expire_referrals(conn, self, catalog, need_id, now).await
                            })
                            .await
                    }
                })
                .await?;
                if let Some(batch) = batch {
                    handled += 1;
                    report.expired_referrals += batch.expired_referrals;
                    report.rerouted_referrals += batch.rerouted_referrals;
                    report.unmatched_needs += batch.unmatched_needs;
                }
            }
            // Handled needs leave the candidates; the rest are held by other transactions,
            // which finish them or leave them to the next pass.
            if candidates.len() < SWEEP_BATCH as usize || handled == 0 {
                break;
            }
        }
        if report != SweepReport::default() {
            tracing::info!(?report, "SLA sweep");
        }
        Ok(report)
    }

    /// Runs [`App::sweep_once`] every `period` until the task is dropped.
    pub async fn run_sweeper(self, period: std::time::Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sweep_once(Utc::now()).await {
                tracing::warn!(error = %e, "SLA sweep failed; retrying next period");
            }
        }
    }
}

async fn submit_in(
    conn: &mut Connection,
    app: &App,
    catalog: std::sync::Arc<routing::Catalog>,
    who: &Principal,
    idempotency: &Idempotency,
    need: &NewNeed,
    encode: Encoder<'_>,
) -> Result<Submission> {
    if let Some(saved) = audit::replayed(conn, who, RPC_SUBMIT, idempotency).await? {
        return Ok(Submission::Replayed(saved));
    }
    let now = Utc::now();
    let enterprise = enterprises::load(conn, need.enterprise_id()).await?;
    if let Some(open) =
        storage::needs::find_open(conn, need.enterprise_id(), need.purpose().as_str()).await?
    {
        return Err(duplicate_open_need(&open));
    }
    let collateral: Vec<&str> = need.collateral().iter().map(|c| c.as_str()).collect();
    let inserted = storage::needs::insert(
        conn,
        &storage::needs::NewNeed {
            enterprise_id: need.enterprise_id(),
            amount_minor: need.amount().get(),
            term_months: need.term().get(),
            purpose: need.purpose().as_str(),
            collateral,
            max_rate_bps: need.max_rate().map(|r| r.get()),
            needed_by: need.needed_by(),
            consent_to_share: need.consent_to_share(),
            channel: need.channel().as_str(),
            note: need.note().as_str(),
            status: NeedStatus::Submitted.as_str(),
            idempotency_key: Some(&idempotency.key),
            created_by: who.credential_id,
        },
    )
    .await;
    let row = match inserted {
        // A concurrent twin (same key) or a concurrent need of the same enterprise and purpose
        // committed first: run again, to replay the twin or name the open need.
        Err(e)
            if matches!(
                storage::classify(&e),
                Failure::UniqueViolation(Some(ref c))
                    if c == storage::needs::ONE_OPEN_PER_PURPOSE || c == storage::needs::ONE_NEED_PER_KEY
            ) =>
        {
            return Err(Error::Internal(anyhow::Error::new(error::Conflict)));
        }
        other => other?,
    };
    let mut referrals = Vec::new();
    let row = if row.consent_to_share {
        let enterprise = match_enterprise(&enterprise, now.date_naive())?;
        referrals = top_up(
            conn,
            app,
            catalog,
            &row,
            &enterprise,
            app.policy().top_k,
            now,
        )
        .await?;
        let status = if referrals.is_empty() {
            NeedStatus::Unmatched
        } else {
            NeedStatus::Routed
        };
        storage::needs::set_status(conn, row.id, status.as_str(), referrals.len() as i32).await?
    } else {
        row
    };
    audit::record(
        conn,
        Some(who),
        RPC_SUBMIT,
        "need",
        row.id,
        serde_json::json!({
            "enterprise_id": row.enterprise_id,
            "status": row.status,
            "idempotency_key": idempotency.key,
            "referrals": referrals.iter().map(|r| r.id).collect::<Vec<_>>(),
        }),
    )
    .await?;
    let stored = NeedWithReferrals {
        need: to_need(row)?,
        referrals: referrals
            .into_iter()
            .map(to_referral)
            .collect::<Result<_>>()?,
    };
    audit::remember(conn, who, RPC_SUBMIT, idempotency, &encode(&stored)).await?;
    Ok(Submission::Created(stored))
}

/// One import item in its own savepoint: a rejection rolls back only the item. A conflict with
/// a concurrent writer is retried once on the spot, where it replays or names the open need.
async fn import_one(
    conn: &mut Connection,
    app: &App,
    catalog: &std::sync::Arc<routing::Catalog>,
    who: &Principal,
    item: &ImportItem,
    encode: Encoder<'_>,
) -> Result<ImportOutcome> {
    let mut tries = 2;
    loop {
        tries -= 1;
        let outcome = conn
            .transaction(async |conn| {
                submit_in(
                    conn,
                    app,
                    catalog.clone(),
                    who,
                    &item.idempotency,
                    &item.need,
                    encode,
                )
                .await
            })
            .await;
        return match outcome {
            Ok(Submission::Created(_)) => Ok(ImportOutcome::Accepted),
            Ok(Submission::Replayed(_)) => Ok(ImportOutcome::Replayed),
            Err(e) if e.is_retryable_conflict() && tries > 0 => continue,
            Err(e @ (Error::Unavailable | Error::Internal(_))) => Err(e),
            Err(e) => Ok(ImportOutcome::Rejected(e)),
        };
    }
}

/// Expires the need's overdue referrals and re-routes the need, if no other transaction holds
/// it: the need is locked first (skipped when held), then its overdue referrals (checked again
/// under the lock, so a referral answered or expired meanwhile is left alone). `None` when the
/// need was held by another transaction or nothing of it is overdue any more.
async fn expire_referrals(
    conn: &mut Connection,
    app: &App,
    catalog: std::sync::Arc<routing::Catalog>,
    need_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<SweepReport>> {
    let Some(row) = storage::needs::try_lock(conn, need_id).await? else {
        return Ok(None);
    };
    let claimed = storage::referrals::claim_overdue(conn, need_id, now).await?;
    if claimed.is_empty() {
        return Ok(None);
    }
    let mut report = SweepReport::default();
    let ids: Vec<Uuid> = claimed.iter().map(|r| r.id).collect();
    let expired =
        storage::referrals::set_status(conn, &ids, ReferralStatus::Expired.as_str()).await?;
    for referral in &expired {
        storage::referrals::insert_event(
            conn,
            &NewReferralEvent {
                referral_id: referral.id,
                lender_id: referral.lender_id,
                need_id: referral.need_id,
                kind: "EXPIRED",
                status: ReferralStatus::Expired.as_str(),
                detail: serde_json::json!({ "sla_deadline": referral.sla_deadline }),
            },
        )
        .await?;
    }
    report.expired_referrals = expired.len();
    let status = need_status(&row)?;
    let mut created = Vec::new();
    let mut next = status;
    if matches!(status, NeedStatus::Submitted | NeedStatus::Routed) {
        let onwards = route_onwards(conn, app, catalog, &row, app.policy().top_k, now).await?;
        if onwards.to == NeedStatus::Unmatched {
            report.unmatched_needs += 1;
        }
        (created, next) = (onwards.created, onwards.to);
    }
    report.rerouted_referrals += created.len();
    audit::record(
        conn,
        None,
        SWEEPER,
        "need",
        need_id,
        serde_json::json!({
            "expired_referrals": ids,
            "new_referrals": created.iter().map(|r| r.id).collect::<Vec<_>>(),
            "from": status.as_str(),
            "to": next.as_str(),
        }),
    )
    .await?;
    Ok(Some(report))
}

/// Expires a batch of open needs whose `needed_by` is before `today`, cancelling their open
/// referrals; none while the demo loader runs. Returns how many needs were expired. The needs
/// are claimed with `SKIP LOCKED` (never waiting for a need), then their referrals are locked
/// by the updates: the lock order of `service`, need before its referrals.
async fn expire_needs(conn: &mut Connection, today: NaiveDate) -> Result<usize> {
    if storage::locks::demo_load_running(conn).await? {
        // The demo loader replays needs dated 2020; it expires them itself when it is done.
        return Ok(0);
    }
    let overdue =
        storage::needs::claim_overdue(conn, &storage::needs::OPEN_STATUSES, today, SWEEP_BATCH)
            .await?;
    for need in &overdue {
        let cancelled = cancel_open_referrals(conn, need.id, "need expired").await?;
        storage::needs::set_status(conn, need.id, NeedStatus::Expired.as_str(), 0).await?;
        audit::record(
            conn,
            None,
            SWEEPER,
            "need",
            need.id,
            serde_json::json!({
                "from": need.status,
                "to": NeedStatus::Expired.as_str(),
                "needed_by": need.needed_by,
                "cancelled_referrals": cancelled,
            }),
        )
        .await?;
    }
    Ok(overdue.len())
}

/// Cancels the need's open referrals, each with a CANCELLED event; returns their ids.
async fn cancel_open_referrals(
    conn: &mut Connection,
    need_id: Uuid,
    why: &str,
) -> Result<Vec<Uuid>> {
    let cancelled = storage::referrals::set_status_where(
        conn,
        need_id,
        &storage::referrals::OPEN_STATUSES,
        ReferralStatus::Cancelled.as_str(),
    )
    .await?;
    for referral in &cancelled {
        storage::referrals::insert_event(
            conn,
            &NewReferralEvent {
                referral_id: referral.id,
                lender_id: referral.lender_id,
                need_id,
                kind: "CANCELLED",
                status: ReferralStatus::Cancelled.as_str(),
                detail: serde_json::json!({ "reason": why }),
            },
        )
        .await?;
    }
    Ok(cancelled.iter().map(|r| r.id).collect())
}

async fn with_referrals(conn: &mut Connection, row: NeedRow) -> Result<NeedWithReferrals> {
    let rows = storage::referrals::for_needs(conn, &[row.id]).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let disbursed: HashMap<Uuid, i64> = storage::referrals::disbursed(conn, &ids)
        .await?
        .into_iter()
        .map(|d| (d.referral_id, d.disbursed_minor))
        .collect();
    let mut referrals = Vec::with_capacity(rows.len());
    for row in rows {
        let disbursed_minor = disbursed.get(&row.id).copied().unwrap_or(0);
        referrals.push(Referral {
            disbursed_minor,
            ..to_referral(row)?
        });
    }
    Ok(NeedWithReferrals {
        need: to_need(row)?,
        referrals,
    })
}

fn duplicate_open_need(open: &NeedRow) -> Error {
    Error::AlreadyExists {
        entity: "need",
        reason: reason::DUPLICATE_OPEN_NEED,
        message: format!(
            "enterprise {} already has open need {} with purpose {} (status {}); \
             withdraw it or wait until it is closed",
            open.enterprise_id, open.id, open.purpose, open.status
        ),
        existing_id: Some(open.id.to_string()),
    }
}

fn illegal_transition(id: Uuid, from: NeedStatus, to: NeedStatus) -> Error {
    Error::precondition(
        super::reason::ILLEGAL_TRANSITION,
        format!("need {id} is {from}; it cannot become {to}"),
    )
    .with_metadata("need_id", id)
    .with_metadata("status", from)
}

fn corrupt(entity: &str, id: Uuid, what: &str, value: &str) -> Error {
    Error::Internal(anyhow::anyhow!(
        "{entity} {id} has unknown {what} {value:?}"
    ))
}

fn need_status(row: &NeedRow) -> Result<NeedStatus> {
    row.status
        .parse()
        .map_err(|_| corrupt("need", row.id, "status", &row.status))
}

pub(crate) fn to_need(row: NeedRow) -> Result<Need> {
    let status = need_status(&row)?;
    let purpose = row
        .purpose
        .parse()
        .map_err(|_| corrupt("need", row.id, "purpose", &row.purpose))?;
    let channel = row
        .channel
        .parse()
        .map_err(|_| corrupt("need", row.id, "channel", &row.channel))?;
    let collateral = storage::lenders::strings(row.collateral)
        .iter()
        .map(|c| {
            c.parse()
                .map_err(|_| corrupt("need", row.id, "collateral", c))
        })
        .collect::<Result<_>>()?;
    Ok(Need {
        id: row.id,
        enterprise_id: row.enterprise_id,
        amount_minor: row.amount_minor,
        term_months: row.term_months,
        purpose,
        collateral,
        max_rate_bps: row.max_rate_bps,
        needed_by: row.needed_by,
        consent_to_share: row.consent_to_share,
        channel,
        note: row.note,
        status,
        funded_minor: row.funded_minor,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

pub(crate) fn to_referral(row: ReferralRow) -> Result<Referral> {
    let status = row
        .status
        .parse()
        .map_err(|_| corrupt("referral", row.id, "status", &row.status))?;
    let decline_reason = row
        .decline_reason
        .as_deref()
        .map(|r| {
            r.parse()
                .map_err(|_| corrupt("referral", row.id, "decline reason", r))
        })
        .transpose()?;
    let factors = serde_json::from_value(row.factors)
        .map_err(|e| Error::Internal(anyhow::anyhow!("referral {} factors: {e}", row.id)))?;
    Ok(Referral {
        id: row.id,
        need_id: row.need_id,
        lender_id: row.lender_id,
        product_id: row.product_id,
        status,
        score: row.score,
        factors,
        sla_deadline: row.sla_deadline,
        decline_reason,
        decline_note: row.decline_note,
        info_request: row.info_request,
        approved_amount_minor: row.approved_amount_minor,
        approved_rate_bps: row.approved_rate_bps,
        approved_term_months: row.approved_term_months,
        disbursed_minor: 0,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}
