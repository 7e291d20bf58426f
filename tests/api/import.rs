//! `finmatch import` against a real server: the enterprises of unknown credit codes are
//! registered from their first row, once, however often the file is imported.

use finmatch::proto as pb;
use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;

use crate::helpers::{ServerProcess, TestApp, authed};

async fn registered(app: &TestApp) -> Vec<(String, String, String)> {
    let mut client = EnterpriseServiceClient::new(app.channel.clone());
    let mut found: Vec<(String, String, String)> = client
        .list_enterprises(authed(
            pb::ListEnterprisesRequest {
                page_size: 100,
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .enterprises
        .into_iter()
        .map(|e| (e.credit_code, e.region_code, e.industry_code))
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_registers_each_unknown_credit_code_once_from_its_first_row() {
    let app = TestApp::spawn().await;
    let dir = std::env::temp_dir().join(format!("finmatch-import-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("needs.csv");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/needs-sample.csv"),
        &file,
    )
    .unwrap();
    let server = format!("http://{}", app.addr);

    let first = finmatch::import::run(&file, &server, &app.operator)
        .await
        .expect("the first import runs");
    assert_eq!(first.rows, 6);
    assert_eq!((first.accepted, first.replayed), (6, 0));
    assert!(first.rejected.is_empty(), "{:?}", first.rejected);
    let second = finmatch::import::run(&file, &server, &app.operator)
        .await
        .expect("the second import runs");
    assert_eq!(
        (second.accepted, second.replayed, second.earlier),
        (0, 0, 6),
        "a repeat adds nothing: the report marks every row stored"
    );
    std::fs::remove_file(finmatch::import::report_path(&file)).unwrap();
    let third = finmatch::import::run(&file, &server, &app.operator)
        .await
        .expect("the third import runs");
    assert_eq!(
        (third.accepted, third.replayed, third.earlier),
        (0, 6, 0),
        "without the report every row is sent again, and replayed"
    );
    assert_eq!(needs_stored(&app).await, 6);

    // Six rows, five distinct credit codes (rows 2 and 6 share one).
    assert_eq!(
        registered(&app).await,
        vec![
            ("91421300MA4900001Q".into(), "421303".into(), "C2770".into()),
            ("91421300MA4900002U".into(), "421381".into(), "C3663".into()),
            ("91421300MA4900003Y".into(), "421381".into(), "C3415".into()),
            ("91421300MA49000042".into(), "421303".into(), "C1371".into()),
            ("91421300MA49000055".into(), "421302".into(), "C3451".into()),
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn needs_stored(app: &TestApp) -> usize {
    let mut client = pb::financing_service_client::FinancingServiceClient::new(app.channel.clone());
    client
        .list_needs(authed(
            pb::ListNeedsRequest {
                page_size: 1000,
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .needs
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_51_rows_with_one_bad_adds_50_reports_the_bad_row_and_a_rerun_adds_nothing() {
    let app = TestApp::spawn().await;
    let dir = std::env::temp_dir().join(format!("finmatch-import-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("needs.csv");
    let mut csv = String::from(
        "credit_code,enterprise_name,region_code,industry_code,size,amount_yuan,term_months,\
         purpose,collateral,max_rate_bps,needed_by,consent\n",
    );
    for n in 0..51u32 {
        // Row 31 (the 30th data row) asks for a zero amount.
        let amount = if n == 29 { "0" } else { "2500000" };
        csv.push_str(&format!(
            "{},Suizhou Works No. {n},421303,C2770,small,{amount},12,working_capital,credit,,2027-06-30,yes\n",
            crate::helpers::credit_code(5000 + n)
        ));
    }
    std::fs::write(&file, csv).unwrap();
    let server = format!("http://{}", app.addr);

    let first = finmatch::import::run(&file, &server, &app.operator)
        .await
        .unwrap();
    assert_eq!(first.rows, 51);
    assert_eq!(first.accepted, 50);
    assert_eq!(first.rejected.len(), 1, "{:?}", first.rejected);
    assert_eq!(first.rejected[0].row, 31, "spreadsheet row of the bad line");
    assert_eq!(first.rejected[0].code, "INVALID_ARGUMENT");
    assert!(
        first.rejected[0].message.contains("amount_minor"),
        "{:?}",
        first.rejected[0]
    );
    let report = std::fs::read_to_string(dir.join("needs.csv.import-report.csv"))
        .expect("the report is written beside the input");
    // One line per row in row order: row 31 rejected with its code, every other accepted with
    // its need.
    let lines: Vec<csv::StringRecord> = csv::Reader::from_reader(report.as_bytes())
        .records()
        .map(Result::unwrap)
        .collect();
    assert_eq!(lines.len(), 51, "{report}");
    for (i, line) in lines.iter().enumerate() {
        let row = (i + 2).to_string();
        assert_eq!(&line[0], row, "{report}");
        if row == "31" {
            assert_eq!(
                (&line[2], &line[5]),
                ("rejected", "INVALID_ARGUMENT"),
                "{report}"
            );
        } else {
            assert_eq!(&line[2], "accepted", "{report}");
            assert!(
                !line[4].is_empty(),
                "an accepted row names its need: {report}"
            );
        }
    }

    let second = finmatch::import::run(&file, &server, &app.operator)
        .await
        .unwrap();
    assert_eq!(
        (second.accepted, second.replayed, second.earlier),
        (0, 0, 50)
    );
    assert_eq!(second.rejected.len(), 1, "the rejected row is sent again");
    assert_eq!(needs_stored(&app).await, 50);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_with_a_bad_token_fails_before_registering_anything() {
    let app = TestApp::spawn().await;
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/needs-sample.csv");
    let error = finmatch::import::run(&file, &format!("http://{}", app.addr), "not-a-token")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("UNAUTHENTICATED"), "{error}");
    assert!(registered(&app).await.is_empty());
}

const HEADER: &str = "credit_code,enterprise_name,region_code,industry_code,size,amount_yuan,\
                      term_months,purpose,collateral,max_rate_bps,needed_by,consent\n";
const PURPOSES: [&str; 7] = [
    "working_capital",
    "payroll",
    "raw_materials",
    "equipment",
    "expansion",
    "conversion",
    "refinancing",
];

/// A CSV of `enterprises` × 7 rows (one need per purpose each), enterprises numbered from
/// `first`; `amount_yuan` for every row.
fn needs_csv(first: u32, enterprises: u32, amount_yuan: &str) -> String {
    let mut csv = String::from(HEADER);
    for n in first..first + enterprises {
        for purpose in PURPOSES {
            csv.push_str(&format!(
                "{},Suizhou Works No. {n},421303,C2770,small,{amount_yuan},12,{purpose},credit,,\
                 2027-06-30,yes\n",
                crate::helpers::credit_code(n)
            ));
        }
    }
    csv
}

/// A scratch directory holding `csv` as needs.csv; returns the file.
fn scratch_file(csv: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("finmatch-import-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("needs.csv");
    std::fs::write(&file, csv).unwrap();
    file
}

/// Counts in PostgreSQL: (needs, distinct enterprise and purpose pairs).
async fn needs_in_sql(database_url: &str) -> (i64, i64) {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT (enterprise_id, purpose)) FROM needs",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The report's lines as (row, outcome, code) triples.
fn report_lines(file: &std::path::Path) -> Vec<(u64, String, String)> {
    let mut csv = csv::Reader::from_path(finmatch::import::report_path(file)).unwrap();
    assert_eq!(
        csv.headers().unwrap().iter().collect::<Vec<_>>(),
        finmatch::import::REPORT_COLUMNS
    );
    let header = csv.headers().unwrap().clone();
    let at = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (row, outcome, code) = (at("row"), at("outcome"), at("code"));
    csv.records()
        .map(|r| {
            let r = r.unwrap();
            (
                r[row].parse().unwrap(),
                r[outcome].to_owned(),
                r[code].to_owned(),
            )
        })
        .collect()
}

/// Registers enterprise `n` and returns its id.
async fn registered_enterprise(app: &TestApp, n: u32) -> String {
    let mut client = EnterpriseServiceClient::new(app.channel.clone());
    client
        .create_enterprise(authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(crate::helpers::enterprise(n)),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .enterprise
        .unwrap()
        .id
}

fn import_item(
    key: String,
    enterprise_id: &str,
    purpose: pb::Purpose,
    amount_minor: i64,
) -> pb::ImportNeedsRequest {
    pb::ImportNeedsRequest {
        idempotency_key: key,
        need: Some(pb::Need {
            enterprise_id: enterprise_id.to_owned(),
            amount_minor,
            term_months: 12,
            purpose: purpose as i32,
            collateral: vec![pb::Collateral::Credit as i32],
            needed_by: "2027-06-30".into(),
            consent_to_share: true,
            channel: pb::Channel::Bureau as i32,
            ..Default::default()
        }),
    }
}

async fn spawn_with(args: finmatch::config::ServerArgs) -> TestApp {
    TestApp::spawn_configured(args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_stream_longer_than_the_call_timeout_completes() {
    let app = spawn_with(finmatch::config::ServerArgs {
        call_timeout_secs: 1,
        stream_idle_secs: 2,
        ..Default::default()
    })
    .await;
    let mut items = Vec::new();
    for n in 0..12u32 {
        let enterprise_id = registered_enterprise(&app, 7000 + n).await;
        items.push(import_item(
            format!("slow-{n}"),
            &enterprise_id,
            pb::Purpose::WorkingCapital,
            250_000_000,
        ));
    }
    // Twelve items 250 ms apart: three seconds, three times the call timeout, never idle for
    // long.
    let slowly = futures::StreamExt::then(tokio_stream::iter(items), |item| async {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        item
    });
    let started = std::time::Instant::now();
    let mut client = pb::financing_service_client::FinancingServiceClient::new(app.channel.clone());
    let response = client
        .import_needs(authed(slowly, &app.operator))
        .await
        .expect("an import that keeps sending is not cut off")
        .into_inner();
    assert!(started.elapsed() > std::time::Duration::from_secs(2));
    assert_eq!(
        (
            response.accepted,
            response.replayed,
            response.rejected_total
        ),
        (12, 0, 0)
    );
    assert_eq!(needs_in_sql(app.database_url()).await, (12, 12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_import_stream_is_ended_with_deadline_exceeded_naming_the_setting() {
    let app = spawn_with(finmatch::config::ServerArgs {
        stream_idle_secs: 1,
        ..Default::default()
    })
    .await;
    let enterprise_id = registered_enterprise(&app, 7100).await;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender
        .send(import_item(
            "idle-0".into(),
            &enterprise_id,
            pb::Purpose::Payroll,
            250_000_000,
        ))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut client = pb::financing_service_client::FinancingServiceClient::new(app.channel.clone());
    // The sender stays open and silent.
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        client.import_needs(authed(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
            &app.operator,
        )),
    )
    .await
    .expect("the server ends an idle stream")
    .unwrap_err();
    drop(sender);
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("FINMATCH_STREAM_IDLE_SECS"),
        "{status:?}"
    );
    assert!(
        status.message().contains("after 1 item(s): 0 stored"),
        "{status:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(needs_in_sql(app.database_url()).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_response_lists_the_first_1000_rejections_and_counts_the_rest() {
    let app = TestApp::spawn().await;
    let enterprise_id = registered_enterprise(&app, 7200).await;
    // 1,200 items with a zero amount, then 5 good ones.
    let mut items: Vec<_> = (0..1200)
        .map(|n| import_item(format!("bad-{n}"), &enterprise_id, pb::Purpose::Payroll, 0))
        .collect();
    for (n, purpose) in [
        pb::Purpose::WorkingCapital,
        pb::Purpose::Payroll,
        pb::Purpose::RawMaterials,
        pb::Purpose::Equipment,
        pb::Purpose::Expansion,
    ]
    .into_iter()
    .enumerate()
    {
        items.push(import_item(
            format!("good-{n}"),
            &enterprise_id,
            purpose,
            250_000_000,
        ));
    }
    let mut client = pb::financing_service_client::FinancingServiceClient::new(app.channel.clone());
    let response = client
        .import_needs(authed(tokio_stream::iter(items), &app.operator))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.accepted, 5);
    assert_eq!(response.rejected_total, 1200);
    assert_eq!(
        response.accepted + response.replayed + response.rejected_total,
        1205,
        "every item sent is counted once"
    );
    assert_eq!(
        response.rejected.len(),
        1000,
        "only the first 1,000 are listed"
    );
    let indexes: Vec<i64> = response.rejected.iter().map(|r| r.index).collect();
    assert_eq!(indexes, (0..1000).collect::<Vec<i64>>(), "in stream order");
    let first = response.rejected[0].error.as_ref().unwrap();
    assert_eq!(first.code, tonic::Code::InvalidArgument as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_more_bad_rows_than_a_response_lists_reports_every_row() {
    let app = TestApp::spawn().await;
    // 150 enterprises × 7 purposes = 1,050 rows, every one with a zero amount.
    let file = scratch_file(&needs_csv(7300, 150, "0"));
    let report = finmatch::import::run(&file, &format!("http://{}", app.addr), &app.operator)
        .await
        .unwrap();
    assert_eq!(report.rows, 1050);
    assert_eq!((report.accepted, report.replayed), (0, 0));
    assert_eq!(report.rejected.len(), 1050);
    assert!(report.rejected.iter().all(|r| r.code == "INVALID_ARGUMENT"
        && r.message.contains("amount_minor")
        && !r.credit_code.is_empty()));
    let lines = report_lines(&file);
    assert_eq!(lines.len(), 1050);
    assert!(
        lines
            .iter()
            .all(|(_, outcome, code)| outcome == "rejected" && code == "INVALID_ARGUMENT")
    );
    assert_eq!(
        lines.last().unwrap().0,
        1051,
        "spreadsheet row of the last line"
    );
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_cut_by_a_killed_server_resumes_on_another_without_losing_or_duplicating_a_need()
{
    let app = TestApp::spawn().await;
    // 100 enterprises × 7 purposes = 700 rows, all good.
    let file = scratch_file(&needs_csv(7500, 100, "2500000"));
    let mut doomed = ServerProcess::start(app.database_url()).await;
    let options = finmatch::import::Options {
        chunk_items: 50,
        retries: 2,
        first_backoff: std::time::Duration::from_millis(100),
        ..Default::default()
    };
    let first = {
        let (file, url, token, options) = (
            file.clone(),
            doomed.url.clone(),
            app.operator.clone(),
            options.clone(),
        );
        tokio::spawn(async move {
            finmatch::import::run_with(&file, &url, &token, &options, std::future::pending()).await
        })
    };
    // kill -9 the server once part of the file is stored: at least 300 needs, so that with
    // three calls of 50 in flight the report has seen at least 150 of them stored.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while needs_in_sql(app.database_url()).await.0 < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "the import made no progress"
        );
        assert!(
            !first.is_finished(),
            "the import ended before the server was killed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    doomed.kill();
    let error = first
        .await
        .unwrap()
        .expect_err("an import whose server died fails")
        .to_string();
    assert!(
        error.contains("run the same import again to resume"),
        "{error}"
    );
    let (stored, distinct) = needs_in_sql(app.database_url()).await;
    assert!(
        stored < 700,
        "the server was killed before the end ({stored} stored)"
    );
    assert_eq!(stored, distinct);

    // The report of the failed run: every row, those it saw stored are in the database, the
    // rest pending with the failure.
    let lines = report_lines(&file);
    assert_eq!(lines.len(), 700);
    let reported_stored = lines
        .iter()
        .filter(|(_, outcome, _)| {
            outcome == "accepted" || outcome == "replayed" || outcome == "stored"
        })
        .count() as i64;
    let pending = lines
        .iter()
        .filter(|(_, outcome, _)| outcome == "pending")
        .count() as i64;
    assert!(
        reported_stored >= 100 && reported_stored <= stored,
        "{reported_stored} of {stored}"
    );
    assert_eq!(reported_stored + pending, 700);

    // The same file again, through another server on the same database.
    let second = finmatch::import::run(&file, &format!("http://{}", app.addr), &app.operator)
        .await
        .expect("the rerun finishes the import");
    assert_eq!(
        second.earlier as i64, reported_stored,
        "rows the report marks stored are skipped"
    );
    assert_eq!(second.accepted + second.replayed, pending);
    assert!(second.rejected.is_empty(), "{:?}", second.rejected);
    assert_eq!(second.pending, 0);
    assert_eq!(
        needs_in_sql(app.database_url()).await,
        (700, 700),
        "none lost, none twice"
    );
    let lines = report_lines(&file);
    assert_eq!(lines.len(), 700);
    assert!(
        lines
            .iter()
            .all(|(_, outcome, _)| outcome != "pending" && outcome != "rejected")
    );
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_import_writes_what_it_knows_and_the_rerun_completes_it() {
    let app = TestApp::spawn().await;
    let file = scratch_file(&needs_csv(7700, 30, "2500000"));
    // One call in flight: once 20 needs are stored, the response of the first chunk has come
    // back, so the report marks at least its 10 rows stored. With three in flight, the 20 could
    // all be in calls not answered yet.
    let options = finmatch::import::Options {
        chunk_items: 10,
        calls_in_flight: 1,
        ..Default::default()
    };
    let url = app.database_url().to_owned();
    // Ctrl-C once some needs are stored.
    let interrupt = async move {
        while needs_in_sql(&url).await.0 < 20 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    let server = format!("http://{}", app.addr);
    let error = finmatch::import::run_with(&file, &server, &app.operator, &options, interrupt)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("interrupted"), "{error}");
    let lines = report_lines(&file);
    assert_eq!(lines.len(), 210);
    assert!(lines.iter().any(|(_, outcome, _)| outcome == "pending"));

    let second = finmatch::import::run_with(
        &file,
        &server,
        &app.operator,
        &options,
        std::future::pending(),
    )
    .await
    .unwrap();
    assert!(second.earlier >= 10, "{second:?}");
    assert_eq!(
        second.earlier as i64 + second.accepted + second.replayed,
        210
    );
    assert_eq!(needs_in_sql(app.database_url()).await, (210, 210));
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_sent_one_small_item_per_frame_survives_a_slow_batch() {
    // A client that writes each item in its own HTTP/2 DATA frame (as most gRPC clients do)
    // while the server is busy storing a batch: the small frames must not pile up in the
    // server's HTTP/2 buffers until h2 ends the connection (GOAWAY too_many_data_frames).
    let app = TestApp::spawn().await;
    let enterprise_id = registered_enterprise(&app, 7900).await;
    // The first batch (100 valid items) waits on a lock for two seconds; the 6,000 items after
    // it are invalid (zero amount), so they need no database.
    let (client_pg, connection) =
        tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client_pg
        .batch_execute("BEGIN; LOCK TABLE needs IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        client_pg.batch_execute("ROLLBACK").await.unwrap();
    });
    let items: Vec<_> = (0..6100)
        .map(|n| {
            let amount_minor = if n < 100 { 250_000_000 } else { 0 };
            import_item(
                format!("frame-{n}"),
                &enterprise_id,
                pb::Purpose::Payroll,
                amount_minor,
            )
        })
        .collect();
    // Pending between items, so tonic flushes each one as its own frame.
    let one_per_frame = futures::StreamExt::then(tokio_stream::iter(items), |item| async {
        tokio::task::yield_now().await;
        item
    });
    let mut client = pb::financing_service_client::FinancingServiceClient::new(app.channel.clone());
    let response = client
        .import_needs(authed(one_per_frame, &app.operator))
        .await
        .expect("the stream is not cut")
        .into_inner();
    assert!(response.rejected_total >= 6000, "{response:?}");
    assert_eq!(response.accepted + response.rejected_total, 6100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_calls_keep_each_enterprises_rows_in_file_order() {
    let app = TestApp::spawn().await;
    // 40 enterprises, each with three rows of one purpose and their own amounts; without consent
    // each need stays SUBMITTED (open), so only an enterprise's first row may be stored. One item
    // per call and eight calls in flight: rows of an enterprise in different calls would race,
    // and some later row would win.
    let mut csv = String::from(HEADER);
    for n in 0..40u32 {
        for amount in ["1000001", "2000002", "3000003"] {
            csv.push_str(&format!(
                "{},Xiaogan Works No. {n},421303,C2770,small,{amount},12,payroll,credit,,\
                 2027-06-30,no\n",
                crate::helpers::credit_code(8100 + n)
            ));
        }
    }
    let file = scratch_file(&csv);
    let options = finmatch::import::Options {
        chunk_items: 1,
        calls_in_flight: 8,
        ..Default::default()
    };
    let server = format!("http://{}", app.addr);
    let report = finmatch::import::run_with(
        &file,
        &server,
        &app.operator,
        &options,
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(report.accepted, 40);
    assert_eq!(report.rejected.len(), 80, "{:?}", report.rejected);
    assert!(
        report
            .rejected
            .iter()
            .all(|r| r.reason == "DUPLICATE_OPEN_NEED" && (r.row - 2) % 3 != 0),
        "only each enterprise's later rows are refused: {:?}",
        report.rejected
    );

    let (client, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let amounts: Vec<i64> = client
        .query("SELECT amount_minor FROM needs", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(amounts.len(), 40);
    assert!(
        amounts.iter().all(|&a| a == 100_000_100),
        "every stored need is its enterprise's first row: {amounts:?}"
    );
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

/// A lender serving Suizhou with one product that takes the generated rows (C27, up to ¥10
/// million, credit).
async fn one_product(app: &TestApp) {
    use pb::lender_service_client::LenderServiceClient;
    let lender_id = crate::helpers::create_lender(app, "Report Bank").await;
    LenderServiceClient::new(app.channel.clone())
        .create_product(authed(
            pb::CreateProductRequest {
                product: Some(pb::Product {
                    lender_id: lender_id.to_string(),
                    name: "Working capital".into(),
                    min_amount_minor: 10_000_000,
                    max_amount_minor: 1_000_000_000,
                    min_term_months: 6,
                    max_term_months: 36,
                    industry_prefixes: vec!["C27".into()],
                    region_prefixes: vec!["4213".into()],
                    collateral_accepted: vec![pb::Collateral::Credit as i32],
                    min_size: pb::EnterpriseSize::Micro as i32,
                    min_rate_bps: 350,
                    max_rate_bps: 450,
                    daily_capacity: 500,
                    response_sla_hours: 48,
                    active: Some(true),
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .unwrap();
}

/// The report's lines by row: (outcome, status, need_id, code, reason, message).
fn report_by_row(file: &std::path::Path) -> std::collections::BTreeMap<u64, [String; 6]> {
    let mut csv = csv::Reader::from_path(finmatch::import::report_path(file)).unwrap();
    let header = csv.headers().unwrap().clone();
    let at = |name: &str| header.iter().position(|h| h == name).unwrap();
    let columns = ["outcome", "status", "need_id", "code", "reason", "message"].map(at);
    csv.records()
        .map(|r| {
            let r = r.unwrap();
            (
                r[at("row")].parse().unwrap(),
                columns.map(|c| r[c].to_owned()),
            )
        })
        .collect()
}

/// 20 rows: three bad (one the command cannot read, one the server refuses, one whose enterprise
/// cannot be registered), one no product fits and one without consent. The summary and the
/// report say where each stored need went and why each bad row failed, once; a second run, and a
/// run without the report, say the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_tells_routed_unmatched_unrouted_and_each_error_once() {
    let app = TestApp::spawn().await;
    one_product(&app).await;
    let mut csv = String::from(HEADER);
    for n in 0..20u32 {
        let row = n + 2;
        let (mut region, mut amount, mut needed_by, mut consent) =
            ("421303", "2500000", "2030-06-30", "yes");
        match row {
            4 => amount = "12,5",
            7 => needed_by = "2020-01-01",
            10 => region = "999999",
            13 => amount = "90000000",
            16 => consent = "no",
            _ => {}
        }
        csv.push_str(&format!(
            "{},Suizhou Report Works No. {n},{region},C2770,small,{amount},12,working_capital,\
             credit,,{needed_by},{consent}\n",
            crate::helpers::credit_code(7000 + n)
        ));
    }
    let file = scratch_file(&csv);
    let server = format!("http://{}", app.addr);

    let first = finmatch::import::run(&file, &server, &app.operator)
        .await
        .unwrap();
    assert_eq!(
        (first.rows, first.accepted, first.rejected.len()),
        (20, 17, 3)
    );
    assert_eq!((first.routed, first.unmatched, first.unrouted), (15, 1, 1));
    let summary = first.summary(&finmatch::import::report_path(&file));
    assert!(
        summary.contains(
            "15 routed to banks, 1 UNMATCHED (no product fits), 1 not routed (no consent to share)"
        ),
        "{summary}"
    );
    let lines = report_by_row(&file);
    let [outcome, status, need_id, ..] = &lines[&13];
    assert_eq!(
        (outcome.as_str(), status.as_str()),
        ("accepted", "NEED_STATUS_UNMATCHED")
    );
    let (client, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let unmatched: String = client
        .query_one("SELECT id::text FROM needs WHERE status = 'UNMATCHED'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(need_id, &unmatched, "the report names the need");
    assert_eq!(lines[&16][1], "NEED_STATUS_SUBMITTED");
    assert_eq!(lines[&2][1], "NEED_STATUS_ROUTED");
    let rejected = |row: u64| {
        let [outcome, _, _, code, reason, message] = lines[&row].clone();
        (outcome, code, reason, message)
    };
    let (outcome, code, reason, message) = rejected(7);
    assert_eq!(
        (outcome.as_str(), code.as_str(), reason.as_str()),
        ("rejected", "INVALID_ARGUMENT", "needed_by")
    );
    assert_eq!(
        message.matches("must not be in the past").count(),
        1,
        "{message}"
    );
    assert!(
        !message.to_lowercase().starts_with("invalid argument"),
        "{message}"
    );
    let (_, code, reason, message) = rejected(10);
    assert_eq!(
        (code.as_str(), reason.as_str()),
        ("INVALID_ARGUMENT", "region_code")
    );
    assert_eq!(message.matches("region_code").count(), 1, "{message}");
    assert_eq!(rejected(4).1, "PARSE");
    assert_eq!(
        summary.matches("must not be in the past").count(),
        1,
        "{summary}"
    );

    let second = finmatch::import::run(&file, &server, &app.operator)
        .await
        .unwrap();
    assert_eq!(
        (second.accepted, second.earlier, second.rejected.len()),
        (0, 17, 3)
    );
    assert_eq!(
        (second.routed, second.unmatched, second.unrouted),
        (15, 1, 1)
    );
    assert_eq!(report_by_row(&file)[&13][2], unmatched);

    std::fs::remove_file(finmatch::import::report_path(&file)).unwrap();
    let third = finmatch::import::run(&file, &server, &app.operator)
        .await
        .unwrap();
    assert_eq!((third.accepted, third.replayed), (0, 17));
    assert_eq!((third.routed, third.unmatched, third.unrouted), (15, 1, 1));
    let lines = report_by_row(&file);
    assert_eq!(
        (lines[&13][0].as_str(), lines[&13][2].as_str()),
        ("replayed", unmatched.as_str())
    );
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}
