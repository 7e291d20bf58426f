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

/// An identifier issued by someone else: a designation's document number, a
/// lender's loan reference. 1 to 100 printable characters.
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

text_impls!(Name, Phone, Note, Reference);

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
}
