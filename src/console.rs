//! The web console (DESIGN §8): the files of `console/dist`, built by Vite from `console/` and
//! committed, compiled into the binary and served at `/` on the gRPC port by [`ConsoleLayer`],
//! the outermost layer of the server. It answers every GET and HEAD (gRPC and gRPC-Web calls are
//! POSTs, and pass on unchanged): a console file, or 404.

use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready, ready};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use tower::{Layer, Service};

#[derive(rust_embed::Embed)]
#[folder = "console/dist/"]
struct Assets;

/// What the console may load: its own files and calls to its own origin. Inline styles are
/// allowed because the chart library positions its tooltips with them; no inline script is.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Serves the console's files to GET and HEAD requests; passes every other request on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleLayer;

impl<S> Layer<S> for ConsoleLayer {
    type Service = Console<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Console { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Console<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Console<S>
where
    S: Service<Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.method() == Method::GET || request.method() == Method::HEAD {
            let response = serve(request.method(), request.uri().path(), request.headers());
            Either::Left(ready(Ok(response.map(tonic::body::Body::new))))
        } else {
            Either::Right(self.inner.call(request))
        }
    }
}

fn serve(method: &Method, path: &str, headers: &HeaderMap) -> Response {
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    let Some(file) = Assets::get(path) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else if method == Method::HEAD {
        StatusCode::OK.into_response()
    } else {
        Body::from(file.data).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    // Vite names every asset by its content hash; index.html names the current ones.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_has_an_index_that_loads_its_script() {
        let index = Assets::get("index.html").expect("console/dist/index.html is committed");
        let index = std::str::from_utf8(&index.data).unwrap();
        let script = index
            .split("src=\"./")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("index.html loads a script");
        assert!(Assets::get(script).is_some(), "{script} is in the bundle");
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("assets/index-1.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("favicon"), "application/octet-stream");
    }
}
