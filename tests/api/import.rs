//! `finmatch import` against a real server: the enterprises of unknown credit codes are
//! registered from their first row, once, however often the file is imported.

use finmatch::grpc::pb;
use finmatch::grpc::pb::enterprise_service_client::EnterpriseServiceClient;

use crate::helpers::{TestApp, authed};

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
        (second.accepted, second.replayed),
        (0, 6),
        "a repeat adds nothing"
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
    assert!(report.contains("31"), "{report}");

    let second = finmatch::import::run(&file, &server, &app.operator)
        .await
        .unwrap();
    assert_eq!((second.accepted, second.replayed), (0, 50));
    assert_eq!(second.rejected.len(), 1);
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
