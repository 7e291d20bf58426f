//! What the engine needs to know about a need, its enterprise, the products
//! and the lenders. Built by the service from stored rows (products usually
//! from an in-memory cache); nothing here touches a database.

use std::collections::HashMap;

use uuid::Uuid;

use crate::domain::{
    AmountMinor, Bounds, Bps, CollateralSet, DailyCapacity, EnterpriseSize, IndustryCode,
    IndustryPrefix, ListCode, NewNeed, NewProduct, RegionCode, RegionPrefix, TermMonths,
};

/// The parts of a financing need that matching uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchNeed {
    pub amount: AmountMinor,
    pub term: TermMonths,
    /// What the enterprise offers; a product must accept at least one.
    pub collateral: CollateralSet,
    /// `None` = any rate.
    pub max_rate: Option<Bps>,
    /// Without consent no product is eligible (the need is never shown to a
    /// lender).
    pub consent_to_share: bool,
}

impl From<&NewNeed> for MatchNeed {
    fn from(need: &NewNeed) -> Self {
        Self {
            amount: need.amount(),
            term: need.term(),
            collateral: need.collateral(),
            max_rate: need.max_rate(),
            consent_to_share: need.consent_to_share(),
        }
    }
}

/// The parts of the need's enterprise that matching uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchEnterprise {
    pub region_code: RegionCode,
    pub industry_code: IndustryCode,
    pub size: EnterpriseSize,
    /// List codes of the designations valid today (the caller filters by
    /// validity dates).
    pub designations: Vec<ListCode>,
}

/// A product with its lender's data, as matching sees it: the definition,
/// which changes only when an operator edits it. Today's counters are in
/// [`Activity`]. Products are compiled into a
/// [`ProductCatalog`](super::ProductCatalog) once and shared by requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchProduct {
    pub product_id: Uuid,
    pub lender_id: Uuid,
    pub product_active: bool,
    pub lender_active: bool,
    /// Regions the lender serves (a code ending in `00` pairs covers its
    /// whole prefecture or province).
    pub lender_region_codes: Vec<RegionCode>,
    pub amount: Bounds<AmountMinor>,
    pub term: Bounds<TermMonths>,
    pub rate: Bounds<Bps>,
    /// Empty = every industry.
    pub industry_prefixes: Vec<IndustryPrefix>,
    /// Empty = the lender's regions.
    pub region_prefixes: Vec<RegionPrefix>,
    pub collateral_accepted: CollateralSet,
    pub min_size: EnterpriseSize,
    /// Empty = open to all; else the enterprise must hold any one.
    pub required_designations: Vec<ListCode>,
    pub daily_capacity: DailyCapacity,
}

impl MatchProduct {
    /// From a stored product and its lender's data.
    pub fn from_product(
        product_id: Uuid,
        product: &NewProduct,
        lender_active: bool,
        lender_region_codes: Vec<RegionCode>,
    ) -> Self {
        Self {
            product_id,
            lender_id: product.lender_id(),
            product_active: product.active(),
            lender_active,
            lender_region_codes,
            amount: product.amount(),
            term: product.term(),
            rate: product.rate(),
            industry_prefixes: product.industry_prefixes().to_vec(),
            region_prefixes: product.region_prefixes().to_vec(),
            collateral_accepted: product.collateral_accepted(),
            min_size: product.min_size(),
            required_designations: product.required_designations().to_vec(),
            daily_capacity: product.daily_capacity(),
        }
    }
}

/// A lender's record, counted by the service (for example over the last 90
/// days). A lender missing from the statistics map counts as all zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LenderStats {
    /// Referrals the lender approved.
    pub approvals: u32,
    /// Referrals the lender approved or declined.
    pub decisions: u32,
    /// Referrals answered (acknowledged or decided) before their SLA deadline.
    pub sla_met: u32,
    /// Referrals whose deadline has passed or that were answered: `sla_met`
    /// plus those that expired or were answered late.
    pub sla_due: u32,
    /// Referrals the lender received today, over all its products: breaks
    /// ties between equal scores so load spreads.
    pub referrals_today: u32,
}

/// What has happened so far: per-request counters, read by the service
/// (for routing, from SQL in the routing transaction). Anything absent counts
/// as zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// Per lender id.
    pub lender_stats: HashMap<Uuid, LenderStats>,
    /// Referrals each product (by id) has received today: its daily
    /// capacity is used up when this reaches `daily_capacity`.
    pub product_referrals_today: HashMap<Uuid, u32>,
}
