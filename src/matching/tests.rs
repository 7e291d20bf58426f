//! Tests of the matching engine: one per filter and per factor, ranking and
//! selection, explanations, and properties over random worlds.

use std::collections::HashMap;

use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::domain::{
    AmountMinor, Bounds, Bps, Collateral, CollateralSet, DailyCapacity, EnterpriseSize,
    IndustryCode, IndustryPrefix, ListCode, RegionCode, RegionPrefix, TermMonths,
};

// ------------------------------------------------------------------ fixtures

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn lender_id(n: u128) -> Uuid {
    Uuid::from_u128(n << 64)
}

fn region(s: &str) -> RegionCode {
    RegionCode::parse(s).unwrap()
}

fn list(s: &str) -> ListCode {
    ListCode::parse(s).unwrap()
}

fn collateral(items: &[Collateral]) -> CollateralSet {
    items.iter().copied().collect()
}

fn amounts(min: i64, max: i64) -> Bounds<AmountMinor> {
    Bounds::new(
        AmountMinor::new(min).unwrap(),
        AmountMinor::new(max).unwrap(),
    )
    .unwrap()
}

fn terms(min: i32, max: i32) -> Bounds<TermMonths> {
    Bounds::new(TermMonths::new(min).unwrap(), TermMonths::new(max).unwrap()).unwrap()
}

fn rates(min: i32, max: i32) -> Bounds<Bps> {
    Bounds::new(Bps::new(min).unwrap(), Bps::new(max).unwrap()).unwrap()
}

/// ¥3,000,000 for 12 months against a guarantee, at most 5.00%.
fn need() -> MatchNeed {
    MatchNeed {
        amount: AmountMinor::new(300_000_000).unwrap(),
        term: TermMonths::new(12).unwrap(),
        collateral: collateral(&[Collateral::Guarantee]),
        max_rate: Some(Bps::new(500).unwrap()),
        consent_to_share: true,
    }
}

/// A small pharmaceutical maker in Zengdu district, Suizhou, on the national
/// key supply list.
fn enterprise() -> MatchEnterprise {
    MatchEnterprise {
        region_code: region("421303"),
        industry_code: IndustryCode::parse("C2720").unwrap(),
        size: EnterpriseSize::Small,
        designations: vec![list("NATIONAL_KEY_SUPPLY")],
    }
}

/// A product of a Suizhou lender that takes the need above.
fn product(product: u128, lender: u128) -> MatchProduct {
    MatchProduct {
        product_id: id(product),
        lender_id: lender_id(lender),
        product_active: true,
        lender_active: true,
        lender_region_codes: vec![region("421300")],
        amount: amounts(10_000_000, 5_000_000_000),
        term: terms(3, 36),
        rate: rates(315, 435),
        industry_prefixes: vec![],
        region_prefixes: vec![],
        collateral_accepted: collateral(&[Collateral::Credit, Collateral::Guarantee]),
        min_size: EnterpriseSize::Micro,
        required_designations: vec![],
        daily_capacity: DailyCapacity::new(20).unwrap(),
    }
}

/// Activity in which product `product` has had `count` referrals today.
fn used(product: u128, count: u32) -> Activity {
    Activity {
        product_referrals_today: HashMap::from([(id(product), count)]),
        ..Activity::default()
    }
}

/// Activity with one lender's record.
fn with_stats(lender: u128, stats: LenderStats) -> Activity {
    Activity {
        lender_stats: HashMap::from([(lender_id(lender), stats)]),
        ..Activity::default()
    }
}

/// What tests look at, detached from the borrowed candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    product_id: Uuid,
    eligible: bool,
    score: i32,
    reasons: Vec<IneligibleReason>,
    values: Vec<i32>,
}

fn outcome(c: &Candidate<'_>) -> Outcome {
    Outcome {
        product_id: c.product_id(),
        eligible: c.eligible(),
        score: c.score(),
        reasons: c.reasons().collect(),
        values: c.factors().map(|f| f.value_bps).collect(),
    }
}

fn evaluate_one(need: &MatchNeed, enterprise: &MatchEnterprise, p: MatchProduct) -> Outcome {
    evaluate_with(need, enterprise, p, &Activity::default(), &[])
}

fn evaluate_with(
    need: &MatchNeed,
    enterprise: &MatchEnterprise,
    p: MatchProduct,
    activity: &Activity,
    tried: &[Uuid],
) -> Outcome {
    let catalog = ProductCatalog::new(vec![p]);
    let policy = RoutingPolicy::default();
    let candidates = evaluate(need, enterprise, &catalog, activity, tried, &policy);
    assert_eq!(candidates.len(), 1);
    outcome(&candidates[0])
}

fn reasons_of(p: MatchProduct) -> Vec<IneligibleReason> {
    evaluate_one(&need(), &enterprise(), p).reasons
}

fn value_of(factor: Factor, o: &Outcome) -> i32 {
    assert!(o.eligible, "{o:?}");
    o.values[factor as usize]
}

// ------------------------------------------------------------------- filters

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

// ------------------------------------------------------------------- factors

#[test]
fn rate_factor_scores_the_expected_rate_between_best_and_worst() {
    // Expected (315 + min(435, 500)) / 2 = 375: (1500 − 375) / 1200 = 0.9375.
    let o = evaluate_one(&need(), &enterprise(), product(1, 1));
    assert_eq!(value_of(Factor::Rate, &o), 9_375);
    // The need's cap lowers the expected rate: (315 + 400) / 2 = 357.
    let capped = MatchNeed {
        max_rate: Some(Bps::new(400).unwrap()),
        ..need()
    };
    assert_eq!(
        value_of(
            Factor::Rate,
            &evaluate_one(&capped, &enterprise(), product(1, 1))
        ),
        9_525
    );
    let cheap = MatchProduct {
        rate: rates(250, 300),
        ..product(1, 1)
    };
    assert_eq!(
        value_of(Factor::Rate, &evaluate_one(&need(), &enterprise(), cheap)),
        10_000
    );
    let dear = MatchProduct {
        rate: rates(1_500, 1_800),
        ..product(1, 1)
    };
    let any_rate = MatchNeed {
        max_rate: None,
        ..need()
    };
    assert_eq!(
        value_of(Factor::Rate, &evaluate_one(&any_rate, &enterprise(), dear)),
        0
    );
}

#[test]
fn amount_fit_is_full_at_the_log_middle_and_half_at_the_ends() {
    let with_range = |amount: i64| {
        let n = MatchNeed {
            amount: AmountMinor::new(amount).unwrap(),
            ..need()
        };
        let p = MatchProduct {
            amount: amounts(1 << 20, 1 << 30),
            ..product(1, 1)
        };
        value_of(Factor::AmountFit, &evaluate_one(&n, &enterprise(), p))
    };
    assert_eq!(with_range(1 << 25), 10_000);
    assert_eq!(with_range(1 << 20), 5_000);
    assert_eq!(with_range(1 << 30), 5_000);
    assert_eq!(with_range(1 << 22), 7_000);
    assert_eq!(with_range(1 << 28), 7_000);
    assert_eq!(with_range(1 << 27), 8_000);
    let single = MatchProduct {
        amount: amounts(300_000_000, 300_000_000),
        ..product(1, 1)
    };
    assert_eq!(
        value_of(
            Factor::AmountFit,
            &evaluate_one(&need(), &enterprise(), single)
        ),
        10_000
    );
}

#[test]
fn approval_history_is_smoothed_towards_one_half() {
    let value = |approvals, decisions| {
        let activity = with_stats(
            1,
            LenderStats {
                approvals,
                decisions,
                ..LenderStats::default()
            },
        );
        value_of(
            Factor::ApprovalHistory,
            &evaluate_with(&need(), &enterprise(), product(1, 1), &activity, &[]),
        )
    };
    assert_eq!(value(0, 0), 5_000);
    // (8 + 10 × 0.5) / (10 + 10) = 0.65.
    assert_eq!(value(8, 10), 6_500);
    assert_eq!(value(0, 10), 2_500);
    assert_eq!(value(90, 90), 9_500);
}

#[test]
fn responsiveness_is_the_smoothed_share_answered_within_the_sla() {
    let activity = with_stats(
        1,
        LenderStats {
            sla_met: 20,
            sla_due: 30,
            ..LenderStats::default()
        },
    );
    // (20 + 5) / (30 + 10) = 0.625.
    let o = evaluate_with(&need(), &enterprise(), product(1, 1), &activity, &[]);
    assert_eq!(value_of(Factor::Responsiveness, &o), 6_250);
    assert_eq!(
        value_of(
            Factor::Responsiveness,
            &evaluate_one(&need(), &enterprise(), product(1, 1))
        ),
        5_000
    );
}

#[test]
fn capacity_headroom_is_the_share_of_todays_capacity_left() {
    let o = evaluate_with(&need(), &enterprise(), product(1, 1), &used(1, 5), &[]);
    assert_eq!(value_of(Factor::CapacityHeadroom, &o), 7_500);
    assert_eq!(
        value_of(
            Factor::CapacityHeadroom,
            &evaluate_one(&need(), &enterprise(), product(1, 1))
        ),
        10_000
    );
}

#[test]
fn policy_priority_favours_a_gated_product_for_a_designated_enterprise() {
    let gated = MatchProduct {
        required_designations: vec![list("NATIONAL_KEY_SUPPLY")],
        ..product(1, 1)
    };
    assert_eq!(
        value_of(
            Factor::PolicyPriority,
            &evaluate_one(&need(), &enterprise(), gated)
        ),
        10_000
    );
    assert_eq!(
        value_of(
            Factor::PolicyPriority,
            &evaluate_one(&need(), &enterprise(), product(1, 1))
        ),
        0
    );
}

#[test]
fn locality_rewards_the_nearest_lender_region() {
    let with_regions = |codes: &[&str]| {
        let p = MatchProduct {
            lender_region_codes: codes.iter().map(|c| region(c)).collect(),
            region_prefixes: vec![RegionPrefix::parse("42").unwrap()],
            ..product(1, 1)
        };
        value_of(Factor::Locality, &evaluate_one(&need(), &enterprise(), p))
    };
    assert_eq!(with_regions(&["421303"]), 10_000);
    assert_eq!(with_regions(&["421300"]), 6_000);
    assert_eq!(with_regions(&["420000"]), 3_000);
    assert_eq!(with_regions(&["110000"]), 0);
    assert_eq!(with_regions(&["110000", "421300", "420000"]), 6_000);
}

#[test]
fn score_is_the_sum_of_weighted_points() {
    // rate 10000 × 25% = 250, amount fit 10000 × 15% = 150, approval 5000 ×
    // 20% = 100, responsiveness 5000 × 15% = 75, headroom 10000 × 10% = 100,
    // priority 0, locality 10000 × 5% = 50: 725.
    let p = MatchProduct {
        rate: rates(300, 300),
        amount: amounts(300_000_000, 300_000_000),
        lender_region_codes: vec![region("421303")],
        ..product(1, 1)
    };
    let catalog = ProductCatalog::new(vec![p]);
    let policy = RoutingPolicy::default();
    let activity = Activity::default();
    let need = need();
    let enterprise = enterprise();
    let candidates = evaluate(&need, &enterprise, &catalog, &activity, &[], &policy);
    let c = &candidates[0];
    let points: Vec<_> = c
        .factors()
        .map(|f| (f.factor.as_str(), f.value_bps, f.weight_bps, f.points))
        .collect();
    assert_eq!(
        points,
        [
            ("rate", 10_000, 2_500, 250),
            ("amount_fit", 10_000, 1_500, 150),
            ("approval_history", 5_000, 2_000, 100),
            ("responsiveness", 5_000, 1_500, 75),
            ("capacity_headroom", 10_000, 1_000, 100),
            ("policy_priority", 0, 1_000, 0),
            ("locality", 10_000, 500, 50),
        ]
    );
    assert_eq!(c.score(), 725);
}

// ------------------------------------------------------------------- ranking

#[test]
fn ranking_puts_eligible_by_score_then_ineligible_by_fewest_reasons() {
    let cheap = MatchProduct {
        rate: rates(300, 300),
        ..product(10, 1)
    };
    let dear = MatchProduct {
        rate: rates(450, 500),
        ..product(11, 2)
    };
    let two_reasons = MatchProduct {
        product_active: false,
        lender_active: false,
        ..product(12, 3)
    };
    let one_reason = MatchProduct {
        product_active: false,
        ..product(13, 4)
    };
    let catalog = ProductCatalog::new(vec![two_reasons, dear, one_reason, cheap]);
    let policy = RoutingPolicy::default();
    let (n, e, activity) = (need(), enterprise(), Activity::default());
    let ranked: Vec<_> = evaluate(&n, &e, &catalog, &activity, &[], &policy)
        .iter()
        .map(|c| c.product_id())
        .collect();
    assert_eq!(ranked, [id(10), id(11), id(13), id(12)]);
}

#[test]
fn equal_scores_go_to_the_lender_with_fewest_referrals_today_then_lowest_id() {
    let catalog = ProductCatalog::new(vec![product(3, 1), product(2, 2), product(1, 3)]);
    let lender_stats = HashMap::from([
        (
            lender_id(1),
            LenderStats {
                referrals_today: 4,
                ..LenderStats::default()
            },
        ),
        (
            lender_id(2),
            LenderStats {
                referrals_today: 4,
                ..LenderStats::default()
            },
        ),
        (
            lender_id(3),
            LenderStats {
                referrals_today: 9,
                ..LenderStats::default()
            },
        ),
    ]);
    let activity = Activity {
        lender_stats,
        ..Activity::default()
    };
    let policy = RoutingPolicy::default();
    let (n, e) = (need(), enterprise());
    let candidates = evaluate(&n, &e, &catalog, &activity, &[], &policy);
    assert!(
        candidates
            .iter()
            .all(|c| c.score() == candidates[0].score())
    );
    let ranked: Vec<_> = candidates.iter().map(|c| c.product_id()).collect();
    assert_eq!(ranked, [id(2), id(3), id(1)]);
    assert_eq!(candidates[0].lender_referrals_today(), 4);
}

#[test]
fn select_routes_takes_the_best_of_distinct_lenders() {
    // Lender 1 has the two best products; only its best is taken.
    let best = MatchProduct {
        rate: rates(300, 300),
        ..product(1, 1)
    };
    let second = MatchProduct {
        rate: rates(310, 310),
        ..product(2, 1)
    };
    let catalog = ProductCatalog::new(vec![
        product(3, 2),
        second,
        best,
        product(4, 3),
        product(5, 4),
    ]);
    let policy = RoutingPolicy::default();
    let (n, e, activity) = (need(), enterprise(), Activity::default());
    let candidates = evaluate(&n, &e, &catalog, &activity, &[], &policy);
    let routes: Vec<_> = select_routes(&candidates, 3)
        .iter()
        .map(|c| c.product_id())
        .collect();
    assert_eq!(routes, [id(1), id(3), id(4)]);
    assert_eq!(select_routes(&candidates, 0).len(), 0);
    assert_eq!(select_routes(&candidates, 10).len(), 4);
}

#[test]
fn select_routes_never_takes_an_ineligible_product() {
    let catalog = ProductCatalog::new(vec![
        MatchProduct {
            product_active: false,
            ..product(1, 1)
        },
        product(2, 2),
    ]);
    let policy = RoutingPolicy::default();
    let (n, e, activity) = (need(), enterprise(), Activity::default());
    let candidates = evaluate(&n, &e, &catalog, &activity, &[], &policy);
    let routes: Vec<_> = select_routes(&candidates, 3)
        .iter()
        .map(|c| c.product_id())
        .collect();
    assert_eq!(routes, [id(2)]);
}

// -------------------------------------------------------------- explanations

#[test]
fn reasons_carry_the_figures() {
    let p = MatchProduct {
        amount: amounts(10_000_000, 200_000_000),
        min_size: EnterpriseSize::Medium,
        required_designations: vec![list("PROVINCIAL_KEY"), list("LOCAL_KEY")],
        ..product(1, 1)
    };
    let catalog = ProductCatalog::new(vec![p]);
    let policy = RoutingPolicy::default();
    let (n, e, activity) = (need(), enterprise(), used(1, 20));
    let candidates = evaluate(&n, &e, &catalog, &activity, &[], &policy);
    let c = &candidates[0];
    let messages: Vec<_> = c
        .reasons()
        .map(|r| (r.as_str(), c.reason_message(r)))
        .collect();
    assert_eq!(
        messages,
        [
            (
                "AMOUNT_OUT_OF_RANGE",
                "amount ¥3,000,000.00 is outside the product's range ¥100,000.00 to ¥2,000,000.00".to_owned()
            ),
            (
                "SIZE_BELOW_MINIMUM",
                "enterprise size ENTERPRISE_SIZE_SMALL is below the product's minimum ENTERPRISE_SIZE_MEDIUM".to_owned()
            ),
            (
                "DESIGNATION_MISSING",
                "the product requires one of PROVINCIAL_KEY, LOCAL_KEY; the enterprise holds NATIONAL_KEY_SUPPLY"
                    .to_owned()
            ),
            (
                "CAPACITY_EXHAUSTED",
                "daily capacity used up (20 of 20 referrals today)".to_owned()
            ),
        ]
    );
    assert_eq!(
        IneligibleReason::CapacityExhausted.describe(),
        "the product's daily capacity is used up"
    );
}

#[test]
fn factor_notes_explain_the_values() {
    let p = MatchProduct {
        required_designations: vec![list("NATIONAL_KEY_SUPPLY")],
        ..product(1, 1)
    };
    let catalog = ProductCatalog::new(vec![p]);
    let policy = RoutingPolicy::default();
    let activity = Activity {
        product_referrals_today: HashMap::from([(id(1), 5)]),
        ..with_stats(
            1,
            LenderStats {
                approvals: 12,
                decisions: 20,
                sla_met: 18,
                sla_due: 20,
                referrals_today: 7,
            },
        )
    };
    let capped = MatchNeed {
        max_rate: Some(Bps::new(400).unwrap()),
        ..need()
    };
    let e = enterprise();
    let candidates = evaluate(&capped, &e, &catalog, &activity, &[], &policy);
    let c = &candidates[0];
    assert_eq!(
        c.factor_note(Factor::Rate),
        "expected rate 3.57% from the product's 3.15% to 4.35% capped at the need's 4.00%; 3.00% or less scores full, 15.00% or more zero"
    );
    assert_eq!(
        c.factor_note(Factor::ApprovalHistory),
        "12 approvals in 20 decisions, blended with 10 neutral decisions at 50%"
    );
    assert_eq!(
        c.factor_note(Factor::Responsiveness),
        "18 of 20 referrals answered within the SLA, blended with 10 neutral at 50%"
    );
    assert_eq!(
        c.factor_note(Factor::CapacityHeadroom),
        "5 of 20 daily referrals used"
    );
    assert_eq!(
        c.factor_note(Factor::PolicyPriority),
        "designation-gated product; the enterprise holds NATIONAL_KEY_SUPPLY"
    );
    assert_eq!(
        c.factor_note(Factor::Locality),
        "nearest lender region 421300 is in the enterprise's prefecture (enterprise 421303)"
    );
    assert!(
        c.factor_note(Factor::AmountFit)
            .starts_with("amount ¥3,000,000.00 in the product's range")
    );
}

// ---------------------------------------------------------------- properties

/// splitmix64: a small deterministic generator, so a world is a function of
/// a few proptest-chosen seeds (and shrinks by them).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

const REGIONS: [&str; 5] = ["421303", "421381", "420100", "110101", "420000"];
const PREFIXES: [&str; 5] = ["42", "4213", "421303", "4201", "11"];
const INDUSTRIES: [&str; 4] = ["C2720", "C1310", "F5110", "A0111"];
const INDUSTRY_PREFIXES: [&str; 5] = ["C", "C27", "C2720", "F51", "A"];
const LISTS: [&str; 3] = ["NATIONAL_KEY_SUPPLY", "PROVINCIAL_KEY", "LOCAL_KEY"];

fn random_collateral(g: &mut Gen) -> CollateralSet {
    let set: CollateralSet = Collateral::ALL
        .iter()
        .copied()
        .filter(|_| g.chance(30))
        .collect();
    if set.is_empty() {
        collateral(&[g.pick(Collateral::ALL)])
    } else {
        set
    }
}

struct World {
    need: MatchNeed,
    enterprise: MatchEnterprise,
    products: Vec<MatchProduct>,
    catalog: ProductCatalog,
    activity: Activity,
    tried: Vec<Uuid>,
    policy: RoutingPolicy,
}

fn world(seed: u64, product_count: usize, lender_count: u64) -> World {
    let mut g = Gen(seed);
    let need = MatchNeed {
        amount: AmountMinor::new(g.range(100_000, 2_000_000_000)).unwrap(),
        term: TermMonths::new(g.range(1, 60) as i32).unwrap(),
        collateral: random_collateral(&mut g),
        max_rate: g
            .chance(70)
            .then(|| Bps::new(g.range(300, 1_200) as i32).unwrap()),
        consent_to_share: g.chance(90),
    };
    let enterprise = MatchEnterprise {
        region_code: region(g.pick(&REGIONS)),
        industry_code: IndustryCode::parse(g.pick(&INDUSTRIES)).unwrap(),
        size: g.pick(EnterpriseSize::ALL),
        designations: LISTS
            .iter()
            .filter(|_| g.chance(30))
            .map(|l| list(l))
            .collect(),
    };
    // Lender data is a function of the lender, as it is when built from rows.
    let lenders: Vec<(Uuid, bool, Vec<RegionCode>)> = (0..lender_count)
        .map(|l| {
            let mut lg = Gen(seed ^ (l + 1).wrapping_mul(0x51_7CC1_B727_220A));
            let codes = (0..lg.range(1, 2))
                .map(|_| region(lg.pick(&REGIONS)))
                .collect();
            (
                Uuid::from_u128(u128::from(lg.next()) << 64 | u128::from(l)),
                lg.chance(90),
                codes,
            )
        })
        .collect();
    let mut product_referrals_today = HashMap::new();
    let products: Vec<MatchProduct> = (0..product_count)
        .map(|i| {
            let (lender, lender_active, codes) = lenders[g.below(lender_count) as usize].clone();
            let amount_lo = g.range(1_000_000, 500_000_000);
            let term_lo = g.range(1, 24) as i32;
            let rate_lo = g.range(250, 1_300) as i32;
            let capacity = g.range(1, 30) as i32;
            let product_id = Uuid::from_u128(u128::from(g.next()) << 32 | i as u128);
            if g.chance(70) {
                product_referrals_today.insert(product_id, g.range(0, i64::from(capacity)) as u32);
            }
            MatchProduct {
                product_id,
                lender_id: lender,
                product_active: g.chance(90),
                lender_active,
                lender_region_codes: codes,
                amount: amounts(amount_lo, amount_lo + g.range(0, 3_000_000_000)),
                term: terms(term_lo, term_lo + g.range(0, 48) as i32),
                rate: rates(rate_lo, rate_lo + g.range(0, 600) as i32),
                industry_prefixes: (0..g.below(3))
                    .map(|_| IndustryPrefix::parse(g.pick(&INDUSTRY_PREFIXES)).unwrap())
                    .collect(),
                region_prefixes: (0..g.below(3))
                    .map(|_| RegionPrefix::parse(g.pick(&PREFIXES)).unwrap())
                    .collect(),
                collateral_accepted: random_collateral(&mut g),
                min_size: g.pick(EnterpriseSize::ALL),
                required_designations: if g.chance(20) {
                    vec![list(g.pick(&LISTS))]
                } else {
                    vec![]
                },
                daily_capacity: DailyCapacity::new(capacity).unwrap(),
            }
        })
        .collect();
    let mut lender_stats = HashMap::new();
    for (id, _, _) in &lenders {
        if g.chance(80) {
            let decisions = g.range(0, 200) as u32;
            let due = g.range(0, 200) as u32;
            let s = LenderStats {
                approvals: g.range(0, i64::from(decisions)) as u32,
                decisions,
                sla_met: g.range(0, i64::from(due)) as u32,
                sla_due: due,
                referrals_today: g.range(0, 50) as u32,
            };
            lender_stats.insert(*id, s);
        }
    }
    let tried = lenders
        .iter()
        .filter(|_| g.chance(15))
        .map(|(id, _, _)| *id)
        .collect();
    // Random weights that sum to 10,000.
    let raw: Vec<i64> = (0..Factor::COUNT).map(|_| g.range(0, 100)).collect();
    let total = raw.iter().sum::<i64>().max(1);
    let mut w: Vec<i32> = raw.iter().map(|r| (r * 10_000 / total) as i32).collect();
    w[0] += 10_000 - w.iter().sum::<i32>();
    let top_k = g.range(1, 4) as usize;
    let policy = RoutingPolicy {
        weights: FactorWeights {
            rate_bps: w[0],
            amount_fit_bps: w[1],
            approval_history_bps: w[2],
            responsiveness_bps: w[3],
            capacity_headroom_bps: w[4],
            policy_priority_bps: w[5],
            locality_bps: w[6],
        },
        top_k,
        max_lenders_per_need: top_k + g.below(4) as usize,
        ..RoutingPolicy::default()
    };
    assert_eq!(policy.validate(), Ok(()));
    World {
        need,
        enterprise,
        catalog: ProductCatalog::new(products.clone()),
        products,
        activity: Activity {
            lender_stats,
            product_referrals_today,
        },
        tried,
        policy,
    }
}

fn evaluate_world(w: &World) -> Vec<Candidate<'_>> {
    evaluate(
        &w.need,
        &w.enterprise,
        &w.catalog,
        &w.activity,
        &w.tried,
        &w.policy,
    )
}

proptest! {
    #[test]
    fn scores_stay_in_range_and_equal_their_points(seed in any::<u64>(), n in 0usize..60, lenders in 1u64..8) {
        let w = world(seed, n, lenders);
        let candidates = evaluate_world(&w);
        prop_assert_eq!(candidates.len(), n);
        for c in &candidates {
            prop_assert!((0..=1000).contains(&c.score()), "score {}", c.score());
            let factors: Vec<_> = c.factors().collect();
            if c.eligible() {
                prop_assert_eq!(factors.len(), Factor::COUNT);
                prop_assert!(factors.iter().all(|f| (0..=10_000).contains(&f.value_bps)));
                prop_assert_eq!(c.score(), factors.iter().map(|f| f.points).sum::<i32>());
            } else {
                prop_assert_eq!(c.score(), 0);
                prop_assert!(factors.is_empty());
                prop_assert!(c.reasons().all(|r| !c.reason_message(r).is_empty()));
            }
        }
    }

    #[test]
    fn ranking_is_ordered(seed in any::<u64>(), n in 0usize..60, lenders in 1u64..8) {
        let w = world(seed, n, lenders);
        let candidates = evaluate_world(&w);
        for pair in candidates.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            prop_assert!(a.eligible() || !b.eligible(), "an eligible product follows an ineligible one");
            if a.eligible() && b.eligible() {
                prop_assert!(a.score() >= b.score());
                if a.score() == b.score() {
                    prop_assert!(a.lender_referrals_today() <= b.lender_referrals_today());
                }
            }
        }
    }

    #[test]
    fn an_ineligible_product_is_never_selected(seed in any::<u64>(), n in 0usize..60, lenders in 1u64..8) {
        let w = world(seed, n, lenders);
        let candidates = evaluate_world(&w);
        for c in select_routes(&candidates, w.policy.top_k) {
            prop_assert!(c.eligible());
            prop_assert_eq!(c.reasons().count(), 0);
            prop_assert!(!w.tried.contains(&c.lender_id()));
            prop_assert!(w.need.consent_to_share);
        }
    }

    #[test]
    fn at_most_one_product_per_lender_is_selected(seed in any::<u64>(), n in 0usize..60, lenders in 1u64..8) {
        let w = world(seed, n, lenders);
        let candidates = evaluate_world(&w);
        let routes = select_routes(&candidates, w.policy.top_k);
        let mut ids: Vec<_> = routes.iter().map(|c| c.lender_id()).collect();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), routes.len());
        // As many as there are lenders with an eligible product, up to k.
        let mut eligible_lenders: Vec<_> = candidates.iter().filter(|c| c.eligible()).map(|c| c.lender_id()).collect();
        eligible_lenders.sort();
        eligible_lenders.dedup();
        prop_assert_eq!(routes.len(), eligible_lenders.len().min(w.policy.top_k));
        // Each route is its lender's best candidate.
        for r in &routes {
            let best = candidates.iter().find(|c| c.lender_id() == r.lender_id()).unwrap();
            prop_assert_eq!(best.product_id(), r.product_id());
        }
    }

    #[test]
    fn the_result_is_deterministic_and_independent_of_input_order(
        seed in any::<u64>(),
        n in 0usize..60,
        lenders in 1u64..8,
        rotate in 0usize..60,
    ) {
        let w = world(seed, n, lenders);
        let first: Vec<Outcome> = evaluate_world(&w).iter().map(outcome).collect();
        let again: Vec<Outcome> = evaluate_world(&w).iter().map(outcome).collect();
        prop_assert_eq!(&first, &again);
        let mut products = w.products.clone();
        products.reverse();
        if n > 0 {
            products.rotate_left(rotate % n);
        }
        let shuffled = World { catalog: ProductCatalog::new(products), ..world(seed, n, lenders) };
        let reordered: Vec<Outcome> = evaluate_world(&shuffled).iter().map(outcome).collect();
        prop_assert_eq!(&first, &reordered);
    }

    #[test]
    fn equal_lenders_get_equal_shares_of_equal_needs(
        lenders in 2usize..9,
        k in 1usize..4,
        needs in 1usize..80,
        id_seed in any::<u64>(),
    ) {
        let k = k.min(lenders);
        let mut g = Gen(id_seed);
        let products: Vec<MatchProduct> = (0..lenders)
            .map(|i| MatchProduct {
                product_id: Uuid::from_u128(u128::from(g.next()) << 8 | i as u128),
                lender_id: Uuid::from_u128(u128::from(g.next()) << 8 | i as u128),
                daily_capacity: DailyCapacity::new(1_000).unwrap(),
                ..product(0, 0)
            })
            .collect();
        let catalog = ProductCatalog::new(products.clone());
        let mut activity = Activity::default();
        let policy = RoutingPolicy::default();
        let (n, e) = (need(), enterprise());
        let mut shares: HashMap<Uuid, usize> = HashMap::new();
        for _ in 0..needs {
            let chosen: Vec<Uuid> = {
                let candidates = evaluate(&n, &e, &catalog, &activity, &[], &policy);
                select_routes(&candidates, k).iter().map(|c| c.lender_id()).collect()
            };
            prop_assert_eq!(chosen.len(), k);
            for lender in chosen {
                *shares.entry(lender).or_default() += 1;
                activity.lender_stats.entry(lender).or_default().referrals_today += 1;
                for p in products.iter().filter(|p| p.lender_id == lender) {
                    *activity.product_referrals_today.entry(p.product_id).or_default() += 1;
                }
            }
        }
        let counts: Vec<usize> = products.iter().map(|p| shares.get(&p.lender_id).copied().unwrap_or(0)).collect();
        let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        prop_assert!(max - min <= 1, "shares {:?}", counts);
        prop_assert_eq!(counts.iter().sum::<usize>(), needs * k);
    }
}
