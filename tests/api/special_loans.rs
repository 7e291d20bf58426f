//! SpecialLoanService through the real server: programs, lender quotas and allocations checked
//! rule by rule, balances, idempotency, lender isolation and concurrency on two replicas.

use std::collections::HashMap;

use finmatch::domain::{Collateral, NeedStatus, Purpose, ReferralStatus, Role};
use finmatch::proto as pb;
use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;
use finmatch::proto::lender_service_client::LenderServiceClient;
use finmatch::proto::special_loan_service_client::SpecialLoanServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::helpers::{TestApp, authed, error_reason, violated_fields};

type Client = SpecialLoanServiceClient<Channel>;

const NATIONAL: &str = "NATIONAL_KEY_SUPPLY";
const PROVINCIAL: &str = "PROVINCIAL_KEY";
/// ¥10,000,000 in fen.
const TEN_MILLION_YUAN: i64 = 1_000_000_000;

/// The 2020 PBoC special re-lending, scaled: ¥100,000,000 in all, LPR 415 − 100 = 315 bps,
/// half the interest subsidised, at most 1.6% to the enterprise, ¥20,000,000 per enterprise,
/// one year, loans from 2020-01-25 to 2020-12-31, one bank per enterprise.
fn pboc_program(code: &str) -> pb::Program {
    pb::Program {
        code: code.into(),
        name: "PBoC special re-lending 2020".into(),
        total_quota_minor: 10 * TEN_MILLION_YUAN,
        rate_cap_bps: 315,
        subsidy_ratio_bps: 5_000,
        max_effective_rate_bps: Some(160),
        per_enterprise_cap_minor: Some(2 * TEN_MILLION_YUAN),
        max_term_months: 12,
        required_designations: vec![NATIONAL.into(), PROVINCIAL.into()],
        loan_date_from: "2020-01-25".into(),
        loan_date_to: "2020-12-31".into(),
        one_bank_per_enterprise: true,
        ..Default::default()
    }
}

struct World {
    app: TestApp,
    client: Client,
}

impl World {
    async fn new() -> Self {
        Self::on(TestApp::spawn().await)
    }

    fn on(app: TestApp) -> Self {
        let client = SpecialLoanServiceClient::new(app.channel.clone());
        Self { app, client }
    }

    fn op<T>(&self, message: T) -> tonic::Request<T> {
        authed(message, &self.app.operator)
    }

    async fn lender(&self, name: &str) -> Uuid {
        let mut lenders = LenderServiceClient::new(self.app.channel.clone());
        let lender = lenders
            .create_lender(self.op(pb::CreateLenderRequest {
                lender: Some(pb::Lender {
                    name: name.into(),
                    kind: pb::LenderKind::StateOwned as i32,
                    region_codes: vec!["421300".into()],
                    active: Some(true),
                    ..Default::default()
                }),
            }))
            .await
            .expect("create lender")
            .into_inner()
            .lender
            .unwrap();
        lender.id.parse().unwrap()
    }

    /// A new working-capital product of `lender`.
    async fn product(&self, lender: Uuid) -> Uuid {
        let product = LenderServiceClient::new(self.app.channel.clone())
            .create_product(self.op(pb::CreateProductRequest {
                product: Some(crate::helpers::working_capital(
                    lender,
                    &format!("working capital {}", Uuid::new_v4()),
                )),
            }))
            .await
            .expect("create product")
            .into_inner()
            .product
            .unwrap();
        product.id.parse().unwrap()
    }

    /// A loan of `amount_minor` that `lender` paid out to `enterprise` on 2020-03-02 and recorded
    /// under `reference` (what ConfirmAllocation requires): a funded need, its DISBURSED referral
    /// through `product` (one of the lender's) and the disbursement, stored directly. Returns the
    /// referral.
    async fn recorded_loan(
        &self,
        lender: Uuid,
        product: Uuid,
        enterprise: Uuid,
        amount_minor: i64,
        reference: &str,
    ) -> Uuid {
        let f = crate::fixtures::Fixtures::connect(&self.app).await;
        let need = f
            .need(crate::fixtures::NeedRow {
                enterprise_id: enterprise,
                amount_minor,
                purpose: "WORKING_CAPITAL",
                status: "FUNDED",
                created_at: None,
            })
            .await;
        let referral = f
            .referral(crate::fixtures::ReferralRow {
                need_id: need,
                lender_id: lender,
                product_id: product,
                status: "DISBURSED",
                decline_reason: None,
                approved_amount_minor: Some(amount_minor),
                answered_after_secs: Some(60),
            })
            .await;
        f.disbursement(referral, amount_minor, reference).await;
        referral
    }

    /// Gives `lender` a referral of `status` for a new need of `enterprise`, stored directly (the
    /// allocation rules care only that it exists): the lender gets a product for it.
    async fn referral(&self, lender: Uuid, enterprise: Uuid, status: ReferralStatus) -> Uuid {
        use finmatch::storage;
        let product = self.product(lender).await;
        let creator = self
            .app
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
        let mut conn = self.app.app.conn().await.unwrap();
        let need = storage::needs::insert(
            &mut conn,
            &storage::needs::NewNeed {
                id: finmatch::domain::ids::scoped_id(enterprise),
                enterprise_id: enterprise,
                amount_minor: 1_000_000,
                term_months: 12,
                purpose: Purpose::WorkingCapital,
                collateral: vec![Collateral::Credit],
                max_rate_bps: None,
                needed_by: chrono::NaiveDate::from_ymd_opt(2030, 1, 1).unwrap(),
                consent_to_share: true,
                channel: finmatch::domain::Channel::Bureau,
                note: "",
                // A closed referral's need is closed too (one open need per purpose).
                status: if status == ReferralStatus::Expired {
                    NeedStatus::Expired
                } else {
                    NeedStatus::Routed
                },
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
                lender_id: lender,
                product_id: product,
                status,
                score: 700,
                factors: serde_json::json!([]),
                sla_deadline: chrono::Utc::now() + chrono::TimeDelta::hours(48),
            },
        )
        .await
        .unwrap()
        .id
    }

    /// An enterprise holding the given designations (list code, granted_on, expires_on).
    async fn enterprise(&self, n: u32, designations: &[(&str, &str, &str)]) -> Uuid {
        let mut enterprises = EnterpriseServiceClient::new(self.app.channel.clone());
        let enterprise = enterprises
            .create_enterprise(self.op(pb::CreateEnterpriseRequest {
                enterprise: Some(pb::Enterprise {
                    credit_code: crate::helpers::credit_code(n),
                    name: format!("Key supplier {n}"),
                    region_code: "421300".into(),
                    industry_code: "C27".into(),
                    size: pb::EnterpriseSize::Small as i32,
                    employees: 120,
                    annual_revenue_minor: 5 * TEN_MILLION_YUAN,
                    ..Default::default()
                }),
            }))
            .await
            .expect("create enterprise")
            .into_inner()
            .enterprise
            .unwrap();
        for (list_code, granted_on, expires_on) in designations {
            enterprises
                .grant_designation(self.op(pb::GrantDesignationRequest {
                    enterprise_id: enterprise.id.clone(),
                    list_code: (*list_code).into(),
                    granted_on: (*granted_on).into(),
                    expires_on: (*expires_on).into(),
                    reference: format!("{list_code}-{n}"),
                }))
                .await
                .expect("grant designation");
        }
        enterprise.id.parse().unwrap()
    }

    /// An enterprise on the national list since 2020-01-01.
    async fn key_enterprise(&self, n: u32) -> Uuid {
        self.enterprise(n, &[(NATIONAL, "2020-01-01", "")]).await
    }

    async fn program(&self, program: pb::Program) -> Uuid {
        let mut client = self.client.clone();
        let created = client
            .create_program(self.op(pb::CreateProgramRequest {
                program: Some(program),
            }))
            .await
            .expect("create program")
            .into_inner()
            .program
            .unwrap();
        created.id.parse().unwrap()
    }

    async fn set_quota(
        &self,
        program: Uuid,
        lender: Uuid,
        quota_minor: i64,
    ) -> Result<pb::Program, tonic::Status> {
        let mut client = self.client.clone();
        client
            .set_lender_quota(self.op(pb::SetLenderQuotaRequest {
                program_id: program.to_string(),
                lender_id: lender.to_string(),
                quota_minor,
            }))
            .await
            .map(|r| r.into_inner().program.unwrap())
    }

    async fn allocate(
        &self,
        request: pb::AllocateSpecialLoanRequest,
    ) -> Result<pb::Allocation, tonic::Status> {
        allocate_as(&self.client, &self.app.operator, request).await
    }

    async fn balance(&self, program: Uuid) -> pb::ProgramBalance {
        let mut client = self.client.clone();
        client
            .get_program(self.op(pb::GetProgramRequest {
                program_id: program.to_string(),
            }))
            .await
            .expect("get program")
            .into_inner()
            .program
            .unwrap()
            .balance
            .unwrap()
    }

    async fn confirm(
        &self,
        allocation: &str,
        loan_reference: &str,
        disbursed_on: &str,
    ) -> Result<pb::Allocation, tonic::Status> {
        let mut client = self.client.clone();
        client
            .confirm_allocation(self.op(pb::ConfirmAllocationRequest {
                allocation_id: allocation.into(),
                loan_reference: loan_reference.into(),
                disbursed_on: disbursed_on.into(),
            }))
            .await
            .map(|r| r.into_inner().allocation.unwrap())
    }

    async fn release(&self, allocation: &str) -> Result<pb::Allocation, tonic::Status> {
        release_as(&self.client, &self.app.operator, allocation).await
    }

    /// A PBoC program with two designated lenders of ¥50,000,000 each.
    async fn pboc_with_two_lenders(&self) -> (Uuid, Uuid, Uuid) {
        let program = self.program(pboc_program("PBOC_2020")).await;
        let a = self.lender("ICBC Xiaogan").await;
        let b = self.lender("ABC Xiaogan").await;
        self.set_quota(program, a, 5 * TEN_MILLION_YUAN)
            .await
            .unwrap();
        self.set_quota(program, b, 5 * TEN_MILLION_YUAN)
            .await
            .unwrap();
        (program, a, b)
    }
}

async fn allocate_as(
    client: &Client,
    token: &str,
    request: pb::AllocateSpecialLoanRequest,
) -> Result<pb::Allocation, tonic::Status> {
    let mut client = client.clone();
    client
        .allocate_special_loan(authed(request, token))
        .await
        .map(|r| r.into_inner().allocation.unwrap())
}

async fn release_as(
    client: &Client,
    token: &str,
    allocation: &str,
) -> Result<pb::Allocation, tonic::Status> {
    let mut client = client.clone();
    client
        .release_allocation(authed(
            pb::ReleaseAllocationRequest {
                allocation_id: allocation.into(),
                reason: "loan not taken up".into(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().allocation.unwrap())
}

/// A loan at the cap (315 bps, 12 months, 2020-03-02) under a fresh idempotency key.
fn loan(
    program: Uuid,
    lender: Uuid,
    enterprise: Uuid,
    amount_minor: i64,
) -> pb::AllocateSpecialLoanRequest {
    pb::AllocateSpecialLoanRequest {
        idempotency_key: Uuid::new_v4().to_string(),
        program_id: program.to_string(),
        lender_id: lender.to_string(),
        enterprise_id: enterprise.to_string(),
        referral_id: String::new(),
        amount_minor,
        rate_bps: 315,
        term_months: 12,
        loan_date: "2020-03-02".into(),
    }
}

/// Asserts FAILED_PRECONDITION with `reason`, and returns the message.
fn refused(outcome: Result<pb::Allocation, tonic::Status>, reason: &str) -> String {
    let status = outcome.expect_err("the allocation must be refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(error_reason(&status).as_deref(), Some(reason), "{status:?}");
    status.message().to_owned()
}

fn metadata(status: &tonic::Status) -> HashMap<String, String> {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.metadata)
        .unwrap_or_default()
}

fn lender_line(balance: &pb::ProgramBalance, lender: Uuid) -> pb::LenderQuotaBalance {
    balance
        .lenders
        .iter()
        .find(|l| l.lender_id == lender.to_string())
        .cloned()
        .expect("the lender has a quota line")
}

async fn sql(app: &TestApp) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_example_reserves_with_the_subsidy_effective_rate_and_designation() {
    let w = World::new().await;
    let (program, a, _) = w.pboc_with_two_lenders().await;
    // Held lists in the other order: the first of the program's lists is the one relied on.
    let e = w
        .enterprise(
            1,
            &[(PROVINCIAL, "2020-01-01", ""), (NATIONAL, "2020-02-01", "")],
        )
        .await;

    let allocation = w
        .allocate(loan(program, a, e, TEN_MILLION_YUAN))
        .await
        .unwrap();

    assert_eq!(allocation.status, pb::AllocationStatus::Reserved as i32);
    assert_eq!(allocation.amount_minor, 1_000_000_000);
    assert_eq!(allocation.subsidy_minor, 15_750_000); // ¥157,500.00
    assert_eq!(allocation.effective_rate_bps, 158);
    assert_eq!(allocation.designation_used, NATIONAL);
    assert_eq!(allocation.loan_date, "2020-03-02");
    assert_eq!(allocation.loan_reference, "");

    let balance = w.balance(program).await;
    assert_eq!(balance.reserved_minor, TEN_MILLION_YUAN);
    assert_eq!(balance.confirmed_minor, 0);
    assert_eq!(balance.remaining_minor, 9 * TEN_MILLION_YUAN);
    let line = lender_line(&balance, a);
    assert_eq!(
        (line.quota_minor, line.reserved_minor, line.remaining_minor),
        (5 * TEN_MILLION_YUAN, TEN_MILLION_YUAN, 4 * TEN_MILLION_YUAN)
    );

    // The allocation records which designation it relied on.
    let db = sql(&w.app).await;
    let row = db
        .query_one(
            "SELECT d.list_code, d.enterprise_id::text FROM allocations a \
             JOIN designations d ON d.id = a.designation_id WHERE a.id = $1::text::uuid",
            &[&allocation.id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), NATIONAL);
    assert_eq!(row.get::<_, String>(1), e.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loan_date_outside_the_window_is_refused_and_its_ends_accepted() {
    let w = World::new().await;
    let (program, a, _) = w.pboc_with_two_lenders().await;
    let e = w.key_enterprise(1).await;
    let at = |day: &str| pb::AllocateSpecialLoanRequest {
        loan_date: day.into(),
        ..loan(program, a, e, 1_000_000)
    };

    let early = refused(w.allocate(at("2020-01-24")).await, "LOAN_DATE");
    assert!(
        early.contains("1 day(s) before") && early.contains("2020-01-25"),
        "{early}"
    );
    let late = refused(w.allocate(at("2021-01-02")).await, "LOAN_DATE");
    assert!(
        late.contains("2 day(s) after") && late.contains("2020-12-31"),
        "{late}"
    );
    w.allocate(at("2020-01-25")).await.expect("first day");
    w.allocate(at("2020-12-31")).await.expect("last day");
    assert_eq!(w.balance(program).await.reserved_minor, 2_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_beyond_the_cap_is_refused_and_the_cap_accepted() {
    let w = World::new().await;
    let (program, a, _) = w.pboc_with_two_lenders().await;
    let e = w.key_enterprise(1).await;
    let term = |months| pb::AllocateSpecialLoanRequest {
        term_months: months,
        ..loan(program, a, e, 1_000_000)
    };

    let status = w.allocate(term(13)).await.unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("TERM_CAP"));
    assert!(
        status.message().contains("by 1 month"),
        "{}",
        status.message()
    );
    assert_eq!(metadata(&status)["limit"], "12");
    assert_eq!(metadata(&status)["requested"], "13");
    let ok = w.allocate(term(12)).await.expect("a term at the cap");
    assert_eq!(ok.term_months, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_effective_rate_beyond_their_caps_are_refused_and_the_caps_accepted() {
    let w = World::new().await;
    let (program, a, _) = w.pboc_with_two_lenders().await;
    let e = w.key_enterprise(1).await;
    let rate = |program, bps| pb::AllocateSpecialLoanRequest {
        rate_bps: bps,
        ..loan(program, a, e, 1_000_000)
    };

    let message = refused(w.allocate(rate(program, 316)).await, "RATE_CAP");
    assert!(
        message.contains("rate_cap_bps 315") && message.contains("by 1 bps"),
        "{message}"
    );
    assert_eq!(w.allocate(rate(program, 315)).await.unwrap().rate_bps, 315);

    // A program whose binding limit is the cost to the enterprise: at most 1.60% after a 50%
    // subsidy, so 320 bps (→ 160) passes and 321 bps (→ 160.5, rounded to 161) does not.
    let lenient = w
        .program(pb::Program {
            rate_cap_bps: 400,
            ..pboc_program("EFFECTIVE_CAP")
        })
        .await;
    w.set_quota(lenient, a, TEN_MILLION_YUAN).await.unwrap();
    let message = refused(w.allocate(rate(lenient, 321)).await, "RATE_CAP");
    assert!(
        message.contains("effective_rate_bps 161")
            && message.contains("max_effective_rate_bps 160 by 1 bps"),
        "{message}"
    );
    let at_cap = w.allocate(rate(lenient, 320)).await.unwrap();
    assert_eq!(at_cap.effective_rate_bps, 160);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enterprise_without_a_designation_valid_on_the_loan_date_is_not_eligible() {
    let w = World::new().await;
    let (program, a, _) = w.pboc_with_two_lenders().await;
    let none = w.enterprise(1, &[]).await;
    let other_list = w.enterprise(2, &[("LOCAL_KEY", "2020-01-01", "")]).await;
    let expired = w
        .enterprise(3, &[(NATIONAL, "2020-01-01", "2020-03-01")])
        .await;
    let later = w.enterprise(4, &[(PROVINCIAL, "2020-03-03", "")]).await;
    let until_the_day = w
        .enterprise(5, &[(PROVINCIAL, "2020-03-02", "2020-03-02")])
        .await;
    let revoked = w.key_enterprise(6).await;
    EnterpriseServiceClient::new(w.app.channel.clone())
        .revoke_designation(w.op(pb::RevokeDesignationRequest {
            enterprise_id: revoked.to_string(),
            list_code: NATIONAL.into(),
        }))
        .await
        .unwrap();

    for e in [none, other_list, expired, later, revoked] {
        let message = refused(
            w.allocate(loan(program, a, e, 1_000_000)).await,
            "NOT_ELIGIBLE",
        );
        assert!(
            message.contains(&e.to_string())
                && message.contains("NATIONAL_KEY_SUPPLY, PROVINCIAL_KEY"),
            "{message}"
        );
    }
    // Valid on its first and last day, the loan date.
    let ok = w
        .allocate(loan(program, a, until_the_day, 1_000_000))
        .await
        .unwrap();
    assert_eq!(ok.designation_used, PROVINCIAL);
    assert_eq!(w.balance(program).await.reserved_minor, 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enterprise_cap_refuses_the_excess_and_accepts_up_to_the_cap_exactly() {
    let w = World::new().await;
    let (program, a, _) = w.pboc_with_two_lenders().await;
    let e = w.key_enterprise(1).await;
    let cap = 2 * TEN_MILLION_YUAN;

    w.allocate(loan(program, a, e, 15 * TEN_MILLION_YUAN / 10))
        .await
        .unwrap();
    let status = w
        .allocate(loan(program, a, e, TEN_MILLION_YUAN / 2 + 1))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("ENTERPRISE_CAP"));
    assert!(
        status.message().contains("by 1 (¥0.01)"),
        "{}",
        status.message()
    );
    assert_eq!(metadata(&status)["limit"], cap.to_string());
    assert_eq!(metadata(&status)["requested"], (cap + 1).to_string());
    // A single loan above the cap is refused the same way.
    refused(
        w.allocate(loan(program, a, w.key_enterprise(2).await, cap + 1))
            .await,
        "ENTERPRISE_CAP",
    );

    w.allocate(loan(program, a, e, TEN_MILLION_YUAN / 2))
        .await
        .expect("exactly the cap");
    refused(w.allocate(loan(program, a, e, 1)).await, "ENTERPRISE_CAP");
    assert_eq!(w.balance(program).await.reserved_minor, cap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bank_rule_binds_an_enterprise_to_its_lender_while_it_has_live_allocations() {
    let w = World::new().await;
    let (program, a, b) = w.pboc_with_two_lenders().await;
    let e = w.key_enterprise(1).await;

    let first = w.allocate(loan(program, a, e, 1_000_000)).await.unwrap();
    let message = refused(
        w.allocate(loan(program, b, e, 1_000_000)).await,
        "ONE_BANK_RULE",
    );
    assert!(
        message.contains(&a.to_string()) && message.contains(&b.to_string()),
        "{message}"
    );
    // The same bank may lend again.
    let second = w.allocate(loan(program, a, e, 1_000_000)).await.unwrap();

    // Once nothing is live through the first bank, the enterprise may move to another.
    w.release(&first.id).await.unwrap();
    refused(
        w.allocate(loan(program, b, e, 1_000_000)).await,
        "ONE_BANK_RULE",
    );
    w.release(&second.id).await.unwrap();
    let moved = w.allocate(loan(program, b, e, 1_000_000)).await.unwrap();
    assert_eq!(moved.lender_id, b.to_string());
    refused(
        w.allocate(loan(program, a, e, 1_000_000)).await,
        "ONE_BANK_RULE",
    );

    // A program without the rule lets an enterprise borrow through several banks.
    let open = w
        .program(pb::Program {
            one_bank_per_enterprise: false,
            ..pboc_program("NO_ONE_BANK")
        })
        .await;
    w.set_quota(open, a, TEN_MILLION_YUAN).await.unwrap();
    w.set_quota(open, b, TEN_MILLION_YUAN).await.unwrap();
    w.allocate(loan(open, a, e, 1_000_000)).await.unwrap();
    w.allocate(loan(open, b, e, 1_000_000)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lender_quota_refuses_the_excess_and_is_usable_to_the_last_fen() {
    let w = World::new().await;
    let program = w.program(pboc_program("PBOC_2020")).await;
    let a = w.lender("ICBC Xiaogan").await;
    let without_quota = w.lender("CCB Xiaogan").await;
    w.set_quota(program, a, 3_000_000).await.unwrap();
    let e1 = w.key_enterprise(1).await;
    let e2 = w.key_enterprise(2).await;

    w.allocate(loan(program, a, e1, 2_000_000)).await.unwrap();
    let status = w
        .allocate(loan(program, a, e2, 1_000_001))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("QUOTA_EXCEEDED"));
    assert!(
        status.message().contains("remaining quota 1000000")
            && status.message().contains("by 1 (¥0.01)"),
        "{}",
        status.message()
    );
    assert_eq!(metadata(&status)["limit"], "1000000");
    assert_eq!(metadata(&status)["requested"], "1000001");

    w.allocate(loan(program, a, e2, 1_000_000))
        .await
        .expect("the last fen");
    refused(w.allocate(loan(program, a, e2, 1)).await, "QUOTA_EXCEEDED");
    let message = refused(
        w.allocate(loan(program, without_quota, w.key_enterprise(3).await, 1))
            .await,
        "QUOTA_EXCEEDED",
    );
    assert!(message.contains("has no quota"), "{message}");

    let balance = w.balance(program).await;
    let line = lender_line(&balance, a);
    assert_eq!((line.reserved_minor, line.remaining_minor), (3_000_000, 0));
    assert_eq!(balance.reserved_minor, 3_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_lender_quota_keeps_the_sum_within_the_total_and_above_usage() {
    let w = World::new().await;
    let program = w.program(pboc_program("PBOC_2020")).await;
    let a = w.lender("ICBC Xiaogan").await;
    let b = w.lender("ABC Xiaogan").await;
    let total = 10 * TEN_MILLION_YUAN;

    w.set_quota(program, a, 6 * TEN_MILLION_YUAN).await.unwrap();
    let status = w
        .set_quota(program, b, 4 * TEN_MILLION_YUAN + 1)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&status).as_deref(), Some("QUOTA_EXCEEDED"));
    assert_eq!(metadata(&status)["limit"], total.to_string());
    assert_eq!(metadata(&status)["requested"], (total + 1).to_string());
    let full = w
        .set_quota(program, b, 4 * TEN_MILLION_YUAN)
        .await
        .expect("exactly the total");
    assert_eq!(full.balance.unwrap().lenders.len(), 2);

    let e = w.key_enterprise(1).await;
    w.allocate(loan(program, a, e, TEN_MILLION_YUAN))
        .await
        .unwrap();
    let status = w
        .set_quota(program, a, TEN_MILLION_YUAN - 1)
        .await
        .unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("QUOTA_BELOW_USAGE"));
    let lowered = w
        .set_quota(program, a, TEN_MILLION_YUAN)
        .await
        .expect("down to its usage");
    assert_eq!(lender_line(&lowered.balance.unwrap(), a).remaining_minor, 0);
    // The freed share may go to the other lender.
    w.set_quota(program, b, 9 * TEN_MILLION_YUAN).await.unwrap();

    let db = sql(&w.app).await;
    let row = db
        .query_one(
            "SELECT p.lender_quota_sum_minor, (SELECT sum(quota_minor)::bigint FROM program_lender_quotas q WHERE q.program_id = p.id) FROM programs p WHERE p.id = $1::text::uuid",
            &[&program.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), total);
    assert_eq!(row.get::<_, i64>(1), total);

    let status = w.set_quota(program, Uuid::new_v4(), 1).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = w.set_quota(program, a, -1).await.unwrap_err();
    assert_eq!(violated_fields(&status), vec!["quota_minor"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_returns_the_first_allocation_and_a_reused_key_is_refused() {
    let w = World::new().await;
    let (program, a, _) = w.pboc_with_two_lenders().await;
    let e = w.key_enterprise(1).await;
    let request = loan(program, a, e, TEN_MILLION_YUAN);

    let first = w.allocate(request.clone()).await.unwrap();
    let again = w.allocate(request.clone()).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(w.balance(program).await.reserved_minor, TEN_MILLION_YUAN);

    let status = w
        .allocate(pb::AllocateSpecialLoanRequest {
            amount_minor: TEN_MILLION_YUAN + 1,
            ..request
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );
    assert_eq!(w.balance(program).await.reserved_minor, TEN_MILLION_YUAN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_moves_the_amount_to_confirmed_and_is_idempotent_on_the_reference() {
    let w = World::new().await;
    let (program, a, _) = w.pboc_with_two_lenders().await;
    let e = w.key_enterprise(1).await;
    let allocation = w
        .allocate(loan(program, a, e, TEN_MILLION_YUAN))
        .await
        .unwrap();
    let product = w.product(a).await;
    w.recorded_loan(a, product, e, TEN_MILLION_YUAN, "LN-1")
        .await;

    let status = w
        .confirm(&allocation.id, "LN-1", "2021-01-01")
        .await
        .unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("LOAN_DATE"));
    let confirmed = w
        .confirm(&allocation.id, "LN-1", "2020-03-02")
        .await
        .unwrap();
    assert_eq!(confirmed.status, pb::AllocationStatus::Confirmed as i32);
    assert_eq!(
        (
            confirmed.loan_reference.as_str(),
            confirmed.disbursed_on.as_str()
        ),
        ("LN-1", "2020-03-02")
    );
    let balance = w.balance(program).await;
    assert_eq!(
        (balance.reserved_minor, balance.confirmed_minor),
        (0, TEN_MILLION_YUAN)
    );
    assert_eq!(balance.remaining_minor, 9 * TEN_MILLION_YUAN);
    let line = lender_line(&balance, a);
    assert_eq!(
        (line.reserved_minor, line.confirmed_minor),
        (0, TEN_MILLION_YUAN)
    );

    // The same confirmation again changes nothing; different values are an illegal transition.
    let again = w
        .confirm(&allocation.id, "LN-1", "2020-03-02")
        .await
        .unwrap();
    assert_eq!(again, confirmed);
    assert_eq!(w.balance(program).await.confirmed_minor, TEN_MILLION_YUAN);
    let status = w
        .confirm(&allocation.id, "LN-2", "2020-03-02")
        .await
        .unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("ILLEGAL_TRANSITION"));
    // A disbursed loan's quota cannot be released.
    let status = w.release(&allocation.id).await.unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("ILLEGAL_TRANSITION"));
    // Named as every refused status change is: the allocation, where it is and where it was asked
    // to go.
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(info.metadata.get("allocation_id"), Some(&allocation.id));
    assert_eq!(
        info.metadata.get("status").map(String::as_str),
        Some("ALLOCATION_STATUS_CONFIRMED")
    );
    assert_eq!(
        info.metadata.get("requested_status").map(String::as_str),
        Some("ALLOCATION_STATUS_RELEASED")
    );
    assert!(
        status
            .message()
            .contains("a disbursed loan's quota cannot be released"),
        "{}",
        status.message()
    );

    // The lender's reference is unique across its allocations.
    let other = w.allocate(loan(program, a, e, 1_000_000)).await.unwrap();
    let status = w
        .confirm(&other.id, "LN-1", "2020-03-02")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        status.message().contains(&allocation.id),
        "{}",
        status.message()
    );
    let status = w
        .confirm(&other.id, "LN-3", "2999-01-01")
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["disbursed_on"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_returns_the_quota_at_once_and_is_idempotent() {
    let w = World::new().await;
    let program = w.program(pboc_program("PBOC_2020")).await;
    let a = w.lender("ICBC Xiaogan").await;
    w.set_quota(program, a, TEN_MILLION_YUAN).await.unwrap();
    let e1 = w.key_enterprise(1).await;
    let e2 = w.key_enterprise(2).await;

    let held = w
        .allocate(loan(program, a, e1, TEN_MILLION_YUAN))
        .await
        .unwrap();
    refused(w.allocate(loan(program, a, e2, 1)).await, "QUOTA_EXCEEDED");

    let released = w.release(&held.id).await.unwrap();
    assert_eq!(released.status, pb::AllocationStatus::Released as i32);
    let balance = w.balance(program).await;
    assert_eq!(
        (balance.reserved_minor, balance.remaining_minor),
        (0, 10 * TEN_MILLION_YUAN)
    );
    assert_eq!(lender_line(&balance, a).remaining_minor, TEN_MILLION_YUAN);
    assert_eq!(w.release(&held.id).await.unwrap(), released);
    let status = w.confirm(&held.id, "LN-1", "2020-03-02").await.unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("ILLEGAL_TRANSITION"));

    // The freed quota is usable at once, to the fen.
    w.allocate(loan(program, a, e2, TEN_MILLION_YUAN))
        .await
        .unwrap();
    let db = sql(&w.app).await;
    let live: i64 = db
        .query_one(
            "SELECT live_minor FROM program_enterprises WHERE program_id = $1::text::uuid AND enterprise_id = $2::text::uuid",
            &[&program.to_string(), &e1.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lender_sees_and_touches_only_its_own_allocations_and_quota() {
    let w = World::new().await;
    let (program, a, b) = w.pboc_with_two_lenders().await;
    let e1 = w.key_enterprise(1).await;
    let e2 = w.key_enterprise(2).await;
    let token_a = w.app.token(Role::Lender, Some(a)).await;
    let portal = w.app.token(Role::Portal, None).await;
    let client = w.client.clone();
    // The bureau referred e1 to bank A (a lender allocates only for such an enterprise).
    w.referral(a, e1, ReferralStatus::Acknowledged).await;

    let own = allocate_as(&client, &token_a, loan(program, a, e1, 1_000_000))
        .await
        .unwrap();
    let status = allocate_as(&client, &token_a, loan(program, b, e2, 1_000_000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let theirs = w.allocate(loan(program, b, e2, 2_000_000)).await.unwrap();

    let mut c = client.clone();
    let seen = c
        .get_program(authed(
            pb::GetProgramRequest {
                program_id: program.to_string(),
            },
            &token_a,
        ))
        .await
        .unwrap()
        .into_inner()
        .program
        .unwrap()
        .balance
        .unwrap();
    assert_eq!(seen.lenders.len(), 1);
    assert_eq!(seen.lenders[0].lender_id, a.to_string());
    assert_eq!(seen.lenders[0].reserved_minor, 1_000_000);

    let listed = c
        .list_allocations(authed(pb::ListAllocationsRequest::default(), &token_a))
        .await
        .unwrap()
        .into_inner()
        .allocations;
    assert_eq!(
        listed.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        vec![own.id.clone()]
    );
    let status = c
        .list_allocations(authed(
            pb::ListAllocationsRequest {
                lender_id: b.to_string(),
                ..Default::default()
            },
            &token_a,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let status = release_as(&client, &token_a, &theirs.id).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = c
        .confirm_allocation(authed(
            pb::ConfirmAllocationRequest {
                allocation_id: theirs.id.clone(),
                loan_reference: "LN-X".into(),
                disbursed_on: "2020-03-02".into(),
            },
            &token_a,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    release_as(&client, &token_a, &own.id)
        .await
        .expect("its own allocation");

    // Only operators manage programs; portals have no business here.
    let status = c
        .set_lender_quota(authed(
            pb::SetLenderQuotaRequest {
                program_id: program.to_string(),
                lender_id: a.to_string(),
                quota_minor: 1,
            },
            &token_a,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = c
        .get_program(authed(
            pb::GetProgramRequest {
                program_id: program.to_string(),
            },
            &portal,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let balance = w.balance(program).await;
    assert_eq!(lender_line(&balance, b).reserved_minor, 2_000_000);
    assert_eq!(lender_line(&balance, a).reserved_minor, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_allocations_filters_by_status_and_pages_in_creation_order() {
    let w = World::new().await;
    let (program, a, _) = w.pboc_with_two_lenders().await;
    let e = w.key_enterprise(1).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(w.allocate(loan(program, a, e, 1_000_000)).await.unwrap().id);
    }
    w.release(&ids[1]).await.unwrap();

    let mut c = w.client.clone();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_allocations(w.op(pb::ListAllocationsRequest {
                page_size: 2,
                page_token: token.clone(),
                program_id: program.to_string(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.allocations.len() <= 2);
        seen.extend(page.allocations.into_iter().map(|x| x.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids);

    let released = c
        .list_allocations(w.op(pb::ListAllocationsRequest {
            enterprise_id: e.to_string(),
            statuses: vec![pb::AllocationStatus::Released as i32],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .allocations;
    assert_eq!(
        released.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        vec![ids[1].clone()]
    );
    let status = c
        .list_allocations(w.op(pb::ListAllocationsRequest {
            statuses: vec![0],
            page_size: -1,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["page_size", "statuses[0]"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_program_names_every_bad_field_and_refuses_a_taken_code() {
    let w = World::new().await;
    let mut c = w.client.clone();
    let status = c
        .create_program(w.op(pb::CreateProgramRequest {
            program: Some(pb::Program {
                code: "1BAD".into(),
                total_quota_minor: 0,
                rate_cap_bps: 0,
                subsidy_ratio_bps: 10_001,
                max_term_months: 361,
                required_designations: vec!["ok_list".into(), "?".into()],
                loan_date_from: "2020-02-30".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        vec![
            "program.code",
            "program.loan_date_from",
            "program.max_term_months",
            "program.name",
            "program.rate_cap_bps",
            "program.required_designations[1]",
            "program.subsidy_ratio_bps",
            "program.total_quota_minor",
        ]
    );
    let status = c
        .create_program(w.op(pb::CreateProgramRequest {
            program: Some(pb::Program {
                loan_date_to: "2020-01-24".into(),
                ..pboc_program("PBOC_2020")
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["program.loan_date_to"]);

    let id = w.program(pboc_program("PBOC_2020")).await;
    let created = c
        .get_program(w.op(pb::GetProgramRequest {
            program_id: id.to_string(),
        }))
        .await
        .unwrap()
        .into_inner()
        .program
        .unwrap();
    assert_eq!(created.code, "PBOC_2020");
    assert_eq!(created.max_effective_rate_bps, Some(160));
    assert_eq!(created.per_enterprise_cap_minor, Some(2 * TEN_MILLION_YUAN));
    assert_eq!(created.required_designations, vec![NATIONAL, PROVINCIAL]);
    assert_eq!(
        (
            created.loan_date_from.as_str(),
            created.loan_date_to.as_str()
        ),
        ("2020-01-25", "2020-12-31")
    );
    assert_eq!(
        created.balance.unwrap().remaining_minor,
        10 * TEN_MILLION_YUAN
    );

    let status = c
        .create_program(w.op(pb::CreateProgramRequest {
            program: Some(pboc_program("PBOC_2020")),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        status.message().contains(&id.to_string()),
        "{}",
        status.message()
    );
}

/// 32 clients on two replicas make 448 allocation attempts (releasing and confirming some)
/// against a quota of less than a quarter of the demand. Afterwards: nothing overdrawn, balances
/// equal the live allocations, no enterprise with two banks, and the quota used up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_on_two_replicas_never_overdraw_and_use_up_the_quota() {
    const CLIENTS: usize = 32;
    const ATTEMPTS: usize = 14;
    const UNIT: i64 = 1_000_000; // ¥10,000
    const ENTERPRISES: usize = 40;

    let w = World::new().await;
    let replica = w.app.replica().await;
    assert_ne!(replica.addr, w.app.addr, "two servers, not one");
    let lender_quotas = [40 * UNIT, 30 * UNIT, 20 * UNIT];
    let total: i64 = lender_quotas.iter().sum();
    let program = w
        .program(pb::Program {
            total_quota_minor: total,
            per_enterprise_cap_minor: Some(6 * UNIT),
            ..pboc_program("CONCURRENT")
        })
        .await;
    let mut lenders = Vec::new();
    for (i, quota) in lender_quotas.iter().enumerate() {
        let lender = w.lender(&format!("Bank {i}")).await;
        w.set_quota(program, lender, *quota).await.unwrap();
        lenders.push(lender);
    }
    let mut enterprises = Vec::new();
    for n in 0..ENTERPRISES {
        enterprises.push(w.key_enterprise(n as u32 + 1).await);
    }

    let amounts = [UNIT, 2 * UNIT, 3 * UNIT, 5 * UNIT];
    // The lender, enterprise and amount of client c's attempt k.
    let party = move |lenders: &[Uuid], enterprises: &[Uuid], c: usize, k: usize| {
        (
            lenders[(c + k) % lenders.len()],
            enterprises[(c * 7 + k * 3) % enterprises.len()],
            amounts[(c * ATTEMPTS + k) % amounts.len()],
        )
    };
    // The loans the clients confirm by, recorded beforehand (a confirmation needs its loan).
    let mut products = HashMap::new();
    for &lender in &lenders {
        products.insert(lender, w.product(lender).await);
    }
    for c in 0..CLIENTS {
        for k in (0..ATTEMPTS).filter(|k| k % 4 == 1) {
            let (lender, enterprise, amount) = party(&lenders, &enterprises, c, k);
            w.recorded_loan(
                lender,
                products[&lender],
                enterprise,
                amount,
                &format!("LN-{c}-{k}"),
            )
            .await;
        }
    }
    let demand: i64 = (0..CLIENTS * ATTEMPTS)
        .map(|i| amounts[i % amounts.len()])
        .sum();
    assert!(
        demand > 4 * total,
        "demand {demand} must exceed four times the quota {total}"
    );

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, token) = if c % 2 == 0 {
            (
                SpecialLoanServiceClient::new(w.app.channel.clone()),
                w.app.operator.clone(),
            )
        } else {
            (
                SpecialLoanServiceClient::new(replica.channel.clone()),
                replica.operator.clone(),
            )
        };
        let lenders = lenders.clone();
        let enterprises = enterprises.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes: Vec<Result<(), String>> = Vec::new();
            for k in 0..ATTEMPTS {
                let (lender, enterprise, amount) = party(&lenders, &enterprises, c, k);
                let request = loan(program, lender, enterprise, amount);
                match allocate_as(&client, &token, request).await {
                    Ok(allocation) => {
                        outcomes.push(Ok(()));
                        // Early on, give some back and confirm some, concurrently with the rest.
                        if k < ATTEMPTS / 2 && k % 4 == 0 {
                            release_as(&client, &token, &allocation.id)
                                .await
                                .expect("release");
                        } else if k % 4 == 1 {
                            let mut confirming = client.clone();
                            confirming
                                .confirm_allocation(authed(
                                    pb::ConfirmAllocationRequest {
                                        allocation_id: allocation.id.clone(),
                                        loan_reference: format!("LN-{c}-{k}"),
                                        disbursed_on: "2020-03-02".into(),
                                    },
                                    &token,
                                ))
                                .await
                                .expect("confirm");
                        }
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                        outcomes.push(Err(error_reason(&status).unwrap_or_default()));
                    }
                }
            }
            outcomes
        }));
    }
    let mut granted = 0;
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        for outcome in task.await.expect("client task") {
            match outcome {
                Ok(()) => granted += 1,
                Err(reason) => *reasons.entry(reason).or_default() += 1,
            }
        }
    }
    for reason in reasons.keys() {
        assert!(
            ["QUOTA_EXCEEDED", "ONE_BANK_RULE", "ENTERPRISE_CAP"].contains(&reason.as_str()),
            "unexpected refusal {reason}: {reasons:?}"
        );
    }
    assert!(
        reasons.get("QUOTA_EXCEEDED").copied().unwrap_or(0) > 0,
        "{reasons:?}"
    );
    assert_eq!(
        granted + reasons.values().sum::<usize>(),
        CLIENTS * ATTEMPTS
    );

    let db = sql(&w.app).await;
    // The program: within its total, and equal to the sums of its live allocations.
    let row = db
        .query_one(
            "SELECT p.reserved_minor, p.confirmed_minor, \
               coalesce((SELECT sum(amount_minor) FROM allocations WHERE program_id = p.id AND status = 'RESERVED'), 0)::bigint, \
               coalesce((SELECT sum(amount_minor) FROM allocations WHERE program_id = p.id AND status = 'CONFIRMED'), 0)::bigint \
             FROM programs p WHERE p.id = $1::text::uuid",
            &[&program.to_string()],
        )
        .await
        .unwrap();
    let (reserved, confirmed): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        (reserved, confirmed),
        (row.get::<_, i64>(2), row.get::<_, i64>(3))
    );
    let used = reserved + confirmed;
    assert!(used <= total, "overdrawn: {used} > {total}");
    assert!(
        used * 100 > total * 95,
        "only {used} of {total} used: {reasons:?}"
    );
    assert!(confirmed > 0);

    // Each lender: within its quota, and equal to its live allocations.
    let rows = db
        .query(
            "SELECT q.lender_id::text, q.quota_minor, q.reserved_minor, q.confirmed_minor, \
               coalesce(sum(a.amount_minor) FILTER (WHERE a.status = 'RESERVED'), 0)::bigint, \
               coalesce(sum(a.amount_minor) FILTER (WHERE a.status = 'CONFIRMED'), 0)::bigint \
             FROM program_lender_quotas q \
             LEFT JOIN allocations a ON a.program_id = q.program_id AND a.lender_id = q.lender_id \
             WHERE q.program_id = $1::text::uuid GROUP BY q.lender_id, q.quota_minor, q.reserved_minor, q.confirmed_minor",
            &[&program.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), lenders.len());
    for row in rows {
        let (quota, reserved, confirmed): (i64, i64, i64) = (row.get(1), row.get(2), row.get(3));
        assert!(
            reserved + confirmed <= quota,
            "lender {} overdrawn",
            row.get::<_, String>(0)
        );
        assert_eq!(
            (reserved, confirmed),
            (row.get::<_, i64>(4), row.get::<_, i64>(5))
        );
    }

    // Each enterprise: one bank, within the cap, its standing equal to its live allocations.
    let two_banks: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT enterprise_id FROM allocations \
               WHERE program_id = $1::text::uuid AND status <> 'RELEASED' \
               GROUP BY enterprise_id HAVING count(DISTINCT lender_id) > 1) t",
            &[&program.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(two_banks, 0);
    let mismatched: i64 = db
        .query_one(
            "SELECT count(*) FROM program_enterprises pe WHERE pe.program_id = $1::text::uuid AND ( \
               pe.live_minor > 6 * 1000000 OR pe.live_minor <> coalesce((SELECT sum(amount_minor) \
               FROM allocations a WHERE a.program_id = pe.program_id \
               AND a.enterprise_id = pe.enterprise_id AND a.status <> 'RELEASED'), 0) \
               OR EXISTS (SELECT 1 FROM allocations a WHERE a.program_id = pe.program_id \
               AND a.enterprise_id = pe.enterprise_id AND a.status <> 'RELEASED' AND a.lender_id <> pe.lender_id))",
            &[&program.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mismatched, 0);

    // What the API reports is what the database holds.
    let balance = w.balance(program).await;
    assert_eq!(
        (balance.reserved_minor, balance.confirmed_minor),
        (reserved, confirmed)
    );
    assert_eq!(balance.remaining_minor, total - used);
    replica
        .shutdown()
        .await
        .expect("the replica drains and stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_with_one_key_on_two_replicas_reserve_once() {
    let w = World::new().await;
    let replica = w.app.replica().await;
    let (program, a, _) = w.pboc_with_two_lenders().await;
    let e = w.key_enterprise(1).await;
    // 1.5 × ¥10,000,000 twice would break the ¥20,000,000 enterprise cap: a retry that checked
    // the rules against its twin's reservation must still answer with the twin's allocation.
    let request = loan(program, a, e, 15 * TEN_MILLION_YUAN / 10);

    let mut tasks = Vec::new();
    for i in 0..8 {
        let channel = if i % 2 == 0 {
            w.app.channel.clone()
        } else {
            replica.channel.clone()
        };
        let client = SpecialLoanServiceClient::new(channel);
        let token = w.app.operator.clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            allocate_as(&client, &token, request).await
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap().expect("every retry answers").id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        w.balance(program).await.reserved_minor,
        15 * TEN_MILLION_YUAN / 10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_names_every_bad_field_and_unknown_parties_are_not_found() {
    let w = World::new().await;
    let (program, a, _) = w.pboc_with_two_lenders().await;
    let e = w.key_enterprise(1).await;

    let status = w
        .allocate(pb::AllocateSpecialLoanRequest {
            idempotency_key: String::new(),
            program_id: "not-a-uuid".into(),
            amount_minor: 0,
            rate_bps: 0,
            term_months: 361,
            loan_date: "2020-3-2".into(),
            ..loan(program, a, e, 1)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        vec![
            "amount_minor",
            "idempotency_key",
            "loan_date",
            "program_id",
            "rate_bps",
            "term_months"
        ]
    );

    for (request, entity) in [
        (loan(Uuid::new_v4(), a, e, 1), "program"),
        (loan(program, Uuid::new_v4(), e, 1), "lender"),
        (loan(program, a, Uuid::new_v4(), 1), "enterprise"),
        (
            pb::AllocateSpecialLoanRequest {
                referral_id: Uuid::new_v4().to_string(),
                ..loan(program, a, e, 1)
            },
            "referral",
        ),
    ] {
        let status = w.allocate(request).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{entity}: {status:?}");
        assert!(status.message().starts_with(entity), "{}", status.message());
    }
    assert_eq!(w.balance(program).await.reserved_minor, 0);

    // Every change is audited in its own transaction.
    let allocation = w.allocate(loan(program, a, e, 1)).await.unwrap();
    let db = sql(&w.app).await;
    let audited: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_log WHERE entity_type = 'allocation' AND entity_id = $1 \
             AND rpc = 'finmatch.v1.SpecialLoanService/AllocateSpecialLoan'",
            &[&allocation.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lender_reserves_only_for_an_enterprise_referred_to_it_and_learns_nothing_of_other_banks()
{
    let w = World::new().await;
    let (program, a, b) = w.pboc_with_two_lenders().await;
    let e = w.key_enterprise(1).await;
    let token_a = w.app.token(Role::Lender, Some(a)).await;
    let client = w.client.clone();

    // No referral, or only a closed one: the enterprise is as unknown to the bank as any other.
    let squat = allocate_as(&client, &token_a, loan(program, a, e, 1))
        .await
        .unwrap_err();
    assert_eq!(squat.code(), Code::NotFound, "{squat:?}");
    w.referral(a, e, ReferralStatus::Expired).await;
    let squat = allocate_as(&client, &token_a, loan(program, a, e, 1))
        .await
        .unwrap_err();
    assert_eq!(squat.code(), Code::NotFound, "{squat:?}");
    assert_eq!(w.balance(program).await.reserved_minor, 0);

    // Bank B lends to it through the bureau; bank A, referred it too, is refused under the
    // one-bank rule without learning who B is or what B lends.
    w.allocate(loan(program, b, e, 1_234_567)).await.unwrap();
    w.referral(a, e, ReferralStatus::Acknowledged).await;
    let status = allocate_as(&client, &token_a, loan(program, a, e, 1_000_000))
        .await
        .unwrap_err();
    let message = refused(Err(status.clone()), "ONE_BANK_RULE");
    let shown = format!("{message} {:?}", metadata(&status));
    assert!(!shown.contains(&b.to_string()), "{shown}");
    assert!(
        !shown.contains("12,345.67") && !shown.contains("1234567"),
        "{shown}"
    );
    // The bureau sees the whole picture.
    let message = refused(
        w.allocate(loan(program, a, e, 1_000_000)).await,
        "ONE_BANK_RULE",
    );
    assert!(message.contains(&b.to_string()), "{message}");

    // Referred a live need of another enterprise, the bank reserves as before.
    let other = w.key_enterprise(2).await;
    w.referral(a, other, ReferralStatus::Pending).await;
    allocate_as(&client, &token_a, loan(program, a, other, 1_000_000))
        .await
        .expect("a referred enterprise");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_requires_the_lenders_recorded_loan_to_that_enterprise_covering_the_allocation()
 {
    let w = World::new().await;
    let (program, a, b) = w.pboc_with_two_lenders().await;
    let e1 = w.key_enterprise(1).await;
    let e2 = w.key_enterprise(2).await;
    let (product_a, product_b) = (w.product(a).await, w.product(b).await);
    let allocation = w.allocate(loan(program, a, e1, 5_000_000)).await.unwrap();

    // Nothing recorded under the reference: any reference was accepted before.
    let message = refused(
        w.confirm(&allocation.id, "LN-NONE", "2020-03-02").await,
        "NO_DISBURSEMENT",
    );
    assert!(message.contains("RecordDisbursement"), "{message}");
    // Another bank's loan to the enterprise, and the bank's loan to another enterprise.
    w.recorded_loan(b, product_b, e1, 5_000_000, "LN-B").await;
    refused(
        w.confirm(&allocation.id, "LN-B", "2020-03-02").await,
        "NO_DISBURSEMENT",
    );
    w.recorded_loan(a, product_a, e2, 5_000_000, "LN-E2").await;
    refused(
        w.confirm(&allocation.id, "LN-E2", "2020-03-02").await,
        "NO_DISBURSEMENT",
    );
    // The bank's loan to the enterprise, but smaller than the quota it would confirm.
    w.recorded_loan(a, product_a, e1, 4_999_999, "LN-SMALL")
        .await;
    let status = w
        .confirm(&allocation.id, "LN-SMALL", "2020-03-02")
        .await
        .unwrap_err();
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("DISBURSEMENT_TOO_SMALL")
    );
    let info = metadata(&status);
    assert_eq!(
        (info["limit"].as_str(), info["requested"].as_str()),
        ("4999999", "5000000")
    );
    // The right loan, claimed on another day than it was paid out.
    w.recorded_loan(a, product_a, e1, 5_000_000, "LN-1").await;
    let status = w
        .confirm(&allocation.id, "LN-1", "2020-03-03")
        .await
        .unwrap_err();
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("DISBURSEMENT_MISMATCH")
    );
    assert_eq!(metadata(&status)["disbursed_on"], "2020-03-02");
    let balance = w.balance(program).await;
    assert_eq!(
        (balance.reserved_minor, balance.confirmed_minor),
        (5_000_000, 0),
        "no refused confirmation moved quota"
    );

    let confirmed = w
        .confirm(&allocation.id, "LN-1", "2020-03-02")
        .await
        .unwrap();
    assert_eq!(confirmed.status, pb::AllocationStatus::Confirmed as i32);
    assert_eq!(w.balance(program).await.confirmed_minor, 5_000_000);

    // An allocation made through a referral is confirmed only by a loan on that referral.
    let f = crate::fixtures::Fixtures::connect(&w.app).await;
    let need = f
        .need(crate::fixtures::NeedRow {
            enterprise_id: e1,
            amount_minor: 1_000_000,
            purpose: "PAYROLL",
            status: "APPROVED",
            created_at: None,
        })
        .await;
    let referral = f
        .referral(crate::fixtures::ReferralRow {
            need_id: need,
            lender_id: a,
            product_id: product_a,
            status: "APPROVED",
            decline_reason: None,
            approved_amount_minor: Some(1_000_000),
            answered_after_secs: Some(60),
        })
        .await;
    let through = w
        .allocate(pb::AllocateSpecialLoanRequest {
            referral_id: referral.to_string(),
            ..loan(program, a, e1, 1_000_000)
        })
        .await
        .unwrap();
    w.recorded_loan(a, product_a, e1, 1_000_000, "LN-OTHER-REFERRAL")
        .await;
    let message = refused(
        w.confirm(&through.id, "LN-OTHER-REFERRAL", "2020-03-02")
            .await,
        "NO_DISBURSEMENT",
    );
    assert!(message.contains(&referral.to_string()), "{message}");
    f.disbursement(referral, 1_000_000, "LN-ON-REFERRAL").await;
    w.confirm(&through.id, "LN-ON-REFERRAL", "2020-03-02")
        .await
        .expect("the loan on the allocation's referral confirms it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_lapses_after_its_programs_hours_and_is_released_once_across_replicas() {
    // No background sweeps: the test runs each pass itself, at the times it chooses.
    let quiet = finmatch::config::ServerArgs {
        sweep_interval_secs: 3600,
        ..Default::default()
    };
    let w = World::on(TestApp::spawn_configured(quiet.clone()).await);
    let replica = w.app.replica_with(quiet).await;
    let (long, a, _) = w.pboc_with_two_lenders().await;
    let short = w
        .program(pb::Program {
            reservation_hours: 2,
            ..pboc_program("SHORT_HOLD")
        })
        .await;
    w.set_quota(short, a, TEN_MILLION_YUAN).await.unwrap();
    let mut c = w.client.clone();
    let hours = async |program: Uuid| {
        let mut c = w.client.clone();
        c.get_program(w.op(pb::GetProgramRequest {
            program_id: program.to_string(),
        }))
        .await
        .unwrap()
        .into_inner()
        .program
        .unwrap()
        .reservation_hours
    };
    assert_eq!((hours(long).await, hours(short).await), (72, 2));

    const HELD: usize = 12;
    let mut held = Vec::new();
    for n in 0..HELD {
        let e = w.key_enterprise(n as u32 + 1).await;
        held.push(w.allocate(loan(short, a, e, 1_000_000)).await.unwrap());
    }
    let created = held[0].create_time.unwrap();
    let expires = held[0].expire_time.unwrap();
    let hold = expires.seconds - created.seconds;
    assert!(
        (7_195..=7_205).contains(&hold),
        "held for {hold} s, not 2 hours"
    );
    let e_long = w.key_enterprise(100).await;
    let kept = w.allocate(loan(long, a, e_long, 1_000_000)).await.unwrap();

    let now = chrono::Utc::now();
    let early = w
        .app
        .app
        .sweep_once(now + chrono::TimeDelta::hours(1))
        .await
        .unwrap();
    assert_eq!(early.lapsed_reservations, 0);
    assert_eq!(
        w.balance(short).await.reserved_minor,
        HELD as i64 * 1_000_000
    );

    // Two replicas sweep at once, past the short hold: each reservation is released exactly once.
    let later = now + chrono::TimeDelta::hours(3);
    let (one, two) = tokio::join!(w.app.app.sweep_once(later), replica.app.sweep_once(later));
    assert_eq!(
        one.unwrap().lapsed_reservations + two.unwrap().lapsed_reservations,
        HELD
    );
    let balance = w.balance(short).await;
    assert_eq!(
        (balance.reserved_minor, balance.remaining_minor),
        (0, 10 * TEN_MILLION_YUAN)
    );
    assert_eq!(lender_line(&balance, a).remaining_minor, TEN_MILLION_YUAN);
    let released = c
        .list_allocations(w.op(pb::ListAllocationsRequest {
            program_id: short.to_string(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .allocations;
    assert_eq!(released.len(), HELD);
    for allocation in &released {
        assert_eq!(
            (allocation.status, allocation.release_reason),
            (
                pb::AllocationStatus::Released as i32,
                pb::AllocationReleaseReason::Lapsed as i32
            )
        );
    }
    let db = sql(&w.app).await;
    let (audited, live): (i64, i64) = {
        let audited = db
            .query_one(
                "SELECT count(*) FROM audit_log WHERE rpc = 'finmatch.sweeper' \
                 AND entity_type = 'allocation' AND principal_role = 'SYSTEM' \
                 AND detail->>'release_reason' = 'LAPSED'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let live = db
            .query_one(
                "SELECT coalesce(sum(live_minor), 0)::bigint FROM program_enterprises \
                 WHERE program_id = $1::text::uuid",
                &[&short.to_string()],
            )
            .await
            .unwrap()
            .get(0);
        (audited, live)
    };
    assert_eq!((audited, live), (HELD as i64, 0));
    // The 72-hour reservation is still held; a further pass releases nothing more.
    let listed = c
        .list_allocations(w.op(pb::ListAllocationsRequest {
            program_id: long.to_string(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .allocations;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.as_str(), listed[0].status),
        (kept.id.as_str(), pb::AllocationStatus::Reserved as i32)
    );
    assert_eq!(
        w.app
            .app
            .sweep_once(later)
            .await
            .unwrap()
            .lapsed_reservations,
        0
    );

    // Past its time a reservation cannot be confirmed, even before any sweep releases it.
    let product = w.product(a).await;
    let e = w.key_enterprise(200).await;
    w.recorded_loan(a, product, e, 1_000_000, "LN-LATE").await;
    let late = w.allocate(loan(short, a, e, 1_000_000)).await.unwrap();
    db.execute(
        "UPDATE allocations SET expires_at = now() - interval '1 second' WHERE id = $1::text::uuid",
        &[&late.id],
    )
    .await
    .unwrap();
    let status = w
        .confirm(&late.id, "LN-LATE", "2020-03-02")
        .await
        .unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("RESERVATION_LAPSED"));
    assert_eq!(w.balance(short).await.reserved_minor, 1_000_000);
    assert_eq!(
        w.app
            .app
            .sweep_once(chrono::Utc::now())
            .await
            .unwrap()
            .lapsed_reservations,
        1
    );
    assert_eq!(w.balance(short).await.reserved_minor, 0);

    // A reservation made through a referral: its lender hears of the lapse on its feed.
    let e = w.key_enterprise(300).await;
    let referral = w.referral(a, e, ReferralStatus::Acknowledged).await;
    let through = w
        .allocate(pb::AllocateSpecialLoanRequest {
            referral_id: referral.to_string(),
            ..loan(short, a, e, 1_000_000)
        })
        .await
        .unwrap();
    let token = w.app.token(Role::Lender, Some(a)).await;
    let mut feed = crate::helpers::watch_referrals(&w.app, &token, 0).await;
    db.execute(
        "UPDATE allocations SET expires_at = now() - interval '1 second' WHERE id = $1::text::uuid",
        &[&through.id],
    )
    .await
    .unwrap();
    assert_eq!(
        w.app
            .app
            .sweep_once(chrono::Utc::now())
            .await
            .unwrap()
            .lapsed_reservations,
        1
    );
    let event = loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), feed.message())
            .await
            .expect("the lapse reaches the feed")
            .expect("no error")
            .expect("the stream stays open");
        if let Some(pb::watch_referrals_response::Payload::Event(event)) = message.payload {
            break event;
        }
    };
    assert_eq!(event.kind, pb::ReferralEventKind::ReservationLapsed as i32);
    assert_eq!(event.referral.unwrap().id, referral.to_string());
}

/// An allocation and the designation it relies on carry their enterprise's routing key in their
/// ids (`domain::ids`), as its needs do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_and_its_designation_carry_the_enterprises_routing_key() {
    use finmatch::domain::ids::{key_of, routing_key};
    let w = World::new().await;
    let (program, a, _) = w.pboc_with_two_lenders().await;
    let e = w.key_enterprise(1).await;
    let allocation = w
        .allocate(loan(program, a, e, TEN_MILLION_YUAN))
        .await
        .unwrap();
    let allocation_id: Uuid = allocation.id.parse().unwrap();
    assert_eq!(key_of(allocation_id), Some(routing_key(e)));
    let db = sql(&w.app).await;
    let designations = db
        .query(
            "SELECT id::text FROM designations WHERE enterprise_id = $1::text::uuid",
            &[&e.to_string()],
        )
        .await
        .unwrap();
    assert!(!designations.is_empty());
    for row in designations {
        let id: Uuid = row.get::<_, String>(0).parse().unwrap();
        assert_eq!(key_of(id), Some(routing_key(e)), "designation {id}");
    }
}
