//! Prometheus metrics: a layer counting every call by method and gRPC code with its latency, the
//! `/metrics` endpoint, and gauges of the business state refreshed from PostgreSQL.
//!
//! The `metrics` crate has one global recorder per process, so the Prometheus recorder is
//! installed once ([`handle`]) and every server of the process (tests start many) serves the same
//! registry on its own listener.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tower::{BoxError, Layer, Service};

use crate::proto::code_name;
use crate::service::App;
use crate::service::reporting::Gauges;

pub const REQUESTS_TOTAL: &str = "finmatch_rpc_requests_total";
pub const DURATION_SECONDS: &str = "finmatch_rpc_duration_seconds";
pub const NEEDS: &str = "finmatch_needs";
pub const OPEN_REFERRALS: &str = "finmatch_open_referrals";
pub const PROGRAM_REMAINING_MINOR: &str = "finmatch_program_remaining_minor";

/// How often the business gauges are recomputed.
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(15);

/// Latency buckets, in seconds: sub-millisecond reads up to the 30 s call timeout.
const BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process's Prometheus registry, installing it as the global recorder on first use.
pub fn handle() -> anyhow::Result<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DURATION_SECONDS.into()), BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("installing the Prometheus recorder: {e}"))
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) -> std::io::Result<()> {
    use axum::routing::get;
    let router = axum::Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                // Histograms age out of their window only when upkeep runs.
                handle.run_upkeep();
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    );
    axum::serve(listener, router).await
}

/// Recomputes the business gauges every [`GAUGE_INTERVAL`]; a failed refresh keeps the last
/// values and is logged.
pub async fn refresh_gauges(app: App) {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match app.metric_gauges().await {
            Ok(gauges) => record_gauges(&gauges),
            Err(error) => tracing::warn!(%error, "refreshing the metric gauges failed"),
        }
    }
}

fn record_gauges(gauges: &Gauges) {
    for (status, count) in &gauges.needs_by_status {
        metrics::gauge!(NEEDS, "status" => *status).set(*count as f64);
    }
    for (lender_id, count) in &gauges.open_referrals_by_lender {
        metrics::gauge!(OPEN_REFERRALS, "lender_id" => lender_id.to_string()).set(*count as f64);
    }
    for (program, remaining_minor) in &gauges.remaining_minor_by_program {
        // A gauge is a float: exact up to 2^53 minor units (90 trillion yuan), plenty here.
        metrics::gauge!(PROGRAM_REMAINING_MINOR, "program" => program.clone())
            .set(*remaining_minor as f64);
    }
}

/// Counts every call (`finmatch_rpc_requests_total{method,code}`) and records its duration
/// (`finmatch_rpc_duration_seconds{method}`), up to the end of the response stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for RpcMetrics<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let call = Call {
            method: method_label(request.uri().path()),
            start: Instant::now(),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Ok(response) => {
                    // Errors are mostly "trailers-only": the status is in the headers.
                    let pending = match grpc_code(response.headers()) {
                        Some(code) => {
                            call.finish(code);
                            None
                        }
                        None => Some(call),
                    };
                    Ok(response.map(|inner| MetricsBody {
                        inner: Box::pin(inner),
                        pending,
                    }))
                }
                Err(error) => {
                    let error = error.into();
                    let shed = error.is::<tower::load_shed::error::Overloaded>();
                    call.finish(if shed {
                        tonic::Code::ResourceExhausted
                    } else {
                        tonic::Code::Unknown
                    });
                    Err(error)
                }
            }
        })
    }
}

/// A call whose outcome is not recorded yet.
struct Call {
    method: &'static str,
    start: Instant,
}

impl Call {
    fn finish(self, code: tonic::Code) {
        metrics::counter!(REQUESTS_TOTAL, "method" => self.method, "code" => code_name(code))
            .increment(1);
        metrics::histogram!(DURATION_SECONDS, "method" => self.method)
            .record(self.start.elapsed().as_secs_f64());
    }
}

/// The response body, watched for the trailers that carry the status of a call that succeeded
/// or failed after sending messages.
pub struct MetricsBody<B> {
    inner: Pin<Box<B>>,
    pending: Option<Call>,
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_code(trailers).unwrap_or(tonic::Code::Unknown);
                    if let Some(call) = self.pending.take() {
                        call.finish(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.pending.take() {
                    call.finish(tonic::Code::Internal);
                }
            }
            // A stream that ends without trailers broke the gRPC protocol.
            Poll::Ready(None) => {
                if let Some(call) = self.pending.take() {
                    call.finish(tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MetricsBody<B> {
    /// A body dropped before its trailers: the client went away (or a server stream was cut).
    fn drop(&mut self) {
        if let Some(call) = self.pending.take() {
            call.finish(tonic::Code::Cancelled);
        }
    }
}

/// The method of a call to `path`, or `other` for a path no served method has: a label set
/// bounded by the methods served, whatever paths clients send.
fn method_label(path: &str) -> &'static str {
    super::methods::served().label(path)
}

fn grpc_code(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|value| tonic::Code::from_bytes(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(
            method_label("/finmatch.v1.EnterpriseService/GetEnterprise"),
            "finmatch.v1.EnterpriseService/GetEnterprise"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/random/path"), "other");
        assert_eq!(
            method_label("/finmatch.v1.EnterpriseService/MadeUp"),
            "other"
        );
        assert_eq!(
            method_label(&format!("/finmatch.v1.{}", "x".repeat(200))),
            "other"
        );
    }

    #[test]
    fn status_codes_read_from_headers_by_number() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_code(&headers), None);
        headers.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(grpc_code(&headers).map(code_name), Some("NOT_FOUND"));
        headers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(grpc_code(&headers).map(code_name), Some("OK"));
    }
}
