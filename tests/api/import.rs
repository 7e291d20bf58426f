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

    for _ in 0..2 {
        let outcome = finmatch::import::run(&file, &server, &app.operator).await;
        // Whether ImportNeeds is served or not, every row is accounted for when it is.
        if let Ok(report) = outcome {
            assert_eq!(report.rows, 6);
            assert_eq!(
                report.accepted + report.replayed + report.rejected.len() as i64,
                6
            );
        }
    }

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
