//! AllocateSpecialLoan: every rule checked and the quota taken in one transaction (see the
//! module's lock order).

use chrono::{NaiveDate, TimeDelta, Utc};
use scoped_futures::ScopedFutureExt as _;
use uuid::Uuid;

use super::{Allocation, AllocationRequest, RPC_ALLOCATE, money, to_allocation};
use crate::domain::special_loan::{effective_rate_bps, subsidy_minor};
use crate::domain::{Bps, ReferralStatus, TermMonths, format_percent};
use crate::service::{App, Error, Idempotency, Principal, Result, audit, reason};
use crate::storage::special_loans::{
    LenderQuotaRow, NewAllocation, ProgramEnterpriseRow, ProgramRow,
};
use crate::storage::{self, Connection, Failure};

impl App {
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
    let terms = check_rules(conn, who, &program, request).await?;
    take_quota(conn, who, &program, request).await?;
    let allocation = store(conn, who, idempotency, &program, request, &terms).await?;
    audit::remember(conn, who, RPC_ALLOCATE, idempotency, &allocation).await?;
    Ok(allocation)
}

/// What the rules make of a request that passes them.
struct Terms {
    effective: Bps,
    subsidy: i64,
    designation: Option<storage::special_loans::EligibleDesignation>,
}

/// Every rule that depends only on the request, the program and the enterprise's designations:
/// the parties exist (and a bank holds a referral of the enterprise), the referral fits, the
/// loan date, term and rates are the program's.
async fn check_rules(
    conn: &mut Connection,
    who: &Principal,
    program: &ProgramRow,
    request: &AllocationRequest,
) -> Result<Terms> {
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
    check_window(program, request.loan_date, "loan_date")?;
    check_term(program, request.term)?;
    let (effective, subsidy) = check_rates(program, request)?;
    let designation = eligible_designation(conn, program, request).await?;
    Ok(Terms {
        effective,
        subsidy,
        designation,
    })
}

/// Moves the balances in lock order: the enterprise's standing in the program (its cap and its
/// one bank), the lender's quota, the program's quota; each conditional update refuses what
/// would break its rule.
async fn take_quota(
    conn: &mut Connection,
    who: &Principal,
    program: &ProgramRow,
    request: &AllocationRequest,
) -> Result<()> {
    let amount = request.amount.get();
    let (program_id, lender_id) = (program.id, request.lender_id);
    let standing = storage::special_loans::add_enterprise_live(
        conn,
        program_id,
        request.enterprise_id,
        lender_id,
        amount,
        program.one_bank_per_enterprise,
        program.per_enterprise_cap_minor,
    )
    .await;
    match standing {
        Ok(Some(_)) => {}
        Ok(None) => return Err(enterprise_refusal(conn, who, program, request).await?),
        // Binding the enterprise to a lender needs that lender's quota row.
        Err(e) if matches!(storage::classify(&e), Failure::ForeignKeyViolation(_)) => {
            return Err(no_lender_quota(program, lender_id, amount));
        }
        Err(e) => return Err(e.into()),
    }
    if storage::special_loans::reserve_lender_quota(conn, program_id, lender_id, amount)
        .await?
        .is_none()
    {
        return Err(
            match storage::special_loans::find_lender_quota(conn, program_id, lender_id).await? {
                None => no_lender_quota(program, lender_id, amount),
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
    Ok(())
}

/// The RESERVED allocation's row and its audit row.
async fn store(
    conn: &mut Connection,
    who: &Principal,
    idempotency: &Idempotency,
    program: &ProgramRow,
    request: &AllocationRequest,
    terms: &Terms,
) -> Result<Allocation> {
    let designation = terms.designation.as_ref();
    let row = storage::special_loans::insert_allocation(
        conn,
        &NewAllocation {
            id: crate::domain::ids::scoped_id(request.enterprise_id),
            program_id: program.id,
            lender_id: request.lender_id,
            enterprise_id: request.enterprise_id,
            referral_id: request.referral_id,
            amount_minor: request.amount.get(),
            rate_bps: request.rate.get(),
            term_months: request.term.get(),
            loan_date: request.loan_date,
            subsidy_minor: terms.subsidy,
            effective_rate_bps: terms.effective.get(),
            designation_id: designation.map(|d| d.id),
            designation_list_code: designation.map(|d| d.list_code.as_str()),
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
            "program_id": program.id,
            "lender_id": request.lender_id,
            "enterprise_id": request.enterprise_id,
            "amount_minor": request.amount.get(),
            "designation_id": row.designation_id,
            "designation_list_code": row.designation_list_code,
            "expires_at": row.expires_at,
        }),
    )
    .await?;
    to_allocation(row)
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

pub(super) fn check_window(program: &ProgramRow, day: NaiveDate, field: &str) -> Result<()> {
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
    let standing =
        storage::special_loans::find_program_enterprise(conn, program.id, request.enterprise_id)
            .await?;
    if let Some(standing) = &standing
        && program.one_bank_per_enterprise
        && standing.live_minor > 0
        && standing.lender_id != request.lender_id
    {
        return Ok(one_bank_refusal(who, program, request, standing));
    }
    let Some(cap) = program.per_enterprise_cap_minor else {
        return Err(Error::Internal(anyhow::anyhow!(
            "program {} refused enterprise {} without a rule that applies",
            program.id,
            request.enterprise_id
        )));
    };
    let live = standing.as_ref().map_or(0, |s| s.live_minor);
    Ok(cap_refusal(who, program, request, live, cap))
}

/// The enterprise borrows in the program through another lender.
fn one_bank_refusal(
    who: &Principal,
    program: &ProgramRow,
    request: &AllocationRequest,
    standing: &ProgramEnterpriseRow,
) -> Error {
    if who.lender_id.is_some() {
        return Error::precondition(
            reason::ONE_BANK_RULE,
            format!(
                "enterprise {} already borrows in program {} through another lender; one \
                 enterprise, one bank: this lender cannot reserve quota for it while that \
                 lasts",
                request.enterprise_id, program.code
            ),
        );
    }
    Error::precondition(
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
    .with_metadata("requested", request.lender_id)
}

/// The enterprise's `live` allocations plus the amount exceed the program's per-enterprise `cap`.
fn cap_refusal(
    who: &Principal,
    program: &ProgramRow,
    request: &AllocationRequest,
    live: i64,
    cap: i64,
) -> Error {
    let total = live + request.amount.get();
    if who.lender_id.is_some() {
        return Error::precondition(
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
        .with_metadata("requested", request.amount.get());
    }
    Error::precondition(
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
    .with_metadata("requested", total)
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
