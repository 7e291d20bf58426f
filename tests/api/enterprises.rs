//! EnterpriseService end to end: validation, duplicates, paging, filters, updates, designations, audit.

use finmatch::proto as pb;
use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;
use tonic::Code;

use crate::helpers::{
    TestApp, audit_rows, authed, enterprise, error_reason, existing_resource, violated_fields,
};

fn client(app: &TestApp) -> EnterpriseServiceClient<tonic::transport::Channel> {
    EnterpriseServiceClient::new(app.channel.clone())
}

async fn create(app: &TestApp, e: pb::Enterprise) -> pb::Enterprise {
    client(app)
        .create_enterprise(authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(e),
            },
            &app.operator,
        ))
        .await
        .expect("create enterprise")
        .into_inner()
        .enterprise
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_get_returns_what_was_registered_and_audits_it() {
    let app = TestApp::spawn().await;
    let created = create(&app, enterprise(1)).await;
    assert_eq!(created.credit_code, enterprise(1).credit_code);
    assert_eq!(created.region_code, "421303");
    assert_eq!(created.size, pb::EnterpriseSize::Small as i32);
    assert!(created.create_time.is_some());

    let fetched = client(&app)
        .get_enterprise(authed(
            pb::GetEnterpriseRequest {
                enterprise_id: created.id.clone(),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .enterprise
        .unwrap();
    assert_eq!(fetched, created);

    let audit = audit_rows(&app, "finmatch.v1.EnterpriseService/CreateEnterprise").await;
    assert_eq!(
        audit,
        [(
            "OPERATOR".to_owned(),
            "enterprise".to_owned(),
            created.id.clone()
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_field_is_its_own_violation_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let mut bad = enterprise(2);
    let code = bad.credit_code.clone();
    // Wrong check character.
    let wrong = if code.ends_with('0') { '1' } else { '0' };
    bad.credit_code = format!("{}{wrong}", &code[..17]);
    bad.region_code = "42130".into();
    bad.industry_code = "Z99".into();
    bad.size = pb::EnterpriseSize::Unspecified as i32;
    bad.annual_revenue_minor = -1;
    let status = client(&app)
        .create_enterprise(authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(bad),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        [
            "enterprise.annual_revenue_minor",
            "enterprise.credit_code",
            "enterprise.industry_code",
            "enterprise.region_code",
            "enterprise.size",
        ]
    );
    assert!(
        status.message().contains("check character"),
        "{}",
        status.message()
    );
    assert!(
        audit_rows(&app, "finmatch.v1.EnterpriseService/CreateEnterprise")
            .await
            .is_empty()
    );
    let listed = client(&app)
        .list_enterprises(authed(pb::ListEnterprisesRequest::default(), &app.operator))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.enterprises.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_enterprise_with_the_same_credit_code_already_exists() {
    let app = TestApp::spawn().await;
    let first = create(&app, enterprise(3)).await;
    let mut twin = enterprise(3);
    twin.name = "Another name".into();
    let status = client(&app)
        .create_enterprise(authed(
            pb::CreateEnterpriseRequest {
                enterprise: Some(twin),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        status.message().contains(&first.id),
        "names the holder: {}",
        status.message()
    );
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("DUPLICATE_CREDIT_CODE")
    );
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(info.metadata.get("enterprise_id"), Some(&first.id));
    assert_eq!(
        existing_resource(&status),
        ("enterprise".to_string(), first.id.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_ids_are_not_found_and_invalid() {
    let app = TestApp::spawn().await;
    let status = client(&app)
        .get_enterprise(authed(
            pb::GetEnterpriseRequest {
                enterprise_id: uuid::Uuid::new_v4().to_string(),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client(&app)
        .get_enterprise(authed(
            pb::GetEnterpriseRequest {
                enterprise_id: "42".into(),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["enterprise_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_everything_once_and_filters_by_prefixes() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for n in 0..7 {
        let mut e = enterprise(10 + n);
        if n % 2 == 1 {
            e.region_code = "420102".into();
            e.industry_code = "F5191".into();
        }
        ids.push(create(&app, e).await.id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client(&app)
            .list_enterprises(authed(
                pb::ListEnterprisesRequest {
                    page_size: 3,
                    page_token: token.clone(),
                    ..Default::default()
                },
                &app.operator,
            ))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.enterprises.len() <= 3);
        seen.extend(page.enterprises.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every enterprise once, in creation order");

    let suizhou = client(&app)
        .list_enterprises(authed(
            pb::ListEnterprisesRequest {
                region_prefix: "4213".into(),
                industry_prefix: "C27".into(),
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suizhou.enterprises.len(), 4);
    assert!(
        suizhou
            .enterprises
            .iter()
            .all(|e| e.region_code.starts_with("4213"))
    );

    let status = client(&app)
        .list_enterprises(authed(
            pb::ListEnterprisesRequest {
                page_size: -1,
                page_token: "garbage".into(),
                region_prefix: "42x".into(),
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["page_size", "page_token", "region_prefix"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_only_the_masked_fields() {
    let app = TestApp::spawn().await;
    let created = create(&app, enterprise(20)).await;
    let mut change = created.clone();
    change.name = "Renamed Co.".into();
    change.employees = 999;
    change.contact_phone = String::new();
    let updated = client(&app)
        .update_enterprise(authed(
            pb::UpdateEnterpriseRequest {
                enterprise: Some(change),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into(), "contact_phone".into()],
                }),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .enterprise
        .unwrap();
    assert_eq!(updated.name, "Renamed Co.");
    assert_eq!(updated.contact_phone, "");
    assert_eq!(updated.employees, created.employees, "not in the mask");

    let status = client(&app)
        .update_enterprise(authed(
            pb::UpdateEnterpriseRequest {
                enterprise: Some(created.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["id".into(), "create_time".into()],
                }),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["update_mask.paths[0]", "update_mask.paths[1]"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn designations_have_validity_dates_filter_lists_and_can_be_revoked() {
    let app = TestApp::spawn().await;
    let national = create(&app, enterprise(30)).await;
    let provincial = create(&app, enterprise(31)).await;
    create(&app, enterprise(32)).await;
    let grant = |id: &str, list: &str, from: &str, to: &str| pb::GrantDesignationRequest {
        enterprise_id: id.into(),
        list_code: list.into(),
        granted_on: from.into(),
        expires_on: to.into(),
        reference: "MIIT 2020-02 list".into(),
    };
    let granted = client(&app)
        .grant_designation(authed(
            grant(
                &national.id,
                "NATIONAL_KEY_SUPPLY",
                "2020-02-01",
                "2020-12-31",
            ),
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .enterprise
        .unwrap();
    assert_eq!(granted.designations.len(), 1);
    assert_eq!(granted.designations[0].list_code, "NATIONAL_KEY_SUPPLY");
    assert_eq!(granted.designations[0].expires_on, "2020-12-31");
    client(&app)
        .grant_designation(authed(
            grant(&provincial.id, "PROVINCIAL_KEY", "2020-03-01", ""),
            &app.operator,
        ))
        .await
        .unwrap();

    let status = client(&app)
        .grant_designation(authed(
            grant(&national.id, "NATIONAL_KEY_SUPPLY", "2020-02-01", ""),
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(
        existing_resource(&status),
        (
            "designation".to_string(),
            format!("{}/NATIONAL_KEY_SUPPLY", national.id)
        )
    );

    let status = client(&app)
        .grant_designation(authed(
            grant(&national.id, "bad list", "2020-02-30", "2020-01-01"),
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["granted_on", "list_code"]);

    let on_list = |list: &str, day: &str| pb::ListEnterprisesRequest {
        list_code: list.into(),
        designation_valid_on: day.into(),
        ..Default::default()
    };
    let listed = client(&app)
        .list_enterprises(authed(on_list("NATIONAL_KEY_SUPPLY", ""), &app.operator))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.enterprises.iter().map(|e| &e.id).collect::<Vec<_>>(),
        [&national.id]
    );
    let expired = client(&app)
        .list_enterprises(authed(
            on_list("NATIONAL_KEY_SUPPLY", "2021-01-01"),
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(expired.enterprises.is_empty(), "not valid after expiry");

    let revoked = client(&app)
        .revoke_designation(authed(
            pb::RevokeDesignationRequest {
                enterprise_id: national.id.clone(),
                list_code: "NATIONAL_KEY_SUPPLY".into(),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .enterprise
        .unwrap();
    assert!(revoked.designations.is_empty());
    let status = client(&app)
        .revoke_designation(authed(
            pb::RevokeDesignationRequest {
                enterprise_id: national.id.clone(),
                list_code: "NATIONAL_KEY_SUPPLY".into(),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        audit_rows(&app, "finmatch.v1.EnterpriseService/GrantDesignation")
            .await
            .len(),
        2
    );
}
