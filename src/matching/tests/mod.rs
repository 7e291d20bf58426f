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

mod explanations;
mod factors;
mod filters;
mod properties;
mod ranking;

// Fixtures shared by the test modules.

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
