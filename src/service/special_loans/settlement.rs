//! What becomes of a reservation: confirmed by the loan the lender recorded, released by the
//! caller, or released by the sweeper when it lapses.

use chrono::{DateTime, NaiveDate, Utc};
use scoped_futures::ScopedFutureExt as _;
use uuid::Uuid;

use super::allocation::check_window;
use super::{Allocation, RPC_CONFIRM, RPC_RELEASE, money, to_allocation};
use crate::domain::{AllocationStatus, LoanReference, Note, ReferralEventKind, ReleaseReason};
use crate::service::financing::SWEEPER;
use crate::service::{App, Error, Principal, Result, audit, reason};
use crate::storage::special_loans::AllocationRow;
use crate::storage::{self, Connection, Failure};

impl App {
    /// RESERVED → CONFIRMED by the loan the lender recorded under `loan_reference`; the amount
    /// moves from reserved to confirmed. Confirming again with the same reference and date
    /// returns it unchanged.
    #[tracing::instrument(skip(self, who, loan_reference))]
    pub async fn confirm_allocation(
        &self,
        who: &Principal,
        id: Uuid,
        loan_reference: LoanReference,
        disbursed_on: NaiveDate,
    ) -> Result<Allocation> {
        who.require("ConfirmAllocation")?;
        let loan_reference = &loan_reference;
        self.write(|conn| {
            async move { confirm(conn, who, id, loan_reference, disbursed_on, Utc::now()).await }
                .scope_boxed()
        })
        .await
    }

    /// RESERVED → RELEASED; the quota returns to the lender, the program and the enterprise's
    /// cap at once. Releasing a RELEASED allocation returns it unchanged.
    #[tracing::instrument(skip(self, who, why))]
    pub async fn release_allocation(
        &self,
        who: &Principal,
        id: Uuid,
        why: Note,
    ) -> Result<Allocation> {
        who.require("ReleaseAllocation")?;
        let why = &why;
        self.write(|conn| {
            async move {
                let row =
                    storage::special_loans::find_allocation_for_update(conn, id, who.lender_id)
                        .await?
                        .ok_or_else(|| Error::not_found("allocation", id))?;
                match row.status {
                    AllocationStatus::Released => return to_allocation(row),
                    AllocationStatus::Confirmed => {
                        return Err(Error::illegal_transition(
                            ("allocation_id", id),
                            AllocationStatus::Confirmed,
                            AllocationStatus::Released,
                        )
                        .because(format!(
                            "loan {:?} is disbursed, and a disbursed loan's quota cannot be released",
                            row.loan_reference.unwrap_or_default()
                        )));
                    }
                    AllocationStatus::Reserved => {}
                }
                let detail = serde_json::json!({ "reason": why.as_str() });
                release(conn, Some(who), RPC_RELEASE, row, ReleaseReason::ReleasedByCaller, detail)
                    .await

            }
            .scope_boxed()
        })
        .await
    }

    /// Releases every reservation that lapsed by `now`, one per transaction, each audited as
    /// the sweeper's. Replicas running it at once never release one twice: each claims its
    /// allocation with `SKIP LOCKED` and checks it is still RESERVED. Returns how many it
    /// released.
    pub async fn release_lapsed_reservations(&self, now: DateTime<Utc>) -> Result<usize> {
        let mut released = 0;
        loop {
            let lapsed = {
                let mut conn = self.conn().await?;
                storage::special_loans::lapsed_reservations(&mut conn, now, LAPSE_BATCH).await?
            };
            let mut handled = 0;
            for &id in &lapsed {
                let done = self
                    .write(|conn| async move { lapse(conn, id, now).await }.scope_boxed())
                    .await?;
                if let Some(allocation) = done {
                    handled += 1;
                    metrics::counter!("finmatch_reservations_lapsed_total").increment(1);
                    tracing::info!(
                        allocation_id = %allocation.id,
                        program_id = %allocation.program_id,
                        lender_id = %allocation.lender_id,
                        amount_minor = allocation.amount_minor,
                        "reservation lapsed; quota released"
                    );
                }
            }
            released += handled;
            // The rest are held by calls or other replicas, which finish them or leave them to
            // the next pass.
            if lapsed.len() < LAPSE_BATCH as usize || handled == 0 {
                break;
            }
        }
        Ok(released)
    }
}

/// Lapsed reservations listed at once.
const LAPSE_BATCH: i64 = 100;

/// One confirmation, in its transaction: the allocation is locked first (see the lock order in
/// `storage::special_loans`), the recorded loan is read, then the balances move.
async fn confirm(
    conn: &mut Connection,
    who: &Principal,
    id: Uuid,
    loan_reference: &LoanReference,
    disbursed_on: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Allocation> {
    let reference = loan_reference.as_str();
    let row = storage::special_loans::find_allocation_for_update(conn, id, who.lender_id)
        .await?
        .ok_or_else(|| Error::not_found("allocation", id))?;
    if confirmed_already(&row, reference, disbursed_on)? {
        return to_allocation(row);
    }
    check_not_lapsed(&row, now)?;
    let program = storage::special_loans::find_program(conn, row.program_id)
        .await?
        .ok_or_else(|| Error::not_found("program", row.program_id))?;
    check_window(&program, disbursed_on, "disbursed_on")?;
    check_recorded_loan(conn, &row, reference, disbursed_on).await?;
    if let Some(other) =
        storage::special_loans::find_allocation_by_reference(conn, row.lender_id, reference).await?
    {
        return Err(duplicate_reference(reference, other.id));
    }
    let updated =
        match storage::special_loans::confirm_allocation(conn, id, reference, disbursed_on).await {
            // A concurrent confirmation took the reference; the retry names it.
            Err(e) if matches!(storage::classify(&e), Failure::UniqueViolation(_)) => {
                return Err(Error::conflict());
            }
            other => other?,
        };
    let amount = row.amount_minor;
    // Lock order: (allocation,) lender quota, program.
    storage::special_loans::adjust_lender_balance(
        conn,
        row.program_id,
        row.lender_id,
        -amount,
        amount,
    )
    .await?;
    storage::special_loans::adjust_program_balance(conn, row.program_id, -amount, amount).await?;
    audit::record(
        conn,
        Some(who),
        RPC_CONFIRM,
        "allocation",
        id,
        serde_json::json!({
            "program_id": row.program_id,
            "loan_reference": reference,
            "disbursed_on": disbursed_on,
            "amount_minor": amount,
        }),
    )
    .await?;
    to_allocation(updated)
}

/// True when the allocation is confirmed already by this very loan (a retry); an error when it
/// is confirmed by another or released; false when it is RESERVED.
fn confirmed_already(
    row: &AllocationRow,
    reference: &str,
    disbursed_on: NaiveDate,
) -> Result<bool> {
    let id = row.id;
    match row.status {
        AllocationStatus::Reserved => Ok(false),
        AllocationStatus::Confirmed
            if row.loan_reference.as_deref() == Some(reference)
                && row.disbursed_on == Some(disbursed_on) =>
        {
            Ok(true)
        }
        AllocationStatus::Confirmed => Err(Error::illegal_transition(
            ("allocation_id", id),
            AllocationStatus::Confirmed,
            AllocationStatus::Confirmed,
        )
        .because(format!(
            "it is already confirmed with loan_reference {:?} disbursed on {}",
            row.loan_reference.as_deref().unwrap_or_default(),
            row.disbursed_on.map(|d| d.to_string()).unwrap_or_default()
        ))),
        AllocationStatus::Released => Err(Error::illegal_transition(
            ("allocation_id", id),
            AllocationStatus::Released,
            AllocationStatus::Confirmed,
        )
        .because("reserve quota again")),
    }
}

/// RESERVATION_LAPSED when the reservation's time ran out by `now` (the sweeper is releasing
/// it).
fn check_not_lapsed(row: &AllocationRow, now: DateTime<Utc>) -> Result<()> {
    let Some(lapsed_at) = row.expires_at.filter(|at| *at <= now) else {
        return Ok(());
    };
    Err(Error::precondition(
        reason::RESERVATION_LAPSED,
        format!(
            "allocation {}'s reservation lapsed at {}; its quota is being released. \
             Reserve quota again with AllocateSpecialLoan",
            row.id,
            lapsed_at.to_rfc3339()
        ),
    )
    .with_metadata("expire_time", lapsed_at.to_rfc3339()))
}

/// A special loan is confirmed only by the loan itself: a disbursement the allocation's lender
/// recorded under `reference`, for the allocation's enterprise (on its referral, when it names
/// one), paid out on `disbursed_on`, covering the allocation's amount.
async fn check_recorded_loan(
    conn: &mut Connection,
    allocation: &AllocationRow,
    reference: &str,
    disbursed_on: NaiveDate,
) -> Result<()> {
    let loan = storage::special_loans::recorded_loan(conn, allocation.lender_id, reference)
        .await?
        .filter(|loan| {
            loan.enterprise_id == allocation.enterprise_id
                && allocation.referral_id.is_none_or(|r| r == loan.referral_id)
        });
    let Some(loan) = loan else {
        let on_referral = allocation
            .referral_id
            .map(|r| format!(" on referral {r}"))
            .unwrap_or_default();
        return Err(Error::precondition(
            reason::NO_DISBURSEMENT,
            format!(
                "lender {} has recorded no disbursement with loan_reference {reference:?} for \
                 enterprise {}{on_referral}; record the loan with RecordDisbursement first",
                allocation.lender_id, allocation.enterprise_id
            ),
        ));
    };
    if loan.disbursed_on != disbursed_on {
        return Err(Error::precondition(
            reason::DISBURSEMENT_MISMATCH,
            format!(
                "loan {reference:?} was recorded as disbursed on {}, not {disbursed_on}",
                loan.disbursed_on
            ),
        )
        .with_metadata("disbursed_on", loan.disbursed_on));
    }
    if loan.amount_minor < allocation.amount_minor {
        return Err(Error::precondition(
            reason::DISBURSEMENT_TOO_SMALL,
            format!(
                "loan {reference:?} disbursed {}, less than the allocation's {} by {}",
                money(loan.amount_minor),
                money(allocation.amount_minor),
                money(allocation.amount_minor - loan.amount_minor)
            ),
        )
        .with_metadata("limit", loan.amount_minor)
        .with_metadata("requested", allocation.amount_minor));
    }
    Ok(())
}

/// Releases the lapsed reservation `id` if it is still one and nobody holds it.
async fn lapse(conn: &mut Connection, id: Uuid, now: DateTime<Utc>) -> Result<Option<Allocation>> {
    let Some(row) = storage::special_loans::lock_lapsed(conn, id, now).await? else {
        return Ok(None);
    };
    let detail =
        serde_json::json!({ "reason": "reservation lapsed", "expires_at": row.expires_at });
    let referral_id = row.referral_id;
    let released = release(conn, None, SWEEPER, row, ReleaseReason::Lapsed, detail).await?;
    // The lender hears of it on its feed, when the reservation came through one of its referrals.
    if let Some(referral_id) = referral_id
        && let Some(referral) =
            storage::partner::find(conn, released.lender_id, referral_id).await?
    {
        storage::referrals::insert_event(
            conn,
            &storage::referrals::NewReferralEvent {
                referral_id,
                lender_id: referral.lender_id,
                need_id: referral.need_id,
                kind: ReferralEventKind::ReservationLapsed,
                status: referral.status,
                detail: serde_json::json!({
                    "allocation_id": released.id,
                    "program_id": released.program_id,
                    "amount_minor": released.amount_minor,
                }),
            },
        )
        .await?;
    }
    Ok(Some(released))
}

/// RESERVED → RELEASED for a locked allocation: its amount returns to the enterprise's cap, the
/// lender's quota and the program, and the release is audited with `detail`.
async fn release(
    conn: &mut Connection,
    who: Option<&Principal>,
    rpc: &str,
    row: AllocationRow,
    why: ReleaseReason,
    mut detail: serde_json::Value,
) -> Result<Allocation> {
    let updated = storage::special_loans::release_allocation(conn, row.id, why).await?;
    let amount = row.amount_minor;
    // Lock order: (allocation,) enterprise standing, lender quota, program.
    storage::special_loans::subtract_enterprise_live(
        conn,
        row.program_id,
        row.enterprise_id,
        amount,
    )
    .await?;
    storage::special_loans::adjust_lender_balance(conn, row.program_id, row.lender_id, -amount, 0)
        .await?;
    storage::special_loans::adjust_program_balance(conn, row.program_id, -amount, 0).await?;
    detail["program_id"] = serde_json::json!(row.program_id);
    detail["amount_minor"] = serde_json::json!(amount);
    detail["release_reason"] = serde_json::json!(why.as_str());
    audit::record(conn, who, rpc, "allocation", row.id, detail).await?;
    to_allocation(updated)
}

fn duplicate_reference(reference: &str, existing: Uuid) -> Error {
    Error::AlreadyExists {
        entity: "allocation",
        reason: reason::DUPLICATE_LOAN_REFERENCE,
        message: format!(
            "the lender already confirmed allocation {existing} with loan_reference {reference:?}"
        ),
        existing_id: existing.to_string(),
    }
}
