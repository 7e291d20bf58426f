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

// ---------------------------------------------------------------- enterprise

/// Raw fields of an enterprise.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnterpriseInput<'a> {
    pub credit_code: &'a str,
    pub name: &'a str,
    pub region_code: &'a str,
    pub industry_code: &'a str,
    pub size: Option<EnterpriseSize>,
    pub above_designated_size: bool,
    pub employees: i32,
    pub annual_revenue_minor: i64,
    /// `""` = no contact person.
    pub contact_name: &'a str,
    /// `""` = no phone.
    pub contact_phone: &'a str,
}

/// A valid enterprise to register. Every field is its own validated type and
/// no rule spans fields, so the fields are public.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnterprise {
    pub credit_code: CreditCode,
    pub name: Name,
    pub region_code: RegionCode,
    pub industry_code: IndustryCode,
    pub size: EnterpriseSize,
    pub above_designated_size: bool,
    pub employees: Employees,
    pub annual_revenue_minor: NonNegativeMinor,
    /// Personal data: shown to a lender only for consented needs.
    pub contact_name: Option<Name>,
    pub contact_phone: Option<Phone>,
}

impl NewEnterprise {
    pub fn parse(input: &EnterpriseInput<'_>, prefix: &str) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let credit_code = v.field(
            path(prefix, "credit_code"),
            CreditCode::parse(input.credit_code),
        );
        let name = v.field(path(prefix, "name"), Name::parse(input.name));
        let region_code = v.field(
            path(prefix, "region_code"),
            RegionCode::parse(input.region_code),
        );
        let industry_code = v.field(
            path(prefix, "industry_code"),
            IndustryCode::parse(input.industry_code),
        );
        let size = v.field(path(prefix, "size"), EnterpriseSize::required(input.size));
        let employees = v.field(path(prefix, "employees"), Employees::new(input.employees));
        let revenue = v.field(
            path(prefix, "annual_revenue_minor"),
            NonNegativeMinor::new(input.annual_revenue_minor),
        );
        let contact_name = v.field(
            path(prefix, "contact_name"),
            optional(input.contact_name, Name::parse),
        );
        let contact_phone = v.field(
            path(prefix, "contact_phone"),
            optional(input.contact_phone, Phone::parse),
        );
        match (
            credit_code,
            name,
            region_code,
            industry_code,
            size,
            employees,
            revenue,
            contact_name,
            contact_phone,
        ) {
            (
                Some(credit_code),
                Some(name),
                Some(region_code),
                Some(industry_code),
                Some(size),
                Some(employees),
                Some(annual_revenue_minor),
                Some(contact_name),
                Some(contact_phone),
            ) if v.is_empty() => Ok(Self {
                credit_code,
                name,
                region_code,
                industry_code,
                size,
                above_designated_size: input.above_designated_size,
                employees,
                annual_revenue_minor,
                contact_name,
                contact_phone,
            }),
            _ => Err(v),
        }
    }
}

/// Raw fields of an enterprise update: `Some` for each path in the field
/// mask.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnterprisePatchInput<'a> {
    pub credit_code: Option<&'a str>,
    pub name: Option<&'a str>,
    pub region_code: Option<&'a str>,
    pub industry_code: Option<&'a str>,
    /// `Some(None)`: the mask names `size` but the value is unspecified,
    /// which is refused (size is required).
    pub size: Option<Option<EnterpriseSize>>,
    pub above_designated_size: Option<bool>,
    pub employees: Option<i32>,
    pub annual_revenue_minor: Option<i64>,
    /// `Some("")` clears the contact name.
    pub contact_name: Option<&'a str>,
    /// `Some("")` clears the phone.
    pub contact_phone: Option<&'a str>,
}

/// A valid enterprise update: `Some` fields replace the stored ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnterprisePatch {
    pub credit_code: Option<CreditCode>,
    pub name: Option<Name>,
    pub region_code: Option<RegionCode>,
    pub industry_code: Option<IndustryCode>,
    pub size: Option<EnterpriseSize>,
    pub above_designated_size: Option<bool>,
    pub employees: Option<Employees>,
    pub annual_revenue_minor: Option<NonNegativeMinor>,
    /// `Some(None)` clears.
    pub contact_name: Option<Option<Name>>,
    /// `Some(None)` clears.
    pub contact_phone: Option<Option<Phone>>,
}

impl EnterprisePatch {
    pub fn parse(input: &EnterprisePatchInput<'_>, prefix: &str) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let patch = Self {
            credit_code: input
                .credit_code
                .and_then(|s| v.field(path(prefix, "credit_code"), CreditCode::parse(s))),
            name: input
                .name
                .and_then(|s| v.field(path(prefix, "name"), Name::parse(s))),
            region_code: input
                .region_code
                .and_then(|s| v.field(path(prefix, "region_code"), RegionCode::parse(s))),
            industry_code: input
                .industry_code
                .and_then(|s| v.field(path(prefix, "industry_code"), IndustryCode::parse(s))),
            size: input
                .size
                .and_then(|s| v.field(path(prefix, "size"), EnterpriseSize::required(s))),
            above_designated_size: input.above_designated_size,
            employees: input
                .employees
                .and_then(|n| v.field(path(prefix, "employees"), Employees::new(n))),
            annual_revenue_minor: input.annual_revenue_minor.and_then(|n| {
                v.field(
                    path(prefix, "annual_revenue_minor"),
                    NonNegativeMinor::new(n),
                )
            }),
            contact_name: input
                .contact_name
                .and_then(|s| v.field(path(prefix, "contact_name"), optional(s, Name::parse))),
            contact_phone: input
                .contact_phone
                .and_then(|s| v.field(path(prefix, "contact_phone"), optional(s, Phone::parse))),
        };
        v.finish().map(|()| patch)
    }

    /// True when the patch changes nothing (an empty field mask).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The enterprise after the update.
    pub fn apply_to(&self, current: &NewEnterprise) -> NewEnterprise {
        let c = current.clone();
        NewEnterprise {
            credit_code: self.credit_code.unwrap_or(c.credit_code),
            name: self.name.clone().unwrap_or(c.name),
            region_code: self.region_code.unwrap_or(c.region_code),
            industry_code: self.industry_code.unwrap_or(c.industry_code),
            size: self.size.unwrap_or(c.size),
            above_designated_size: self
                .above_designated_size
                .unwrap_or(c.above_designated_size),
            employees: self.employees.unwrap_or(c.employees),
            annual_revenue_minor: self.annual_revenue_minor.unwrap_or(c.annual_revenue_minor),
            contact_name: self.contact_name.clone().unwrap_or(c.contact_name),
            contact_phone: self.contact_phone.clone().unwrap_or(c.contact_phone),
        }
    }
}

// --------------------------------------------------------------- designation

/// Raw fields of a designation (membership of a key-enterprise list).
#[derive(Debug, Clone, Copy, Default)]
pub struct DesignationInput<'a> {
    pub list_code: &'a str,
    pub granted_on: &'a str,
    /// `""` = no end date.
    pub expires_on: &'a str,
    /// `""` = no document reference.
    pub reference: &'a str,
}

/// A valid designation: `granted_on <= expires_on` when there is an end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDesignation {
    list_code: ListCode,
    granted_on: NaiveDate,
    expires_on: Option<NaiveDate>,
    reference: Option<Reference>,
}

impl NewDesignation {
    pub fn parse(input: &DesignationInput<'_>, prefix: &str) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let list_code = v.field(path(prefix, "list_code"), ListCode::parse(input.list_code));
        let granted_on = v.field(path(prefix, "granted_on"), parse_date(input.granted_on));
        let expires_on = v.field(
            path(prefix, "expires_on"),
            optional(input.expires_on, parse_date),
        );
        let reference = v.field(
            path(prefix, "reference"),
            optional(input.reference, Reference::parse),
        );
        if let (Some(from), Some(Some(to))) = (granted_on, expires_on)
            && to < from
        {
            v.add(
                path(prefix, "expires_on"),
                format!("must be on or after granted_on ({from}), got {to}"),
            );
        }
        match (list_code, granted_on, expires_on, reference) {
            (Some(list_code), Some(granted_on), Some(expires_on), Some(reference))
                if v.is_empty() =>
            {
                Ok(Self {
                    list_code,
                    granted_on,
                    expires_on,
                    reference,
                })
            }
            _ => Err(v),
        }
    }

    pub fn list_code(&self) -> &ListCode {
        &self.list_code
    }

    pub fn granted_on(&self) -> NaiveDate {
        self.granted_on
    }

    pub fn expires_on(&self) -> Option<NaiveDate> {
        self.expires_on
    }

    pub fn reference(&self) -> Option<&Reference> {
        self.reference.as_ref()
    }

    /// Whether the designation holds on `date` (both ends inclusive).
    pub fn is_valid_on(&self, date: NaiveDate) -> bool {
        self.granted_on <= date && self.expires_on.is_none_or(|end| date <= end)
    }
}

// -------------------------------------------------------------------- lender

/// Raw fields of a lender.
#[derive(Debug, Clone, Copy, Default)]
pub struct LenderInput<'a> {
    pub name: &'a str,
    pub kind: Option<LenderKind>,
    pub region_codes: &'a [String],
}

/// A valid lender: serves at least one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLender {
    name: Name,
    kind: LenderKind,
    region_codes: Vec<RegionCode>,
}

impl NewLender {
    pub fn parse(input: &LenderInput<'_>, prefix: &str) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let name = v.field(path(prefix, "name"), Name::parse(input.name));
        let kind = v.field(path(prefix, "kind"), LenderKind::required(input.kind));
        let region_codes = each(
            &mut v,
            prefix,
            "region_codes",
            input.region_codes,
            RegionCode::parse_area,
        );
        match (name, kind) {
            (Some(name), Some(kind)) if v.is_empty() => Ok(Self {
                name,
                kind,
                region_codes,
            }),
            _ => Err(v),
        }
    }

    pub fn name(&self) -> &Name {
        &self.name
    }

    pub fn kind(&self) -> LenderKind {
        self.kind
    }

    /// Empty for a lender serving the whole country; duplicates removed. Each
    /// as a 6-digit code: a code ending in `00` pairs (a 2- or 4-digit prefix
    /// as given) covers its whole prefecture or province
    /// ([`RegionCode::coverage`]).
    pub fn region_codes(&self) -> &[RegionCode] {
        &self.region_codes
    }
}

// ------------------------------------------------------------------- product

/// Raw fields of a loan product.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProductInput<'a> {
    pub lender_id: &'a str,
    pub name: &'a str,
    pub min_amount_minor: i64,
    pub max_amount_minor: i64,
    pub min_term_months: i32,
    pub max_term_months: i32,
    /// Empty = every industry.
    pub industry_prefixes: &'a [String],
    /// Empty = the lender's regions.
    pub region_prefixes: &'a [String],
    pub collateral_accepted: &'a [Option<Collateral>],
    /// `None` (unspecified) = no minimum, i.e. MICRO.
    pub min_size: Option<EnterpriseSize>,
    pub min_rate_bps: i32,
    pub max_rate_bps: i32,
    /// Empty = open to every enterprise; else the enterprise must hold any
    /// one of these lists.
    pub required_designations: &'a [String],
    pub daily_capacity: i32,
    pub response_sla_hours: i32,
    pub active: bool,
}

/// A valid loan product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    lender_id: Uuid,
    name: Name,
    amount: Bounds<AmountMinor>,
    term: Bounds<TermMonths>,
    rate: Bounds<Bps>,
    industry_prefixes: Vec<IndustryPrefix>,
    region_prefixes: Vec<RegionPrefix>,
    collateral_accepted: CollateralSet,
    min_size: EnterpriseSize,
    required_designations: Vec<ListCode>,
    daily_capacity: DailyCapacity,
    response_sla_hours: SlaHours,
    active: bool,
}

impl NewProduct {
    pub fn parse(input: &ProductInput<'_>, prefix: &str) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let lender_id = v.field(path(prefix, "lender_id"), parse_uuid(input.lender_id));
        let name = v.field(path(prefix, "name"), Name::parse(input.name));
        let min_amount = v.field(
            path(prefix, "min_amount_minor"),
            AmountMinor::new(input.min_amount_minor),
        );
        let max_amount = v.field(
            path(prefix, "max_amount_minor"),
            AmountMinor::new(input.max_amount_minor),
        );
        let amount = ordered(
            &mut v,
            prefix,
            "min_amount_minor",
            "max_amount_minor",
            min_amount,
            max_amount,
        );
        let min_term = v.field(
            path(prefix, "min_term_months"),
            TermMonths::new(input.min_term_months),
        );
        let max_term = v.field(
            path(prefix, "max_term_months"),
            TermMonths::new(input.max_term_months),
        );
        let term = ordered(
            &mut v,
            prefix,
            "min_term_months",
            "max_term_months",
            min_term,
            max_term,
        );
        let min_rate = v.field(path(prefix, "min_rate_bps"), Bps::new(input.min_rate_bps));
        let max_rate = v.field(path(prefix, "max_rate_bps"), Bps::new(input.max_rate_bps));
        let rate = ordered(
            &mut v,
            prefix,
            "min_rate_bps",
            "max_rate_bps",
            min_rate,
            max_rate,
        );
        let industry_prefixes = each(
            &mut v,
            prefix,
            "industry_prefixes",
            input.industry_prefixes,
            IndustryPrefix::parse,
        );
        let region_prefixes = each(
            &mut v,
            prefix,
            "region_prefixes",
            input.region_prefixes,
            RegionPrefix::parse,
        );
        let collateral_accepted = collateral_set(
            &mut v,
            prefix,
            "collateral_accepted",
            input.collateral_accepted,
        );
        let required_designations = each(
            &mut v,
            prefix,
            "required_designations",
            input.required_designations,
            ListCode::parse,
        );
        let daily_capacity = v.field(
            path(prefix, "daily_capacity"),
            DailyCapacity::new(input.daily_capacity),
        );
        let response_sla_hours = v.field(
            path(prefix, "response_sla_hours"),
            SlaHours::new(input.response_sla_hours),
        );
        match (
            lender_id,
            name,
            amount,
            term,
            rate,
            collateral_accepted,
            daily_capacity,
            response_sla_hours,
        ) {
            (
                Some(lender_id),
                Some(name),
                Some(amount),
                Some(term),
                Some(rate),
                Some(collateral_accepted),
                Some(daily_capacity),
                Some(response_sla_hours),
            ) if v.is_empty() => Ok(Self {
                lender_id,
                name,
                amount,
                term,
                rate,
                industry_prefixes,
                region_prefixes,
                collateral_accepted,
                min_size: input.min_size.unwrap_or(EnterpriseSize::Micro),
                required_designations,
                daily_capacity,
                response_sla_hours,
                active: input.active,
            }),
            _ => Err(v),
        }
    }

    pub fn lender_id(&self) -> Uuid {
        self.lender_id
    }
    pub fn name(&self) -> &Name {
        &self.name
    }
    pub fn amount(&self) -> Bounds<AmountMinor> {
        self.amount
    }
    pub fn term(&self) -> Bounds<TermMonths> {
        self.term
    }
    pub fn rate(&self) -> Bounds<Bps> {
        self.rate
    }
    /// Empty = every industry.
    pub fn industry_prefixes(&self) -> &[IndustryPrefix] {
        &self.industry_prefixes
    }
    /// Empty = the lender's regions.
    pub fn region_prefixes(&self) -> &[RegionPrefix] {
        &self.region_prefixes
    }
    /// Never empty.
    pub fn collateral_accepted(&self) -> CollateralSet {
        self.collateral_accepted
    }
    pub fn min_size(&self) -> EnterpriseSize {
        self.min_size
    }
    /// Empty = no designation needed; else any one of these.
    pub fn required_designations(&self) -> &[ListCode] {
        &self.required_designations
    }
    pub fn daily_capacity(&self) -> DailyCapacity {
        self.daily_capacity
    }
    pub fn response_sla_hours(&self) -> SlaHours {
        self.response_sla_hours
    }
    pub fn active(&self) -> bool {
        self.active
    }
}

/// Raw fields of a product update: `Some` for each path in the field mask.
/// A repeated field in the mask is replaced as a whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProductPatchInput<'a> {
    pub name: Option<&'a str>,
    pub min_amount_minor: Option<i64>,
    pub max_amount_minor: Option<i64>,
    pub min_term_months: Option<i32>,
    pub max_term_months: Option<i32>,
    pub industry_prefixes: Option<&'a [String]>,
    pub region_prefixes: Option<&'a [String]>,
    pub collateral_accepted: Option<&'a [Option<Collateral>]>,
    /// `Some(None)` = no minimum (MICRO).
    pub min_size: Option<Option<EnterpriseSize>>,
    pub min_rate_bps: Option<i32>,
    pub max_rate_bps: Option<i32>,
    pub required_designations: Option<&'a [String]>,
    pub daily_capacity: Option<i32>,
    pub response_sla_hours: Option<i32>,
    pub active: Option<bool>,
}

/// A valid product update. Ranges are checked again against the stored
/// product by [`ProductPatch::apply_to`], since a patch may move one end only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProductPatch {
    pub name: Option<Name>,
    pub min_amount_minor: Option<AmountMinor>,
    pub max_amount_minor: Option<AmountMinor>,
    pub min_term_months: Option<TermMonths>,
    pub max_term_months: Option<TermMonths>,
    pub industry_prefixes: Option<Vec<IndustryPrefix>>,
    pub region_prefixes: Option<Vec<RegionPrefix>>,
    pub collateral_accepted: Option<CollateralSet>,
    pub min_size: Option<EnterpriseSize>,
    pub min_rate_bps: Option<Bps>,
    pub max_rate_bps: Option<Bps>,
    pub required_designations: Option<Vec<ListCode>>,
    pub daily_capacity: Option<DailyCapacity>,
    pub response_sla_hours: Option<SlaHours>,
    pub active: Option<bool>,
}

impl ProductPatch {
    pub fn parse(input: &ProductPatchInput<'_>, prefix: &str) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let p = prefix;
        let patch = Self {
            name: input
                .name
                .and_then(|s| v.field(path(p, "name"), Name::parse(s))),
            min_amount_minor: input
                .min_amount_minor
                .and_then(|n| v.field(path(p, "min_amount_minor"), AmountMinor::new(n))),
            max_amount_minor: input
                .max_amount_minor
                .and_then(|n| v.field(path(p, "max_amount_minor"), AmountMinor::new(n))),
            min_term_months: input
                .min_term_months
                .and_then(|n| v.field(path(p, "min_term_months"), TermMonths::new(n))),
            max_term_months: input
                .max_term_months
                .and_then(|n| v.field(path(p, "max_term_months"), TermMonths::new(n))),
            industry_prefixes: input
                .industry_prefixes
                .map(|raw| each(&mut v, p, "industry_prefixes", raw, IndustryPrefix::parse)),
            region_prefixes: input
                .region_prefixes
                .map(|raw| each(&mut v, p, "region_prefixes", raw, RegionPrefix::parse)),
            collateral_accepted: input
                .collateral_accepted
                .and_then(|raw| collateral_set(&mut v, p, "collateral_accepted", raw)),
            min_size: input.min_size.map(|s| s.unwrap_or(EnterpriseSize::Micro)),
            min_rate_bps: input
                .min_rate_bps
                .and_then(|n| v.field(path(p, "min_rate_bps"), Bps::new(n))),
            max_rate_bps: input
                .max_rate_bps
                .and_then(|n| v.field(path(p, "max_rate_bps"), Bps::new(n))),
            required_designations: input
                .required_designations
                .map(|raw| each(&mut v, p, "required_designations", raw, ListCode::parse)),
            daily_capacity: input
                .daily_capacity
                .and_then(|n| v.field(path(p, "daily_capacity"), DailyCapacity::new(n))),
            response_sla_hours: input
                .response_sla_hours
                .and_then(|n| v.field(path(p, "response_sla_hours"), SlaHours::new(n))),
            active: input.active,
        };
        // Ends given together are checked now; one end alone in apply_to.
        ordered(
            &mut v,
            p,
            "min_amount_minor",
            "max_amount_minor",
            patch.min_amount_minor,
            patch.max_amount_minor,
        );
        ordered(
            &mut v,
            p,
            "min_term_months",
            "max_term_months",
            patch.min_term_months,
            patch.max_term_months,
        );
        ordered(
            &mut v,
            p,
            "min_rate_bps",
            "max_rate_bps",
            patch.min_rate_bps,
            patch.max_rate_bps,
        );
        v.finish().map(|()| patch)
    }

    /// True when the patch changes nothing (an empty field mask).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The product after the update, or a violation for each range the
    /// update would invert (e.g. a new minimum above the stored maximum).
    pub fn apply_to(&self, current: &NewProduct, prefix: &str) -> Result<NewProduct, Violations> {
        let mut v = Violations::default();
        let amount = ordered(
            &mut v,
            prefix,
            "min_amount_minor",
            "max_amount_minor",
            Some(self.min_amount_minor.unwrap_or(current.amount.min())),
            Some(self.max_amount_minor.unwrap_or(current.amount.max())),
        );
        let term = ordered(
            &mut v,
            prefix,
            "min_term_months",
            "max_term_months",
            Some(self.min_term_months.unwrap_or(current.term.min())),
            Some(self.max_term_months.unwrap_or(current.term.max())),
        );
        let rate = ordered(
            &mut v,
            prefix,
            "min_rate_bps",
            "max_rate_bps",
            Some(self.min_rate_bps.unwrap_or(current.rate.min())),
            Some(self.max_rate_bps.unwrap_or(current.rate.max())),
        );
        match (amount, term, rate) {
            (Some(amount), Some(term), Some(rate)) => Ok(NewProduct {
                lender_id: current.lender_id,
                name: self.name.clone().unwrap_or_else(|| current.name.clone()),
                amount,
                term,
                rate,
                industry_prefixes: self
                    .industry_prefixes
                    .clone()
                    .unwrap_or_else(|| current.industry_prefixes.clone()),
                region_prefixes: self
                    .region_prefixes
                    .clone()
                    .unwrap_or_else(|| current.region_prefixes.clone()),
                collateral_accepted: self
                    .collateral_accepted
                    .unwrap_or(current.collateral_accepted),
                min_size: self.min_size.unwrap_or(current.min_size),
                required_designations: self
                    .required_designations
                    .clone()
                    .unwrap_or_else(|| current.required_designations.clone()),
                daily_capacity: self.daily_capacity.unwrap_or(current.daily_capacity),
                response_sla_hours: self
                    .response_sla_hours
                    .unwrap_or(current.response_sla_hours),
                active: self.active.unwrap_or(current.active),
            }),
            _ => Err(v),
        }
    }
}

// ---------------------------------------------------------------------- need

/// Raw fields of a financing need.
#[derive(Debug, Clone, Copy, Default)]
pub struct NeedInput<'a> {
    pub enterprise_id: &'a str,
    pub amount_minor: i64,
    pub term_months: i32,
    pub purpose: Option<Purpose>,
    pub collateral: &'a [Option<Collateral>],
    /// `None` = any rate.
    pub max_rate_bps: Option<i32>,
    pub needed_by: &'a str,
    pub consent_to_share: bool,
    pub channel: Option<Channel>,
    pub note: &'a str,
}

/// A valid financing need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNeed {
    enterprise_id: Uuid,
    amount: AmountMinor,
    term: TermMonths,
    purpose: Purpose,
    collateral: CollateralSet,
    max_rate: Option<Bps>,
    needed_by: NaiveDate,
    consent_to_share: bool,
    channel: Channel,
    note: Note,
}

impl NewNeed {
    /// `today` is the submission date: `needed_by` may not be before it.
    pub fn parse(
        input: &NeedInput<'_>,
        prefix: &str,
        today: NaiveDate,
    ) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let enterprise_id = v.field(
            path(prefix, "enterprise_id"),
            parse_uuid(input.enterprise_id),
        );
        let amount = v.field(
            path(prefix, "amount_minor"),
            AmountMinor::new(input.amount_minor),
        );
        let term = v.field(
            path(prefix, "term_months"),
            TermMonths::new(input.term_months),
        );
        let purpose = v.field(path(prefix, "purpose"), Purpose::required(input.purpose));
        let collateral = collateral_set(&mut v, prefix, "collateral", input.collateral);
        let max_rate = match input.max_rate_bps {
            None => Some(None),
            Some(n) => v.field(path(prefix, "max_rate_bps"), Bps::new(n)).map(Some),
        };
        let needed_by = v.field(path(prefix, "needed_by"), parse_date(input.needed_by));
        if let Some(date) = needed_by
            && date < today
        {
            v.add(
                path(prefix, "needed_by"),
                format!("must not be in the past (today is {today}), got {date}"),
            );
        }
        let channel = v.field(path(prefix, "channel"), Channel::required(input.channel));
        let note = v.field(path(prefix, "note"), Note::parse(input.note));
        match (
            enterprise_id,
            amount,
            term,
            purpose,
            collateral,
            max_rate,
            needed_by,
            channel,
            note,
        ) {
            (
                Some(enterprise_id),
                Some(amount),
                Some(term),
                Some(purpose),
                Some(collateral),
                Some(max_rate),
                Some(needed_by),
                Some(channel),
                Some(note),
            ) if v.is_empty() => Ok(Self {
                enterprise_id,
                amount,
                term,
                purpose,
                collateral,
                max_rate,
                needed_by,
                consent_to_share: input.consent_to_share,
                channel,
                note,
            }),
            _ => Err(v),
        }
    }

    pub fn enterprise_id(&self) -> Uuid {
        self.enterprise_id
    }
    pub fn amount(&self) -> AmountMinor {
        self.amount
    }
    pub fn term(&self) -> TermMonths {
        self.term
    }
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }
    /// Never empty.
    pub fn collateral(&self) -> CollateralSet {
        self.collateral
    }
    pub fn max_rate(&self) -> Option<Bps> {
        self.max_rate
    }
    pub fn needed_by(&self) -> NaiveDate {
        self.needed_by
    }
    pub fn consent_to_share(&self) -> bool {
        self.consent_to_share
    }
    pub fn channel(&self) -> Channel {
        self.channel
    }
    pub fn note(&self) -> &Note {
        &self.note
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: &Violations) -> Vec<&str> {
        v.violations().iter().map(|f| f.field.as_str()).collect()
    }

    fn description<'v>(v: &'v Violations, field: &str) -> &'v str {
        &v.violations()
            .iter()
            .find(|f| f.field == field)
            .unwrap_or_else(|| panic!("no violation for {field}: {v}"))
            .description
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn date(s: &str) -> NaiveDate {
        parse_date(s).unwrap()
    }

    const LENDER: &str = "0190f5e2-6a8b-7c3d-9e4f-123456789abc";

    fn good_enterprise() -> EnterpriseInput<'static> {
        EnterpriseInput {
            credit_code: "91350100M000100Y43",
            name: "随州市某某制药有限公司",
            region_code: "421303",
            industry_code: "C2720",
            size: Some(EnterpriseSize::Small),
            above_designated_size: true,
            employees: 120,
            annual_revenue_minor: 8_000_000_000,
            contact_name: "王芳",
            contact_phone: "+86 722 1234567",
        }
    }

    #[test]
    fn enterprise_parses_with_optional_contact() {
        let e = NewEnterprise::parse(&good_enterprise(), "enterprise.").unwrap();
        assert_eq!(e.credit_code.as_str(), "91350100M000100Y43");
        assert_eq!(e.region_code.as_str(), "421303");
        assert_eq!(e.size, EnterpriseSize::Small);
        assert_eq!(e.annual_revenue_minor.get(), 8_000_000_000);
        assert_eq!(
            e.contact_phone.as_ref().map(Phone::as_str),
            Some("+86 722 1234567")
        );
        let no_contact = EnterpriseInput {
            contact_name: "",
            contact_phone: " ",
            ..good_enterprise()
        };
        let e = NewEnterprise::parse(&no_contact, "").unwrap();
        assert_eq!((e.contact_name, e.contact_phone), (None, None));
    }

    #[test]
    fn enterprise_reports_every_bad_field_under_the_callers_prefix() {
        let bad = EnterpriseInput {
            credit_code: "91350100M000100Y44",
            name: "",
            region_code: "42130",
            industry_code: "A27",
            size: None,
            above_designated_size: false,
            employees: -1,
            annual_revenue_minor: -5,
            contact_name: "",
            contact_phone: "call me",
        };
        let v = NewEnterprise::parse(&bad, "enterprise.").unwrap_err();
        assert_eq!(
            fields(&v),
            [
                "enterprise.credit_code",
                "enterprise.name",
                "enterprise.region_code",
                "enterprise.industry_code",
                "enterprise.size",
                "enterprise.employees",
                "enterprise.annual_revenue_minor",
                "enterprise.contact_phone",
            ]
        );
        assert_eq!(
            description(&v, "enterprise.credit_code"),
            "check character is '4' but should be '3'"
        );
        assert_eq!(
            description(&v, "enterprise.size"),
            "must be specified; expected one of ENTERPRISE_SIZE_MICRO, ENTERPRISE_SIZE_SMALL, \
             ENTERPRISE_SIZE_MEDIUM, ENTERPRISE_SIZE_LARGE"
        );
    }

    #[test]
    fn enterprise_patch_validates_only_named_fields_and_applies() {
        let current = NewEnterprise::parse(&good_enterprise(), "").unwrap();
        let input = EnterprisePatchInput {
            name: Some("新名字"),
            employees: Some(150),
            contact_phone: Some(""),
            ..Default::default()
        };
        let patch = EnterprisePatch::parse(&input, "enterprise.").unwrap();
        assert!(!patch.is_empty());
        let updated = patch.apply_to(&current);
        assert_eq!(updated.name.as_str(), "新名字");
        assert_eq!(updated.employees.get(), 150);
        assert_eq!(updated.contact_phone, None);
        assert_eq!(updated.contact_name, current.contact_name);
        assert_eq!(updated.credit_code, current.credit_code);
        assert!(
            EnterprisePatch::parse(&EnterprisePatchInput::default(), "")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn enterprise_patch_reports_each_bad_named_field() {
        let input = EnterprisePatchInput {
            region_code: Some("99"),
            size: Some(None),
            annual_revenue_minor: Some(-1),
            ..Default::default()
        };
        let v = EnterprisePatch::parse(&input, "enterprise.").unwrap_err();
        assert_eq!(
            fields(&v),
            [
                "enterprise.region_code",
                "enterprise.size",
                "enterprise.annual_revenue_minor"
            ]
        );
    }

    #[test]
    fn designation_checks_its_dates() {
        let d = NewDesignation::parse(
            &DesignationInput {
                list_code: "national_key_supply",
                granted_on: "2020-02-10",
                expires_on: "2020-12-31",
                reference: "发改办〔2020〕1号",
            },
            "",
        )
        .unwrap();
        assert_eq!(d.list_code().as_str(), "NATIONAL_KEY_SUPPLY");
        assert!(!d.is_valid_on(date("2020-02-09")));
        assert!(d.is_valid_on(date("2020-02-10")));
        assert!(d.is_valid_on(date("2020-12-31")));
        assert!(!d.is_valid_on(date("2021-01-01")));

        let open = NewDesignation::parse(
            &DesignationInput {
                list_code: "LOCAL_KEY",
                granted_on: "2020-02-10",
                ..Default::default()
            },
            "",
        )
        .unwrap();
        assert_eq!(open.expires_on(), None);
        assert_eq!(open.reference(), None);
        assert!(open.is_valid_on(date("2099-01-01")));

        let v = NewDesignation::parse(
            &DesignationInput {
                list_code: "LOCAL_KEY",
                granted_on: "2020-02-10",
                expires_on: "2020-02-09",
                reference: "",
            },
            "designation.",
        )
        .unwrap_err();
        assert_eq!(fields(&v), ["designation.expires_on"]);
        assert_eq!(
            description(&v, "designation.expires_on"),
            "must be on or after granted_on (2020-02-10), got 2020-02-09"
        );
    }

    #[test]
    fn designation_reports_every_bad_field() {
        let v = NewDesignation::parse(
            &DesignationInput {
                list_code: "x",
                granted_on: "2020-02-30",
                expires_on: "soon",
                reference: "",
            },
            "",
        )
        .unwrap_err();
        assert_eq!(fields(&v), ["list_code", "granted_on", "expires_on"]);
    }

    #[test]
    fn lender_regions_are_provinces_prefectures_or_counties_and_empty_is_nationwide() {
        let regions = strings(&["420000", "4213", "42", "421303"]);
        let l = NewLender::parse(
            &LenderInput {
                name: "湖北银行随州分行",
                kind: Some(LenderKind::CityCommercial),
                region_codes: &regions,
            },
            "",
        )
        .unwrap();
        // "42" is 420000 again, so it is dropped as a duplicate.
        assert_eq!(
            l.region_codes()
                .iter()
                .map(RegionCode::as_str)
                .collect::<Vec<_>>(),
            ["420000", "421300", "421303"]
        );
        assert_eq!(l.kind(), LenderKind::CityCommercial);

        let bad_regions = strings(&["421300", "421", "990000"]);
        let v = NewLender::parse(
            &LenderInput {
                name: "",
                kind: None,
                region_codes: &bad_regions,
            },
            "lender.",
        )
        .unwrap_err();
        assert_eq!(
            fields(&v),
            [
                "lender.name",
                "lender.kind",
                "lender.region_codes[1]",
                "lender.region_codes[2]"
            ]
        );
        let nationwide = NewLender::parse(
            &LenderInput {
                name: "A bank",
                kind: Some(LenderKind::Rural),
                region_codes: &[],
            },
            "",
        )
        .unwrap();
        assert!(nationwide.region_codes().is_empty());
    }

    fn product_input<'a>(
        industries: &'a [String],
        regions: &'a [String],
        collateral: &'a [Option<Collateral>],
        designations: &'a [String],
    ) -> ProductInput<'a> {
        ProductInput {
            lender_id: LENDER,
            name: "抗疫保供贷",
            min_amount_minor: 10_000_000,
            max_amount_minor: 5_000_000_000,
            min_term_months: 3,
            max_term_months: 12,
            industry_prefixes: industries,
            region_prefixes: regions,
            collateral_accepted: collateral,
            min_size: None,
            min_rate_bps: 315,
            max_rate_bps: 435,
            required_designations: designations,
            daily_capacity: 20,
            response_sla_hours: 48,
            active: true,
        }
    }

    #[test]
    fn product_parses_and_defaults_min_size_to_micro() {
        let industries = strings(&["C27", "c", "C27"]);
        let regions = strings(&["4213"]);
        let collateral = [Some(Collateral::Credit), Some(Collateral::Guarantee)];
        let designations = strings(&["NATIONAL_KEY_SUPPLY"]);
        let p = NewProduct::parse(
            &product_input(&industries, &regions, &collateral, &designations),
            "",
        )
        .unwrap();
        assert_eq!(p.lender_id().to_string(), LENDER);
        assert_eq!(p.amount().min().get(), 10_000_000);
        assert_eq!(p.term().max().get(), 12);
        assert_eq!(p.rate().min().get(), 315);
        assert_eq!(
            p.industry_prefixes()
                .iter()
                .map(IndustryPrefix::as_str)
                .collect::<Vec<_>>(),
            ["C27", "C"]
        );
        assert_eq!(p.collateral_accepted().len(), 2);
        assert_eq!(p.min_size(), EnterpriseSize::Micro);
        assert_eq!(p.required_designations()[0].as_str(), "NATIONAL_KEY_SUPPLY");
        assert_eq!(p.daily_capacity().get(), 20);
        assert_eq!(p.response_sla_hours().get(), 48);
        assert!(p.active());
    }

    #[test]
    fn product_reports_inverted_ranges_and_every_bad_field() {
        let industries = strings(&["C2"]);
        let collateral = [Some(Collateral::Credit), None];
        let input = ProductInput {
            lender_id: "nope",
            min_amount_minor: 5_000,
            max_amount_minor: 4_000,
            min_term_months: 12,
            max_term_months: 3,
            min_rate_bps: 500,
            max_rate_bps: 400,
            daily_capacity: 0,
            response_sla_hours: 0,
            ..product_input(&industries, &[], &collateral, &[])
        };
        let v = NewProduct::parse(&input, "product.").unwrap_err();
        assert_eq!(
            fields(&v),
            [
                "product.lender_id",
                "product.max_amount_minor",
                "product.max_term_months",
                "product.max_rate_bps",
                "product.industry_prefixes[0]",
                "product.collateral_accepted[1]",
                "product.daily_capacity",
                "product.response_sla_hours",
            ]
        );
        assert_eq!(
            description(&v, "product.max_amount_minor"),
            "must be at least min_amount_minor (5000), got 4000"
        );
        let v = NewProduct::parse(&product_input(&[], &[], &[], &[]), "").unwrap_err();
        assert_eq!(
            description(&v, "collateral_accepted"),
            "must name at least one of COLLATERAL_CREDIT, COLLATERAL_GUARANTEE, COLLATERAL_REAL_ESTATE, COLLATERAL_EQUIPMENT, COLLATERAL_RECEIVABLES, COLLATERAL_IP_PLEDGE, COLLATERAL_INVENTORY"
        );
    }

    #[test]
    fn repeated_fields_are_bounded() {
        let many: Vec<String> = (0..=MAX_LIST_LEN).map(|_| "42".to_owned()).collect();
        let collateral = [Some(Collateral::Credit)];
        let v = NewProduct::parse(&product_input(&[], &many, &collateral, &[]), "").unwrap_err();
        assert_eq!(fields(&v), ["region_prefixes"]);
        assert_eq!(
            description(&v, "region_prefixes"),
            "must have at most 1000 entries, got 1001"
        );
    }

    #[test]
    fn product_patch_rechecks_ranges_against_the_stored_product() {
        let collateral = [Some(Collateral::Credit)];
        let current = NewProduct::parse(&product_input(&[], &[], &collateral, &[]), "").unwrap();
        // Raising the minimum above the stored maximum is caught on apply.
        let patch = ProductPatch::parse(
            &ProductPatchInput {
                min_term_months: Some(24),
                ..Default::default()
            },
            "product.",
        )
        .unwrap();
        let v = patch.apply_to(&current, "product.").unwrap_err();
        assert_eq!(fields(&v), ["product.max_term_months"]);
        assert_eq!(
            description(&v, "product.max_term_months"),
            "must be at least min_term_months (24), got 12"
        );
        // A consistent patch applies and keeps the other fields.
        let patch = ProductPatch::parse(
            &ProductPatchInput {
                min_term_months: Some(24),
                max_term_months: Some(36),
                min_size: Some(Some(EnterpriseSize::Medium)),
                active: Some(false),
                ..Default::default()
            },
            "",
        )
        .unwrap();
        let updated = patch.apply_to(&current, "").unwrap();
        assert_eq!(
            (updated.term().min().get(), updated.term().max().get()),
            (24, 36)
        );
        assert_eq!(updated.min_size(), EnterpriseSize::Medium);
        assert!(!updated.active());
        assert_eq!(updated.amount(), current.amount());
        assert_eq!(updated.name(), current.name());
    }

    #[test]
    fn product_patch_reports_bad_fields_and_inverted_pairs() {
        let v = ProductPatch::parse(
            &ProductPatchInput {
                min_rate_bps: Some(600),
                max_rate_bps: Some(500),
                collateral_accepted: Some(&[]),
                daily_capacity: Some(0),
                ..Default::default()
            },
            "",
        )
        .unwrap_err();
        assert_eq!(
            fields(&v),
            ["collateral_accepted", "daily_capacity", "max_rate_bps"]
        );
        assert!(
            ProductPatch::parse(&ProductPatchInput::default(), "")
                .unwrap()
                .is_empty()
        );
    }

    const ENTERPRISE: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

    fn need_input(collateral: &[Option<Collateral>]) -> NeedInput<'_> {
        NeedInput {
            enterprise_id: ENTERPRISE,
            amount_minor: 300_000_000,
            term_months: 12,
            purpose: Some(Purpose::WorkingCapital),
            collateral,
            max_rate_bps: Some(450),
            needed_by: "2020-03-31",
            consent_to_share: true,
            channel: Some(Channel::Bureau),
            note: "复工复产原材料采购",
        }
    }

    #[test]
    fn need_parses() {
        let collateral = [Some(Collateral::Guarantee), Some(Collateral::Credit)];
        let n = NewNeed::parse(&need_input(&collateral), "need.", date("2020-02-20")).unwrap();
        assert_eq!(n.enterprise_id().to_string(), ENTERPRISE);
        assert_eq!(n.amount().get(), 300_000_000);
        assert_eq!(n.term().get(), 12);
        assert_eq!(n.purpose(), Purpose::WorkingCapital);
        assert!(n.collateral().contains(Collateral::Guarantee));
        assert_eq!(n.max_rate().map(Bps::get), Some(450));
        assert_eq!(n.needed_by(), date("2020-03-31"));
        assert!(n.consent_to_share());
        assert_eq!(n.channel(), Channel::Bureau);
        assert_eq!(n.note().as_str(), "复工复产原材料采购");
        let any_rate = NeedInput {
            max_rate_bps: None,
            ..need_input(&collateral)
        };
        assert_eq!(
            NewNeed::parse(&any_rate, "", date("2020-02-20"))
                .unwrap()
                .max_rate(),
            None
        );
    }

    #[test]
    fn need_with_five_bad_fields_gets_five_violations() {
        let input = NeedInput {
            amount_minor: 0,
            term_months: 601,
            purpose: None,
            max_rate_bps: Some(-1),
            needed_by: "2020-02-19",
            ..need_input(&[Some(Collateral::Credit)])
        };
        let v = NewNeed::parse(&input, "need.", date("2020-02-20")).unwrap_err();
        assert_eq!(
            fields(&v),
            [
                "need.amount_minor",
                "need.term_months",
                "need.purpose",
                "need.max_rate_bps",
                "need.needed_by",
            ]
        );
        assert_eq!(
            description(&v, "need.needed_by"),
            "must not be in the past (today is 2020-02-20), got 2020-02-19"
        );
    }

    #[test]
    fn need_requires_collateral_channel_and_an_id() {
        let input = NeedInput {
            enterprise_id: "",
            channel: None,
            note: &"x".repeat(2001),
            ..need_input(&[])
        };
        let v = NewNeed::parse(&input, "", date("2020-02-20")).unwrap_err();
        assert_eq!(
            fields(&v),
            ["enterprise_id", "collateral", "channel", "note"]
        );
        let v = NewNeed::parse(&need_input(&[None]), "", date("2020-02-20")).unwrap_err();
        assert_eq!(fields(&v), ["collateral[0]"]);
    }
}
