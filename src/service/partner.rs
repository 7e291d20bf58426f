//! The partner bank's use cases: its referrals, its answers and its loan outcomes.
//!
//! The lender is always the one the caller's credential is bound to (`who.require_lender`), and
//! every query filters by it in SQL: another lender's referral is NOT_FOUND, exactly like an
//! unknown id. Every change writes, in one transaction, the referral, a referral event and an
//! audit row. Every use case that changes a referral locks the referral's need first, then the
//! referral (the lock order of `service`), so two banks answering on one need, or a bank and the
//! SLA sweeper, take turns instead of deadlocking.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use scoped_futures::ScopedFutureExt as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::catalog::Catalog;
use super::enterprises::{Enterprise, to_enterprise};
use super::financing::{Need, Referral, cancel_open_referrals, to_need, to_referral};
use super::paging::{Cursor, Page, PageRequest};
use super::routing::route_onwards;
use super::{App, Error, Idempotency, Principal, Result, audit, reason};
use crate::domain::{DeclineReason, LoanReference, NeedStatus, Note, ReferralStatus};
use crate::storage::needs::NeedRow;
use crate::storage::partner::{DisbursementRow, NewDisbursement, ReferralChanges, ReferralFilter};
use crate::storage::referrals::{NewReferralEvent, ReferralRow};
use crate::storage::{self, Connection, Failure};

const RPC_ACKNOWLEDGE: &str = "finmatch.v1.PartnerService/AcknowledgeReferral";
const RPC_REQUEST_INFORMATION: &str = "finmatch.v1.PartnerService/RequestInformation";
const RPC_DECIDE: &str = "finmatch.v1.PartnerService/DecideReferral";
const RPC_DISBURSE: &str = "finmatch.v1.PartnerService/RecordDisbursement";

/// A referral as its lender sees it; a DecideReferral replay record holds the one its call
/// answered with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LenderReferral {
    pub referral: Referral,
    /// Sum of the disbursements recorded on the referral.
    pub disbursed_minor: i64,
    /// Filled where the contract says the lender sees the need.
    pub need: Option<Need>,
    /// Filled where the contract says the lender sees the enterprise; contact data blanked
    /// unless the need's owner consented to share and the referral is open or was lent on
    /// ([`ReferralStatus::shows_contact`]).
    pub enterprise: Option<Enterprise>,
}

/// Filters of [`App::list_referrals`].
#[derive(Debug, Clone, Default)]
pub struct ReferralQuery {
    pub statuses: Vec<ReferralStatus>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
}

/// A lender's decision on a referral, validated at the edge except for the product's and the
/// need's limits, which only the database knows.
#[derive(Debug, Clone)]
pub enum Decision {
    Approve {
        amount_minor: i64,
        rate_bps: i32,
        term_months: i32,
    },
    Decline {
        reason: DeclineReason,
        note: Note,
    },
}

/// A loan outcome as the lender reports it.
#[derive(Debug, Clone)]
pub struct DisbursementInput {
    pub referral_id: Uuid,
    pub loan_reference: LoanReference,
    pub amount_minor: i64,
    pub rate_bps: i32,
    pub term_months: i32,
    pub disbursed_on: NaiveDate,
}

/// A disbursement as recorded.
#[derive(Debug, Clone)]
pub struct Disbursement {
    pub id: Uuid,
    pub referral_id: Uuid,
    pub need_id: Uuid,
    pub lender_id: Uuid,
    pub loan_reference: String,
    pub amount_minor: i64,
    pub rate_bps: i32,
    pub term_months: i32,
    pub disbursed_on: NaiveDate,
    pub created_at: DateTime<Utc>,
}

impl From<DisbursementRow> for Disbursement {
    fn from(row: DisbursementRow) -> Self {
        let DisbursementRow {
            id,
            referral_id,
            need_id,
            lender_id,
            loan_reference,
            amount_minor,
            rate_bps,
            term_months,
            disbursed_on,
            created_at,
        } = row;
        Self {
            id,
            referral_id,
            need_id,
            lender_id,
            loan_reference,
            amount_minor,
            rate_bps,
            term_months,
            disbursed_on,
            created_at,
        }
    }
}

/// The result of RecordDisbursement: the disbursement and the referral with its need.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub disbursement: Disbursement,
    pub referral: LenderReferral,
}

impl App {
    /// One page of the caller's referrals in creation order, each with need and enterprise.
    pub async fn list_referrals(
        &self,
        who: &Principal,
        query: ReferralQuery,
        page: PageRequest,
    ) -> Result<Page<LenderReferral>> {
        let lender_id = who.require_lender("ListReferrals")?;
        let mut conn = self.conn().await?;
        let filter = ReferralFilter {
            statuses: query.statuses.clone(),
            created_from: query.created_from,
            created_to: query.created_to,
        };
        let rows = storage::partner::list(
            &mut conn,
            lender_id,
            &filter,
            page.after.map(|c| (c.created_at, c.id)),
            page.fetch_limit(),
        )
        .await?;
        let page = page.page(rows, |row| Cursor {
            created_at: row.created_at,
            id: row.id,
        });
        let items = with_context(&mut conn, page.items).await?;
        Ok(Page {
            items,
            next: page.next,
        })
    }

    /// The caller's referral with need and enterprise; NOT_FOUND for another lender's.
    pub async fn get_referral(&self, who: &Principal, id: Uuid) -> Result<LenderReferral> {
        let lender_id = who.require_lender("GetReferral")?;
        let mut conn = self.conn().await?;
        let row = storage::partner::find(&mut conn, lender_id, id)
            .await?
            .ok_or_else(|| Error::not_found("referral", id))?;
        let mut items = with_context(&mut conn, vec![row]).await?;
        Ok(items.remove(0))
    }

    /// PENDING or INFO_REQUESTED → ACKNOWLEDGED; an ACKNOWLEDGED referral is returned unchanged.
    #[tracing::instrument(skip(self, who))]
    pub async fn acknowledge_referral(&self, who: &Principal, id: Uuid) -> Result<LenderReferral> {
        let lender_id = who.require_lender("AcknowledgeReferral")?;
        self.write(|conn| {
            async move {
                lock_need_of(conn, lender_id, id).await?;
                let row = locked(conn, lender_id, id).await?;
                let status = row.status;
                if status == ReferralStatus::Acknowledged {
                    return bare(conn, row).await;
                }
                require(&row, status, ReferralStatus::Acknowledged)?;
                let changes = ReferralChanges {
                    status: Some(ReferralStatus::Acknowledged),
                    ..Default::default()
                };
                let row = change(
                    conn,
                    who,
                    RPC_ACKNOWLEDGE,
                    &row,
                    &changes,
                    serde_json::json!({}),
                )
                .await?;
                bare(conn, row).await
            }
            .scope_boxed()
        })
        .await
    }

    /// ACKNOWLEDGED → INFO_REQUESTED with the lender's message; repeating the same message on an
    /// INFO_REQUESTED referral returns it unchanged.
    #[tracing::instrument(skip(self, who, message))]
    pub async fn request_information(
        &self,
        who: &Principal,
        id: Uuid,
        message: Note,
    ) -> Result<LenderReferral> {
        let lender_id = who.require_lender("RequestInformation")?;
        let message = &message;
        self.write(|conn| {
            async move {
                lock_need_of(conn, lender_id, id).await?;
                let row = locked(conn, lender_id, id).await?;
                let status = row.status;
                if status == ReferralStatus::InfoRequested
                    && row.info_request.as_deref() == Some(message.as_str())
                {
                    return bare(conn, row).await;
                }
                require(&row, status, ReferralStatus::InfoRequested)?;
                let changes = ReferralChanges {
                    status: Some(ReferralStatus::InfoRequested),
                    info_request: Some(message.as_str()),
                    ..Default::default()
                };
                let detail = serde_json::json!({ "message": message.as_str() });
                let row =
                    change(conn, who, RPC_REQUEST_INFORMATION, &row, &changes, detail).await?;
                bare(conn, row).await
            }
            .scope_boxed()
        })
        .await
    }

    /// Approves (ACKNOWLEDGED → APPROVED, need ROUTED → APPROVED) or declines (PENDING,
    /// ACKNOWLEDGED or INFO_REQUESTED → DECLINED, the need routed onwards), idempotent by key.
    #[tracing::instrument(skip(self, who, decision, idempotency))]
    pub async fn decide_referral(
        &self,
        who: &Principal,
        id: Uuid,
        decision: Decision,
        idempotency: Idempotency,
    ) -> Result<LenderReferral> {
        let lender_id = who.require_lender("DecideReferral")?;
        let (decision, idempotency) = (&decision, &idempotency);
        // Routing reads the product catalog; refresh it before taking any lock.
        let catalog = match decision {
            Decision::Decline { .. } => {
                let mut conn = self.conn().await?;
                Some(self.catalog(&mut conn).await?)
            }
            Decision::Approve { .. } => None,
        };
        let catalog = &catalog;
        self.write(|conn| {
            async move {
                // Checked under the need's lock: a concurrent twin waits here for the
                // first call to commit, then replays it instead of deciding again.
                let need = lock_need_of(conn, lender_id, id).await?;
                if let Some(saved) = audit::replayed(conn, who, RPC_DECIDE, idempotency).await? {
                    return Ok(saved);
                }
                let row = locked(conn, lender_id, id).await?;
                let row = match &decision {
                    Decision::Approve {
                        amount_minor,
                        rate_bps,
                        term_months,
                    } => {
                        let terms = (*amount_minor, *rate_bps, *term_months);
                        approve(conn, who, &need, row, terms).await?
                    }
                    Decision::Decline { reason, note } => {
                        let catalog = catalog.clone().ok_or_else(|| {
                            Error::Internal(anyhow::anyhow!("decline without catalog"))
                        })?;
                        let reason = (*reason, note);
                        self.decline(conn, who, &need, row, catalog, reason).await?
                    }
                };
                let decided = bare(conn, row).await?;
                audit::remember(conn, who, RPC_DECIDE, idempotency, &decided).await?;
                Ok(decided)
            }
            .scope_boxed()
        })
        .await
    }

    /// Records a loan outcome on an APPROVED (or, for a further tranche, DISBURSED) referral,
    /// idempotent on (lender, loan reference). The need's funding grows by a conditional UPDATE
    /// that can never fund it beyond its amount; when it is reached the need is FUNDED and every
    /// other open referral CANCELLED.
    #[tracing::instrument(skip(self, who, input), fields(referral_id = %input.referral_id))]
    pub async fn record_disbursement(
        &self,
        who: &Principal,
        input: DisbursementInput,
    ) -> Result<Recorded> {
        let lender_id = who.require_lender("RecordDisbursement")?;
        let input = &input;
        self.write(|conn| async move { disburse(conn, who, lender_id, input).await }.scope_boxed())
            .await
    }
}

async fn disburse(
    conn: &mut Connection,
    who: &Principal,
    lender_id: Uuid,
    input: &DisbursementInput,
) -> Result<Recorded> {
    let reference = input.loan_reference.as_str();
    // Looked up under the need's lock: a concurrent twin waits for the first call to commit,
    // then replays it (rather than failing on the funding it just added).
    let need = lock_need_of(conn, lender_id, input.referral_id).await?;
    if let Some(existing) = storage::partner::find_disbursement(conn, lender_id, reference).await? {
        return replay_disbursement(conn, lender_id, existing, input).await;
    }
    let row = locked(conn, lender_id, input.referral_id).await?;
    let already = check_loan(conn, &row, input).await?;
    let Some(funded) = storage::partner::add_funding(conn, need.id, input.amount_minor).await?
    else {
        return Err(exceeds_unfunded(
            need.id,
            input.amount_minor,
            need.amount_minor - need.funded_minor,
        ));
    };
    let disbursement = store_disbursement(conn, &row, input).await?;
    let changes = ReferralChanges {
        status: Some(ReferralStatus::Disbursed),
        ..Default::default()
    };
    let detail = serde_json::json!({
        "disbursement_id": disbursement.id,
        "loan_reference": reference,
        "amount_minor": input.amount_minor,
        "need_funded_minor": funded.funded_minor,
    });
    let row = change(conn, who, RPC_DISBURSE, &row, &changes, detail).await?;
    if funded.status == NeedStatus::Funded {
        close_funded(conn, who, need.id, row.id).await?;
    }
    let disbursed_minor = already + input.amount_minor;
    Ok(Recorded {
        disbursement: disbursement.into(),
        referral: LenderReferral {
            referral: to_referral(row)?,
            disbursed_minor,
            need: Some(to_need(funded)?),
            enterprise: None,
        },
    })
}

/// What a loan on the locked referral `row` must satisfy: the referral APPROVED (or DISBURSED,
/// for a further tranche), the rate and term within the product's ranges, and all tranches
/// within the approved amount. Returns what is disbursed on it already.
async fn check_loan(
    conn: &mut Connection,
    row: &ReferralRow,
    input: &DisbursementInput,
) -> Result<i64> {
    if !matches!(
        row.status,
        ReferralStatus::Approved | ReferralStatus::Disbursed
    ) {
        return Err(Error::illegal_transition(
            ("referral_id", row.id),
            row.status,
            ReferralStatus::Disbursed,
        ));
    }
    let product = product_of(conn, row).await?;
    let mut v = crate::domain::Violations::default();
    let (rates, terms) = (
        (product.min_rate_bps, product.max_rate_bps),
        (product.min_term_months, product.max_term_months),
    );
    within(&mut v, "rate_bps", input.rate_bps, rates.0, rates.1);
    within(&mut v, "term_months", input.term_months, terms.0, terms.1);
    v.finish()?;
    let already = disbursed_on(conn, row.id).await?;
    let approved = row.approved_amount_minor.unwrap_or(0);
    if already + input.amount_minor > approved {
        return Err(Error::precondition(
            reason::AMOUNT_EXCEEDS_APPROVED,
            format!(
                "referral {} was approved for {approved} and has {already} disbursed; \
                 {} more would exceed the approval",
                row.id, input.amount_minor
            ),
        )
        .with_metadata("approved_minor", approved)
        .with_metadata("disbursed_minor", already));
    }
    Ok(already)
}

/// Inserts the disbursement; a concurrent call with the same loan reference that won the race
/// makes this a conflict, whose retry replays the winner.
async fn store_disbursement(
    conn: &mut Connection,
    row: &ReferralRow,
    input: &DisbursementInput,
) -> Result<DisbursementRow> {
    let new = NewDisbursement {
        id: crate::domain::ids::child_id(row.id),
        referral_id: row.id,
        need_id: row.need_id,
        lender_id: row.lender_id,
        loan_reference: input.loan_reference.as_str(),
        amount_minor: input.amount_minor,
        rate_bps: input.rate_bps,
        term_months: input.term_months,
        disbursed_on: input.disbursed_on,
    };
    match storage::partner::insert_disbursement(conn, &new).await {
        Err(e) if matches!(storage::classify(&e), Failure::UniqueViolation(_)) => {
            Err(Error::conflict())
        }
        other => Ok(other?),
    }
}

/// A need just funded in full through `by_referral`: every other open referral is CANCELLED
/// (with its event), so nobody funds it again, and the need's audit row says so.
async fn close_funded(
    conn: &mut Connection,
    who: &Principal,
    need_id: Uuid,
    by_referral: Uuid,
) -> Result<()> {
    let detail =
        serde_json::json!({ "cause": "need funded", "funded_by_referral_id": by_referral });
    let cancelled = cancel_open_referrals(conn, need_id, detail).await?;
    let detail = serde_json::json!({ "to": NeedStatus::Funded, "cancelled_referrals": cancelled });
    audit::record(conn, Some(who), RPC_DISBURSE, "need", need_id, detail).await?;
    Ok(())
}

/// The first result of a disbursement already recorded under this reference, when the payload
/// is the same; IDEMPOTENCY_KEY_REUSED otherwise.
async fn replay_disbursement(
    conn: &mut Connection,
    lender_id: Uuid,
    existing: DisbursementRow,
    input: &DisbursementInput,
) -> Result<Recorded> {
    let same = existing.referral_id == input.referral_id
        && existing.amount_minor == input.amount_minor
        && existing.rate_bps == input.rate_bps
        && existing.term_months == input.term_months
        && existing.disbursed_on == input.disbursed_on;
    if !same {
        return Err(Error::precondition(
            reason::IDEMPOTENCY_KEY_REUSED,
            format!(
                "loan_reference {:?} is already recorded with a different disbursement; \
                 a loan reference names one loan",
                existing.loan_reference
            ),
        )
        .with_metadata("loan_reference", &existing.loan_reference)
        .with_metadata("disbursement_id", existing.id));
    }
    let row = storage::partner::find(conn, lender_id, existing.referral_id)
        .await?
        .ok_or_else(|| Error::not_found("referral", existing.referral_id))?;
    let need = storage::needs::find(conn, row.need_id)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("referral {} without need", row.id)))?;
    let disbursed_minor = disbursed_on(conn, row.id).await?;
    Ok(Recorded {
        disbursement: existing.into(),
        referral: LenderReferral {
            referral: to_referral(row)?,
            disbursed_minor,
            need: Some(to_need(need)?),
            enterprise: None,
        },
    })
}

/// The caller's referral, locked (after its need); NOT_FOUND for another lender's.
async fn locked(conn: &mut Connection, lender_id: Uuid, id: Uuid) -> Result<ReferralRow> {
    storage::partner::find_for_update(conn, lender_id, id)
        .await?
        .ok_or_else(|| Error::not_found("referral", id))
}

/// The need of the caller's referral, locked: the first lock of every partner use case, taken
/// before the referral's (the lock order of `service`). NOT_FOUND for another lender's referral.
/// DecideReferral's approval of the locked referral `row` of the locked `need`: ACKNOWLEDGED →
/// APPROVED with `(amount_minor, rate_bps, term_months)` within the product's ranges and the
/// amount within what the need still lacks; the need ROUTED → APPROVED.
async fn approve(
    conn: &mut Connection,
    who: &Principal,
    need: &NeedRow,
    row: ReferralRow,
    (amount_minor, rate_bps, term_months): (i64, i32, i32),
) -> Result<ReferralRow> {
    require(&row, row.status, ReferralStatus::Approved)?;
    let product = product_of(conn, &row).await?;
    let mut v = crate::domain::Violations::default();
    let (amounts, rates, terms) = (
        (product.min_amount_minor, product.max_amount_minor),
        (product.min_rate_bps, product.max_rate_bps),
        (product.min_term_months, product.max_term_months),
    );
    within(
        &mut v,
        "approve.amount_minor",
        amount_minor,
        amounts.0,
        amounts.1,
    );
    within(&mut v, "approve.rate_bps", rate_bps, rates.0, rates.1);
    within(&mut v, "approve.term_months", term_months, terms.0, terms.1);
    v.finish()?;
    let unfunded = need.amount_minor - need.funded_minor;
    if amount_minor > unfunded {
        return Err(exceeds_unfunded(need.id, amount_minor, unfunded));
    }
    let changes = ReferralChanges {
        status: Some(ReferralStatus::Approved),
        approved_amount_minor: Some(amount_minor),
        approved_rate_bps: Some(rate_bps),
        approved_term_months: Some(term_months),
        ..Default::default()
    };
    let detail = serde_json::json!({
        "amount_minor": amount_minor,
        "rate_bps": rate_bps,
        "term_months": term_months,
    });
    let row = change(conn, who, RPC_DECIDE, &row, &changes, detail).await?;
    storage::partner::approve_need(conn, need.id).await?;
    Ok(row)
}

impl App {
    /// DecideReferral's decline of the locked referral `row` of the locked `need`: PENDING,
    /// ACKNOWLEDGED or INFO_REQUESTED → DECLINED with the reason and note; a need no lender has
    /// approved yet goes on to the next best untried lenders of `catalog`.
    async fn decline(
        &self,
        conn: &mut Connection,
        who: &Principal,
        need: &NeedRow,
        row: ReferralRow,
        catalog: Arc<Catalog>,
        (reason, note): (DeclineReason, &Note),
    ) -> Result<ReferralRow> {
        require(&row, row.status, ReferralStatus::Declined)?;
        let changes = ReferralChanges {
            status: Some(ReferralStatus::Declined),
            decline_reason: Some(reason),
            decline_note: Some(note.as_str()),
            ..Default::default()
        };
        let detail = serde_json::json!({ "reason": reason.as_str(), "note": note.as_str() });
        let row = change(conn, who, RPC_DECIDE, &row, &changes, detail).await?;
        let routed: Vec<Uuid> = if need.status.awaits_approval() {
            let top_k = self.policy().top_k;
            let onwards = route_onwards(conn, self, catalog, need, top_k, Utc::now()).await?;
            onwards.created.into_iter().map(|r| r.id).collect()
        } else {
            Vec::new()
        };
        let detail = serde_json::json!({ "declined_referral": row.id, "new_referrals": routed });
        audit::record(conn, Some(who), RPC_DECIDE, "need", need.id, detail).await?;
        Ok(row)
    }
}

async fn lock_need_of(conn: &mut Connection, lender_id: Uuid, id: Uuid) -> Result<NeedRow> {
    storage::partner::lock_need_of(conn, lender_id, id)
        .await?
        .ok_or_else(|| Error::not_found("referral", id))
}

async fn product_of(
    conn: &mut Connection,
    row: &ReferralRow,
) -> Result<storage::lenders::ProductRow> {
    storage::lenders::find_product(conn, row.product_id)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("referral {} without product", row.id)))
}

async fn disbursed_on(conn: &mut Connection, referral_id: Uuid) -> Result<i64> {
    Ok(storage::referrals::disbursed(conn, &[referral_id])
        .await?
        .first()
        .map_or(0, |d| d.disbursed_minor))
}

/// Applies a lender's change with its event and audit row.
async fn change(
    conn: &mut Connection,
    who: &Principal,
    rpc: &str,
    row: &ReferralRow,
    changes: &ReferralChanges<'_>,
    detail: serde_json::Value,
) -> Result<ReferralRow> {
    let to = changes
        .status
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("a referral change without status")))?;
    let updated = storage::partner::update(conn, row.lender_id, row.id, changes).await?;
    append_event(conn, &updated, to, detail.clone()).await?;
    audit::record(
        conn,
        Some(who),
        rpc,
        "referral",
        row.id,
        serde_json::json!({ "from": row.status, "to": to.as_str(), "detail": detail }),
    )
    .await?;
    Ok(updated)
}

async fn append_event(
    conn: &mut Connection,
    row: &ReferralRow,
    status: ReferralStatus,
    detail: serde_json::Value,
) -> Result<()> {
    storage::referrals::insert_event(
        conn,
        &NewReferralEvent {
            referral_id: row.id,
            lender_id: row.lender_id,
            need_id: row.need_id,
            kind: status.event_kind(),
            status,
            detail,
        },
    )
    .await?;
    Ok(())
}

/// ILLEGAL_TRANSITION unless the state machine ([`ReferralStatus::can_transition`]) allows the
/// move; RESPONSE_DEADLINE_PASSED for a lender's answer to an undecided referral after its SLA
/// deadline, whether or not the sweeper has expired it yet.
fn require(row: &ReferralRow, status: ReferralStatus, to: ReferralStatus) -> Result<()> {
    if !status.can_transition(to) {
        return Err(Error::illegal_transition(
            ("referral_id", row.id),
            status,
            to,
        ));
    }
    if status.is_undecided() && row.sla_deadline <= Utc::now() {
        return Err(Error::precondition(
            reason::RESPONSE_DEADLINE_PASSED,
            format!(
                "referral {}'s response deadline passed at {}; it is expiring and the need goes \
                 to the next lender",
                row.id,
                row.sla_deadline
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        )
        .with_metadata("referral_id", row.id)
        .with_metadata("sla_deadline", row.sla_deadline.to_rfc3339()));
    }
    Ok(())
}

fn exceeds_unfunded(need_id: Uuid, amount_minor: i64, unfunded_minor: i64) -> Error {
    Error::precondition(
        reason::AMOUNT_EXCEEDS_UNFUNDED,
        format!(
            "need {need_id} has {unfunded_minor} unfunded; {amount_minor} would fund it beyond its amount"
        ),
    )
    .with_metadata("need_id", need_id)
    .with_metadata("unfunded_minor", unfunded_minor)
}

/// Adds a violation unless `min <= value <= max` (the product's range).
fn within<T: PartialOrd + std::fmt::Display>(
    v: &mut crate::domain::Violations,
    field: &str,
    value: T,
    min: T,
    max: T,
) {
    if value < min || value > max {
        v.add(
            field,
            format!("must be within the product's range {min} to {max}, got {value}"),
        );
    }
}

/// The referral alone (need and enterprise unset), with its disbursed sum.
async fn bare(conn: &mut Connection, row: ReferralRow) -> Result<LenderReferral> {
    let disbursed_minor = disbursed_on(conn, row.id).await?;
    Ok(LenderReferral {
        referral: to_referral(row)?,
        disbursed_minor,
        need: None,
        enterprise: None,
    })
}

/// Fills need, enterprise (contact data only with consent, on an open or lent-on referral) and
/// disbursed sums, in four queries for the whole page.
async fn with_context(
    conn: &mut Connection,
    rows: Vec<ReferralRow>,
) -> Result<Vec<LenderReferral>> {
    let referral_ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let need_ids: Vec<Uuid> = rows.iter().map(|r| r.need_id).collect();
    let disbursed: HashMap<Uuid, i64> = storage::referrals::disbursed(conn, &referral_ids)
        .await?
        .into_iter()
        .map(|d| (d.referral_id, d.disbursed_minor))
        .collect();
    let needs: HashMap<Uuid, NeedRow> = storage::partner::needs(conn, &need_ids)
        .await?
        .into_iter()
        .map(|n| (n.id, n))
        .collect();
    let enterprise_ids: Vec<Uuid> = needs.values().map(|n| n.enterprise_id).collect();
    let mut designations: HashMap<Uuid, Vec<_>> = HashMap::new();
    for d in storage::enterprises::active_designations(conn, &enterprise_ids).await? {
        designations.entry(d.enterprise_id).or_default().push(d);
    }
    let mut enterprises = HashMap::new();
    for row in storage::partner::enterprises(conn, &enterprise_ids).await? {
        let held = designations.get(&row.id).cloned().unwrap_or_default();
        enterprises.insert(row.id, to_enterprise(row, held)?);
    }
    rows.into_iter()
        .map(|row| {
            let need = needs.get(&row.need_id).cloned().ok_or_else(|| {
                Error::Internal(anyhow::anyhow!("referral {} without need", row.id))
            })?;
            let disbursed_minor = disbursed.get(&row.id).copied().unwrap_or(0);
            let referral = to_referral(row)?;
            let mut enterprise = enterprises.get(&need.enterprise_id).cloned();
            if !(need.consent_to_share && referral.status.shows_contact())
                && let Some(e) = enterprise.as_mut()
            {
                e.contact_name = String::new();
                e.contact_phone = None;
            }
            Ok(LenderReferral {
                disbursed_minor,
                referral,
                need: Some(to_need(need)?),
                enterprise,
            })
        })
        .collect()
}
