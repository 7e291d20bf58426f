//! PostgreSQL over TLS: a private cluster that takes TLS connections only (`hostnossl … reject`
//! in pg_hba.conf), with a certificate for `localhost` signed by a CA made here (rcgen), and
//! finmatch connecting to it as each `sslmode` says: the pool, the listeners and the migrations.

use std::path::Path;
use std::time::{Duration, Instant};

use finmatch::proto as pb;
use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;
use finmatch::storage::connect::Connector;

use crate::cluster::PrivateCluster;
use crate::helpers::{TestApp, TestDatabase, authed};

/// Whether the connection `url` opens is encrypted, as the server sees it; the error otherwise.
async fn encrypted(url: &str) -> Result<bool, String> {
    let connector = Connector::new(url).map_err(|e| format!("{e:#}"))?;
    // With its causes: the TLS error says why the certificate was refused.
    let client = connector
        .client()
        .await
        .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

fn ca_option(path: &Path) -> String {
    format!("sslrootcert={}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_that_asks_for_tls_reaches_a_tls_only_postgresql_and_checks_what_it_says() {
    let pg = PrivateCluster::start_tls();
    let ca = ca_option(&pg.ca());
    let url = |host: &str, options: &str| pg.server(host, options).database("postgres");

    // Before, `prefer` stayed in the clear (refused here) and `require` failed its handshake.
    for options in [
        String::new(),
        "sslmode=prefer".into(),
        "sslmode=require".into(),
        format!("sslmode=require&{ca}"),
        format!("sslmode=verify-ca&{ca}"),
        format!("sslmode=verify-full&{ca}"),
    ] {
        assert_eq!(
            encrypted(&url("localhost", &options)).await,
            Ok(true),
            "{options}"
        );
    }
    // The clear is refused by this server; the certificate is checked as the mode says.
    let refused = encrypted(&url("localhost", "sslmode=disable")).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        encrypted(&url("127.0.0.1", &format!("sslmode=verify-ca&{ca}"))).await,
        Ok(true),
        "verify-ca checks the CA, not the name"
    );
    let wrong_name = encrypted(&url("127.0.0.1", &format!("sslmode=verify-full&{ca}"))).await;
    assert!(
        wrong_name
            .as_ref()
            .is_err_and(|e| e.contains("not valid for name")),
        "the certificate names localhost, not 127.0.0.1: {wrong_name:?}"
    );
    let other = ca_option(&pg.other_ca());
    for mode in ["require", "verify-ca", "verify-full"] {
        let untrusted = encrypted(&url("localhost", &format!("sslmode={mode}&{other}"))).await;
        assert!(
            untrusted
                .as_ref()
                .is_err_and(|e| e.contains("UnknownIssuer")),
            "{mode} with another CA: {untrusted:?}"
        );
    }

    // A server start-up that cannot trust the database fails at once, not after the patience.
    let started = Instant::now();
    let error = finmatch::storage::run_migrations_patiently(
        &url("localhost", &format!("sslmode=verify-full&{other}")),
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up after {:?}: {error:#}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_tls_only_postgresql_migrates_serves_and_listens_over_verified_tls() {
    let pg = PrivateCluster::start_tls();
    let server = pg.server(
        "localhost",
        &format!("sslmode=verify-full&{}", ca_option(&pg.ca())),
    );
    let database = std::sync::Arc::new(TestDatabase::create_on(&server).await);
    let (without_options, _) = database.url.split_once('?').unwrap();
    let name = without_options.rsplit('/').next().unwrap().to_owned();
    let app = TestApp::spawn_with(database, Default::default()).await;

    // A write goes through the pool.
    let created = EnterpriseServiceClient::new(app.channel.clone())
        .create_enterprise(authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(crate::helpers::enterprise(1)),
            },
            &app.operator,
        ))
        .await
        .expect("a write over TLS");
    assert!(!created.into_inner().enterprise.unwrap().id.is_empty());

    // The listeners hold connections of their own, encrypted like every other.
    let admin = server.database("postgres");
    let client = Connector::new(&admin).unwrap().client().await.unwrap();
    let wanted = [
        finmatch::service::credentials::LISTENER_NAME,
        finmatch::service::catalog::PRODUCT_LISTENER_NAME,
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    let connections = loop {
        let rows = client
            .query(
                "SELECT a.application_name, s.ssl FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1",
                &[&name],
            )
            .await
            .unwrap();
        let connections: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if wanted
            .iter()
            .all(|w| connections.iter().any(|(n, _)| n == w))
            || Instant::now() > deadline
        {
            break connections;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for listener in wanted {
        assert!(
            connections.iter().any(|(n, _)| n == listener),
            "{listener} is connected: {connections:?}"
        );
    }
    assert!(
        connections.len() > wanted.len(),
        "the pool is connected too: {connections:?}"
    );
    assert!(connections.iter().all(|(_, ssl)| *ssl), "{connections:?}");
    app.shutdown().await.unwrap();
}
