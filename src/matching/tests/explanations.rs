//! The sentences that explain a score or a refusal.

use super::*;

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
