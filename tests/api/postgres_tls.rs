//! PostgreSQL over TLS: a private cluster that takes TLS connections only (`hostnossl … reject`
//! in pg_hba.conf), with a certificate for `localhost` signed by a CA made here (rcgen), and
//! finmatch connecting to it as each `sslmode` says: the pool, the listeners and the migrations.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use finmatch::devdb::{self, ServerUrl};
use finmatch::grpc::pb;
use finmatch::grpc::pb::enterprise_service_client::EnterpriseServiceClient;
use finmatch::storage::connect::Connector;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase, authed, unused_port};

/// A PostgreSQL cluster of its own, stopped and deleted on drop.
struct TlsCluster {
    dir: PathBuf,
    bin: PathBuf,
    as_root: bool,
    port: u16,
}

impl TlsCluster {
    fn start() -> Self {
        let bin = devdb::postgres_bindir()
            .expect("the PostgreSQL server binaries (initdb, pg_ctl) for a TLS cluster");
        let as_root = devdb::is_root();
        let dir = std::env::temp_dir().join(format!("fm-tls-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = Self {
            dir,
            bin,
            as_root,
            port: unused_port(),
        };
        cluster.write_certificates();
        cluster.chown();
        cluster.pg("initdb", |c| {
            c.arg("-D")
                .arg(cluster.data())
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        });
        std::fs::write(
            cluster.data().join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl all all ::1/128 trust\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostnossl all all ::/0 reject\n",
        )
        .unwrap();
        cluster.chown();
        let options = format!(
            "-p {} -c listen_addresses=localhost -k {} -c ssl=on -c ssl_cert_file={} \
             -c ssl_key_file={}",
            cluster.port,
            cluster.dir.display(),
            cluster.dir.join("server.crt").display(),
            cluster.dir.join("server.key").display(),
        );
        cluster.pg("pg_ctl", |c| {
            c.arg("-D")
                .arg(cluster.data())
                .args(["-o", &options, "-l"])
                .arg(cluster.dir.join("server.log"))
                .args(["-w", "start"]);
        });
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The CA that signed the server's certificate.
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed nothing of this server's.
    fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// The server at `host` with URL `options`, e.g. `sslmode=require`.
    fn server(&self, host: &str, options: &str) -> ServerUrl {
        ServerUrl::new(format!(
            "postgres://postgres@{host}:{}/?{options}",
            self.port
        ))
    }

    /// A CA, a certificate for `localhost` only (no IP address) signed by it, its key, and an
    /// unrelated CA.
    fn write_certificates(&self) {
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert, Issuer::new(params, key))
        };
        let (ca_cert, issuer) = ca("finmatch test CA");
        let (other_cert, _) = ca("somebody else's CA");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let server = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(self.ca(), ca_cert.pem()).unwrap();
        std::fs::write(self.other_ca(), other_cert.pem()).unwrap();
        std::fs::write(self.dir.join("server.crt"), server.pem()).unwrap();
        let key_file = self.dir.join("server.key");
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn chown(&self) {
        if self.as_root {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&self.dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    fn pg(&self, program: &str, args: impl FnOnce(&mut std::process::Command)) {
        let mut command = devdb::pg_command(&self.bin.join(program), self.as_root);
        args(&mut command);
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let mut stop = devdb::pg_command(&self.bin.join("pg_ctl"), self.as_root);
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"]);
        let _ = stop.output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
    let pg = TlsCluster::start();
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
    let pg = TlsCluster::start();
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
        finmatch::service::routing::PRODUCT_LISTENER_NAME,
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
