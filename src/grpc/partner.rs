//! PartnerService: not built yet; every RPC answers UNIMPLEMENTED.

use tonic::{Request, Response, Status};

use super::pb;
use crate::service::{App, Error};

pub struct PartnerHandler {
    #[allow(dead_code)]
    app: App,
}

impl PartnerHandler {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl pb::partner_service_server::PartnerService for PartnerHandler {
    async fn list_referrals(
        &self,
        _request: Request<pb::ListReferralsRequest>,
    ) -> Result<Response<pb::ListReferralsResponse>, Status> {
        Err(Error::Unimplemented("PartnerService.ListReferrals").into())
    }

    type WatchReferralsStream =
        futures::stream::BoxStream<'static, Result<pb::WatchReferralsResponse, Status>>;

    async fn watch_referrals(
        &self,
        _request: Request<pb::WatchReferralsRequest>,
    ) -> Result<Response<Self::WatchReferralsStream>, Status> {
        Err(Error::Unimplemented("PartnerService.WatchReferrals").into())
    }

    async fn get_referral(
        &self,
        _request: Request<pb::GetReferralRequest>,
    ) -> Result<Response<pb::GetReferralResponse>, Status> {
        Err(Error::Unimplemented("PartnerService.GetReferral").into())
    }

    async fn acknowledge_referral(
        &self,
        _request: Request<pb::AcknowledgeReferralRequest>,
    ) -> Result<Response<pb::AcknowledgeReferralResponse>, Status> {
        Err(Error::Unimplemented("PartnerService.AcknowledgeReferral").into())
    }

    async fn request_information(
        &self,
        _request: Request<pb::RequestInformationRequest>,
    ) -> Result<Response<pb::RequestInformationResponse>, Status> {
        Err(Error::Unimplemented("PartnerService.RequestInformation").into())
    }

    async fn decide_referral(
        &self,
        _request: Request<pb::DecideReferralRequest>,
    ) -> Result<Response<pb::DecideReferralResponse>, Status> {
        Err(Error::Unimplemented("PartnerService.DecideReferral").into())
    }

    async fn record_disbursement(
        &self,
        _request: Request<pb::RecordDisbursementRequest>,
    ) -> Result<Response<pb::RecordDisbursementResponse>, Status> {
        Err(Error::Unimplemented("PartnerService.RecordDisbursement").into())
    }
}
