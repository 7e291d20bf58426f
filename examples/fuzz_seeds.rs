//! Writes the seed inputs of the `requests` fuzz target (fuzz/fuzz_targets/requests.rs): one
//! well-formed request per finmatch RPC, made from the bench's data and framed as the target
//! reads its input, so the fuzzer starts from messages that reach each handler's conversion.
//!
//! `cargo run --example fuzz_seeds -- fuzz/corpus/requests`

use prost::Message;

use finmatch::bench::data;
use finmatch::proto as pb;

/// Yuan in fen.
const YUAN: i64 = 100;
const ID: &str = "0190b3a4-7c1e-7d2a-9f3b-1a2b3c4d5e6f";
const DAY: &str = "2020-02-20";

fn seed(rpc: &str) -> Vec<Vec<u8>> {
    // Far ahead, so the needs' `needed_by` stays in the future and the seeds keep converting.
    let today = chrono::NaiveDate::from_ymd_opt(2099, 1, 4).unwrap();
    let need = data::need(1, ID, today);
    let enterprise = data::enterprise(1);
    let id = || ID.to_owned();
    let one = |m: &dyn Fn() -> Vec<u8>| vec![m()];
    match rpc {
        "CreateEnterprise" => one(&|| {
            pb::CreateEnterpriseRequest {
                enterprise: Some(enterprise.clone()),
            }
            .encode_to_vec()
        }),
        "GetEnterprise" => one(&|| {
            pb::GetEnterpriseRequest {
                enterprise_id: id(),
            }
            .encode_to_vec()
        }),
        "ListEnterprises" => one(&|| {
            pb::ListEnterprisesRequest {
                page_size: 50,
                region_prefix: "42".into(),
                industry_prefix: "C".into(),
                list_code: "PBOC_2020_EPIDEMIC".into(),
                designation_valid_on: DAY.into(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
        "UpdateEnterprise" => one(&|| {
            pb::UpdateEnterpriseRequest {
                enterprise: Some(pb::Enterprise {
                    id: id(),
                    ..enterprise.clone()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into(), "employees".into()],
                }),
            }
            .encode_to_vec()
        }),
        "GrantDesignation" => one(&|| {
            pb::GrantDesignationRequest {
                enterprise_id: id(),
                list_code: "PBOC_2020_EPIDEMIC".into(),
                granted_on: DAY.into(),
                expires_on: "2020-12-31".into(),
                reference: "HBFGW-2020-17".into(),
            }
            .encode_to_vec()
        }),
        "RevokeDesignation" => one(&|| {
            pb::RevokeDesignationRequest {
                enterprise_id: id(),
                list_code: "PBOC_2020_EPIDEMIC".into(),
            }
            .encode_to_vec()
        }),
        "SubmitNeed" => one(&|| {
            pb::SubmitNeedRequest {
                idempotency_key: "seed-1".into(),
                need: Some(need.clone()),
            }
            .encode_to_vec()
        }),
        "ImportNeeds" => (0..3)
            .map(|i| {
                pb::ImportNeedsRequest {
                    idempotency_key: format!("seed-{i}"),
                    need: Some(need.clone()),
                }
                .encode_to_vec()
            })
            .collect(),
        "PreviewMatches" => one(&|| {
            pb::PreviewMatchesRequest {
                subject: Some(pb::preview_matches_request::Subject::Need(need.clone())),
                page_size: 20,
                ..Default::default()
            }
            .encode_to_vec()
        }),
        "GetNeed" => one(&|| pb::GetNeedRequest { need_id: id() }.encode_to_vec()),
        "ListNeeds" => one(&|| {
            pb::ListNeedsRequest {
                page_size: 10,
                statuses: vec![pb::NeedStatus::Routed as i32],
                enterprise_id: id(),
                create_time_from: Some(prost_types::Timestamp {
                    seconds: 1_582_156_800,
                    nanos: 0,
                }),
                ..Default::default()
            }
            .encode_to_vec()
        }),
        "WithdrawNeed" => one(&|| {
            pb::WithdrawNeedRequest {
                need_id: id(),
                reason: "funded elsewhere".into(),
            }
            .encode_to_vec()
        }),
        "RerouteNeed" => one(&|| {
            pb::RerouteNeedRequest {
                need_id: id(),
                target_open_referrals: Some(2),
            }
            .encode_to_vec()
        }),
        "CreateLender" => one(&|| {
            pb::CreateLenderRequest {
                lender: Some(data::lender(0)),
            }
            .encode_to_vec()
        }),
        "GetLender" => one(&|| pb::GetLenderRequest { lender_id: id() }.encode_to_vec()),
        "ListLenders" => one(&|| {
            pb::ListLendersRequest {
                page_size: 5,
                active: Some(true),
                ..Default::default()
            }
            .encode_to_vec()
        }),
        "CreateProduct" => one(&|| {
            pb::CreateProductRequest {
                product: Some(data::product(ID, 1)),
            }
            .encode_to_vec()
        }),
        "UpdateProduct" => one(&|| {
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: id(),
                    ..data::product(ID, 2)
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["max_rate_bps".into(), "active".into()],
                }),
            }
            .encode_to_vec()
        }),
        "ListProducts" => one(&|| {
            pb::ListProductsRequest {
                page_size: 5,
                lender_id: id(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
        "IssueCredential" => one(&|| {
            pb::IssueCredentialRequest {
                role: pb::Role::Lender as i32,
                lender_id: id(),
                label: "core banking".into(),
                expire_time: Some(prost_types::Timestamp {
                    seconds: 4_102_444_800,
                    nanos: 0,
                }),
                certificate_subject: "CN=bank.example,O=Bank".into(),
            }
            .encode_to_vec()
        }),
        "RevokeCredential" => one(&|| {
            pb::RevokeCredentialRequest {
                credential_id: id(),
            }
            .encode_to_vec()
        }),
        "ListReferrals" => one(&|| {
            pb::ListReferralsRequest {
                page_size: 10,
                statuses: vec![pb::ReferralStatus::Pending as i32],
                ..Default::default()
            }
            .encode_to_vec()
        }),
        "WatchReferrals" => one(&|| pb::WatchReferralsRequest { after_cursor: 7 }.encode_to_vec()),
        "GetReferral" => one(&|| pb::GetReferralRequest { referral_id: id() }.encode_to_vec()),
        "AcknowledgeReferral" => {
            one(&|| pb::AcknowledgeReferralRequest { referral_id: id() }.encode_to_vec())
        }
        "RequestInformation" => one(&|| {
            pb::RequestInformationRequest {
                referral_id: id(),
                message: "2019 audited accounts, please".into(),
            }
            .encode_to_vec()
        }),
        "DecideReferral" => vec![
            pb::DecideReferralRequest {
                referral_id: id(),
                idempotency_key: "seed-approve".into(),
                decision: Some(pb::decide_referral_request::Decision::Approve(
                    pb::ReferralApproval {
                        amount_minor: 500_000 * YUAN,
                        rate_bps: 385,
                        term_months: 12,
                    },
                )),
            }
            .encode_to_vec(),
        ],
        "RecordDisbursement" => one(&|| {
            pb::RecordDisbursementRequest {
                referral_id: id(),
                loan_reference: "LN-2020-000017".into(),
                amount_minor: 500_000 * YUAN,
                rate_bps: 385,
                term_months: 12,
                disbursed_on: DAY.into(),
            }
            .encode_to_vec()
        }),
        "GetSummary" => one(&|| {
            pb::GetSummaryRequest {
                period_from: Some(prost_types::Timestamp {
                    seconds: 1_580_515_200,
                    nanos: 0,
                }),
                period_to: Some(prost_types::Timestamp {
                    seconds: 1_583_020_800,
                    nanos: 0,
                }),
                region_prefix: "42".into(),
                industry_prefix: "C27".into(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
        "CreateProgram" => one(&|| {
            pb::CreateProgramRequest {
                program: Some(pb::Program {
                    code: "PBOC_2020_EPIDEMIC".into(),
                    name: "2020 special re-lending".into(),
                    total_quota_minor: 300_000_000_000 * YUAN,
                    rate_cap_bps: 315,
                    subsidy_ratio_bps: 5_000,
                    max_effective_rate_bps: Some(160),
                    per_enterprise_cap_minor: Some(10_000_000 * YUAN),
                    max_term_months: 12,
                    required_designations: vec!["PBOC_2020_EPIDEMIC".into()],
                    loan_date_from: "2020-01-31".into(),
                    loan_date_to: "2020-05-31".into(),
                    one_bank_per_enterprise: true,
                    reservation_hours: 72,
                    ..Default::default()
                }),
            }
            .encode_to_vec()
        }),
        "GetProgram" => one(&|| pb::GetProgramRequest { program_id: id() }.encode_to_vec()),
        "SetLenderQuota" => one(&|| {
            pb::SetLenderQuotaRequest {
                program_id: id(),
                lender_id: id(),
                quota_minor: 1_000_000_000 * YUAN,
            }
            .encode_to_vec()
        }),
        "AllocateSpecialLoan" => one(&|| {
            pb::AllocateSpecialLoanRequest {
                idempotency_key: "seed-allocate".into(),
                program_id: id(),
                lender_id: id(),
                enterprise_id: id(),
                referral_id: id(),
                amount_minor: 500_000 * YUAN,
                rate_bps: 315,
                term_months: 12,
                loan_date: DAY.into(),
            }
            .encode_to_vec()
        }),
        "ConfirmAllocation" => one(&|| {
            pb::ConfirmAllocationRequest {
                allocation_id: id(),
                loan_reference: "LN-2020-000017".into(),
                disbursed_on: DAY.into(),
            }
            .encode_to_vec()
        }),
        "ReleaseAllocation" => one(&|| {
            pb::ReleaseAllocationRequest {
                allocation_id: id(),
                reason: "the loan fell through".into(),
            }
            .encode_to_vec()
        }),
        "ListAllocations" => one(&|| {
            pb::ListAllocationsRequest {
                page_size: 10,
                program_id: id(),
                statuses: vec![pb::AllocationStatus::Reserved as i32],
                ..Default::default()
            }
            .encode_to_vec()
        }),
        other => panic!("no seed for {other}: add one"),
    }
}

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus/requests".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let mut paths: Vec<&str> = finmatch::grpc::methods::served()
        .paths()
        .filter(|p| p.starts_with("/finmatch.v1."))
        .collect();
    paths.sort_unstable();
    for (index, path) in paths.iter().enumerate() {
        let rpc = path.rsplit('/').next().expect("a method name");
        // Index, caller 0, no gzip, then each message uncompressed behind its length.
        let mut input = vec![index as u8, 0, 0];
        for message in seed(rpc) {
            let len = u16::try_from(message.len()).expect("a seed under 64 KiB");
            input.push(0);
            input.extend_from_slice(&len.to_be_bytes());
            input.extend_from_slice(&message);
        }
        std::fs::write(dir.join(format!("seed-{rpc}")), input)?;
    }
    println!("{} seeds in {}", paths.len(), dir.display());
    Ok(())
}
