//! PostgreSQL going away under a running server, caused for real: a private cluster stopped and
//! started again, and a connection that stops answering without closing (a TCP proxy between
//! finmatch and PostgreSQL that stops forwarding, as a failover or a dropped route looks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use finmatch::domain::Role;
use finmatch::proto as pb;
use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::cluster::PrivateCluster;
use crate::helpers::{TestApp, TestDatabase, authed, create_lender, watch_referrals};

/// Forwards TCP to `upstream` until frozen: then it reads and forwards nothing (and new
/// connections get no answer) while every socket stays open, until resumed.
struct Proxy {
    port: u16,
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, _) = watch::channel(false);
        let gate = frozen.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut gate = gate.clone();
                tokio::spawn(async move {
                    if gate.wait_for(|f| !*f).await.is_err() {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (from_client, to_client) = client.into_split();
                    let (from_server, to_server) = server.into_split();
                    tokio::join!(
                        pump(from_client, to_server, gate.clone()),
                        pump(from_server, to_client, gate)
                    );
                });
            }
        });
        Self { port, frozen, task }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    fn resume(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding still (reading nothing) while frozen.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut gate: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if gate.wait_for(|f| !*f).await.is_err() {
            return;
        }
        tokio::select! {
            read = from.read(&mut buffer) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if gate.wait_for(|f| !*f).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
            _ = gate.changed() => {}
        }
    }
}

/// The `host:port` of a `postgres://user@host:port/db` URL.
fn address_of(url: &str) -> String {
    let after_at = url.split_once('@').map_or(url, |(_, rest)| rest);
    after_at.split('/').next().unwrap().to_owned()
}

async fn health(channel: &Channel) -> i32 {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health answers: the process is up")
        .into_inner()
        .status
}

/// Polls the overall health entry until it is `wanted`, for at most `within`.
async fn health_becomes(channel: &Channel, wanted: ServingStatus, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if health(channel).await == wanted as i32 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "health not {wanted:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_enterprise(
    app: &TestApp,
    n: u32,
) -> Result<tonic::Response<pb::CreateEnterpriseResponse>, tonic::Status> {
    EnterpriseServiceClient::new(app.channel.clone())
        .create_enterprise(authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(crate::helpers::enterprise(n)),
            },
            &app.operator,
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_postgresql_fails_calls_fast_as_unavailable_and_everything_recovers_when_it_returns()
 {
    let pg = PrivateCluster::start();
    let database = TestDatabase::create_on(&pg.server("localhost", "")).await;
    let app = TestApp::spawn_with(Arc::new(database), Default::default()).await;
    create_enterprise(&app, 1).await.expect("a write while up");

    pg.stop();
    // Calls fail fast, with UNAVAILABLE (retry later), and the process stays up.
    for n in 2..4 {
        let started = Instant::now();
        let status = create_enterprise(&app, n).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "failed after {:?}",
            started.elapsed()
        );
    }
    health_becomes(
        &app.channel,
        ServingStatus::NotServing,
        Duration::from_secs(10),
    )
    .await;

    pg.start_again();
    health_becomes(
        &app.channel,
        ServingStatus::Serving,
        Duration::from_secs(15),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match create_enterprise(&app, 5).await {
            Ok(_) => break,
            Err(status) => assert!(
                status.code() == Code::Unavailable && Instant::now() < deadline,
                "no recovery: {status:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_answering_is_noticed_in_seconds_and_no_heartbeat_hides_it() {
    let database = TestDatabase::create().await;
    let upstream = address_of(&database.url);
    let proxy = Proxy::start(upstream.parse().expect("an IP address and port")).await;
    let proxied = database
        .url
        .replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
    let app = TestApp::spawn_with(Arc::new(database.reached_at(proxied)), Default::default()).await;
    let lender = create_lender(&app, "Yingcheng Rural Bank").await;
    let token = app.token(Role::Lender, Some(lender)).await;
    let mut watch = watch_referrals(&app, &token, 0).await;
    // Its first heartbeat: the stream has caught up and now waits on the live feed alone, as a
    // quiet bank's stream does most of the time.
    let first = tokio::time::timeout(Duration::from_secs(25), watch.message())
        .await
        .expect("a heartbeat while the database answers")
        .expect("no error");
    assert!(first.is_some());

    proxy.freeze();
    let took = health_becomes(
        &app.channel,
        ServingStatus::NotServing,
        Duration::from_secs(12),
    )
    .await;
    eprintln!("NOT_SERVING {took:?} after the connection stopped answering");
    // The watch gets no heartbeat from a feed that cannot read: it ends, and the bank
    // reconnects (to another replica) and resumes from its cursor.
    let ended = tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("the watch ends within a heartbeat period and the feed's step timeout");
    match ended {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(message) => panic!("a silent feed sent {message:?}"),
    }

    proxy.resume();
    health_becomes(
        &app.channel,
        ServingStatus::Serving,
        Duration::from_secs(15),
    )
    .await;
    create_enterprise(&app, 1)
        .await
        .expect("a write once the route is back");
    let mut again = watch_referrals(&app, &token, 0).await;
    let first = tokio::time::timeout(Duration::from_secs(25), again.message())
        .await
        .expect("a heartbeat from the live feed")
        .expect("no error");
    assert!(first.is_some());
    app.shutdown().await.unwrap();
}
