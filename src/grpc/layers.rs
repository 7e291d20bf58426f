//! HTTP layers around every call: CORS for browsers, request ids and request-scoped spans.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request};
use tower::{Layer, Service};
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

/// Gives every call a request id (the caller's `x-request-id`, or a new UUID), visible to the
/// handlers in the request headers and echoed on the response.
#[derive(Debug, Clone, Copy)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = request
            .headers()
            .get(&REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .cloned()
            .unwrap_or_else(|| {
                HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                    .expect("a UUID is a valid header value")
            });
        request.headers_mut().insert(REQUEST_ID, id.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            response.headers_mut().insert(REQUEST_ID, id);
            Ok(response)
        })
    }
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
