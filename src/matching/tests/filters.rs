//! Hard filters: one test per reason a product cannot take a need.

use super::*;

use IneligibleReason as R;

#[test]
fn the_fixture_product_is_eligible() {
    let o = evaluate_one(&need(), &enterprise(), product(1, 1));
    assert!(o.eligible);
    assert_eq!(o.reasons, []);
    assert!(o.score > 0);
}

#[test]
fn inactive_product_is_ineligible() {
    let p = MatchProduct {
        product_active: false,
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), [R::ProductInactive]);
}

#[test]
fn inactive_lender_is_ineligible() {
    let p = MatchProduct {
        lender_active: false,
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), [R::LenderInactive]);
}

#[test]
fn amount_outside_the_range_is_ineligible_and_the_ends_are_inclusive() {
    let above = MatchProduct {
        amount: amounts(10_000_000, 299_999_999),
        ..product(1, 1)
    };
    assert_eq!(reasons_of(above), [R::AmountOutOfRange]);
    let below = MatchProduct {
        amount: amounts(300_000_001, 900_000_000),
        ..product(1, 1)
    };
    assert_eq!(reasons_of(below), [R::AmountOutOfRange]);
    let exact = MatchProduct {
        amount: amounts(300_000_000, 300_000_000),
        ..product(1, 1)
    };
    assert_eq!(reasons_of(exact), []);
}

#[test]
fn term_outside_the_range_is_ineligible() {
    let p = MatchProduct {
        term: terms(13, 36),
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), [R::TermOutOfRange]);
    let p = MatchProduct {
        term: terms(12, 12),
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), []);
}

#[test]
fn region_outside_the_products_prefixes_is_ineligible() {
    let p = MatchProduct {
        region_prefixes: vec![
            RegionPrefix::parse("4201").unwrap(),
            RegionPrefix::parse("4202").unwrap(),
        ],
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), [R::RegionNotServed]);
    // The product's prefixes win over the lender's regions.
    let p = MatchProduct {
        lender_region_codes: vec![region("110000")],
        region_prefixes: vec![RegionPrefix::parse("42").unwrap()],
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), []);
}

#[test]
fn without_product_prefixes_the_lenders_regions_decide() {
    let elsewhere = MatchProduct {
        lender_region_codes: vec![region("420100"), region("110000")],
        ..product(1, 1)
    };
    assert_eq!(reasons_of(elsewhere), [R::RegionNotServed]);
    // A province-level code covers the whole province.
    let province = MatchProduct {
        lender_region_codes: vec![region("420000")],
        ..product(1, 1)
    };
    assert_eq!(reasons_of(province), []);
}

#[test]
fn industry_outside_the_products_prefixes_is_ineligible() {
    let p = MatchProduct {
        industry_prefixes: vec![
            IndustryPrefix::parse("C13").unwrap(),
            IndustryPrefix::parse("F").unwrap(),
        ],
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), [R::IndustryNotServed]);
    let p = MatchProduct {
        industry_prefixes: vec![IndustryPrefix::parse("C27").unwrap()],
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), []);
}

#[test]
fn no_accepted_collateral_is_ineligible() {
    let p = MatchProduct {
        collateral_accepted: collateral(&[Collateral::RealEstate, Collateral::Equipment]),
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), [R::CollateralNotAccepted]);
}

#[test]
fn enterprise_below_minimum_size_is_ineligible() {
    let p = MatchProduct {
        min_size: EnterpriseSize::Medium,
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), [R::SizeBelowMinimum]);
    let p = MatchProduct {
        min_size: EnterpriseSize::Small,
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), []);
}

#[test]
fn required_designation_not_held_is_ineligible() {
    let p = MatchProduct {
        required_designations: vec![list("PROVINCIAL_KEY")],
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), [R::DesignationMissing]);
    // Any one of the required lists is enough.
    let p = MatchProduct {
        required_designations: vec![list("PROVINCIAL_KEY"), list("NATIONAL_KEY_SUPPLY")],
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), []);
}

#[test]
fn product_minimum_rate_above_the_needs_maximum_is_ineligible() {
    let p = MatchProduct {
        rate: rates(501, 700),
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), [R::RateBelowMinimum]);
    let p = MatchProduct {
        rate: rates(500, 700),
        ..product(1, 1)
    };
    assert_eq!(reasons_of(p), []);
    let any_rate = MatchNeed {
        max_rate: None,
        ..need()
    };
    let p = MatchProduct {
        rate: rates(900, 1200),
        ..product(1, 1)
    };
    assert_eq!(evaluate_one(&any_rate, &enterprise(), p).reasons, []);
}

#[test]
fn used_up_daily_capacity_is_ineligible() {
    let o = evaluate_with(&need(), &enterprise(), product(1, 1), &used(1, 20), &[]);
    assert_eq!(o.reasons, [R::CapacityExhausted]);
    let o = evaluate_with(&need(), &enterprise(), product(1, 1), &used(1, 19), &[]);
    assert_eq!(o.reasons, []);
    // Another product's referrals do not count.
    let o = evaluate_with(&need(), &enterprise(), product(1, 1), &used(2, 20), &[]);
    assert_eq!(o.reasons, []);
}

#[test]
fn a_lender_already_tried_is_ineligible() {
    let o = evaluate_with(
        &need(),
        &enterprise(),
        product(1, 1),
        &Activity::default(),
        &[lender_id(7), lender_id(1)],
    );
    assert_eq!(o.reasons, [R::AlreadyTried]);
}

#[test]
fn a_need_without_consent_is_ineligible_everywhere() {
    let n = MatchNeed {
        consent_to_share: false,
        ..need()
    };
    assert_eq!(
        evaluate_one(&n, &enterprise(), product(1, 1)).reasons,
        [R::NoConsent]
    );
}

#[test]
fn every_reason_is_listed_at_once() {
    let n = MatchNeed {
        consent_to_share: false,
        ..need()
    };
    let p = MatchProduct {
        product_active: false,
        lender_active: false,
        amount: amounts(1, 2),
        term: terms(1, 2),
        region_prefixes: vec![RegionPrefix::parse("11").unwrap()],
        industry_prefixes: vec![IndustryPrefix::parse("A").unwrap()],
        collateral_accepted: collateral(&[Collateral::Inventory]),
        min_size: EnterpriseSize::Large,
        required_designations: vec![list("PROVINCIAL_KEY")],
        rate: rates(600, 700),
        ..product(1, 1)
    };
    let o = evaluate_with(&n, &enterprise(), p, &used(1, 25), &[lender_id(1)]);
    assert_eq!(o.reasons, IneligibleReason::ALL);
    assert_eq!((o.eligible, o.score, o.values.len()), (false, 0, 0));
}

#[test]
fn catalog_sorts_products_by_id_and_finds_them() {
    let catalog = ProductCatalog::new(vec![product(3, 1), product(1, 2), product(2, 1)]);
    let ids: Vec<_> = catalog.products().iter().map(|p| p.product_id).collect();
    assert_eq!(ids, [id(1), id(2), id(3)]);
    assert_eq!(catalog.get(id(2)).map(|p| p.lender_id), Some(lender_id(1)));
    assert_eq!(catalog.get(id(9)), None);
    assert_eq!(catalog.len(), 3);
    assert!(ProductCatalog::new(vec![]).is_empty());
}

#[test]
fn designations_beyond_the_first_64_lists_are_compared_by_name() {
    // 70 products, each gated on its own list; the enterprise holds lists 1
    // and 68, so exactly products 1 and 68 are eligible.
    let products: Vec<_> = (1..=70u128)
        .map(|i| MatchProduct {
            required_designations: vec![list(&format!("LIST_{i}"))],
            ..product(i, i)
        })
        .collect();
    let catalog = ProductCatalog::new(products);
    let e = MatchEnterprise {
        designations: vec![list("LIST_1"), list("LIST_68")],
        ..enterprise()
    };
    let (n, activity, policy) = (need(), Activity::default(), RoutingPolicy::default());
    let candidates = evaluate(&n, &e, &catalog, &activity, &[], &policy);
    let eligible: Vec<_> = candidates
        .iter()
        .filter(|c| c.eligible())
        .map(|c| c.product_id())
        .collect();
    assert_eq!(eligible, [id(1), id(68)]);
    assert!(
        candidates
            .iter()
            .filter(|c| !c.eligible())
            .all(|c| c.reasons().collect::<Vec<_>>() == [R::DesignationMissing])
    );
}

#[test]
fn products_and_needs_parsed_by_the_domain_feed_the_engine() {
    use crate::domain::{
        Channel, NeedInput, NewNeed, NewProduct, ProductInput, Purpose, parse_date,
    };
    let industries = vec!["C27".to_owned()];
    let product = NewProduct::parse(
        &ProductInput {
            lender_id: "00000000-0000-0001-0000-000000000000",
            name: "抗疫保供贷",
            min_amount_minor: 10_000_000,
            max_amount_minor: 5_000_000_000,
            min_term_months: 3,
            max_term_months: 12,
            industry_prefixes: &industries,
            collateral_accepted: &[Some(Collateral::Guarantee)],
            min_rate_bps: 315,
            max_rate_bps: 435,
            daily_capacity: 20,
            response_sla_hours: 48,
            active: true,
            ..ProductInput::default()
        },
        "",
    )
    .unwrap();
    let need = NewNeed::parse(
        &NeedInput {
            enterprise_id: "67e55044-10b1-426f-9247-bb680e5fe0c8",
            amount_minor: 300_000_000,
            term_months: 12,
            purpose: Some(Purpose::RawMaterials),
            collateral: &[Some(Collateral::Guarantee)],
            max_rate_bps: Some(500),
            needed_by: "2020-03-31",
            consent_to_share: true,
            channel: Some(Channel::Bureau),
            note: "",
        },
        "",
        parse_date("2020-02-20").unwrap(),
    )
    .unwrap();
    let catalog = ProductCatalog::new(vec![MatchProduct::from_product(
        id(1),
        &product,
        true,
        vec![region("421300")],
    )]);
    assert_eq!(catalog.products()[0].lender_id, lender_id(1));
    let (n, activity, policy) = (
        MatchNeed::from(&need),
        Activity::default(),
        RoutingPolicy::default(),
    );
    let e = enterprise();
    let candidates = evaluate(&n, &e, &catalog, &activity, &[], &policy);
    assert!(
        candidates[0].eligible(),
        "{:?}",
        candidates[0].reasons().collect::<Vec<_>>()
    );
}
