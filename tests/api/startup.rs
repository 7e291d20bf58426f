//! Start-up beside a database that is not ready yet, and the health probe a container asks.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use finmatch::config::{ServerArgs, Settings};
use finmatch::server::Application;
use tokio::process::{Child, Command};

use crate::helpers::{TestApp, TestDatabase, unused_port};

/// `finmatch health` with these arguments.
async fn finmatch_health(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_finmatch"))
        .arg("health")
        .args(args)
        .env_remove("FINMATCH_SERVER")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run finmatch health")
}

/// `finmatch serve` on `port` against `database_url`, waiting for PostgreSQL up to `patience_secs`.
fn serve(database_url: &str, port: u16, patience_secs: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_finmatch"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("FINMATCH_DATABASE_URL", database_url)
        .env(
            "FINMATCH_DB_CONNECT_TIMEOUT_SECS",
            patience_secs.to_string(),
        )
        .env("FINMATCH_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start finmatch serve")
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// The exit status and stderr of `child`, which must end within `within`.
async fn ended(child: Child, within: Duration) -> (Option<i32>, String) {
    let output = tokio::time::timeout(within, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("finmatch serve still runs after {within:?}"))
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_zero_only_while_every_service_serves() {
    let app = TestApp::spawn().await;
    let server = format!("http://{}", app.addr);
    let serving = finmatch_health(&["--server", &server]).await;
    assert_eq!(serving.status.code(), Some(0), "{serving:?}");
    assert_eq!(stdout(&serving).trim(), "SERVING");
    let one = finmatch_health(&[
        "--server",
        &server,
        "--service",
        "finmatch.v1.PartnerService",
    ])
    .await;
    assert_eq!(one.status.code(), Some(0), "{one:?}");

    let nobody = format!("http://127.0.0.1:{}", unused_port());
    let unreachable = finmatch_health(&["--server", &nobody]).await;
    assert_eq!(unreachable.status.code(), Some(1), "{unreachable:?}");
    assert!(
        stderr(&unreachable).contains(&format!("connecting to {nobody}")),
        "{}",
        stderr(&unreachable)
    );
    let unknown = finmatch_health(&["--server", &server, "--service", "no.such.Service"]).await;
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(
        stderr(&unknown).contains("NOT_FOUND"),
        "{}",
        stderr(&unknown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_while_postgres_is_unreachable_and_the_server_still_answers() {
    // Nothing listens on the database port: the server runs, its services do not serve.
    let settings = Settings {
        database_url: format!("postgres://postgres@127.0.0.1:{}/finmatch", unused_port()),
        db_pool_size: 2,
        db_connect_patience: Duration::ZERO,
        migrate: false,
        server: ServerArgs {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            ..ServerArgs::default()
        },
    };
    let application = Application::build(settings).await.unwrap();
    let server = format!("http://{}", application.local_addr());
    let running = tokio::spawn(application.run_until(std::future::pending()));
    // The database watcher's first look is at once; give it a few seconds to report.
    let deadline = Instant::now() + Duration::from_secs(15);
    let not_serving = loop {
        let output = finmatch_health(&["--server", &server]).await;
        if output.status.code() != Some(0) || Instant::now() > deadline {
            break output;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(not_serving.status.code(), Some(1), "{not_serving:?}");
    let said = stderr(&not_serving);
    assert!(
        said.contains("the server is NOT_SERVING")
            && said.contains("finmatch.v1.FinancingService is NOT_SERVING"),
        "{said}"
    );
    // What probes ask alone says the same; the server answered, so it is not a connection error.
    let whole = finmatch_health(&["--server", &server, "--service", ""]).await;
    assert_eq!(whole.status.code(), Some(1), "{whole:?}");
    assert!(
        stderr(&whole).contains("the server is NOT_SERVING"),
        "{}",
        stderr(&whole)
    );
    running.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_for_a_database_created_after_it_starts_then_serves() {
    let database = TestDatabase::not_created_yet().await;
    let port = unused_port();
    let server = format!("http://127.0.0.1:{port}");
    let mut child = serve(&database.url, port, 60);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "serve must wait for the database, not exit"
    );
    let early = finmatch_health(&["--server", &server]).await;
    assert_eq!(
        early.status.code(),
        Some(1),
        "not serving before it has a database"
    );

    database.create_now().await;
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let output = finmatch_health(&["--server", &server]).await;
        if output.status.code() == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving 45 s after the database was created: {output:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sigterm(&child);
    let (code, logs) = ended(child, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        logs.contains("PostgreSQL is not ready; trying again") && logs.contains("does not exist"),
        "each wait is logged with its reason: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_fails_at_once_for_a_role_postgres_does_not_know() {
    let database = TestDatabase::create().await;
    let url = database.url.replacen("://postgres@", "://no_such_role@", 1);
    assert_ne!(url, database.url, "the test URL names the postgres role");
    let started = Instant::now();
    let (code, logs) = ended(serve(&url, unused_port(), 60), Duration::from_secs(20)).await;
    assert_eq!(code, Some(1), "{logs}");
    assert!(
        logs.contains("role \"no_such_role\" does not exist"),
        "the error names the role: {logs}"
    );
    assert!(
        !logs.contains("trying again"),
        "a refused role is not retried: {logs}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_gives_up_after_its_patience_when_postgres_never_answers() {
    let url = format!("postgres://postgres@127.0.0.1:{}/finmatch", unused_port());
    let started = Instant::now();
    let (code, logs) = ended(serve(&url, unused_port(), 2), Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "{logs}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited its patience out"
    );
    assert!(
        logs.contains("PostgreSQL was not ready within 2 s"),
        "the error says what ran out and its setting: {logs}"
    );
    assert!(logs.contains("trying again"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_postgres_exits_zero_at_once() {
    let url = format!("postgres://postgres@127.0.0.1:{}/finmatch", unused_port());
    let child = serve(&url, unused_port(), 600);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sigterm(&child);
    let (code, logs) = ended(child, Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "{logs}");
}
