//! Special-loan programs: quotas of preferential loans with rules, lender quotas, and
//! allocations that reserve quota for one loan.
//!
//! An allocation checks every rule and takes its quota in one transaction. The rules that depend
//! only on the request and the program (loan date, term, rates) and on the enterprise's
//! designations are checked first; the balances are then moved by conditional updates in a fixed
//! order (the enterprise's standing in the program, the lender's quota, the program's quota; see
//! `storage::special_loans`), each refusing in SQL what would break its rule, so no interleaving
//! of calls on any number of replicas can overdraw a quota, exceed a cap or bind an enterprise
//! to two banks.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use scoped_futures::ScopedFutureExt as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::financing::SWEEPER;
use super::paging::{Cursor, Page, PageRequest};
use super::{App, Error, Idempotency, Principal, Result, audit, reason};
use crate::domain::special_loan::{effective_rate_bps, subsidy_minor};
use crate::domain::{
    AllocationStatus, AmountMinor, Bps, ListCode, LoanReference, Name, NonNegativeMinor, Note,
    ReferralEventKind, ReferralStatus, ReleaseReason, TermMonths, format_cny, format_percent,
};
use crate::storage::special_loans::{
    AllocationFilter, AllocationRow, LenderQuotaRow, NewAllocation, ProgramRow,
};
use crate::storage::{self, Connection, Failure};

const RPC_CREATE: &str = "finmatch.v1.SpecialLoanService/CreateProgram";
const RPC_SET_QUOTA: &str = "finmatch.v1.SpecialLoanService/SetLenderQuota";
const RPC_ALLOCATE: &str = "finmatch.v1.SpecialLoanService/AllocateSpecialLoan";
const RPC_CONFIRM: &str = "finmatch.v1.SpecialLoanService/ConfirmAllocation";
const RPC_RELEASE: &str = "finmatch.v1.SpecialLoanService/ReleaseAllocation";
/// Lapsed reservations listed at once.
const LAPSE_BATCH: i64 = 100;

/// A program to create, with its rules.
#[derive(Debug, Clone)]
pub struct NewProgram {
    /// Program codes follow the list-code pattern `^[A-Z][A-Z0-9_]{1,63}$`.
    pub code: ListCode,
    pub name: Name,
    pub total_quota: AmountMinor,
    pub rate_cap: Bps,
    pub subsidy_ratio: Bps,
    pub max_effective_rate: Option<Bps>,
    pub per_enterprise_cap: Option<AmountMinor>,
    pub max_term: TermMonths,
    pub required_designations: Vec<ListCode>,
    pub loan_date_from: NaiveDate,
    /// Inclusive; None = open-ended. Never before `loan_date_from`.
    pub loan_date_to: Option<NaiveDate>,
    pub one_bank_per_enterprise: bool,
    /// How long a reservation holds quota, 1 to 8760 hours.
    pub reservation_hours: i32,
}

/// A program as stored, with its live balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub id: Uuid,
    pub code: String,
    pub name: String,
    pub total_quota_minor: i64,
    pub rate_cap_bps: i32,
    pub subsidy_ratio_bps: i32,
    pub max_effective_rate_bps: Option<i32>,
    pub per_enterprise_cap_minor: Option<i64>,
    pub max_term_months: i32,
    pub required_designations: Vec<String>,
    pub loan_date_from: NaiveDate,
    pub loan_date_to: Option<NaiveDate>,
    pub one_bank_per_enterprise: bool,
    pub reservation_hours: i32,
    pub balance: ProgramBalance,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramBalance {
    pub reserved_minor: i64,
    pub confirmed_minor: i64,
    pub remaining_minor: i64,
    /// Ordered by lender id; for a LENDER caller only its own line.
    pub lenders: Vec<LenderQuotaBalance>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LenderQuotaBalance {
    pub lender_id: Uuid,
    pub quota_minor: i64,
    pub reserved_minor: i64,
    pub confirmed_minor: i64,
    pub remaining_minor: i64,
}

/// A validated AllocateSpecialLoan request.
#[derive(Debug, Clone)]
pub struct AllocationRequest {
    pub program_id: Uuid,
    pub lender_id: Uuid,
    pub enterprise_id: Uuid,
    pub referral_id: Option<Uuid>,
    pub amount: AmountMinor,
    pub rate: Bps,
    pub term: TermMonths,
    pub loan_date: NaiveDate,
}

/// A reservation of program quota for one loan; an AllocateSpecialLoan replay record holds the
/// one its call answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub id: Uuid,
    pub program_id: Uuid,
    pub lender_id: Uuid,
    pub enterprise_id: Uuid,
    pub referral_id: Option<Uuid>,
    pub amount_minor: i64,
    pub rate_bps: i32,
    pub term_months: i32,
    pub loan_date: NaiveDate,
    pub status: AllocationStatus,
    pub subsidy_minor: i64,
    pub effective_rate_bps: i32,
    /// The designation the eligibility decision relied on, and its list code.
    pub designation_id: Option<Uuid>,
    /// Named in replay records as the column it comes from, as records have always named it.
    #[serde(rename = "designation_list_code")]
    pub designation_used: Option<String>,
    pub loan_reference: Option<String>,
    pub disbursed_on: Option<NaiveDate>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the reservation lapses; None only in a replay of a response given before
    /// reservations lapsed.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Set when RELEASED (None on allocations released before reasons were recorded).
    #[serde(default)]
    pub release_reason: Option<ReleaseReason>,
}

/// Filters of [`App::list_allocations`]; None and empty mean "any".
#[derive(Debug, Clone, Default)]
pub struct AllocationQuery {
    pub program_id: Option<Uuid>,
    pub lender_id: Option<Uuid>,
    pub enterprise_id: Option<Uuid>,
    pub statuses: Vec<AllocationStatus>,
}

impl App {
    /// Creates a program with its rules and no lender quotas; ALREADY_EXISTS for a taken code.
    #[tracing::instrument(skip_all, fields(code = input.code.as_str()))]
    pub async fn create_program(&self, who: &Principal, input: NewProgram) -> Result<Program> {
        who.require("CreateProgram")?;
        let input = &input;
        let program = self
            .write(|conn| {
                async move {
                    let code = input.code.as_str();
                    if let Some(existing) =
                        storage::special_loans::find_program_by_code(conn, code).await?
                    {
                        return Err(duplicate_code(code, existing.id));
                    }
                    let new = storage::special_loans::NewProgram {
                        code,
                        name: input.name.as_str(),
                        total_quota_minor: input.total_quota.get(),
                        rate_cap_bps: input.rate_cap.get(),
                        subsidy_ratio_bps: input.subsidy_ratio.get(),
                        max_effective_rate_bps: input.max_effective_rate.map(Bps::get),
                        per_enterprise_cap_minor: input.per_enterprise_cap.map(AmountMinor::get),
                        max_term_months: input.max_term.get(),
                        required_designations: input
                            .required_designations
                            .iter()
                            .map(ListCode::as_str)
                            .collect(),
                        loan_date_from: input.loan_date_from,
                        loan_date_to: input.loan_date_to,
                        one_bank_per_enterprise: input.one_bank_per_enterprise,
                        reservation_hours: input.reservation_hours,
                    };
                    let row = match storage::special_loans::insert_program(conn, &new).await {
                        // A concurrent creation of the same code won; the retry names it.
                        Err(e) if matches!(storage::classify(&e), Failure::UniqueViolation(_)) => {
                            return Err(Error::conflict());
                        }
                        other => other?,
                    };
                    audit::record(
                        conn,
                        Some(who),
                        RPC_CREATE,
                        "program",
                        row.id,
                        serde_json::json!({
                            "code": row.code,
                            "total_quota_minor": row.total_quota_minor,
                            "reservation_hours": row.reservation_hours,
                        }),
                    )
                    .await?;
                    to_program(row, Vec::new())
                }
                .scope_boxed()
            })
            .await?;
        tracing::info!(program_id = %program.id, "program created");
        Ok(program)
    }

    /// The program with its balances, read in one snapshot; a lender sees only its own quota.
    pub async fn get_program(&self, who: &Principal, id: Uuid) -> Result<Program> {
        who.require("GetProgram")?;
        let lender_scope = who.lender_id;
        self.conn()
            .await?
            .build_transaction()
            .repeatable_read()
            .read_only()
            .run(async move |conn| load_program(conn, id, lender_scope).await)
            .await
    }

    /// Sets one lender's quota. The lender quotas never sum to more than the program total, and
    /// a quota never drops below what its lender has reserved plus confirmed.
    #[tracing::instrument(skip(self, who))]
    pub async fn set_lender_quota(
        &self,
        who: &Principal,
        program_id: Uuid,
        lender_id: Uuid,
        quota: NonNegativeMinor,
    ) -> Result<Program> {
        who.require("SetLenderQuota")?;
        let quota = quota.get();
        self.write(|conn| {
            async move {
                storage::special_loans::find_program(conn, program_id)
                    .await?
                    .ok_or_else(|| Error::not_found("program", program_id))?;
                storage::lenders::find(conn, lender_id)
                    .await?
                    .ok_or_else(|| Error::not_found("lender", lender_id))?;
                // Lock order: the lender's quota row, then the program row.
                let current =
                    storage::special_loans::lock_lender_quota(conn, program_id, lender_id).await?;
                let used = current.reserved_minor + current.confirmed_minor;
                if quota < used {
                    return Err(Error::precondition(
                        reason::QUOTA_BELOW_USAGE,
                        format!(
                            "quota_minor {} is below what lender {lender_id} has already \
                             reserved plus confirmed in program {program_id}, {}, by {}",
                            money(quota),
                            money(used),
                            money(used - quota)
                        ),
                    )
                    .with_metadata("limit", used)
                    .with_metadata("requested", quota));
                }
                let delta = quota - current.quota_minor;
                if delta != 0
                    && storage::special_loans::add_lender_quota_sum(conn, program_id, delta)
                        .await?
                        .is_none()
                {
                    let program = storage::special_loans::find_program(conn, program_id)
                        .await?
                        .ok_or_else(|| Error::not_found("program", program_id))?;
                    let sum = program.lender_quota_sum_minor + delta;
                    return Err(Error::precondition(
                        reason::QUOTA_EXCEEDED,
                        format!(
                            "with this quota the lender quotas of program {program_id} would \
                             sum to {}, more than its total_quota_minor {} by {}",
                            money(sum),
                            money(program.total_quota_minor),
                            money(sum - program.total_quota_minor)
                        ),
                    )
                    .with_metadata("limit", program.total_quota_minor)
                    .with_metadata("requested", sum));
                }
                storage::special_loans::set_lender_quota(conn, program_id, lender_id, quota)
                    .await?;
                audit::record(
                    conn,
                    Some(who),
                    RPC_SET_QUOTA,
                    "program",
                    program_id,
                    serde_json::json!({
                        "lender_id": lender_id,
                        "quota_minor": quota,
                        "previous_quota_minor": current.quota_minor,
                    }),
                )
                .await?;
                load_program(conn, program_id, None).await
            }
            .scope_boxed()
        })
        .await
    }

    /// Reserves quota for one loan after checking every rule, atomically. Idempotent by key.
    #[tracing::instrument(skip_all, fields(program_id = %request.program_id, lender_id = %request.lender_id))]
    pub async fn allocate_special_loan(
        &self,
        who: &Principal,
        idempotency: Idempotency,
        request: AllocationRequest,
    ) -> Result<Allocation> {
        who.require("AllocateSpecialLoan")?;
        if let Some(own) = who.lender_id
            && own != request.lender_id
        {
            return Err(Error::PermissionDenied(format!(
                "a lender credential may allocate only for its own lender {own}, not for {}",
                request.lender_id
            )));
        }
        let idempotency = &idempotency;
        let request = &request;
        let outcome = self
            .write(|conn| {
                async move { allocate(conn, who, idempotency, request).await }.scope_boxed()
            })
            .await;
        let error = match outcome {
            Ok(allocation) => {
                tracing::info!(allocation_id = %allocation.id, "quota reserved");
                return Ok(allocation);
            }
            Err(error) => error,
        };
        // A twin call with the same key may have committed while this one was checking the rules
        // against the balance the twin had just taken: the twin's answer is the answer.
        if matches!(&error, Error::FailedPrecondition { reason: r, .. } if *r != reason::IDEMPOTENCY_KEY_REUSED)
            && let Some(saved) = self.saved_response(who, idempotency).await?
        {
            return Ok(saved);
        }
        Err(error)
    }

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

    /// Allocations in creation order; a lender sees only its own (filtered in SQL).
    pub async fn list_allocations(
        &self,
        who: &Principal,
        query: AllocationQuery,
        page: PageRequest,
    ) -> Result<Page<Allocation>> {
        who.require("ListAllocations")?;
        let lender_id = match (who.lender_id, query.lender_id) {
            (Some(own), Some(asked)) if own != asked => {
                return Err(Error::PermissionDenied(format!(
                    "a lender credential may list only its own lender's allocations ({own}), \
                     not {asked}'s"
                )));
            }
            (Some(own), _) => Some(own),
            (None, asked) => asked,
        };
        let filter = AllocationFilter {
            program_id: query.program_id,
            lender_id,
            enterprise_id: query.enterprise_id,
            statuses: query.statuses.clone(),
        };
        let mut conn = self.conn().await?;
        let rows = storage::special_loans::list_allocations(
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
            items: page
                .items
                .into_iter()
                .map(to_allocation)
                .collect::<Result<_>>()?,
            next: page.next,
        })
    }

    /// The response saved under the caller's key, read outside any transaction.
    async fn saved_response(
        &self,
        who: &Principal,
        idempotency: &Idempotency,
    ) -> Result<Option<Allocation>> {
        let mut conn = self.conn().await?;
        audit::replayed(&mut conn, who, RPC_ALLOCATE, idempotency).await
    }
}

/// The allocation transaction: replay, rules, balances (in lock order), the row, audit, replay
/// record.
async fn allocate(
    conn: &mut Connection,
    who: &Principal,
    idempotency: &Idempotency,
    request: &AllocationRequest,
) -> Result<Allocation> {
    if let Some(saved) = audit::replayed(conn, who, RPC_ALLOCATE, idempotency).await? {
        return Ok(saved);
    }
    let program = storage::special_loans::find_program(conn, request.program_id)
        .await?
        .ok_or_else(|| Error::not_found("program", request.program_id))?;
    storage::lenders::find(conn, request.lender_id)
        .await?
        .ok_or_else(|| Error::not_found("lender", request.lender_id))?;
    storage::enterprises::find(conn, request.enterprise_id)
        .await?
        .ok_or_else(|| Error::not_found("enterprise", request.enterprise_id))?;
    if who.lender_id.is_some() && !holds_referral(conn, request).await? {
        // Quota is the bureau's to steer: a bank reserves it only for an enterprise the bureau
        // referred to it (else it could bind any key enterprise to itself under the one-bank
        // rule). To the bank, an enterprise it holds no referral of is as unknown as any other.
        return Err(Error::not_found("enterprise", request.enterprise_id));
    }
    if let Some(referral_id) = request.referral_id {
        check_referral(conn, who, request, referral_id).await?;
    }

    check_window(&program, request.loan_date, "loan_date")?;
    check_term(&program, request.term)?;
    let (effective, subsidy) = check_rates(&program, request)?;
    let designation = eligible_designation(conn, &program, request).await?;

    let amount = request.amount.get();
    let (program_id, enterprise_id, lender_id) =
        (program.id, request.enterprise_id, request.lender_id);
    let standing = storage::special_loans::add_enterprise_live(
        conn,
        program_id,
        enterprise_id,
        lender_id,
        amount,
        program.one_bank_per_enterprise,
        program.per_enterprise_cap_minor,
    )
    .await;
    match standing {
        Ok(Some(_)) => {}
        Ok(None) => return Err(enterprise_refusal(conn, who, &program, request).await?),
        // Binding the enterprise to a lender needs that lender's quota row.
        Err(e) if matches!(storage::classify(&e), Failure::ForeignKeyViolation(_)) => {
            return Err(no_lender_quota(&program, lender_id, amount));
        }
        Err(e) => return Err(e.into()),
    }
    if storage::special_loans::reserve_lender_quota(conn, program_id, lender_id, amount)
        .await?
        .is_none()
    {
        return Err(
            match storage::special_loans::find_lender_quota(conn, program_id, lender_id).await? {
                None => no_lender_quota(&program, lender_id, amount),
                Some(quota) => lender_quota_exceeded(&quota, amount),
            },
        );
    }
    if storage::special_loans::reserve_program_quota(conn, program_id, amount)
        .await?
        .is_none()
    {
        let now = storage::special_loans::find_program(conn, program_id)
            .await?
            .ok_or_else(|| Error::not_found("program", program_id))?;
        return Err(program_quota_exceeded(&now, amount));
    }

    let row = storage::special_loans::insert_allocation(
        conn,
        &NewAllocation {
            program_id,
            lender_id,
            enterprise_id,
            referral_id: request.referral_id,
            amount_minor: amount,
            rate_bps: request.rate.get(),
            term_months: request.term.get(),
            loan_date: request.loan_date,
            subsidy_minor: subsidy,
            effective_rate_bps: effective.get(),
            designation_id: designation.as_ref().map(|d| d.id),
            designation_list_code: designation.as_ref().map(|d| d.list_code.as_str()),
            idempotency_key: Some(idempotency.key.as_str()),
            expires_at: Utc::now() + TimeDelta::hours(i64::from(program.reservation_hours)),
        },
    )
    .await?;
    audit::record(
        conn,
        Some(who),
        RPC_ALLOCATE,
        "allocation",
        row.id,
        serde_json::json!({
            "program_id": program_id,
            "lender_id": lender_id,
            "enterprise_id": enterprise_id,
            "amount_minor": amount,
            "designation_id": row.designation_id,
            "designation_list_code": row.designation_list_code,
            "expires_at": row.expires_at,
        }),
    )
    .await?;
    let allocation = to_allocation(row)?;
    audit::remember(conn, who, RPC_ALLOCATE, idempotency, &allocation).await?;
    Ok(allocation)
}

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
    match row.status {
        AllocationStatus::Confirmed
            if row.loan_reference.as_deref() == Some(reference)
                && row.disbursed_on == Some(disbursed_on) =>
        {
            return to_allocation(row);
        }
        AllocationStatus::Confirmed => {
            return Err(Error::illegal_transition(
                ("allocation_id", id),
                AllocationStatus::Confirmed,
                AllocationStatus::Confirmed,
            )
            .because(format!(
                "it is already confirmed with loan_reference {:?} disbursed on {}",
                row.loan_reference.unwrap_or_default(),
                row.disbursed_on.map(|d| d.to_string()).unwrap_or_default()
            )));
        }
        AllocationStatus::Released => {
            return Err(Error::illegal_transition(
                ("allocation_id", id),
                AllocationStatus::Released,
                AllocationStatus::Confirmed,
            )
            .because("reserve quota again"));
        }
        AllocationStatus::Reserved => {}
    }
    if let Some(lapsed_at) = row.expires_at.filter(|at| *at <= now) {
        return Err(Error::precondition(
            reason::RESERVATION_LAPSED,
            format!(
                "allocation {id}'s reservation lapsed at {}; its quota is being released. \
                 Reserve quota again with AllocateSpecialLoan",
                lapsed_at.to_rfc3339()
            ),
        )
        .with_metadata("expire_time", lapsed_at.to_rfc3339()));
    }
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

/// Whether the request's lender holds a live referral (open or funded: one on which it may see
/// the enterprise) for a need of the request's enterprise.
async fn holds_referral(conn: &mut Connection, request: &AllocationRequest) -> Result<bool> {
    let live = storage::statuses(ReferralStatus::ALL, ReferralStatus::shows_contact);
    Ok(storage::special_loans::lender_holds_referral(
        conn,
        request.lender_id,
        request.enterprise_id,
        &live,
    )
    .await?)
}

/// A referral named by an allocation must be the lender's, for a need of the enterprise.
async fn check_referral(
    conn: &mut Connection,
    who: &Principal,
    request: &AllocationRequest,
    referral_id: Uuid,
) -> Result<()> {
    let parties = storage::special_loans::referral_parties(conn, referral_id).await?;
    match parties {
        // Another lender's referral does not exist for a lender caller.
        None => Err(Error::not_found("referral", referral_id)),
        Some((lender, _)) if who.lender_id.is_some() && who.lender_id != Some(lender) => {
            Err(Error::not_found("referral", referral_id))
        }
        Some((lender, enterprise))
            if lender == request.lender_id && enterprise == request.enterprise_id =>
        {
            Ok(())
        }
        Some(_) => Err(Error::invalid(
            "referral_id",
            format!(
                "referral {referral_id} is not lender {}'s referral of a need of enterprise {}",
                request.lender_id, request.enterprise_id
            ),
        )),
    }
}

fn check_window(program: &ProgramRow, day: NaiveDate, field: &str) -> Result<()> {
    if day < program.loan_date_from {
        let early = (program.loan_date_from - day).num_days();
        return Err(Error::precondition(
            reason::LOAN_DATE,
            format!(
                "{field} {day} is {early} day(s) before program {}'s first loan date {}",
                program.code, program.loan_date_from
            ),
        )
        .with_metadata("limit", program.loan_date_from)
        .with_metadata("requested", day));
    }
    if let Some(last) = program.loan_date_to
        && day > last
    {
        let late = (day - last).num_days();
        return Err(Error::precondition(
            reason::LOAN_DATE,
            format!(
                "{field} {day} is {late} day(s) after program {}'s last loan date {last}",
                program.code
            ),
        )
        .with_metadata("limit", last)
        .with_metadata("requested", day));
    }
    Ok(())
}

fn check_term(program: &ProgramRow, term: TermMonths) -> Result<()> {
    let term = term.get();
    if term > program.max_term_months {
        return Err(Error::precondition(
            reason::TERM_CAP,
            format!(
                "term_months {term} exceeds program {}'s max_term_months {} by {} month(s)",
                program.code,
                program.max_term_months,
                term - program.max_term_months
            ),
        )
        .with_metadata("limit", program.max_term_months)
        .with_metadata("requested", term));
    }
    Ok(())
}

/// Checks the rate caps; returns the effective rate and the subsidy estimate.
fn check_rates(program: &ProgramRow, request: &AllocationRequest) -> Result<(Bps, i64)> {
    let rate = request.rate.get();
    if rate > program.rate_cap_bps {
        return Err(Error::precondition(
            reason::RATE_CAP,
            format!(
                "rate_bps {rate} ({}) exceeds program {}'s rate_cap_bps {} ({}) by {} bps",
                format_percent(rate),
                program.code,
                program.rate_cap_bps,
                format_percent(program.rate_cap_bps),
                rate - program.rate_cap_bps
            ),
        )
        .with_metadata("limit", program.rate_cap_bps)
        .with_metadata("requested", rate));
    }
    let ratio = Bps::new(program.subsidy_ratio_bps).map_err(|e| {
        Error::Internal(anyhow::anyhow!(
            "program {} has subsidy ratio {}: {e}",
            program.id,
            program.subsidy_ratio_bps
        ))
    })?;
    let effective = effective_rate_bps(request.rate, ratio);
    if let Some(cap) = program.max_effective_rate_bps
        && effective.get() > cap
    {
        return Err(Error::precondition(
            reason::RATE_CAP,
            format!(
                "effective_rate_bps {} (rate_bps {rate} after the {} subsidy) exceeds program {}'s \
                 max_effective_rate_bps {cap} by {} bps",
                effective.get(),
                format_percent(program.subsidy_ratio_bps),
                program.code,
                effective.get() - cap
            ),
        )
        .with_metadata("limit", cap)
        .with_metadata("requested", effective.get()));
    }
    let subsidy = subsidy_minor(request.amount, request.rate, ratio, request.term);
    Ok((effective, subsidy))
}

/// The designation the allocation relies on: the first of the program's required lists the
/// enterprise holds valid on the loan date. None when the program requires none.
async fn eligible_designation(
    conn: &mut Connection,
    program: &ProgramRow,
    request: &AllocationRequest,
) -> Result<Option<storage::special_loans::EligibleDesignation>> {
    let required = storage::lenders::strings(program.required_designations.clone());
    if required.is_empty() {
        return Ok(None);
    }
    let held = storage::special_loans::eligible_designations(
        conn,
        request.enterprise_id,
        &required,
        request.loan_date,
    )
    .await?;
    let first = required
        .iter()
        .find_map(|code| held.iter().find(|d| &d.list_code == code));
    match first {
        Some(designation) => Ok(Some(designation.clone())),
        None => Err(Error::precondition(
            reason::NOT_ELIGIBLE,
            format!(
                "enterprise {} holds no designation valid on {} of the lists program {} requires \
                 (any of: {})",
                request.enterprise_id,
                request.loan_date,
                program.code,
                required.join(", ")
            ),
        )
        .with_metadata("limit", required.join(","))
        .with_metadata("requested", request.enterprise_id)),
    }
}

/// Why the enterprise's standing refused the amount: the one-bank rule first, then the cap. The
/// bureau is told the other lender and the amounts; a lender learns neither another lender nor
/// any amount that is not its own.
async fn enterprise_refusal(
    conn: &mut Connection,
    who: &Principal,
    program: &ProgramRow,
    request: &AllocationRequest,
) -> Result<Error> {
    let to_lender = who.lender_id.is_some();
    let standing =
        storage::special_loans::find_program_enterprise(conn, program.id, request.enterprise_id)
            .await?;
    let live = standing.as_ref().map_or(0, |s| s.live_minor);
    if let Some(standing) = &standing
        && program.one_bank_per_enterprise
        && standing.live_minor > 0
        && standing.lender_id != request.lender_id
    {
        if to_lender {
            return Ok(Error::precondition(
                reason::ONE_BANK_RULE,
                format!(
                    "enterprise {} already borrows in program {} through another lender; one \
                     enterprise, one bank: this lender cannot reserve quota for it while that \
                     lasts",
                    request.enterprise_id, program.code
                ),
            ));
        }
        return Ok(Error::precondition(
            reason::ONE_BANK_RULE,
            format!(
                "enterprise {} already borrows {} in program {} through lender {}; one \
                 enterprise, one bank: its allocations must go through that lender, not {}",
                request.enterprise_id,
                money(standing.live_minor),
                program.code,
                standing.lender_id,
                request.lender_id
            ),
        )
        .with_metadata("limit", standing.lender_id)
        .with_metadata("requested", request.lender_id));
    }
    let Some(cap) = program.per_enterprise_cap_minor else {
        return Err(Error::Internal(anyhow::anyhow!(
            "program {} refused enterprise {} without a rule that applies",
            program.id,
            request.enterprise_id
        )));
    };
    let total = live + request.amount.get();
    if to_lender {
        return Ok(Error::precondition(
            reason::ENTERPRISE_CAP,
            format!(
                "amount_minor {} would take enterprise {}'s live allocations in program {} over \
                 its per_enterprise_cap_minor {}",
                money(request.amount.get()),
                request.enterprise_id,
                program.code,
                money(cap)
            ),
        )
        .with_metadata("limit", cap)
        .with_metadata("requested", request.amount.get()));
    }
    Ok(Error::precondition(
        reason::ENTERPRISE_CAP,
        format!(
            "enterprise {}'s live allocations {} plus amount_minor {} make {}, over program {}'s \
             per_enterprise_cap_minor {} by {}",
            request.enterprise_id,
            money(live),
            money(request.amount.get()),
            money(total),
            program.code,
            money(cap),
            money(total - cap)
        ),
    )
    .with_metadata("limit", cap)
    .with_metadata("requested", total))
}

fn no_lender_quota(program: &ProgramRow, lender_id: Uuid, amount: i64) -> Error {
    Error::precondition(
        reason::QUOTA_EXCEEDED,
        format!(
            "lender {lender_id} has no quota in program {}; amount_minor {} exceeds its remaining \
             quota 0 by {}",
            program.code,
            money(amount),
            money(amount)
        ),
    )
    .with_metadata("limit", 0)
    .with_metadata("requested", amount)
}

fn lender_quota_exceeded(quota: &LenderQuotaRow, amount: i64) -> Error {
    let remaining = quota.quota_minor - quota.reserved_minor - quota.confirmed_minor;
    Error::precondition(
        reason::QUOTA_EXCEEDED,
        format!(
            "amount_minor {} exceeds lender {}'s remaining quota {} in program {} (quota {}, \
             reserved {}, confirmed {}) by {}",
            money(amount),
            quota.lender_id,
            money(remaining),
            quota.program_id,
            money(quota.quota_minor),
            money(quota.reserved_minor),
            money(quota.confirmed_minor),
            money(amount - remaining)
        ),
    )
    .with_metadata("limit", remaining)
    .with_metadata("requested", amount)
}

fn program_quota_exceeded(program: &ProgramRow, amount: i64) -> Error {
    let remaining = program.total_quota_minor - program.reserved_minor - program.confirmed_minor;
    Error::precondition(
        reason::QUOTA_EXCEEDED,
        format!(
            "amount_minor {} exceeds program {}'s remaining quota {} (total {}, reserved {}, \
             confirmed {}) by {}",
            money(amount),
            program.code,
            money(remaining),
            money(program.total_quota_minor),
            money(program.reserved_minor),
            money(program.confirmed_minor),
            money(amount - remaining)
        ),
    )
    .with_metadata("limit", remaining)
    .with_metadata("requested", amount)
}

fn duplicate_code(code: &str, existing: Uuid) -> Error {
    Error::AlreadyExists {
        entity: "program",
        reason: reason::DUPLICATE_CODE,
        message: format!("program {existing} already has code {code}"),
        existing_id: existing.to_string(),
    }
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

/// An amount for a message: minor units, and yuan for the reader.
fn money(minor: i64) -> String {
    format!("{minor} ({})", format_cny(minor))
}

async fn load_program(
    conn: &mut Connection,
    id: Uuid,
    lender_scope: Option<Uuid>,
) -> Result<Program> {
    let row = storage::special_loans::find_program(conn, id)
        .await?
        .ok_or_else(|| Error::not_found("program", id))?;
    let quotas = storage::special_loans::lender_quotas(conn, id, lender_scope).await?;
    to_program(row, quotas)
}

fn to_program(row: ProgramRow, quotas: Vec<LenderQuotaRow>) -> Result<Program> {
    Ok(Program {
        id: row.id,
        code: row.code,
        name: row.name,
        total_quota_minor: row.total_quota_minor,
        rate_cap_bps: row.rate_cap_bps,
        subsidy_ratio_bps: row.subsidy_ratio_bps,
        max_effective_rate_bps: row.max_effective_rate_bps,
        per_enterprise_cap_minor: row.per_enterprise_cap_minor,
        max_term_months: row.max_term_months,
        required_designations: storage::lenders::strings(row.required_designations),
        loan_date_from: row.loan_date_from,
        loan_date_to: row.loan_date_to,
        one_bank_per_enterprise: row.one_bank_per_enterprise,
        reservation_hours: row.reservation_hours,
        balance: ProgramBalance {
            reserved_minor: row.reserved_minor,
            confirmed_minor: row.confirmed_minor,
            remaining_minor: row.total_quota_minor - row.reserved_minor - row.confirmed_minor,
            lenders: quotas
                .into_iter()
                .map(|q| LenderQuotaBalance {
                    lender_id: q.lender_id,
                    quota_minor: q.quota_minor,
                    reserved_minor: q.reserved_minor,
                    confirmed_minor: q.confirmed_minor,
                    remaining_minor: q.quota_minor - q.reserved_minor - q.confirmed_minor,
                })
                .collect(),
        },
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn to_allocation(row: AllocationRow) -> Result<Allocation> {
    let status = row.status;
    let release_reason = row.release_reason;
    Ok(Allocation {
        id: row.id,
        program_id: row.program_id,
        lender_id: row.lender_id,
        enterprise_id: row.enterprise_id,
        referral_id: row.referral_id,
        amount_minor: row.amount_minor,
        rate_bps: row.rate_bps,
        term_months: row.term_months,
        loan_date: row.loan_date,
        status,
        subsidy_minor: row.subsidy_minor,
        effective_rate_bps: row.effective_rate_bps,
        designation_id: row.designation_id,
        designation_used: row.designation_list_code,
        loan_reference: row.loan_reference,
        disbursed_on: row.disbursed_on,
        created_at: row.created_at,
        updated_at: row.updated_at,
        expires_at: row.expires_at,
        release_reason,
    })
}
