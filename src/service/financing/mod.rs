//! Financing needs: submission (with routing), import, preview, reading, withdrawal,
//! re-routing, and the SLA sweeper.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use scoped_futures::ScopedFutureExt as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::paging::{Cursor, Page, PageRequest};
use super::routing::{self, ScoreFactor, route_onwards};
use super::{App, Error, Idempotency, Principal, Result, audit, reason};
use crate::domain::{
    Channel, Collateral, DeclineReason, IndustryPrefix, NeedStatus, NewNeed, Purpose,
    ReferralEventKind, ReferralStatus, RegionPrefix,
};
use crate::matching::IneligibleReason;
use crate::storage::needs::{NeedFilter, NeedRow};
use crate::storage::referrals::{NewReferralEvent, ReferralRow};
use crate::storage::{self, Connection};

mod import;
mod preview;
mod submit;
mod sweeper;

pub const RPC_SUBMIT: &str = "finmatch.v1.FinancingService/SubmitNeed";
const RPC_WITHDRAW: &str = "finmatch.v1.FinancingService/WithdrawNeed";
const RPC_REROUTE: &str = "finmatch.v1.FinancingService/RerouteNeed";
/// Audit "rpc" of the background SLA sweeper.
pub(crate) const SWEEPER: &str = "finmatch.sweeper";

/// Items ImportNeeds hands to the use case at once.
pub const IMPORT_BATCH: usize = 1000;
/// Replay records one purge statement deletes at most.
pub const PURGE_BATCH: i64 = 1_000;
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
