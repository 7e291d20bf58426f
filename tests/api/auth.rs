//! Authentication and authorization: tokens, revocation, roles.

use finmatch::domain::Role;
use finmatch::proto as pb;
use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;
use finmatch::proto::lender_service_client::LenderServiceClient;
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

    // A shell variable left unset: `-H "authorization: Bearer $TOKEN"`.
    let status = client
        .list_enterprises(authed(list(), ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("no token after `Bearer`"),
        "{}",
        status.message()
    );
    // The token glued to the scheme is not a token.
    let mut request = tonic::Request::new(list());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer{}", app.operator).parse().unwrap(),
    );
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
                ..Default::default()
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
                ..Default::default()
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
                ..Default::default()
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
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

/// Waits (at most `within`) until `app`'s credential cache is trusted or not, as asked.
async fn cache_trusted(app: &TestApp, trusted: bool, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while app.app.credential_cache_trusted() != trusted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the credential cache did not become {} within {within:?}",
            if trusted { "trusted" } else { "bypassed" }
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Issues a portal credential through the API; returns (credential id, token).
async fn portal_credential(app: &TestApp) -> (String, String) {
    let issued = LenderServiceClient::new(app.channel.clone())
        .issue_credential(authed(
            pb::IssueCredentialRequest {
                role: pb::Role::Portal as i32,
                lender_id: String::new(),
                label: "bureau portal".into(),
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .expect("the operator issues a portal credential")
        .into_inner();
    (issued.credential_id, issued.token)
}

async fn database(app: &TestApp) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// Revokes a credential behind the application's back: no notification is sent.
async fn revoke_in_sql(db: &tokio_postgres::Client, credential_id: &str) {
    let changed = db
        .execute(
            "UPDATE credentials SET revoked_at = now() WHERE id = $1::text::uuid",
            &[&credential_id],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_credential_revoked_on_one_replica_is_refused_there_at_once_and_on_another_soon() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    let second = std::time::Duration::from_secs(1);
    cache_trusted(&app, true, 10 * second).await;
    cache_trusted(&replica, true, 10 * second).await;
    let (id, token) = portal_credential(&app).await;
    let mut on_a = EnterpriseServiceClient::new(app.channel.clone());
    let mut on_b = EnterpriseServiceClient::new(replica.channel.clone());
    // Both replicas now hold the principal in their caches.
    for _ in 0..3 {
        on_a.list_enterprises(authed(list(), &token)).await.unwrap();
        on_b.list_enterprises(authed(list(), &token)).await.unwrap();
    }

    LenderServiceClient::new(app.channel.clone())
        .revoke_credential(authed(
            pb::RevokeCredentialRequest {
                credential_id: id.clone(),
            },
            &app.operator,
        ))
        .await
        .unwrap();

    let status = on_a
        .list_enterprises(authed(list(), &token))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "at once where revoked"
    );
    // The other replica learns it from the notification: well within the cache's 60 s max age.
    let deadline = tokio::time::Instant::now() + 5 * second;
    loop {
        match on_b.list_enterprises(authed(list(), &token)).await {
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated);
                break;
            }
            Ok(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "replica B still accepts the revoked credential after 5 s"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(replica.app.credential_cache_trusted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_listener_down_a_revocation_made_in_sql_is_enforced_at_once() {
    let app = TestApp::spawn().await;
    let second = std::time::Duration::from_secs(1);
    cache_trusted(&app, true, 10 * second).await;
    let db = database(&app).await;
    let mut client = EnterpriseServiceClient::new(app.channel.clone());

    // While the listener is live, the cache answers: a change made behind the application's
    // back (no notification) is not seen until the entry's max age. This is why every change
    // goes through the application, which notifies.
    let (unnoticed, unnoticed_token) = portal_credential(&app).await;
    client
        .list_enterprises(authed(list(), &unnoticed_token))
        .await
        .unwrap();
    revoke_in_sql(&db, &unnoticed).await;
    client
        .list_enterprises(authed(list(), &unnoticed_token))
        .await
        .expect("served from the cache");

    let (id, token) = portal_credential(&app).await;
    client
        .list_enterprises(authed(list(), &token))
        .await
        .unwrap();
    // The listening connection dies.
    let terminated = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            &[&finmatch::service::credentials::LISTENER_NAME],
        )
        .await
        .unwrap();
    assert_eq!(terminated.len(), 1, "one listening connection");
    cache_trusted(&app, false, 5 * second).await;
    // Calls still work, each looked up in the database, and nothing is cached meanwhile.
    client
        .list_enterprises(authed(list(), &token))
        .await
        .unwrap();

    revoke_in_sql(&db, &id).await;
    let status = client
        .list_enterprises(authed(list(), &token))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "the cache is bypassed"
    );
    assert!(
        !app.app.credential_cache_trusted(),
        "the listener was still down when the call was refused"
    );

    // Back: the cache was cleared when LISTEN took effect again, so both revocations hold.
    cache_trusted(&app, true, 10 * second).await;
    for token in [&token, &unnoticed_token] {
        let status = client
            .list_enterprises(authed(list(), token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}

/// Every finmatch RPC, called by every role it does not admit with a body that would not pass
/// validation (nothing set) or not even decode: PERMISSION_DENIED each time, before the body is
/// read, so the caller learns nothing of the rules or the data. An admitted role with the empty
/// body gets past the check (any code but PERMISSION_DENIED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_an_rpc_does_not_admit_is_denied_before_the_body_is_read() {
    let app = TestApp::spawn().await;
    let lender_id = create_lender(&app, "Bank of Suizhou").await;
    let tokens = [
        (Role::Operator, app.operator.clone()),
        (Role::Portal, app.token(Role::Portal, None).await),
        (Role::Lender, app.token(Role::Lender, Some(lender_id)).await),
    ];
    let mut paths: Vec<&str> = finmatch::grpc::methods::served()
        .paths()
        .filter(|p| p.starts_with("/finmatch.v1."))
        .collect();
    paths.sort_unstable();
    assert!(paths.len() >= 30, "{paths:?}");
    let mut denied = 0;
    for path in paths {
        let rpc = path.rsplit('/').next().unwrap();
        let admitted = finmatch::service::access::roles(rpc).expect("every RPC has its roles");
        let streams = finmatch::grpc::methods::served().is_streaming(path);
        for (role, token) in &tokens {
            if admitted.contains(role) && streams {
                // Admitted, a stream stays open; a unary client would wait for its end.
                continue;
            }
            // An empty message (every field unset), and bytes that are no protobuf at all.
            for body in [Vec::new(), vec![0xff, 0xff, 0xff, 0xff]] {
                let mut grpc = tonic::client::Grpc::new(app.channel.clone());
                grpc.ready().await.unwrap();
                let call = grpc.unary::<Raw, Raw, _>(
                    authed(Raw(body.clone()), token),
                    http::uri::PathAndQuery::try_from(path).unwrap(),
                    RawCodec,
                );
                let status = match tokio::time::timeout(std::time::Duration::from_secs(10), call)
                    .await
                    .unwrap_or_else(|_| panic!("{role} {path}: no answer in 10 s"))
                {
                    Ok(_) => tonic::Status::ok(""),
                    Err(status) => status,
                };
                if admitted.contains(role) {
                    assert_ne!(status.code(), Code::PermissionDenied, "{role} {path}");
                } else {
                    denied += 1;
                    assert_eq!(
                        status.code(),
                        Code::PermissionDenied,
                        "{role} calling {path} with {body:?}: {status:?}"
                    );
                    assert!(
                        status
                            .message()
                            .starts_with(&format!("{rpc} requires the ")),
                        "{}",
                        status.message()
                    );
                }
            }
        }
    }
    assert!(denied > 60, "{denied} refusals checked");
}

/// A message as raw bytes, sent and received as they are.
#[derive(Debug, Clone)]
struct Raw(Vec<u8>);

#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Raw;
    type Decode = Raw;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Raw;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Raw,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        use prost::bytes::BufMut as _;
        dst.put_slice(&item.0);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Raw;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Raw>, Self::Error> {
        use prost::bytes::Buf as _;
        Ok(Some(Raw(src.copy_to_bytes(src.remaining()).to_vec())))
    }
}
