//! ReportingService.GetSummary over a known history: totals, breakdowns that add up to them,
//! filters that narrow them, programs, validation and roles.

use finmatch::domain::Role;
use finmatch::proto as pb;
use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;
use finmatch::proto::lender_service_client::LenderServiceClient;
use finmatch::proto::reporting_service_client::ReportingServiceClient;
use finmatch::proto::special_loan_service_client::SpecialLoanServiceClient;
use tonic::Code;
use uuid::Uuid;

use crate::fixtures::{Fixtures, NeedRow, ReferralRow};
use crate::helpers::{TestApp, authed, create_lender, enterprise, violated_fields};

const HOUR: i64 = 3_600;

struct World {
    app: TestApp,
    lender_a: Uuid,
    lender_b: Uuid,
    /// 421303, C2720
    e1: Uuid,
    /// 421381, C3511
    e2: Uuid,
    /// 420106, F5171
    e3: Uuid,
}

async fn create_enterprise(app: &TestApp, n: u32, region: &str, industry: &str) -> Uuid {
    let mut client = EnterpriseServiceClient::new(app.channel.clone());
    let mut given = enterprise(n);
    given.region_code = region.into();
    given.industry_code = industry.into();
    let created = client
        .create_enterprise(authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(given),
            },
            &app.operator,
        ))
        .await
        .expect("create an enterprise")
        .into_inner()
        .enterprise
        .unwrap();
    created.id.parse().unwrap()
}

async fn create_product(app: &TestApp, lender_id: Uuid) -> Uuid {
    let mut client = LenderServiceClient::new(app.channel.clone());
    let product = client
        .create_product(authed(
            pb::CreateProductRequest {
                product: Some(pb::Product {
                    lender_id: lender_id.to_string(),
                    name: "Working capital".into(),
                    min_amount_minor: 1_000_000,
                    max_amount_minor: 1_000_000_000,
                    min_term_months: 3,
                    max_term_months: 36,
                    collateral_accepted: vec![pb::Collateral::Credit as i32],
                    min_size: pb::EnterpriseSize::Micro as i32,
                    min_rate_bps: 300,
                    max_rate_bps: 600,
                    daily_capacity: 50,
                    response_sla_hours: 48,
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .expect("create a product")
        .into_inner()
        .product
        .unwrap();
    product.id.parse().unwrap()
}

/// Three enterprises in two prefectures and three industries, two banks, five needs (one of
/// them from 2020) and six referrals:
///
/// | need | enterprise | amount | status | referrals |
/// |---|---|---|---|---|
/// | n1 | e1 | 100,000,000 | FUNDED | A disbursed 100,000,000 (answered 2 h); B declined CAPACITY (4 h) |
/// | n2 | e1 | 50,000,000 | APPROVED | A approved 40,000,000 (1 h); B pending |
/// | n3 | e2 | 200,000,000 | ROUTED | B declined OUTSIDE_APPETITE (6 h); A expired |
/// | n4 | e3 | 30,000,000 | UNMATCHED | none |
/// | n5 | e2 | 10,000,000 | WITHDRAWN, created 2020-01-01 | none |
async fn world() -> World {
    let app = TestApp::spawn().await;
    let lender_a = create_lender(&app, "Bank A").await;
    let lender_b = create_lender(&app, "Bank B").await;
    let product_a = create_product(&app, lender_a).await;
    let product_b = create_product(&app, lender_b).await;
    let e1 = create_enterprise(&app, 1, "421303", "C2720").await;
    let e2 = create_enterprise(&app, 2, "421381", "C3511").await;
    let e3 = create_enterprise(&app, 3, "420106", "F5171").await;

    let f = Fixtures::connect(&app).await;
    let need = |enterprise_id, amount_minor, purpose, status| NeedRow {
        enterprise_id,
        amount_minor,
        purpose,
        status,
        created_at: None,
    };
    let refer = |need_id, lender: Uuid, status| ReferralRow {
        need_id,
        lender_id: lender,
        product_id: if lender == lender_a {
            product_a
        } else {
            product_b
        },
        status,
        decline_reason: None,
        approved_amount_minor: None,
        answered_after_secs: None,
    };

    let n1 = f
        .need(need(e1, 100_000_000, "WORKING_CAPITAL", "FUNDED"))
        .await;
    let r = f
        .referral(ReferralRow {
            approved_amount_minor: Some(100_000_000),
            answered_after_secs: Some(2 * HOUR),
            ..refer(n1, lender_a, "DISBURSED")
        })
        .await;
    f.disbursement(r, 100_000_000, "LOAN-A-1").await;
    f.referral(ReferralRow {
        decline_reason: Some("CAPACITY"),
        answered_after_secs: Some(4 * HOUR),
        ..refer(n1, lender_b, "DECLINED")
    })
    .await;

    let n2 = f.need(need(e1, 50_000_000, "PAYROLL", "APPROVED")).await;
    f.referral(ReferralRow {
        approved_amount_minor: Some(40_000_000),
        answered_after_secs: Some(HOUR),
        ..refer(n2, lender_a, "APPROVED")
    })
    .await;
    f.referral(refer(n2, lender_b, "PENDING")).await;

    let n3 = f
        .need(need(e2, 200_000_000, "WORKING_CAPITAL", "ROUTED"))
        .await;
    f.referral(ReferralRow {
        decline_reason: Some("OUTSIDE_APPETITE"),
        answered_after_secs: Some(6 * HOUR),
        ..refer(n3, lender_b, "DECLINED")
    })
    .await;
    f.referral(refer(n3, lender_a, "EXPIRED")).await;

    f.need(need(e3, 30_000_000, "EQUIPMENT", "UNMATCHED")).await;
    f.need(NeedRow {
        created_at: Some("2020-01-01T08:00:00Z".parse().unwrap()),
        ..need(e2, 10_000_000, "PAYROLL", "WITHDRAWN")
    })
    .await;

    World {
        app,
        lender_a,
        lender_b,
        e1,
        e2,
        e3,
    }
}

async fn summary(
    app: &TestApp,
    token: &str,
    request: pb::GetSummaryRequest,
) -> Result<pb::GetSummaryResponse, tonic::Status> {
    ReportingServiceClient::new(app.channel.clone())
        .get_summary(authed(request, token))
        .await
        .map(tonic::Response::into_inner)
}

fn hours(h: i64, minutes: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: h * HOUR + minutes * 60,
        nanos: 0,
    })
}

/// (enterprises, needs, demand, routed, approved, approved_minor, funded, disbursed) of a group.
type Figures = (i64, i64, i64, i64, i64, i64, i64, i64);

fn industry_figures(g: &pb::IndustrySummary) -> Figures {
    (
        g.enterprises,
        g.needs,
        g.demand_minor,
        g.routed_needs,
        g.approved_needs,
        g.approved_minor,
        g.funded_needs,
        g.disbursed_minor,
    )
}

fn region_figures(g: &pb::RegionSummary) -> Figures {
    (
        g.enterprises,
        g.needs,
        g.demand_minor,
        g.routed_needs,
        g.approved_needs,
        g.approved_minor,
        g.funded_needs,
        g.disbursed_minor,
    )
}

fn total_figures(s: &pb::GetSummaryResponse) -> Figures {
    (
        s.enterprises,
        s.needs,
        s.demand_minor,
        s.routed_needs,
        s.approved_needs,
        s.approved_minor,
        s.funded_needs,
        s.disbursed_minor,
    )
}

fn add(a: Figures, b: Figures) -> Figures {
    (
        a.0 + b.0,
        a.1 + b.1,
        a.2 + b.2,
        a.3 + b.3,
        a.4 + b.4,
        a.5 + b.5,
        a.6 + b.6,
        a.7 + b.7,
    )
}

/// Every group set adds up to the totals; the lenders add up to the referral-side totals.
fn assert_adds_up(s: &pb::GetSummaryResponse) {
    let zero = (0, 0, 0, 0, 0, 0, 0, 0);
    let industries = s.by_industry.iter().map(industry_figures).fold(zero, add);
    let regions = s.by_region.iter().map(region_figures).fold(zero, add);
    assert_eq!(industries, total_figures(s), "by_industry adds up");
    assert_eq!(regions, total_figures(s), "by_region adds up");
    let approved: i64 = s.by_lender.iter().map(|l| l.approved_minor).sum();
    let disbursed: i64 = s.by_lender.iter().map(|l| l.disbursed_minor).sum();
    assert_eq!(approved, s.approved_minor, "by_lender approved adds up");
    assert_eq!(disbursed, s.disbursed_minor, "by_lender disbursed adds up");
    for lender in &s.by_lender {
        let by_reason: i64 = lender.declines_by_reason.iter().map(|d| d.count).sum();
        assert_eq!(
            by_reason, lender.declines,
            "{} declines by reason",
            lender.lender_name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_totals_and_breakdowns_describe_the_whole_history() {
    let w = world().await;
    let s = summary(&w.app, &w.app.operator, pb::GetSummaryRequest::default())
        .await
        .unwrap();

    assert_eq!(
        total_figures(&s),
        (3, 5, 390_000_000, 3, 2, 140_000_000, 1, 100_000_000)
    );
    assert_eq!(s.funding_rate_bps, 2_564); // 100 / 390 = 25.641 %
    // Answers after 1, 2, 4 and 6 hours: the median is 3 hours.
    assert_eq!(s.median_time_to_first_answer, hours(3, 0));
    assert!(s.as_of.is_some());

    let industries: Vec<(&str, Figures)> = s
        .by_industry
        .iter()
        .map(|g| (g.industry_prefix.as_str(), industry_figures(g)))
        .collect();
    assert_eq!(
        industries,
        vec![
            (
                "C27",
                (1, 2, 150_000_000, 2, 2, 140_000_000, 1, 100_000_000)
            ),
            ("C35", (1, 2, 210_000_000, 1, 0, 0, 0, 0)),
            ("F51", (1, 1, 30_000_000, 0, 0, 0, 0, 0)),
        ]
    );
    let regions: Vec<(&str, i64, i64)> = s
        .by_region
        .iter()
        .map(|g| (g.region_prefix.as_str(), g.enterprises, g.demand_minor))
        .collect();
    assert_eq!(
        regions,
        vec![
            ("420106", 1, 30_000_000),
            ("421303", 1, 150_000_000),
            ("421381", 1, 210_000_000),
        ]
    );

    assert_eq!(s.by_lender.len(), 2);
    let a = &s.by_lender[0];
    assert_eq!(
        (a.lender_id.as_str(), a.lender_name.as_str()),
        (w.lender_a.to_string().as_str(), "Bank A")
    );
    assert_eq!(
        (
            a.referrals,
            a.approvals,
            a.declines,
            a.expirations,
            a.open_referrals
        ),
        (3, 2, 0, 1, 1)
    );
    assert_eq!(
        (a.approved_minor, a.disbursed_minor),
        (140_000_000, 100_000_000)
    );
    assert!(a.declines_by_reason.is_empty());
    assert_eq!(a.median_response_time, hours(1, 30));

    let b = &s.by_lender[1];
    assert_eq!(b.lender_id, w.lender_b.to_string());
    assert_eq!(
        (
            b.referrals,
            b.approvals,
            b.declines,
            b.expirations,
            b.open_referrals
        ),
        (3, 0, 2, 0, 1)
    );
    assert_eq!((b.approved_minor, b.disbursed_minor), (0, 0));
    let reasons: Vec<(i32, i64)> = b
        .declines_by_reason
        .iter()
        .map(|d| (d.reason, d.count))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (pb::DeclineReason::OutsideAppetite as i32, 1),
            (pb::DeclineReason::Capacity as i32, 1),
        ]
    );
    assert_eq!(b.median_response_time, hours(5, 0));

    assert!(s.by_program.is_empty());
    assert_adds_up(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_narrow_the_cohort_and_group_lengths_regroup_it() {
    let w = world().await;
    let op = &w.app.operator;

    let prefecture = summary(
        &w.app,
        op,
        pb::GetSummaryRequest {
            region_prefix: "4213".into(),
            region_group_length: 4,
            industry_group_length: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        total_figures(&prefecture),
        (2, 4, 360_000_000, 3, 2, 140_000_000, 1, 100_000_000)
    );
    let regions: Vec<(&str, i64, i64)> = prefecture
        .by_region
        .iter()
        .map(|g| (g.region_prefix.as_str(), g.enterprises, g.needs))
        .collect();
    assert_eq!(regions, vec![("4213", 2, 4)]);
    let sections: Vec<(&str, i64)> = prefecture
        .by_industry
        .iter()
        .map(|g| (g.industry_prefix.as_str(), g.needs))
        .collect();
    assert_eq!(sections, vec![("C", 4)]);
    assert_adds_up(&prefecture);

    let pharma = summary(
        &w.app,
        op,
        pb::GetSummaryRequest {
            industry_prefix: "C27".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        total_figures(&pharma),
        (1, 2, 150_000_000, 2, 2, 140_000_000, 1, 100_000_000)
    );
    assert_eq!(pharma.funding_rate_bps, 6_667); // 100 / 150
    let referrals: Vec<(&str, i64, i64)> = pharma
        .by_lender
        .iter()
        .map(|l| (l.lender_name.as_str(), l.referrals, l.declines))
        .collect();
    assert_eq!(referrals, vec![("Bank A", 2, 0), ("Bank B", 2, 1)]);
    assert_adds_up(&pharma);

    // n5 was created in 2020; a period starting yesterday leaves it out, one ending in 2021
    // keeps only it.
    let yesterday = chrono::Utc::now() - chrono::Duration::days(1);
    let recent = summary(
        &w.app,
        op,
        pb::GetSummaryRequest {
            period_from: Some(prost_types::Timestamp {
                seconds: yesterday.timestamp(),
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((recent.needs, recent.demand_minor), (4, 380_000_000));
    assert_adds_up(&recent);
    let early = summary(
        &w.app,
        op,
        pb::GetSummaryRequest {
            period_to: Some(prost_types::Timestamp {
                seconds: 1_609_459_200, // 2021-01-01T00:00:00Z
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(total_figures(&early), (1, 1, 10_000_000, 0, 0, 0, 0, 0));
    assert!(early.by_lender.is_empty());
    assert_eq!(early.median_time_to_first_answer, None);

    let nothing = summary(
        &w.app,
        op,
        pb::GetSummaryRequest {
            region_prefix: "11".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(total_figures(&nothing), (0, 0, 0, 0, 0, 0, 0, 0));
    assert_eq!(nothing.funding_rate_bps, 0);
    assert!(nothing.by_industry.is_empty() && nothing.by_region.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_count_live_allocations_of_matching_enterprises() {
    let w = world().await;
    let op = &w.app.operator;
    let mut loans = SpecialLoanServiceClient::new(w.app.channel.clone());
    let program = loans
        .create_program(authed(
            pb::CreateProgramRequest {
                program: Some(pb::Program {
                    code: "PBOC_2020".into(),
                    name: "PBoC special re-lending 2020".into(),
                    total_quota_minor: 100_000_000,
                    rate_cap_bps: 315,
                    subsidy_ratio_bps: 5_000,
                    max_term_months: 12,
                    loan_date_from: "2020-01-25".into(),
                    one_bank_per_enterprise: true,
                    ..Default::default()
                }),
            },
            op,
        ))
        .await
        .unwrap()
        .into_inner()
        .program
        .unwrap();
    loans
        .set_lender_quota(authed(
            pb::SetLenderQuotaRequest {
                program_id: program.id.clone(),
                lender_id: w.lender_a.to_string(),
                quota_minor: 60_000_000,
            },
            op,
        ))
        .await
        .unwrap();
    let mut allocate = async |enterprise: Uuid, amount_minor: i64| {
        loans
            .allocate_special_loan(authed(
                pb::AllocateSpecialLoanRequest {
                    idempotency_key: Uuid::new_v4().to_string(),
                    program_id: program.id.clone(),
                    lender_id: w.lender_a.to_string(),
                    enterprise_id: enterprise.to_string(),
                    amount_minor,
                    rate_bps: 315,
                    term_months: 12,
                    loan_date: "2020-03-02".into(),
                    ..Default::default()
                },
                op,
            ))
            .await
            .unwrap()
            .into_inner()
            .allocation
            .unwrap()
    };
    let first = allocate(w.e1, 10_000_000).await;
    allocate(w.e3, 5_000_000).await;
    let released = allocate(w.e2, 7_000_000).await;
    loans
        .confirm_allocation(authed(
            pb::ConfirmAllocationRequest {
                allocation_id: first.id.clone(),
                // The loan Bank A recorded for e1 (a confirmation needs it).
                loan_reference: "LOAN-A-1".into(),
                disbursed_on: "2020-03-02".into(),
            },
            op,
        ))
        .await
        .unwrap();
    loans
        .release_allocation(authed(
            pb::ReleaseAllocationRequest {
                allocation_id: released.id.clone(),
                ..Default::default()
            },
            op,
        ))
        .await
        .unwrap();

    let all = summary(&w.app, op, pb::GetSummaryRequest::default())
        .await
        .unwrap();
    assert_eq!(all.by_program.len(), 1);
    let p = &all.by_program[0];
    assert_eq!(
        (p.program_id.as_str(), p.code.as_str()),
        (program.id.as_str(), "PBOC_2020")
    );
    // ¥100,000 × 3.15 % × 50 % = ¥1,575.00, and ¥787.50 for half the amount.
    assert_eq!(
        (
            p.enterprises,
            p.allocations,
            p.allocated_minor,
            p.confirmed_minor,
            p.subsidy_minor
        ),
        (2, 2, 15_000_000, 10_000_000, 236_250)
    );
    assert_eq!(
        (p.total_quota_minor, p.remaining_minor),
        (100_000_000, 85_000_000)
    );

    let prefecture = summary(
        &w.app,
        op,
        pb::GetSummaryRequest {
            region_prefix: "4213".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let p = &prefecture.by_program[0];
    assert_eq!(
        (
            p.enterprises,
            p.allocations,
            p.allocated_minor,
            p.confirmed_minor,
            p.subsidy_minor
        ),
        (1, 1, 10_000_000, 10_000_000, 157_500)
    );
    // Quota figures are the program's own, whatever the filter.
    assert_eq!(
        (p.total_quota_minor, p.remaining_minor),
        (100_000_000, 85_000_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_may_read_the_summary_and_a_lender_may_not() {
    let w = world().await;
    let portal = w.app.token(Role::Portal, None).await;
    let s = summary(&w.app, &portal, pb::GetSummaryRequest::default())
        .await
        .unwrap();
    assert_eq!((s.enterprises, s.needs), (3, 5));

    let lender = w.app.token(Role::Lender, Some(w.lender_a)).await;
    let denied = summary(&w.app, &lender, pb::GetSummaryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let anonymous = ReportingServiceClient::new(w.app.channel.clone())
        .get_summary(pb::GetSummaryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_and_group_lengths_are_named_field_by_field() {
    let app = TestApp::spawn().await;
    let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let bad = summary(
        &app,
        &app.operator,
        pb::GetSummaryRequest {
            period_from: at(1_600_000_000),
            period_to: at(1_600_000_000),
            region_prefix: "42A".into(),
            industry_prefix: "Z1".into(),
            industry_group_length: 6,
            region_group_length: 3,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&bad),
        vec![
            "industry_group_length",
            "industry_prefix",
            "period_to",
            "region_group_length",
            "region_prefix",
        ]
    );

    let bad_time = summary(
        &app,
        &app.operator,
        pb::GetSummaryRequest {
            period_from: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&bad_time), vec!["period_from"]);
}
