//! PartnerService: two partner banks against one (or two replicas of one) server.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use finmatch::domain::{
    Channel, Collateral, NeedStatus, Purpose, ReferralEventKind, ReferralStatus, Role,
};
use finmatch::proto as pb;
use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;
use finmatch::proto::financing_service_client::FinancingServiceClient;
use finmatch::proto::lender_service_client::LenderServiceClient;
use finmatch::proto::partner_service_client::PartnerServiceClient;
use finmatch::proto::watch_referrals_response::Payload;
use finmatch::storage;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{TestApp, authed, error_reason, violated_fields};

/// Every product in these tests: 1 to 10,000,000 yuan, 300 to 600 bps, 6 to 36 months.
const MIN_RATE_BPS: i32 = 300;
const MAX_RATE_BPS: i32 = 600;

/// A bank with one product and a token.
struct Bank {
    lender_id: Uuid,
    product_id: Uuid,
    token: String,
}

/// A need and its referrals, one per bank it was routed to.
struct Routed {
    need_id: Uuid,
    referrals: Vec<Uuid>,
}

async fn bank(app: &TestApp, name: &str) -> Bank {
    bank_up_to(app, name, 1_000_000_000).await
}

/// A bank whose product takes needs up to `max_amount_minor`.
async fn bank_up_to(app: &TestApp, name: &str, max_amount_minor: i64) -> Bank {
    let mut lenders = LenderServiceClient::new(app.channel.clone());
    let lender = lenders
        .create_lender(authed(
            pb::CreateLenderRequest {
                lender: Some(pb::Lender {
                    name: name.into(),
                    kind: pb::LenderKind::CityCommercial as i32,
                    region_codes: vec!["421300".into()],
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .expect("create lender")
        .into_inner()
        .lender
        .unwrap();
    let product = lenders
        .create_product(authed(
            pb::CreateProductRequest {
                product: Some(pb::Product {
                    max_amount_minor,
                    min_rate_bps: MIN_RATE_BPS,
                    max_rate_bps: MAX_RATE_BPS,
                    ..crate::helpers::working_capital(
                        lender.id.parse().unwrap(),
                        &format!("{name} working capital"),
                    )
                }),
            },
            &app.operator,
        ))
        .await
        .expect("create product")
        .into_inner()
        .product
        .unwrap();
    let lender_id: Uuid = lender.id.parse().unwrap();
    Bank {
        lender_id,
        product_id: product.id.parse().unwrap(),
        token: app.token(Role::Lender, Some(lender_id)).await,
    }
}

async fn enterprise(app: &TestApp) -> Uuid {
    let credit_code = crate::helpers::next_credit_code();
    let n = credit_code[10..17].to_owned();
    let created = EnterpriseServiceClient::new(app.channel.clone())
        .create_enterprise(authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(pb::Enterprise {
                    credit_code,
                    name: format!("随州市测试制药有限公司{n}"),
                    region_code: "421302".into(),
                    industry_code: "C2720".into(),
                    size: pb::EnterpriseSize::Small as i32,
                    employees: 120,
                    annual_revenue_minor: 5_000_000_000,
                    contact_name: "王经理".into(),
                    contact_phone: "13912345678".into(),
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .expect("create enterprise")
        .into_inner()
        .enterprise
        .unwrap();
    created.id.parse().unwrap()
}

/// A need of `amount_minor` of a new enterprise, submitted through FinancingService on `app`;
/// routing must send it to exactly `banks` (each test sets up the banks so it does). The
/// referrals are returned in the order of `banks`.
async fn routed(app: &TestApp, amount_minor: i64, banks: &[&Bank]) -> Routed {
    let in_two_months = finmatch::domain::BureauCalendar::default().today() + TimeDelta::days(60);
    routed_by(app, amount_minor, banks, in_two_months).await
}

/// [`routed`], for a need needed by `needed_by`.
async fn routed_by(
    app: &TestApp,
    amount_minor: i64,
    banks: &[&Bank],
    needed_by: chrono::NaiveDate,
) -> Routed {
    let enterprise_id = enterprise(app).await;
    let submitted = FinancingServiceClient::new(app.channel.clone())
        .submit_need(authed(
            pb::SubmitNeedRequest {
                idempotency_key: Uuid::new_v4().to_string(),
                need: Some(pb::Need {
                    enterprise_id: enterprise_id.to_string(),
                    amount_minor,
                    term_months: 12,
                    purpose: pb::Purpose::WorkingCapital as i32,
                    collateral: vec![pb::Collateral::Credit as i32],
                    needed_by: needed_by.format("%Y-%m-%d").to_string(),
                    consent_to_share: true,
                    channel: pb::Channel::Bureau as i32,
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .expect("submit need")
        .into_inner();
    let mut routed_to: Vec<String> = submitted
        .referrals
        .iter()
        .map(|r| r.lender_id.clone())
        .collect();
    routed_to.sort();
    let mut expected: Vec<String> = banks.iter().map(|b| b.lender_id.to_string()).collect();
    expected.sort();
    assert_eq!(
        routed_to, expected,
        "the need is routed to the banks of the test"
    );
    let referrals = banks
        .iter()
        .map(|b| {
            let r = submitted
                .referrals
                .iter()
                .find(|r| r.lender_id == b.lender_id.to_string())
                .unwrap();
            r.id.parse().unwrap()
        })
        .collect();
    Routed {
        need_id: submitted.need.unwrap().id.parse().unwrap(),
        referrals,
    }
}

/// A referral of `bank` for a need stored without consent to share. Routing never creates one;
/// it is inserted here to prove the lender's view withholds contact data all the same.
async fn unconsented(app: &TestApp, bank: &Bank) -> Uuid {
    let enterprise_id = enterprise(app).await;
    let creator = app
        .app
        .bootstrap_credential(finmatch::service::credentials::NewCredential {
            role: Role::Portal,
            lender_id: None,
            label: "fixture".into(),
            expires_at: None,
            certificate_subject: None,
        })
        .await
        .unwrap()
        .credential
        .id;
    let mut conn = app.app.conn().await.unwrap();
    let need = storage::needs::insert(
        &mut conn,
        &storage::needs::NewNeed {
            id: finmatch::domain::ids::scoped_id(enterprise_id),
            enterprise_id,
            amount_minor: 1_000_000,
            term_months: 12,
            purpose: Purpose::WorkingCapital,
            collateral: vec![Collateral::Credit],
            max_rate_bps: None,
            needed_by: Utc::now().date_naive() + TimeDelta::days(60),
            consent_to_share: false,
            channel: Channel::Bureau,
            note: "",
            status: NeedStatus::Routed,
            idempotency_key: None,
            created_by: creator,
        },
    )
    .await
    .unwrap();
    storage::referrals::insert(
        &mut conn,
        &storage::referrals::NewReferral {
            id: finmatch::domain::ids::child_id(need.id),
            need_id: need.id,
            lender_id: bank.lender_id,
            product_id: bank.product_id,
            status: ReferralStatus::Pending,
            score: 700,
            factors: serde_json::json!([]),
            sla_deadline: Utc::now() + TimeDelta::hours(48),
        },
    )
    .await
    .unwrap()
    .id
}

fn partner(app: &TestApp) -> PartnerServiceClient<tonic::transport::Channel> {
    PartnerServiceClient::new(app.channel.clone())
}

async fn acknowledge(app: &TestApp, bank: &Bank, id: Uuid) -> pb::Referral {
    partner(app)
        .acknowledge_referral(authed(
            pb::AcknowledgeReferralRequest {
                referral_id: id.to_string(),
            },
            &bank.token,
        ))
        .await
        .expect("acknowledge")
        .into_inner()
        .referral
        .unwrap()
}

fn approve(id: Uuid, key: &str, amount_minor: i64, rate_bps: i32) -> pb::DecideReferralRequest {
    pb::DecideReferralRequest {
        referral_id: id.to_string(),
        idempotency_key: key.into(),
        decision: Some(pb::decide_referral_request::Decision::Approve(
            pb::ReferralApproval {
                amount_minor,
                rate_bps,
                term_months: 12,
            },
        )),
    }
}

fn decline(
    id: Uuid,
    key: &str,
    reason: pb::DeclineReason,
    note: &str,
) -> pb::DecideReferralRequest {
    pb::DecideReferralRequest {
        referral_id: id.to_string(),
        idempotency_key: key.into(),
        decision: Some(pb::decide_referral_request::Decision::Decline(
            pb::ReferralDecline {
                reason: reason as i32,
                note: note.into(),
            },
        )),
    }
}

async fn approved(app: &TestApp, bank: &Bank, id: Uuid, amount_minor: i64) -> pb::Referral {
    acknowledge(app, bank, id).await;
    partner(app)
        .decide_referral(authed(
            approve(id, &format!("approve-{id}"), amount_minor, 450),
            &bank.token,
        ))
        .await
        .expect("approve")
        .into_inner()
        .referral
        .unwrap()
}

fn disbursement(id: Uuid, reference: &str, amount_minor: i64) -> pb::RecordDisbursementRequest {
    pb::RecordDisbursementRequest {
        referral_id: id.to_string(),
        loan_reference: reference.into(),
        amount_minor,
        rate_bps: 450,
        term_months: 12,
        disbursed_on: Utc::now().date_naive().format("%Y-%m-%d").to_string(),
    }
}

async fn disburse(
    app: &TestApp,
    bank: &Bank,
    request: pb::RecordDisbursementRequest,
) -> Result<pb::RecordDisbursementResponse, tonic::Status> {
    partner(app)
        .record_disbursement(authed(request, &bank.token))
        .await
        .map(tonic::Response::into_inner)
}

async fn get(app: &TestApp, bank: &Bank, id: Uuid) -> Result<pb::Referral, tonic::Status> {
    partner(app)
        .get_referral(authed(
            pb::GetReferralRequest {
                referral_id: id.to_string(),
            },
            &bank.token,
        ))
        .await
        .map(|r| r.into_inner().referral.unwrap())
}

fn status(referral: &pb::Referral) -> pb::ReferralStatus {
    pb::ReferralStatus::try_from(referral.status).unwrap()
}

fn need_of(referral: &pb::Referral) -> &pb::Need {
    referral.need.as_ref().expect("need filled")
}

/// Reads `n` events (skipping heartbeats) from a watch stream, each within `within`.
async fn events(
    stream: &mut tonic::Streaming<pb::WatchReferralsResponse>,
    n: usize,
    within: Duration,
) -> Vec<pb::ReferralEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        let message = tokio::time::timeout(within, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event within {within:?} after {} events", out.len()))
            .expect("stream open")
            .expect("stream not ended");
        if let Some(Payload::Event(event)) = message.payload {
            out.push(event);
        }
    }
    out
}

async fn watch(
    app: &TestApp,
    bank: &Bank,
    after_cursor: i64,
) -> tonic::Streaming<pb::WatchReferralsResponse> {
    crate::helpers::watch_referrals(app, &bank.token, after_cursor).await
}

/// No event arrives for a while (heartbeats aside).
async fn quiet(stream: &mut tonic::Streaming<pb::WatchReferralsResponse>, for_: Duration) {
    let deadline = tokio::time::Instant::now() + for_;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return,
            Ok(message) => {
                let message = message.expect("stream open").expect("stream not ended");
                if let Some(Payload::Event(event)) = message.payload {
                    panic!("unexpected event {event:?}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_sees_only_its_own_referrals_and_gets_not_found_for_the_others() {
    let app = TestApp::spawn().await;
    // Bank A lends up to 15,000 yuan, so the 20,000 yuan need goes to bank B alone.
    let a = bank_up_to(&app, "Bank A", 1_500_000).await;
    let b = bank(&app, "Bank B").await;
    let shared = routed(&app, 1_000_000, &[&a, &b]).await;
    let only_b = routed(&app, 2_000_000, &[&b]).await;
    let (a_ref, b_ref) = (shared.referrals[0], shared.referrals[1]);

    let listed = partner(&app)
        .list_referrals(authed(pb::ListReferralsRequest::default(), &a.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.referrals.len(), 1);
    assert_eq!(listed.referrals[0].id, a_ref.to_string());
    assert_eq!(listed.referrals[0].lender_id, a.lender_id.to_string());
    let listed_b = partner(&app)
        .list_referrals(authed(pb::ListReferralsRequest::default(), &b.token))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed_b.referrals.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&b_ref.to_string().as_str()));
    assert!(ids.contains(&only_b.referrals[0].to_string().as_str()));

    // Every RPC naming bank B's referral answers bank A exactly as for an unknown id.
    for id in [b_ref, only_b.referrals[0], Uuid::new_v4()] {
        let mut client = partner(&app);
        let codes = [
            get(&app, &a, id).await.unwrap_err().code(),
            client
                .acknowledge_referral(authed(
                    pb::AcknowledgeReferralRequest {
                        referral_id: id.to_string(),
                    },
                    &a.token,
                ))
                .await
                .unwrap_err()
                .code(),
            client
                .request_information(authed(
                    pb::RequestInformationRequest {
                        referral_id: id.to_string(),
                        message: "latest statements please".into(),
                    },
                    &a.token,
                ))
                .await
                .unwrap_err()
                .code(),
            client
                .decide_referral(authed(approve(id, &format!("k-{id}"), 1000, 450), &a.token))
                .await
                .unwrap_err()
                .code(),
            client
                .decide_referral(authed(
                    decline(id, &format!("d-{id}"), pb::DeclineReason::Capacity, ""),
                    &a.token,
                ))
                .await
                .unwrap_err()
                .code(),
            disburse(&app, &a, disbursement(id, &format!("L-{id}"), 1000))
                .await
                .unwrap_err()
                .code(),
        ];
        assert_eq!(codes, [Code::NotFound; 6], "referral {id}");
    }
    // Nothing of bank B changed.
    let b_view = get(&app, &b, b_ref).await.unwrap();
    assert_eq!(status(&b_view), pb::ReferralStatus::Pending);

    // Bank A's stream carries only its own CREATED event.
    let mut stream = watch(&app, &a, 0).await;
    let seen = events(&mut stream, 1, Duration::from_secs(5)).await;
    assert_eq!(seen[0].referral.as_ref().unwrap().id, a_ref.to_string());
    quiet(&mut stream, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_portals_are_permission_denied() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let r = routed(&app, 1_000_000, &[&a]).await;
    let portal = app.token(Role::Portal, None).await;
    for token in [&app.operator, &portal] {
        let mut client = partner(&app);
        let list = client
            .list_referrals(authed(pb::ListReferralsRequest::default(), token))
            .await
            .unwrap_err();
        assert_eq!(list.code(), Code::PermissionDenied);
        let got = client
            .get_referral(authed(
                pb::GetReferralRequest {
                    referral_id: r.referrals[0].to_string(),
                },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(got.code(), Code::PermissionDenied);
        let watched = client
            .watch_referrals(authed(pb::WatchReferralsRequest { after_cursor: 0 }, token))
            .await
            .unwrap_err();
        assert_eq!(watched.code(), Code::PermissionDenied);
        let decided = client
            .decide_referral(authed(approve(r.referrals[0], "k", 1000, 450), token))
            .await
            .unwrap_err();
        assert_eq!(decided.code(), Code::PermissionDenied);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_referral_shows_need_and_enterprise_with_contact_only_under_consent() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let consented = routed(&app, 1_000_000, &[&a]).await;
    let private = unconsented(&app, &a).await;

    let shown = get(&app, &a, consented.referrals[0]).await.unwrap();
    assert_eq!(need_of(&shown).id, consented.need_id.to_string());
    assert_eq!(need_of(&shown).amount_minor, 1_000_000);
    let enterprise = shown.enterprise.as_ref().unwrap();
    assert_eq!(enterprise.contact_name, "王经理");
    assert_eq!(enterprise.contact_phone, "13912345678");

    let hidden = get(&app, &a, private).await.unwrap();
    let enterprise = hidden.enterprise.as_ref().unwrap();
    assert!(enterprise.name.starts_with("随州市测试制药有限公司"));
    assert_eq!(enterprise.contact_name, "");
    assert_eq!(enterprise.contact_phone, "");
}

/// Contact data reaches a lender only while it may still lend on the referral, or once it has:
/// not after it declined, nor on a referral cancelled because another bank funded the need or
/// the enterprise withdrew it. The rest of the enterprise stays visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_data_is_shown_only_on_open_and_funded_referrals() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let b = bank(&app, "Bank B").await;
    let c = bank(&app, "Bank C").await;
    let contact = |r: &pb::Referral| {
        let e = r.enterprise.as_ref().expect("the enterprise is shown");
        assert!(!e.name.is_empty());
        (e.contact_name.clone(), e.contact_phone.clone())
    };
    let shown = ("王经理".to_owned(), "13912345678".to_owned());
    let hidden = (String::new(), String::new());
    let listed = |bank: &Bank, id: Uuid| {
        let app = &app;
        let token = bank.token.clone();
        async move {
            partner(app)
                .list_referrals(authed(pb::ListReferralsRequest::default(), &token))
                .await
                .unwrap()
                .into_inner()
                .referrals
                .into_iter()
                .find(|r| r.id == id.to_string())
                .expect("listed")
        }
    };

    let r = routed(&app, 1_000_000, &[&a, &b, &c]).await;
    let (ra, rb, rc) = (r.referrals[0], r.referrals[1], r.referrals[2]);
    for (bank, id) in [(&a, ra), (&b, rb), (&c, rc)] {
        assert_eq!(contact(&get(&app, bank, id).await.unwrap()), shown, "open");
    }
    partner(&app)
        .decide_referral(authed(
            decline(rb, "decline-b", pb::DeclineReason::CreditHistory, ""),
            &b.token,
        ))
        .await
        .expect("decline");
    assert_eq!(
        contact(&get(&app, &b, rb).await.unwrap()),
        hidden,
        "declined"
    );
    assert_eq!(contact(&listed(&b, rb).await), hidden, "declined, listed");

    approved(&app, &a, ra, 1_000_000).await;
    disburse(&app, &a, disbursement(ra, "A-1", 1_000_000))
        .await
        .unwrap();
    let funded = get(&app, &a, ra).await.unwrap();
    assert_eq!(status(&funded), pb::ReferralStatus::Disbursed);
    assert_eq!(contact(&funded), shown, "the lender that lent");
    assert_eq!(contact(&listed(&a, ra).await), shown);
    let cancelled = get(&app, &c, rc).await.unwrap();
    assert_eq!(status(&cancelled), pb::ReferralStatus::Cancelled);
    assert_eq!(
        contact(&cancelled),
        hidden,
        "cancelled: another bank funded it"
    );

    let w = routed(&app, 1_000_000, &[&a, &b, &c]).await;
    FinancingServiceClient::new(app.channel.clone())
        .withdraw_need(authed(
            pb::WithdrawNeedRequest {
                need_id: w.need_id.to_string(),
                reason: "financed elsewhere".into(),
            },
            &app.operator,
        ))
        .await
        .expect("withdraw");
    let after = get(&app, &a, w.referrals[0]).await.unwrap();
    assert_eq!(status(&after), pb::ReferralStatus::Cancelled);
    assert_eq!(contact(&after), hidden, "withdrawn");
    assert_eq!(contact(&listed(&a, w.referrals[0]).await), hidden);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_referrals_filters_by_status_and_time_and_pages() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(routed(&app, 1_000_000, &[&a]).await.referrals[0]);
    }
    acknowledge(&app, &a, ids[1]).await;
    let mut client = partner(&app);
    let acknowledged = client
        .list_referrals(authed(
            pb::ListReferralsRequest {
                statuses: vec![pb::ReferralStatus::Acknowledged as i32],
                ..Default::default()
            },
            &a.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acknowledged.referrals.len(), 1);
    assert_eq!(acknowledged.referrals[0].id, ids[1].to_string());

    let first = client
        .list_referrals(authed(
            pb::ListReferralsRequest {
                page_size: 2,
                ..Default::default()
            },
            &a.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.referrals.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_referrals(authed(
            pb::ListReferralsRequest {
                page_size: 2,
                page_token: first.next_page_token.clone(),
                ..Default::default()
            },
            &a.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.referrals.len(), 1);
    assert_eq!(second.next_page_token, "");
    let mut all: Vec<String> = first
        .referrals
        .iter()
        .chain(&second.referrals)
        .map(|r| r.id.clone())
        .collect();
    all.sort();
    let mut expected: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(all, expected);

    let future = client
        .list_referrals(authed(
            pb::ListReferralsRequest {
                create_time_from: Some(prost_types::Timestamp {
                    seconds: (Utc::now() + TimeDelta::hours(1)).timestamp(),
                    nanos: 0,
                }),
                ..Default::default()
            },
            &a.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(future.referrals.is_empty());

    let bad = client
        .list_referrals(authed(
            pb::ListReferralsRequest {
                page_size: -1,
                statuses: vec![0],
                ..Default::default()
            },
            &a.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad), ["page_size", "statuses[0]"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledge_request_information_and_acknowledge_again() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let id = routed(&app, 1_000_000, &[&a]).await.referrals[0];
    let mut client = partner(&app);

    // A PENDING referral must be acknowledged before asking for information.
    let early = client
        .request_information(authed(
            pb::RequestInformationRequest {
                referral_id: id.to_string(),
                message: "audited accounts 2019".into(),
            },
            &a.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&early).as_deref(), Some("ILLEGAL_TRANSITION"));

    let acked = acknowledge(&app, &a, id).await;
    assert_eq!(status(&acked), pb::ReferralStatus::Acknowledged);
    // Acknowledging again is a safe retry: unchanged.
    let again = acknowledge(&app, &a, id).await;
    assert_eq!(again.update_time, acked.update_time);

    let asked = client
        .request_information(authed(
            pb::RequestInformationRequest {
                referral_id: id.to_string(),
                message: "audited accounts 2019".into(),
            },
            &a.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    assert_eq!(status(&asked), pb::ReferralStatus::InfoRequested);
    assert_eq!(asked.info_request_message, "audited accounts 2019");

    let empty = client
        .request_information(authed(
            pb::RequestInformationRequest {
                referral_id: id.to_string(),
                message: " ".into(),
            },
            &a.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&empty), ["message"]);

    let back = acknowledge(&app, &a, id).await;
    assert_eq!(status(&back), pb::ReferralStatus::Acknowledged);

    let mut stream = watch(&app, &a, 0).await;
    let kinds: Vec<i32> = events(&mut stream, 4, Duration::from_secs(5))
        .await
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            pb::ReferralEventKind::Created as i32,
            pb::ReferralEventKind::Acknowledged as i32,
            pb::ReferralEventKind::InfoRequested as i32,
            pb::ReferralEventKind::Acknowledged as i32,
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_checks_state_product_ranges_and_the_unfunded_amount() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let r = routed(&app, 1_000_000, &[&a]).await;
    let id = r.referrals[0];
    let mut client = partner(&app);

    let pending = client
        .decide_referral(authed(approve(id, "k1", 500_000, 450), &a.token))
        .await
        .unwrap_err();
    assert_eq!(pending.code(), Code::FailedPrecondition);
    assert_eq!(
        error_reason(&pending).as_deref(),
        Some("ILLEGAL_TRANSITION")
    );

    acknowledge(&app, &a, id).await;
    let mut outside = approve(id, "k2", 500_000, MAX_RATE_BPS + 1);
    if let Some(pb::decide_referral_request::Decision::Approve(terms)) = &mut outside.decision {
        terms.term_months = 48;
    }
    let outside = client
        .decide_referral(authed(outside, &a.token))
        .await
        .unwrap_err();
    assert_eq!(outside.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&outside),
        ["approve.rate_bps", "approve.term_months"]
    );

    let too_much = client
        .decide_referral(authed(approve(id, "k3", 1_000_001, 450), &a.token))
        .await
        .unwrap_err();
    assert_eq!(too_much.code(), Code::FailedPrecondition);
    assert_eq!(
        error_reason(&too_much).as_deref(),
        Some("AMOUNT_EXCEEDS_UNFUNDED")
    );

    let ok = client
        .decide_referral(authed(approve(id, "k4", 800_000, 450), &a.token))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    assert_eq!(status(&ok), pb::ReferralStatus::Approved);
    assert_eq!(ok.approved_amount_minor, Some(800_000));
    assert_eq!(ok.approved_rate_bps, Some(450));
    assert_eq!(ok.approved_term_months, Some(12));

    // Same key, same request: the first response. Same key, other request: rejected.
    let replay = client
        .decide_referral(authed(approve(id, "k4", 800_000, 450), &a.token))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    assert_eq!(replay, ok);
    let reused = client
        .decide_referral(authed(approve(id, "k4", 700_000, 450), &a.token))
        .await
        .unwrap_err();
    assert_eq!(
        error_reason(&reused).as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );
    // A new decision on a decided referral is illegal.
    let twice = client
        .decide_referral(authed(
            decline(id, "k5", pb::DeclineReason::Capacity, ""),
            &a.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&twice).as_deref(), Some("ILLEGAL_TRANSITION"));

    let view = get(&app, &a, id).await.unwrap();
    assert_eq!(
        pb::NeedStatus::try_from(need_of(&view).status).unwrap(),
        pb::NeedStatus::Approved
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decline_records_reason_and_note_and_requires_a_note_for_other() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let id = routed(&app, 1_000_000, &[&a]).await.referrals[0];
    let mut client = partner(&app);

    let bare_other = client
        .decide_referral(authed(
            decline(id, "d1", pb::DeclineReason::Other, ""),
            &a.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bare_other), ["decline.note"]);
    let unspecified = client
        .decide_referral(authed(
            decline(id, "d2", pb::DeclineReason::Unspecified, ""),
            &a.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&unspecified), ["decline.reason"]);

    // A PENDING referral may be declined without acknowledging first.
    let declined = client
        .decide_referral(authed(
            decline(
                id,
                "d3",
                pb::DeclineReason::InsufficientCollateral,
                "needs a guarantee",
            ),
            &a.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    assert_eq!(status(&declined), pb::ReferralStatus::Declined);
    assert_eq!(
        declined.decline_reason,
        pb::DeclineReason::InsufficientCollateral as i32
    );
    assert_eq!(declined.decline_note, "needs a guarantee");
    let ack = client
        .acknowledge_referral(authed(
            pb::AcknowledgeReferralRequest {
                referral_id: id.to_string(),
            },
            &a.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&ack).as_deref(), Some("ILLEGAL_TRANSITION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decline_routes_the_need_to_the_next_best_untried_lender() {
    let app = TestApp::spawn().await;
    // Four equally good banks; bank D lends less, so it ranks last and is left out at first.
    let a = bank(&app, "Bank A").await;
    let b = bank(&app, "Bank B").await;
    let c = bank(&app, "Bank C").await;
    let d = bank_up_to(&app, "Bank D", 1_000_000).await;
    let r = routed(&app, 900_000, &[&a, &b, &c]).await;
    let mut d_stream = watch(&app, &d, 0).await;
    quiet(&mut d_stream, Duration::from_millis(300)).await;

    partner(&app)
        .decide_referral(authed(
            decline(r.referrals[0], "no", pb::DeclineReason::OutsideAppetite, ""),
            &a.token,
        ))
        .await
        .unwrap();

    // Bank D gets the need, and learns it from its stream.
    let created = events(&mut d_stream, 1, Duration::from_secs(2)).await;
    assert_eq!(created[0].kind, pb::ReferralEventKind::Created as i32);
    let new_referral = created[0].referral.clone().unwrap();
    assert_eq!(new_referral.need_id, r.need_id.to_string());
    assert_eq!(new_referral.lender_id, d.lender_id.to_string());
    let view = get(&app, &d, new_referral.id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(status(&view), pb::ReferralStatus::Pending);
    assert_eq!(
        pb::NeedStatus::try_from(need_of(&view).status).unwrap(),
        pb::NeedStatus::Routed
    );
}

/// A retried decision answers with what the decision answered then, not with the referral as it
/// is now: a loan disbursed since does not show in the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_retried_after_its_loan_was_disbursed_answers_as_it_did_then() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let id = routed(&app, 1_000_000, &[&a]).await.referrals[0];
    acknowledge(&app, &a, id).await;
    let mut client = partner(&app);
    let decided = client
        .decide_referral(authed(approve(id, "k-approve", 600_000, 450), &a.token))
        .await
        .unwrap()
        .into_inner();
    disburse(&app, &a, disbursement(id, "LN-9", 600_000))
        .await
        .unwrap();
    assert_eq!(
        status(&get(&app, &a, id).await.unwrap()),
        pb::ReferralStatus::Disbursed
    );

    let retried = client
        .decide_referral(authed(approve(id, "k-approve", 600_000, 450), &a.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, decided);
    let referral = retried.referral.unwrap();
    assert_eq!(status(&referral), pb::ReferralStatus::Approved);
    assert_eq!(referral.disbursed_minor, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disbursement_replays_identically_and_rejects_a_changed_payload() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let r = routed(&app, 1_000_000, &[&a]).await;
    let id = r.referrals[0];

    // Not approved yet.
    let early = disburse(&app, &a, disbursement(id, "LN-1", 400_000))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&early).as_deref(), Some("ILLEGAL_TRANSITION"));

    approved(&app, &a, id, 600_000).await;
    let first = disburse(&app, &a, disbursement(id, "LN-1", 400_000))
        .await
        .unwrap();
    let d = first.disbursement.clone().unwrap();
    assert_eq!(d.loan_reference, "LN-1");
    assert_eq!(d.amount_minor, 400_000);
    let referral = first.referral.clone().unwrap();
    assert_eq!(status(&referral), pb::ReferralStatus::Disbursed);
    assert_eq!(referral.disbursed_minor, 400_000);
    assert_eq!(need_of(&referral).funded_minor, 400_000);

    let replay = disburse(&app, &a, disbursement(id, "LN-1", 400_000))
        .await
        .unwrap();
    assert_eq!(replay.disbursement, first.disbursement);
    assert_eq!(
        need_of(replay.referral.as_ref().unwrap()).funded_minor,
        400_000
    );

    let changed = disburse(&app, &a, disbursement(id, "LN-1", 300_000))
        .await
        .unwrap_err();
    assert_eq!(changed.code(), Code::FailedPrecondition);
    assert_eq!(
        error_reason(&changed).as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );

    // More than approved in total.
    let over = disburse(&app, &a, disbursement(id, "LN-2", 200_001))
        .await
        .unwrap_err();
    assert_eq!(
        error_reason(&over).as_deref(),
        Some("AMOUNT_EXCEEDS_APPROVED")
    );
    let mut bad = disbursement(id, "LN-3", 1000);
    bad.rate_bps = MIN_RATE_BPS - 1;
    bad.disbursed_on = "2026-02-30".into();
    let bad = disburse(&app, &a, bad).await.unwrap_err();
    assert_eq!(violated_fields(&bad), ["disbursed_on"]);

    let view = get(&app, &a, id).await.unwrap();
    assert_eq!(view.disbursed_minor, 400_000);
    assert_eq!(need_of(&view).funded_minor, 400_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_then_full_funding_funds_the_need_and_cancels_the_other_referrals() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let b = bank(&app, "Bank B").await;
    let c = bank(&app, "Bank C").await;
    let r = routed(&app, 1_000_000, &[&a, &b, &c]).await;
    let (ra, rb, rc) = (r.referrals[0], r.referrals[1], r.referrals[2]);
    approved(&app, &a, ra, 1_000_000).await;
    approved(&app, &b, rb, 500_000).await;
    let mut b_stream = watch(&app, &b, 0).await;
    let b_before = events(&mut b_stream, 3, Duration::from_secs(5)).await;

    let partial = disburse(&app, &a, disbursement(ra, "A-1", 300_000))
        .await
        .unwrap();
    let need = need_of(partial.referral.as_ref().unwrap()).clone();
    assert_eq!(need.funded_minor, 300_000);
    assert_eq!(
        pb::NeedStatus::try_from(need.status).unwrap(),
        pb::NeedStatus::Approved
    );
    // The rest of the need is larger than what bank B approved.
    let full = disburse(&app, &a, disbursement(ra, "A-2", 700_000))
        .await
        .unwrap();
    let need = need_of(full.referral.as_ref().unwrap()).clone();
    assert_eq!(need.funded_minor, 1_000_000);
    assert_eq!(
        pb::NeedStatus::try_from(need.status).unwrap(),
        pb::NeedStatus::Funded
    );
    assert_eq!(full.referral.as_ref().unwrap().disbursed_minor, 1_000_000);

    assert_eq!(
        status(&get(&app, &b, rb).await.unwrap()),
        pb::ReferralStatus::Cancelled
    );
    assert_eq!(
        status(&get(&app, &c, rc).await.unwrap()),
        pb::ReferralStatus::Cancelled
    );
    // Bank B learns it from its stream; it can no longer disburse.
    let cancelled = events(&mut b_stream, 1, Duration::from_secs(5)).await;
    assert!(cancelled[0].cursor > b_before[2].cursor);
    assert_eq!(cancelled[0].kind, pb::ReferralEventKind::Cancelled as i32);
    assert_eq!(cancelled[0].referral.as_ref().unwrap().id, rb.to_string());
    let late = disburse(&app, &b, disbursement(rb, "B-1", 100))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&late).as_deref(), Some("ILLEGAL_TRANSITION"));
    let mut conn = app.app.conn().await.unwrap();
    let stored = storage::needs::find(&mut conn, r.need_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.funded_minor, stored.status.as_str()),
        (1_000_000, "FUNDED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_banks_funding_one_need_at_once_never_fund_it_twice() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    let a = bank(&app, "Bank A").await;
    let b = bank(&app, "Bank B").await;
    for round in 0..20 {
        let r = routed(&app, 1_000_000, &[&a, &b]).await;
        let (ra, rb) = (r.referrals[0], r.referrals[1]);
        approved(&app, &a, ra, 1_000_000).await;
        approved(&app, &b, rb, 1_000_000).await;
        // Each bank on its own replica, at the same moment.
        let (first, second) = tokio::join!(
            disburse(&app, &a, disbursement(ra, &format!("A-{round}"), 1_000_000)),
            disburse(
                &replica,
                &b,
                disbursement(rb, &format!("B-{round}"), 1_000_000)
            ),
        );
        let outcomes = [&first, &second];
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {first:?} / {second:?}");
        let lost = outcomes
            .iter()
            .find_map(|o| o.as_ref().err())
            .expect("one failed");
        assert_eq!(lost.code(), Code::FailedPrecondition, "round {round}");
        let mut conn = app.app.conn().await.unwrap();
        let need = storage::needs::find(&mut conn, r.need_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(need.funded_minor, 1_000_000, "round {round}");
        assert_eq!(need.status, NeedStatus::Funded, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_stored_events_then_live_ones_and_resumes_without_gap_or_repeat() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let first = routed(&app, 1_000_000, &[&a]).await.referrals[0];
    acknowledge(&app, &a, first).await;

    let mut stream = watch(&app, &a, 0).await;
    let stored = events(&mut stream, 2, Duration::from_secs(5)).await;
    assert_eq!(stored[0].kind, pb::ReferralEventKind::Created as i32);
    assert_eq!(stored[1].kind, pb::ReferralEventKind::Acknowledged as i32);
    assert!(stored[0].cursor < stored[1].cursor);
    assert_eq!(
        status(stored[0].referral.as_ref().unwrap()),
        pb::ReferralStatus::Pending
    );
    assert_eq!(
        status(stored[1].referral.as_ref().unwrap()),
        pb::ReferralStatus::Acknowledged
    );

    // Live: a new referral appears on the open stream.
    let second = routed(&app, 2_000_000, &[&a]).await.referrals[0];
    let live = events(&mut stream, 1, Duration::from_secs(2)).await;
    assert_eq!(live[0].referral.as_ref().unwrap().id, second.to_string());
    let last_seen = live[0].cursor;
    drop(stream);

    // Changes while disconnected, then resume from the last cursor seen.
    acknowledge(&app, &a, second).await;
    let third = routed(&app, 3_000_000, &[&a]).await.referrals[0];
    let mut resumed = watch(&app, &a, last_seen).await;
    let missed = events(&mut resumed, 2, Duration::from_secs(5)).await;
    assert_eq!(missed[0].referral.as_ref().unwrap().id, second.to_string());
    assert_eq!(missed[0].kind, pb::ReferralEventKind::Acknowledged as i32);
    assert_eq!(missed[1].referral.as_ref().unwrap().id, third.to_string());
    assert!(missed[0].cursor > last_seen);
    quiet(&mut resumed, Duration::from_millis(500)).await;

    let negative = partner(&app)
        .watch_referrals(authed(
            pb::WatchReferralsRequest { after_cursor: -1 },
            &a.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&negative), ["after_cursor"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_pages_through_more_stored_events_than_one_read() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    for _ in 0..3 {
        let ids = routed(&app, 1_000_000, &[&a]).await;
        let _ = ids;
    }
    // 250 events of bank A, more than two pages.
    let mut conn = app.app.conn().await.unwrap();
    let row = storage::partner::list(&mut conn, a.lender_id, &Default::default(), None, 1)
        .await
        .unwrap()
        .remove(0);
    for _ in 0..247 {
        storage::referrals::insert_event(
            &mut conn,
            &storage::referrals::NewReferralEvent {
                referral_id: row.id,
                lender_id: row.lender_id,
                need_id: row.need_id,
                kind: ReferralEventKind::Created,
                status: ReferralStatus::Pending,
                detail: serde_json::json!({}),
            },
        )
        .await
        .unwrap();
    }
    let mut stream = watch(&app, &a, 0).await;
    let all = events(&mut stream, 250, Duration::from_secs(5)).await;
    assert!(all.windows(2).all(|w| w[0].cursor < w[1].cursor));
    quiet(&mut stream, Duration::from_millis(300)).await;
}

/// Delivery across replicas, not its delay: the delay's p99 is the benchmark's (`finmatch bench
/// watch`, docs/performance.md), not a pass/fail figure on a shared machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_replica_sees_changes_made_through_another() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    // Two servers, one database.
    assert_ne!(replica.addr, app.addr);
    assert_eq!(replica.database_url(), app.database_url());
    let a = bank(&app, "Bank A").await;
    let mut stream = watch(&app, &a, 0).await;
    let id = routed(&replica, 1_000_000, &[&a]).await.referrals[0];
    let created = events(&mut stream, 1, Duration::from_secs(10)).await;
    assert_eq!(created[0].referral.as_ref().unwrap().id, id.to_string());
    // A change made through replica B's API reaches the watcher on replica A.
    acknowledge(&replica, &a, id).await;
    let acked = events(&mut stream, 1, Duration::from_secs(10)).await;
    assert_eq!(acked[0].kind, pb::ReferralEventKind::Acknowledged as i32);
    assert!(acked[0].cursor > created[0].cursor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_watch_streams_with_unavailable() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let mut stream = watch(&app, &a, 0).await;
    let stopping = tokio::spawn(async move { app.shutdown().await });
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends");
    assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_decision_and_one_disbursement_take_effect_once() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    let a = bank(&app, "Bank A").await;
    for round in 0..5 {
        let id = routed(&app, 1_000_000, &[&a]).await.referrals[0];
        acknowledge(&app, &a, id).await;
        let key = format!("approve-{round}");
        let decide = |app: &TestApp| {
            let mut client = partner(app);
            let request = authed(approve(id, &key, 1_000_000, 450), &a.token);
            async move {
                client
                    .decide_referral(request)
                    .await
                    .map(|r| r.into_inner())
            }
        };
        let (one, two) = tokio::join!(decide(&app), decide(&replica));
        let (one, two) = (one.unwrap(), two.unwrap());
        assert_eq!(one, two, "round {round}");

        let reference = format!("LN-{round}");
        let (one, two) = tokio::join!(
            disburse(&app, &a, disbursement(id, &reference, 600_000)),
            disburse(&replica, &a, disbursement(id, &reference, 600_000)),
        );
        let (one, two) = (one.unwrap(), two.unwrap());
        assert_eq!(one.disbursement, two.disbursement, "round {round}");
        let view = get(&app, &a, id).await.unwrap();
        assert_eq!(view.disbursed_minor, 600_000, "round {round}");
        assert_eq!(need_of(&view).funded_minor, 600_000, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_gets_heartbeats_and_outlives_the_call_timeout() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let first = routed(&app, 1_000_000, &[&a]).await.referrals[0];
    let mut stream = watch(&app, &a, 0).await;
    let created = events(&mut stream, 1, Duration::from_secs(5)).await;
    assert_eq!(created[0].referral.as_ref().unwrap().id, first.to_string());

    let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a heartbeat within 20 s")
        .unwrap()
        .unwrap();
    match message.payload {
        Some(Payload::Heartbeat(beat)) => assert_eq!(beat.cursor, created[0].cursor),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    // Past the server's 30 s call timeout the stream still delivers.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let second = routed(&app, 2_000_000, &[&a]).await.referrals[0];
    let live = events(&mut stream, 1, Duration::from_secs(20)).await;
    assert_eq!(live[0].referral.as_ref().unwrap().id, second.to_string());
}

/// A channel of its own to `app`, so that many streams do not share one HTTP/2 connection's
/// stream limit; `window` bounds what the client buffers per stream before the server must wait.
async fn channel(app: &TestApp, window: Option<u32>) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(window)
        .connect()
        .await
        .expect("connect to the test server")
}

async fn watch_on(
    channel: &tonic::transport::Channel,
    bank: &Bank,
    after_cursor: i64,
) -> tonic::Streaming<pb::WatchReferralsResponse> {
    PartnerServiceClient::new(channel.clone())
        .watch_referrals(authed(
            pb::WatchReferralsRequest { after_cursor },
            &bank.token,
        ))
        .await
        .expect("watch")
        .into_inner()
}

/// Waits, within a bound that only catches hangs, until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lender's delivered cursors in order, read straight from PostgreSQL.
async fn delivered_cursors(app: &TestApp, lender_id: Uuid) -> Vec<i64> {
    let (client, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .query(
            "SELECT delivery_cursor FROM referral_events \
             WHERE lender_id = $1::text::uuid AND delivery_cursor IS NOT NULL \
             ORDER BY delivery_cursor",
            &[&lender_id.to_string()],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reads_each_batch_once_whatever_the_number_of_streams() {
    const STREAMS: usize = 200;
    const NEEDS: usize = 10;
    let app = TestApp::spawn_configured(finmatch::config::ServerArgs {
        max_watch_streams_per_credential: STREAMS,
        ..Default::default()
    })
    .await;
    let banks = [
        bank(&app, "Bank A").await,
        bank(&app, "Bank B").await,
        bank(&app, "Bank C").await,
    ];
    let all: Vec<&Bank> = banks.iter().collect();
    // 50 streams per connection, spread over the three banks.
    let mut channels = Vec::new();
    for _ in 0..STREAMS / 50 {
        channels.push(channel(&app, None).await);
    }
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let bank = &banks[i % banks.len()];
        streams.push((i % banks.len(), watch_on(&channels[i / 50], bank, 0).await));
    }
    // Each stream reads the table once as it starts, then waits on the live fan-out.
    eventually("every stream caught up", || {
        app.feed.stats().catch_up_reads >= STREAMS as u64
    })
    .await;
    let before = app.feed.stats();

    let mut expected: Vec<Vec<String>> = vec![Vec::new(); banks.len()];
    for _ in 0..NEEDS {
        let routed = routed(&app, 1_000_000, &all).await;
        for (b, id) in routed.referrals.iter().enumerate() {
            expected[b].push(id.to_string());
        }
    }
    for (b, stream) in &mut streams {
        let got = events(stream, NEEDS, Duration::from_secs(20)).await;
        let ids: Vec<String> = got
            .iter()
            .map(|e| e.referral.as_ref().unwrap().id.clone())
            .collect();
        assert_eq!(ids, expected[*b]);
        assert!(got.windows(2).all(|w| w[0].cursor < w[1].cursor));
    }
    let after = app.feed.stats();

    // 30 events, 2,000 deliveries: the old design ran a query per stream per commit (at least
    // 2,000). Here no stream read the table, and the feed read each batch once (plus probes).
    assert_eq!(after.catch_up_reads, before.catch_up_reads);
    assert_eq!(after.lagged, 0);
    let fanout_reads = after.fanout_reads - before.fanout_reads;
    assert!(
        (1..=(3 * NEEDS + 5) as u64).contains(&fanout_reads),
        "{fanout_reads} event reads for {NEEDS} commits and {STREAMS} streams"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_each_deliver_the_events_committed_on_the_other() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    let a = bank(&app, "Bank A").await;
    let mut on_app = watch(&app, &a, 0).await;
    let mut on_replica = watch(&replica, &a, 0).await;
    // Whichever of the two holds the relay lease, both fan out what either commits.
    eventually("one replica is the relay", || {
        app.feed.stats().relay || replica.feed.stats().relay
    })
    .await;
    assert!(!(app.feed.stats().relay && replica.feed.stats().relay));

    let mut written = Vec::new();
    for round in 0..3 {
        let (first, second) = if round % 2 == 0 {
            (&app, &replica)
        } else {
            (&replica, &app)
        };
        written.push(routed(first, 1_000_000, &[&a]).await.referrals[0]);
        written.push(routed(second, 2_000_000, &[&a]).await.referrals[0]);
    }
    let from_app = events(&mut on_app, written.len(), Duration::from_secs(10)).await;
    let from_replica = events(&mut on_replica, written.len(), Duration::from_secs(10)).await;
    for seen in [&from_app, &from_replica] {
        let ids: Vec<String> = seen
            .iter()
            .map(|e| e.referral.as_ref().unwrap().id.clone())
            .collect();
        let expected: Vec<String> = written.iter().map(Uuid::to_string).collect();
        assert_eq!(ids, expected);
    }
    let cursors = |seen: &[pb::ReferralEvent]| seen.iter().map(|e| e.cursor).collect::<Vec<_>>();
    assert_eq!(cursors(&from_app), cursors(&from_replica));
    assert_eq!(
        cursors(&from_app),
        delivered_cursors(&app, a.lender_id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_relay_replica_dies_another_takes_over_once_its_lease_expires() {
    let short_lease = || finmatch::config::ServerArgs {
        relay_lease_secs: 2,
        ..Default::default()
    };
    let first = TestApp::spawn_configured(short_lease()).await;
    eventually("the first server is the relay", || first.feed.stats().relay).await;
    let second = first.replica_with(short_lease()).await;
    let a = bank(&second, "Bank A").await;
    let mut stream = watch(&second, &a, 0).await;
    let before = routed(&second, 1_000_000, &[&a]).await.referrals[0];
    let got = events(&mut stream, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].referral.as_ref().unwrap().id, before.to_string());
    assert!(
        !second.feed.stats().relay,
        "the lease is the first server's"
    );

    // Killed, not shut down: nothing gives the lease up; it has to expire.
    drop(first);
    let after = routed(&second, 2_000_000, &[&a]).await.referrals[0];
    let got = events(&mut stream, 1, Duration::from_secs(30)).await;
    assert_eq!(got[0].referral.as_ref().unwrap().id, after.to_string());
    assert!(second.feed.stats().relay);
    assert_eq!(
        vec![got[0].cursor],
        delivered_cursors(&second, a.lender_id).await[1..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_falls_behind_catches_up_from_the_table_without_gap_or_repeat() {
    const EVENTS: usize = 3000;
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let id = routed(&app, 1_000_000, &[&a]).await.referrals[0];
    // The slow client buffers little, so the server soon has to hold its stream back; the fast
    // one reads everything as it comes.
    let slow_channel = channel(&app, Some(4096)).await;
    let mut slow = watch_on(&slow_channel, &a, 0).await;
    let mut fast = watch(&app, &a, 0).await;
    events(&mut slow, 1, Duration::from_secs(5)).await;
    events(&mut fast, 1, Duration::from_secs(5)).await;

    let referral = {
        let mut conn = app.app.conn().await.unwrap();
        storage::partner::find(&mut conn, a.lender_id, id)
            .await
            .unwrap()
            .unwrap()
    };
    let writer = {
        let app = app.app.clone();
        tokio::spawn(async move {
            use diesel_async::AsyncConnection as _;
            let mut conn = app.conn().await.unwrap();
            // A burst: 100 events per transaction.
            for _ in 0..EVENTS / 100 {
                conn.transaction(async |conn| {
                    for _ in 0..100 {
                        storage::referrals::insert_event(
                            conn,
                            &storage::referrals::NewReferralEvent {
                                referral_id: referral.id,
                                lender_id: referral.lender_id,
                                need_id: referral.need_id,
                                kind: ReferralEventKind::Created,
                                status: ReferralStatus::Pending,
                                detail: serde_json::json!({}),
                            },
                        )
                        .await?;
                    }
                    Ok::<_, diesel::result::Error>(())
                })
                .await
                .unwrap();
            }
        })
    };
    let from_fast = events(&mut fast, EVENTS, Duration::from_secs(20)).await;
    writer.await.unwrap();
    // Bounded as a whole: heartbeats would keep a stream with a gap waiting for ever.
    let from_slow = tokio::time::timeout(
        Duration::from_secs(120),
        events(&mut slow, EVENTS, Duration::from_secs(20)),
    )
    .await
    .expect("every event reaches the slow stream");
    quiet(&mut slow, Duration::from_millis(300)).await;
    assert!(
        app.feed.stats().lagged >= 1,
        "the slow stream fell out of the live ring"
    );

    let delivered = delivered_cursors(&app, a.lender_id).await;
    let cursors = |seen: &[pb::ReferralEvent]| seen.iter().map(|e| e.cursor).collect::<Vec<_>>();
    assert_eq!(cursors(&from_slow), delivered[1..]);
    assert_eq!(cursors(&from_fast), delivered[1..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_the_previous_release_keep_their_cursors_and_need_no_notify() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let id = routed(&app, 1_000_000, &[&a]).await.referrals[0];
    let mut stream = watch(&app, &a, 0).await;
    let created = events(&mut stream, 1, Duration::from_secs(5)).await;
    // A binary of the previous release inserts events without a delivery cursor and without
    // NOTIFY (its trigger is gone): the relay finds them at its next probe.
    let (client, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut inserted: Vec<i64> = Vec::new();
    for kind in ["ACKNOWLEDGED", "INFO_REQUESTED", "ACKNOWLEDGED"] {
        let row = client
            .query_one(
                "INSERT INTO referral_events (referral_id, lender_id, need_id, kind, status) \
                 SELECT id, lender_id, need_id, $2, $2 FROM referrals WHERE id = $1::text::uuid \
                 RETURNING cursor",
                &[&id.to_string(), &kind],
            )
            .await
            .unwrap();
        inserted.push(row.get(0));
    }
    let live = events(&mut stream, 3, Duration::from_secs(10)).await;
    // Committed in insertion order, so the cursor a client of the previous release stored for
    // them means the same now: resuming after one gives exactly the later ones.
    assert_eq!(live.iter().map(|e| e.cursor).collect::<Vec<_>>(), inserted);
    let mut resumed = watch(&app, &a, inserted[0]).await;
    let rest = events(&mut resumed, 2, Duration::from_secs(5)).await;
    assert_eq!(
        rest.iter().map(|e| e.cursor).collect::<Vec<_>>(),
        inserted[1..]
    );
    quiet(&mut resumed, Duration::from_millis(300)).await;
    assert!(created[0].cursor < inserted[0]);
}

/// Deadlocks PostgreSQL has detected in the test's database so far. Backends report their
/// statistics when they go idle (at most once a second), so the caller waits before reading.
async fn deadlocks(app: &TestApp) -> i64 {
    let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    db.query_one(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        &[],
    )
    .await
    .expect("read pg_stat_database")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_racing_the_sla_sweeper_never_deadlock_and_never_end_internal() {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const ROUNDS: usize = 8;
    const NEEDS_PER_ROUND: usize = 8;
    let app = TestApp::spawn().await;
    let mut banks = Vec::new();
    for i in 0..6 {
        banks.push(bank(&app, &format!("Bank {i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = deadlocks(&app).await;
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let (mut sweeps, mut failed_sweeps) = (0, Vec::new());
    for round in 0..ROUNDS {
        // Needs routed to three banks each; their referrals' 48-hour deadline has passed at `at`.
        let mut referrals = Vec::new();
        for _ in 0..NEEDS_PER_ROUND {
            let enterprise_id = enterprise(&app).await;
            let submitted = FinancingServiceClient::new(app.channel.clone())
                .submit_need(authed(
                    pb::SubmitNeedRequest {
                        idempotency_key: Uuid::new_v4().to_string(),
                        need: Some(pb::Need {
                            enterprise_id: enterprise_id.to_string(),
                            amount_minor: 3_000_000,
                            term_months: 12,
                            purpose: pb::Purpose::WorkingCapital as i32,
                            collateral: vec![pb::Collateral::Credit as i32],
                            needed_by: (Utc::now().date_naive() + TimeDelta::days(60))
                                .format("%Y-%m-%d")
                                .to_string(),
                            consent_to_share: true,
                            channel: pb::Channel::Bureau as i32,
                            ..Default::default()
                        }),
                    },
                    &app.operator,
                ))
                .await
                .expect("submit need")
                .into_inner();
            assert_eq!(submitted.referrals.len(), 3, "round {round}");
            for r in submitted.referrals {
                let bank = banks
                    .iter()
                    .position(|b| b.lender_id.to_string() == r.lender_id)
                    .unwrap();
                referrals.push((bank, r.id.parse::<Uuid>().unwrap()));
            }
        }
        let at = Utc::now() + TimeDelta::hours(49);
        let stop = Arc::new(AtomicBool::new(false));
        let sweeper = {
            let (app, stop) = (app.app.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut passes, mut failures) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = app.sweep_once(at).await {
                        failures.push(format!("{e:?}"));
                    }
                    passes += 1;
                }
                (passes, failures)
            })
        };
        // Every bank acknowledges and approves its referrals while the sweeper expires them.
        let answers = referrals.iter().map(|&(bank, id)| {
            let bank = &banks[bank];
            let mut client = partner(&app);
            async move {
                let acknowledged = client
                    .acknowledge_referral(authed(
                        pb::AcknowledgeReferralRequest {
                            referral_id: id.to_string(),
                        },
                        &bank.token,
                    ))
                    .await
                    .map(drop);
                let decided = client
                    .decide_referral(authed(
                        approve(id, &format!("approve-{id}"), 1_000_000, 450),
                        &bank.token,
                    ))
                    .await
                    .map(drop);
                [acknowledged, decided]
            }
        });
        for outcome in futures::future::join_all(answers)
            .await
            .into_iter()
            .flatten()
        {
            let code = outcome.map_or_else(|status| status.code(), |()| Code::Ok);
            *codes.entry(format!("{code:?}")).or_default() += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let (passes, failures) = sweeper.await.expect("the sweeper task");
        sweeps += passes;
        failed_sweeps.extend(failures);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let deadlocked = deadlocks(&app).await - before;
    eprintln!(
        "answers by code: {codes:?}; sweeps: {sweeps}, failed: {}; deadlocks: {deadlocked}",
        failed_sweeps.len()
    );
    assert_eq!(
        deadlocked,
        0,
        "deadlocks detected; answers by code: {codes:?}; failed sweeps: {}",
        failed_sweeps.len()
    );
    assert_eq!(failed_sweeps, Vec::<String>::new(), "no sweep fails");
    assert_eq!(
        codes.get("Internal"),
        None,
        "no answer is INTERNAL: {codes:?}"
    );
    // The race was real: some answers won, some lost to the sweeper.
    assert!(codes.get("Ok").copied().unwrap_or(0) > 0, "{codes:?}");
    assert!(
        codes.keys().all(|c| c == "Ok" || c == "FailedPrecondition"),
        "{codes:?}"
    );
}

/// Opens a watch stream with `token`: the stream, or the status the call was refused with.
async fn try_watch(
    app: &TestApp,
    token: &str,
) -> Result<tonic::Streaming<pb::WatchReferralsResponse>, tonic::Status> {
    partner(app)
        .watch_referrals(authed(pb::WatchReferralsRequest { after_cursor: 0 }, token))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credential_holds_at_most_its_share_of_watch_streams() {
    let app = TestApp::spawn_configured(finmatch::config::ServerArgs {
        max_watch_streams_per_credential: 2,
        ..Default::default()
    })
    .await;
    let a = bank(&app, "Bank A").await;
    let b = bank(&app, "Bank B").await;
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(try_watch(&app, &a.token).await.expect("within the limit"));
    }
    let refused = try_watch(&app, &a.token).await.expect_err("over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("FINMATCH_MAX_WATCH_STREAMS_PER_CREDENTIAL"),
        "{refused:?}"
    );
    // The limit is the credential's: another credential of the same bank, and another bank,
    // still open theirs.
    let a_again = app.token(Role::Lender, Some(a.lender_id)).await;
    let _other_credential = try_watch(&app, &a_again).await.expect("own count");
    let _other_bank = try_watch(&app, &b.token).await.expect("own count");
    assert_eq!(app.feed.open_streams(), 4);

    // A stream the bank closes gives its place back.
    drop(open.pop());
    eventually("the closed stream is no longer counted", || {
        app.feed.open_streams() == 3
    })
    .await;
    let mut reopened = try_watch(&app, &a.token).await.expect("a place is free");
    let routed = routed(&app, 1_000_000, &[&a, &b]).await;
    let got = events(&mut reopened, 1, Duration::from_secs(10)).await;
    assert_eq!(
        got[0].referral.as_ref().unwrap().id,
        routed.referrals[0].to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_watch_streams_count_against_the_servers_concurrency_limit() {
    let app = TestApp::spawn_configured(finmatch::config::ServerArgs {
        max_concurrent_calls: 3,
        ..Default::default()
    })
    .await;
    let banks = [
        bank(&app, "Bank A").await,
        bank(&app, "Bank B").await,
        bank(&app, "Bank C").await,
    ];
    // Each stream keeps one of the three permits; opening one needs a second for the call
    // itself, so two streams fit and a third does not.
    let first = try_watch(&app, &banks[0].token).await.expect("a permit");
    let _second = try_watch(&app, &banks[1].token).await.expect("a permit");
    let refused = try_watch(&app, &banks[2].token)
        .await
        .expect_err("no permit left for a stream");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("FINMATCH_MAX_CONCURRENT_CALLS"),
        "{refused:?}"
    );
    // A unary call still gets the last permit.
    list_referrals_of(&app, &banks[0]).await;

    drop(first);
    eventually("the closed stream gives its permit back", || {
        app.feed.open_streams() == 1
    })
    .await;
    try_watch(&app, &banks[2].token)
        .await
        .expect("the freed permit");
}

/// Any unary call of `bank`'s: a listing of its referrals.
async fn list_referrals_of(app: &TestApp, bank: &Bank) {
    partner(app)
        .list_referrals(authed(pb::ListReferralsRequest::default(), &bank.token))
        .await
        .expect("a unary call within the limit");
}

/// A LENDER credential for `bank`'s lender issued over the API: its id and token.
async fn issue(
    app: &TestApp,
    bank: &Bank,
    expire_time: Option<prost_types::Timestamp>,
) -> Result<(Uuid, String), tonic::Status> {
    let issued = LenderServiceClient::new(app.channel.clone())
        .issue_credential(authed(
            pb::IssueCredentialRequest {
                role: pb::Role::Lender as i32,
                lender_id: bank.lender_id.to_string(),
                label: "bank gateway".into(),
                expire_time,
                ..Default::default()
            },
            &app.operator,
        ))
        .await?
        .into_inner();
    Ok((issued.credential_id.parse().unwrap(), issued.token))
}

/// What a watch stream yields until it ends (within `within`): its events, and the status
/// it ended with.
async fn until_ended(
    stream: &mut tonic::Streaming<pb::WatchReferralsResponse>,
    within: Duration,
) -> (Vec<pb::ReferralEvent>, tonic::Status) {
    let mut got = Vec::new();
    let ended = tokio::time::timeout(within, async {
        loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    if let Some(Payload::Event(event)) = message.payload {
                        got.push(event);
                    }
                }
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the stream did not end within {within:?}"));
    (got, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_the_credentials_streams_on_every_replica_within_a_second() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    let a = bank(&app, "Bank A").await;
    let (credential_id, token) = issue(&app, &a, None).await.unwrap();
    let gateway = Bank {
        token,
        lender_id: a.lender_id,
        product_id: a.product_id,
    };
    let mut here = watch(&app, &gateway, 0).await;
    let mut there = watch(&replica, &gateway, 0).await;
    let before = routed(&app, 1_000_000, &[&a]).await.referrals[0];
    for stream in [&mut here, &mut there] {
        let got = events(stream, 1, Duration::from_secs(5)).await;
        assert_eq!(got[0].referral.as_ref().unwrap().id, before.to_string());
    }
    // Another credential of the same bank is not affected.
    let mut other = watch(&replica, &a, 0).await;

    LenderServiceClient::new(app.channel.clone())
        .revoke_credential(authed(
            pb::RevokeCredentialRequest {
                credential_id: credential_id.to_string(),
            },
            &app.operator,
        ))
        .await
        .expect("revoke");
    // Quiet streams: no event comes to end them; the revocation itself does.
    for stream in [&mut here, &mut there] {
        let (got, ended) = until_ended(stream, Duration::from_secs(1)).await;
        assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
        assert!(got.is_empty(), "{got:?}");
    }
    let after = routed(&app, 2_000_000, &[&a]).await.referrals[0];
    let got = events(&mut other, 2, Duration::from_secs(5)).await;
    assert_eq!(got[1].referral.as_ref().unwrap().id, after.to_string());
    let refused = try_watch(&replica, &gateway.token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

/// Revokes in PostgreSQL directly, as a DBA would, with no notification: the replicas hear of
/// it only from the database.
async fn revoke_silently(app: &TestApp, credential_id: Uuid) {
    let (client, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE credentials SET revoked_at = now() WHERE id = $1::text::uuid",
            &[&credential_id.to_string()],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gets_nothing_committed_after_its_credentials_revocation() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let (credential_id, token) = issue(&app, &a, None).await.unwrap();
    let gateway = Bank {
        token,
        lender_id: a.lender_id,
        product_id: a.product_id,
    };
    let mut live = watch(&app, &gateway, 0).await;
    let first = routed(&app, 1_000_000, &[&a]).await.referrals[0];
    let got = events(&mut live, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].referral.as_ref().unwrap().id, first.to_string());

    // Unheard of by any listener, the revocation must still hold back what commits after it:
    // from the live fan-out...
    revoke_silently(&app, credential_id).await;
    let after = routed(&app, 2_000_000, &[&a]).await.referrals[0];
    let (got, ended) = until_ended(&mut live, Duration::from_secs(2)).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(
        got.iter()
            .all(|e| e.referral.as_ref().unwrap().id != after.to_string()),
        "the live stream delivered an event committed after the revocation: {got:?}"
    );
    // ...and from the table, to a stream opened while the token is still in a replica's
    // cache (or refused outright, when it is not).
    match try_watch(&app, &gateway.token).await {
        Err(refused) => assert_eq!(refused.code(), Code::Unauthenticated),
        Ok(mut replay) => {
            let (got, ended) = until_ended(&mut replay, Duration::from_secs(2)).await;
            assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
            assert!(got.is_empty(), "a revoked credential was replayed {got:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_credential_is_refused_and_its_streams_end() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let past = prost_types::Timestamp {
        seconds: Utc::now().timestamp() - 1,
        nanos: 0,
    };
    let refused = issue(&app, &a, Some(past)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&refused), ["expire_time"]);

    let expires = Utc::now() + TimeDelta::seconds(3);
    let (_, token) = issue(
        &app,
        &a,
        Some(prost_types::Timestamp {
            seconds: expires.timestamp(),
            nanos: 0,
        }),
    )
    .await
    .unwrap();
    let gateway = Bank {
        token,
        lender_id: a.lender_id,
        product_id: a.product_id,
    };
    let mut stream = watch(&app, &gateway, 0).await;
    list_referrals_of(&app, &gateway).await;
    let (_, ended) = until_ended(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(
        Utc::now() >= expires - TimeDelta::milliseconds(1000),
        "ended before the expiry"
    );
    let refused = partner(&app)
        .list_referrals(authed(pb::ListReferralsRequest::default(), &gateway.token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}

/// The need's status and its referrals' statuses, as the bureau reads them.
async fn need_statuses(app: &TestApp, need_id: Uuid) -> (pb::NeedStatus, Vec<pb::ReferralStatus>) {
    let got = FinancingServiceClient::new(app.channel.clone())
        .get_need(authed(
            pb::GetNeedRequest {
                need_id: need_id.to_string(),
            },
            &app.operator,
        ))
        .await
        .expect("get need")
        .into_inner();
    (
        got.need.unwrap().status(),
        got.referrals.iter().map(|r| r.status()).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_need_outlives_its_needed_by_and_the_bank_records_its_loan() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let today = finmatch::domain::BureauCalendar::default().today();
    let approved_need = routed_by(&app, 1_000_000, &[&a], today).await;
    let waiting_need = routed_by(&app, 2_000_000, &[&a], today).await;
    let referral = approved_need.referrals[0];
    approved(&app, &a, referral, 1_000_000).await;

    // A day and a half on (the SLA is 48 hours): both needs are past needed_by.
    let report = app
        .app
        .sweep_once(Utc::now() + TimeDelta::hours(36))
        .await
        .unwrap();
    assert_eq!(report.expired_needs, 1, "{report:?}");
    assert_eq!(
        need_statuses(&app, waiting_need.need_id).await,
        (pb::NeedStatus::Expired, vec![pb::ReferralStatus::Cancelled])
    );
    assert_eq!(
        need_statuses(&app, approved_need.need_id).await,
        (pb::NeedStatus::Approved, vec![pb::ReferralStatus::Approved])
    );
    disburse(&app, &a, disbursement(referral, "LN-APPROVED-1", 1_000_000))
        .await
        .expect("the approved loan is recorded");
    assert_eq!(
        need_statuses(&app, approved_need.need_id).await,
        (pb::NeedStatus::Funded, vec![pb::ReferralStatus::Disbursed])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needed_by_is_a_day_in_the_bureaus_time_zone() {
    let shanghai = TestApp::spawn().await;
    let utc = TestApp::spawn_configured(finmatch::config::ServerArgs {
        time_zone: chrono_tz::UTC,
        ..Default::default()
    })
    .await;
    let today = finmatch::domain::BureauCalendar::default().today();
    // 20:00 UTC on the need's last day is 04:00 the next morning in Beijing.
    let evening = today.and_hms_opt(20, 0, 0).unwrap().and_utc();
    let mut needs = Vec::new();
    for app in [&shanghai, &utc] {
        let a = bank(app, "Bank A").await;
        needs.push(routed_by(app, 1_000_000, &[&a], today).await.need_id);
    }
    let report = shanghai.app.sweep_once(evening).await.unwrap();
    assert_eq!(report.expired_needs, 1, "past needed_by in Beijing");
    assert_eq!(
        need_statuses(&shanghai, needs[0]).await.0,
        pb::NeedStatus::Expired
    );
    let report = utc.app.sweep_once(evening).await.unwrap();
    assert_eq!(report.expired_needs, 0, "still needed_by's day in UTC");
    let report = utc
        .app
        .sweep_once(evening + TimeDelta::hours(4))
        .await
        .unwrap();
    assert_eq!(report.expired_needs, 1, "the next day in UTC");

    // Submission takes "today" in the bureau's zone too.
    let yesterday = today - TimeDelta::days(1);
    let refused = FinancingServiceClient::new(shanghai.channel.clone())
        .submit_need(authed(
            pb::SubmitNeedRequest {
                idempotency_key: Uuid::new_v4().to_string(),
                need: Some(pb::Need {
                    enterprise_id: enterprise(&shanghai).await.to_string(),
                    amount_minor: 1_000_000,
                    term_months: 12,
                    purpose: pb::Purpose::WorkingCapital as i32,
                    collateral: vec![pb::Collateral::Credit as i32],
                    needed_by: yesterday.format("%Y-%m-%d").to_string(),
                    consent_to_share: true,
                    channel: pb::Channel::Bureau as i32,
                    ..Default::default()
                }),
            },
            &shanghai.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&refused), ["need.needed_by"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_after_the_response_deadline_is_refused_before_the_sweeper_runs() {
    let app = TestApp::spawn_configured(finmatch::config::ServerArgs {
        sweep_interval_secs: 3600,
        ..Default::default()
    })
    .await;
    let a = bank(&app, "Bank A").await;
    let b = bank(&app, "Bank B").await;
    let routed = routed(&app, 1_000_000, &[&a, &b]).await;
    let (late, on_time) = (routed.referrals[0], routed.referrals[1]);
    acknowledge(&app, &a, late).await;
    let (client, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE referrals SET sla_deadline = now() - interval '1 minute' \
             WHERE id = $1::text::uuid",
            &[&late.to_string()],
        )
        .await
        .unwrap();

    for request in [
        approve(late, "late-approve", 1_000_000, 450),
        decline(late, "late-decline", pb::DeclineReason::Capacity, ""),
    ] {
        let refused = partner(&app)
            .decide_referral(authed(request, &a.token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_eq!(
            error_reason(&refused).as_deref(),
            Some("RESPONSE_DEADLINE_PASSED")
        );
        assert!(refused.message().contains("deadline"), "{refused:?}");
    }
    let refused = partner(&app)
        .request_information(authed(
            pb::RequestInformationRequest {
                referral_id: late.to_string(),
                message: "latest accounts, please".into(),
            },
            &a.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        error_reason(&refused).as_deref(),
        Some("RESPONSE_DEADLINE_PASSED")
    );
    // Nothing changed (the sweeper will expire it), and the other bank, within its deadline,
    // answers as usual.
    assert_eq!(
        get(&app, &a, late).await.unwrap().status(),
        pb::ReferralStatus::Acknowledged
    );
    approved(&app, &b, on_time, 1_000_000).await;
}

/// The audit rows written since `since` (moved past them), by RPC name.
async fn audited_since(db: &tokio_postgres::Client, since: &mut i64) -> Vec<String> {
    let rows = db
        .query(
            "SELECT id, rpc FROM audit_log WHERE id > $1 ORDER BY id",
            &[&*since],
        )
        .await
        .unwrap();
    if let Some(last) = rows.last() {
        *since = last.get(0);
    }
    rows.iter().map(|r| r.get(1)).collect()
}

/// Every mutating RPC writes exactly one audit row naming it; a call refused, a replay and a
/// repeat that changes nothing write none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_call_writes_one_audit_row_and_a_refused_or_replayed_one_none() {
    use finmatch::proto::special_loan_service_client::SpecialLoanServiceClient;
    let app = TestApp::spawn().await;
    let a = bank(&app, "Audit Bank").await;
    let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut since = 0;
    audited_since(&db, &mut since).await;
    let op = app.operator.clone();
    let today = Utc::now().date_naive().format("%Y-%m-%d").to_string();
    let mut enterprises = EnterpriseServiceClient::new(app.channel.clone());
    let mut financing = FinancingServiceClient::new(app.channel.clone());
    let mut lenders = LenderServiceClient::new(app.channel.clone());
    let mut loans = SpecialLoanServiceClient::new(app.channel.clone());
    let mut bank = partner(&app);
    macro_rules! audited {
        ($($rpc:literal),*) => {{
            let expected: Vec<String> = vec![$(format!("finmatch.v1.{}", $rpc)),*];
            assert_eq!(audited_since(&db, &mut since).await, expected);
        }};
    }

    // Enterprises.
    let e = enterprise(&app).await;
    audited!("EnterpriseService/CreateEnterprise");
    enterprises
        .update_enterprise(authed(
            pb::UpdateEnterpriseRequest {
                enterprise: Some(pb::Enterprise {
                    id: e.to_string(),
                    employees: 130,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["employees".into()],
                }),
            },
            &op,
        ))
        .await
        .unwrap();
    audited!("EnterpriseService/UpdateEnterprise");
    let grant = pb::GrantDesignationRequest {
        enterprise_id: e.to_string(),
        list_code: "NATIONAL_KEY_SUPPLY".into(),
        granted_on: "2020-01-01".into(),
        reference: "N-1".into(),
        ..Default::default()
    };
    enterprises
        .grant_designation(authed(grant.clone(), &op))
        .await
        .unwrap();
    audited!("EnterpriseService/GrantDesignation");
    enterprises
        .grant_designation(authed(grant, &op))
        .await
        .unwrap_err();
    audited!();
    enterprises
        .revoke_designation(authed(
            pb::RevokeDesignationRequest {
                enterprise_id: e.to_string(),
                list_code: "NATIONAL_KEY_SUPPLY".into(),
            },
            &op,
        ))
        .await
        .unwrap();
    audited!("EnterpriseService/RevokeDesignation");

    // Needs.
    let submit = |key: &str, purpose: pb::Purpose| pb::SubmitNeedRequest {
        idempotency_key: key.into(),
        need: Some(pb::Need {
            enterprise_id: e.to_string(),
            amount_minor: 1_000_000,
            term_months: 12,
            purpose: purpose as i32,
            collateral: vec![pb::Collateral::Credit as i32],
            needed_by: "2030-06-30".into(),
            consent_to_share: true,
            channel: pb::Channel::Bureau as i32,
            ..Default::default()
        }),
    };
    let submitted = financing
        .submit_need(authed(submit("need-1", pb::Purpose::WorkingCapital), &op))
        .await
        .unwrap()
        .into_inner();
    audited!("FinancingService/SubmitNeed");
    financing
        .submit_need(authed(submit("need-1", pb::Purpose::WorkingCapital), &op))
        .await
        .unwrap();
    audited!();
    let r: Uuid = submitted.referrals[0].id.parse().unwrap();

    // A bank's answers.
    acknowledge(&app, &a, r).await;
    audited!("PartnerService/AcknowledgeReferral");
    acknowledge(&app, &a, r).await;
    audited!();
    bank.request_information(authed(
        pb::RequestInformationRequest {
            referral_id: r.to_string(),
            message: "the latest management accounts, please".into(),
        },
        &a.token,
    ))
    .await
    .unwrap();
    audited!("PartnerService/RequestInformation");
    acknowledge(&app, &a, r).await;
    audited!("PartnerService/AcknowledgeReferral");
    bank.decide_referral(authed(approve(r, "decide-1", 1_000_000, 450), &a.token))
        .await
        .unwrap();
    audited!("PartnerService/DecideReferral");
    bank.decide_referral(authed(approve(r, "decide-1", 1_000_000, 450), &a.token))
        .await
        .unwrap();
    bank.decide_referral(authed(approve(r, "decide-2", 900_000, 450), &a.token))
        .await
        .unwrap_err();
    audited!();
    let loan = pb::RecordDisbursementRequest {
        disbursed_on: today.clone(),
        ..disbursement(r, "LN-AUDIT-1", 600_000)
    };
    disburse(&app, &a, loan.clone()).await.unwrap();
    audited!("PartnerService/RecordDisbursement");
    disburse(&app, &a, loan).await.unwrap();
    disburse(&app, &a, disbursement(r, "LN-AUDIT-2", 2_000_000))
        .await
        .unwrap_err();
    audited!();

    let withdrawn = financing
        .submit_need(authed(submit("need-2", pb::Purpose::Payroll), &op))
        .await
        .unwrap()
        .into_inner()
        .need
        .unwrap();
    audited!("FinancingService/SubmitNeed");
    financing
        .withdraw_need(authed(
            pb::WithdrawNeedRequest {
                need_id: withdrawn.id.clone(),
                reason: "funded by its own bank".into(),
            },
            &op,
        ))
        .await
        .unwrap();
    audited!("FinancingService/WithdrawNeed");
    let rerouted = financing
        .submit_need(authed(submit("need-3", pb::Purpose::Equipment), &op))
        .await
        .unwrap()
        .into_inner()
        .need
        .unwrap();
    audited!("FinancingService/SubmitNeed");
    financing
        .reroute_need(authed(
            pb::RerouteNeedRequest {
                need_id: rerouted.id,
                target_open_referrals: Some(2),
            },
            &op,
        ))
        .await
        .unwrap();
    audited!("FinancingService/RerouteNeed");

    // Lenders, products and credentials.
    let other = crate::helpers::create_lender(&app, "Audit Bank B").await;
    audited!("LenderService/CreateLender");
    let product = lenders
        .create_product(authed(
            pb::CreateProductRequest {
                product: Some(pb::Product {
                    daily_capacity: 10,
                    ..crate::helpers::working_capital(other, "Audit working capital")
                }),
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    audited!("LenderService/CreateProduct");
    lenders
        .update_product(authed(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: product.id,
                    daily_capacity: 20,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["daily_capacity".into()],
                }),
            },
            &op,
        ))
        .await
        .unwrap();
    audited!("LenderService/UpdateProduct");
    let issued = lenders
        .issue_credential(authed(
            pb::IssueCredentialRequest {
                role: pb::Role::Lender as i32,
                lender_id: other.to_string(),
                label: "audit gateway".into(),
                ..Default::default()
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner();
    audited!("LenderService/IssueCredential");
    lenders
        .revoke_credential(authed(
            pb::RevokeCredentialRequest {
                credential_id: issued.credential_id,
            },
            &op,
        ))
        .await
        .unwrap();
    audited!("LenderService/RevokeCredential");

    // Special-loan quota.
    let program = loans
        .create_program(authed(
            pb::CreateProgramRequest {
                program: Some(pb::Program {
                    code: "AUDIT_2020".into(),
                    name: "Audit programme".into(),
                    total_quota_minor: 100_000_000,
                    rate_cap_bps: 500,
                    max_term_months: 12,
                    loan_date_from: "2020-01-25".into(),
                    one_bank_per_enterprise: true,
                    ..Default::default()
                }),
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner()
        .program
        .unwrap();
    audited!("SpecialLoanService/CreateProgram");
    loans
        .set_lender_quota(authed(
            pb::SetLenderQuotaRequest {
                program_id: program.id.clone(),
                lender_id: a.lender_id.to_string(),
                quota_minor: 1_000_000,
            },
            &op,
        ))
        .await
        .unwrap();
    audited!("SpecialLoanService/SetLenderQuota");
    let allocate = |key: &str, amount_minor: i64| pb::AllocateSpecialLoanRequest {
        idempotency_key: key.into(),
        program_id: program.id.clone(),
        lender_id: a.lender_id.to_string(),
        enterprise_id: e.to_string(),
        referral_id: r.to_string(),
        amount_minor,
        rate_bps: 450,
        term_months: 12,
        loan_date: today.clone(),
    };
    let first = loans
        .allocate_special_loan(authed(allocate("alloc-1", 500_000), &op))
        .await
        .unwrap()
        .into_inner()
        .allocation
        .unwrap();
    audited!("SpecialLoanService/AllocateSpecialLoan");
    loans
        .allocate_special_loan(authed(allocate("alloc-1", 500_000), &op))
        .await
        .unwrap();
    loans
        .allocate_special_loan(authed(allocate("alloc-2", 900_000), &op))
        .await
        .unwrap_err();
    audited!();
    loans
        .confirm_allocation(authed(
            pb::ConfirmAllocationRequest {
                allocation_id: first.id,
                loan_reference: "LN-AUDIT-1".into(),
                disbursed_on: today.clone(),
            },
            &op,
        ))
        .await
        .unwrap();
    audited!("SpecialLoanService/ConfirmAllocation");
    let second = loans
        .allocate_special_loan(authed(allocate("alloc-3", 100_000), &op))
        .await
        .unwrap()
        .into_inner()
        .allocation
        .unwrap();
    audited!("SpecialLoanService/AllocateSpecialLoan");
    loans
        .release_allocation(authed(
            pb::ReleaseAllocationRequest {
                allocation_id: second.id,
                reason: "not taken up".into(),
            },
            &op,
        ))
        .await
        .unwrap();
    audited!("SpecialLoanService/ReleaseAllocation");
}

/// Three banks disbursing parts of one need at the same moment, on two replicas, parts that
/// together exceed it: the need is funded exactly by the parts that fit, never beyond its amount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_partial_disbursements_on_three_referrals_never_fund_a_need_beyond_it() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    let banks = [
        bank(&app, "Bank A").await,
        bank(&app, "Bank B").await,
        bank(&app, "Bank C").await,
    ];
    let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for round in 0..10 {
        let r = routed(&app, 1_000_000, &[&banks[0], &banks[1], &banks[2]]).await;
        for (bank, &referral) in banks.iter().zip(&r.referrals) {
            approved(&app, bank, referral, 1_000_000).await;
        }
        // 400,000 each: two fit in 1,000,000, the third does not.
        let part = |i: usize| disbursement(r.referrals[i], &format!("P-{round}-{i}"), 400_000);
        let (one, two, three) = tokio::join!(
            disburse(&app, &banks[0], part(0)),
            disburse(&replica, &banks[1], part(1)),
            disburse(&app, &banks[2], part(2)),
        );
        let outcomes = [one, two, three];
        assert_eq!(
            outcomes.iter().filter(|o| o.is_ok()).count(),
            2,
            "round {round}: {outcomes:?}"
        );
        let refused = outcomes.iter().find_map(|o| o.as_ref().err()).unwrap();
        assert_eq!(refused.code(), Code::FailedPrecondition, "round {round}");
        let row = db
            .query_one(
                "SELECT n.funded_minor, n.status, \
                        (SELECT coalesce(sum(d.amount_minor), 0)::bigint FROM disbursements d \
                         WHERE d.need_id = n.id) \
                 FROM needs n WHERE n.id = $1::text::uuid",
                &[&r.need_id.to_string()],
            )
            .await
            .unwrap();
        let (funded, status, paid): (i64, String, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!((funded, paid), (800_000, 800_000), "round {round}");
        assert_eq!(status, "APPROVED", "round {round}: partly funded");
    }
}

/// Two approvals of one referral at the same moment, with different keys and amounts, on two
/// replicas: exactly one takes effect, with one audit row and one APPROVED event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_approvals_of_one_referral_take_effect_once() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    let a = bank(&app, "Bank A").await;
    let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for round in 0..10 {
        let r = routed(&app, 1_000_000, &[&a]).await;
        let id = r.referrals[0];
        acknowledge(&app, &a, id).await;
        let (mut here, mut there) = (partner(&app), partner(&replica));
        let (one, two) = tokio::join!(
            here.decide_referral(authed(
                approve(id, &format!("a-{round}"), 1_000_000, 450),
                &a.token
            )),
            there.decide_referral(authed(
                approve(id, &format!("b-{round}"), 900_000, 500),
                &a.token
            )),
        );
        let outcomes = [one.map(|r| r.into_inner()), two.map(|r| r.into_inner())];
        assert_eq!(
            outcomes.iter().filter(|o| o.is_ok()).count(),
            1,
            "round {round}: {outcomes:?}"
        );
        let lost = outcomes.iter().find_map(|o| o.as_ref().err()).unwrap();
        assert_eq!(
            (lost.code(), error_reason(lost).as_deref()),
            (Code::FailedPrecondition, Some("ILLEGAL_TRANSITION")),
            "round {round}: {lost:?}"
        );
        let count = |sql: &'static str| {
            let db = &db;
            async move {
                db.query_one(sql, &[&id.to_string()])
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
            }
        };
        assert_eq!(
            count(
                "SELECT count(*) FROM audit_log WHERE rpc = 'finmatch.v1.PartnerService/DecideReferral' \
                 AND entity_id = $1"
            )
            .await,
            1,
            "round {round}"
        );
        assert_eq!(
            count(
                "SELECT count(*) FROM referral_events WHERE referral_id = $1::text::uuid \
                 AND kind = 'APPROVED'"
            )
            .await,
            1,
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_hears_deliveries_again_after_its_listening_connection_is_cut() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    let a = bank(&app, "Hankou Bank").await;
    eventually("one replica is the relay", || {
        app.feed.stats().relay || replica.feed.stats().relay
    })
    .await;
    // The replica that is not the relay learns of new deliveries only by notification (or by
    // its lease check and safety-net probe, every few seconds).
    let follower = if app.feed.stats().relay {
        &replica
    } else {
        &app
    };

    let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let name = finmatch::service::events::FEED_LISTENER_NAME;
    let listeners = async || {
        db.query(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = $1 AND state = 'idle'",
            &[&name],
        )
        .await
        .unwrap()
        .len()
    };
    let two_listening = async || {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while listeners().await != 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no two listeners in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    two_listening().await;
    let terminated = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            &[&name],
        )
        .await
        .unwrap();
    assert_eq!(
        terminated.len(),
        2,
        "each feed listens on a connection of its own"
    );
    // The listeners reconnect by themselves and LISTEN again.
    two_listening().await;
    // Give the feeds' rounds a moment to start again after their backoff.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Each new referral reaches the follower's stream within a second: by notification, not by
    // its periodic checks (a wake every 3 to 5 s would miss most of these windows).
    let mut stream = watch(follower, &a, 0).await;
    for round in 0..4 {
        let routed = routed(&app, 1_000_000 + round, &[&a]).await;
        let live = events(&mut stream, 1, Duration::from_secs(1)).await;
        let referral = live[0].referral.as_ref().unwrap();
        assert_eq!(
            referral.id,
            routed.referrals[0].to_string(),
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_follows_again_when_its_pooled_connection_is_cut_and_its_listener_is_not() {
    let app = TestApp::spawn().await;
    let a = bank(&app, "Jiangxia Bank").await;
    let mut stream = watch(&app, &a, 0).await;
    // A first delivery, so the feed has heard a notification while it waited.
    let first = routed(&app, 1_000_000, &[&a]).await;
    let live = events(&mut stream, 1, Duration::from_secs(5)).await;
    assert_eq!(
        live[0].referral.as_ref().unwrap().id,
        first.referrals[0].to_string()
    );

    // Every connection of the server but its listeners: the feed's round fails on its next
    // step while its listener goes on listening, so no new Listening will come.
    let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let terminated = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND application_name NOT LIKE 'finmatch % listener'",
            &[],
        )
        .await
        .unwrap();
    assert!(!terminated.is_empty(), "the feed holds a pooled connection");
    let listening: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = $1",
            &[&finmatch::service::events::FEED_LISTENER_NAME],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(listening, 1, "the feed's listener is untouched");

    // The next referral reaches the open stream well before its heartbeat is due: the feed
    // starts a new round on a fresh pooled connection without waiting for its listener.
    // The pool may hand out a connection that was cut before it notices: wait until calls
    // go through again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(status) = EnterpriseServiceClient::new(app.channel.clone())
        .list_enterprises(authed(pb::ListEnterprisesRequest::default(), &app.operator))
        .await
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no call goes through after the cut: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = routed(&app, 1_000_001, &[&a]).await;
    let live = events(&mut stream, 1, Duration::from_secs(5)).await;
    assert_eq!(
        live[0].referral.as_ref().unwrap().id,
        second.referrals[0].to_string()
    );
}

/// `updated_at` is set by the statements that change a row (no trigger does it, so that a
/// distributed PostgreSQL can hold these tables): acknowledging moves the referral's
/// update_time, withdrawing moves the need's and the cancelled referral's again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_moves_the_update_time_of_the_rows_it_changes() {
    fn at(t: &Option<prost_types::Timestamp>) -> (i64, i32) {
        let t = t.as_ref().expect("timestamp filled");
        (t.seconds, t.nanos)
    }
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let routed = routed(&app, 1_000_000, &[&a]).await;
    let id = routed.referrals[0];
    let pending = get(&app, &a, id).await.unwrap();
    assert_eq!(at(&pending.update_time), at(&pending.create_time));

    let acked = acknowledge(&app, &a, id).await;
    assert!(at(&acked.update_time) > at(&pending.update_time));
    let need_before = need_of(&get(&app, &a, id).await.unwrap()).clone();

    let withdrawn = FinancingServiceClient::new(app.channel.clone())
        .withdraw_need(authed(
            pb::WithdrawNeedRequest {
                need_id: routed.need_id.to_string(),
                reason: "financed by a shareholder loan".into(),
            },
            &app.operator,
        ))
        .await
        .expect("withdraw")
        .into_inner();
    let need = withdrawn.need.unwrap();
    assert_eq!(need.status, pb::NeedStatus::Withdrawn as i32);
    assert!(at(&need.update_time) > at(&need_before.update_time));
    let cancelled = get(&app, &a, id).await.unwrap();
    assert_eq!(status(&cancelled), pb::ReferralStatus::Cancelled);
    assert!(at(&cancelled.update_time) > at(&acked.update_time));
}

/// A need, its referrals and their disbursements carry the enterprise's routing key in their
/// ids (`domain::ids`), so an engine distributed by enterprise finds any of them from the id a
/// bank quotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_needs_referrals_and_loans_carry_its_enterprises_routing_key() {
    use finmatch::domain::ids::{key_of, routing_key};
    let app = TestApp::spawn().await;
    let a = bank(&app, "Bank A").await;
    let b = bank(&app, "Bank B").await;
    let routed = routed(&app, 1_000_000, &[&a, &b]).await;
    let referral = get(&app, &a, routed.referrals[0]).await.unwrap();
    let enterprise_id: Uuid = need_of(&referral).enterprise_id.parse().unwrap();
    let key = Some(routing_key(enterprise_id));
    assert_eq!(key_of(routed.need_id), key, "need {}", routed.need_id);
    for id in &routed.referrals {
        assert_eq!(key_of(*id), key, "referral {id}");
    }
    approved(&app, &a, routed.referrals[0], 600_000).await;
    let loan = disburse(
        &app,
        &a,
        disbursement(routed.referrals[0], "LN-KEY", 600_000),
    )
    .await
    .unwrap()
    .disbursement
    .unwrap();
    let loan_id: Uuid = loan.id.parse().unwrap();
    assert_eq!(key_of(loan_id), key, "disbursement {loan_id}");
    // Another enterprise's need has (almost always) another key; the ids are never the same.
    let other = routed_by(
        &app,
        1_000_000,
        &[&a, &b],
        finmatch::domain::BureauCalendar::default().today() + TimeDelta::days(60),
    )
    .await;
    assert_ne!(other.need_id, routed.need_id);
    assert_eq!(key_of(other.need_id), key_of(other.referrals[0]));
}
