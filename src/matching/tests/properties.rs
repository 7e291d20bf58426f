//! Properties over random worlds (proptest).

use super::*;

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
