//! FinancingService end to end: preview, submit and routing, idempotency, duplicates, consent,
//! validation, fair load spreading, import, withdrawal, and the SLA sweeper on one and two
//! replicas.

use std::collections::{BTreeMap, HashMap};

use chrono::{TimeDelta, Utc};
use finmatch::domain::Role;
use finmatch::proto as pb;
use pb::enterprise_service_client::EnterpriseServiceClient;
use pb::financing_service_client::FinancingServiceClient;
use pb::lender_service_client::LenderServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{TestApp, authed, error_reason, violated_fields};

const REGION: &str = "421300";
const NEEDED_BY: &str = "2030-06-30";

fn financing(app: &TestApp) -> FinancingServiceClient<Channel> {
    FinancingServiceClient::new(app.channel.clone())
}

async fn enterprise(app: &TestApp) -> String {
    let credit_code = crate::helpers::next_credit_code();
    EnterpriseServiceClient::new(app.channel.clone())
        .create_enterprise(authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(pb::Enterprise {
                    name: format!("Suizhou Works No. {}", &credit_code[10..17]),
                    credit_code,
                    region_code: REGION.into(),
                    industry_code: "C2720".into(),
                    size: pb::EnterpriseSize::Small as i32,
                    employees: 120,
                    annual_revenue_minor: 5_000_000_000,
                    contact_name: "Li Lei".into(),
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .expect("create enterprise")
        .into_inner()
        .enterprise
        .unwrap()
        .id
}

/// What differs between the test lenders' products.
#[derive(Clone, Copy)]
struct Offer {
    min_rate_bps: i32,
    max_rate_bps: i32,
    max_amount_minor: i64,
    response_sla_hours: i32,
    daily_capacity: i32,
}

const OFFER: Offer = Offer {
    min_rate_bps: 350,
    max_rate_bps: 450,
    max_amount_minor: 1_000_000_000,
    response_sla_hours: 48,
    daily_capacity: 500,
};

/// A lender serving the test region with one product; returns (lender_id, product_id).
async fn lender(app: &TestApp, name: &str, offer: Offer) -> (String, String) {
    lender_in(app, name, offer, &[REGION]).await
}

/// A lender serving `regions` with one product; returns (lender_id, product_id).
async fn lender_in(app: &TestApp, name: &str, offer: Offer, regions: &[&str]) -> (String, String) {
    let mut lenders = LenderServiceClient::new(app.channel.clone());
    let lender_id = lenders
        .create_lender(authed(
            pb::CreateLenderRequest {
                lender: Some(pb::Lender {
                    name: name.into(),
                    kind: pb::LenderKind::CityCommercial as i32,
                    region_codes: regions.iter().map(|r| r.to_string()).collect(),
                    active: Some(true),
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .expect("create lender")
        .into_inner()
        .lender
        .unwrap()
        .id;
    let product_id = lenders
        .create_product(authed(
            pb::CreateProductRequest {
                product: Some(pb::Product {
                    lender_id: lender_id.clone(),
                    name: format!("{name} working capital loan"),
                    min_amount_minor: 10_000_000,
                    max_amount_minor: offer.max_amount_minor,
                    min_term_months: 6,
                    max_term_months: 36,
                    collateral_accepted: vec![
                        pb::Collateral::Credit as i32,
                        pb::Collateral::RealEstate as i32,
                    ],
                    min_size: pb::EnterpriseSize::Micro as i32,
                    min_rate_bps: offer.min_rate_bps,
                    max_rate_bps: offer.max_rate_bps,
                    daily_capacity: offer.daily_capacity,
                    response_sla_hours: offer.response_sla_hours,
                    active: Some(true),
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .expect("create product")
        .into_inner()
        .product
        .unwrap()
        .id;
    (lender_id, product_id)
}

fn need(enterprise_id: &str, purpose: pb::Purpose) -> pb::Need {
    pb::Need {
        enterprise_id: enterprise_id.into(),
        amount_minor: 300_000_000,
        term_months: 12,
        purpose: purpose as i32,
        collateral: vec![pb::Collateral::RealEstate as i32],
        max_rate_bps: None,
        needed_by: NEEDED_BY.into(),
        consent_to_share: true,
        channel: pb::Channel::Bureau as i32,
        note: "payroll through the spring".into(),
        ..Default::default()
    }
}

/// PreviewMatches of an unsaved need, the default page, through `app`.
async fn preview(app: &TestApp, need: pb::Need) -> pb::PreviewMatchesResponse {
    financing(app)
        .preview_matches(authed(
            pb::PreviewMatchesRequest {
                subject: Some(pb::preview_matches_request::Subject::Need(need)),
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .expect("preview")
        .into_inner()
}

async fn submit(
    app: &TestApp,
    key: &str,
    need: pb::Need,
) -> Result<pb::SubmitNeedResponse, tonic::Status> {
    financing(app)
        .submit_need(authed(
            pb::SubmitNeedRequest {
                idempotency_key: key.into(),
                need: Some(need),
            },
            &app.operator,
        ))
        .await
        .map(|r| r.into_inner())
}

async fn get_need(app: &TestApp, id: &str) -> pb::GetNeedResponse {
    financing(app)
        .get_need(authed(
            pb::GetNeedRequest { need_id: id.into() },
            &app.operator,
        ))
        .await
        .expect("get need")
        .into_inner()
}

/// A plain client on the test database, for counting what the API does not expose.
async fn database(app: &TestApp) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Four eligible lenders at falling prices, one whose product is too small and one serving
/// another region. Returns the lender ids, cheapest first, and the two ineligible product ids.
async fn market(app: &TestApp) -> (Vec<String>, String, String) {
    let mut eligible = Vec::new();
    for (i, min_rate) in [320, 380, 440, 500].into_iter().enumerate() {
        let offer = Offer {
            min_rate_bps: min_rate,
            max_rate_bps: min_rate + 100,
            ..OFFER
        };
        eligible.push(lender(app, &format!("Bank {i}"), offer).await.0);
    }
    let (_, too_small) = lender(
        app,
        "Small Ticket Bank",
        Offer {
            max_amount_minor: 50_000_000,
            ..OFFER
        },
    )
    .await;
    let mut lenders = LenderServiceClient::new(app.channel.clone());
    let far = lenders
        .create_lender(authed(
            pb::CreateLenderRequest {
                lender: Some(pb::Lender {
                    name: "Faraway Rural Bank".into(),
                    kind: pb::LenderKind::Rural as i32,
                    region_codes: vec!["110000".into()],
                    active: Some(true),
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .lender
        .unwrap()
        .id;
    let far_product = lenders
        .create_product(authed(
            pb::CreateProductRequest {
                product: Some(pb::Product {
                    lender_id: far,
                    name: "Beijing loan".into(),
                    min_amount_minor: 10_000_000,
                    max_amount_minor: 1_000_000_000,
                    min_term_months: 6,
                    max_term_months: 36,
                    collateral_accepted: vec![pb::Collateral::RealEstate as i32],
                    min_size: pb::EnterpriseSize::Micro as i32,
                    min_rate_bps: 300,
                    max_rate_bps: 400,
                    daily_capacity: 100,
                    response_sla_hours: 48,
                    active: Some(true),
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap()
        .id;
    (eligible, too_small, far_product)
}

/// A lender's regions may be provinces, prefectures or county-level codes, as the proto says;
/// none means the whole country. The test enterprise is in Suizhou (421300), Hubei (42).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lender_regions_may_be_prefixes_and_none_serves_the_whole_country() {
    let app = TestApp::spawn().await;
    let (nationwide, _) = lender_in(&app, "Nationwide Bank", OFFER, &[]).await;
    let (hubei, _) = lender_in(&app, "Hubei Bank", OFFER, &["42"]).await;
    let (suizhou, _) = lender_in(&app, "Suizhou Bank", OFFER, &["4213"]).await;
    let (beijing, _) = lender_in(&app, "Beijing Bank", OFFER, &["11"]).await;
    let mut lenders = LenderServiceClient::new(app.channel.clone());
    for (id, stored) in [
        (&nationwide, vec![]),
        (&hubei, vec!["420000"]),
        (&suizhou, vec!["421300"]),
    ] {
        let lender = lenders
            .get_lender(authed(
                pb::GetLenderRequest {
                    lender_id: id.clone(),
                },
                &app.operator,
            ))
            .await
            .unwrap()
            .into_inner()
            .lender
            .unwrap();
        assert_eq!(
            lender.region_codes, stored,
            "a prefix is kept as its area's code"
        );
    }

    let enterprise_id = enterprise(&app).await;
    let page = preview(&app, need(&enterprise_id, pb::Purpose::Payroll)).await;
    let by_lender: HashMap<&str, &pb::MatchCandidate> = page
        .candidates
        .iter()
        .map(|c| (c.lender_id.as_str(), c))
        .collect();
    for id in [&nationwide, &hubei, &suizhou] {
        assert!(by_lender[id.as_str()].eligible, "{id}: {page:?}");
    }
    let far = by_lender[beijing.as_str()];
    assert!(!far.eligible);
    assert_eq!(
        far.ineligible_reasons
            .iter()
            .map(|r| r.code)
            .collect::<Vec<_>>(),
        [pb::Ineligibility::RegionNotServed as i32]
    );

    let status = lenders
        .create_lender(authed(
            pb::CreateLenderRequest {
                lender: Some(pb::Lender {
                    name: "Odd Bank".into(),
                    kind: pb::LenderKind::Rural as i32,
                    region_codes: vec!["42".into(), "421".into(), "42130".into()],
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["lender.region_codes[1]", "lender.region_codes[2]"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_lists_every_product_with_reasons_or_factors_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (eligible, too_small, far) = market(&app).await;
    let enterprise_id = enterprise(&app).await;

    let candidates = financing(&app)
        .preview_matches(authed(
            pb::PreviewMatchesRequest {
                subject: Some(pb::preview_matches_request::Subject::Need(need(
                    &enterprise_id,
                    pb::Purpose::Payroll,
                ))),
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .expect("preview")
        .into_inner()
        .candidates;

    assert_eq!(candidates.len(), 6);
    let ranked: Vec<&str> = candidates[..4]
        .iter()
        .map(|c| c.lender_id.as_str())
        .collect();
    assert_eq!(
        ranked,
        eligible.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for (i, c) in candidates[..4].iter().enumerate() {
        assert!(c.eligible, "{c:?}");
        assert!(c.ineligible_reasons.is_empty());
        assert_eq!(c.factors.len(), 7);
        assert_eq!(c.factors.iter().map(|f| f.points).sum::<i32>(), c.score);
        assert_eq!(c.factors.iter().map(|f| f.weight_bps).sum::<i32>(), 10_000);
        assert!(c.factors.iter().all(|f| !f.note.is_empty()));
        assert_eq!(c.selected, i < 3, "the top three are selected");
        assert_eq!(c.lender_name, format!("Bank {i}"));
    }
    assert!(candidates[0].score > candidates[1].score);
    assert!(candidates[2].score > candidates[3].score);
    let reasons: HashMap<&str, Vec<i32>> = candidates[4..]
        .iter()
        .map(|c| {
            assert!(!c.eligible);
            assert!(!c.selected);
            assert_eq!(c.score, 0);
            assert!(c.factors.is_empty());
            (
                c.product_id.as_str(),
                c.ineligible_reasons.iter().map(|r| r.code).collect(),
            )
        })
        .collect();
    assert_eq!(
        reasons[too_small.as_str()],
        [pb::Ineligibility::AmountOutOfRange as i32]
    );
    assert_eq!(
        reasons[far.as_str()],
        [pb::Ineligibility::RegionNotServed as i32]
    );
    let db = database(&app).await;
    assert_eq!(count(&db, "SELECT count(*) FROM needs").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM referrals").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_routes_exactly_the_three_best_distinct_lenders_of_the_preview() {
    let app = TestApp::spawn().await;
    let (eligible, _, _) = market(&app).await;
    let enterprise_id = enterprise(&app).await;
    let wanted = need(&enterprise_id, pb::Purpose::Payroll);
    let preview = preview(&app, wanted.clone()).await.candidates;
    let selected: Vec<(String, i32)> = preview
        .iter()
        .filter(|c| c.selected)
        .map(|c| (c.product_id.clone(), c.score))
        .collect();

    let submitted = submit(&app, "submit-1", wanted).await.expect("submit");

    let need = submitted.need.unwrap();
    assert_eq!(need.status, pb::NeedStatus::Routed as i32);
    let routed: Vec<(String, i32)> = submitted
        .referrals
        .iter()
        .map(|r| (r.product_id.clone(), r.score))
        .collect();
    assert_eq!(routed, selected);
    let lenders: Vec<&str> = submitted
        .referrals
        .iter()
        .map(|r| r.lender_id.as_str())
        .collect();
    assert_eq!(lenders, [&eligible[0], &eligible[1], &eligible[2]]);
    for referral in &submitted.referrals {
        assert_eq!(referral.status, pb::ReferralStatus::Pending as i32);
        assert_eq!(referral.need_id, need.id);
        assert_eq!(referral.factors.len(), 7);
        let created = referral.create_time.unwrap().seconds;
        let deadline = referral.sla_deadline.unwrap().seconds;
        assert_eq!(
            deadline - created,
            48 * 3600,
            "deadline is the product's SLA"
        );
    }
    let stored = get_need(&app, &need.id).await;
    assert_eq!(stored.referrals.len(), 3);
    let db = database(&app).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM referral_events WHERE kind = 'CREATED'"
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &db,
            "SELECT coalesce(sum(referrals), 0)::int8 FROM product_daily_usage"
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_log WHERE rpc = 'finmatch.v1.FinancingService/SubmitNeed'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_returns_the_first_response_and_key_reuse_is_refused() {
    let app = TestApp::spawn().await;
    market(&app).await;
    let enterprise_id = enterprise(&app).await;
    let wanted = need(&enterprise_id, pb::Purpose::Payroll);

    let first = submit(&app, "key-1", wanted.clone()).await.unwrap();
    let again = submit(&app, "key-1", wanted.clone()).await.unwrap();
    assert_eq!(again, first);

    let mut other = wanted;
    other.amount_minor += 1;
    let reused = submit(&app, "key-1", other).await.unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition);
    assert_eq!(
        error_reason(&reused).as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );
    let db = database(&app).await;
    assert_eq!(count(&db, "SELECT count(*) FROM needs").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM referrals").await, 3);
}

/// A replay record holds SubmitNeed's answer in the service's own format (JSON an auditor can
/// read); a record this build cannot read (the protobuf bytes earlier builds wrote) counts as
/// purged: the retry is refused naming the need its key made, and no second need is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_record_is_the_first_answer_as_json_and_one_in_an_older_format_reads_as_expired() {
    let app = TestApp::spawn().await;
    market(&app).await;
    let enterprise_id = enterprise(&app).await;
    let wanted = need(&enterprise_id, pb::Purpose::Payroll);
    let first = submit(&app, "key-1", wanted.clone()).await.unwrap();
    let need_id = first.need.as_ref().unwrap().id.clone();

    let db = database(&app).await;
    let body: Vec<u8> = db
        .query_one(
            "SELECT response FROM idempotency_keys WHERE key = 'key-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let saved: serde_json::Value = serde_json::from_slice(&body).expect("a JSON replay record");
    assert_eq!(saved["need"]["id"], need_id.as_str());
    assert_eq!(
        saved["referrals"].as_array().map(Vec::len),
        Some(first.referrals.len())
    );

    // What an earlier build saved: the SubmitNeedResponse's protobuf bytes.
    let legacy = prost::Message::encode_to_vec(&first);
    db.execute(
        "UPDATE idempotency_keys SET response = $1 WHERE key = 'key-1'",
        &[&legacy],
    )
    .await
    .unwrap();
    let retry = submit(&app, "key-1", wanted).await.unwrap_err();
    assert_eq!(retry.code(), Code::FailedPrecondition, "{retry:?}");
    assert_eq!(
        error_reason(&retry).as_deref(),
        Some("IDEMPOTENCY_KEY_EXPIRED")
    );
    assert!(retry.message().contains(&need_id), "{}", retry.message());
    assert_eq!(count(&db, "SELECT count(*) FROM needs").await, 1);
}

/// Replay records older than the retention window go, in batches, each exactly once with two
/// replicas purging at once; a retry inside the window still replays, and a SubmitNeed key
/// whose record is gone is refused naming the need it made, never a second need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_records_past_retention_are_purged_once_and_an_expired_need_key_names_its_need() {
    // No background sweeps: the test purges itself, at the cutoff it chooses.
    let quiet = finmatch::config::ServerArgs {
        sweep_interval_secs: 3600,
        ..Default::default()
    };
    let app = TestApp::spawn_configured(quiet.clone()).await;
    let replica = app.replica_with(quiet).await;
    market(&app).await;
    let enterprise_id = enterprise(&app).await;
    let old = submit(&app, "old-key", need(&enterprise_id, pb::Purpose::Payroll))
        .await
        .unwrap();
    let recent_need = need(&enterprise_id, pb::Purpose::WorkingCapital);
    let recent = submit(&app, "recent-key", recent_need.clone())
        .await
        .unwrap();
    let db = database(&app).await;
    db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '31 days' WHERE key = 'old-key'",
        &[],
    )
    .await
    .unwrap();
    // Many more old records, stored directly (only their age matters): several batches' worth.
    let old_records = 2 * finmatch::service::financing::PURGE_BATCH + 500;
    db.execute(
        "INSERT INTO idempotency_keys (principal_id, rpc, key, request_hash, created_at) \
         SELECT gen_random_uuid(), 'finmatch.v1.FinancingService/SubmitNeed', 'k' || g, '\\x00', \
                now() - interval '40 days' \
         FROM generate_series(1, $1::bigint) g",
        &[&old_records],
    )
    .await
    .unwrap();

    let cutoff = Utc::now() - TimeDelta::days(30);
    let (a, b) = tokio::join!(
        app.app.purge_replay_records(cutoff),
        replica.app.purge_replay_records(cutoff)
    );
    assert_eq!(a.unwrap() + b.unwrap(), old_records as usize + 1);
    let keys: Vec<String> = db
        .query("SELECT key FROM idempotency_keys", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, vec!["recent-key".to_owned()]);

    assert_eq!(
        submit(&app, "recent-key", recent_need).await.unwrap(),
        recent,
        "inside the window a retry replays"
    );
    let expired = submit(&app, "old-key", need(&enterprise_id, pb::Purpose::Payroll))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::FailedPrecondition, "{expired:?}");
    assert_eq!(
        error_reason(&expired).as_deref(),
        Some("IDEMPOTENCY_KEY_EXPIRED")
    );
    let need_id = old.need.unwrap().id;
    assert!(
        expired.message().contains(&need_id),
        "{}",
        expired.message()
    );
    assert_eq!(count(&db, "SELECT count(*) FROM needs").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_need_for_the_same_purpose_is_already_exists_naming_the_first() {
    use tonic_types::StatusExt;
    let app = TestApp::spawn().await;
    market(&app).await;
    let enterprise_id = enterprise(&app).await;
    let first = submit(&app, "a", need(&enterprise_id, pb::Purpose::Payroll))
        .await
        .unwrap()
        .need
        .unwrap();

    let duplicate = submit(&app, "b", need(&enterprise_id, pb::Purpose::Payroll))
        .await
        .unwrap_err();

    assert_eq!(duplicate.code(), Code::AlreadyExists);
    assert_eq!(
        error_reason(&duplicate).as_deref(),
        Some("DUPLICATE_OPEN_NEED")
    );
    let info = duplicate.get_details_error_info().unwrap();
    assert_eq!(info.metadata["need_id"], first.id);
    assert!(duplicate.message().contains(&first.id));
    // Another purpose is a different need.
    let other = submit(&app, "c", need(&enterprise_id, pb::Purpose::Equipment))
        .await
        .unwrap();
    assert_eq!(other.need.unwrap().status, pb::NeedStatus::Routed as i32);
}

/// Calls made at the same time are stored together (group commit), and each still gets the outcome
/// it would get alone: a retry replays, a second need for an open purpose is refused, an unknown
/// enterprise is NOT_FOUND, and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_share_a_commit_and_each_gets_its_own_outcome() {
    let app = TestApp::spawn().await;
    market(&app).await;
    let mut owners = Vec::new();
    for _ in 0..40 {
        owners.push(enterprise(&app).await);
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    // 40 new needs; a retry of need 0 (same key and body); another key for need 1's purpose; an
    // unknown enterprise.
    let mut calls: Vec<(String, pb::Need)> = owners
        .iter()
        .enumerate()
        .map(|(i, owner)| (format!("group-{i}"), need(owner, pb::Purpose::Payroll)))
        .collect();
    calls.push(("group-0".into(), need(&owners[0], pb::Purpose::Payroll)));
    calls.push((
        "group-1-again".into(),
        need(&owners[1], pb::Purpose::Payroll),
    ));
    calls.push(("group-unknown".into(), need(&unknown, pb::Purpose::Payroll)));
    let results = futures::future::join_all(
        calls
            .iter()
            .map(|(key, need)| submit(&app, key, need.clone())),
    )
    .await;

    for (i, result) in results[..40].iter().enumerate().filter(|(i, _)| *i != 1) {
        let submitted = result.as_ref().unwrap_or_else(|e| panic!("need {i}: {e}"));
        assert_eq!(submitted.need.as_ref().unwrap().enterprise_id, owners[i]);
        assert_eq!(submitted.referrals.len(), 3, "need {i}");
    }
    assert_eq!(results[40].as_ref().unwrap(), results[0].as_ref().unwrap());
    // Whichever of the two calls for need 1's purpose came second was refused.
    let second = results[1].as_ref().err().or(results[41].as_ref().err());
    let first = if results[1].is_ok() {
        &results[1]
    } else {
        &results[41]
    };
    assert!(first.is_ok(), "one of the two calls stores the need");
    assert!(
        results[1].is_err() != results[41].is_err(),
        "exactly one is refused"
    );
    let refused = second.unwrap();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert_eq!(
        error_reason(refused).as_deref(),
        Some("DUPLICATE_OPEN_NEED")
    );
    assert_eq!(results[42].as_ref().unwrap_err().code(), Code::NotFound);

    let db = database(&app).await;
    assert_eq!(count(&db, "SELECT count(*) FROM needs").await, 40);
    assert_eq!(count(&db, "SELECT count(*) FROM referrals").await, 120);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_log WHERE rpc = 'finmatch.v1.FinancingService/SubmitNeed'"
        )
        .await,
        40
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM idempotency_keys \
             WHERE rpc = 'finmatch.v1.FinancingService/SubmitNeed'"
        )
        .await,
        40
    );
    // Rows written by one transaction share its id: fewer transactions than needs means calls
    // were stored together.
    let transactions = count(&db, "SELECT count(DISTINCT xmin::text) FROM needs").await;
    assert!(
        transactions < 40,
        "{transactions} transactions for 40 needs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn need_without_consent_is_stored_but_never_routed() {
    let app = TestApp::spawn().await;
    market(&app).await;
    let enterprise_id = enterprise(&app).await;
    let mut private = need(&enterprise_id, pb::Purpose::Payroll);
    private.consent_to_share = false;

    let submitted = submit(&app, "private", private).await.unwrap();

    let stored = submitted.need.unwrap();
    assert_eq!(stored.status, pb::NeedStatus::Submitted as i32);
    assert!(submitted.referrals.is_empty());
    assert!(get_need(&app, &stored.id).await.referrals.is_empty());
    let preview = financing(&app)
        .preview_matches(authed(
            pb::PreviewMatchesRequest {
                subject: Some(pb::preview_matches_request::Subject::NeedId(
                    stored.id.clone(),
                )),
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .candidates;
    assert_eq!(preview.len(), 6);
    assert!(preview.iter().all(|c| {
        !c.eligible
            && !c.selected
            && c.ineligible_reasons
                .iter()
                .any(|r| r.code == pb::Ineligibility::NoConsent as i32)
    }));
    let reroute = financing(&app)
        .reroute_need(authed(
            pb::RerouteNeedRequest {
                need_id: stored.id,
                target_open_referrals: None,
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(reroute.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&reroute).as_deref(), Some("NO_CONSENT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_every_bad_field_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let bad = pb::Need {
        enterprise_id: "not-a-uuid".into(),
        amount_minor: 0,
        term_months: 0,
        purpose: 0,
        collateral: vec![],
        max_rate_bps: Some(-5),
        needed_by: "2020-13-01".into(),
        channel: 0,
        ..Default::default()
    };

    let status = submit(&app, "", bad).await.unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        [
            "idempotency_key",
            "need.amount_minor",
            "need.channel",
            "need.collateral",
            "need.enterprise_id",
            "need.max_rate_bps",
            "need.needed_by",
            "need.purpose",
            "need.term_months",
        ]
    );
    let unknown = submit(
        &app,
        "k",
        need("7b0e4f4c-6f1b-4c55-9a3e-2f3f1f0c9d11", pb::Purpose::Payroll),
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let db = database(&app).await;
    assert_eq!(count(&db, "SELECT count(*) FROM needs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenders_cannot_use_the_financing_service() {
    let app = TestApp::spawn().await;
    let (lender_id, _) = lender(&app, "Bank", OFFER).await;
    let token = app
        .token(Role::Lender, Some(lender_id.parse().unwrap()))
        .await;
    let status = financing(&app)
        .list_needs(authed(pb::ListNeedsRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_equal_lenders_share_fifty_needs_evenly() {
    let app = TestApp::spawn().await;
    let mut lenders = Vec::new();
    for i in 0..5 {
        lenders.push(lender(&app, &format!("Equal Bank {i}"), OFFER).await.0);
    }
    let mut shares: BTreeMap<String, usize> = lenders.iter().map(|l| (l.clone(), 0)).collect();

    for i in 0..50 {
        let enterprise_id = enterprise(&app).await;
        let submitted = submit(
            &app,
            &format!("even-{i}"),
            need(&enterprise_id, pb::Purpose::WorkingCapital),
        )
        .await
        .unwrap();
        assert_eq!(submitted.referrals.len(), 3);
        for referral in submitted.referrals {
            *shares.get_mut(&referral.lender_id).unwrap() += 1;
        }
    }

    // 50 needs × 3 referrals over 5 lenders: 30 each.
    for (lender, share) in &shares {
        assert!(
            (29..=31).contains(share),
            "{lender} got {share}: {shares:?}"
        );
    }
    assert_eq!(shares.values().sum::<usize>(), 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_never_exceed_a_products_daily_capacity() {
    let app = TestApp::spawn().await;
    // Two servers, each with its own connection and its own cached usage, race for one product.
    let replica = app.replica().await;
    let (tight, tight_product) = lender(
        &app,
        "Tight Bank",
        Offer {
            daily_capacity: 5,
            ..OFFER
        },
    )
    .await;
    let mut owners = Vec::new();
    for _ in 0..24 {
        owners.push(enterprise(&app).await);
    }

    let keys: Vec<String> = (0..owners.len()).map(|i| format!("cap-{i}")).collect();
    let submits = owners
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(i, (owner, key))| {
            let server = if i % 2 == 0 { &app } else { &replica };
            submit(server, key, need(owner, pb::Purpose::Payroll))
        });
    let results = futures::future::join_all(submits).await;

    let mut routed = 0;
    let mut unmatched = Vec::new();
    for result in results {
        let submitted = result.expect("submit");
        let status = submitted.need.as_ref().unwrap().status;
        if status == pb::NeedStatus::Routed as i32 {
            routed += 1;
            assert_eq!(submitted.referrals[0].lender_id, tight);
        } else {
            assert_eq!(status, pb::NeedStatus::Unmatched as i32);
            assert!(submitted.referrals.is_empty());
            unmatched.push(submitted.need.unwrap().id);
        }
    }
    assert_eq!((routed, unmatched.len()), (5, 19));
    // A server that has not seen the race reads today's usage afresh.
    let fresh = app.replica().await;
    let preview = financing(&fresh)
        .preview_matches(authed(
            pb::PreviewMatchesRequest {
                subject: Some(pb::preview_matches_request::Subject::NeedId(
                    unmatched[0].clone(),
                )),
                ..Default::default()
            },
            &fresh.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .candidates;
    assert_eq!(preview[0].product_id, tight_product);
    assert_eq!(
        preview[0]
            .ineligible_reasons
            .iter()
            .map(|r| r.code)
            .collect::<Vec<_>>(),
        [pb::Ineligibility::CapacityExhausted as i32]
    );
}

/// Another replica (here: a statement) fills the best product after this server read today's
/// usage: SubmitNeed's one-statement write finds it full, is undone as a whole, and the need is
/// routed again without it. The other product is counted once, not once per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_filled_after_the_usage_was_read_is_replaced_and_nothing_is_counted_twice() {
    let app = TestApp::spawn().await;
    let (_, tight_product) = lender(
        &app,
        "Tight Bank",
        Offer {
            min_rate_bps: 300,
            max_rate_bps: 320,
            daily_capacity: 1,
            ..OFFER
        },
    )
    .await;
    let (roomy, roomy_product) = lender(&app, "Roomy Bank", OFFER).await;
    let owner = enterprise(&app).await;
    let wanted = need(&owner, pb::Purpose::Payroll);
    // The preview reads today's usage into the server's cache: the tight product is the best.
    let preview = preview(&app, wanted.clone()).await;
    assert_eq!(preview.candidates[0].product_id, tight_product);
    assert!(preview.candidates[0].selected && preview.candidates[1].selected);

    let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // The bureau's business day (FINMATCH_TIME_ZONE, Asia/Shanghai by default) counts capacity.
    let today = "(now() AT TIME ZONE 'Asia/Shanghai')::date";
    db.execute(
        &format!(
            "INSERT INTO product_daily_usage (product_id, day, referrals) \
             VALUES ($1::text::uuid, {today}, 1)"
        ),
        &[&tight_product],
    )
    .await
    .unwrap();

    let submitted = submit(&app, "filled-meanwhile", wanted).await.unwrap();
    assert_eq!(
        submitted.need.unwrap().status,
        pb::NeedStatus::Routed as i32
    );
    let routed: Vec<_> = submitted
        .referrals
        .iter()
        .map(|r| (r.lender_id.clone(), r.product_id.clone()))
        .collect();
    assert_eq!(routed, [(roomy, roomy_product.clone())]);
    let usage = db
        .query(
            &format!(
                "SELECT product_id::text, referrals FROM product_daily_usage \
                 WHERE day = {today} ORDER BY referrals, product_id"
            ),
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i32>(1)))
        .collect::<BTreeMap<_, _>>();
    assert_eq!(
        usage,
        BTreeMap::from([(tight_product, 1), (roomy_product, 1)])
    );
}

fn import_item(key: String, need: pb::Need) -> pb::ImportNeedsRequest {
    pb::ImportNeedsRequest {
        idempotency_key: key,
        need: Some(need),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_accepts_good_items_reports_bad_ones_and_a_repeat_adds_nothing() {
    let app = TestApp::spawn().await;
    lender(&app, "Import Bank", OFFER).await;
    let purposes = [
        pb::Purpose::WorkingCapital,
        pb::Purpose::Payroll,
        pb::Purpose::RawMaterials,
        pb::Purpose::Equipment,
        pb::Purpose::Expansion,
        pb::Purpose::Conversion,
        pb::Purpose::Refinancing,
    ];
    let mut enterprises = Vec::new();
    for _ in 0..29 {
        enterprises.push(enterprise(&app).await);
    }
    let mut items = Vec::new();
    for i in 0..200 {
        let owner = &enterprises[i / purposes.len()];
        items.push(import_item(
            format!("row-{i}"),
            need(owner, purposes[i % purposes.len()]),
        ));
    }
    let mut zero = need(&enterprises[28], pb::Purpose::Refinancing);
    zero.amount_minor = 0;
    items.insert(17, import_item("row-bad-amount".into(), zero));
    items.insert(
        150,
        import_item(
            "row-bad-enterprise".into(),
            need("7b0e4f4c-6f1b-4c55-9a3e-2f3f1f0c9d11", pb::Purpose::Payroll),
        ),
    );

    let first = import(&app, items.clone()).await;

    assert_eq!((first.accepted, first.replayed), (200, 0));
    assert_eq!(first.rejected.len(), 2);
    let bad_amount = &first.rejected[0];
    assert_eq!(
        (bad_amount.index, bad_amount.idempotency_key.as_str()),
        (17, "row-bad-amount")
    );
    let error = bad_amount.error.as_ref().unwrap();
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert_eq!(error.field_violations[0].field, "need.amount_minor");
    let bad_enterprise = &first.rejected[1];
    assert_eq!(bad_enterprise.index, 150);
    assert_eq!(
        bad_enterprise.error.as_ref().unwrap().code,
        Code::NotFound as i32
    );

    let again = import(&app, items).await;
    assert_eq!((again.accepted, again.replayed), (0, 200));
    assert_eq!(again.rejected.len(), 2);
    let db = database(&app).await;
    assert_eq!(count(&db, "SELECT count(*) FROM needs").await, 200);
    assert_eq!(
        count(&db, "SELECT count(*) FROM needs WHERE status = 'ROUTED'").await,
        200
    );
    let listed = financing(&app)
        .list_needs(authed(
            pb::ListNeedsRequest {
                page_size: 1000,
                statuses: vec![pb::NeedStatus::Routed as i32],
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.needs.len(), 200);
    assert_eq!(listed.next_page_token, "");
}

/// The response lists each stored item with its need and the status it was stored in, so a
/// client can tell routed needs from UNMATCHED ones and from those kept back for want of consent;
/// a repeat of the stream lists the same needs, replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_lists_each_stored_item_with_its_need_and_status() {
    let app = TestApp::spawn().await;
    lender(&app, "Import Bank", OFFER).await;
    let routed = need(&enterprise(&app).await, pb::Purpose::Payroll);
    let mut unmatched = need(&enterprise(&app).await, pb::Purpose::Payroll);
    unmatched.amount_minor = OFFER.max_amount_minor * 5; // above every product's range
    let mut private = need(&enterprise(&app).await, pb::Purpose::Payroll);
    private.consent_to_share = false;
    let mut invalid = need(&enterprise(&app).await, pb::Purpose::Payroll);
    invalid.term_months = 0;
    let items = vec![
        import_item("routed".into(), routed.clone()),
        import_item("unmatched".into(), unmatched),
        import_item("invalid".into(), invalid),
        import_item("private".into(), private),
        import_item("routed".into(), routed),
    ];

    let first = import(&app, items.clone()).await;
    assert_eq!(
        (first.accepted, first.replayed, first.rejected_total),
        (3, 1, 1)
    );
    assert_eq!(
        (first.routed, first.unmatched, first.unrouted),
        (2, 1, 1),
        "the repeated key counts as the need it replays"
    );
    let listed: Vec<(i64, i32, bool)> = first
        .stored
        .iter()
        .map(|s| (s.index, s.status, s.replayed))
        .collect();
    assert_eq!(
        listed,
        [
            (0, pb::NeedStatus::Routed as i32, false),
            (1, pb::NeedStatus::Unmatched as i32, false),
            (3, pb::NeedStatus::Submitted as i32, false),
            (4, pb::NeedStatus::Routed as i32, true),
        ]
    );
    assert_eq!(first.stored[0].need_id, first.stored[3].need_id);
    let db = database(&app).await;
    for stored in &first.stored {
        let status = db
            .query_one(
                "SELECT status FROM needs WHERE id = $1::text::uuid",
                &[&stored.need_id],
            )
            .await
            .unwrap()
            .get::<_, String>(0);
        assert_eq!(
            format!("NEED_STATUS_{status}"),
            pb::NeedStatus::try_from(stored.status)
                .unwrap()
                .as_str_name()
        );
    }

    let again = import(&app, items).await;
    assert_eq!((again.accepted, again.replayed), (0, 4));
    assert_eq!((again.routed, again.unmatched, again.unrouted), (2, 1, 1));
    assert!(again.stored.iter().all(|s| s.replayed));
    let ids = |r: &pb::ImportNeedsResponse| {
        r.stored
            .iter()
            .map(|s| (s.index, s.need_id.clone(), s.status))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&again), ids(&first));
}

/// A wave of import items is written in one statement only when every item can be stored as
/// SubmitNeed would store it. Here another server (a statement) fills a product after this one
/// read today's usage, so the wave's statement finds too little room and is undone, and the
/// items are stored one by one; an item whose enterprise already holds an open need of that
/// purpose is left out of the wave and refused. Each gets SubmitNeed's outcome, usage counted
/// once per referral.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_wave_that_cannot_be_stored_whole_is_stored_item_by_item() {
    let app = TestApp::spawn().await;
    let (small, small_product) = lender(
        &app,
        "Small Bank",
        Offer {
            daily_capacity: 5,
            ..OFFER
        },
    )
    .await;
    lender(&app, "Big Bank", OFFER).await;
    let mut owners = Vec::new();
    for _ in 0..6 {
        owners.push(enterprise(&app).await);
    }
    let db = database(&app).await;
    let small_referrals = || {
        let sql = format!("SELECT count(*) FROM referrals WHERE lender_id = '{small}'");
        let db = &db;
        async move { count(db, &sql).await }
    };

    // The usage this server caches says the small product is empty; it has room for one.
    let preview = financing(&app)
        .preview_matches(authed(
            pb::PreviewMatchesRequest {
                subject: Some(pb::preview_matches_request::Subject::Need(need(
                    &owners[0],
                    pb::Purpose::Payroll,
                ))),
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(preview.candidates.iter().all(|c| c.eligible && c.selected));
    db.execute(
        "INSERT INTO product_daily_usage (product_id, day, referrals) \
         VALUES ($1::text::uuid, (now() AT TIME ZONE 'Asia/Shanghai')::date, 4)",
        &[&small_product],
    )
    .await
    .unwrap();
    let items: Vec<_> = owners[..3]
        .iter()
        .enumerate()
        .map(|(i, owner)| import_item(format!("full-{i}"), need(owner, pb::Purpose::Payroll)))
        .collect();
    let report = import(&app, items).await;
    assert_eq!((report.accepted, report.rejected_total), (3, 0));
    assert_eq!(small_referrals().await, 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM needs WHERE status = 'ROUTED'").await,
        3
    );
    assert_eq!(
        count(&db, "SELECT sum(referrals)::int8 FROM product_daily_usage").await,
        4 + 1 + 3
    );

    // An enterprise with an open need of the purpose, in a wave of new ones.
    submit(&app, "before", need(&owners[5], pb::Purpose::Equipment))
        .await
        .unwrap();
    let items: Vec<_> = owners[3..]
        .iter()
        .enumerate()
        .map(|(i, owner)| import_item(format!("dup-{i}"), need(owner, pb::Purpose::Equipment)))
        .collect();
    let report = import(&app, items).await;
    assert_eq!(
        (report.accepted, report.replayed, report.rejected_total),
        (2, 0, 1)
    );
    let duplicate = &report.rejected[0];
    assert_eq!(duplicate.index, 2);
    let error = duplicate.error.as_ref().unwrap();
    assert_eq!(error.code, Code::AlreadyExists as i32);
    assert_eq!(error.reason, "DUPLICATE_OPEN_NEED");
    assert_eq!(
        count(&db, "SELECT count(*) FROM needs WHERE status = 'ROUTED'").await,
        6
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_log WHERE entity_type = 'need'"
        )
        .await,
        6
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM referrals").await,
        count(&db, "SELECT sum(referrals)::int8 FROM product_daily_usage").await - 4
    );
}

async fn import(app: &TestApp, items: Vec<pb::ImportNeedsRequest>) -> pb::ImportNeedsResponse {
    financing(app)
        .import_needs(authed(tokio_stream::iter(items), &app.operator))
        .await
        .expect("import")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_needs_pages_and_filters() {
    let app = TestApp::spawn().await;
    let first = enterprise(&app).await;
    let second = enterprise(&app).await;
    for (i, purpose) in [
        pb::Purpose::Payroll,
        pb::Purpose::Equipment,
        pb::Purpose::Expansion,
    ]
    .into_iter()
    .enumerate()
    {
        submit(&app, &format!("l-{i}"), need(&first, purpose))
            .await
            .unwrap();
    }
    submit(&app, "l-x", need(&second, pb::Purpose::Payroll))
        .await
        .unwrap();
    let mut client = financing(&app);
    let page = |token: String| pb::ListNeedsRequest {
        page_size: 2,
        page_token: token,
        enterprise_id: first.clone(),
        ..Default::default()
    };
    let one = client
        .list_needs(authed(page(String::new()), &app.operator))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.needs.len(), 2);
    assert_ne!(one.next_page_token, "");
    let two = client
        .list_needs(authed(page(one.next_page_token), &app.operator))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(two.needs.len(), 1);
    assert_eq!(two.next_page_token, "");
    assert!(two.needs.iter().all(|n| n.enterprise_id == first));
    // No lenders: every need is UNMATCHED.
    let unmatched = client
        .list_needs(authed(
            pb::ListNeedsRequest {
                statuses: vec![pb::NeedStatus::Unmatched as i32],
                region_prefix: "4213".into(),
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unmatched.needs.len(), 4);
    let bad = client
        .list_needs(authed(
            pb::ListNeedsRequest {
                page_size: -1,
                statuses: vec![0],
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["page_size", "statuses[0]"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_a_need_cancels_its_open_referrals() {
    let app = TestApp::spawn().await;
    market(&app).await;
    let enterprise_id = enterprise(&app).await;
    let submitted = submit(&app, "w", need(&enterprise_id, pb::Purpose::Payroll))
        .await
        .unwrap();
    let id = submitted.need.unwrap().id;
    let withdraw = || {
        let mut client = financing(&app);
        let request = authed(
            pb::WithdrawNeedRequest {
                need_id: id.clone(),
                reason: "financed by a shareholder loan".into(),
            },
            &app.operator,
        );
        async move { client.withdraw_need(request).await }
    };

    let withdrawn = withdraw().await.unwrap().into_inner();

    assert_eq!(
        withdrawn.need.as_ref().unwrap().status,
        pb::NeedStatus::Withdrawn as i32
    );
    assert_eq!(withdrawn.referrals.len(), 3);
    assert!(
        withdrawn
            .referrals
            .iter()
            .all(|r| r.status == pb::ReferralStatus::Cancelled as i32)
    );
    let again = withdraw().await.unwrap().into_inner();
    assert_eq!(again.need, withdrawn.need);
    let db = database(&app).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM referral_events WHERE kind = 'CANCELLED'"
        )
        .await,
        3
    );
    // The purpose is free again.
    let next = submit(&app, "w2", need(&enterprise_id, pb::Purpose::Payroll))
        .await
        .unwrap();
    assert_eq!(next.need.unwrap().status, pb::NeedStatus::Routed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_expires_an_overdue_referral_and_routes_the_need_to_a_fourth_lender() {
    let app = TestApp::spawn().await;
    let mut lenders = Vec::new();
    // The cheapest bank answers within a day; the others have three.
    for (i, (rate, sla)) in [(300, 24), (340, 72), (380, 72), (420, 72)]
        .into_iter()
        .enumerate()
    {
        let offer = Offer {
            min_rate_bps: rate,
            max_rate_bps: rate + 100,
            response_sla_hours: sla,
            ..OFFER
        };
        lenders.push(lender(&app, &format!("Bank {i}"), offer).await.0);
    }
    let enterprise_id = enterprise(&app).await;
    let submitted = submit(&app, "s", need(&enterprise_id, pb::Purpose::Payroll))
        .await
        .unwrap();
    let id = submitted.need.unwrap().id;
    let first: Vec<&str> = submitted
        .referrals
        .iter()
        .map(|r| r.lender_id.as_str())
        .collect();
    assert_eq!(first, [&lenders[0], &lenders[1], &lenders[2]]);

    let report = app
        .app
        .sweep_once(Utc::now() + TimeDelta::hours(25))
        .await
        .expect("sweep");

    assert_eq!(
        (report.expired_referrals, report.rerouted_referrals),
        (1, 1)
    );
    let stored = get_need(&app, &id).await;
    assert_eq!(stored.need.unwrap().status, pb::NeedStatus::Routed as i32);
    let statuses: Vec<(&str, i32)> = stored
        .referrals
        .iter()
        .map(|r| (r.lender_id.as_str(), r.status))
        .collect();
    assert_eq!(statuses.len(), 4);
    assert!(statuses.contains(&(lenders[0].as_str(), pb::ReferralStatus::Expired as i32)));
    assert!(statuses.contains(&(lenders[3].as_str(), pb::ReferralStatus::Pending as i32)));
    let db = database(&app).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM referral_events WHERE kind = 'EXPIRED'"
        )
        .await,
        1
    );
    // Nothing more is overdue at that time.
    let quiet = app
        .app
        .sweep_once(Utc::now() + TimeDelta::hours(25))
        .await
        .unwrap();
    assert_eq!(quiet.expired_referrals, 0);
    // Once every lender has been tried and the rest expire, the need is UNMATCHED.
    let late = app
        .app
        .sweep_once(Utc::now() + TimeDelta::hours(200))
        .await
        .unwrap();
    assert_eq!((late.expired_referrals, late.unmatched_needs), (3, 1));
    let stored = get_need(&app, &id).await;
    assert_eq!(
        stored.need.unwrap().status,
        pb::NeedStatus::Unmatched as i32
    );
    // UNMATCHED is final: it is neither re-routed nor withdrawn.
    let mut client = FinancingServiceClient::new(app.channel.clone());
    let status = client
        .reroute_need(authed(
            pb::RerouteNeedRequest {
                need_id: id.clone(),
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&status).as_deref(), Some("ILLEGAL_TRANSITION"));
    let status = client
        .withdraw_need(authed(
            pb::WithdrawNeedRequest {
                need_id: id.clone(),
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sweeping_at_once_handle_each_expired_referral_exactly_once() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    for i in 0..6 {
        lender(
            &app,
            &format!("Bank {i}"),
            Offer {
                min_rate_bps: 300 + 40 * i,
                max_rate_bps: 400 + 40 * i,
                response_sla_hours: 24,
                ..OFFER
            },
        )
        .await;
    }
    // More needs than one sweep batch, so each replica goes through several batches and the
    // two interleave.
    const NEEDS: i64 = 130;
    let mut items = Vec::new();
    for i in 0..NEEDS {
        let enterprise_id = enterprise(&app).await;
        items.push(import_item(
            format!("r-{i}"),
            need(&enterprise_id, pb::Purpose::Payroll),
        ));
    }
    assert_eq!(import(&app, items).await.accepted, NEEDS);
    let at = Utc::now() + TimeDelta::hours(25);

    let (a, b) = tokio::join!(app.app.sweep_once(at), replica.app.sweep_once(at));

    let (a, b) = (a.unwrap(), b.unwrap());
    let overdue = 3 * NEEDS as usize;
    assert_eq!(a.expired_referrals + b.expired_referrals, overdue);
    assert_eq!(a.rerouted_referrals + b.rerouted_referrals, overdue);
    let db = database(&app).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM (SELECT referral_id FROM referral_events WHERE kind = 'EXPIRED' \
             GROUP BY referral_id HAVING count(*) = 1) once"
        )
        .await,
        3 * NEEDS
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM referral_events WHERE kind = 'EXPIRED'"
        )
        .await,
        3 * NEEDS
    );
    // Every need now has its three replacements: six referrals, six distinct lenders.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM (SELECT need_id FROM referrals GROUP BY need_id \
             HAVING count(*) = 6 AND count(DISTINCT lender_id) = 6 \
             AND count(*) FILTER (WHERE status = 'PENDING') = 3) full_needs"
        )
        .await,
        NEEDS
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM needs WHERE routing_attempts = 6").await,
        NEEDS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reroute_adds_lenders_up_to_the_target_and_a_retry_adds_nothing() {
    let app = TestApp::spawn().await;
    let (eligible, _, _) = market(&app).await;
    let enterprise_id = enterprise(&app).await;
    let id = submit(&app, "rr", need(&enterprise_id, pb::Purpose::Payroll))
        .await
        .unwrap()
        .need
        .unwrap()
        .id;
    let reroute = |target| {
        let mut client = financing(&app);
        let request = authed(
            pb::RerouteNeedRequest {
                need_id: id.clone(),
                target_open_referrals: Some(target),
            },
            &app.operator,
        );
        async move { client.reroute_need(request).await }
    };

    let more = reroute(4).await.unwrap().into_inner();
    assert_eq!(more.referrals.len(), 1);
    assert_eq!(more.referrals[0].lender_id, eligible[3]);
    let retry = reroute(4).await.unwrap().into_inner();
    assert!(retry.referrals.is_empty());
    assert_eq!(retry.need.unwrap().status, pb::NeedStatus::Routed as i32);

    let portal = app.token(Role::Portal, None).await;
    let denied = financing(&app)
        .reroute_need(authed(
            pb::RerouteNeedRequest {
                need_id: id.clone(),
                target_open_referrals: None,
            },
            &portal,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_expires_a_need_past_needed_by_and_it_can_no_longer_be_withdrawn() {
    let app = TestApp::spawn().await;
    market(&app).await;
    let enterprise_id = enterprise(&app).await;
    let mut urgent = need(&enterprise_id, pb::Purpose::Payroll);
    urgent.needed_by = finmatch::domain::BureauCalendar::default()
        .today()
        .format("%Y-%m-%d")
        .to_string();
    let id = submit(&app, "urgent", urgent)
        .await
        .unwrap()
        .need
        .unwrap()
        .id;

    let report = app
        .app
        .sweep_once(Utc::now() + TimeDelta::days(2))
        .await
        .unwrap();

    assert_eq!(report.expired_needs, 1);
    let stored = get_need(&app, &id).await;
    assert_eq!(stored.need.unwrap().status, pb::NeedStatus::Expired as i32);
    assert_eq!(stored.referrals.len(), 3);
    assert!(
        stored
            .referrals
            .iter()
            .all(|r| r.status == pb::ReferralStatus::Cancelled as i32)
    );
    let refused = financing(&app)
        .withdraw_need(authed(
            pb::WithdrawNeedRequest {
                need_id: id,
                reason: String::new(),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        error_reason(&refused).as_deref(),
        Some("ILLEGAL_TRANSITION")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_need_shows_what_was_disbursed_on_each_referral() {
    let app = TestApp::spawn().await;
    market(&app).await;
    let enterprise_id = enterprise(&app).await;
    let submitted = submit(&app, "d", need(&enterprise_id, pb::Purpose::Payroll))
        .await
        .unwrap();
    let referral = &submitted.referrals[0];
    let db = database(&app).await;
    // What PartnerService will write when the lender approves and disburses.
    db.batch_execute(&format!(
        "UPDATE referrals SET status = 'APPROVED', approved_amount_minor = 300000000, \
         approved_rate_bps = 385, approved_term_months = 12 WHERE id = '{id}';
         INSERT INTO disbursements (referral_id, need_id, lender_id, loan_reference, amount_minor, \
           rate_bps, term_months, disbursed_on) \
         SELECT id, need_id, lender_id, ref, 100000000, 385, 12, '2026-12-01' FROM referrals, \
           (VALUES ('L-1'), ('L-2')) AS refs (ref) WHERE id = '{id}';",
        id = referral.id
    ))
    .await
    .unwrap();

    let stored = get_need(&app, &submitted.need.unwrap().id).await;

    let disbursed: HashMap<&str, i64> = stored
        .referrals
        .iter()
        .map(|r| (r.id.as_str(), r.disbursed_minor))
        .collect();
    assert_eq!(disbursed[referral.id.as_str()], 200_000_000);
    assert_eq!(disbursed.values().sum::<i64>(), 200_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_deactivated_on_another_replica_is_not_routed_to() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    let (eligible, _, _) = market(&app).await;
    let enterprise_id = enterprise(&app).await;
    let preview = |app: &TestApp| {
        let mut client = financing(app);
        let request = authed(
            pb::PreviewMatchesRequest {
                subject: Some(pb::preview_matches_request::Subject::Need(need(
                    &enterprise_id,
                    pb::Purpose::Payroll,
                ))),
                ..Default::default()
            },
            &app.operator,
        );
        async move { client.preview_matches(request).await.unwrap().into_inner() }
    };
    // Both replicas have loaded their catalogs.
    assert_eq!(preview(&app).await.candidates.len(), 6);
    assert_eq!(preview(&replica).await.candidates.len(), 6);
    let cheapest = preview(&app).await.candidates[0].clone();
    assert_eq!(cheapest.lender_id, eligible[0]);

    LenderServiceClient::new(replica.channel.clone())
        .update_product(authed(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: cheapest.product_id.clone(),
                    active: Some(false),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["active".into()],
                }),
            },
            &replica.operator,
        ))
        .await
        .expect("deactivate the product on the replica");

    // Routing checks in SQL that a product and its lender are active, so a need submitted on
    // this replica right after the change is never routed to it, whether or not this replica's
    // catalog has heard of the change yet.
    let submitted = submit(&app, "after", need(&enterprise_id, pb::Purpose::Payroll))
        .await
        .unwrap();
    let lenders: Vec<&str> = submitted
        .referrals
        .iter()
        .map(|r| r.lender_id.as_str())
        .collect();
    assert_eq!(lenders, [&eligible[1], &eligible[2], &eligible[3]]);
    // Previews read this replica's cached catalog, which the change's notification refreshes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let stale = loop {
        let after = preview(&app).await.candidates;
        let stale = after
            .into_iter()
            .find(|c| c.product_id == cheapest.product_id)
            .unwrap();
        if !stale.eligible || std::time::Instant::now() > deadline {
            break stale;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(!stale.eligible);
    assert_eq!(
        stale.ineligible_reasons[0].code,
        pb::Ineligibility::ProductInactive as i32
    );
}

/// Waits until `app`'s catalog is trusted (its product listener live) or not.
async fn catalog_trusted(app: &TestApp, trusted: bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.app.catalog_trusted() != trusted {
        assert!(
            std::time::Instant::now() < deadline,
            "the catalog did not become {} within 10 s",
            if trusted { "trusted" } else { "distrusted" }
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_product_listener_is_cut_sees_changes_at_once_then_listens_again() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    let (eligible, _, _) = market(&app).await;
    let enterprise_id = enterprise(&app).await;
    let preview = |app: &TestApp| {
        let mut client = financing(app);
        let request = authed(
            pb::PreviewMatchesRequest {
                subject: Some(pb::preview_matches_request::Subject::Need(need(
                    &enterprise_id,
                    pb::Purpose::Payroll,
                ))),
                ..Default::default()
            },
            &app.operator,
        );
        async move { client.preview_matches(request).await.unwrap().into_inner() }
    };
    let set_active = |active: bool, product_id: String| {
        let mut client = LenderServiceClient::new(replica.channel.clone());
        let request = authed(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: product_id,
                    active: Some(active),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["active".into()],
                }),
            },
            &replica.operator,
        );
        async move { client.update_product(request).await.unwrap() }
    };
    catalog_trusted(&app, true).await;
    let cheapest = preview(&app).await.candidates[0].clone();
    assert_eq!(cheapest.lender_id, eligible[0]);
    assert!(cheapest.eligible);

    // Both replicas' listening connections die.
    let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let terminated = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            &[&finmatch::service::catalog::PRODUCT_LISTENER_NAME],
        )
        .await
        .unwrap();
    assert_eq!(terminated.len(), 2, "one product listener per replica");
    catalog_trusted(&app, false).await;

    // A change made on the other replica while this one hears nothing is seen by this one's
    // very next call: untrusted, the catalog is checked against the database's version.
    set_active(false, cheapest.product_id.clone()).await;
    let seen = preview(&app).await.candidates;
    let product = seen
        .iter()
        .find(|c| c.product_id == cheapest.product_id)
        .unwrap();
    assert!(!product.eligible, "the change is seen at once");

    // The listener reconnects, reloads and is trusted again; the notification path then carries
    // the next change.
    catalog_trusted(&app, true).await;
    set_active(true, cheapest.product_id.clone()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let back = preview(&app).await.candidates;
        if back[0].product_id == cheapest.product_id && back[0].eligible {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reactivation was not heard within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(app.app.catalog_trusted());
}
