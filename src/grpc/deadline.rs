//! How long a call may run. A unary call is bounded by the server's call timeout
//! (`FINMATCH_CALL_TIMEOUT_SECS`); a streaming call is not, because its length is the length of
//! its data: a client stream (ImportNeeds) is bounded instead by the idle time between its
//! messages (`FINMATCH_STREAM_IDLE_SECS`, enforced by its handler), a server stream
//! (WatchReferrals) by its heartbeats and the revocation of its credential.
//!
//! Which methods stream is read from the served descriptor sets ([`methods::served`]), so a new
//! streaming RPC is exempt without a list to keep up. A client's own `grpc-timeout` is honoured on every call by tonic
//! itself, outside this layer.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tonic::Status;
use tower::{Layer, Service};

use super::methods;

/// Bounds unary calls by `timeout`; lets streaming calls through.
#[derive(Debug, Clone, Copy)]
pub struct CallTimeoutLayer {
    timeout: Duration,
}

impl CallTimeoutLayer {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for CallTimeoutLayer {
    type Service = CallTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallTimeout {
            inner,
            layer: *self,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallTimeout<S> {
    inner: S,
    layer: CallTimeoutLayer,
}

impl<S, B, ResBody> Service<Request<B>> for CallTimeout<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if methods::served().is_streaming(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let timeout = self.layer.timeout;
        let future = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, future).await {
                Ok(result) => result,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call did not finish within the server's call timeout of {} s \
                     (FINMATCH_CALL_TIMEOUT_SECS)",
                    timeout.as_secs()
                ))
                .into_http()),
            }
        })
    }
}
