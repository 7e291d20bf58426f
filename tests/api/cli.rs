//! The command line as an operator bootstraps with it.

use finmatch::proto as pb;
use finmatch::proto::lender_service_client::LenderServiceClient;

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

/// One `finmatch dev` start with `RUST_LOG` unset and stderr a pipe, stopped once it has printed
/// its banner: (the address it served on, its operator token, the banner, the stderr lines).
async fn dev_start(database_url: &str) -> (String, String, String, Vec<String>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_finmatch"))
        .args([
            "dev",
            "--database-url",
            database_url,
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .env_remove("FINMATCH_LOG_FORMAT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start finmatch dev");
    let mut stderr = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.unwrap();
        text
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("PartnerService/ListReferrals") {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(240), read)
        .await
        .expect("dev prints its banner");
    let addr = banner
        .split_whitespace()
        .skip_while(|w| *w != "on")
        .nth(1)
        .expect("the banner names the address")
        .to_owned();
    let token = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("export TOKEN="))
        .expect("the banner exports TOKEN")
        .to_owned();
    child.kill().await.unwrap();
    let errors = errors.await.unwrap().lines().map(str::to_owned).collect();
    (addr, token, banner, errors)
}

/// `finmatch dev` started twice on one database: the second start revokes the tokens the first
/// printed and says so; the banner's figures are the database's; stderr, a pipe here, carries no
/// colour codes and not the hundreds of use-case lines the demo round makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_rotates_its_tokens_and_keeps_its_logs_short_and_plain() {
    let database = crate::helpers::TestDatabase::create().await;
    let (_, first_token, first_banner, first_log) = dev_start(&database.url).await;
    assert!(
        first_banner.contains("New tokens for this start:"),
        "{first_banner}"
    );
    let (_, second_token, second_banner, second_log) = dev_start(&database.url).await;
    assert!(
        second_banner.contains("(the 10 of the previous start are revoked)"),
        "{second_banner}"
    );
    assert!(
        second_log
            .iter()
            .any(|l| l.contains("revoked the tokens of the previous `finmatch dev` start")),
        "{second_log:#?}"
    );

    let (client, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let enterprises: i64 = client
        .query_one("SELECT count(*) FROM enterprises", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        second_banner.contains(&format!("{enterprises} enterprise(s)")),
        "{second_banner}"
    );
    let active: i64 = client
        .query_one(
            "SELECT count(*) FROM credentials WHERE revoked_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(active, 10, "only the last start's ten tokens are valid");

    for log in [&first_log, &second_log] {
        assert!(!log.iter().any(|l| l.contains('\u{1b}')), "{log:#?}");
        assert!(
            !log.iter()
                .any(|l| l.contains("need submitted") || l.contains("enterprise registered")),
            "{log:#?}"
        );
        assert!(log.len() < 40, "{} lines: {log:#?}", log.len());
    }
    assert!(
        first_log
            .iter()
            .any(|l| l.contains("demo: banks, products")),
        "{first_log:#?}"
    );

    // Both starts are stopped; a server on the same database refuses the first start's token
    // and takes the second's.
    let app = TestApp::spawn_with(
        std::sync::Arc::new(database),
        finmatch::config::ServerArgs::default(),
    )
    .await;
    let mut lenders = LenderServiceClient::new(app.channel.clone());
    let refused = lenders
        .list_lenders(authed(pb::ListLendersRequest::default(), &first_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    lenders
        .list_lenders(authed(pb::ListLendersRequest::default(), &second_token))
        .await
        .expect("the second start's token works");
}
