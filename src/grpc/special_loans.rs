//! SpecialLoanService: special-loan programs, lender quotas and allocations.

use chrono::NaiveDate;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::auth::principal;
use super::convert::{self, Bridge};
use crate::domain::special_loan::{DEFAULT_RESERVATION_HOURS, MAX_RESERVATION_HOURS};
use crate::domain::{
    self, AllocationStatus, AmountMinor, Bps, BureauCalendar, DomainError, ListCode, LoanReference,
    Name, NonNegativeMinor, Note, TermMonths, Violations,
};
use crate::proto as pb;
use crate::service::paging::PageRequest;
use crate::service::special_loans::{
    Allocation, AllocationQuery, AllocationRequest, NewProgram, Program,
};
use crate::service::{App, Idempotency};

/// The contract's ranges where they are narrower than the domain types'.
const MAX_TERM_MONTHS: i32 = 360;
const MIN_RATE_BPS: i32 = 1;

pub struct SpecialLoanHandler {
    app: App,
}

impl SpecialLoanHandler {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl pb::special_loan_service_server::SpecialLoanService for SpecialLoanHandler {
    async fn create_program(
        &self,
        request: Request<pb::CreateProgramRequest>,
    ) -> Result<Response<pb::CreateProgramResponse>, Status> {
        let who = principal(&request)?;
        let input = NewProgram::try_from(request.get_ref())?;
        let program = self.app.create_program(&who, input).await?;
        Ok(Response::new(pb::CreateProgramResponse {
            program: Some(program_to_pb(program)),
        }))
    }

    async fn get_program(
        &self,
        request: Request<pb::GetProgramRequest>,
    ) -> Result<Response<pb::GetProgramResponse>, Status> {
        let who = principal(&request)?;
        let id = Uuid::try_from(request.get_ref())?;
        let program = self.app.get_program(&who, id).await?;
        Ok(Response::new(pb::GetProgramResponse {
            program: Some(program_to_pb(program)),
        }))
    }

    async fn set_lender_quota(
        &self,
        request: Request<pb::SetLenderQuotaRequest>,
    ) -> Result<Response<pb::SetLenderQuotaResponse>, Status> {
        let who = principal(&request)?;
        let SetLenderQuota {
            program_id,
            lender_id,
            quota,
        } = request.get_ref().try_into()?;
        let program = self
            .app
            .set_lender_quota(&who, program_id, lender_id, quota)
            .await?;
        Ok(Response::new(pb::SetLenderQuotaResponse {
            program: Some(program_to_pb(program)),
        }))
    }

    async fn allocate_special_loan(
        &self,
        request: Request<pb::AllocateSpecialLoanRequest>,
    ) -> Result<Response<pb::AllocateSpecialLoanResponse>, Status> {
        let who = principal(&request)?;
        let AllocateSpecialLoan {
            idempotency,
            request,
        } = request.get_ref().try_into()?;
        let allocation = self
            .app
            .allocate_special_loan(&who, idempotency, request)
            .await?;
        Ok(Response::new(pb::AllocateSpecialLoanResponse {
            allocation: Some(allocation_to_pb(allocation)),
        }))
    }

    async fn confirm_allocation(
        &self,
        request: Request<pb::ConfirmAllocationRequest>,
    ) -> Result<Response<pb::ConfirmAllocationResponse>, Status> {
        let who = principal(&request)?;
        let ConfirmAllocation {
            id,
            loan_reference,
            disbursed_on,
        } = parse_confirmation(request.get_ref(), self.app.calendar())?;
        let allocation = self
            .app
            .confirm_allocation(&who, id, loan_reference, disbursed_on)
            .await?;
        Ok(Response::new(pb::ConfirmAllocationResponse {
            allocation: Some(allocation_to_pb(allocation)),
        }))
    }

    async fn release_allocation(
        &self,
        request: Request<pb::ReleaseAllocationRequest>,
    ) -> Result<Response<pb::ReleaseAllocationResponse>, Status> {
        let who = principal(&request)?;
        let ReleaseAllocation { id, reason } = request.get_ref().try_into()?;
        let allocation = self.app.release_allocation(&who, id, reason).await?;
        Ok(Response::new(pb::ReleaseAllocationResponse {
            allocation: Some(allocation_to_pb(allocation)),
        }))
    }

    async fn list_allocations(
        &self,
        request: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        let who = principal(&request)?;
        let ListAllocations { query, page } = request.get_ref().try_into()?;
        let page = self.app.list_allocations(&who, query, page).await?;
        Ok(Response::new(pb::ListAllocationsResponse {
            allocations: page.items.into_iter().map(allocation_to_pb).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }
}

/// The program of a create request, every bad field reported as `program.<field>`.
impl TryFrom<&pb::CreateProgramRequest> for NewProgram {
    type Error = Violations;

    fn try_from(request: &pb::CreateProgramRequest) -> Result<Self, Violations> {
        let empty = pb::Program::default();
        let given = request.program.as_ref().unwrap_or(&empty);
        let mut v = Violations::default();
        let code = v.field("program.code", ListCode::parse(&given.code));
        let name = v.field("program.name", Name::parse(&given.name));
        let total_quota = v.field(
            "program.total_quota_minor",
            AmountMinor::new(given.total_quota_minor),
        );
        let rate_cap = v.field(
            "program.rate_cap_bps",
            at_least(given.rate_cap_bps, MIN_RATE_BPS, Bps::MAX).and_then(Bps::new),
        );
        let subsidy_ratio = v.field(
            "program.subsidy_ratio_bps",
            Bps::new(given.subsidy_ratio_bps),
        );
        // Unset is a value of these two (no limit), so each parses to an Option of an Option.
        let max_effective_rate = match given.max_effective_rate_bps {
            None => Some(None),
            Some(raw) => v
                .field("program.max_effective_rate_bps", Bps::new(raw))
                .map(Some),
        };
        let per_enterprise_cap = match given.per_enterprise_cap_minor {
            None => Some(None),
            Some(raw) => v
                .field("program.per_enterprise_cap_minor", AmountMinor::new(raw))
                .map(Some),
        };
        let max_term = v.field(
            "program.max_term_months",
            at_least(given.max_term_months, TermMonths::MIN, MAX_TERM_MONTHS)
                .and_then(TermMonths::new),
        );
        let reservation_hours = v.field(
            "program.reservation_hours",
            match given.reservation_hours {
                0 => Ok(DEFAULT_RESERVATION_HOURS),
                hours => at_least(hours, 1, MAX_RESERVATION_HOURS),
            },
        );
        let mut required_designations: Vec<ListCode> = Vec::new();
        for (i, raw) in given.required_designations.iter().enumerate() {
            if let Some(code) = v.field(
                format!("program.required_designations[{i}]"),
                ListCode::parse(raw),
            ) && !required_designations.contains(&code)
            {
                required_designations.push(code);
            }
        }
        let loan_date_from = v.field(
            "program.loan_date_from",
            domain::parse_date(&given.loan_date_from),
        );
        let loan_date_to = convert::optional(
            "program.loan_date_to",
            &given.loan_date_to,
            domain::parse_date,
            &mut v,
        );
        if let (Some(from), Some(Some(to))) = (loan_date_from, loan_date_to)
            && to < from
        {
            v.add(
                "program.loan_date_to",
                format!("{to} is before loan_date_from {from}"),
            );
        }
        let (
            code,
            name,
            total_quota,
            rate_cap,
            subsidy_ratio,
            max_effective_rate,
            per_enterprise_cap,
            max_term,
            reservation_hours,
            loan_date_from,
            loan_date_to,
        ) = v.values((
            code,
            name,
            total_quota,
            rate_cap,
            subsidy_ratio,
            max_effective_rate,
            per_enterprise_cap,
            max_term,
            reservation_hours,
            loan_date_from,
            loan_date_to,
        ))?;
        Ok(NewProgram {
            code,
            name,
            total_quota,
            rate_cap,
            subsidy_ratio,
            max_effective_rate,
            per_enterprise_cap,
            max_term,
            required_designations,
            loan_date_from,
            loan_date_to,
            one_bank_per_enterprise: given.one_bank_per_enterprise,
            reservation_hours,
        })
    }
}

/// A SetLenderQuota request: the program, the bank and its new quota.
struct SetLenderQuota {
    program_id: Uuid,
    lender_id: Uuid,
    quota: NonNegativeMinor,
}

impl TryFrom<&pb::SetLenderQuotaRequest> for SetLenderQuota {
    type Error = Violations;

    fn try_from(body: &pb::SetLenderQuotaRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let program_id = convert::id("program_id", &body.program_id, &mut v);
        let lender_id = convert::id("lender_id", &body.lender_id, &mut v);
        let quota = v.field("quota_minor", NonNegativeMinor::new(body.quota_minor));
        let (program_id, lender_id, quota) = v.values((program_id, lender_id, quota))?;
        Ok(Self {
            program_id,
            lender_id,
            quota,
        })
    }
}

/// An AllocateSpecialLoan request: the call's idempotency and the loan to reserve quota for.
struct AllocateSpecialLoan {
    idempotency: Idempotency,
    request: AllocationRequest,
}

impl TryFrom<&pb::AllocateSpecialLoanRequest> for AllocateSpecialLoan {
    type Error = Violations;

    fn try_from(body: &pb::AllocateSpecialLoanRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let idempotency = convert::idempotency(
            &body.idempotency_key,
            &pb::AllocateSpecialLoanRequest {
                idempotency_key: String::new(),
                ..body.clone()
            },
            &mut v,
        );
        let program_id = convert::id("program_id", &body.program_id, &mut v);
        let lender_id = convert::id("lender_id", &body.lender_id, &mut v);
        let enterprise_id = convert::id("enterprise_id", &body.enterprise_id, &mut v);
        let referral_id = convert::optional_id("referral_id", &body.referral_id, &mut v);
        let amount = v.field("amount_minor", AmountMinor::new(body.amount_minor));
        let rate = v.field(
            "rate_bps",
            at_least(body.rate_bps, MIN_RATE_BPS, Bps::MAX).and_then(Bps::new),
        );
        let term = v.field(
            "term_months",
            at_least(body.term_months, TermMonths::MIN, MAX_TERM_MONTHS).and_then(TermMonths::new),
        );
        let loan_date = v.field("loan_date", domain::parse_date(&body.loan_date));
        let (
            idempotency,
            program_id,
            lender_id,
            enterprise_id,
            referral_id,
            amount,
            rate,
            term,
            loan_date,
        ) = v.values((
            idempotency,
            program_id,
            lender_id,
            enterprise_id,
            referral_id,
            amount,
            rate,
            term,
            loan_date,
        ))?;
        Ok(Self {
            idempotency,
            request: AllocationRequest {
                program_id,
                lender_id,
                enterprise_id,
                referral_id,
                amount,
                rate,
                term,
                loan_date,
            },
        })
    }
}

/// A ConfirmAllocation request: the allocation and the loan it became.
struct ConfirmAllocation {
    id: Uuid,
    loan_reference: LoanReference,
    disbursed_on: NaiveDate,
}

/// A ConfirmAllocation request, converted as the `TryFrom`s here convert, against the bureau's
/// calendar: a loan is confirmed once disbursed, so `disbursed_on` is not after today.
fn parse_confirmation(
    body: &pb::ConfirmAllocationRequest,
    calendar: BureauCalendar,
) -> Result<ConfirmAllocation, Violations> {
    let mut v = Violations::default();
    let id = convert::id("allocation_id", &body.allocation_id, &mut v);
    let loan_reference = v.field("loan_reference", LoanReference::parse(&body.loan_reference));
    let disbursed_on = v.field("disbursed_on", domain::parse_date(&body.disbursed_on));
    let today = calendar.today();
    if let Some(day) = disbursed_on
        && day > today
    {
        v.add(
            "disbursed_on",
            format!(
                "{day} is in the future; confirm a loan once it is disbursed (today is {today} \
                 in {})",
                calendar.zone()
            ),
        );
    }
    let (id, loan_reference, disbursed_on) = v.values((id, loan_reference, disbursed_on))?;
    Ok(ConfirmAllocation {
        id,
        loan_reference,
        disbursed_on,
    })
}

/// A ReleaseAllocation request: the allocation and why its quota goes back.
struct ReleaseAllocation {
    id: Uuid,
    reason: Note,
}

impl TryFrom<&pb::ReleaseAllocationRequest> for ReleaseAllocation {
    type Error = Violations;

    fn try_from(body: &pb::ReleaseAllocationRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let id = convert::id("allocation_id", &body.allocation_id, &mut v);
        let reason = v.field("reason", Note::parse(&body.reason));
        let (id, reason) = v.values((id, reason))?;
        Ok(Self { id, reason })
    }
}

/// A ListAllocations request: its filters and its page.
struct ListAllocations {
    query: AllocationQuery,
    page: PageRequest,
}

impl TryFrom<&pb::ListAllocationsRequest> for ListAllocations {
    type Error = Violations;

    fn try_from(body: &pb::ListAllocationsRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let page = PageRequest::parse(body.page_size, &body.page_token, &mut v);
        let program_id = convert::optional_id("program_id", &body.program_id, &mut v);
        let lender_id = convert::optional_id("lender_id", &body.lender_id, &mut v);
        let enterprise_id = convert::optional_id("enterprise_id", &body.enterprise_id, &mut v);
        let mut statuses = Vec::new();
        for (i, status) in convert::enums::<pb::AllocationStatus>(&body.statuses)
            .into_iter()
            .enumerate()
        {
            match status {
                Some(status) => statuses.push(status),
                None => v.add(
                    format!("statuses[{i}]"),
                    format!(
                        "must be specified; expected one of {}",
                        AllocationStatus::wire_expected()
                    ),
                ),
            }
        }
        let (page, program_id, lender_id, enterprise_id) =
            v.values((page, program_id, lender_id, enterprise_id))?;
        Ok(Self {
            query: AllocationQuery {
                program_id,
                lender_id,
                enterprise_id,
                statuses,
            },
            page,
        })
    }
}

/// `value` when inside the contract's `min..=max`, which may be narrower than a domain type's.
fn at_least(value: i32, min: i32, max: i32) -> Result<i32, DomainError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(DomainError::OutOfRange {
            value: i64::from(value),
            min: i64::from(min),
            max: i64::from(max),
        })
    }
}

pub fn program_to_pb(program: Program) -> pb::Program {
    pb::Program {
        id: program.id.to_string(),
        code: program.code,
        name: program.name,
        total_quota_minor: program.total_quota_minor,
        rate_cap_bps: program.rate_cap_bps,
        subsidy_ratio_bps: program.subsidy_ratio_bps,
        max_effective_rate_bps: program.max_effective_rate_bps,
        per_enterprise_cap_minor: program.per_enterprise_cap_minor,
        max_term_months: program.max_term_months,
        required_designations: program.required_designations,
        loan_date_from: convert::date(program.loan_date_from),
        loan_date_to: convert::optional_date(program.loan_date_to),
        one_bank_per_enterprise: program.one_bank_per_enterprise,
        balance: Some(pb::ProgramBalance {
            reserved_minor: program.balance.reserved_minor,
            confirmed_minor: program.balance.confirmed_minor,
            remaining_minor: program.balance.remaining_minor,
            lenders: program
                .balance
                .lenders
                .into_iter()
                .map(|l| pb::LenderQuotaBalance {
                    lender_id: l.lender_id.to_string(),
                    quota_minor: l.quota_minor,
                    reserved_minor: l.reserved_minor,
                    confirmed_minor: l.confirmed_minor,
                    remaining_minor: l.remaining_minor,
                })
                .collect(),
        }),
        create_time: convert::timestamp(program.created_at),
        update_time: convert::timestamp(program.updated_at),
        reservation_hours: program.reservation_hours,
    }
}

pub fn allocation_to_pb(allocation: Allocation) -> pb::Allocation {
    pb::Allocation {
        id: allocation.id.to_string(),
        program_id: allocation.program_id.to_string(),
        lender_id: allocation.lender_id.to_string(),
        enterprise_id: allocation.enterprise_id.to_string(),
        referral_id: allocation
            .referral_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        amount_minor: allocation.amount_minor,
        rate_bps: allocation.rate_bps,
        term_months: allocation.term_months,
        loan_date: convert::date(allocation.loan_date),
        status: pb::AllocationStatus::from_domain(allocation.status),
        subsidy_minor: allocation.subsidy_minor,
        effective_rate_bps: allocation.effective_rate_bps,
        designation_used: allocation.designation_used.unwrap_or_default(),
        loan_reference: allocation.loan_reference.unwrap_or_default(),
        disbursed_on: convert::optional_date(allocation.disbursed_on),
        create_time: convert::timestamp(allocation.created_at),
        update_time: convert::timestamp(allocation.updated_at),
        expire_time: allocation.expires_at.and_then(convert::timestamp),
        release_reason: allocation
            .release_reason
            .map_or(pb::AllocationReleaseReason::Unspecified as i32, |r| {
                pb::AllocationReleaseReason::from_domain(r)
            }),
    }
}
