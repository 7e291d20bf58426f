//! One need against 10,000 products (DESIGN §7: ≤ 1 ms on one core).
//!
//! `cargo bench --bench matching -- --warm-up-time 1 --measurement-time 3`

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use finmatch::domain::{
    AmountMinor, Bounds, Bps, Collateral, CollateralSet, DailyCapacity, EnterpriseSize,
    IndustryCode, IndustryPrefix, ListCode, RegionCode, RegionPrefix, TermMonths,
};
use finmatch::matching::{
    Activity, LenderStats, MatchEnterprise, MatchNeed, MatchProduct, ProductCatalog, RoutingPolicy,
    evaluate, select_routes,
};
use uuid::Uuid;

const PRODUCTS: usize = 10_000;
const LENDERS: u64 = 500;

/// splitmix64, so every run benchmarks the same data.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const REGIONS: [&str; 6] = ["420000", "421300", "421303", "420100", "110000", "440300"];
const PREFIXES: [&str; 5] = ["42", "4213", "4201", "44", "11"];
const INDUSTRY_PREFIXES: [&str; 6] = ["C", "C27", "C13", "F", "A", "I65"];
const LISTS: [&str; 3] = ["NATIONAL_KEY_SUPPLY", "PROVINCIAL_KEY", "LOCAL_KEY"];

fn bounds<T: Copy + Ord>(a: T, b: T) -> Bounds<T> {
    Bounds::new(a.min(b), a.max(b)).unwrap()
}

/// 10,000 products of 500 lenders, with a realistic spread of ranges,
/// regions, industries and collateral.
fn products(seed: u64) -> Vec<MatchProduct> {
    let mut g = Gen(seed);
    let lenders: Vec<(Uuid, Vec<RegionCode>)> = (0..LENDERS)
        .map(|_| {
            let codes = (0..g.range(1, 3))
                .map(|_| RegionCode::parse(g.pick(&REGIONS)).unwrap())
                .collect();
            (
                Uuid::from_u128(u128::from(g.next()) << 64 | u128::from(g.next())),
                codes,
            )
        })
        .collect();
    (0..PRODUCTS)
        .map(|i| {
            let (lender_id, codes) = lenders[i / (PRODUCTS / LENDERS as usize)].clone();
            let amount_lo = g.range(1_000_000, 100_000_000);
            let term_lo = g.range(1, 12) as i32;
            let rate_lo = g.range(280, 800) as i32;
            let capacity = g.range(5, 50) as i32;
            let collateral: CollateralSet = Collateral::ALL
                .iter()
                .copied()
                .filter(|_| g.chance(40))
                .collect();
            MatchProduct {
                product_id: Uuid::from_u128(u128::from(g.next()) << 64 | i as u128),
                lender_id,
                product_active: g.chance(95),
                lender_active: true,
                lender_region_codes: codes,
                amount: bounds(
                    AmountMinor::new(amount_lo).unwrap(),
                    AmountMinor::new(amount_lo + g.range(0, 5_000_000_000)).unwrap(),
                ),
                term: bounds(
                    TermMonths::new(term_lo).unwrap(),
                    TermMonths::new(term_lo + g.range(0, 48) as i32).unwrap(),
                ),
                rate: bounds(
                    Bps::new(rate_lo).unwrap(),
                    Bps::new(rate_lo + g.range(0, 400) as i32).unwrap(),
                ),
                industry_prefixes: (0..g.range(0, 2))
                    .map(|_| IndustryPrefix::parse(g.pick(&INDUSTRY_PREFIXES)).unwrap())
                    .collect(),
                region_prefixes: (0..g.range(0, 1))
                    .map(|_| RegionPrefix::parse(g.pick(&PREFIXES)).unwrap())
                    .collect(),
                collateral_accepted: if collateral.is_empty() {
                    [Collateral::Credit].into_iter().collect()
                } else {
                    collateral
                },
                min_size: g.pick(&[
                    EnterpriseSize::Micro,
                    EnterpriseSize::Micro,
                    EnterpriseSize::Small,
                    EnterpriseSize::Medium,
                ]),
                required_designations: if g.chance(10) {
                    vec![ListCode::parse(g.pick(&LISTS)).unwrap()]
                } else {
                    vec![]
                },
                daily_capacity: DailyCapacity::new(capacity).unwrap(),
            }
        })
        .collect()
}

/// This thread's CPU time in ns (Linux), from the first field of
/// `/proc/thread-self/schedstat`.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

fn bench_matching(c: &mut Criterion) {
    let need = MatchNeed {
        amount: AmountMinor::new(300_000_000).unwrap(),
        term: TermMonths::new(12).unwrap(),
        collateral: [Collateral::Credit, Collateral::Guarantee]
            .into_iter()
            .collect(),
        max_rate: Some(Bps::new(600).unwrap()),
        consent_to_share: true,
    };
    let enterprise = MatchEnterprise {
        region_code: RegionCode::parse("421303").unwrap(),
        industry_code: IndustryCode::parse("C2720").unwrap(),
        size: EnterpriseSize::Small,
        designations: vec![ListCode::parse("NATIONAL_KEY_SUPPLY").unwrap()],
    };
    let products = products(20_200_125);
    let mut g = Gen(7);
    let lender_stats: HashMap<Uuid, LenderStats> = products
        .iter()
        .map(|p| {
            let decisions = g.range(0, 300) as u32;
            let due = g.range(0, 300) as u32;
            let stats = LenderStats {
                approvals: g.range(0, i64::from(decisions)) as u32,
                decisions,
                sla_met: g.range(0, i64::from(due)) as u32,
                sla_due: due,
                referrals_today: g.range(0, 40) as u32,
            };
            (p.lender_id, stats)
        })
        .collect();
    // Two thirds of the products have had referrals today.
    let mut product_referrals_today: HashMap<Uuid, u32> = HashMap::new();
    for p in &products {
        if g.chance(67) {
            let count = g.range(0, i64::from(p.daily_capacity.get())) as u32;
            product_referrals_today.insert(p.product_id, count);
        }
    }
    let activity = Activity {
        lender_stats,
        product_referrals_today,
    };
    let tried = vec![products[0].lender_id, products[5_000].lender_id];
    let policy = RoutingPolicy::default();
    let catalog = ProductCatalog::new(products);

    let eligible = evaluate(&need, &enterprise, &catalog, &activity, &tried, &policy)
        .iter()
        .filter(|c| c.eligible())
        .count();
    eprintln!("{PRODUCTS} products of {LENDERS} lenders, {eligible} eligible for the need");

    // Wall time on a shared 2-core machine includes time the thread spent
    // waiting for a core; the thread's own CPU time does not.
    if let Some(start) = thread_cpu_ns() {
        const RUNS: u64 = 2_000;
        for _ in 0..RUNS {
            let candidates = evaluate(&need, &enterprise, &catalog, &activity, &tried, &policy);
            black_box(select_routes(&candidates, policy.top_k).len());
        }
        if let Some(end) = thread_cpu_ns() {
            eprintln!(
                "CPU time per evaluation: {} µs",
                (end - start) / RUNS / 1_000
            );
        }
    }

    c.bench_function("evaluate_and_select_10k_products", |b| {
        b.iter(|| {
            let candidates = evaluate(
                black_box(&need),
                black_box(&enterprise),
                black_box(&catalog),
                &activity,
                &tried,
                &policy,
            );
            let routes = select_routes(&candidates, policy.top_k);
            black_box(routes.len())
        })
    });
}

criterion_group!(benches, bench_matching);
criterion_main!(benches);
