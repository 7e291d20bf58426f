//! Validated commands: what the services take once the gRPC layer has parsed
//! a request.
//!
//! Each command has an `*Input` of raw values as they arrive (proto3 style:
//! an empty string means "not given"; an enum is `None` when the wire value
//! was `*_UNSPECIFIED` or unknown) and a `parse` that reports every bad field
//! at once as [`Violations`]. Field paths are `prefix` followed by the proto
//! field name of DESIGN §2, e.g. prefix `"need."` gives `need.amount_minor`
//! and `need.collateral[2]`.

use chrono::NaiveDate;
use uuid::Uuid;

use super::{
    AmountMinor, Bounds, Bps, Channel, Collateral, CollateralSet, CreditCode, DailyCapacity,
    DomainError, Employees, EnterpriseSize, IndustryCode, IndustryPrefix, LenderKind, ListCode,
    Name, NonNegativeMinor, Note, Phone, Purpose, Reference, RegionCode, RegionPrefix, SlaHours,
    TermMonths, Violations, parse_date, parse_uuid,
};

fn path(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

fn indexed(prefix: &str, name: &str, i: usize) -> String {
    format!("{prefix}{name}[{i}]")
}

/// Parses an optional text field: `""` (after trimming) is `None`.
fn optional<T>(
    raw: &str,
    parse: impl Fn(&str) -> Result<T, DomainError>,
) -> Result<Option<T>, DomainError> {
    if raw.trim().is_empty() {
        Ok(None)
    } else {
        parse(raw).map(Some)
    }
}

/// The most entries a repeated field of a command may have (prefix lists,
/// region codes, designations): far above any real product, and a bound on
/// what one request can make the server hold.
pub const MAX_LIST_LEN: usize = 1_000;

/// Parses each element of a repeated field, dropping exact duplicates (order
/// of first appearance kept).
fn each<T: PartialEq>(
    v: &mut Violations,
    prefix: &str,
    name: &str,
    raw: &[String],
    parse: impl Fn(&str) -> Result<T, DomainError>,
) -> Vec<T> {
    if raw.len() > MAX_LIST_LEN {
        v.add(
            path(prefix, name),
            format!(
                "must have at most {MAX_LIST_LEN} entries, got {}",
                raw.len()
            ),
        );
        return Vec::new();
    }
    let mut out: Vec<T> = Vec::with_capacity(raw.len());
    for (i, item) in raw.iter().enumerate() {
        if let Some(value) = v.field(indexed(prefix, name, i), parse(item))
            && !out.contains(&value)
        {
            out.push(value);
        }
    }
    out
}

/// Parses a repeated collateral field that must name at least one kind.
fn collateral_set(
    v: &mut Violations,
    prefix: &str,
    name: &str,
    raw: &[Option<Collateral>],
) -> Option<CollateralSet> {
    if raw.is_empty() {
        v.add(
            path(prefix, name),
            format!("must name at least one of {}", Collateral::wire_expected()),
        );
        return None;
    }
    let mut set = CollateralSet::empty();
    let mut ok = true;
    for (i, c) in raw.iter().enumerate() {
        match v.field(indexed(prefix, name, i), Collateral::required(*c)) {
            Some(c) => set.insert(c),
            None => ok = false,
        }
    }
    ok.then_some(set)
}

/// Checks `min <= max`, reporting on the `max` field (the one a client
/// usually adjusts).
fn ordered<T: Copy + Ord + std::fmt::Display>(
    v: &mut Violations,
    prefix: &str,
    min_name: &str,
    max_name: &str,
    min: Option<T>,
    max: Option<T>,
) -> Option<Bounds<T>> {
    let (min, max) = (min?, max?);
    let bounds = Bounds::new(min, max);
    if bounds.is_none() {
        v.add(
            path(prefix, max_name),
            format!("must be at least {min_name} ({min}), got {max}"),
        );
    }
    bounds
}

mod enterprises;
mod lenders;
mod needs;

pub use enterprises::{
    DesignationInput, EnterpriseInput, EnterprisePatch, EnterprisePatchInput, NewDesignation,
    NewEnterprise,
};
pub use lenders::{
    LenderInput, NewLender, NewProduct, ProductInput, ProductPatch, ProductPatchInput,
};
pub use needs::{NeedInput, NewNeed};

/// What the tests of every command share.
#[cfg(test)]
mod test_support {
    use super::*;

    pub fn fields(v: &Violations) -> Vec<&str> {
        v.violations().iter().map(|f| f.field.as_str()).collect()
    }

    pub fn description<'v>(v: &'v Violations, field: &str) -> &'v str {
        &v.violations()
            .iter()
            .find(|f| f.field == field)
            .unwrap_or_else(|| panic!("no violation for {field}: {v}"))
            .description
    }

    pub fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    pub fn date(s: &str) -> NaiveDate {
        parse_date(s).unwrap()
    }

    pub const LENDER: &str = "0190f5e2-6a8b-7c3d-9e4f-123456789abc";
}
