//! Bounded integers: money in minor units, rates in basis points, terms,
//! capacities. Each bound is a business limit stated once, here.

use std::fmt;

use super::DomainError;

macro_rules! bounded_int {
    ($(#[$meta:meta])* $name:ident($repr:ty), $min:expr, $max:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name($repr);

        impl $name {
            pub const MIN: $repr = $min;
            pub const MAX: $repr = $max;

            pub fn new(value: $repr) -> Result<Self, DomainError> {
                if (Self::MIN..=Self::MAX).contains(&value) {
                    Ok(Self(value))
                } else {
                    Err(DomainError::OutOfRange {
                        value: i64::from(value),
                        min: i64::from(Self::MIN),
                        max: i64::from(Self::MAX),
                    })
                }
            }

            pub const fn get(self) -> $repr {
                self.0
            }
        }

        impl TryFrom<$repr> for $name {
            type Error = DomainError;

            fn try_from(value: $repr) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for $repr {
            fn from(value: $name) -> $repr {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

/// The largest amount of money finmatch takes in one field: ¥10 trillion
/// (10^15 fen). It exceeds any single loan, quota or company revenue, and
/// keeps every product of an amount with rates and terms far inside `i128`
/// and every subsidy inside `i64`.
pub const MAX_MINOR: i64 = 1_000_000_000_000_000;

bounded_int!(
    /// A positive amount of money in minor units (fen): loan amounts,
    /// quotas, product limits.
    AmountMinor(i64),
    1,
    MAX_MINOR
);

bounded_int!(
    /// An amount of money in minor units that may be zero, e.g. annual
    /// revenue.
    NonNegativeMinor(i64),
    0,
    MAX_MINOR
);

bounded_int!(
    /// A rate or ratio in basis points, 0 to 10,000 (0%-100%): annual
    /// interest rates (China's loan rates are a few hundred bps) and
    /// subsidy ratios (5,000 = half).
    Bps(i32),
    0,
    10_000
);

bounded_int!(
    /// A loan term in whole months, 1 to 600 (50 years).
    TermMonths(i32),
    1,
    600
);

bounded_int!(
    /// Headcount of an enterprise (0 for a sole proprietor's shell).
    Employees(i32),
    0,
    10_000_000
);

bounded_int!(
    /// Referrals a product takes per calendar day, at least 1.
    DailyCapacity(i32),
    1,
    1_000_000
);

bounded_int!(
    /// Hours a lender has to answer a referral, 1 to 8,760 (a year).
    SlaHours(i32),
    1,
    8_760
);

/// An inclusive range `min..=max` with `min <= max`, e.g. a product's amount,
/// term or rate range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bounds<T> {
    min: T,
    max: T,
}

impl<T: Copy + Ord> Bounds<T> {
    /// `None` when `min > max`.
    pub fn new(min: T, max: T) -> Option<Self> {
        (min <= max).then_some(Self { min, max })
    }

    pub fn min(&self) -> T {
        self.min
    }

    pub fn max(&self) -> T {
        self.max
    }

    #[inline]
    pub fn contains(&self, value: T) -> bool {
        self.min <= value && value <= self.max
    }
}

/// `¥1,234,567.89` from 123456789 fen, for human-readable explanations.
pub fn format_cny(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let yuan = (abs / 100).to_string();
    let mut grouped = String::with_capacity(yuan.len() + yuan.len() / 3);
    for (i, c) in yuan.chars().enumerate() {
        if i > 0 && (yuan.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}¥{grouped}.{:02}", abs % 100)
}

/// `3.15%` from 315 bps.
pub fn format_percent(bps: i32) -> String {
    let sign = if bps < 0 { "-" } else { "" };
    let abs = bps.unsigned_abs();
    format!("{sign}{}.{:02}%", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_must_be_positive_and_at_most_ten_trillion_yuan() {
        assert_eq!(AmountMinor::new(1).unwrap().get(), 1);
        assert_eq!(AmountMinor::new(MAX_MINOR).unwrap().get(), MAX_MINOR);
        assert_eq!(
            AmountMinor::new(0),
            Err(DomainError::OutOfRange {
                value: 0,
                min: 1,
                max: MAX_MINOR
            })
        );
        assert_eq!(
            AmountMinor::new(-5).unwrap_err().to_string(),
            "must be between 1 and 1000000000000000, got -5"
        );
        assert!(AmountMinor::new(MAX_MINOR + 1).is_err());
    }

    #[test]
    fn non_negative_amount_allows_zero_only_as_its_floor() {
        assert_eq!(NonNegativeMinor::new(0).unwrap().get(), 0);
        assert!(NonNegativeMinor::new(-1).is_err());
    }

    #[test]
    fn bps_spans_zero_to_one_hundred_percent() {
        assert_eq!(Bps::new(0).unwrap().get(), 0);
        assert_eq!(Bps::new(10_000).unwrap().get(), 10_000);
        assert!(Bps::new(-1).is_err());
        assert_eq!(
            Bps::new(10_001),
            Err(DomainError::OutOfRange {
                value: 10_001,
                min: 0,
                max: 10_000
            })
        );
    }

    #[test]
    fn term_capacity_and_sla_have_their_bounds() {
        assert!(TermMonths::new(0).is_err());
        assert_eq!(TermMonths::new(600).unwrap().get(), 600);
        assert!(TermMonths::new(601).is_err());
        assert!(DailyCapacity::new(0).is_err());
        assert_eq!(DailyCapacity::try_from(1).unwrap().get(), 1);
        assert!(SlaHours::new(0).is_err());
        assert!(SlaHours::new(8_761).is_err());
        assert!(Employees::new(-1).is_err());
        assert_eq!(i32::from(Employees::new(0).unwrap()), 0);
    }

    #[test]
    fn bounds_require_ordered_ends_and_are_inclusive() {
        assert_eq!(Bounds::new(5, 4), None);
        let b = Bounds::new(4, 6).unwrap();
        assert!(!b.contains(3));
        assert!(b.contains(4));
        assert!(b.contains(6));
        assert!(!b.contains(7));
        assert_eq!((b.min(), b.max()), (4, 6));
        assert!(Bounds::new(7, 7).unwrap().contains(7));
    }

    #[test]
    fn formats_money_and_percentages() {
        assert_eq!(format_cny(1_000_000_000), "¥10,000,000.00");
        assert_eq!(format_cny(15_750_000), "¥157,500.00");
        assert_eq!(format_cny(5), "¥0.05");
        assert_eq!(format_cny(-123_456), "-¥1,234.56");
        assert_eq!(format_cny(99_999), "¥999.99");
        assert_eq!(format_percent(315), "3.15%");
        assert_eq!(format_percent(5), "0.05%");
        assert_eq!(format_percent(10_000), "100.00%");
    }
}
