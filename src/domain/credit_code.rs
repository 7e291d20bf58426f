//! The unified social credit code (统一社会信用代码) of GB 32100-2015.

use std::fmt;
use std::str::FromStr;

use super::DomainError;

/// The 31 characters a code may contain, in the order of their values
/// (I, O, Z, S and V are never used).
const CHARSET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const ALLOWED: &str = "0-9, A-H, J-N, P-R, T, U, W-Y";
/// Weights of positions 1..=17 (3^(i-1) mod 31).
const WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];
const LEN: usize = 18;

fn char_value(c: u8) -> Option<u32> {
    CHARSET.iter().position(|&x| x == c).map(|i| i as u32)
}

/// The check character for the 17 leading characters, or `None` if one of
/// them is outside the charset.
fn check_char(first17: &[u8]) -> Option<u8> {
    let mut sum = 0u32;
    for (&c, &w) in first17.iter().zip(WEIGHTS.iter()) {
        sum += char_value(c)? * w;
    }
    Some(CHARSET[((31 - sum % 31) % 31) as usize])
}

/// A unified social credit code whose check character is correct.
///
/// Input is trimmed and upper-cased; the stored form is the canonical
/// 18 upper-case characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CreditCode([u8; LEN]);

impl CreditCode {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(DomainError::Missing);
        }
        let count = s.chars().count();
        if count != LEN {
            return Err(DomainError::WrongLength {
                expected: LEN,
                actual: count,
            });
        }
        let mut bytes = [0u8; LEN];
        for (i, c) in s.chars().enumerate() {
            let upper = c.to_ascii_uppercase();
            if !upper.is_ascii() || char_value(upper as u8).is_none() {
                return Err(DomainError::IllegalCharacter {
                    position: i + 1,
                    found: c,
                    allowed: ALLOWED,
                });
            }
            bytes[i] = upper as u8;
        }
        let expected = check_char(&bytes[..17]).expect("charset checked above");
        if bytes[17] != expected {
            return Err(DomainError::WrongCheckCharacter {
                expected: expected as char,
                found: bytes[17] as char,
            });
        }
        Ok(Self(bytes))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("credit codes are ASCII")
    }
}

/// Appends the check character to 17 leading characters (used to make
/// demo and test data).
///
/// # Panics
/// If `first17` is not 17 characters of the code's charset (upper case):
/// callers pass constants or generated strings, never user input.
pub fn credit_code_with_check(first17: &str) -> String {
    let bytes = first17.as_bytes();
    assert_eq!(
        bytes.len(),
        17,
        "a credit code body has 17 characters: {first17:?}"
    );
    let check = check_char(bytes)
        .unwrap_or_else(|| panic!("{first17:?} has a character outside the credit code charset"));
    let mut code = first17.to_owned();
    code.push(check as char);
    code
}

impl fmt::Display for CreditCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CreditCode {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for CreditCode {
    type Error = DomainError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_codes_with_their_check_characters() {
        for code in [
            "91350100M000100Y43",
            "91440300708461136T",
            "9144030071526726XG",
            "91330100799655058B",
            "91110000100005220B",
            "12100000400000624D",
        ] {
            assert_eq!(
                CreditCode::parse(code).map(|c| c.to_string()),
                Ok(code.to_owned()),
                "{code}"
            );
        }
    }

    #[test]
    fn trims_and_upper_cases_input() {
        let code = CreditCode::parse("  9144030071526726xg \n").unwrap();
        assert_eq!(code.as_str(), "9144030071526726XG");
    }

    #[test]
    fn with_check_computes_the_check_character() {
        assert_eq!(
            credit_code_with_check("91350100M000100Y4"),
            "91350100M000100Y43"
        );
        assert_eq!(
            credit_code_with_check("91440300708461136"),
            "91440300708461136T"
        );
        // A remainder of 0 maps to '0', not to index 31.
        let generated = credit_code_with_check("91421300MA4F00000");
        assert!(CreditCode::parse(&generated).is_ok(), "{generated}");
    }

    #[test]
    fn check_character_zero_case_round_trips() {
        // Exercise every remainder: vary the last body character over the charset.
        let mut seen = std::collections::BTreeSet::new();
        for a in CHARSET.iter() {
            for b in CHARSET.iter() {
                let body = format!("9142130{}{}00000001", *a as char, *b as char);
                let code = credit_code_with_check(&body);
                seen.insert(code.as_bytes()[17]);
                assert_eq!(CreditCode::parse(&code).unwrap().as_str(), code);
            }
        }
        assert_eq!(seen.len(), 31, "every check character value occurs");
    }

    #[test]
    fn rejects_empty_input() {
        assert_eq!(CreditCode::parse("   "), Err(DomainError::Missing));
        assert_eq!(
            CreditCode::parse("   ").unwrap_err().to_string(),
            "is required"
        );
    }

    #[test]
    fn rejects_wrong_length() {
        let err = CreditCode::parse("91350100M000100Y4").unwrap_err();
        assert_eq!(
            err,
            DomainError::WrongLength {
                expected: 18,
                actual: 17
            }
        );
        assert_eq!(err.to_string(), "must be 18 characters long, got 17");
        let err = CreditCode::parse("91350100M000100Y433").unwrap_err();
        assert_eq!(
            err,
            DomainError::WrongLength {
                expected: 18,
                actual: 19
            }
        );
    }

    #[test]
    fn rejects_characters_outside_the_charset() {
        for (code, position, found) in [
            ("91350100I000100Y43", 9, 'I'),
            ("91350100O000100Y43", 9, 'O'),
            ("9135010SM000100Y43", 8, 'S'),
            ("91350100M000100V43", 16, 'V'),
            ("Z1350100M000100Y43", 1, 'Z'),
            ("91350100M000100Y4-", 18, '-'),
            ("91350100M00010中Y43", 15, '中'),
        ] {
            let err = CreditCode::parse(code).unwrap_err();
            assert_eq!(
                err,
                DomainError::IllegalCharacter {
                    position,
                    found,
                    allowed: ALLOWED
                },
                "{code}"
            );
        }
        assert_eq!(
            CreditCode::parse("91350100I000100Y43")
                .unwrap_err()
                .to_string(),
            "character 'I' at position 9 is not allowed (allowed: 0-9, A-H, J-N, P-R, T, U, W-Y)"
        );
    }

    #[test]
    fn rejects_a_wrong_check_character() {
        let err = CreditCode::parse("91350100M000100Y44").unwrap_err();
        assert_eq!(
            err,
            DomainError::WrongCheckCharacter {
                expected: '3',
                found: '4'
            }
        );
        assert_eq!(err.to_string(), "check character is '4' but should be '3'");
        // A transposition of two body characters is caught too.
        assert!(matches!(
            CreditCode::parse("91350100M000010Y43"),
            Err(DomainError::WrongCheckCharacter { .. })
        ));
    }
}
