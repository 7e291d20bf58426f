//! The file's rows: its columns, a row read into what the server takes, amounts in fen, and the
//! content digest that names the file's idempotency keys.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::proto as pb;

/// The columns, in any order; a header row naming each is required.
pub const COLUMNS: [&str; 12] = [
    "credit_code",
    "enterprise_name",
    "region_code",
    "industry_code",
    "size",
    "amount_yuan",
    "term_months",
    "purpose",
    "collateral",
    "max_rate_bps",
    "needed_by",
    "consent",
];

/// One data row, mapped to what the server takes.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRow {
    /// Spreadsheet row number (the header is row 1).
    pub row: u64,
    /// The enterprise to register when its credit code is unknown.
    pub enterprise: pb::Enterprise,
    /// The need, without enterprise_id (known once the enterprise is registered).
    pub need: pb::Need,
}

/// Column positions of one file.
#[derive(Debug, Clone)]
pub struct Columns(HashMap<&'static str, usize>);

impl Columns {
    /// Finds every column in the header row (names compared trimmed and case-insensitively).
    pub fn from_header(header: &csv::StringRecord) -> anyhow::Result<Self> {
        let mut positions = HashMap::new();
        let mut missing = Vec::new();
        for name in COLUMNS {
            match header
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(name))
            {
                Some(i) => {
                    positions.insert(name, i);
                }
                None => missing.push(name),
            }
        }
        if !missing.is_empty() {
            bail!(
                "the header lacks the column(s) {}; expected: {}",
                missing.join(", "),
                COLUMNS.join(", ")
            );
        }
        Ok(Self(positions))
    }

    pub(super) fn get<'r>(&self, record: &'r csv::StringRecord, name: &str) -> &'r str {
        self.0
            .get(name)
            .and_then(|&i| record.get(i))
            .unwrap_or("")
            .trim()
    }
}

/// Maps one record to an enterprise and a need; every problem of the row in one message.
/// Values the server validates anyway (codes, dates, ranges) are passed on as they are, so its
/// field violations name them.
pub fn parse_row(
    columns: &Columns,
    record: &csv::StringRecord,
    row: u64,
) -> Result<ImportRow, String> {
    let field = |name| columns.get(record, name);
    let mut problems = Vec::new();

    let size = word::<pb::EnterpriseSize>(field("size"), "ENTERPRISE_SIZE_")
        .map_err(|e| problems.push(format!("size: {e}")))
        .unwrap_or(0);
    let amount_minor = yuan_to_minor(field("amount_yuan"))
        .map_err(|e| problems.push(format!("amount_yuan: {e}")))
        .unwrap_or(0);
    let term_months = field("term_months")
        .parse::<i32>()
        .map_err(|_| problems.push("term_months: not a whole number of months".to_owned()))
        .unwrap_or(0);
    let purpose = word::<pb::Purpose>(field("purpose"), "PURPOSE_")
        .map_err(|e| problems.push(format!("purpose: {e}")))
        .unwrap_or(0);
    let mut collateral = Vec::new();
    for part in field("collateral")
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match word::<pb::Collateral>(part, "COLLATERAL_") {
            Ok(value) => collateral.push(value),
            Err(e) => problems.push(format!("collateral: {e}")),
        }
    }
    let max_rate_bps = match field("max_rate_bps") {
        "" => None,
        raw => raw
            .parse::<i32>()
            .map_err(|_| problems.push("max_rate_bps: not a whole number of basis points".into()))
            .ok(),
    };
    let consent_to_share = match field("consent").to_ascii_lowercase().as_str() {
        "yes" => true,
        "no" => false,
        other => {
            problems.push(format!("consent: {other:?} is neither yes nor no"));
            false
        }
    };
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(ImportRow {
        row,
        enterprise: pb::Enterprise {
            credit_code: field("credit_code").to_owned(),
            name: field("enterprise_name").to_owned(),
            region_code: field("region_code").to_owned(),
            industry_code: field("industry_code").to_owned(),
            size,
            ..Default::default()
        },
        need: pb::Need {
            amount_minor,
            term_months,
            purpose,
            collateral,
            max_rate_bps,
            needed_by: field("needed_by").to_owned(),
            consent_to_share,
            channel: pb::Channel::Bureau as i32,
            ..Default::default()
        },
    })
}

/// A lower-case word (`working_capital`, `working capital`, `real-estate`) as the proto enum
/// value whose name is `prefix` + the upper-case word.
pub(super) fn word<E: EnumName>(raw: &str, prefix: &str) -> Result<i32, String> {
    let wanted = format!(
        "{prefix}{}",
        raw.trim().to_ascii_uppercase().replace([' ', '-'], "_")
    );
    (1..64)
        .filter_map(|n| E::try_from(n).ok().map(|e| (n, e)))
        .find(|(_, e)| e.name() == wanted)
        .map(|(n, _)| n)
        .ok_or_else(|| format!("{raw:?} is not one of {}", E::words(prefix).join(", ")))
}

/// The proto name of an enum value, and the lower-case words of all of them.
pub(super) trait EnumName: Sized + TryFrom<i32> {
    fn name(&self) -> &'static str;

    fn words(prefix: &str) -> Vec<String> {
        (1..64)
            .filter_map(|n| Self::try_from(n).ok())
            .map(|e| e.name().trim_start_matches(prefix).to_ascii_lowercase())
            .collect()
    }
}

macro_rules! enum_name {
    ($($t:ty),+) => {
        $(impl EnumName for $t {
            fn name(&self) -> &'static str {
                self.as_str_name()
            }
        })+
    };
}

enum_name!(pb::EnterpriseSize, pb::Purpose, pb::Collateral);

/// Yuan with at most two decimals (`1500000`, `1500000.5`, `1500000.50`) in fen, without floats.
pub fn yuan_to_minor(raw: &str) -> Result<i64, String> {
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(fraction.is_empty() || digits(fraction)) || fraction.len() > 2 {
        return Err(format!(
            "{raw:?} is not an amount in yuan with at most 2 decimals"
        ));
    }
    let fen = format!("{fraction:0<2}");
    whole
        .parse::<i64>()
        .ok()
        .and_then(|y| y.checked_mul(100))
        .and_then(|m| m.checked_add(fen.parse::<i64>().unwrap_or(0)))
        .ok_or_else(|| format!("{raw:?} is too large"))
}

/// First 32 hex digits of the SHA-256 of the file's bytes.
pub fn content_digest(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(&hasher.finalize()[..16]))
}

/// The idempotency key of a row: the same file gives the same keys, another file other keys.
pub fn idempotency_key(digest: &str, row: u64) -> String {
    format!("import-{digest}-{row}")
}

pub(super) fn reader(file: &Path) -> anyhow::Result<csv::Reader<std::fs::File>> {
    let file = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    Ok(csv_reader(file))
}

/// How every pass reads the file: the first record is the header, fields are trimmed.
pub fn csv_reader<R: Read>(input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(input)
}
