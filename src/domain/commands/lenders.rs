//! Commands on lenders and their loan products.

use super::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::commands::test_support::*;

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
}
