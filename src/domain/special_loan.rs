//! Interest-subsidy arithmetic of special-loan programs, in integers.
//!
//! Inputs are domain types, so every result is defined: with amounts at most
//! [`MAX_MINOR`](super::MAX_MINOR), rates and ratios at most 10,000 bps and
//! terms at most 600 months, the numerator stays below 10^27 (`i128` holds
//! 1.7 × 10^38) and a subsidy below 5 × 10^16 (`i64` holds 9.2 × 10^18).

use super::{AmountMinor, Bps, TermMonths};

const BPS: i128 = 10_000;

/// How long a reservation holds quota when the program does not say, in hours.
pub const DEFAULT_RESERVATION_HOURS: i32 = 72;
/// The longest reservation a program may set: a year, in hours.
pub const MAX_RESERVATION_HOURS: i32 = 8_760;

/// `numerator / denominator` rounded half-up, for non-negative operands.
fn div_round_half_up(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(numerator >= 0 && denominator > 0);
    (2 * numerator + denominator) / (2 * denominator)
}

/// The interest the treasury pays: principal × rate × subsidy ratio ×
/// term_months / 12, rounded half-up to the minor unit.
///
/// ¥10,000,000 at 315 bps with a 50% subsidy for 12 months:
/// ```
/// use finmatch::domain::{special_loan::subsidy_minor, AmountMinor, Bps, TermMonths};
/// let s = subsidy_minor(
///     AmountMinor::new(1_000_000_000).unwrap(),
///     Bps::new(315).unwrap(),
///     Bps::new(5_000).unwrap(),
///     TermMonths::new(12).unwrap(),
/// );
/// assert_eq!(s, 15_750_000); // ¥157,500.00
/// ```
pub fn subsidy_minor(
    principal: AmountMinor,
    rate: Bps,
    subsidy_ratio: Bps,
    term: TermMonths,
) -> i64 {
    let numerator = i128::from(principal.get())
        * i128::from(rate.get())
        * i128::from(subsidy_ratio.get())
        * i128::from(term.get());
    let subsidy = div_round_half_up(numerator, BPS * BPS * 12);
    i64::try_from(subsidy).expect("bounded inputs keep the subsidy inside i64")
}

/// The rate the enterprise pays after the subsidy: rate × (10,000 − ratio)
/// / 10,000, rounded half-up to a whole basis point (315 bps at 50% → 158).
pub fn effective_rate_bps(rate: Bps, subsidy_ratio: Bps) -> Bps {
    let effective = div_round_half_up(
        i128::from(rate.get()) * (BPS - i128::from(subsidy_ratio.get())),
        BPS,
    );
    Bps::new(effective as i32).expect("a share of a rate is a rate")
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_bigint::BigInt;
    use proptest::prelude::*;

    fn amount(v: i64) -> AmountMinor {
        AmountMinor::new(v).unwrap()
    }
    fn bps(v: i32) -> Bps {
        Bps::new(v).unwrap()
    }
    fn term(v: i32) -> TermMonths {
        TermMonths::new(v).unwrap()
    }

    #[test]
    fn pboc_2020_worked_example() {
        // ¥10,000,000 at the 315 bps cap (LPR 415 − 100), half subsidised, one year.
        assert_eq!(
            subsidy_minor(amount(1_000_000_000), bps(315), bps(5_000), term(12)),
            15_750_000
        );
        assert_eq!(effective_rate_bps(bps(315), bps(5_000)).get(), 158);
    }

    #[test]
    fn partial_years_prorate_by_month() {
        // ¥1,000,000 at 315 bps, 50%, 6 months: 1e8 × 0.0315 × 0.5 / 2 = 787,500 fen.
        assert_eq!(
            subsidy_minor(amount(100_000_000), bps(315), bps(5_000), term(6)),
            787_500
        );
        // Two years doubles one year.
        assert_eq!(
            subsidy_minor(amount(100_000_000), bps(315), bps(5_000), term(24)),
            3_150_000
        );
    }

    #[test]
    fn rounds_half_up_to_the_fen() {
        // 1 fen × 10,000 bps × 10,000 bps × 6 / (10^8 × 12) = 0.5 → 1.
        assert_eq!(
            subsidy_minor(amount(1), bps(10_000), bps(10_000), term(6)),
            1
        );
        // 0.4999… → 0: 1 fen × 9,999 bps × 10,000 × 6 / 1.2e9 = 0.49995.
        assert_eq!(
            subsidy_minor(amount(1), bps(9_999), bps(10_000), term(6)),
            0
        );
        // 333 fen × 100 bps × 5,000 × 12 / 1.2e9 = 1.665 → 2.
        assert_eq!(
            subsidy_minor(amount(333), bps(100), bps(5_000), term(12)),
            2
        );
        // 7 bps at 50% = 3.5 → 4; at 70% = 2.1 → 2.
        assert_eq!(effective_rate_bps(bps(7), bps(5_000)).get(), 4);
        assert_eq!(effective_rate_bps(bps(7), bps(7_000)).get(), 2);
    }

    #[test]
    fn no_subsidy_or_no_rate_gives_zero() {
        assert_eq!(
            subsidy_minor(amount(1_000_000_000), bps(315), bps(0), term(12)),
            0
        );
        assert_eq!(
            subsidy_minor(amount(1_000_000_000), bps(0), bps(5_000), term(12)),
            0
        );
        assert_eq!(effective_rate_bps(bps(315), bps(0)).get(), 315);
        assert_eq!(effective_rate_bps(bps(315), bps(10_000)).get(), 0);
    }

    #[test]
    fn extreme_inputs_stay_in_range() {
        let max = subsidy_minor(
            amount(AmountMinor::MAX),
            bps(10_000),
            bps(10_000),
            term(600),
        );
        assert_eq!(max, AmountMinor::MAX * 50);
    }

    fn reference_subsidy(p: i64, r: i32, s: i32, t: i32) -> BigInt {
        let num = BigInt::from(p) * BigInt::from(r) * BigInt::from(s) * BigInt::from(t);
        let den = BigInt::from(10_000) * BigInt::from(10_000) * BigInt::from(12);
        // Half-up for non-negative values: floor((2n + d) / 2d).
        (num * 2 + &den) / (den * 2)
    }

    proptest! {
        #[test]
        fn subsidy_matches_a_big_integer_reference(
            p in 1i64..=AmountMinor::MAX,
            r in 0i32..=10_000,
            s in 0i32..=10_000,
            t in 1i32..=600,
        ) {
            let got = subsidy_minor(amount(p), bps(r), bps(s), term(t));
            prop_assert_eq!(BigInt::from(got), reference_subsidy(p, r, s, t));
        }

        #[test]
        fn subsidy_is_within_half_a_fen_of_the_exact_value(
            p in 1i64..=10_000_000_000,
            r in 0i32..=2_000,
            s in 0i32..=10_000,
            t in 1i32..=60,
        ) {
            // |got × D − N| ≤ D / 2, i.e. rounding error at most half a fen.
            let got = BigInt::from(subsidy_minor(amount(p), bps(r), bps(s), term(t)));
            let num = BigInt::from(p) * r * s * t;
            let den = BigInt::from(1_200_000_000i64);
            let diff = got * &den - num;
            prop_assert!(diff.clone() * 2 <= den.clone() && diff * -2 < den);
        }

        #[test]
        fn effective_rate_matches_a_big_integer_reference(r in 0i32..=10_000, s in 0i32..=10_000) {
            let got = effective_rate_bps(bps(r), bps(s)).get();
            let num = BigInt::from(r) * (10_000 - s);
            let expected = (num * 2 + 10_000) / 20_000;
            prop_assert_eq!(BigInt::from(got), expected);
            prop_assert!(got <= r);
        }
    }
}
