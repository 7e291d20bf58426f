//! Crash safety, by causing the crash: `finmatch serve` is killed with SIGKILL in the middle of a
//! stream of SubmitNeed, DecideReferral, RecordDisbursement and AllocateSpecialLoan calls from
//! several clients, then started again. What a client was told is stored is stored whole,
//! nothing is stored half, every counter equals the sum of its rows, and retries with the same
//! keys return what was stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use finmatch::domain::Role;
use finmatch::proto as pb;
use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;
use finmatch::proto::financing_service_client::FinancingServiceClient;
use finmatch::proto::lender_service_client::LenderServiceClient;
use finmatch::proto::partner_service_client::PartnerServiceClient;
use finmatch::proto::special_loan_service_client::SpecialLoanServiceClient;
use tonic::transport::Channel;

use crate::helpers::{ServerProcess, TestApp, authed, next_credit_code};

const CLIENTS: usize = 4;
const AMOUNT: i64 = 1_000_000;

/// A call the server answered OK, kept to be sent again after the restart.
#[derive(Debug, Clone)]
enum Acked {
    Submit(pb::SubmitNeedRequest, pb::SubmitNeedResponse),
    Decide(String, pb::DecideReferralRequest, Box<pb::Referral>),
    Disburse(String, pb::RecordDisbursementRequest, pb::Disbursement),
    Allocate(String, pb::AllocateSpecialLoanRequest, pb::Allocation),
}

/// The market every client works in: lenders with their tokens, and a program they all share.
struct Market {
    operator: String,
    tokens: HashMap<String, String>,
    program_id: String,
    today: String,
}

async fn market(app: &TestApp) -> Market {
    let mut lenders = LenderServiceClient::new(app.channel.clone());
    let mut loans = SpecialLoanServiceClient::new(app.channel.clone());
    let program = loans
        .create_program(authed(
            pb::CreateProgramRequest {
                program: Some(pb::Program {
                    code: "CRASH_2020".into(),
                    name: "Crash programme".into(),
                    total_quota_minor: 900_000_000_000,
                    rate_cap_bps: 500,
                    max_term_months: 12,
                    loan_date_from: "2020-01-25".into(),
                    one_bank_per_enterprise: true,
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .program
        .unwrap();
    let mut tokens = HashMap::new();
    for n in 0..3 {
        let lender = crate::helpers::create_lender(app, &format!("Crash Bank {n}")).await;
        lenders
            .create_product(authed(
                pb::CreateProductRequest {
                    product: Some(pb::Product {
                        daily_capacity: 100_000,
                        ..crate::helpers::working_capital(
                            lender,
                            &format!("Crash Bank {n} working capital"),
                        )
                    }),
                },
                &app.operator,
            ))
            .await
            .unwrap();
        loans
            .set_lender_quota(authed(
                pb::SetLenderQuotaRequest {
                    program_id: program.id.clone(),
                    lender_id: lender.to_string(),
                    quota_minor: 300_000_000_000,
                },
                &app.operator,
            ))
            .await
            .unwrap();
        tokens.insert(
            lender.to_string(),
            app.token(Role::Lender, Some(lender)).await,
        );
    }
    Market {
        operator: app.operator.clone(),
        tokens,
        program_id: program.id,
        today: chrono::Utc::now()
            .date_naive()
            .format("%Y-%m-%d")
            .to_string(),
    }
}

/// One client: a new enterprise's need, then its first bank acknowledges, approves, records
/// the whole loan and reserves special-loan quota for it; again and again until a call fails
/// (the server died). Every answered call goes into `acked`.
async fn client(channel: Channel, market: Arc<Market>, c: usize, acked: Arc<Mutex<Vec<Acked>>>) {
    let op = &market.operator;
    let mut enterprises = EnterpriseServiceClient::new(channel.clone());
    let mut financing = FinancingServiceClient::new(channel.clone());
    let mut partner = PartnerServiceClient::new(channel.clone());
    let mut loans = SpecialLoanServiceClient::new(channel);
    let keep = |a: Acked| acked.lock().unwrap().push(a);
    for i in 0.. {
        let Ok(created) = enterprises
            .create_enterprise(authed(
                pb::CreateEnterpriseRequest {
                    enterprise: Some(pb::Enterprise {
                        credit_code: next_credit_code(),
                        ..crate::helpers::enterprise(0)
                    }),
                },
                op,
            ))
            .await
        else {
            return;
        };
        let enterprise_id = created.into_inner().enterprise.unwrap().id;
        let submit = pb::SubmitNeedRequest {
            idempotency_key: format!("need-{c}-{i}"),
            need: Some(pb::Need {
                enterprise_id: enterprise_id.clone(),
                amount_minor: AMOUNT,
                term_months: 12,
                purpose: pb::Purpose::WorkingCapital as i32,
                collateral: vec![pb::Collateral::Credit as i32],
                needed_by: "2030-06-30".into(),
                consent_to_share: true,
                channel: pb::Channel::Bureau as i32,
                ..Default::default()
            }),
        };
        let Ok(submitted) = financing.submit_need(authed(submit.clone(), op)).await else {
            return;
        };
        let submitted = submitted.into_inner();
        keep(Acked::Submit(submit, submitted.clone()));
        let referral = &submitted.referrals[0];
        let token = &market.tokens[&referral.lender_id];
        let ack = pb::AcknowledgeReferralRequest {
            referral_id: referral.id.clone(),
        };
        if partner
            .acknowledge_referral(authed(ack, token))
            .await
            .is_err()
        {
            return;
        }
        let decide = pb::DecideReferralRequest {
            referral_id: referral.id.clone(),
            idempotency_key: format!("decide-{c}-{i}"),
            decision: Some(pb::decide_referral_request::Decision::Approve(
                pb::ReferralApproval {
                    amount_minor: AMOUNT,
                    rate_bps: 450,
                    term_months: 12,
                },
            )),
        };
        let Ok(decided) = partner.decide_referral(authed(decide.clone(), token)).await else {
            return;
        };
        keep(Acked::Decide(
            token.clone(),
            decide,
            Box::new(decided.into_inner().referral.unwrap()),
        ));
        let disburse = pb::RecordDisbursementRequest {
            referral_id: referral.id.clone(),
            loan_reference: format!("LN-{c}-{i}"),
            amount_minor: AMOUNT,
            rate_bps: 450,
            term_months: 12,
            disbursed_on: market.today.clone(),
        };
        let Ok(disbursed) = partner
            .record_disbursement(authed(disburse.clone(), token))
            .await
        else {
            return;
        };
        keep(Acked::Disburse(
            token.clone(),
            disburse,
            disbursed.into_inner().disbursement.unwrap(),
        ));
        let allocate = pb::AllocateSpecialLoanRequest {
            idempotency_key: format!("alloc-{c}-{i}"),
            program_id: market.program_id.clone(),
            lender_id: referral.lender_id.clone(),
            enterprise_id,
            referral_id: referral.id.clone(),
            amount_minor: AMOUNT,
            rate_bps: 450,
            term_months: 12,
            loan_date: market.today.clone(),
        };
        let Ok(allocated) = loans
            .allocate_special_loan(authed(allocate.clone(), token))
            .await
        else {
            return;
        };
        keep(Acked::Allocate(
            token.clone(),
            allocate,
            allocated.into_inner().allocation.unwrap(),
        ));
    }
}

/// Rows that break a rule of the schema's story; each query counts them.
const HALF_STORED: [(&str, &str); 11] = [
    (
        "a routed need without referrals",
        "SELECT count(*) FROM needs n WHERE n.status IN ('ROUTED', 'APPROVED', 'FUNDED') \
         AND NOT EXISTS (SELECT 1 FROM referrals r WHERE r.need_id = n.id)",
    ),
    (
        "a referral without its CREATED event",
        "SELECT count(*) FROM referrals r WHERE NOT EXISTS (SELECT 1 FROM referral_events e \
         WHERE e.referral_id = r.id AND e.kind = 'CREATED')",
    ),
    (
        "an approved referral without its APPROVED event",
        "SELECT count(*) FROM referrals r WHERE r.status IN ('APPROVED', 'DISBURSED') \
         AND NOT EXISTS (SELECT 1 FROM referral_events e WHERE e.referral_id = r.id \
         AND e.kind = 'APPROVED')",
    ),
    (
        "a disbursement without its DISBURSED event",
        "SELECT count(*) FROM disbursements d WHERE NOT EXISTS (SELECT 1 FROM referral_events e \
         WHERE e.referral_id = d.referral_id AND e.kind = 'DISBURSED')",
    ),
    (
        "an APPROVED event of a referral never approved",
        "SELECT count(*) FROM referral_events e JOIN referrals r ON r.id = e.referral_id \
         WHERE e.kind = 'APPROVED' AND r.approved_amount_minor IS NULL",
    ),
    (
        "a DISBURSED event without its disbursement",
        "SELECT count(*) FROM referral_events e WHERE e.kind = 'DISBURSED' AND NOT EXISTS \
         (SELECT 1 FROM disbursements d WHERE d.referral_id = e.referral_id)",
    ),
    (
        "a need whose funded amount is not the sum of its disbursements",
        "SELECT count(*) FROM needs n WHERE n.funded_minor <> (SELECT coalesce(sum(d.amount_minor), 0) \
         FROM disbursements d WHERE d.need_id = n.id)",
    ),
    (
        "a program whose balances are not the sums of its allocations",
        "SELECT count(*) FROM programs p WHERE p.reserved_minor <> (SELECT coalesce(sum(a.amount_minor), 0) \
         FROM allocations a WHERE a.program_id = p.id AND a.status = 'RESERVED') \
         OR p.confirmed_minor <> (SELECT coalesce(sum(a.amount_minor), 0) FROM allocations a \
         WHERE a.program_id = p.id AND a.status = 'CONFIRMED')",
    ),
    (
        "a lender quota whose balances are not the sums of its allocations",
        "SELECT count(*) FROM program_lender_quotas q WHERE q.reserved_minor <> (SELECT coalesce(sum(a.amount_minor), 0) \
         FROM allocations a WHERE a.program_id = q.program_id AND a.lender_id = q.lender_id \
         AND a.status = 'RESERVED')",
    ),
    (
        "an enterprise standing that is not the sum of its live allocations",
        "SELECT count(*) FROM program_enterprises s WHERE s.live_minor <> (SELECT coalesce(sum(a.amount_minor), 0) \
         FROM allocations a WHERE a.program_id = s.program_id AND a.enterprise_id = s.enterprise_id \
         AND a.status IN ('RESERVED', 'CONFIRMED'))",
    ),
    (
        "an allocation without its audit row",
        "SELECT count(*) FROM allocations a WHERE NOT EXISTS (SELECT 1 FROM audit_log l \
         WHERE l.entity_type = 'allocation' AND l.entity_id = a.id::text)",
    ),
];

async fn nothing_half_stored(db: &tokio_postgres::Client) {
    for (what, sql) in HALF_STORED {
        let count: i64 = db.query_one(sql, &[]).await.expect(sql).get(0);
        assert_eq!(count, 0, "{what}: {count}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_under_load_keeps_every_answer_and_stores_nothing_half() {
    let app = TestApp::spawn().await;
    let market = Arc::new(market(&app).await);
    let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);

    let mut doomed = ServerProcess::start(app.database_url()).await;
    let channel = Channel::from_shared(doomed.url.clone())
        .unwrap()
        .connect_lazy();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(channel.clone(), market.clone(), c, acked.clone())))
        .collect();
    // Kill it once a fair amount has happened, whatever the calls in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 200 {
        assert!(std::time::Instant::now() < deadline, "too slow to load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let kinds = |f: fn(&Acked) -> bool| acked.iter().filter(|a| f(a)).count();
    eprintln!(
        "killed after {} answers: {} needs, {} decisions, {} loans, {} allocations",
        acked.len(),
        kinds(|a| matches!(a, Acked::Submit(..))),
        kinds(|a| matches!(a, Acked::Decide(..))),
        kinds(|a| matches!(a, Acked::Disburse(..))),
        kinds(|a| matches!(a, Acked::Allocate(..))),
    );

    // Nothing half stored, before any retry.
    nothing_half_stored(&db).await;

    // Started again, it returns what it answered, to the same keys.
    let server = ServerProcess::start(app.database_url()).await;
    let channel = Channel::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut financing = FinancingServiceClient::new(channel.clone());
    let mut partner = PartnerServiceClient::new(channel.clone());
    let mut loans = SpecialLoanServiceClient::new(channel);
    for answer in &acked {
        match answer {
            Acked::Submit(request, first) => {
                let again = financing
                    .submit_need(authed(request.clone(), &market.operator))
                    .await
                    .expect("a SubmitNeed retry")
                    .into_inner();
                assert_eq!(
                    again.need.as_ref().unwrap().id,
                    first.need.as_ref().unwrap().id
                );
                let stored: i64 = db
                    .query_one(
                        "SELECT count(*) FROM referrals WHERE need_id = $1::text::uuid",
                        &[&first.need.as_ref().unwrap().id],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(
                    stored as usize,
                    first.referrals.len(),
                    "its referrals, whole"
                );
            }
            Acked::Decide(token, request, first) => {
                let again = partner
                    .decide_referral(authed(request.clone(), token))
                    .await
                    .expect("a DecideReferral retry")
                    .into_inner()
                    .referral
                    .unwrap();
                assert_eq!(
                    (again.id.as_str(), again.approved_amount_minor),
                    (first.id.as_str(), first.approved_amount_minor)
                );
            }
            Acked::Disburse(token, request, first) => {
                let again = partner
                    .record_disbursement(authed(request.clone(), token))
                    .await
                    .expect("a RecordDisbursement retry")
                    .into_inner()
                    .disbursement
                    .unwrap();
                assert_eq!(again.id, first.id);
            }
            Acked::Allocate(token, request, first) => {
                let again = loans
                    .allocate_special_loan(authed(request.clone(), token))
                    .await
                    .expect("an AllocateSpecialLoan retry")
                    .into_inner()
                    .allocation
                    .unwrap();
                assert_eq!(again.id, first.id);
            }
        }
    }
    let needs: i64 = db
        .query_one(
            "SELECT count(*) FROM needs WHERE idempotency_key LIKE 'need-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let submitted = kinds(|a| matches!(a, Acked::Submit(..))) as i64;
    // Each client may have had one SubmitNeed in flight: stored or not, never twice.
    assert!(
        (submitted..=submitted + CLIENTS as i64).contains(&needs),
        "{needs} needs for {submitted} answered submissions"
    );
    nothing_half_stored(&db).await;
}
