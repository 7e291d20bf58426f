//! HTTP layers around every call: CORS for browsers, request ids and request-scoped spans.

use std::time::Duration;

use http::{HeaderName, Method, Request};
use tower_http::classify::{GrpcCode, GrpcErrorsAsFailures, SharedClassifier};
use tower_http::cors::{Any, CorsLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, MakeSpan, TraceLayer};
use tracing::{Level, Span};

/// Header carrying the request id: taken from the client when it sends one, else generated.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// CORS for gRPC-Web from browser portals. Credentials are bearer tokens, not cookies, so any
/// origin may call; what it can do is decided by the token.
pub fn cors() -> CorsLayer {
    let header = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            http::header::AUTHORIZATION,
            http::header::CONTENT_TYPE,
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
            REQUEST_ID,
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
            REQUEST_ID,
        ])
        .max_age(Duration::from_secs(24 * 60 * 60))
}

/// The longest request id taken from a caller; a longer one is replaced.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// Removes a caller's `x-request-id` that is empty or longer than 128 bytes, so that tower-http's
/// `SetRequestIdLayer`, which runs next, gives the call a new UUID instead. With it the server
/// gives every call a request id, visible to the handlers in the request headers and echoed on
/// the response by `PropagateRequestIdLayer`.
pub fn drop_unusable_request_id<B>(mut request: Request<B>) -> Request<B> {
    let usable = request
        .headers()
        .get(&REQUEST_ID)
        .is_none_or(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_BYTES);
    if !usable {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// Opens one span per call, named by its method and request id, so every log line of a call can
/// be found together.
#[derive(Debug, Clone, Copy)]
pub struct RpcSpan;

impl<B> MakeSpan<B> for RpcSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let request_id = request
            .headers()
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        tracing::info_span!(
            "rpc",
            method = %request.uri().path(),
            request_id = %request_id,
            principal = tracing::field::Empty,
        )
    }
}

/// The tracing layer: a span per call, a debug line per response, a warning per failed call.
/// Expected client errors (bad input, not found, …) are logged at debug, not as failures.
pub fn trace() -> TraceLayer<SharedClassifier<GrpcErrorsAsFailures>, RpcSpan, ()> {
    let classifier = GrpcErrorsAsFailures::new()
        .with_success(GrpcCode::InvalidArgument)
        .with_success(GrpcCode::NotFound)
        .with_success(GrpcCode::AlreadyExists)
        .with_success(GrpcCode::FailedPrecondition)
        .with_success(GrpcCode::Unauthenticated)
        .with_success(GrpcCode::PermissionDenied)
        .with_success(GrpcCode::Cancelled)
        .with_success(GrpcCode::Unimplemented);
    TraceLayer::new(SharedClassifier::new(classifier))
        .make_span_with(RpcSpan)
        .on_request(())
        .on_response(DefaultOnResponse::new().level(Level::DEBUG))
        .on_failure(DefaultOnFailure::new().level(Level::WARN))
}
