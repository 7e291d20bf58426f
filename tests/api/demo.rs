//! `finmatch seed-demo` as an operator runs it: against a database a server is already serving
//! (with its SLA sweeper running every second), then read back over gRPC.

use finmatch::config::ServerArgs;
use finmatch::proto as pb;
use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;
use finmatch::proto::lender_service_client::LenderServiceClient;
use finmatch::proto::reporting_service_client::ReportingServiceClient;

use crate::fixtures::{Fixtures, NeedRow};
use crate::helpers::{TestApp, TestDatabase, authed, enterprise};

async fn seed_demo(url: &str) -> String {
    let url = url.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_finmatch"))
            .arg("seed-demo")
            .env("FINMATCH_DATABASE_URL", url)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run finmatch seed-demo")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "seed-demo failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

async fn summary(app: &TestApp, request: pb::GetSummaryRequest) -> pb::GetSummaryResponse {
    let mut response = ReportingServiceClient::new(app.channel.clone())
        .get_summary(authed(request, &app.operator))
        .await
        .expect("GetSummary")
        .into_inner();
    response.as_of = None;
    response
}

async fn on_list(app: &TestApp, list_code: &str) -> usize {
    EnterpriseServiceClient::new(app.channel.clone())
        .list_enterprises(authed(
            pb::ListEnterprisesRequest {
                list_code: list_code.into(),
                page_size: 1000,
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .enterprises
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_tells_the_spring_2020_story_and_loading_it_again_adds_nothing() {
    let args = ServerArgs {
        sweep_interval_secs: 1,
        ..ServerArgs::default()
    };
    let app = TestApp::spawn_with(std::sync::Arc::new(TestDatabase::create().await), args).await;

    let first = seed_demo(app.database_url()).await;
    assert!(
        first.contains("196 enterprises and 196 needs added"),
        "{first}"
    );

    let all = summary(&app, pb::GetSummaryRequest::default()).await;
    assert_eq!(all.enterprises, 196);
    assert_eq!(all.needs, 196);
    assert_eq!(all.demand_minor, 3_560_000_000 * 100);
    let [program] = all.by_program.as_slice() else {
        panic!("one program: {:?}", all.by_program)
    };
    assert_eq!(program.code, "PBOC_SPECIAL_RELENDING_2020");
    assert_eq!(program.enterprises, 12);
    assert_eq!(program.allocations, 12);
    assert_eq!(program.allocated_minor, 137_000_000 * 100);
    assert_eq!(program.confirmed_minor, 137_000_000 * 100);
    assert!(program.subsidy_minor > 0);
    // The special loans are among the disbursements, and banks both approved and declined.
    assert!(all.funded_needs >= 12 && all.funded_needs < all.needs);
    assert!(all.disbursed_minor >= program.confirmed_minor);
    assert!(all.by_lender.iter().map(|l| l.declines).sum::<i64>() > 0);

    // Breakdowns add up to the totals.
    let regions = &all.by_region;
    assert_eq!(regions.len(), 3, "{regions:?}");
    assert_eq!(regions.iter().map(|r| r.needs).sum::<i64>(), all.needs);
    assert_eq!(
        regions.iter().map(|r| r.enterprises).sum::<i64>(),
        all.enterprises
    );
    assert_eq!(
        regions.iter().map(|r| r.demand_minor).sum::<i64>(),
        all.demand_minor
    );
    assert_eq!(
        regions.iter().map(|r| r.funded_needs).sum::<i64>(),
        all.funded_needs
    );
    assert_eq!(
        regions.iter().map(|r| r.disbursed_minor).sum::<i64>(),
        all.disbursed_minor
    );
    let industries = &all.by_industry;
    assert_eq!(industries.iter().map(|i| i.needs).sum::<i64>(), all.needs);
    assert_eq!(
        industries.iter().map(|i| i.demand_minor).sum::<i64>(),
        all.demand_minor
    );
    assert_eq!(
        industries.iter().map(|i| i.disbursed_minor).sum::<i64>(),
        all.disbursed_minor
    );
    assert_eq!(all.by_lender.len(), 9);
    assert_eq!(
        all.by_lender.iter().map(|l| l.disbursed_minor).sum::<i64>(),
        all.disbursed_minor
    );

    // Filters narrow to exactly the matching group.
    let guangshui = regions
        .iter()
        .find(|r| r.region_prefix == "421381")
        .expect("Guangshui");
    let narrowed = summary(
        &app,
        pb::GetSummaryRequest {
            region_prefix: "421381".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(narrowed.needs < all.needs);
    assert_eq!(
        (
            narrowed.needs,
            narrowed.demand_minor,
            narrowed.disbursed_minor
        ),
        (
            guangshui.needs,
            guangshui.demand_minor,
            guangshui.disbursed_minor
        )
    );
    let medical = summary(
        &app,
        pb::GetSummaryRequest {
            industry_prefix: "C27".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(medical.needs > 0 && medical.needs < all.needs);

    let lenders = LenderServiceClient::new(app.channel.clone())
        .list_lenders(authed(
            pb::ListLendersRequest {
                page_size: 100,
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .lenders;
    assert_eq!(lenders.len(), 9);
    assert_eq!(on_list(&app, "NATIONAL_KEY_SUPPLY").await, 22);
    assert_eq!(on_list(&app, "PROVINCIAL_KEY").await, 8);

    // Again: nothing changes.
    let second = seed_demo(app.database_url()).await;
    assert!(second.contains("already loaded"), "{second}");
    assert_eq!(summary(&app, pb::GetSummaryRequest::default()).await, all);
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweepers_leave_overdue_needs_alone_while_a_demo_load_runs() {
    let app = TestApp::spawn().await;
    let created = EnterpriseServiceClient::new(app.channel.clone())
        .create_enterprise(authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(enterprise(1)),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .enterprise
        .unwrap();
    // Due 2030-12-31.
    Fixtures::connect(&app)
        .await
        .need(NeedRow {
            enterprise_id: created.id.parse().unwrap(),
            amount_minor: 1_000_000,
            purpose: "WORKING_CAPITAL",
            status: "ROUTED",
            created_at: None,
        })
        .await;
    let later = "2031-01-05T00:00:00Z".parse().unwrap();

    let mut loader = app.app.conn().await.unwrap();
    finmatch::storage::locks::hold_expiry(&mut loader)
        .await
        .unwrap();
    let during = app.app.sweep_once(later).await.unwrap();
    assert_eq!(during.expired_needs, 0);

    finmatch::storage::locks::release_expiry(&mut loader)
        .await
        .unwrap();
    let after = app.app.sweep_once(later).await.unwrap();
    assert_eq!(after.expired_needs, 1);
    app.shutdown().await.unwrap();
}

/// Every need's status, funding and referrals (bank, status, decline reason) in routing order.
async fn round_of(url: &str) -> Vec<String> {
    let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db.query(
        "SELECT e.credit_code || ' ' || n.status || ' ' || n.funded_minor || ' ' || coalesce(( \
             SELECT string_agg(l.name || ':' || r.status || ':' || coalesce(r.decline_reason, ''), \
                               ', ' ORDER BY r.created_at, l.name) \
             FROM referrals r JOIN lenders l ON l.id = r.lender_id WHERE r.need_id = n.id), '') \
         FROM needs n JOIN enterprises e ON e.id = n.enterprise_id ORDER BY e.credit_code",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_load_plays_the_same_round() {
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let database = TestDatabase::create().await;
        let app = finmatch::service::App::new(
            finmatch::storage::pool(&database.url, 4, finmatch::storage::STATEMENT_TIMEOUT)
                .unwrap(),
        );
        finmatch::demo::load(&app).await.expect("load the demo");
        rounds.push(round_of(&database.url).await);
    }
    assert_eq!(rounds[0].len(), 196);
    assert_eq!(rounds[0], rounds[1]);
}
