//! The test harness: a real server on 127.0.0.1:0 against a fresh PostgreSQL database per test.
//!
//! The migrations are applied once per test run to a template database (named by a hash of the
//! migrations, created under an advisory lock so parallel test processes agree); each test then
//! gets `CREATE DATABASE … TEMPLATE`, which takes milliseconds.

use std::sync::OnceLock;

use finmatch::config::{ServerArgs, Settings};
use finmatch::devdb::{self, ServerUrl};
use finmatch::domain::Role;
use finmatch::server::Application;
use finmatch::service::App;
use finmatch::service::credentials::NewCredential;
use finmatch::service::events::ReferralFeed;
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, oneshot};
use tonic::transport::Channel;
use uuid::Uuid;

static SERVER: OnceCell<(ServerUrl, String)> = OnceCell::const_new();
static LOGS: OnceLock<()> = OnceLock::new();

/// The PostgreSQL server and the migrated template database shared by every test of this run.
async fn template() -> &'static (ServerUrl, String) {
    SERVER
        .get_or_init(|| async {
            let explicit = std::env::var("FINMATCH_TEST_DATABASE_URL").ok();
            let server = devdb::find_or_start_server(explicit.as_deref())
                .await
                .expect("a PostgreSQL server for the tests");
            let name = format!("finmatch_tpl_{}", migrations_hash());
            create_template(&server, &name).await;
            (server, name)
        })
        .await
}

async fn create_template(server: &ServerUrl, name: &str) {
    let admin = server.database("postgres");
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to the postgres database");
    let driver = tokio::spawn(connection);
    // One creator at a time across test processes.
    client
        .batch_execute("SELECT pg_advisory_lock(72710001)")
        .await
        .unwrap();
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some();
    if !exists {
        let building = format!("{name}_building");
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"
            ))
            .await
            .unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE \"{building}\""))
            .await
            .unwrap();
        finmatch::storage::run_migrations(&server.database(&building))
            .await
            .expect("migrations apply to an empty database");
        client
            .batch_execute(&format!(
                "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
            ))
            .await
            .unwrap();
    }
    client
        .batch_execute("SELECT pg_advisory_unlock(72710001)")
        .await
        .unwrap();
    drop(client);
    let _ = driver.await;
}

fn migrations_hash() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files = Vec::new();
    for entry in walk(&dir) {
        files.push(entry);
    }
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(&file).unwrap());
    }
    hex::encode(&hasher.finalize()[..8])
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A fresh database, dropped when the value is dropped.
pub struct TestDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let (server, template) = template().await;
        let name = format!("finmatch_test_{}", Uuid::new_v4().simple());
        devdb::execute(
            &server.database("postgres"),
            &format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
        )
        .await
        .expect("create a test database from the template");
        Self {
            url: server.database(&name),
            admin_url: server.database("postgres"),
            name,
        }
    }
}

impl TestDatabase {
    /// A fresh, empty database on another PostgreSQL `server` (reached with the server URL's
    /// options, e.g. `sslmode`); the server that spawns on it applies the migrations.
    pub async fn create_on(server: &devdb::ServerUrl) -> Self {
        let name = format!("finmatch_test_{}", Uuid::new_v4().simple());
        let admin_url = server.database("postgres");
        devdb::execute(&admin_url, &format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create a database on the other server");
        Self {
            url: server.database(&name),
            admin_url,
            name,
        }
    }

    /// The same database reached at `url` (e.g. through a proxy); it is still dropped through
    /// the test server.
    #[allow(dead_code)] // used by tests/api, not by tests/metrics.rs
    pub fn reached_at(mut self, url: String) -> Self {
        self.url = url;
        self
    }

    /// A database named on the test server but not created yet ([`TestDatabase::create_now`]).
    pub async fn not_created_yet() -> Self {
        let (server, _) = template().await;
        let name = format!("finmatch_test_{}", Uuid::new_v4().simple());
        Self {
            url: server.database(&name),
            admin_url: server.database("postgres"),
            name,
        }
    }

    /// Creates the database [`TestDatabase::not_created_yet`] named, empty (not migrated).
    pub async fn create_now(&self) {
        devdb::execute(
            &self.admin_url,
            &format!("CREATE DATABASE \"{}\"", self.name),
        )
        .await
        .expect("create the test database");
    }
}

/// A port nothing listens on (bound, then released).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop may run inside the test's runtime, which cannot block on itself.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = runtime.block_on(devdb::execute(&admin, &sql));
        })
        .join();
    }
}

/// One running server and its database.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    /// Where `/metrics` is served, when the server was spawned with a metrics address.
    #[allow(dead_code)] // read by tests/metrics.rs, which has the process's metrics to itself
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub app: App,
    /// The server's referral event feed (its counters show what watch streams cost).
    #[allow(dead_code)] // read by the watch tests of tests/api, not by tests/metrics.rs
    pub feed: ReferralFeed,
    pub channel: Channel,
    /// An OPERATOR token.
    pub operator: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Declared last: dropped after the server has stopped.
    database: std::sync::Arc<TestDatabase>,
}

impl TestApp {
    /// A server on a fresh database.
    pub async fn spawn() -> Self {
        Self::spawn_with(
            std::sync::Arc::new(TestDatabase::create().await),
            ServerArgs::default(),
        )
        .await
    }

    /// Another replica on the same database.
    pub async fn replica(&self) -> Self {
        Self::spawn_with(self.database.clone(), ServerArgs::default()).await
    }

    /// Another replica on the same database, with these settings.
    #[allow(dead_code)] // used by the watch tests of tests/api, not by tests/metrics.rs
    pub async fn replica_with(&self, args: ServerArgs) -> Self {
        Self::spawn_with(self.database.clone(), args).await
    }

    /// A server on a fresh database, with these settings.
    #[allow(dead_code)] // used by tests/api, not by tests/metrics.rs
    pub async fn spawn_configured(args: ServerArgs) -> Self {
        Self::spawn_with(std::sync::Arc::new(TestDatabase::create().await), args).await
    }

    pub async fn spawn_with(database: std::sync::Arc<TestDatabase>, args: ServerArgs) -> Self {
        Self::spawn_with_tls(database, args, None).await
    }

    /// [`TestApp::spawn_with`], its channel speaking TLS with `tls` when given (the server's
    /// certificate must name `localhost`).
    pub async fn spawn_with_tls(
        database: std::sync::Arc<TestDatabase>,
        mut args: ServerArgs,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Self {
        LOGS.get_or_init(|| {
            if std::env::var_os("RUST_LOG").is_some() {
                finmatch::telemetry::init(finmatch::config::LogFormat::Pretty);
            }
        });
        args.listen_addr = "127.0.0.1:0".parse().unwrap();
        let settings = Settings {
            database_url: database.url.clone(),
            db_pool_size: 8,
            db_connect_patience: std::time::Duration::ZERO,
            // The template is migrated already; running them again must be a no-op.
            migrate: true,
            server: args,
        };
        let application = Application::build(settings).await.expect("server builds");
        let addr = application.local_addr();
        let metrics_addr = application.metrics_addr();
        let app = application.app().clone();
        let feed = application.referral_feed().clone();
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(application.run_until(async {
            let _ = stopped.await;
        }));
        let channel = match tls {
            None => Channel::from_shared(format!("http://{addr}")).unwrap(),
            Some(tls) => Channel::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls.domain_name("localhost"))
                .expect("a client TLS configuration"),
        }
        .connect()
        .await
        .expect("connect to the test server");
        let operator = app
            .bootstrap_credential(NewCredential {
                role: Role::Operator,
                lender_id: None,
                label: "test operator".into(),
                expires_at: None,
                certificate_subject: None,
            })
            .await
            .expect("bootstrap an operator")
            .token;
        Self {
            addr,
            metrics_addr,
            app,
            feed,
            channel,
            operator,
            stop: Some(stop),
            server: Some(server),
            database,
        }
    }

    pub fn database_url(&self) -> &str {
        &self.database.url
    }

    /// A new token of `role` (bound to `lender_id` for LENDER).
    pub async fn token(&self, role: Role, lender_id: Option<Uuid>) -> String {
        self.app
            .bootstrap_credential(NewCredential {
                role,
                lender_id,
                label: format!("test {}", role.as_str().to_lowercase()),
                expires_at: None,
                certificate_subject: None,
            })
            .await
            .expect("issue a test credential")
            .token
    }

    /// Stops the server gracefully and waits for it; returns what `run_until` returned.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.server.take() {
            Some(handle) => handle.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// A request carrying `token` as its bearer credential.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("token is ASCII"),
    );
    request
}

/// The field names of a status's `BadRequest` violations, sorted.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    let mut fields: Vec<String> = status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    fields.sort();
    fields
}

/// The `ErrorInfo.reason` of a status, if any.
pub fn error_reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_details_error_info().map(|info| info.reason)
}

/// The existing record an ALREADY_EXISTS names: its `ResourceInfo` (type, id), which must agree
/// with the `ErrorInfo` metadata's `<type>_id`. Panics when the status carries no id.
pub fn existing_resource(status: &tonic::Status) -> (String, String) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    let info = status
        .get_details_resource_info()
        .unwrap_or_else(|| panic!("ALREADY_EXISTS without ResourceInfo: {status:?}"));
    assert!(
        !info.resource_name.is_empty(),
        "ALREADY_EXISTS names no id: {status:?}"
    );
    let metadata = status.get_details_error_info().map(|e| e.metadata);
    assert_eq!(
        metadata.and_then(|m| m.get(&format!("{}_id", info.resource_type)).cloned()),
        Some(info.resource_name.clone()),
        "ErrorInfo metadata disagrees with ResourceInfo"
    );
    (info.resource_type, info.resource_name)
}

/// A valid unified social credit code, different for each `n` (below 10,000,000). The one scheme
/// of the suite: tests that need codes they can name use it; the others [`next_credit_code`].
pub fn credit_code(n: u32) -> String {
    finmatch::domain::credit_code_with_check(&format!("9142130073{n:07}"))
}

/// A credit code no other call in this run returns (from a counter, so a test creating many
/// enterprises never draws one twice), above the `n` tests pass to [`credit_code`].
pub fn next_credit_code() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1_000_000);
    credit_code(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// A lender created through the API by the operator; returns its id.
pub async fn create_lender(app: &TestApp, name: &str) -> Uuid {
    use finmatch::proto as pb;
    let mut client = pb::lender_service_client::LenderServiceClient::new(app.channel.clone());
    let lender = client
        .create_lender(authed(
            pb::CreateLenderRequest {
                lender: Some(pb::Lender {
                    name: name.into(),
                    kind: pb::LenderKind::CityCommercial as i32,
                    region_codes: vec!["421300".into()],
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .expect("create a lender")
        .into_inner()
        .lender
        .unwrap();
    lender.id.parse().unwrap()
}

/// An enterprise in Suizhou (421300), manufacturing (C2720), small.
pub fn enterprise(n: u32) -> finmatch::proto::Enterprise {
    use finmatch::proto as pb;
    pb::Enterprise {
        credit_code: credit_code(n),
        name: format!("Suizhou Medical Supplies No. {n}"),
        region_code: "421303".into(),
        industry_code: "C2720".into(),
        size: pb::EnterpriseSize::Small as i32,
        above_designated_size: true,
        employees: 120,
        annual_revenue_minor: 8_000_000_000,
        contact_name: "Li Wei".into(),
        contact_phone: "+86 722 1234567".into(),
        ..Default::default()
    }
}

/// Rows of the audit log for one RPC, read straight from PostgreSQL.
pub async fn audit_rows(app: &TestApp, rpc: &str) -> Vec<(String, String, String)> {
    let (client, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .query(
            "SELECT principal_role, entity_type, entity_id FROM audit_log WHERE rpc = $1 ORDER BY id",
            &[&rpc],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// Holds an exclusive lock on `needs` until the returned sender is dropped, so any read of it
/// waits.
#[allow(dead_code)] // used by tests/api, not by tests/metrics.rs
pub async fn lock_needs(app: &TestApp) -> tokio::sync::oneshot::Sender<()> {
    let (client, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("BEGIN; LOCK TABLE needs IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = released.await;
        let _ = client.batch_execute("ROLLBACK").await;
    });
    release
}

#[allow(dead_code)] // used by tests/api, not by tests/metrics.rs
/// A `finmatch serve` process on `database_url`, killed (SIGKILL) when dropped.
pub struct ServerProcess {
    child: std::process::Child,
    pub url: String,
}

#[allow(dead_code)]
impl ServerProcess {
    pub async fn start(database_url: &str) -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_finmatch"))
            .args(["serve", "--no-migrate", "--listen", &addr.to_string()])
            .env("FINMATCH_DATABASE_URL", database_url)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start finmatch serve");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "finmatch serve did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Self {
            child,
            url: format!("http://{addr}"),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Opens `token`'s WatchReferrals stream on `app` from `after_cursor`.
#[allow(dead_code)] // used by tests/api, not by tests/metrics.rs
pub async fn watch_referrals(
    app: &TestApp,
    token: &str,
    after_cursor: i64,
) -> tonic::Streaming<finmatch::proto::WatchReferralsResponse> {
    use finmatch::proto as pb;
    pb::partner_service_client::PartnerServiceClient::new(app.channel.clone())
        .watch_referrals(authed(pb::WatchReferralsRequest { after_cursor }, token))
        .await
        .expect("the watch opens")
        .into_inner()
}

/// The tests' usual product of `lender_id`: working capital of 100 fen to ¥10,000,000 on credit,
/// 6 to 36 months, 300 to 600 bps, 1,000 a day, a 48-hour SLA; override what a test varies.
#[allow(dead_code)] // used by tests/api, not by tests/metrics.rs
pub fn working_capital(lender_id: Uuid, name: &str) -> finmatch::proto::Product {
    use finmatch::proto as pb;
    pb::Product {
        lender_id: lender_id.to_string(),
        name: name.into(),
        min_amount_minor: 100,
        max_amount_minor: 1_000_000_000,
        min_term_months: 6,
        max_term_months: 36,
        collateral_accepted: vec![pb::Collateral::Credit as i32],
        min_size: pb::EnterpriseSize::Micro as i32,
        min_rate_bps: 300,
        max_rate_bps: 600,
        daily_capacity: 1000,
        response_sla_hours: 48,
        ..Default::default()
    }
}
