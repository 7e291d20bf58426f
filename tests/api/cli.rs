//! The command line as an operator bootstraps with it.

use finmatch::grpc::pb;
use finmatch::grpc::pb::lender_service_client::LenderServiceClient;

use crate::helpers::{TestApp, authed};

fn finmatch(database_url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_finmatch"))
        .args(args)
        .env("FINMATCH_DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run finmatch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_create_prints_the_token_alone_and_revoke_takes_it_away() {
    let app = TestApp::spawn().await;
    let url = app.database_url().to_owned();
    let created = tokio::task::spawn_blocking(move || {
        finmatch(
            &url,
            &[
                "credentials",
                "create",
                "--role",
                "operator",
                "--label",
                "ops-alice",
            ],
        )
    })
    .await
    .unwrap();
    assert!(created.status.success(), "{created:?}");
    let stdout = String::from_utf8(created.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the token on stdout: {stdout:?}");
    let token = lines[0].to_owned();
    assert!(token.starts_with("fmk_"));

    let mut client = LenderServiceClient::new(app.channel.clone());
    client
        .list_lenders(authed(pb::ListLendersRequest::default(), &token))
        .await
        .expect("the printed token is an operator's");

    let stderr = String::from_utf8(created.stderr).unwrap();
    let id = stderr
        .split_whitespace()
        .find(|word| uuid::Uuid::parse_str(word).is_ok())
        .expect("stderr names the credential id")
        .to_owned();
    let url = app.database_url().to_owned();
    let revoked =
        tokio::task::spawn_blocking(move || finmatch(&url, &["credentials", "revoke", &id]))
            .await
            .unwrap();
    assert!(revoked.status.success(), "{revoked:?}");
    let status = client
        .list_lenders(authed(pb::ListLendersRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lender_credential_without_a_lender_is_refused_with_a_clear_message() {
    let app = TestApp::spawn().await;
    let url = app.database_url().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        finmatch(
            &url,
            &[
                "credentials",
                "create",
                "--role",
                "lender",
                "--label",
                "bank",
            ],
        )
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("lender_id"), "{stderr}");
}
