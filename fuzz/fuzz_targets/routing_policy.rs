//! The routing policy file (`--routing-policy`, JSON): whatever the file holds, parsing never
//! panics; a policy it accepts passes validation, and the matching engine scores and routes
//! with it without overflow and within its bounds.

#![no_main]

use std::sync::LazyLock;

use finmatch::config::parse_routing_policy;
use finmatch::domain::{
    AmountMinor, Bounds, Bps, Collateral, DailyCapacity, EnterpriseSize, IndustryCode, ListCode,
    RegionCode, TermMonths,
};
use finmatch::matching::{
    Activity, LenderStats, MatchEnterprise, MatchNeed, MatchProduct, ProductCatalog, evaluate,
    select_routes,
};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

/// Yuan in fen.
const YUAN: i64 = 100;

/// Lenders with no record, a perfect one and one at the counters' limits.
const LENDERS: [u128; 3] = [1, 2, 3];

struct Market {
    catalog: ProductCatalog,
    activity: Activity,
    need: MatchNeed,
    enterprise: MatchEnterprise,
}

fn product(n: u128, lender: u128, min: i64, max: i64, rate: (i32, i32)) -> MatchProduct {
    MatchProduct {
        product_id: Uuid::from_u128(100 + n),
        lender_id: Uuid::from_u128(lender),
        product_active: true,
        lender_active: true,
        lender_region_codes: vec![RegionCode::parse("420100").unwrap()],
        amount: Bounds::new(
            AmountMinor::new(min).unwrap(),
            AmountMinor::new(max).unwrap(),
        )
        .unwrap(),
        term: Bounds::new(TermMonths::new(1).unwrap(), TermMonths::new(600).unwrap()).unwrap(),
        rate: Bounds::new(Bps::new(rate.0).unwrap(), Bps::new(rate.1).unwrap()).unwrap(),
        industry_prefixes: Vec::new(),
        region_prefixes: Vec::new(),
        collateral_accepted: [Collateral::Credit].into_iter().collect(),
        min_size: EnterpriseSize::Micro,
        required_designations: if n == 3 {
            vec![ListCode::parse("PBOC_2020_EPIDEMIC").unwrap()]
        } else {
            Vec::new()
        },
        daily_capacity: DailyCapacity::new(1).unwrap(),
    }
}

/// A need every product fits, at the edges of their ranges, over lenders whose records span
/// the counters' whole range.
static MARKET: LazyLock<Market> = LazyLock::new(|| {
    let catalog = ProductCatalog::new(vec![
        product(0, LENDERS[0], 1, 1_000_000_000_000_000, (0, 10_000)),
        product(
            1,
            LENDERS[1],
            5_000_000 * YUAN,
            5_000_000 * YUAN,
            (300, 300),
        ),
        product(2, LENDERS[2], 1, 5_000_000 * YUAN, (10_000, 10_000)),
        product(3, LENDERS[2], 1_000 * YUAN, 9_000_000 * YUAN, (0, 0)),
    ]);
    let mut activity = Activity::default();
    activity.lender_stats.insert(
        Uuid::from_u128(LENDERS[1]),
        LenderStats {
            approvals: 10,
            decisions: 10,
            sla_met: 10,
            sla_due: 10,
            referrals_today: 0,
        },
    );
    activity.lender_stats.insert(
        Uuid::from_u128(LENDERS[2]),
        LenderStats {
            approvals: u32::MAX,
            decisions: u32::MAX,
            sla_met: u32::MAX,
            sla_due: u32::MAX,
            referrals_today: u32::MAX,
        },
    );
    activity
        .product_referrals_today
        .insert(Uuid::from_u128(100), u32::MAX);
    Market {
        catalog,
        activity,
        need: MatchNeed {
            amount: AmountMinor::new(5_000_000 * YUAN).unwrap(),
            term: TermMonths::new(12).unwrap(),
            collateral: [Collateral::Credit].into_iter().collect(),
            max_rate: None,
            consent_to_share: true,
        },
        enterprise: MatchEnterprise {
            region_code: RegionCode::parse("420102").unwrap(),
            industry_code: IndustryCode::parse("C2710").unwrap(),
            size: EnterpriseSize::Small,
            designations: vec![ListCode::parse("PBOC_2020_EPIDEMIC").unwrap()],
        },
    }
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = parse_routing_policy(text) else {
        return;
    };
    assert!(
        policy.validate().is_ok(),
        "accepted an invalid policy: {policy:?}"
    );

    let m = &*MARKET;
    let ranked = evaluate(
        &m.need,
        &m.enterprise,
        &m.catalog,
        &m.activity,
        &[],
        &policy,
    );
    assert_eq!(ranked.len(), 4);
    let mut previous: Option<(bool, i32)> = None;
    for candidate in &ranked {
        let points: i32 = candidate.factors().map(|f| f.points).sum();
        if candidate.eligible() {
            assert_eq!(
                points,
                candidate.score(),
                "factors do not add up to the score"
            );
            assert!(
                (0..=1_000).contains(&candidate.score()),
                "{}",
                candidate.score()
            );
        }
        for factor in candidate.factors() {
            assert!((0..=10_000).contains(&factor.value_bps), "{factor:?}");
            assert!(factor.points >= 0, "{factor:?}");
        }
        let key = (candidate.eligible(), candidate.score());
        if let Some((eligible, score)) = previous {
            assert!(
                eligible || !key.0,
                "an ineligible product ranked above an eligible one"
            );
            assert!(
                !(eligible && key.0) || score >= key.1,
                "ranking out of score order"
            );
        }
        previous = Some(key);
    }
    let routes = select_routes(&ranked, policy.top_k);
    assert!(routes.len() <= policy.top_k);
    for (i, route) in routes.iter().enumerate() {
        assert!(route.eligible());
        assert!(
            routes[..i]
                .iter()
                .all(|r| r.lender_id() != route.lender_id())
        );
    }
    assert!(policy.remaining_attempts(routes.len()) <= policy.max_lenders_per_need);
});
