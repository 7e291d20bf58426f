//! Commands on enterprises and their designations.

use super::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::commands::test_support::*;

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
}
