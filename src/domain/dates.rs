//! Calendar dates and ids as they arrive in requests, and the bureau's calendar.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::DomainError;

/// The bureau's calendar: which business day an instant falls on. Business dates (a need's
/// `needed_by`, a product's daily capacity day, loan dates, designations' validity) are days in
/// the bureau's time zone, not UTC: in Beijing the UTC date changes at 08:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BureauCalendar {
    zone: chrono_tz::Tz,
}

impl BureauCalendar {
    pub fn new(zone: chrono_tz::Tz) -> Self {
        Self { zone }
    }

    pub fn zone(self) -> chrono_tz::Tz {
        self.zone
    }

    /// The business day `at` falls on.
    pub fn day(self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.zone).date_naive()
    }

    /// Today's business day.
    pub fn today(self) -> NaiveDate {
        self.day(Utc::now())
    }
}

impl Default for BureauCalendar {
    /// Asia/Shanghai, the zone of every Chinese bureau.
    fn default() -> Self {
        Self::new(chrono_tz::Asia::Shanghai)
    }
}

const DATE_FORMAT: &str = "a date YYYY-MM-DD";

/// Parses exactly `YYYY-MM-DD` (four-digit year from 0001, two-digit month
/// and day, a real calendar day). Nothing else: no time, no other separators,
/// no single-digit fields.
pub fn parse_date(raw: &str) -> Result<NaiveDate, DomainError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(DomainError::Missing);
    }
    let b = s.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shaped {
        return Err(DomainError::Format {
            expected: DATE_FORMAT,
            found: s.to_owned(),
        });
    }
    let number = |range: std::ops::Range<usize>| s[range].parse::<u32>().expect("digits checked");
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    if year == 0 {
        return Err(DomainError::NoSuchDate {
            found: s.to_owned(),
        });
    }
    NaiveDate::from_ymd_opt(year as i32, month, day).ok_or_else(|| DomainError::NoSuchDate {
        found: s.to_owned(),
    })
}

/// Parses a UUID as sent in a request (hyphenated, simple, braced or URN
/// form, any case).
pub fn parse_uuid(raw: &str) -> Result<Uuid, DomainError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(DomainError::Missing);
    }
    Uuid::try_parse(s).map_err(|_| DomainError::Format {
        expected: "a UUID such as 0190f5e2-6a8b-7c3d-9e4f-123456789abc",
        found: s.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strict_iso_dates() {
        assert_eq!(
            parse_date("2020-01-25"),
            Ok(NaiveDate::from_ymd_opt(2020, 1, 25).unwrap())
        );
        assert_eq!(
            parse_date("2024-02-29"),
            Ok(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap())
        );
        assert_eq!(
            parse_date(" 2020-12-31 "),
            Ok(NaiveDate::from_ymd_opt(2020, 12, 31).unwrap())
        );
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "2020-1-25",
            "2020/01/25",
            "20200125",
            "2020-01-25T00:00:00",
            "+2020-01-25",
            "2020-01-2a",
        ] {
            assert_eq!(
                parse_date(bad),
                Err(DomainError::Format {
                    expected: DATE_FORMAT,
                    found: bad.to_owned()
                }),
                "{bad}"
            );
        }
        assert_eq!(parse_date(""), Err(DomainError::Missing));
    }

    #[test]
    fn rejects_days_that_do_not_exist() {
        for bad in [
            "2021-02-29",
            "2020-02-30",
            "2020-13-01",
            "2020-00-10",
            "2020-04-31",
            "0000-01-01",
        ] {
            assert_eq!(
                parse_date(bad),
                Err(DomainError::NoSuchDate {
                    found: bad.to_owned()
                }),
                "{bad}"
            );
        }
        assert_eq!(
            parse_date("2021-02-29").unwrap_err().to_string(),
            "\"2021-02-29\" is not a calendar date"
        );
    }

    #[test]
    fn parses_uuids_and_names_bad_ones() {
        let id = parse_uuid("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
        assert_eq!(id.to_string(), "67e55044-10b1-426f-9247-bb680e5fe0c8");
        assert_eq!(parse_uuid(""), Err(DomainError::Missing));
        assert!(matches!(
            parse_uuid("67e55044-10b1-426f"),
            Err(DomainError::Format { .. })
        ));
    }
}
