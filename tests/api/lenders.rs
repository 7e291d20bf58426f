//! LenderService end to end: lenders, products with ordered ranges, updates, paging.

use finmatch::proto as pb;
use finmatch::proto::lender_service_client::LenderServiceClient;
use tonic::Code;

use crate::helpers::{
    TestApp, audit_rows, authed, create_lender, existing_resource, violated_fields,
};

fn client(app: &TestApp) -> LenderServiceClient<tonic::transport::Channel> {
    LenderServiceClient::new(app.channel.clone())
}

fn product(lender_id: &str) -> pb::Product {
    pb::Product {
        lender_id: lender_id.into(),
        name: "Epidemic-prevention working capital".into(),
        min_amount_minor: 10_000_000,
        max_amount_minor: 5_000_000_000,
        min_term_months: 3,
        max_term_months: 12,
        industry_prefixes: vec!["C27".into(), "C35".into()],
        region_prefixes: vec!["4213".into()],
        collateral_accepted: vec![
            pb::Collateral::Credit as i32,
            pb::Collateral::Guarantee as i32,
        ],
        min_size: pb::EnterpriseSize::Small as i32,
        min_rate_bps: 315,
        max_rate_bps: 435,
        required_designations: vec!["NATIONAL_KEY_SUPPLY".into()],
        daily_capacity: 20,
        response_sla_hours: 48,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenders_are_created_listed_and_unique_by_name() {
    let app = TestApp::spawn().await;
    let first = create_lender(&app, "ICBC Suizhou Branch").await;
    create_lender(&app, "Hubei Bank Suizhou Branch").await;
    let fetched = client(&app)
        .get_lender(authed(
            pb::GetLenderRequest {
                lender_id: first.to_string(),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .lender
        .unwrap();
    assert_eq!(fetched.name, "ICBC Suizhou Branch");
    assert_eq!(fetched.active, Some(true), "active unless said otherwise");
    assert_eq!(fetched.region_codes, ["421300"]);

    let page = client(&app)
        .list_lenders(authed(
            pb::ListLendersRequest {
                page_size: 1,
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.lenders.len(), 1);
    assert!(!page.next_page_token.is_empty());

    let status = client(&app)
        .create_lender(authed(
            pb::CreateLenderRequest {
                lender: Some(pb::Lender {
                    name: "ICBC Suizhou Branch".into(),
                    kind: pb::LenderKind::StateOwned as i32,
                    region_codes: vec!["421300".into()],
                    ..Default::default()
                }),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(
        existing_resource(&status),
        ("lender".to_string(), first.to_string())
    );

    let status = client(&app)
        .create_lender(authed(
            pb::CreateLenderRequest {
                lender: Some(pb::Lender::default()),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["lender.kind", "lender.name"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_validate_ranges_and_known_enums_field_by_field() {
    let app = TestApp::spawn().await;
    let lender = create_lender(&app, "CCB Suizhou Branch").await.to_string();
    let created = client(&app)
        .create_product(authed(
            pb::CreateProductRequest {
                product: Some(product(&lender)),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(created.min_rate_bps, 315);
    assert_eq!(
        created.collateral_accepted,
        [
            pb::Collateral::Credit as i32,
            pb::Collateral::Guarantee as i32
        ]
    );
    assert_eq!(
        audit_rows(&app, "finmatch.v1.LenderService/CreateProduct")
            .await
            .len(),
        1
    );

    let mut bad = product(&lender);
    bad.name = "Another".into();
    bad.min_amount_minor = 1_000_000;
    bad.max_amount_minor = 500_000;
    bad.min_term_months = 24;
    bad.max_term_months = 12;
    bad.min_rate_bps = 500;
    bad.max_rate_bps = 400;
    bad.collateral_accepted = vec![99];
    bad.daily_capacity = 0;
    let status = client(&app)
        .create_product(authed(
            pb::CreateProductRequest { product: Some(bad) },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        [
            "product.collateral_accepted[0]",
            "product.daily_capacity",
            "product.max_amount_minor",
            "product.max_rate_bps",
            "product.max_term_months",
        ]
    );

    let status = client(&app)
        .create_product(authed(
            pb::CreateProductRequest {
                product: Some(product(&uuid::Uuid::new_v4().to_string())),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

/// Eight registrations of one name at once, over two replicas: one wins, and each of the other
/// seven gets ALREADY_EXISTS naming the winner, although it lost the race at the unique index
/// rather than at the look-up before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_of_one_name_all_name_the_winner() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(8));
    let calls = (0..8).map(|i| {
        let channel = if i % 2 == 0 { &app } else { &replica }.channel.clone();
        let (token, start) = (app.operator.clone(), start.clone());
        tokio::spawn(async move {
            start.wait().await;
            LenderServiceClient::new(channel)
                .create_lender(authed(
                    pb::CreateLenderRequest {
                        lender: Some(pb::Lender {
                            name: "PSBC Suizhou Branch".into(),
                            kind: pb::LenderKind::StateOwned as i32,
                            region_codes: vec!["421300".into()],
                            ..Default::default()
                        }),
                    },
                    &token,
                ))
                .await
        })
    });
    let outcomes = futures::future::join_all(calls).await;
    let mut winners = Vec::new();
    let mut named = Vec::new();
    for outcome in outcomes {
        match outcome.unwrap() {
            Ok(created) => winners.push(created.into_inner().lender.unwrap().id),
            Err(status) => named.push(existing_resource(&status).1),
        }
    }
    assert_eq!(winners.len(), 1, "one registration wins: {winners:?}");
    assert_eq!(named, vec![winners[0].clone(); 7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_products_name_is_unique_per_lender_and_the_refusal_names_the_holder() {
    let app = TestApp::spawn().await;
    let lender = create_lender(&app, "BOC Suizhou Branch").await.to_string();
    let create = |product: pb::Product| {
        let mut client = client(&app);
        let token = app.operator.clone();
        async move {
            client
                .create_product(authed(
                    pb::CreateProductRequest {
                        product: Some(product),
                    },
                    &token,
                ))
                .await
                .map(|r| r.into_inner().product.unwrap())
        }
    };
    let first = create(product(&lender)).await.unwrap();
    let status = create(product(&lender)).await.unwrap_err();
    assert_eq!(
        existing_resource(&status),
        ("product".to_string(), first.id.clone())
    );
    assert_eq!(
        audit_rows(&app, "finmatch.v1.LenderService/CreateProduct")
            .await
            .len(),
        1,
        "the refusal is not audited as a creation"
    );

    let mut other = product(&lender);
    other.name = "Working capital, ordinary".into();
    let other = create(other).await.unwrap();
    let rename = |name: &str| {
        let mut client = client(&app);
        let token = app.operator.clone();
        let mut change = other.clone();
        change.name = name.into();
        async move {
            client
                .update_product(authed(
                    pb::UpdateProductRequest {
                        product: Some(change),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["name".into()],
                        }),
                    },
                    &token,
                ))
                .await
        }
    };
    let status = rename(&first.name).await.unwrap_err();
    assert_eq!(
        existing_resource(&status),
        ("product".to_string(), first.id.clone())
    );
    // Its own name is not taken from itself.
    rename(&other.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_product_checks_the_result_against_the_stored_range() {
    let app = TestApp::spawn().await;
    let lender = create_lender(&app, "ABC Suizhou Branch").await.to_string();
    let created = client(&app)
        .create_product(authed(
            pb::CreateProductRequest {
                product: Some(product(&lender)),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    let mask = |paths: &[&str]| {
        Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        })
    };
    let mut change = created.clone();
    change.min_rate_bps = 500; // above the stored max of 435
    let status = client(&app)
        .update_product(authed(
            pb::UpdateProductRequest {
                product: Some(change.clone()),
                update_mask: mask(&["min_rate_bps"]),
            },
            &app.operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["product.max_rate_bps"]);

    change.active = Some(false);
    change.daily_capacity = 5;
    let updated = client(&app)
        .update_product(authed(
            pb::UpdateProductRequest {
                product: Some(change),
                update_mask: mask(&["active", "daily_capacity"]),
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(updated.active, Some(false));
    assert_eq!(updated.daily_capacity, 5);
    assert_eq!(updated.min_rate_bps, 315, "not in the mask");

    let listed = client(&app)
        .list_products(authed(
            pb::ListProductsRequest {
                lender_id: lender.clone(),
                active: Some(true),
                ..Default::default()
            },
            &app.operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.products.is_empty(),
        "the only product is inactive now"
    );
}
