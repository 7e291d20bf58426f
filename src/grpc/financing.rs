//! FinancingService: not built yet; every RPC answers UNIMPLEMENTED.

use tonic::{Request, Response, Status};

use super::pb;
use crate::service::{App, Error};

pub struct FinancingHandler {
    #[allow(dead_code)]
    app: App,
}

impl FinancingHandler {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl pb::financing_service_server::FinancingService for FinancingHandler {
    async fn submit_need(
        &self,
        _request: Request<pb::SubmitNeedRequest>,
    ) -> Result<Response<pb::SubmitNeedResponse>, Status> {
        Err(Error::Unimplemented("FinancingService.SubmitNeed").into())
    }

    async fn import_needs(
        &self,
        _request: Request<tonic::Streaming<pb::ImportNeedsRequest>>,
    ) -> Result<Response<pb::ImportNeedsResponse>, Status> {
        Err(Error::Unimplemented("FinancingService.ImportNeeds").into())
    }

    async fn preview_matches(
        &self,
        _request: Request<pb::PreviewMatchesRequest>,
    ) -> Result<Response<pb::PreviewMatchesResponse>, Status> {
        Err(Error::Unimplemented("FinancingService.PreviewMatches").into())
    }

    async fn get_need(
        &self,
        _request: Request<pb::GetNeedRequest>,
    ) -> Result<Response<pb::GetNeedResponse>, Status> {
        Err(Error::Unimplemented("FinancingService.GetNeed").into())
    }

    async fn list_needs(
        &self,
        _request: Request<pb::ListNeedsRequest>,
    ) -> Result<Response<pb::ListNeedsResponse>, Status> {
        Err(Error::Unimplemented("FinancingService.ListNeeds").into())
    }

    async fn withdraw_need(
        &self,
        _request: Request<pb::WithdrawNeedRequest>,
    ) -> Result<Response<pb::WithdrawNeedResponse>, Status> {
        Err(Error::Unimplemented("FinancingService.WithdrawNeed").into())
    }

    async fn reroute_need(
        &self,
        _request: Request<pb::RerouteNeedRequest>,
    ) -> Result<Response<pb::RerouteNeedResponse>, Status> {
        Err(Error::Unimplemented("FinancingService.RerouteNeed").into())
    }
}
