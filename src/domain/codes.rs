//! Administrative region codes, GB/T 4754 industry codes and designation list
//! codes, plus the prefixes that products and filters use to select them.
//!
//! Codes are stored inline, zero-padded to eight bytes, so that a prefix test
//! is one mask and one comparison of two `u64`s: the matching engine does it
//! for every product.

use std::fmt;
use std::str::FromStr;

use super::DomainError;

/// Province-level parts of GB/T 2260 codes (the first two digits).
const PROVINCES: [u8; 34] = [
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52,
    53, 54, 61, 62, 63, 64, 65, 71, 81, 82,
];

fn pack(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..bytes.len()].copy_from_slice(bytes);
    out
}

/// Mask keeping the first `len` bytes of a big-endian packed code.
fn prefix_mask(len: u8) -> u64 {
    if len == 0 {
        0
    } else {
        u64::MAX << (64 - 8 * u32::from(len))
    }
}

fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("codes are validated ASCII")
}

/// Checks `s` is 1..=6 ASCII digits whose leading part names a province.
fn region_digits(raw: &str, exact: bool) -> Result<([u8; 8], u8), DomainError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(DomainError::Missing);
    }
    let count = s.chars().count();
    if exact && count != 6 {
        return Err(DomainError::WrongLength {
            expected: 6,
            actual: count,
        });
    }
    if count > 6 {
        return Err(DomainError::TooLong {
            max: 6,
            actual: count,
        });
    }
    if let Some((i, c)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_digit()) {
        return Err(DomainError::IllegalCharacter {
            position: i + 1,
            found: c,
            allowed: "digits 0-9",
        });
    }
    let b = s.as_bytes();
    let province_ok = if b.len() >= 2 {
        PROVINCES.contains(&((b[0] - b'0') * 10 + (b[1] - b'0')))
    } else {
        PROVINCES.iter().any(|p| p / 10 == b[0] - b'0')
    };
    if !province_ok {
        return Err(DomainError::UnknownProvince {
            found: s[..b.len().min(2)].to_owned(),
        });
    }
    Ok((pack(b), b.len() as u8))
}

/// A 6-digit administrative division code (GB/T 2260), e.g. `421300`
/// (Suizhou) or `421303` (Zengdu district). The first two digits must be a
/// province-level code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionCode([u8; 8]);

impl RegionCode {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        region_digits(raw, true).map(|(bytes, _)| Self(bytes))
    }

    /// A served area as a lender names it: a province (2 digits, `42`), a prefecture (4,
    /// `4213`) or a county-level code (6, `421303`). A 2- or 4-digit prefix is taken as the code
    /// of that province or prefecture (`42` is `420000`, `4213` is `421300`), whose
    /// [`RegionCode::coverage`] is the prefix again.
    pub fn parse_area(raw: &str) -> Result<Self, DomainError> {
        let (mut bytes, len) = region_digits(raw, false)?;
        if len % 2 != 0 {
            return Err(DomainError::Format {
                expected: "a province (2 digits), prefecture (4) or county-level code (6)",
                found: raw.trim().to_owned(),
            });
        }
        bytes[usize::from(len)..6].fill(b'0');
        Ok(Self(bytes))
    }

    pub fn as_str(&self) -> &str {
        ascii(&self.0[..6])
    }

    /// The code as a big-endian `u64` (zero-padded), for prefix tests.
    pub(crate) fn packed(&self) -> u64 {
        u64::from_be_bytes(self.0)
    }

    /// The area this code stands for, as a prefix: trailing `00` pairs name a
    /// whole prefecture or province, so `420000` covers `42`, `421300` covers
    /// `4213` and `421303` only itself. A lender serving `420000` serves all
    /// of Hubei.
    pub fn coverage(&self) -> RegionPrefix {
        let mut len = 6u8;
        while len > 2 && self.0[usize::from(len) - 2..usize::from(len)] == *b"00" {
            len -= 2;
        }
        let mut bytes = self.0;
        bytes[usize::from(len)..].fill(0);
        RegionPrefix { bytes, len }
    }

    /// How many leading digits two codes share, counted in whole levels:
    /// 6 (same county), 4 (same prefecture), 2 (same province) or 0.
    pub fn shared_levels(&self, other: &RegionCode) -> u8 {
        shared_levels_packed(self.packed(), other.packed())
    }
}

/// [`RegionCode::shared_levels`] on packed codes.
#[inline]
pub(crate) fn shared_levels_packed(a: u64, b: u64) -> u8 {
    let common = ((a ^ b).leading_zeros() / 8).min(6) as u8;
    common - common % 2
}

/// A prefix of region codes (1 to 6 digits), e.g. `42` (Hubei) or `4213`
/// (Suizhou), used by product region lists and list filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionPrefix {
    bytes: [u8; 8],
    len: u8,
}

impl RegionPrefix {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        region_digits(raw, false).map(|(bytes, len)| Self { bytes, len })
    }

    pub fn as_str(&self) -> &str {
        ascii(&self.bytes[..usize::from(self.len)])
    }

    /// Whether `code` lies inside this prefix.
    #[inline]
    pub fn matches(&self, code: &RegionCode) -> bool {
        let (value, mask) = self.packed_with_mask();
        code.packed() & mask == value
    }

    /// `(value, mask)`: a packed code `c` matches when `c & mask == value`.
    pub(crate) fn packed_with_mask(&self) -> (u64, u64) {
        (u64::from_be_bytes(self.bytes), prefix_mask(self.len))
    }
}

/// GB/T 4754-2017 divisions (两位大类) of each section letter A..=T.
const SECTION_DIVISIONS: [(u8, u8); 20] = [
    (1, 5),   // A agriculture, forestry, animal husbandry, fishery
    (6, 12),  // B mining
    (13, 43), // C manufacturing
    (44, 46), // D electricity, heat, gas, water
    (47, 50), // E construction
    (51, 52), // F wholesale and retail
    (53, 60), // G transport, storage, post
    (61, 62), // H accommodation and catering
    (63, 65), // I information transmission, software, IT services
    (66, 69), // J finance
    (70, 70), // K real estate
    (71, 72), // L leasing and business services
    (73, 75), // M research and technical services
    (76, 79), // N water, environment, public facilities
    (80, 82), // O residents' services and repair
    (83, 83), // P education
    (84, 85), // Q health and social work
    (86, 90), // R culture, sports, entertainment
    (91, 96), // S public administration and social organisations
    (97, 97), // T international organisations
];

fn industry_chars(raw: &str) -> Result<([u8; 8], u8), DomainError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(DomainError::Missing);
    }
    let count = s.chars().count();
    if count > 5 {
        return Err(DomainError::TooLong {
            max: 5,
            actual: count,
        });
    }
    let mut bytes = [0u8; 8];
    for (i, c) in s.chars().enumerate() {
        let c = c.to_ascii_uppercase();
        let ok = if i == 0 {
            ('A'..='T').contains(&c)
        } else {
            c.is_ascii_digit()
        };
        if !ok {
            return Err(DomainError::IllegalCharacter {
                position: i + 1,
                found: c,
                allowed: if i == 0 {
                    "a section letter A-T"
                } else {
                    "digits 0-9"
                },
            });
        }
        bytes[i] = c as u8;
    }
    if count == 2 {
        return Err(DomainError::Format {
            expected: "a section letter optionally followed by 2 to 4 digits (C, C27, C272, C2720)",
            found: s.to_owned(),
        });
    }
    if count >= 3 {
        let division = (bytes[1] - b'0') * 10 + (bytes[2] - b'0');
        let Some(section) = SECTION_DIVISIONS
            .iter()
            .position(|&(lo, hi)| (lo..=hi).contains(&division))
        else {
            return Err(DomainError::UnknownIndustryDivision { division });
        };
        let actual = (b'A' + section as u8) as char;
        if actual != bytes[0] as char {
            return Err(DomainError::WrongIndustrySection {
                given: bytes[0] as char,
                actual,
                division,
            });
        }
    }
    Ok((bytes, count as u8))
}

/// A GB/T 4754-2017 industry code: a section letter A-T, optionally followed
/// by a division (2 digits), group (3) or class (4) of that section, e.g.
/// `C`, `C27`, `C272`, `C2720`. Input is trimmed and upper-cased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndustryCode {
    bytes: [u8; 8],
    len: u8,
}

impl IndustryCode {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        industry_chars(raw).map(|(bytes, len)| Self { bytes, len })
    }

    pub fn as_str(&self) -> &str {
        ascii(&self.bytes[..usize::from(self.len)])
    }

    /// The section letter, e.g. `C` for manufacturing.
    pub fn section(&self) -> char {
        self.bytes[0] as char
    }

    /// The code as a big-endian `u64` (zero-padded), for prefix tests.
    pub(crate) fn packed(&self) -> u64 {
        u64::from_be_bytes(self.bytes)
    }
}

/// A prefix of industry codes, of the same shape as [`IndustryCode`]: `C`
/// selects all manufacturing, `C27` all pharmaceutical manufacturing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndustryPrefix {
    bytes: [u8; 8],
    len: u8,
}

impl IndustryPrefix {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        industry_chars(raw).map(|(bytes, len)| Self { bytes, len })
    }

    pub fn as_str(&self) -> &str {
        ascii(&self.bytes[..usize::from(self.len)])
    }

    /// Whether `code` lies inside this prefix (`C27` matches `C2720`; a
    /// longer prefix never matches a shorter code).
    #[inline]
    pub fn matches(&self, code: &IndustryCode) -> bool {
        let (value, mask) = self.packed_with_mask();
        code.packed() & mask == value
    }

    /// `(value, mask)`: a packed code `c` matches when `c & mask == value`.
    pub(crate) fn packed_with_mask(&self) -> (u64, u64) {
        (u64::from_be_bytes(self.bytes), prefix_mask(self.len))
    }
}

/// The code of a designation list (key-enterprise list), e.g.
/// `NATIONAL_KEY_SUPPLY`: `^[A-Z][A-Z0-9_]{1,63}$` after trimming and
/// upper-casing. Lists are data, so this is free-form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListCode(String);

impl ListCode {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(DomainError::Missing);
        }
        let count = s.chars().count();
        if count < 2 {
            return Err(DomainError::TooShort {
                min: 2,
                actual: count,
            });
        }
        if count > Self::MAX_LEN {
            return Err(DomainError::TooLong {
                max: Self::MAX_LEN,
                actual: count,
            });
        }
        let upper = s.to_ascii_uppercase();
        for (i, c) in upper.chars().enumerate() {
            let ok = if i == 0 {
                c.is_ascii_uppercase()
            } else {
                c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'
            };
            if !ok {
                return Err(DomainError::IllegalCharacter {
                    position: i + 1,
                    found: c,
                    allowed: if i == 0 {
                        "a letter A-Z"
                    } else {
                        "A-Z, 0-9, _"
                    },
                });
            }
        }
        Ok(Self(upper))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! text_code_impls {
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

text_code_impls!(
    RegionCode,
    RegionPrefix,
    IndustryCode,
    IndustryPrefix,
    ListCode
);

#[cfg(test)]
mod tests {
    use super::*;

    fn region(s: &str) -> RegionCode {
        RegionCode::parse(s).unwrap()
    }

    #[test]
    fn an_area_is_a_province_prefecture_or_county_and_covers_its_prefix() {
        for (given, code, covers) in [
            ("42", "420000", "42"),
            ("4213", "421300", "4213"),
            (" 421303 ", "421303", "421303"),
            ("421300", "421300", "4213"),
        ] {
            let area = RegionCode::parse_area(given).unwrap();
            assert_eq!(area.as_str(), code, "{given}");
            assert_eq!(area.coverage().as_str(), covers, "{given}");
        }
        for bad in ["4", "421", "42130", "4213001", "99", "42a3", ""] {
            assert!(RegionCode::parse_area(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            RegionCode::parse_area("421"),
            Err(DomainError::Format { .. })
        ));
    }

    #[test]
    fn region_code_accepts_six_digits_of_a_province() {
        for s in [
            "421300", "421303", "110000", "650000", "710000", "810000", "820000", " 421300 ",
        ] {
            assert_eq!(RegionCode::parse(s).unwrap().as_str(), s.trim());
        }
    }

    #[test]
    fn region_code_rejects_each_kind_of_bad_input() {
        assert_eq!(RegionCode::parse(""), Err(DomainError::Missing));
        assert_eq!(
            RegionCode::parse("42130"),
            Err(DomainError::WrongLength {
                expected: 6,
                actual: 5
            })
        );
        assert_eq!(
            RegionCode::parse("4213001"),
            Err(DomainError::WrongLength {
                expected: 6,
                actual: 7
            })
        );
        assert_eq!(
            RegionCode::parse("42a300"),
            Err(DomainError::IllegalCharacter {
                position: 3,
                found: 'a',
                allowed: "digits 0-9"
            })
        );
        for bad in ["101300", "161300", "661300", "700000", "900000", "000000"] {
            assert_eq!(
                RegionCode::parse(bad),
                Err(DomainError::UnknownProvince {
                    found: bad[..2].to_owned()
                }),
                "{bad}"
            );
        }
    }

    #[test]
    fn region_prefix_accepts_one_to_six_digits() {
        for s in ["4", "42", "421", "4213", "42130", "421303"] {
            assert_eq!(RegionPrefix::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(
            RegionPrefix::parse("4213031"),
            Err(DomainError::TooLong { max: 6, actual: 7 })
        );
        assert_eq!(
            RegionPrefix::parse("9"),
            Err(DomainError::UnknownProvince { found: "9".into() })
        );
        assert_eq!(
            RegionPrefix::parse("19"),
            Err(DomainError::UnknownProvince { found: "19".into() })
        );
    }

    #[test]
    fn region_prefix_matches_codes_inside_it_only() {
        let zengdu = region("421303");
        for p in ["4", "42", "421", "4213", "42130", "421303"] {
            assert!(RegionPrefix::parse(p).unwrap().matches(&zengdu), "{p}");
        }
        for p in ["41", "4214", "421302", "43"] {
            assert!(!RegionPrefix::parse(p).unwrap().matches(&zengdu), "{p}");
        }
    }

    #[test]
    fn region_coverage_strips_whole_levels() {
        assert_eq!(region("420000").coverage().as_str(), "42");
        assert_eq!(region("421300").coverage().as_str(), "4213");
        assert_eq!(region("421303").coverage().as_str(), "421303");
        assert_eq!(region("110100").coverage().as_str(), "1101");
        assert!(region("420000").coverage().matches(&region("421303")));
        assert!(!region("421300").coverage().matches(&region("420100")));
    }

    #[test]
    fn region_shared_levels_count_whole_levels() {
        let zengdu = region("421303");
        assert_eq!(zengdu.shared_levels(&region("421303")), 6);
        assert_eq!(zengdu.shared_levels(&region("421300")), 4);
        assert_eq!(zengdu.shared_levels(&region("421321")), 4);
        assert_eq!(zengdu.shared_levels(&region("420000")), 2);
        assert_eq!(zengdu.shared_levels(&region("410000")), 0);
        // Sharing an odd number of digits rounds down to a whole level.
        assert_eq!(zengdu.shared_levels(&region("421000")), 2);
    }

    #[test]
    fn industry_code_accepts_section_division_group_and_class() {
        for s in ["C", "C27", "C272", "C2720", "A01", "T97", "K70", "I65"] {
            assert_eq!(IndustryCode::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(IndustryCode::parse(" c2720 ").unwrap().as_str(), "C2720");
        assert_eq!(IndustryCode::parse("C2720").unwrap().section(), 'C');
    }

    #[test]
    fn industry_code_rejects_each_kind_of_bad_input() {
        assert_eq!(IndustryCode::parse(""), Err(DomainError::Missing));
        assert_eq!(
            IndustryCode::parse("U"),
            Err(DomainError::IllegalCharacter {
                position: 1,
                found: 'U',
                allowed: "a section letter A-T"
            })
        );
        assert_eq!(
            IndustryCode::parse("C2X"),
            Err(DomainError::IllegalCharacter {
                position: 3,
                found: 'X',
                allowed: "digits 0-9"
            })
        );
        assert!(matches!(
            IndustryCode::parse("C2"),
            Err(DomainError::Format { .. })
        ));
        assert_eq!(
            IndustryCode::parse("C27201"),
            Err(DomainError::TooLong { max: 5, actual: 6 })
        );
        assert_eq!(
            IndustryCode::parse("A27"),
            Err(DomainError::WrongIndustrySection {
                given: 'A',
                actual: 'C',
                division: 27
            })
        );
        assert_eq!(
            IndustryCode::parse("A27").unwrap_err().to_string(),
            "industry division 27 belongs to section C, not A"
        );
        assert_eq!(
            IndustryCode::parse("T98"),
            Err(DomainError::UnknownIndustryDivision { division: 98 })
        );
        assert_eq!(
            IndustryCode::parse("A00"),
            Err(DomainError::UnknownIndustryDivision { division: 0 })
        );
    }

    #[test]
    fn industry_prefix_matches_codes_inside_it_only() {
        let code = IndustryCode::parse("C2720").unwrap();
        for p in ["C", "C27", "C272", "C2720"] {
            assert!(IndustryPrefix::parse(p).unwrap().matches(&code), "{p}");
        }
        for p in ["A", "C26", "C271", "C2721"] {
            assert!(!IndustryPrefix::parse(p).unwrap().matches(&code), "{p}");
        }
        let short = IndustryCode::parse("C27").unwrap();
        assert!(!IndustryPrefix::parse("C2720").unwrap().matches(&short));
    }

    #[test]
    fn list_code_follows_its_pattern() {
        assert_eq!(
            ListCode::parse("NATIONAL_KEY_SUPPLY").unwrap().as_str(),
            "NATIONAL_KEY_SUPPLY"
        );
        assert_eq!(
            ListCode::parse(" provincial_key ").unwrap().as_str(),
            "PROVINCIAL_KEY"
        );
        assert_eq!(ListCode::parse("K2").unwrap().as_str(), "K2");
        assert_eq!(ListCode::parse(""), Err(DomainError::Missing));
        assert_eq!(
            ListCode::parse("K"),
            Err(DomainError::TooShort { min: 2, actual: 1 })
        );
        assert_eq!(
            ListCode::parse(&"K".repeat(65)),
            Err(DomainError::TooLong {
                max: 64,
                actual: 65
            })
        );
        assert!(ListCode::parse(&"K".repeat(64)).is_ok());
        assert_eq!(
            ListCode::parse("1ST_LIST"),
            Err(DomainError::IllegalCharacter {
                position: 1,
                found: '1',
                allowed: "a letter A-Z"
            })
        );
        assert_eq!(
            ListCode::parse("KEY-LIST"),
            Err(DomainError::IllegalCharacter {
                position: 4,
                found: '-',
                allowed: "A-Z, 0-9, _"
            })
        );
    }
}
