//! The gRPC edge: generated types, handlers, proto ⇄ domain conversion, error mapping, auth.
//!
//! Handlers are thin: convert the request into domain input (field violations on failure),
//! call one use case on [`App`], convert the result back.

use tonic::service::Routes;

use crate::service::App;
use crate::service::events::ReferralFeed;

pub mod auth;
pub mod convert;
pub mod deadline;
pub mod enterprises;
pub mod financing;
pub mod layers;
pub mod lenders;
pub mod methods;
pub mod metrics;
pub mod partner;
pub mod reporting;
pub mod special_loans;
pub mod status;

use crate::proto as pb;
use pb::enterprise_service_server::EnterpriseServiceServer;
use pb::financing_service_server::FinancingServiceServer;
use pb::lender_service_server::LenderServiceServer;
use pb::partner_service_server::PartnerServiceServer;
use pb::reporting_service_server::ReportingServiceServer;
use pb::special_loan_service_server::SpecialLoanServiceServer;

/// The fully-qualified names of the finmatch services (for health reporting).
pub const SERVICE_NAMES: [&str; 6] = [
    "finmatch.v1.EnterpriseService",
    "finmatch.v1.LenderService",
    "finmatch.v1.FinancingService",
    "finmatch.v1.PartnerService",
    "finmatch.v1.SpecialLoanService",
    "finmatch.v1.ReportingService",
];

/// Largest response message, in bytes (list pages are capped well below this).
const MAX_ENCODING_BYTES: usize = 16 * 1024 * 1024;

macro_rules! limited {
    ($server:ident, $handler:expr, $max_decoding:expr) => {
        $server::new($handler)
            .max_decoding_message_size($max_decoding)
            .max_encoding_message_size(MAX_ENCODING_BYTES)
    };
}

/// The six finmatch services, each with explicit message-size limits; `stream_idle` bounds the
/// wait for a client stream's next message, `feed` is what WatchReferrals streams read. The
/// server serves them beside health and reflection; the fuzz targets call them without a socket.
pub fn routes(
    app: &App,
    feed: &ReferralFeed,
    max_decoding: usize,
    stream_idle: std::time::Duration,
) -> Routes {
    Routes::default()
        .add_service(limited!(
            EnterpriseServiceServer,
            enterprises::EnterpriseHandler::new(app.clone()),
            max_decoding
        ))
        .add_service(limited!(
            LenderServiceServer,
            lenders::LenderHandler::new(app.clone()),
            max_decoding
        ))
        .add_service(limited!(
            FinancingServiceServer,
            financing::FinancingHandler::new(app.clone(), stream_idle),
            max_decoding
        ))
        .add_service(limited!(
            PartnerServiceServer,
            partner::PartnerHandler::new(app.clone(), feed.clone()),
            max_decoding
        ))
        .add_service(limited!(
            SpecialLoanServiceServer,
            special_loans::SpecialLoanHandler::new(app.clone()),
            max_decoding
        ))
        .add_service(limited!(
            ReportingServiceServer,
            reporting::ReportingHandler::new(app.clone()),
            max_decoding
        ))
}
