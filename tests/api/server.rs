//! The server as an operator and a browser meet it: health, reflection, gRPC-Web, shutdown.

use std::io::{Read, Write};
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::helpers::{TestApp, TestDatabase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_serving_without_a_token() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in [
        "",
        "finmatch.v1.EnterpriseService",
        "finmatch.v1.PartnerService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health of {service:?}: {s}"));
        assert_eq!(
            response.into_inner().status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_gets_a_request_id_echoed_on_the_response() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel.clone());
    let check = async |health: &mut HealthClient<_>, sent: Option<String>| {
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        if let Some(sent) = sent {
            request
                .metadata_mut()
                .insert("x-request-id", sent.parse().unwrap());
        }
        let response = health.check(request).await.unwrap();
        response
            .metadata()
            .get("x-request-id")
            .expect("every response names its request id")
            .to_str()
            .unwrap()
            .to_owned()
    };
    // The caller's own id is kept, so its logs and ours can be joined.
    assert_eq!(
        check(&mut health, Some("bank-7f3a-0001".into())).await,
        "bank-7f3a-0001"
    );
    // Without one, or with one too long to log, the server gives the call a new UUID.
    let given = check(&mut health, None).await;
    let again = check(&mut health, None).await;
    assert!(uuid::Uuid::parse_str(&given).is_ok(), "{given}");
    assert_ne!(given, again, "each call its own id");
    let long = check(&mut health, Some("x".repeat(129))).await;
    assert!(uuid::Uuid::parse_str(&long).is_ok(), "{long}");
    assert_eq!(
        check(&mut health, Some("y".repeat(128))).await,
        "y".repeat(128)
    );
}

async fn reflect(app: &TestApp, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let outbound = tokio_stream::iter(vec![ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    }]);
    let mut inbound = client
        .server_reflection_info(outbound)
        .await
        .expect("reflection needs no token")
        .into_inner();
    inbound
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service_and_describes_messages() {
    let app = TestApp::spawn().await;
    let MessageResponse::ListServicesResponse(list) =
        reflect(&app, MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "finmatch.v1.EnterpriseService",
            "finmatch.v1.FinancingService",
            "finmatch.v1.LenderService",
            "finmatch.v1.PartnerService",
            "finmatch.v1.ReportingService",
            "finmatch.v1.SpecialLoanService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
    );
    let MessageResponse::FileDescriptorResponse(files) = reflect(
        &app,
        MessageRequest::FileContainingSymbol("finmatch.v1.Enterprise".into()),
    )
    .await
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// Sends one HTTP/1.1 request and returns the whole response as text (lossy).
fn http1(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_grpc_web_post_to_health_answers() {
    let app = TestApp::spawn().await;
    let addr = app.addr;
    let response = tokio::task::spawn_blocking(move || {
        let mut request = format!(
            "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
             Origin: http://portal.example\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        // One uncompressed, empty message: an empty HealthCheckRequest.
        request.extend_from_slice(&[0, 0, 0, 0, 0]);
        http1(addr, &request)
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_lowercase()
            .contains("content-type: application/grpc-web"),
        "{response}"
    );
    assert!(
        response
            .to_lowercase()
            .contains("access-control-allow-origin"),
        "{response}"
    );
    assert!(
        response.contains("grpc-status:0"),
        "trailers in the body: {response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_allows_grpc_web_headers() {
    let app = TestApp::spawn().await;
    let addr = app.addr;
    let response = tokio::task::spawn_blocking(move || {
        let request = format!(
            "OPTIONS /finmatch.v1.EnterpriseService/ListEnterprises HTTP/1.1\r\nHost: {addr}\r\n\
             Origin: http://portal.example\r\nAccess-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: authorization,content-type,x-grpc-web\r\n\
             Connection: close\r\n\r\n"
        );
        http1(addr, request.as_bytes())
    })
    .await
    .unwrap();
    let lower = response.to_lowercase();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        lower.contains("access-control-allow-origin: *"),
        "{response}"
    );
    assert!(lower.contains("access-control-allow-headers"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_returns_ok_and_stops_serving() {
    let app = TestApp::spawn().await;
    let addr = app.addr;
    app.shutdown().await.expect("a clean shutdown");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port is closed after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_zero_on_sigterm() {
    let database = TestDatabase::create().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_finmatch"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("FINMATCH_DATABASE_URL", &database.url)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start finmatch serve");
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "finmatch serve did not start listening");
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within 20 s of SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mib_request_is_refused_resource_exhausted_naming_the_limit_and_stores_nothing() {
    use finmatch::proto as pb;
    use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;

    let app = TestApp::spawn().await;
    let mut client =
        EnterpriseServiceClient::new(app.channel.clone()).max_encoding_message_size(usize::MAX);
    let mut huge = crate::helpers::enterprise(1);
    huge.name = "x".repeat(5 * 1024 * 1024);
    let refused = client
        .create_enterprise(crate::helpers::authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(huge),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    for part in ["the limit is: 4194304 bytes", "FINMATCH_MAX_MESSAGE_BYTES"] {
        assert!(refused.message().contains(part), "{refused:?}");
    }

    // The same connection carries on, and the refused call stored nothing.
    let listed = client
        .list_enterprises(crate::helpers::authed(
            pb::ListEnterprisesRequest::default(),
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.enterprises.is_empty(), "{listed:?}");
    client
        .create_enterprise(crate::helpers::authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(crate::helpers::enterprise(1)),
            },
            &app.operator,
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_postgres_calls_are_unavailable_and_the_server_stays_up() {
    use finmatch::config::{ServerArgs, Settings};
    use finmatch::proto as pb;
    use finmatch::server::Application;

    // Nothing listens on port 1: the pool cannot connect.
    let settings = Settings {
        database_url: "postgres://postgres@127.0.0.1:1/finmatch".into(),
        db_pool_size: 2,
        db_connect_patience: std::time::Duration::ZERO,
        migrate: false,
        server: ServerArgs {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            ..ServerArgs::default()
        },
    };
    let application = Application::build(settings)
        .await
        .expect("starts without a database");
    let addr = application.local_addr();
    let server = tokio::spawn(application.run_until(std::future::pending()));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::enterprise_service_client::EnterpriseServiceClient::new(channel.clone());
    for _ in 0..2 {
        let status = client
            .list_enterprises(crate::helpers::authed(
                pb::ListEnterprisesRequest::default(),
                "fmk_any",
            ))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{}",
            status.message()
        );
        assert!(
            !status.message().contains("postgres://"),
            "no internals: {}",
            status.message()
        );
    }
    // The server as a whole (`""`, what probes ask) turns NOT_SERVING once the database watcher
    // has looked (at once, then every 5 s), and health keeps answering: the process stays up.
    let mut health = HealthClient::new(channel);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(HealthCheckRequest::default())
            .await
            .expect("health still answers")
            .into_inner()
            .status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        assert_eq!(status, ServingStatus::Serving as i32);
        assert!(
            std::time::Instant::now() < deadline,
            "\"\" still SERVING 10 s without a database"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.abort();
}

/// A ListNeeds call in its own task: held while the test keeps needs locked
/// ([`crate::helpers::lock_needs`]).
fn list_needs_in_flight(
    channel: &tonic::transport::Channel,
    operator: &str,
) -> tokio::task::JoinHandle<
    Result<tonic::Response<finmatch::proto::ListNeedsResponse>, tonic::Status>,
> {
    use finmatch::proto::financing_service_client::FinancingServiceClient;
    let (channel, operator) = (channel.clone(), operator.to_owned());
    tokio::spawn(async move {
        FinancingServiceClient::new(channel)
            .list_needs(crate::helpers::authed(
                finmatch::proto::ListNeedsRequest::default(),
                &operator,
            ))
            .await
    })
}

/// SIGTERM's order, in process: health says NOT_SERVING while the server still answers (the
/// notice), then new calls are refused, watch streams end UNAVAILABLE so banks reconnect
/// elsewhere, and a call already in flight still completes; the server returns within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_not_serving_first_ends_watches_unavailable_and_lets_calls_in_flight_finish()
{
    let app = TestApp::spawn_configured(finmatch::config::ServerArgs {
        shutdown_notice_secs: 1,
        shutdown_grace_secs: 5,
        ..Default::default()
    })
    .await;
    let (channel, operator) = (app.channel.clone(), app.operator.clone());
    let lender = crate::helpers::create_lender(&app, "Xiaogan Rural Bank").await;
    let token = app
        .token(finmatch::domain::Role::Lender, Some(lender))
        .await;
    let mut watch = crate::helpers::watch_referrals(&app, &token, 0).await;

    // A call held in flight: it reads needs, which the test keeps locked.
    let release = crate::helpers::lock_needs(&app).await;
    let in_flight = list_needs_in_flight(&channel, &operator);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!in_flight.is_finished(), "the call is held by the lock");

    let started = std::time::Instant::now();
    let stopping = tokio::spawn(app.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("the server still answers during the notice")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);

    // After the notice the watch ends UNAVAILABLE; the held call is still being waited for.
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the watch ends within the notice and a moment");
    let ended = ended.expect_err("the watch ends with a status, not a clean end");
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(!in_flight.is_finished(), "the held call is still in flight");
    assert!(
        !stopping.is_finished(),
        "the server waits for the held call"
    );
    drop(release);
    let answered = in_flight.await.unwrap();
    assert!(
        answered.is_ok(),
        "the call in flight completes: {answered:?}"
    );
    stopping.await.unwrap().expect("a clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// A call that outlasts the grace does not hold the server: it stops after the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_after_the_grace_even_with_a_call_still_in_flight() {
    let app = TestApp::spawn_configured(finmatch::config::ServerArgs {
        shutdown_notice_secs: 0,
        shutdown_grace_secs: 1,
        ..Default::default()
    })
    .await;
    let release = crate::helpers::lock_needs(&app).await;
    let in_flight = list_needs_in_flight(&app.channel, &app.operator);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    app.shutdown().await.expect("a clean stop");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "stopped after {took:?}, not after the 1 s grace"
    );
    let cut = in_flight.await.unwrap();
    assert!(cut.is_err(), "the held call did not complete: {cut:?}");
    drop(release);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_at_the_root_beside_grpc() {
    let app = TestApp::spawn().await;
    let addr = app.addr;
    let get = move |path: &str, extra: &str| {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
        tokio::task::spawn_blocking(move || http1(addr, request.as_bytes()))
    };
    let index = get("/", "").await.unwrap();
    let lower = index.to_lowercase();
    assert!(index.starts_with("HTTP/1.1 200"), "{index}");
    assert!(lower.contains("content-type: text/html"), "{index}");
    assert!(
        lower.contains("content-security-policy: default-src 'self'"),
        "{index}"
    );
    assert!(lower.contains("x-content-type-options: nosniff"), "{index}");
    assert!(index.contains("<div id=\"app\">"), "{index}");

    // The script index.html loads, by the content-hashed name Vite gave it.
    let script = index
        .split("src=\"./")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("index.html loads a script")
        .to_owned();
    let asset = get(&format!("/{script}"), "").await.unwrap();
    assert!(asset.starts_with("HTTP/1.1 200"), "{}", &asset[..200]);
    let asset_head = asset.split("\r\n\r\n").next().unwrap().to_lowercase();
    assert!(
        asset_head.contains("content-type: text/javascript"),
        "{asset_head}"
    );
    assert!(asset_head.contains("immutable"), "{asset_head}");
    let etag = asset_head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("an ETag")
        .to_owned();
    let again = get(&format!("/{script}"), &format!("If-None-Match: {etag}\r\n"))
        .await
        .unwrap();
    assert!(again.starts_with("HTTP/1.1 304"), "{again}");

    let missing = get("/no-such-file.js", "").await.unwrap();
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let outside = get("/../Cargo.toml", "").await.unwrap();
    assert!(!outside.starts_with("HTTP/1.1 200"), "{outside}");

    // gRPC on the same port is unchanged.
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("gRPC health answers beside the console")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
