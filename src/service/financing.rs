//! Financing needs: submission (with routing), import, preview, reading, withdrawal,
//! re-routing, and the SLA sweeper.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, SubsecRound as _, TimeDelta, Utc};
use diesel_async::AsyncConnection as _;
use futures::StreamExt as _;
use scoped_futures::ScopedFutureExt as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::enterprises;
use super::error::TRIES;
use super::paging::{Cursor, Page, PageRequest};
use super::routing::{
    self, ScoreFactor, match_enterprise, match_need, route_onwards, score_factors, take_routes,
};
use super::{App, Error, Idempotency, Principal, Result, audit, error, reason};
use crate::domain::{
    Channel, Collateral, DeclineReason, IndustryPrefix, NeedStatus, NewNeed, Purpose,
    ReferralEventKind, ReferralStatus, RegionPrefix,
};
use crate::matching::{IneligibleReason, evaluate, select_routes};
use crate::storage::needs::{NeedFilter, NeedRow};
use crate::storage::referrals::{NewReferralEvent, ReferralRow};
use crate::storage::{self, Connection, Failure};

pub const RPC_SUBMIT: &str = "finmatch.v1.FinancingService/SubmitNeed";
const RPC_WITHDRAW: &str = "finmatch.v1.FinancingService/WithdrawNeed";
const RPC_REROUTE: &str = "finmatch.v1.FinancingService/RerouteNeed";
/// Audit "rpc" of the background SLA sweeper.
pub(crate) const SWEEPER: &str = "finmatch.sweeper";

/// Items ImportNeeds hands to the use case at once.
pub const IMPORT_BATCH: usize = 1000;
/// Items of one ImportNeeds batch stored at once (each in its own transaction).
const IMPORT_CONCURRENCY: usize = 8;
/// Replay records one purge statement deletes at most.
pub const PURGE_BATCH: i64 = 1_000;
/// Rows a sweeper transaction claims at once.
const SWEEP_BATCH: i64 = 100;

/// A need as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A need with referrals (all of them, or those one call created); a SubmitNeed replay record
/// holds the one its call created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedWithReferrals {
    pub need: Need,
    pub referrals: Vec<Referral>,
}

/// What a call with an idempotency key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// Stored now.
    Created(NeedWithReferrals),
    /// An earlier call with the same key and request stored it: what it answered then.
    Replayed(NeedWithReferrals),
}

/// One ImportNeeds item, validated by the transport.
#[derive(Debug, Clone)]
pub struct ImportItem {
    pub index: usize,
    pub idempotency: Idempotency,
    pub need: NewNeed,
}

/// A need of a wave (see [`App::store_wave`]).
pub(super) struct WaveItem<'a> {
    pub idempotency: &'a Idempotency,
    pub need: &'a NewNeed,
}

/// The result of one ImportNeeds item.
#[derive(Debug)]
pub enum ImportOutcome {
    /// Stored now, with the status it was stored in (ROUTED, UNMATCHED or SUBMITTED).
    Accepted {
        need_id: Uuid,
        status: NeedStatus,
    },
    /// Stored by an earlier call under the item's key, with the status that call stored it in.
    Replayed {
        need_id: Uuid,
        status: NeedStatus,
    },
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

/// One page of [`App::preview_matches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewPage {
    pub candidates: Vec<MatchCandidate>,
    /// Eligible products in the whole list.
    pub eligible: usize,
    /// Ineligible products in the whole list.
    pub ineligible: usize,
    /// More candidates follow this page.
    pub more: bool,
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
    /// Special-loan reservations released because they lapsed unconfirmed.
    pub lapsed_reservations: usize,
}

impl App {
    /// Stores, scores and routes a need in one transaction (see FinancingService.SubmitNeed),
    /// usually shared with the calls made at the same time (see `group_commit`).
    #[tracing::instrument(skip_all, fields(enterprise_id = %need.enterprise_id()))]
    pub async fn submit_need(
        &self,
        who: &Principal,
        idempotency: Idempotency,
        need: NewNeed,
    ) -> Result<Submission> {
        who.require("SubmitNeed")?;
        // Usually stored with the calls that arrived meanwhile, in one statement and one commit;
        // the rare call the wave cannot store (a replay, a duplicate, a full product) goes alone.
        if let Some(stored) = self
            .submit_queue()
            .submit(self, who, &idempotency, &need)
            .await
        {
            tracing::info!(
                need_id = %stored.need.id,
                referrals = stored.referrals.len(),
                "need submitted"
            );
            return Ok(Submission::Created(stored));
        }
        let submission = error::retry_conflicts(TRIES, || {
            let (idempotency, need) = (&idempotency, &need);
            async move {
                let mut conn = self.conn().await?;
                submit_in(&mut conn, self, who, idempotency, need).await
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

    /// Stores a batch of ImportNeeds items, each as SubmitNeed would: new needs a wave at a time,
    /// one statement each (see [`App::store_wave`]), the others alone, in their own transactions,
    /// several at once, so a rejected item leaves the others in place. Items that share an
    /// enterprise or an idempotency key with an earlier item of the batch wait for it, so they
    /// replay or are refused as they would one after the other. Outcomes are in item order. Fails
    /// as a whole only when the database is unavailable or on an internal error; items stored
    /// before that stay stored (a retry with the same keys replays them).
    #[tracing::instrument(skip_all, fields(items = items.len()))]
    pub async fn import_needs(
        &self,
        who: &Principal,
        items: Vec<ImportItem>,
    ) -> Result<Vec<ImportOutcome>> {
        who.require("ImportNeeds")?;
        let items = &items;
        let mut outcomes: Vec<Option<ImportOutcome>> = items.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..items.len()).collect();
        while !pending.is_empty() {
            // A wave: the first item of each enterprise and key; the others wait for the next.
            let mut wave = Vec::new();
            let mut later = Vec::new();
            let mut enterprises: HashSet<Uuid> = HashSet::new();
            let mut keys: HashSet<&str> = HashSet::new();
            for i in pending {
                let item = &items[i];
                let key = item.idempotency.key.as_str();
                if keys.contains(key) || enterprises.contains(&item.need.enterprise_id()) {
                    later.push(i);
                } else {
                    keys.insert(key);
                    enterprises.insert(item.need.enterprise_id());
                    wave.push(i);
                }
            }
            let stored = self.import_wave(who, items, &wave).await?;
            let mut alone = Vec::new();
            for (i, stored) in wave.into_iter().zip(stored) {
                match stored {
                    Some(need) => {
                        outcomes[i] = Some(ImportOutcome::Accepted {
                            need_id: need.id,
                            status: need.status,
                        });
                    }
                    None => alone.push(i),
                }
            }
            let results: Vec<(usize, Result<ImportOutcome>)> = futures::stream::iter(
                alone
                    .into_iter()
                    .map(|i| async move { (i, self.import_one(who, &items[i]).await) }),
            )
            .buffer_unordered(IMPORT_CONCURRENCY)
            .collect()
            .await;
            for (i, result) in results {
                outcomes[i] = Some(result?);
            }
            pending = later;
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Stores an ImportNeeds wave (see [`App::store_wave`]): for each item, the need it stored.
    async fn import_wave(
        &self,
        who: &Principal,
        items: &[ImportItem],
        wave: &[usize],
    ) -> Result<Vec<Option<Need>>> {
        let wave: Vec<WaveItem<'_>> = wave
            .iter()
            .map(|&i| WaveItem {
                idempotency: &items[i].idempotency,
                need: &items[i].need,
            })
            .collect();
        let stored = self.store_wave(who, &wave).await?;
        Ok(stored.into_iter().map(|s| s.map(|s| s.need)).collect())
    }

    /// Stores a wave of new needs of `who` (distinct enterprises and keys) in one statement, each
    /// scored and routed as [`submit_in`] would, in wave order: for each item, the need as stored,
    /// or `None` when the item needs more than that. The caller then stores those alone, which
    /// gives each its own outcome. Left out before writing are the items whose enterprise is
    /// unknown, whose key names a stored need or whose purpose is open already; should the
    /// statement fail anyway (a race for the same key or purpose, a product that filled up),
    /// nothing is written and every item is left out. A wave of new needs thus costs two round
    /// trips and one commit however many it holds.
    pub(super) async fn store_wave(
        &self,
        who: &Principal,
        wave: &[WaveItem<'_>],
    ) -> Result<Vec<Option<NeedWithReferrals>>> {
        let mut conn = self.conn().await?;
        // A wave that lost a race for a key or purpose is read and tried again: the transaction
        // it waited for has ended by then, so the next read leaves out what it took.
        for _ in 0..error::TRIES {
            if let Some(stored) = self.try_wave(&mut conn, who, wave).await? {
                return Ok(stored);
            }
        }
        Ok(wave.iter().map(|_| None).collect())
    }

    /// One attempt of [`App::store_wave`]; `None` when the statement lost a race for a key or
    /// purpose, and wrote nothing.
    async fn try_wave(
        &self,
        conn: &mut Connection,
        who: &Principal,
        wave: &[WaveItem<'_>],
    ) -> Result<Option<Vec<Option<NeedWithReferrals>>>> {
        let mut stored: Vec<Option<NeedWithReferrals>> = wave.iter().map(|_| None).collect();
        let now = Utc::now().trunc_subsecs(6);
        let day = self.calendar().day(now);
        let ids: Vec<Uuid> = wave.iter().map(|item| item.need.enterprise_id()).collect();
        let keys: Vec<&str> = wave
            .iter()
            .map(|item| item.idempotency.key.as_str())
            .collect();
        let reads = storage::needs::find_for_wave(conn, &ids, who.credential_id, &keys).await?;
        let (enterprises, storable) = storable(wave, &keys, reads)?;
        if storable.is_empty() {
            return Ok(Some(stored));
        }
        let catalog = self.catalog(conn).await?;
        let market = self.market(conn, catalog, now).await?;
        let policy = self.policy();
        let want = routing::wanted(policy, policy.top_k, 0, 0);
        // Each item is scored after the ones before it, as if they had been submitted one by one:
        // their referrals count in the usage and lender load the next item sees.
        let mut activity = (*market.activity).clone();
        let mut submitted = Vec::with_capacity(storable.len());
        for &i in &storable {
            let item = &wave[i];
            let need = item.need;
            let enterprise = match_enterprise(&enterprises[&need.enterprise_id()], day)?;
            let match_need = crate::matching::MatchNeed::from(need);
            let candidates = if need.consent_to_share() {
                evaluate(
                    &match_need,
                    &enterprise,
                    market.catalog.products(),
                    &activity,
                    &[],
                    policy,
                )
            } else {
                Vec::new()
            };
            let routes = select_routes(&candidates, want);
            let need = Submitted::new(need, &routes, &market.catalog, now);
            for r in &need.stored.referrals {
                *activity
                    .product_referrals_today
                    .entry(r.product_id)
                    .or_default() += 1;
                activity
                    .lender_stats
                    .entry(r.lender_id)
                    .or_default()
                    .referrals_today += 1;
            }
            let response = audit::response_body(&need.stored)?;
            submitted.push((need, response));
        }
        let rows = submitted
            .iter()
            .zip(&storable)
            .map(|((need, response), &i)| need.row(who, wave[i].idempotency, response))
            .collect::<Result<Vec<_>>>()?;
        match storage::needs::insert_routed_batch(conn, &rows, day).await {
            Ok(()) => {
                drop(rows);
                let counted: Vec<(Uuid, Uuid)> = submitted
                    .iter()
                    .flat_map(|(need, _)| need.stored.referrals.iter())
                    .map(|r| (r.product_id, r.lender_id))
                    .collect();
                self.activity_cache().record(day, &counted);
                tracing::debug!(
                    needs = storable.len(),
                    left_out = wave.len() - storable.len(),
                    "wave stored in one statement"
                );
                for ((need, _), i) in submitted.into_iter().zip(storable) {
                    stored[i] = Some(need.stored);
                }
                Ok(Some(stored))
            }
            Err(e) if storage::classify(&e) == Failure::Unavailable => Err(Error::Unavailable),
            Err(e) if lost_race(&e) => {
                tracing::debug!(needs = wave.len(), error = %e, "wave lost a race; read again");
                Ok(None)
            }
            Err(error) => {
                tracing::debug!(%error, needs = wave.len(), "wave goes item by item");
                Ok(Some(stored))
            }
        }
    }

    async fn import_one(&self, who: &Principal, item: &ImportItem) -> Result<ImportOutcome> {
        let outcome = error::retry_conflicts(TRIES, || async {
            let mut conn = self.conn().await?;
            submit_in(&mut conn, self, who, &item.idempotency, &item.need).await
        })
        .await;
        match outcome {
            Ok(Submission::Created(stored)) => Ok(ImportOutcome::Accepted {
                need_id: stored.need.id,
                status: stored.need.status,
            }),
            Ok(Submission::Replayed(saved)) => Ok(ImportOutcome::Replayed {
                need_id: saved.need.id,
                status: saved.need.status,
            }),
            Err(e @ (Error::Unavailable | Error::Internal(_))) => Err(e),
            Err(e) => Ok(ImportOutcome::Rejected(e)),
        }
    }

    /// One page of the ranked candidate list for a stored or unsaved need (eligible products in
    /// routing order, then ineligible ones by product id), from position `offset`; changes
    /// nothing. An unsaved need is scored from this replica's caches alone (catalog, usage,
    /// enterprise), without a database round trip while they are current.
    pub async fn preview_matches(
        &self,
        who: &Principal,
        subject: PreviewSubject,
        offset: usize,
        size: usize,
    ) -> Result<PreviewPage> {
        who.require("PreviewMatches")?;
        let now = Utc::now();
        let policy = self.policy();
        let (need, enterprise_id, tried, open) = match subject {
            PreviewSubject::Stored(id) => {
                let mut conn = self.conn().await?;
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
        let enterprise = self.enterprise_for_preview(enterprise_id).await?;
        let enterprise = match_enterprise(&enterprise, self.calendar().day(now))?;
        let catalog = self.catalog_now().await?;
        let market = self.market_now(catalog, now).await?;
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
        // Eligible products keep the routing order; ineligible ones follow by product id. The
        // engine already ranks eligible ones first, so only a page reaching past them sorts the
        // rest.
        let eligible = candidates.partition_point(|c| c.eligible());
        let mut order: Vec<&crate::matching::Candidate<'_>> = candidates.iter().collect();
        if offset.saturating_add(size) > eligible {
            order[eligible..].sort_unstable_by_key(|c| c.product_id());
        }
        let page = order
            .iter()
            .skip(offset)
            .take(size)
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
        Ok(PreviewPage {
            candidates: page,
            eligible,
            ineligible: order.len() - eligible,
            more: offset.saturating_add(size) < order.len(),
        })
    }

    /// A need with all its referrals, oldest first.
    pub async fn get_need(&self, who: &Principal, id: Uuid) -> Result<NeedWithReferrals> {
        who.require("GetNeed")?;
        let mut conn = self.conn().await?;
        let (row, referrals, disbursed) = storage::needs::find_with_referrals(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found("need", id))?;
        assemble(row, referrals, disbursed)
    }

    pub async fn list_needs(
        &self,
        who: &Principal,
        query: NeedQuery,
        page: PageRequest,
    ) -> Result<Page<Need>> {
        who.require("ListNeeds")?;
        let mut conn = self.conn().await?;
        let filter = NeedFilter {
            statuses: query.statuses.clone(),
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
        who.require("WithdrawNeed")?;
        let reason = &reason;
        self.write(|conn| {
            async move {
                let row = storage::needs::find_for_update(conn, id)
                    .await?
                    .ok_or_else(|| Error::not_found("need", id))?;
                let status = row.status;
                if status == NeedStatus::Withdrawn {
                    return with_referrals(conn, row).await;
                }
                if !status.can_transition(NeedStatus::Withdrawn) {
                    return Err(Error::illegal_transition(
                        ("need_id", id),
                        status,
                        NeedStatus::Withdrawn,
                    ));
                }
                let cancelled = cancel_open_referrals(
                    conn,
                    id,
                    serde_json::json!({ "reason": "need withdrawn" }),
                )
                .await?;
                let row = storage::needs::set_status(conn, id, NeedStatus::Withdrawn, 0).await?;
                audit::record(
                    conn,
                    Some(who),
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
            }
            .scope_boxed()
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
        who.require("RerouteNeed")?;
        let target = target_open.unwrap_or(self.policy().top_k);
        // Routing reads the product catalog; refresh it before taking any lock.
        let catalog = &self.catalog(&mut *self.conn().await?).await?;
        self.write(|conn| {
            async move {
                let now = Utc::now();
                let row = storage::needs::find_for_update(conn, id)
                    .await?
                    .ok_or_else(|| Error::not_found("need", id))?;
                let status = row.status;
                // UNMATCHED is final (DESIGN §1: states only move forward); a need that
                // new lenders could serve is submitted again.
                if !matches!(status, NeedStatus::Submitted | NeedStatus::Routed) {
                    return Err(Error::illegal_transition(
                        ("need_id", id),
                        status,
                        NeedStatus::Routed,
                    ));
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
                } = route_onwards(conn, self, catalog.clone(), &row, target, now).await?;
                audit::record(
                    conn,
                    Some(who),
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
            }
            .scope_boxed()
        })
        .await
    }

    /// One pass of the SLA sweeper at `now`: expires the needs nobody approved whose `needed_by`
    /// is before `now`'s business day (cancelling their open referrals), then expires undecided referrals past
    /// their deadline and routes their needs to the next best untried lenders (up to the
    /// policy's limit; with none left and nothing open the need becomes UNMATCHED), then
    /// releases the special-loan reservations that lapsed ([`App::release_lapsed_reservations`]).
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
        let today = self.calendar().day(now);
        loop {
            let expired = self
                .write(|conn| async move { expire_needs(conn, today).await }.scope_boxed())
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
                let catalog = &catalog;
                let batch = self
                    .write(|conn| {
                        async move {
                        expire_referrals(conn, self, catalog.clone(), need_id, now).await

                    }
                    .scope_boxed()
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
        report.lapsed_reservations = self.release_lapsed_reservations(now).await?;
        if report != SweepReport::default() {
            tracing::info!(?report, "SLA sweep");
        }
        Ok(report)
    }

    /// Runs [`App::sweep_once`] every `period` until the task is dropped, deletes the replay
    /// records older than `retention` ([`App::purge_replay_records`]) and seals the settled
    /// audit rows ([`App::seal_audit`]).
    pub async fn run_sweeper(self, period: std::time::Duration, retention: TimeDelta) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Utc::now();
            if let Err(e) = self.sweep_once(now).await {
                tracing::warn!(error = %e, "SLA sweep failed; retrying next period");
            }
            if let Err(e) = self.purge_replay_records(now - retention).await {
                tracing::warn!(error = %e, "purging replay records failed; retrying next period");
            }
            if let Err(e) = self.seal_audit(now).await {
                tracing::warn!(error = %e, "sealing the audit log failed; retrying next period");
            }
        }
    }

    /// Deletes the replay records of calls made before `before`, in batches of
    /// [`PURGE_BATCH`] statements of their own (no lock is held for long, and replicas purging
    /// at once skip each other's rows). Returns how many it deleted.
    pub async fn purge_replay_records(&self, before: DateTime<Utc>) -> Result<usize> {
        let mut purged = 0;
        loop {
            let mut conn = self.conn().await?;
            let deleted = storage::idempotency::purge(&mut conn, before, PURGE_BATCH).await?;
            purged += deleted;
            if deleted < PURGE_BATCH as usize {
                break;
            }
        }
        if purged > 0 {
            metrics::counter!("finmatch_replay_records_purged_total").increment(purged as u64);
            tracing::info!(purged, %before, "replay records past retention deleted");
        }
        Ok(purged)
    }
}

/// One submission: reads the enterprise, scores the need against the cached market outside any
/// transaction, then writes everything (the products' capacity, the need with its referrals,
/// events, audit row and replay record) in one statement, which is its own transaction: two
/// round trips in all. Only when a chosen product has filled up meanwhile does that statement
/// fail as a whole, and the need is routed again in a transaction that takes capacity round by
/// round. A key or purpose already taken is resolved after the rollback: a replay,
/// IDEMPOTENCY_KEY_REUSED or DUPLICATE_OPEN_NEED.
async fn submit_in(
    conn: &mut Connection,
    app: &App,
    who: &Principal,
    idempotency: &Idempotency,
    need: &NewNeed,
) -> Result<Submission> {
    // Microseconds, as PostgreSQL keeps them, so the response equals what GetNeed reads back.
    let now = Utc::now().trunc_subsecs(6);
    let day = app.calendar().day(now);
    let enterprise = enterprises::load(conn, need.enterprise_id()).await?;
    let catalog = app.catalog(conn).await?;
    let market = app.market(conn, catalog, now).await?;
    let policy = app.policy();
    let match_need = crate::matching::MatchNeed::from(need);
    let match_enterprise = match_enterprise(&enterprise, day)?;
    let candidates = if need.consent_to_share() {
        evaluate(
            &match_need,
            &match_enterprise,
            market.catalog.products(),
            &market.activity,
            &[],
            policy,
        )
    } else {
        Vec::new()
    };
    let want = routing::wanted(policy, policy.top_k, 0, 0);
    // Usually every product routing picks has capacity: then one statement writes it all.
    let first_choice = select_routes(&candidates, want);
    let submitted = Submitted::new(need, &first_choice, &market.catalog, now);
    let response = audit::response_body(&submitted.stored)?;
    let written = match storage::needs::insert_routed_batch(
        conn,
        &[submitted.row(who, idempotency, &response)?],
        day,
    )
    .await
    {
        Ok(()) => Ok(submitted),
        Err(e) if storage::needs::is_capacity_short(&e) => {
            // Some product filled up since the market was read: take capacity round by round,
            // replacing the full products, and write the need in the same transaction.
            conn.transaction(async |conn| {
                let routes = take_routes(conn, &candidates, want, day).await?;
                let submitted = Submitted::new(need, &routes, &market.catalog, now);
                let response = audit::response_body(&submitted.stored)?;
                storage::needs::insert_routed(conn, &submitted.row(who, idempotency, &response)?)
                    .await
                    .map_err(taken_or_error)?;
                Ok::<_, Error>(submitted)
            })
            .await
        }
        Err(e) => Err(taken_or_error(e)),
    };
    match written {
        Ok(submitted) => {
            let counted: Vec<(Uuid, Uuid)> = submitted
                .stored
                .referrals
                .iter()
                .map(|r| (r.product_id, r.lender_id))
                .collect();
            app.activity_cache().record(day, &counted);
            Ok(Submission::Created(submitted.stored))
        }
        Err(e) if is_taken(&e) => {
            if let Some(saved) = audit::replayed(conn, who, RPC_SUBMIT, idempotency).await? {
                return Ok(Submission::Replayed(saved));
            }
            // The key is on a need whose replay record has been purged (the retention window).
            if let Some(earlier) =
                storage::needs::find_by_key(conn, who.credential_id, &idempotency.key).await?
            {
                return Err(key_expired(&idempotency.key, &earlier));
            }
            if let Some(open) =
                storage::needs::find_open(conn, need.enterprise_id(), need.purpose()).await?
            {
                return Err(duplicate_open_need(&open));
            }
            // Whoever held the key or purpose rolled back meanwhile: try again.
            Err(Error::conflict())
        }
        Err(e) => Err(e),
    }
}

/// A key whose first call is older than the replay records are kept: its need exists, its answer
/// is gone, and a new request needs a new key.
fn key_expired(key: &str, earlier: &NeedRow) -> Error {
    Error::precondition(
        reason::IDEMPOTENCY_KEY_EXPIRED,
        format!(
            "idempotency_key {key:?} was used on {} for need {}, longer ago than finmatch keeps \
             replay records (FINMATCH_IDEMPOTENCY_RETENTION_DAYS); read that need with GetNeed, \
             or use a new key for a new request",
            earlier.created_at.format("%Y-%m-%d"),
            earlier.id
        ),
    )
    .with_metadata("idempotency_key", key)
    .with_metadata("need_id", earlier.id)
}

/// A need about to be stored with the referrals routing chose, ids and times set.
struct Submitted {
    stored: NeedWithReferrals,
    /// The CREATED events' details, by referral.
    event_details: Vec<serde_json::Value>,
}

impl Submitted {
    fn new(
        need: &NewNeed,
        routes: &[&crate::matching::Candidate<'_>],
        catalog: &super::catalog::Catalog,
        now: DateTime<Utc>,
    ) -> Self {
        let id = Uuid::now_v7();
        let status = match (need.consent_to_share(), routes.is_empty()) {
            (false, _) => NeedStatus::Submitted,
            (true, true) => NeedStatus::Unmatched,
            (true, false) => NeedStatus::Routed,
        };
        let referrals: Vec<Referral> = routes
            .iter()
            .map(|candidate| Referral {
                id: Uuid::now_v7(),
                need_id: id,
                lender_id: candidate.lender_id(),
                product_id: candidate.product_id(),
                status: ReferralStatus::Pending,
                score: candidate.score(),
                factors: score_factors(candidate),
                sla_deadline: routing::sla_deadline(catalog, candidate, now),
                decline_reason: None,
                decline_note: None,
                info_request: None,
                approved_amount_minor: None,
                approved_rate_bps: None,
                approved_term_months: None,
                disbursed_minor: 0,
                created_at: now,
                updated_at: now,
            })
            .collect();
        let event_details = referrals
            .iter()
            .map(|r| routing::created_detail(r.product_id, r.score, r.sla_deadline))
            .collect();
        let stored = NeedWithReferrals {
            need: Need {
                id,
                enterprise_id: need.enterprise_id(),
                amount_minor: need.amount().get(),
                term_months: need.term().get(),
                purpose: need.purpose(),
                collateral: need.collateral().iter().collect(),
                max_rate_bps: need.max_rate().map(|r| r.get()),
                needed_by: need.needed_by(),
                consent_to_share: need.consent_to_share(),
                channel: need.channel(),
                note: need.note().as_str().to_owned(),
                status,
                funded_minor: 0,
                created_at: now,
                updated_at: now,
            },
            referrals,
        };
        Self {
            stored,
            event_details,
        }
    }

    /// The rows to write, with the audit row and replay record of `who`'s call.
    fn row<'a>(
        &'a self,
        who: &'a Principal,
        idempotency: &'a Idempotency,
        response: &'a [u8],
    ) -> Result<storage::needs::RoutedNeed<'a>> {
        let need = &self.stored.need;
        let referrals = self
            .stored
            .referrals
            .iter()
            .zip(&self.event_details)
            .map(|(r, detail)| {
                Ok(storage::needs::RoutedReferral {
                    id: r.id,
                    lender_id: r.lender_id,
                    product_id: r.product_id,
                    score: r.score,
                    factors: serde_json::to_value(&r.factors)
                        .map_err(|e| Error::Internal(e.into()))?,
                    sla_deadline: r.sla_deadline,
                    event_detail: detail.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(storage::needs::RoutedNeed {
            id: need.id,
            need: storage::needs::NewNeed {
                enterprise_id: need.enterprise_id,
                amount_minor: need.amount_minor,
                term_months: need.term_months,
                purpose: need.purpose,
                collateral: need.collateral.clone(),
                max_rate_bps: need.max_rate_bps,
                needed_by: need.needed_by,
                consent_to_share: need.consent_to_share,
                channel: need.channel,
                note: &need.note,
                status: need.status,
                idempotency_key: Some(&idempotency.key),
                created_by: who.credential_id,
            },
            routing_attempts: referrals.len() as i32,
            created_at: need.created_at,
            audit: audit::entry(
                Some(who),
                RPC_SUBMIT,
                "need",
                serde_json::json!({
                    "enterprise_id": need.enterprise_id,
                    "status": need.status.as_str(),
                    "idempotency_key": idempotency.key,
                    "referrals": self.stored.referrals.iter().map(|r| r.id).collect::<Vec<_>>(),
                }),
            ),
            replay: audit::replay_record(who, RPC_SUBMIT, idempotency, response),
            referrals,
        })
    }
}

/// The enterprises of a wave, and the items of it [`App::store_wave`] may write: those whose
/// enterprise exists, whose key names no need yet and whose purpose is not open already.
fn storable(
    wave: &[WaveItem<'_>],
    keys: &[&str],
    reads: storage::needs::WaveReads,
) -> Result<(HashMap<Uuid, enterprises::Enterprise>, Vec<usize>)> {
    let enterprises = enterprises::assemble(reads.enterprises, reads.designations)?;
    let keys_taken: HashSet<&str> = reads.keys_taken.iter().map(String::as_str).collect();
    let mut open: HashSet<(Uuid, Purpose)> = HashSet::new();
    for need in &reads.purposes {
        if need.status.is_open() {
            open.insert((need.enterprise_id, need.purpose));
        }
    }
    let storable = (0..wave.len())
        .filter(|&i| {
            let need = wave[i].need;
            enterprises.contains_key(&need.enterprise_id())
                && !keys_taken.contains(keys[i])
                && !open.contains(&(need.enterprise_id(), need.purpose()))
        })
        .collect();
    Ok((enterprises, storable))
}

/// Marks a submission that lost its key or purpose to a stored need (see [`submit_in`]).
#[derive(Debug, thiserror::Error)]
#[error("the idempotency key or the enterprise's purpose is taken")]
struct Taken;

fn taken_or_error(e: diesel::result::Error) -> Error {
    if is_taken_failure(&storage::classify(&e)) {
        Error::Internal(anyhow::Error::new(Taken))
    } else {
        e.into()
    }
}

/// A key or purpose taken by another transaction.
fn is_taken_failure(failure: &Failure) -> bool {
    matches!(failure, Failure::UniqueViolation(Some(c))
        if c == storage::needs::ONE_OPEN_PER_PURPOSE
            || c == storage::needs::ONE_NEED_PER_KEY
            || c == storage::idempotency::PRIMARY_KEY)
}

/// A wave statement that lost to a concurrent transaction: a key or purpose it took, or a
/// deadlock with it (two waves holding each other's keys).
fn lost_race(e: &diesel::result::Error) -> bool {
    let failure = storage::classify(e);
    failure == Failure::Conflict || is_taken_failure(&failure)
}

fn is_taken(e: &Error) -> bool {
    matches!(e, Error::Internal(inner) if inner.is::<Taken>())
}

/// Expires the need's overdue referrals and re-routes the need, if no other transaction holds
/// it: the need is locked first (skipped when held), then its overdue referrals (checked again
/// under the lock, so a referral answered or expired meanwhile is left alone). `None` when the
/// need was held by another transaction or nothing of it is overdue any more.
async fn expire_referrals(
    conn: &mut Connection,
    app: &App,
    catalog: std::sync::Arc<super::catalog::Catalog>,
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
    let expired = storage::referrals::set_status(conn, &ids, ReferralStatus::Expired).await?;
    for referral in &expired {
        storage::referrals::insert_event(
            conn,
            &NewReferralEvent {
                referral_id: referral.id,
                lender_id: referral.lender_id,
                need_id: referral.need_id,
                kind: ReferralEventKind::Expired,
                status: ReferralStatus::Expired,
                detail: serde_json::json!({ "sla_deadline": referral.sla_deadline }),
            },
        )
        .await?;
    }
    report.expired_referrals = expired.len();
    let status = row.status;
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
/// referrals; none while some session holds expiry (`storage::locks::hold_expiry`: a writer of
/// back-dated needs, which expires them itself when it is done). Returns how many needs were
/// expired. The needs are claimed with `SKIP LOCKED` (never waiting for a need), then their
/// referrals are locked by the updates: the lock order of `service`, need before its referrals.
async fn expire_needs(conn: &mut Connection, today: NaiveDate) -> Result<usize> {
    if storage::locks::expiry_held(conn).await? {
        return Ok(0);
    }
    // Only needs nobody approved: an approval is not voided by the calendar.
    let expiring = storage::statuses(NeedStatus::ALL, |s| s.can_transition(NeedStatus::Expired));
    let overdue = storage::needs::claim_overdue(conn, &expiring, today, SWEEP_BATCH).await?;
    for need in &overdue {
        let cancelled = cancel_open_referrals(
            conn,
            need.id,
            serde_json::json!({ "reason": "need expired" }),
        )
        .await?;
        storage::needs::set_status(conn, need.id, NeedStatus::Expired, 0).await?;
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

/// Cancels the need's open referrals, each with a CANCELLED event carrying `detail`; returns
/// their ids.
pub(crate) async fn cancel_open_referrals(
    conn: &mut Connection,
    need_id: Uuid,
    detail: serde_json::Value,
) -> Result<Vec<Uuid>> {
    let cancelled = storage::referrals::set_status_where(
        conn,
        need_id,
        &storage::referrals::open_statuses(),
        ReferralStatus::Cancelled,
    )
    .await?;
    for referral in &cancelled {
        storage::referrals::insert_event(
            conn,
            &NewReferralEvent {
                referral_id: referral.id,
                lender_id: referral.lender_id,
                need_id,
                kind: ReferralEventKind::Cancelled,
                status: ReferralStatus::Cancelled,
                detail: detail.clone(),
            },
        )
        .await?;
    }
    Ok(cancelled.iter().map(|r| r.id).collect())
}

async fn with_referrals(conn: &mut Connection, row: NeedRow) -> Result<NeedWithReferrals> {
    let rows = storage::referrals::for_needs(conn, &[row.id]).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let disbursed = storage::referrals::disbursed(conn, &ids).await?;
    assemble(row, rows, disbursed)
}

/// A need with its referrals and the sums disbursed on them.
fn assemble(
    row: NeedRow,
    referrals: Vec<ReferralRow>,
    disbursed: Vec<storage::referrals::DisbursedRow>,
) -> Result<NeedWithReferrals> {
    let disbursed: HashMap<Uuid, i64> = disbursed
        .into_iter()
        .map(|d| (d.referral_id, d.disbursed_minor))
        .collect();
    let referrals = referrals
        .into_iter()
        .map(|row| {
            let disbursed_minor = disbursed.get(&row.id).copied().unwrap_or(0);
            Ok(Referral {
                disbursed_minor,
                ..to_referral(row)?
            })
        })
        .collect::<Result<_>>()?;
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
        existing_id: open.id.to_string(),
    }
}

pub(crate) fn to_need(row: NeedRow) -> Result<Need> {
    Ok(Need {
        id: row.id,
        enterprise_id: row.enterprise_id,
        amount_minor: row.amount_minor,
        term_months: row.term_months,
        purpose: row.purpose,
        collateral: row.collateral.into_iter().flatten().collect(),
        max_rate_bps: row.max_rate_bps,
        needed_by: row.needed_by,
        consent_to_share: row.consent_to_share,
        channel: row.channel,
        note: row.note,
        status: row.status,
        funded_minor: row.funded_minor,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

pub(crate) fn to_referral(row: ReferralRow) -> Result<Referral> {
    let factors = serde_json::from_value(row.factors)
        .map_err(|e| Error::Internal(anyhow::anyhow!("referral {} factors: {e}", row.id)))?;
    Ok(Referral {
        id: row.id,
        need_id: row.need_id,
        lender_id: row.lender_id,
        product_id: row.product_id,
        status: row.status,
        score: row.score,
        factors,
        sla_deadline: row.sla_deadline,
        decline_reason: row.decline_reason,
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
