//! Errors of the domain layer.
//!
//! A single value that fails to parse yields a [`DomainError`]; its message
//! reads as the description of a field violation ("must be 18 characters long,
//! got 17"), so the field name is supplied by whoever knows it. A whole command
//! yields [`Violations`], one per bad field, so a client can fix every field in
//! one round trip.

use std::fmt;

/// Why one value is not a valid domain value.
///
/// Messages are phrased to follow a field name: `credit_code: check character
/// is 'A' but should be 'T'`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("is required")]
    Missing,
    #[error("must be {expected} characters long, got {actual}")]
    WrongLength { expected: usize, actual: usize },
    #[error("must be at most {max} characters long, got {actual}")]
    TooLong { max: usize, actual: usize },
    #[error("must be at least {min} characters long, got {actual}")]
    TooShort { min: usize, actual: usize },
    /// `position` counts characters from 1.
    #[error("character {found:?} at position {position} is not allowed (allowed: {allowed})")]
    IllegalCharacter {
        position: usize,
        found: char,
        allowed: &'static str,
    },
    #[error("check character is {found:?} but should be {expected:?}")]
    WrongCheckCharacter { expected: char, found: char },
    #[error("must be between {min} and {max}, got {value}")]
    OutOfRange { value: i64, min: i64, max: i64 },
    #[error("must be {expected}, got {found:?}")]
    Format {
        expected: &'static str,
        found: String,
    },
    #[error("{found:?} is not a calendar date")]
    NoSuchDate { found: String },
    #[error(
        "{found:?} is not a province-level region code (11-15, 21-23, 31-37, 41-46, 50-54, 61-65, 71, 81, 82)"
    )]
    UnknownProvince { found: String },
    #[error("industry division {division:02} belongs to section {actual}, not {given}")]
    WrongIndustrySection {
        given: char,
        actual: char,
        division: u8,
    },
    #[error("industry division {division:02} does not exist in GB/T 4754-2017 (01-97)")]
    UnknownIndustryDivision { division: u8 },
    #[error("unknown value {found:?}; expected one of {expected}")]
    UnknownValue { found: String, expected: String },
    #[error("must be specified; expected one of {expected}")]
    Unspecified { expected: String },
}

/// One bad field of a command: `field` is the path the caller knows the field
/// by (for the gRPC layer, the proto field path such as `need.amount_minor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Collects every bad field of a command instead of stopping at the first.
///
/// ```
/// use finmatch::domain::{CreditCode, TermMonths, Violations};
///
/// let mut v = Violations::default();
/// let code = v.field("enterprise.credit_code", CreditCode::parse("91350100M000100Y43"));
/// let term = v.field("need.term_months", TermMonths::new(0));
/// assert!(code.is_some());
/// assert!(term.is_none());
/// let err = v.finish().unwrap_err();
/// assert_eq!(err.violations()[0].field, "need.term_months");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Violations {
    items: Vec<FieldViolation>,
}

impl Violations {
    /// Records the error of `result` under `field`, or passes its value on.
    pub fn field<T>(
        &mut self,
        field: impl Into<String>,
        result: Result<T, DomainError>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.add(field, error.to_string());
                None
            }
        }
    }

    /// Absorbs the violations of a nested command (for example each
    /// designation of an enterprise), or passes its value on.
    pub fn nested<T>(&mut self, result: Result<T, Violations>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(nested) => {
                self.items.extend(nested.items);
                None
            }
        }
    }

    /// Records a violation found by a rule that spans fields (`min <= max`).
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.items.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn violations(&self) -> &[FieldViolation] {
        &self.items
    }

    pub fn into_vec(self) -> Vec<FieldViolation> {
        self.items
    }

    /// `Ok(())` when nothing was recorded, else every violation.
    pub fn finish(self) -> Result<(), Violations> {
        if self.items.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// The values of a command's parsed fields (a tuple of the `Option`s that [`Self::field`],
    /// [`Self::nested`] and their kin returned) once every field parsed and no rule spanning
    /// fields failed; otherwise every violation recorded. A field is `None` only where its
    /// violation was recorded, so the values are there exactly when the violations are not.
    ///
    /// ```
    /// use finmatch::domain::{TermMonths, Violations};
    ///
    /// let mut v = Violations::default();
    /// let short = v.field("short_term_months", TermMonths::new(6));
    /// let long = v.field("long_term_months", TermMonths::new(60));
    /// let (short, long) = v.values((short, long)).unwrap();
    /// assert!(short < long);
    /// ```
    pub fn values<F: Parsed>(self, fields: F) -> Result<F::Values, Violations> {
        match fields.all() {
            Some(values) if self.items.is_empty() => Ok(values),
            _ => {
                debug_assert!(!self.items.is_empty(), "a field was refused unrecorded");
                Err(self)
            }
        }
    }
}

/// Fields of a command as [`Violations`] hands them back: `Option`s, each `None` where its
/// field was refused. Implemented for one `Option` and for tuples of up to twelve.
pub trait Parsed {
    /// The fields' values, all present.
    type Values;

    /// Every value, or None when any field was refused.
    fn all(self) -> Option<Self::Values>;
}

impl<A> Parsed for Option<A> {
    type Values = A;

    fn all(self) -> Option<A> {
        self
    }
}

macro_rules! parsed_tuple {
    ($($field:ident),+) => {
        impl<$($field),+> Parsed for ($(Option<$field>,)+) {
            type Values = ($($field,)+);

            #[allow(non_snake_case)]
            fn all(self) -> Option<Self::Values> {
                let ($($field,)+) = self;
                Some(($($field?,)+))
            }
        }
    };
}

parsed_tuple!(A, B);
parsed_tuple!(A, B, C);
parsed_tuple!(A, B, C, D);
parsed_tuple!(A, B, C, D, E);
parsed_tuple!(A, B, C, D, E, F);
parsed_tuple!(A, B, C, D, E, F, G);
parsed_tuple!(A, B, C, D, E, F, G, H);
parsed_tuple!(A, B, C, D, E, F, G, H, I);
parsed_tuple!(A, B, C, D, E, F, G, H, I, J);
parsed_tuple!(A, B, C, D, E, F, G, H, I, J, K);
parsed_tuple!(A, B, C, D, E, F, G, H, I, J, K, L);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

impl IntoIterator for Violations {
    type Item = FieldViolation;
    type IntoIter = std::vec::IntoIter<FieldViolation>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_only_when_nothing_was_recorded() {
        let mut v = Violations::default();
        let a = v.field("a", Ok::<_, DomainError>(1));
        let b = v.field("b", Ok::<_, DomainError>("two"));
        assert_eq!(v.values((a, b)), Ok((1, "two")));

        // A rule spanning fields refuses the command though each field parsed.
        let mut v = Violations::default();
        let a = v.field("a", Ok::<_, DomainError>(1));
        v.add("b", "must follow a");
        assert_eq!(v.values(a).unwrap_err().len(), 1);

        let mut v = Violations::default();
        let a = v.field("a", Ok::<_, DomainError>(1));
        let b = v.field::<i32>("b", Err(DomainError::Missing));
        let refused = v.values((a, b)).unwrap_err();
        assert_eq!(refused.violations()[0].field, "b");
    }

    #[test]
    fn field_passes_values_and_records_errors_under_the_callers_name() {
        let mut v = Violations::default();
        assert_eq!(v.field("a", Ok::<_, DomainError>(7)), Some(7));
        assert_eq!(
            v.field::<i32>("need.amount_minor", Err(DomainError::Missing)),
            None
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v.violations()[0].field, "need.amount_minor");
        assert_eq!(v.violations()[0].description, "is required");
    }

    #[test]
    fn nested_violations_are_absorbed_in_order() {
        let mut inner = Violations::default();
        inner.add("x[0].list_code", "bad");
        inner.add("x[1].list_code", "worse");
        let mut outer = Violations::default();
        outer.add("name", "empty");
        assert_eq!(outer.nested::<()>(Err(inner)), None);
        let fields: Vec<_> = outer
            .violations()
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["name", "x[0].list_code", "x[1].list_code"]);
        assert_eq!(
            outer.to_string(),
            "name: empty; x[0].list_code: bad; x[1].list_code: worse"
        );
    }

    #[test]
    fn finish_is_ok_only_when_nothing_was_recorded() {
        assert_eq!(Violations::default().finish(), Ok(()));
        let mut v = Violations::default();
        v.add("f", "d");
        assert_eq!(v.finish().unwrap_err().len(), 1);
    }
}
