//! How long calls may run: a unary call is bounded by the server's call timeout and by the
//! client's own deadline; a streaming call is not cut by the call timeout.

use std::time::{Duration, Instant};

use finmatch::config::ServerArgs;
use finmatch::domain::Role;
use finmatch::proto as pb;
use finmatch::proto::financing_service_client::FinancingServiceClient;
use finmatch::proto::partner_service_client::PartnerServiceClient;
use tonic::Code;

use crate::helpers::{TestApp, TestDatabase, authed, create_lender, lock_needs};

/// A server whose call timeout is one second.
async fn impatient() -> TestApp {
    TestApp::spawn_with(
        std::sync::Arc::new(TestDatabase::create().await),
        ServerArgs {
            call_timeout_secs: 1,
            ..ServerArgs::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_longer_than_the_call_timeout_ends_with_deadline_exceeded_naming_the_setting()
{
    let app = impatient().await;
    let release = lock_needs(&app).await;
    let mut client = FinancingServiceClient::new(app.channel.clone());
    let started = Instant::now();
    let status = client
        .list_needs(authed(pb::ListNeedsRequest::default(), &app.operator))
        .await
        .unwrap_err();
    let took = started.elapsed();
    drop(release);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("FINMATCH_CALL_TIMEOUT_SECS"),
        "{status:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_honours_the_clients_shorter_deadline() {
    let app = TestApp::spawn().await;
    let release = lock_needs(&app).await;
    let mut client = FinancingServiceClient::new(app.channel.clone());
    let mut request = authed(pb::ListNeedsRequest::default(), &app.operator);
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = client.list_needs(request).await.unwrap_err();
    let took = started.elapsed();
    drop(release);
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_outlives_the_call_timeout() {
    let app = impatient().await;
    let lender_id = create_lender(&app, "Suizhou Rural Commercial Bank").await;
    let token = app.token(Role::Lender, Some(lender_id)).await;
    let mut client = PartnerServiceClient::new(app.channel.clone());
    let mut stream = client
        .watch_referrals(authed(
            pb::WatchReferralsRequest { after_cursor: 0 },
            &token,
        ))
        .await
        .expect("the watch opens")
        .into_inner();
    // Three call timeouts of silence: the stream must neither end nor fail.
    let waited = tokio::time::timeout(Duration::from_secs(3), stream.message()).await;
    assert!(
        waited.is_err(),
        "the stream ended or failed within 3 s: {waited:?}"
    );
}
