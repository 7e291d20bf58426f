//! Score factors: one test per factor.

use super::*;

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
