//! Authentication and authorization: a layer that turns the bearer token into a [`Principal`]
//! in the request extensions, and refuses a caller whose role the method does not admit
//! ([`access`]) before the body is read. Health and reflection stay open; every `finmatch.v1`
//! call needs a valid token.

use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::Status;
use tower::{Layer, Service};

use crate::service::credentials::certificate_subject;
use crate::service::{App, Error, Principal, access};

/// Path prefix of the calls that need a credential.
const PROTECTED_PREFIX: &str = "/finmatch.v1.";

#[derive(Clone)]
pub struct AuthLayer {
    app: App,
}

impl AuthLayer {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            app: self.app.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    app: App,
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone is not ready; keep the ready one for this call (tower's documented pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let app = self.app.clone();
        Box::pin(async move {
            if !request.uri().path().starts_with(PROTECTED_PREFIX) {
                return inner.call(request).await;
            }
            let token = match bearer_token(request.headers()) {
                Ok(token) => token,
                Err(error) => return Ok(Status::from(error).into_http()),
            };
            match app.authenticate(&token).await {
                Ok(principal) if !presents_bound_certificate(&principal, &request) => {
                    Ok(Status::from(Error::Unauthenticated(
                        "this credential is bound to a client certificate, and the connection \
                         does not present it: call over mutual TLS with the certificate it was \
                         issued for"
                            .into(),
                    ))
                    .into_http())
                }
                Ok(principal) => {
                    // A method the table does not know is not served: the router answers
                    // UNIMPLEMENTED for it.
                    let rpc = request.uri().path().rsplit('/').next().unwrap_or_default();
                    if access::roles(rpc).is_some()
                        && let Err(denied) = access::check(&principal, rpc)
                    {
                        return Ok(Status::from(denied).into_http());
                    }
                    tracing::Span::current()
                        .record("principal", principal.credential_id.to_string());
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(error) => Ok(Status::from(error).into_http()),
            }
        })
    }
}

/// Whether the connection shows the client certificate the principal is bound to (always, for an
/// unbound one). The leaf certificate's subject is compared as finmatch renders it.
fn presents_bound_certificate<B>(principal: &Principal, request: &Request<B>) -> bool {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let Some(bound) = &principal.certificate_subject else {
        return true;
    };
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .and_then(|chain| chain.first().and_then(|leaf| certificate_subject(leaf)))
        .is_some_and(|subject| &subject == bound)
}

fn bearer_token(headers: &http::HeaderMap) -> Result<String, Error> {
    let value = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
        Error::Unauthenticated(
            "missing credentials: send the metadata `authorization: Bearer <token>`".into(),
        )
    })?;
    let value = value
        .to_str()
        .map_err(|_| Error::Unauthenticated("the authorization metadata is not text".into()))?;
    let token = value
        .strip_prefix("Bearer")
        .or_else(|| value.strip_prefix("bearer"))
        .filter(|rest| rest.is_empty() || rest.starts_with(' '))
        .ok_or_else(|| {
            Error::Unauthenticated("the authorization metadata must be `Bearer <token>`".into())
        })?
        .trim();
    if token.is_empty() {
        // `-H "authorization: Bearer $TOKEN"` with TOKEN unset: the commonest slip.
        return Err(Error::Unauthenticated(
            "the authorization metadata has no token after `Bearer`; is the variable holding \
             it set in this shell?"
                .into(),
        ));
    }
    Ok(token.to_owned())
}

/// The caller of a finmatch call, put there by [`AuthLayer`].
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing credentials"))
}

#[cfg(test)]
mod tests {
    use crate::service::access;

    #[test]
    fn every_served_finmatch_method_has_its_roles_and_nothing_else_does() {
        let served: Vec<&str> = crate::grpc::methods::served()
            .paths()
            .filter_map(|path| path.strip_prefix("/finmatch.v1."))
            .map(|rest| rest.rsplit('/').next().unwrap())
            .collect();
        for rpc in &served {
            assert!(
                access::roles(rpc).is_some(),
                "{rpc} has no entry in access::RULES"
            );
        }
        let mut named: Vec<&str> = access::rpcs().collect();
        let mut served = served;
        named.sort_unstable();
        served.sort_unstable();
        assert_eq!(named, served);
    }
}
