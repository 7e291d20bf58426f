//! Prometheus metrics, end to end. A test binary of its own: the metrics registry is global to
//! the process, so counts asserted here must not be mixed with the calls of other tests.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::sync::Arc;
use std::time::Duration;

use finmatch::config::ServerArgs;
use finmatch::proto as pb;
use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;
use helpers::{TestApp, TestDatabase, authed, enterprise};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body of `GET /metrics`.
async fn scrape(app: &TestApp) -> String {
    let addr = app.metrics_addr.expect("spawned with a metrics address");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the sample of `metric` whose labels include every one of `labels`.
fn sample(body: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(metric)?.strip_prefix('{')?;
        let (label_text, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|l| l == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().unwrap())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_method_and_code_and_export_gauges() {
    let database = Arc::new(TestDatabase::create().await);
    let args = ServerArgs {
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerArgs::default()
    };
    let app = TestApp::spawn_with(database, args).await;
    let mut client = EnterpriseServiceClient::new(app.channel.clone());

    let created = client
        .create_enterprise(authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(enterprise(1)),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .enterprise
        .unwrap();
    client
        .get_enterprise(authed(
            pb::GetEnterpriseRequest {
                enterprise_id: created.id.clone(),
            },
            &app.operator,
        ))
        .await
        .unwrap();
    let missing = client
        .get_enterprise(authed(
            pb::GetEnterpriseRequest {
                enterprise_id: uuid::Uuid::new_v4().to_string(),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let unauthenticated = client
        .get_enterprise(pb::GetEnterpriseRequest {
            enterprise_id: created.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);

    let body = scrape(&app).await;
    let get = "finmatch.v1.EnterpriseService/GetEnterprise";
    let create = "finmatch.v1.EnterpriseService/CreateEnterprise";
    let calls = |method, code| {
        sample(
            &body,
            "finmatch_rpc_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(calls(create, "OK"), Some(1.0), "{body}");
    assert_eq!(calls(get, "OK"), Some(1.0), "{body}");
    assert_eq!(calls(get, "NOT_FOUND"), Some(1.0), "{body}");
    assert_eq!(calls(get, "UNAUTHENTICATED"), Some(1.0), "{body}");
    assert_eq!(calls(get, "INTERNAL"), None, "{body}");
    assert_eq!(
        sample(
            &body,
            "finmatch_rpc_duration_seconds_count",
            &[("method", get)]
        ),
        Some(3.0),
        "{body}"
    );
    assert!(
        body.contains("finmatch_rpc_duration_seconds_bucket{"),
        "latency is a histogram with buckets: {body}"
    );

    // The gauges are computed by a background task right after start-up.
    let mut body = body;
    for _ in 0..50 {
        if body.contains("finmatch_needs{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        body = scrape(&app).await;
    }
    for status in [
        "SUBMITTED",
        "ROUTED",
        "APPROVED",
        "FUNDED",
        "UNMATCHED",
        "WITHDRAWN",
        "EXPIRED",
    ] {
        assert_eq!(
            sample(&body, "finmatch_needs", &[("status", status)]),
            Some(0.0),
            "{status}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_metrics_address_no_metrics_listener_is_bound() {
    let app = TestApp::spawn().await;
    assert_eq!(app.metrics_addr, None);
}

/// Calls to made-up methods, even under a real service's name, are counted under `other`: a
/// client cannot mint metric series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_share_one_label_and_add_no_series() {
    let database = Arc::new(TestDatabase::create().await);
    let args = ServerArgs {
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerArgs::default()
    };
    let app = TestApp::spawn_with(database, args).await;
    let before = scrape(&app).await;
    let others = |body: &str| -> f64 {
        body.lines()
            .filter(|l| {
                l.starts_with("finmatch_rpc_requests_total{") && l.contains("method=\"other\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    const CALLS: usize = 60;
    for i in 0..CALLS {
        grpc.ready().await.unwrap();
        let path = format!("/finmatch.v1.EnterpriseService/MadeUp{i}");
        let status = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                http::uri::PathAndQuery::try_from(path).unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_ne!(status.code(), tonic::Code::Ok);
    }
    let after = scrape(&app).await;
    assert!(
        !after.contains("MadeUp"),
        "a made-up method got a label: {after}"
    );
    assert_eq!(others(&after) - others(&before), CALLS as f64, "{after}");
    let labels: std::collections::HashSet<&str> = after
        .lines()
        .filter(|l| l.starts_with("finmatch_rpc_"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        labels.len() <= finmatch::grpc::methods::served().len() + 1,
        "{} method labels: {labels:?}",
        labels.len()
    );
}
