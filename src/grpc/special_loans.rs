//! SpecialLoanService: not built yet; every RPC answers UNIMPLEMENTED.

use tonic::{Request, Response, Status};

use super::pb;
use crate::service::{App, Error};

pub struct SpecialLoanHandler {
    #[allow(dead_code)]
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
        _request: Request<pb::CreateProgramRequest>,
    ) -> Result<Response<pb::CreateProgramResponse>, Status> {
        Err(Error::Unimplemented("SpecialLoanService.CreateProgram").into())
    }

    async fn get_program(
        &self,
        _request: Request<pb::GetProgramRequest>,
    ) -> Result<Response<pb::GetProgramResponse>, Status> {
        Err(Error::Unimplemented("SpecialLoanService.GetProgram").into())
    }

    async fn set_lender_quota(
        &self,
        _request: Request<pb::SetLenderQuotaRequest>,
    ) -> Result<Response<pb::SetLenderQuotaResponse>, Status> {
        Err(Error::Unimplemented("SpecialLoanService.SetLenderQuota").into())
    }

    async fn allocate_special_loan(
        &self,
        _request: Request<pb::AllocateSpecialLoanRequest>,
    ) -> Result<Response<pb::AllocateSpecialLoanResponse>, Status> {
        Err(Error::Unimplemented("SpecialLoanService.AllocateSpecialLoan").into())
    }

    async fn confirm_allocation(
        &self,
        _request: Request<pb::ConfirmAllocationRequest>,
    ) -> Result<Response<pb::ConfirmAllocationResponse>, Status> {
        Err(Error::Unimplemented("SpecialLoanService.ConfirmAllocation").into())
    }

    async fn release_allocation(
        &self,
        _request: Request<pb::ReleaseAllocationRequest>,
    ) -> Result<Response<pb::ReleaseAllocationResponse>, Status> {
        Err(Error::Unimplemented("SpecialLoanService.ReleaseAllocation").into())
    }

    async fn list_allocations(
        &self,
        _request: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        Err(Error::Unimplemented("SpecialLoanService.ListAllocations").into())
    }
}
