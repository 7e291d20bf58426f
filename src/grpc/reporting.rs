//! ReportingService: not built yet; every RPC answers UNIMPLEMENTED.

use tonic::{Request, Response, Status};

use super::pb;
use crate::service::{App, Error};

pub struct ReportingHandler {
    #[allow(dead_code)]
    app: App,
}

impl ReportingHandler {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl pb::reporting_service_server::ReportingService for ReportingHandler {
    async fn get_summary(
        &self,
        _request: Request<pb::GetSummaryRequest>,
    ) -> Result<Response<pb::GetSummaryResponse>, Status> {
        Err(Error::Unimplemented("ReportingService.GetSummary").into())
    }
}
