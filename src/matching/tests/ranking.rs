//! Ranking and route selection.

use super::*;

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
