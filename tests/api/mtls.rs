//! TLS and mutual TLS on the gRPC port, with certificates made here (rcgen): the CA's clients
//! connect, a client with no certificate, one from another CA or in plaintext does not, and a
//! credential bound to a certificate subject is refused over any other certificate. gRPC-Web
//! works over the same TLS port.

use std::path::PathBuf;
use std::sync::Arc;

use finmatch::config::ServerArgs;
use finmatch::proto as pb;
use finmatch::proto::lender_service_client::LenderServiceClient;
use finmatch::proto::partner_service_client::PartnerServiceClient;
use rcgen::{DnType, Issuer, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase, authed, create_lender, violated_fields};
use crate::pki::{authority, leaf};

/// Subject of bank A's gateway certificate, as RFC 4514 writes it.
const BANK_A: &str = "CN=ICBC Xiaogan gateway,O=ICBC";

/// A CA with a server certificate for `localhost` and two bank client certificates, and an
/// unrelated CA with one client certificate of its own; written where the server reads them.
struct Pki {
    dir: PathBuf,
    ca: String,
    bank_a: Identity,
    bank_b: Identity,
    rogue: Identity,
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("fm-mtls-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_pem, ca) = authority("finmatch test CA");
        let (_, rogue_ca) = authority("somebody else's CA");
        let (server_cert, server_key) = leaf(&ca, &[], vec!["localhost".into()]);
        std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        std::fs::write(dir.join("server.pem"), server_cert).unwrap();
        std::fs::write(dir.join("server.key"), server_key).unwrap();
        let client = |issuer: &Issuer<'static, KeyPair>, org: &str, cn: &str| {
            let (cert, key) = leaf(
                issuer,
                &[(DnType::OrganizationName, org), (DnType::CommonName, cn)],
                Vec::new(),
            );
            Identity::from_pem(cert, key)
        };
        Self {
            ca: ca_pem,
            bank_a: client(&ca, "ICBC", "ICBC Xiaogan gateway"),
            bank_b: client(&ca, "ABC", "ABC Xiaogan gateway"),
            rogue: client(&rogue_ca, "ICBC", "ICBC Xiaogan gateway"),
            dir,
        }
    }

    /// A server that requires a client certificate signed by the CA.
    fn mutual(&self) -> ServerArgs {
        ServerArgs {
            tls_cert: Some(self.dir.join("server.pem")),
            tls_key: Some(self.dir.join("server.key")),
            tls_client_ca: Some(self.dir.join("ca.pem")),
            ..Default::default()
        }
    }

    /// Trusts the server; presents `identity` when given.
    fn client(&self, identity: Option<&Identity>) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        match identity {
            Some(identity) => tls.identity(identity.clone()),
            None => tls,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A channel to `app` over TLS with `tls`, connected lazily (a refused handshake shows on the
/// first call).
fn channel(app: &TestApp, tls: ClientTlsConfig) -> Channel {
    Channel::from_shared(format!("https://{}", app.addr))
        .unwrap()
        .tls_config(tls.domain_name("localhost"))
        .unwrap()
        .connect_lazy()
}

async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|r| r.into_inner().status)
}

async fn list_referrals(channel: Channel, token: &str) -> Result<(), tonic::Status> {
    PartnerServiceClient::new(channel)
        .list_referrals(authed(pb::ListReferralsRequest::default(), token))
        .await
        .map(|_| ())
}

async fn spawn(pki: &Pki) -> TestApp {
    TestApp::spawn_with_tls(
        Arc::new(TestDatabase::create().await),
        pki.mutual(),
        Some(pki.client(Some(&pki.bank_a))),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_the_cas_clients_and_refuses_no_certificate_another_ca_and_plaintext() {
    let pki = Pki::new();
    let app = spawn(&pki).await;

    for bank in [&pki.bank_a, &pki.bank_b] {
        assert_eq!(
            health(channel(&app, pki.client(Some(bank))))
                .await
                .expect("a client of the CA connects"),
            ServingStatus::Serving as i32
        );
    }
    let none = health(channel(&app, pki.client(None))).await;
    assert!(none.is_err(), "no client certificate: {none:?}");
    let rogue = health(channel(&app, pki.client(Some(&pki.rogue)))).await;
    assert!(rogue.is_err(), "a certificate from another CA: {rogue:?}");
    let plain = health(
        Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect_lazy(),
    )
    .await;
    assert!(plain.is_err(), "plaintext on the TLS port: {plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_bound_to_a_certificate_is_unauthenticated_over_any_other() {
    let pki = Pki::new();
    let app = spawn(&pki).await;
    let lender = create_lender(&app, "ICBC Xiaogan").await;
    let issue = |subject: &str| {
        let subject = subject.to_owned();
        let mut client = LenderServiceClient::new(app.channel.clone());
        let operator = app.operator.clone();
        async move {
            client
                .issue_credential(authed(
                    pb::IssueCredentialRequest {
                        role: pb::Role::Lender as i32,
                        lender_id: lender.to_string(),
                        label: "ICBC gateway".into(),
                        certificate_subject: subject,
                        ..Default::default()
                    },
                    &operator,
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    let bound = issue(BANK_A).await.unwrap();
    assert_eq!(bound.certificate_subject, BANK_A);
    let unbound = issue("").await.unwrap();
    assert_eq!(unbound.certificate_subject, "");

    let bank_a = channel(&app, pki.client(Some(&pki.bank_a)));
    let bank_b = channel(&app, pki.client(Some(&pki.bank_b)));
    list_referrals(bank_a.clone(), &bound.token)
        .await
        .expect("the bound token over its own certificate");
    // The token alone, stolen and used with another bank's (valid) certificate, is refused.
    let stolen = list_referrals(bank_b.clone(), &bound.token)
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Code::Unauthenticated, "{stolen:?}");
    assert!(
        stolen.message().contains("bound to a client certificate"),
        "{}",
        stolen.message()
    );
    assert!(
        !stolen.message().contains("ICBC"),
        "the refusal does not tell the thief which certificate: {}",
        stolen.message()
    );
    list_referrals(bank_b, &unbound.token)
        .await
        .expect("an unbound token over any client certificate");

    let malformed = issue("ICBC gateway").await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
    assert_eq!(violated_fields(&malformed), vec!["certificate_subject"]);

    // The same over gRPC-Web on the TLS port, as a browser portal or a proxy sends it.
    let web = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebClientLayer::new())
        .map_request(|request: http::Request<_>| request.map(tonic::body::Body::new))
        .service(bank_a);
    let status = HealthClient::new(web.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("gRPC-Web over TLS")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    PartnerServiceClient::new(web)
        .list_referrals(authed(pb::ListReferralsRequest::default(), &bound.token))
        .await
        .expect("a bound token over gRPC-Web with its certificate");
}
