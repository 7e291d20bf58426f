//! Hard filters, scoring and ranking (DESIGN §3).
//!
//! The hot path allocates a few `Vec`s per evaluation and nothing per
//! product: it reads the [`ProductCatalog`]'s packed records in order,
//! reasons are a bitset, factor values a fixed array, and every
//! human-readable text is produced on demand by [`Candidate`]'s methods.

use std::fmt::{Display, Write as _};

use uuid::Uuid;

use super::catalog::{
    DESIGNATIONS_BY_NAME, GATED, HotProduct, LENDER_ACTIVE, PRODUCT_ACTIVE, log2_fixed,
};
use super::{
    Activity, Factor, LenderStats, MatchEnterprise, MatchNeed, MatchProduct, ProductCatalog,
    RoutingPolicy,
};
use crate::domain::{EnterpriseSize, ListCode, format_cny, format_percent, shared_levels_packed};

crate::domain::canonical_enum! {
    /// Why a product cannot take a need. A product lists every reason that applies. The names
    /// are the proto's `Ineligibility` values (`INELIGIBILITY_` then the canonical name), so the
    /// wire conversion is the same bridge as every other enum's.
    IneligibleReason("INELIGIBILITY_") {
        ProductInactive = "PRODUCT_INACTIVE",
        LenderInactive = "LENDER_INACTIVE",
        AmountOutOfRange = "AMOUNT_OUT_OF_RANGE",
        TermOutOfRange = "TERM_OUT_OF_RANGE",
        RegionNotServed = "REGION_NOT_SERVED",
        IndustryNotServed = "INDUSTRY_NOT_SERVED",
        CollateralNotAccepted = "COLLATERAL_NOT_ACCEPTED",
        SizeBelowMinimum = "SIZE_BELOW_MINIMUM",
        DesignationMissing = "DESIGNATION_MISSING",
        /// The need's maximum rate is below the product's minimum rate.
        RateBelowMinimum = "RATE_BELOW_MINIMUM",
        CapacityExhausted = "CAPACITY_EXHAUSTED",
        AlreadyTried = "ALREADY_TRIED",
        NoConsent = "NO_CONSENT",
    }
}

impl IneligibleReason {
    /// A generic sentence; [`Candidate::reason_message`] gives the figures.
    pub const fn describe(self) -> &'static str {
        match self {
            IneligibleReason::ProductInactive => "the product is inactive",
            IneligibleReason::LenderInactive => "the lender is inactive",
            IneligibleReason::AmountOutOfRange => "the amount is outside the product's range",
            IneligibleReason::TermOutOfRange => "the term is outside the product's range",
            IneligibleReason::RegionNotServed => "the enterprise's region is not served",
            IneligibleReason::IndustryNotServed => "the enterprise's industry is not served",
            IneligibleReason::CollateralNotAccepted => "none of the offered collateral is accepted",
            IneligibleReason::SizeBelowMinimum => {
                "the enterprise is below the product's minimum size"
            }
            IneligibleReason::DesignationMissing => {
                "the enterprise holds none of the required designations"
            }
            IneligibleReason::RateBelowMinimum => {
                "the product's minimum rate is above the need's maximum rate"
            }
            IneligibleReason::CapacityExhausted => "the product's daily capacity is used up",
            IneligibleReason::AlreadyTried => "the lender has already been tried for this need",
            IneligibleReason::NoConsent => "the enterprise has not consented to share the need",
        }
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A set of [`IneligibleReason`]s as a bitset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReasonSet(u16);

impl ReasonSet {
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn contains(&self, reason: IneligibleReason) -> bool {
        self.0 & reason.bit() != 0
    }

    /// In [`IneligibleReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = IneligibleReason> + use<> {
        let bits = self.0;
        IneligibleReason::ALL
            .iter()
            .copied()
            .filter(move |r| bits & r.bit() != 0)
    }
}

/// One factor of a score, as in the proto's `ScoreFactor` (without the note,
/// see [`Candidate::factor_note`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactorScore {
    pub factor: Factor,
    /// 0..=10,000.
    pub value_bps: i32,
    pub weight_bps: i32,
    /// value × weight in score points (1,000 = a perfect score), rounded
    /// down; a candidate's score is the sum of its points.
    pub points: i32,
}

/// A product evaluated against a need: eligibility with every reason, score
/// and the inputs to explain both.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    product: &'a MatchProduct,
    stats: &'a LenderStats,
    need: &'a MatchNeed,
    enterprise: &'a MatchEnterprise,
    policy: &'a RoutingPolicy,
    referrals_today: u32,
    reasons: ReasonSet,
    score: u16,
    values: [u16; Factor::COUNT],
}

const FULL: u32 = 10_000;
static NO_STATS: LenderStats = LenderStats {
    approvals: 0,
    decisions: 0,
    sla_met: 0,
    sla_due: 0,
    referrals_today: 0,
};

impl<'a> Candidate<'a> {
    pub fn product(&self) -> &'a MatchProduct {
        self.product
    }

    pub fn product_id(&self) -> Uuid {
        self.product.product_id
    }

    pub fn lender_id(&self) -> Uuid {
        self.product.lender_id
    }

    pub fn eligible(&self) -> bool {
        self.reasons.is_empty()
    }

    /// 0..=1000; 0 for an ineligible product.
    pub fn score(&self) -> i32 {
        i32::from(self.score)
    }

    pub fn reason_set(&self) -> ReasonSet {
        self.reasons
    }

    /// Every reason the product is ineligible; empty when eligible.
    pub fn reasons(&self) -> impl Iterator<Item = IneligibleReason> + use<> {
        self.reasons.iter()
    }

    /// The lender's referrals today (the tie-break among equal scores).
    pub fn lender_referrals_today(&self) -> u32 {
        self.stats.referrals_today
    }

    /// The product's referrals today, against its daily capacity.
    pub fn product_referrals_today(&self) -> u32 {
        self.referrals_today
    }

    /// The factors of the score, in [`Factor::ALL`] order; empty for an
    /// ineligible product (it has no score to explain).
    pub fn factors(&self) -> impl Iterator<Item = FactorScore> + use<> {
        let weights = self.policy.weights.to_array();
        let values = self.values;
        let count = if self.eligible() { Factor::COUNT } else { 0 };
        Factor::ALL.into_iter().take(count).map(move |factor| {
            let i = factor as usize;
            FactorScore {
                factor,
                value_bps: i32::from(values[i]),
                weight_bps: weights[i],
                points: points(values[i], weights[i]),
            }
        })
    }

    /// A sentence with the figures behind `reason`.
    pub fn reason_message(&self, reason: IneligibleReason) -> String {
        let (p, n, e) = (self.product, self.need, self.enterprise);
        match reason {
            IneligibleReason::ProductInactive => "the product is inactive".to_owned(),
            IneligibleReason::LenderInactive => "the lender is inactive".to_owned(),
            IneligibleReason::AmountOutOfRange => format!(
                "amount {} is outside the product's range {} to {}",
                format_cny(n.amount.get()),
                format_cny(p.amount.min().get()),
                format_cny(p.amount.max().get())
            ),
            IneligibleReason::TermOutOfRange => format!(
                "term of {} months is outside the product's range of {} to {} months",
                n.term,
                p.term.min(),
                p.term.max()
            ),
            IneligibleReason::RegionNotServed => {
                if p.region_prefixes.is_empty() {
                    format!(
                        "region {} is outside the lender's regions ({})",
                        e.region_code,
                        join(&p.lender_region_codes)
                    )
                } else {
                    format!(
                        "region {} is outside the product's regions ({})",
                        e.region_code,
                        join(&p.region_prefixes)
                    )
                }
            }
            IneligibleReason::IndustryNotServed => format!(
                "industry {} is outside the product's industries ({})",
                e.industry_code,
                join(&p.industry_prefixes)
            ),
            IneligibleReason::CollateralNotAccepted => format!(
                "offered collateral ({}) is not among the accepted ({})",
                n.collateral, p.collateral_accepted
            ),
            IneligibleReason::SizeBelowMinimum => format!(
                "enterprise size {} is below the product's minimum {}",
                e.size, p.min_size
            ),
            IneligibleReason::DesignationMissing => format!(
                "the product requires one of {}; the enterprise holds {}",
                join(&p.required_designations),
                if e.designations.is_empty() {
                    "none".to_owned()
                } else {
                    join(&e.designations)
                }
            ),
            IneligibleReason::RateBelowMinimum => format!(
                "the product's minimum rate {} is above the need's maximum {}",
                format_percent(p.rate.min().get()),
                format_percent(n.max_rate.map_or(0, |r| r.get()))
            ),
            IneligibleReason::CapacityExhausted => format!(
                "daily capacity used up ({} of {} referrals today)",
                self.referrals_today, p.daily_capacity
            ),
            IneligibleReason::AlreadyTried => {
                "the lender has already been tried for this need".to_owned()
            }
            IneligibleReason::NoConsent => {
                "the enterprise has not consented to share this need with lenders".to_owned()
            }
        }
    }

    /// A sentence explaining the value of `factor`.
    pub fn factor_note(&self, factor: Factor) -> String {
        let (p, n, e, s, policy) = (
            self.product,
            self.need,
            self.enterprise,
            self.stats,
            self.policy,
        );
        match factor {
            Factor::Rate => {
                let mut note = format!(
                    "expected rate {} from the product's {} to {}",
                    format_percent(expected_rate(p, n)),
                    format_percent(p.rate.min().get()),
                    format_percent(p.rate.max().get())
                );
                if let Some(cap) = n.max_rate.filter(|cap| *cap < p.rate.max()) {
                    let _ = write!(note, " capped at the need's {}", format_percent(cap.get()));
                }
                let _ = write!(
                    note,
                    "; {} or less scores full, {} or more zero",
                    format_percent(policy.rate_best_bps),
                    format_percent(policy.rate_worst_bps)
                );
                note
            }
            Factor::AmountFit => format!(
                "amount {} in the product's range {} to {}; full at the middle of the range on a log scale, half at its ends",
                format_cny(n.amount.get()),
                format_cny(p.amount.min().get()),
                format_cny(p.amount.max().get())
            ),
            Factor::ApprovalHistory => format!(
                "{} approvals in {} decisions, blended with {} neutral decisions at 50%",
                s.approvals, s.decisions, policy.prior_observations
            ),
            Factor::Responsiveness => format!(
                "{} of {} referrals answered within the SLA, blended with {} neutral at 50%",
                s.sla_met, s.sla_due, policy.prior_observations
            ),
            Factor::CapacityHeadroom => format!(
                "{} of {} daily referrals used",
                self.referrals_today, p.daily_capacity
            ),
            Factor::PolicyPriority => match p
                .required_designations
                .iter()
                .find(|d| e.designations.contains(d))
            {
                Some(held) => format!("designation-gated product; the enterprise holds {held}"),
                None => "product open to all enterprises; no designation priority".to_owned(),
            },
            Factor::Locality => {
                let nearest = p.lender_region_codes.iter().max_by_key(|code| {
                    (
                        code.shared_levels(&e.region_code),
                        std::cmp::Reverse(**code),
                    )
                });
                match nearest {
                    Some(code) => {
                        let place = match code.shared_levels(&e.region_code) {
                            6 => "the enterprise's county",
                            4 => "the enterprise's prefecture",
                            2 => "the enterprise's province",
                            _ => "another province",
                        };
                        format!(
                            "nearest lender region {code} is in {place} (enterprise {})",
                            e.region_code
                        )
                    }
                    None => "the lender serves the whole country; none of it is nearer".to_owned(),
                }
            }
        }
    }
}

fn join<T: Display>(items: &[T]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{item}");
    }
    out
}

#[inline]
fn points(value: u16, weight: i32) -> i32 {
    (i64::from(value) * i64::from(weight) / 100_000) as i32
}

/// The rate the enterprise can expect: the middle of what the product offers
/// at or below the need's cap.
#[inline]
fn expected_rate_bps(min: i32, max: i32, cap: Option<i32>) -> i32 {
    let top = cap.map_or(max, |cap| cap.min(max)).max(min);
    (min + top) / 2
}

fn expected_rate(p: &MatchProduct, n: &MatchNeed) -> i32 {
    expected_rate_bps(
        p.rate.min().get(),
        p.rate.max().get(),
        n.max_rate.map(|r| r.get()),
    )
}

/// Smoothed share `hits / trials` with `prior` neutral (50%) observations.
#[inline]
fn smoothed(hits: u32, trials: u32, prior: u32) -> u16 {
    let hits = u64::from(hits.min(trials));
    let num = hits * u64::from(FULL) + u64::from(prior) * u64::from(FULL / 2);
    let den = (u64::from(trials) + u64::from(prior)).max(1);
    (num / den) as u16
}

/// Per-need data computed once per evaluation.
struct NeedContext<'a> {
    need: &'a MatchNeed,
    policy: &'a RoutingPolicy,
    catalog: &'a ProductCatalog,
    amount: i64,
    amount_log: u32,
    term: u16,
    max_rate: Option<u16>,
    region: u64,
    industry: u64,
    size: EnterpriseSize,
    designations: u64,
    held: &'a [ListCode],
    weights: [i32; Factor::COUNT],
}

impl NeedContext<'_> {
    #[inline]
    fn filter(&self, i: usize, p: &HotProduct, used: u32, tried: bool) -> ReasonSet {
        use IneligibleReason as R;
        let mut bits = 0u16;
        let mut flag = |cond: bool, reason: R| {
            if cond {
                bits |= reason.bit();
            }
        };
        flag(p.flags & PRODUCT_ACTIVE == 0, R::ProductInactive);
        flag(p.flags & LENDER_ACTIVE == 0, R::LenderInactive);
        flag(
            self.amount < p.amount_min || self.amount > p.amount_max,
            R::AmountOutOfRange,
        );
        flag(
            self.term < p.term_min || self.term > p.term_max,
            R::TermOutOfRange,
        );
        let start = p.prefix_start as usize;
        let regions = &self.catalog.prefixes[start..start + usize::from(p.regions)];
        flag(
            !regions
                .iter()
                .any(|&(value, mask)| self.region & mask == value),
            R::RegionNotServed,
        );
        let start = start + usize::from(p.regions);
        let industries = &self.catalog.prefixes[start..start + usize::from(p.industries)];
        flag(
            !(industries.is_empty()
                || industries
                    .iter()
                    .any(|&(value, mask)| self.industry & mask == value)),
            R::IndustryNotServed,
        );
        flag(
            !self.need.collateral.intersects(p.collateral),
            R::CollateralNotAccepted,
        );
        flag(self.size < p.min_size, R::SizeBelowMinimum);
        if p.flags & GATED != 0 {
            let held = if p.flags & DESIGNATIONS_BY_NAME == 0 {
                p.designations & self.designations != 0
            } else {
                let required = &self.catalog.products[i].required_designations;
                required.iter().any(|d| self.held.contains(d))
            };
            flag(!held, R::DesignationMissing);
        }
        flag(
            self.max_rate.is_some_and(|cap| cap < p.rate_min),
            R::RateBelowMinimum,
        );
        flag(used >= p.capacity, R::CapacityExhausted);
        flag(tried, R::AlreadyTried);
        flag(!self.need.consent_to_share, R::NoConsent);
        ReasonSet(bits)
    }

    /// Factor values of an eligible product, given its lender's two
    /// history values.
    #[inline]
    fn values(&self, p: &HotProduct, used: u32, lender: &LenderView<'_>) -> [u16; Factor::COUNT] {
        let policy = self.policy;

        let expected = expected_rate_bps(
            i32::from(p.rate_min),
            i32::from(p.rate_max),
            self.max_rate.map(i32::from),
        );
        let span = (policy.rate_worst_bps - policy.rate_best_bps).max(1);
        let rate = (i64::from(policy.rate_worst_bps - expected) * i64::from(FULL) / i64::from(span))
            .clamp(0, i64::from(FULL)) as u16;

        let (lo, hi) = (u32::from(p.log_amount_min), u32::from(p.log_amount_max));
        let width = hi - lo;
        let amount_fit = if width == 0 {
            FULL as u16
        } else {
            let off_centre = (2 * self.amount_log).abs_diff(lo + hi).min(width);
            (FULL - FULL / 2 * off_centre / width) as u16
        };

        let capacity = p.capacity.max(1);
        let headroom = (u64::from(capacity - used.min(capacity)) * u64::from(FULL)
            / u64::from(capacity)) as u16;

        // Eligible, so a gated product's designation is held.
        let priority = if p.flags & GATED != 0 { FULL as u16 } else { 0 };

        let start = p.code_start as usize;
        let levels = self.catalog.codes[start..start + usize::from(p.codes)]
            .iter()
            .map(|&code| shared_levels_packed(code, self.region))
            .max()
            .unwrap_or(0);
        let locality = match levels {
            6 => 10_000,
            4 => 6_000,
            2 => 3_000,
            _ => 0,
        };

        [
            rate,
            amount_fit,
            lender.approval,
            lender.responsiveness,
            headroom,
            priority,
            locality,
        ]
    }
}

/// Lender-level values, computed once per lender per evaluation.
#[derive(Clone, Copy)]
struct LenderView<'s> {
    stats: &'s LenderStats,
    /// A copy of `stats.referrals_today`, the ranking tie-break.
    referrals_today: u32,
    tried: bool,
    approval: u16,
    responsiveness: u16,
}

impl<'s> LenderView<'s> {
    fn new(stats: &'s LenderStats, policy: &RoutingPolicy) -> Self {
        Self {
            stats,
            referrals_today: stats.referrals_today,
            tried: false,
            approval: smoothed(stats.approvals, stats.decisions, policy.prior_observations),
            responsiveness: smoothed(stats.sla_met, stats.sla_due, policy.prior_observations),
        }
    }
}

/// A product's result before ranking.
#[derive(Clone, Copy)]
struct Scored {
    reasons: ReasonSet,
    score: u16,
    values: [u16; Factor::COUNT],
}

/// Evaluates every product of the catalog against a need, ranked: eligible
/// products first by score (highest first), ties by the lender's referrals
/// today (fewest first, which spreads load across equally good lenders),
/// then by product id; ineligible products after them, those with the
/// fewest reasons first, then by product id. The order is a function of the
/// inputs alone.
///
/// `tried_lenders` are the lenders this need has already been routed to.
/// `policy` must pass [`RoutingPolicy::validate`].
pub fn evaluate<'a>(
    need: &'a MatchNeed,
    enterprise: &'a MatchEnterprise,
    catalog: &'a ProductCatalog,
    activity: &'a Activity,
    tried_lenders: &[Uuid],
    policy: &'a RoutingPolicy,
) -> Vec<Candidate<'a>> {
    debug_assert!(
        policy.validate().is_ok(),
        "invalid routing policy: {policy:?}"
    );
    let ctx = NeedContext {
        need,
        policy,
        catalog,
        amount: need.amount.get(),
        amount_log: log2_fixed(need.amount.get()),
        term: need.term.get() as u16,
        max_rate: need.max_rate.map(|r| r.get() as u16),
        region: enterprise.region_code.packed(),
        industry: enterprise.industry_code.packed(),
        size: enterprise.size,
        designations: catalog.designation_bits(&enterprise.designations),
        held: &enterprise.designations,
        weights: policy.weights.to_array(),
    };

    // Counters arrive keyed by id; index them once, so the product loop
    // reads arrays in order.
    let mut lenders = vec![LenderView::new(&NO_STATS, policy); catalog.lenders.len()];
    for (id, stats) in &activity.lender_stats {
        if let Some(&l) = catalog.lender_index.get(id) {
            lenders[l as usize] = LenderView::new(stats, policy);
        }
    }
    for id in tried_lenders {
        if let Some(&l) = catalog.lender_index.get(id) {
            lenders[l as usize].tried = true;
        }
    }
    let mut used = vec![0u32; catalog.len()];
    for (id, &count) in &activity.product_referrals_today {
        if let Some(&i) = catalog.product_index.get(id) {
            used[i as usize] = count;
        }
    }

    let mut scored = Vec::with_capacity(catalog.len());
    // Eligible products sort by (rank << 64 | index); the catalog is sorted
    // by product id, so the index is the product-id tie-break.
    let mut eligible: Vec<u128> = Vec::new();
    // Ineligible products are few-reasons-first, then by index: a counting
    // sort on the number of reasons.
    let mut by_reason_count = [0usize; IneligibleReason::ALL.len() + 1];
    for (i, (hot, &used)) in catalog.hot.iter().zip(&used).enumerate() {
        let lender = &lenders[hot.lender as usize];
        let reasons = ctx.filter(i, hot, used, lender.tried);
        if reasons.is_empty() {
            let values = ctx.values(hot, used, lender);
            let total: i32 = values
                .iter()
                .zip(ctx.weights)
                .map(|(&v, w)| points(v, w))
                .sum();
            let score = total.clamp(0, 1000) as u16;
            let rank = (u64::from(1000 - score) << 32) | u64::from(lender.referrals_today);
            eligible.push(u128::from(rank) << 64 | i as u128);
            scored.push(Scored {
                reasons,
                score,
                values,
            });
        } else {
            by_reason_count[reasons.len()] += 1;
            scored.push(Scored {
                reasons,
                score: 0,
                values: [0; Factor::COUNT],
            });
        }
    }
    eligible.sort_unstable();
    let mut next = [0usize; IneligibleReason::ALL.len() + 1];
    let mut total = 0;
    for (count, slot) in by_reason_count.iter().zip(next.iter_mut()) {
        *slot = total;
        total += count;
    }
    let mut ineligible = vec![0u32; total];
    for (i, s) in scored.iter().enumerate() {
        if !s.reasons.is_empty() {
            let slot = &mut next[s.reasons.len()];
            ineligible[*slot] = i as u32;
            *slot += 1;
        }
    }

    let order = eligible
        .iter()
        .map(|&key| key as u64 as usize)
        .chain(ineligible.iter().map(|&i| i as usize));
    order
        .map(|i| {
            let s = scored[i];
            Candidate {
                product: &catalog.products[i],
                stats: lenders[catalog.hot[i].lender as usize].stats,
                need,
                enterprise,
                policy,
                referrals_today: used[i],
                reasons: s.reasons,
                score: s.score,
                values: s.values,
            }
        })
        .collect()
}

/// The routes for a need: from a ranked list (as [`evaluate`] returns), the
/// first `k` eligible candidates of distinct lenders, best first.
pub fn select_routes<'c, 'a>(candidates: &'c [Candidate<'a>], k: usize) -> Vec<&'c Candidate<'a>> {
    let mut chosen: Vec<&Candidate<'a>> = Vec::with_capacity(k);
    for candidate in candidates {
        if chosen.len() == k || !candidate.eligible() {
            break;
        }
        if chosen
            .iter()
            .all(|c| c.lender_id() != candidate.lender_id())
        {
            chosen.push(candidate);
        }
    }
    chosen
}
