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

use chrono::{DateTime, NaiveDate, Utc};
use scoped_futures::ScopedFutureExt as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::paging::{Cursor, Page, PageRequest};
use super::{App, Error, Principal, Result, audit, reason};
use crate::domain::{
    AllocationStatus, AmountMinor, Bps, ListCode, Name, NonNegativeMinor, ReleaseReason,
    TermMonths, format_cny,
};
use crate::storage::special_loans::{AllocationFilter, AllocationRow, LenderQuotaRow, ProgramRow};
use crate::storage::{self, Connection, Failure};

mod allocation;
mod settlement;

const RPC_CREATE: &str = "finmatch.v1.SpecialLoanService/CreateProgram";
const RPC_SET_QUOTA: &str = "finmatch.v1.SpecialLoanService/SetLenderQuota";
const RPC_ALLOCATE: &str = "finmatch.v1.SpecialLoanService/AllocateSpecialLoan";
const RPC_CONFIRM: &str = "finmatch.v1.SpecialLoanService/ConfirmAllocation";
const RPC_RELEASE: &str = "finmatch.v1.SpecialLoanService/ReleaseAllocation";
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
}

fn duplicate_code(code: &str, existing: Uuid) -> Error {
    Error::AlreadyExists {
        entity: "program",
        reason: reason::DUPLICATE_CODE,
        message: format!("program {existing} already has code {code}"),
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
