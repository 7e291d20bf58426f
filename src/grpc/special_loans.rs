//! SpecialLoanService: special-loan programs, lender quotas and allocations.

use tonic::{Request, Response, Status};

use super::auth::principal;
use super::convert::{self, Bridge, check};
use super::pb;
use crate::domain::special_loan::{DEFAULT_RESERVATION_HOURS, MAX_RESERVATION_HOURS};
use crate::domain::{
    self, AllocationStatus, AmountMinor, Bps, DomainError, ListCode, Name, NonNegativeMinor, Note,
    TermMonths, Violations,
};
use crate::service::App;
use crate::service::paging::PageRequest;
use crate::service::special_loans::{
    Allocation, AllocationQuery, AllocationRequest, NewProgram, Program,
};

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
        let given = request.into_inner().program.unwrap_or_default();
        let input = parse_new_program(&given)?;
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
        let mut v = Violations::default();
        let id = convert::id("program_id", &request.get_ref().program_id, &mut v);
        check(v)?;
        let program = self.app.get_program(&who, id.expect("checked")).await?;
        Ok(Response::new(pb::GetProgramResponse {
            program: Some(program_to_pb(program)),
        }))
    }

    async fn set_lender_quota(
        &self,
        request: Request<pb::SetLenderQuotaRequest>,
    ) -> Result<Response<pb::SetLenderQuotaResponse>, Status> {
        let who = principal(&request)?;
        let body = request.into_inner();
        let mut v = Violations::default();
        let program_id = convert::id("program_id", &body.program_id, &mut v);
        let lender_id = convert::id("lender_id", &body.lender_id, &mut v);
        let quota = v.field("quota_minor", NonNegativeMinor::new(body.quota_minor));
        check(v)?;
        let program = self
            .app
            .set_lender_quota(
                &who,
                program_id.expect("checked"),
                lender_id.expect("checked"),
                quota.expect("checked"),
            )
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
        let body = request.into_inner();
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
        check(v)?;
        let idempotency = idempotency.expect("checked");
        let request = AllocationRequest {
            program_id: program_id.expect("checked"),
            lender_id: lender_id.expect("checked"),
            enterprise_id: enterprise_id.expect("checked"),
            referral_id: referral_id.expect("checked"),
            amount: amount.expect("checked"),
            rate: rate.expect("checked"),
            term: term.expect("checked"),
            loan_date: loan_date.expect("checked"),
        };
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
        let body = request.into_inner();
        let mut v = Violations::default();
        let id = convert::id("allocation_id", &body.allocation_id, &mut v);
        let loan_reference = v.field(
            "loan_reference",
            domain::LoanReference::parse(&body.loan_reference),
        );
        let disbursed_on = v.field("disbursed_on", domain::parse_date(&body.disbursed_on));
        let calendar = self.app.calendar();
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
        check(v)?;
        let allocation = self
            .app
            .confirm_allocation(
                &who,
                id.expect("checked"),
                loan_reference.expect("checked"),
                disbursed_on.expect("checked"),
            )
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
        let body = request.into_inner();
        let mut v = Violations::default();
        let id = convert::id("allocation_id", &body.allocation_id, &mut v);
        let why = v.field("reason", Note::parse(&body.reason));
        check(v)?;
        let allocation = self
            .app
            .release_allocation(&who, id.expect("checked"), why.expect("checked"))
            .await?;
        Ok(Response::new(pb::ReleaseAllocationResponse {
            allocation: Some(allocation_to_pb(allocation)),
        }))
    }

    async fn list_allocations(
        &self,
        request: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        let who = principal(&request)?;
        let body = request.into_inner();
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
        check(v)?;
        let query = AllocationQuery {
            program_id: program_id.flatten(),
            lender_id: lender_id.flatten(),
            enterprise_id: enterprise_id.flatten(),
            statuses,
        };
        let page = self
            .app
            .list_allocations(&who, query, page.expect("checked"))
            .await?;
        Ok(Response::new(pb::ListAllocationsResponse {
            allocations: page.items.into_iter().map(allocation_to_pb).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }
}

/// The program of a create request, every bad field reported as `program.<field>`.
pub fn parse_new_program(given: &pb::Program) -> Result<NewProgram, Status> {
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
    let max_effective_rate = given
        .max_effective_rate_bps
        .map(|raw| v.field("program.max_effective_rate_bps", Bps::new(raw)));
    let per_enterprise_cap = given
        .per_enterprise_cap_minor
        .map(|raw| v.field("program.per_enterprise_cap_minor", AmountMinor::new(raw)));
    let max_term = v.field(
        "program.max_term_months",
        at_least(given.max_term_months, TermMonths::MIN, MAX_TERM_MONTHS).and_then(TermMonths::new),
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
    v.finish()
        .map_err(|v| Status::from(crate::service::Error::InvalidArgument(v)))?;
    Ok(NewProgram {
        code: code.expect("checked"),
        name: name.expect("checked"),
        total_quota: total_quota.expect("checked"),
        rate_cap: rate_cap.expect("checked"),
        subsidy_ratio: subsidy_ratio.expect("checked"),
        max_effective_rate: max_effective_rate.map(|r| r.expect("checked")),
        per_enterprise_cap: per_enterprise_cap.map(|c| c.expect("checked")),
        max_term: max_term.expect("checked"),
        required_designations,
        loan_date_from: loan_date_from.expect("checked"),
        loan_date_to: loan_date_to.expect("checked"),
        one_bank_per_enterprise: given.one_bank_per_enterprise,
        reservation_hours: reservation_hours.expect("checked"),
    })
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
