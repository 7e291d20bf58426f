//! Bounded free text: names, phone numbers, notes and external references.
//!
//! Lengths count characters (not bytes), since names are mostly Chinese.
//! Input is trimmed; control characters are refused except line breaks and
//! tabs in notes.

use std::fmt;
use std::str::FromStr;

use super::DomainError;

fn bounded(raw: &str, min: usize, max: usize, multi_line: bool) -> Result<String, DomainError> {
    let s = raw.trim();
    let count = s.chars().count();
    if count == 0 && min > 0 {
        return Err(DomainError::Missing);
    }
    if count < min {
        return Err(DomainError::TooShort { min, actual: count });
    }
    if count > max {
        return Err(DomainError::TooLong { max, actual: count });
    }
    if let Some((i, c)) = s
        .chars()
        .enumerate()
        .find(|&(_, c)| c.is_control() && !(multi_line && matches!(c, '\n' | '\r' | '\t')))
    {
        return Err(DomainError::IllegalCharacter {
            position: i + 1,
            found: c,
            allowed: if multi_line {
                "printable characters, line breaks and tabs"
            } else {
                "printable characters"
            },
        });
    }
    Ok(s.to_owned())
}

/// A name of an enterprise, lender, product or person: 1 to 200 printable
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub const MAX_LEN: usize = 200;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        bounded(raw, 1, Self::MAX_LEN, false).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A contact phone number: 5 to 20 characters of digits, spaces and `-`,
/// optionally led by `+` (`+86 722 1234567`, `0722-3456789`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

impl Phone {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let s = bounded(raw, 5, 20, false)?;
        for (i, c) in s.chars().enumerate() {
            let ok = c.is_ascii_digit() || c == ' ' || c == '-' || (c == '+' && i == 0);
            if !ok {
                return Err(DomainError::IllegalCharacter {
                    position: i + 1,
                    found: c,
                    allowed: "digits, spaces, '-' and a leading '+'",
                });
            }
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text attached to a need or a decision: up to 2000 characters, may be
/// empty, may span lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Note(String);

impl Note {
    pub const MAX_LEN: usize = 2000;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        bounded(raw, 0, Self::MAX_LEN, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An identifier issued by someone else, such as a designation's document
/// number: 1 to 100 printable characters. (A lender's loan reference is a
/// [`LoanReference`].)
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference(String);

impl Reference {
    pub const MAX_LEN: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        bounded(raw, 1, Self::MAX_LEN, false).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A lender's loan reference: its natural key for a loan, compared exactly, on
/// disbursements and special-loan confirmations alike. 1 to
/// [`LoanReference::MAX_LEN`] printable ASCII characters, spaces only inside.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LoanReference(String);

impl LoanReference {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        const ALLOWED: &str = "printable ASCII characters, no leading or trailing space";
        if raw.is_empty() {
            return Err(DomainError::Missing);
        }
        let count = raw.chars().count();
        if count > Self::MAX_LEN {
            return Err(DomainError::TooLong {
                max: Self::MAX_LEN,
                actual: count,
            });
        }
        let inner = |i: usize| i != 0 && i != count - 1;
        if let Some((i, c)) = raw
            .chars()
            .enumerate()
            .find(|&(i, c)| !(c.is_ascii_graphic() || (c == ' ' && inner(i))))
        {
            return Err(DomainError::IllegalCharacter {
                position: i + 1,
                found: c,
                allowed: ALLOWED,
            });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! text_impls {
    ($($t:ty),+) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl TryFrom<&str> for $t {
            type Error = DomainError;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::parse(s)
            }
        }
    )+};
}

text_impls!(Name, Phone, Note, Reference, LoanReference);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_is_trimmed_and_counts_characters_not_bytes() {
        assert_eq!(
            Name::parse("  随州市某某制药有限公司 ").unwrap().as_str(),
            "随州市某某制药有限公司"
        );
        assert!(Name::parse(&"药".repeat(200)).is_ok());
        assert_eq!(
            Name::parse(&"药".repeat(201)),
            Err(DomainError::TooLong {
                max: 200,
                actual: 201
            })
        );
    }

    #[test]
    fn name_rejects_blank_and_control_characters() {
        assert_eq!(Name::parse(" \t "), Err(DomainError::Missing));
        assert_eq!(
            Name::parse("Acme\nLtd"),
            Err(DomainError::IllegalCharacter {
                position: 5,
                found: '\n',
                allowed: "printable characters"
            })
        );
    }

    #[test]
    fn phone_accepts_common_forms() {
        for p in ["+86 722 1234567", "0722-3456789", "13800138000", "12345"] {
            assert_eq!(Phone::parse(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn phone_rejects_bad_length_and_characters() {
        assert_eq!(
            Phone::parse("1234"),
            Err(DomainError::TooShort { min: 5, actual: 4 })
        );
        assert_eq!(
            Phone::parse("123456789012345678901"),
            Err(DomainError::TooLong {
                max: 20,
                actual: 21
            })
        );
        assert_eq!(
            Phone::parse("0722-345678x"),
            Err(DomainError::IllegalCharacter {
                position: 12,
                found: 'x',
                allowed: "digits, spaces, '-' and a leading '+'"
            })
        );
        assert!(matches!(
            Phone::parse("86+7221234"),
            Err(DomainError::IllegalCharacter {
                position: 3,
                found: '+',
                ..
            })
        ));
    }

    #[test]
    fn note_may_be_empty_or_multi_line_but_bounded() {
        assert!(Note::parse("").unwrap().is_empty());
        assert_eq!(
            Note::parse("line 1\nline 2\t.").unwrap().as_str(),
            "line 1\nline 2\t."
        );
        assert_eq!(
            Note::parse(&"x".repeat(2001)),
            Err(DomainError::TooLong {
                max: 2000,
                actual: 2001
            })
        );
        assert!(matches!(
            Note::parse("bell\u{7}"),
            Err(DomainError::IllegalCharacter { position: 5, .. })
        ));
    }

    #[test]
    fn reference_is_required_and_bounded() {
        assert_eq!(
            Reference::parse("LN-2020-000123").unwrap().as_str(),
            "LN-2020-000123"
        );
        assert_eq!(Reference::parse(""), Err(DomainError::Missing));
        assert_eq!(
            Reference::parse(&"r".repeat(101)),
            Err(DomainError::TooLong {
                max: 100,
                actual: 101
            })
        );
    }

    #[test]
    fn loan_references_are_printable_ascii_without_outer_spaces() {
        assert_eq!(
            LoanReference::parse("ICBC-2020 017").unwrap().as_str(),
            "ICBC-2020 017"
        );
        for bad in ["", " ICBC-1", "ICBC-1 ", "贷款-1", "a\tb"] {
            assert!(LoanReference::parse(bad).is_err(), "{bad:?}");
        }
        assert!(LoanReference::parse(&"x".repeat(64)).is_ok());
        assert!(matches!(
            LoanReference::parse(&"x".repeat(65)),
            Err(DomainError::TooLong {
                max: 64,
                actual: 65
            })
        ));
    }
}
