//! Authentication and authorization: tokens, revocation, roles.

use finmatch::domain::Role;
use finmatch::grpc::pb;
use finmatch::grpc::pb::enterprise_service_client::EnterpriseServiceClient;
use finmatch::grpc::pb::lender_service_client::LenderServiceClient;
use tonic::Code;

use crate::helpers::{TestApp, authed, create_lender};

fn list() -> pb::ListEnterprisesRequest {
    pb::ListEnterprisesRequest::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_token_is_unauthenticated() {
    let app = TestApp::spawn().await;
    let mut client = EnterpriseServiceClient::new(app.channel.clone());
    let status = client
        .list_enterprises(tonic::Request::new(list()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("authorization: Bearer"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_malformed_token_is_unauthenticated() {
    let app = TestApp::spawn().await;
    let mut client = EnterpriseServiceClient::new(app.channel.clone());
    let status = client
        .list_enterprises(authed(list(), "fmk_not-a-real-token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut request = tonic::Request::new(list());
    request
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    let status = client.list_enterprises(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_token_works_until_revoked_and_revocation_is_immediate_on_every_replica() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    let mut lenders = LenderServiceClient::new(app.channel.clone());
    let issued = lenders
        .issue_credential(authed(
            pb::IssueCredentialRequest {
                role: pb::Role::Portal as i32,
                lender_id: String::new(),
                label: "bureau portal".into(),
            },
            &app.operator,
        ))
        .await
        .expect("the operator issues a portal credential")
        .into_inner();
    assert!(issued.token.starts_with("fmk_"));

    let mut on_a = EnterpriseServiceClient::new(app.channel.clone());
    let mut on_b = EnterpriseServiceClient::new(replica.channel.clone());
    on_a.list_enterprises(authed(list(), &issued.token))
        .await
        .expect("the new token works on replica A");
    on_b.list_enterprises(authed(list(), &issued.token))
        .await
        .expect("and on replica B");

    let revoked = lenders
        .revoke_credential(authed(
            pb::RevokeCredentialRequest {
                credential_id: issued.credential_id.clone(),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoke_time.is_some());

    for client in [&mut on_a, &mut on_b] {
        let status = client
            .list_enterprises(authed(list(), &issued.token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_calling_rpcs_they_may_not_are_permission_denied() {
    let app = TestApp::spawn().await;
    let lender_id = create_lender(&app, "Bank of Suizhou").await;
    let portal = app.token(Role::Portal, None).await;
    let bank = app.token(Role::Lender, Some(lender_id)).await;

    let mut lenders = LenderServiceClient::new(app.channel.clone());
    let status = lenders
        .list_lenders(authed(pb::ListLendersRequest::default(), &portal))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("OPERATOR"),
        "{}",
        status.message()
    );

    let status = lenders
        .issue_credential(authed(
            pb::IssueCredentialRequest {
                role: pb::Role::Operator as i32,
                lender_id: String::new(),
                label: "escalation".into(),
            },
            &bank,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let mut enterprises = EnterpriseServiceClient::new(app.channel.clone());
    let status = enterprises
        .list_enterprises(authed(list(), &bank))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    enterprises
        .list_enterprises(authed(list(), &portal))
        .await
        .expect("the portal may list enterprises");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lender_credential_must_name_an_existing_lender() {
    let app = TestApp::spawn().await;
    let mut lenders = LenderServiceClient::new(app.channel.clone());
    let status = lenders
        .issue_credential(authed(
            pb::IssueCredentialRequest {
                role: pb::Role::Lender as i32,
                lender_id: String::new(),
                label: "bank gateway".into(),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(crate::helpers::violated_fields(&status), ["lender_id"]);

    let status = lenders
        .issue_credential(authed(
            pb::IssueCredentialRequest {
                role: pb::Role::Lender as i32,
                lender_id: uuid::Uuid::new_v4().to_string(),
                label: "bank gateway".into(),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}
