//! The routing policy: how factors are weighted and how many lenders a need
//! may be routed to. Loaded from configuration by the server; plain data here.

use crate::domain::Violations;

/// A scoring factor. Each is worth 0..=10,000 bps for a product and is
/// multiplied by its weight in [`FactorWeights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Factor {
    /// Lower expected rate is better.
    Rate,
    /// How close the amount sits to the middle of the product's range.
    AmountFit,
    /// The lender's smoothed approval rate.
    ApprovalHistory,
    /// The lender's smoothed share of referrals answered within the SLA.
    Responsiveness,
    /// The share of the product's daily capacity still free.
    CapacityHeadroom,
    /// A designation-gated product for an enterprise holding the designation.
    PolicyPriority,
    /// How near the lender's regions are to the enterprise.
    Locality,
}

impl Factor {
    pub const COUNT: usize = 7;
    pub const ALL: [Factor; Factor::COUNT] = [
        Factor::Rate,
        Factor::AmountFit,
        Factor::ApprovalHistory,
        Factor::Responsiveness,
        Factor::CapacityHeadroom,
        Factor::PolicyPriority,
        Factor::Locality,
    ];

    /// The name shown in `ScoreFactor.name`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Factor::Rate => "rate",
            Factor::AmountFit => "amount_fit",
            Factor::ApprovalHistory => "approval_history",
            Factor::Responsiveness => "responsiveness",
            Factor::CapacityHeadroom => "capacity_headroom",
            Factor::PolicyPriority => "policy_priority",
            Factor::Locality => "locality",
        }
    }
}

/// Weight of each factor in bps; the weights sum to 10,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactorWeights {
    pub rate_bps: i32,
    pub amount_fit_bps: i32,
    pub approval_history_bps: i32,
    pub responsiveness_bps: i32,
    pub capacity_headroom_bps: i32,
    pub policy_priority_bps: i32,
    pub locality_bps: i32,
}

impl Default for FactorWeights {
    /// Price first (25%), then whether the lender actually says yes (20%);
    /// fit and speed of answer next (15% each); capacity and policy priority
    /// (10% each) steer among similar offers; locality (5%) breaks near-ties
    /// in favour of local banks.
    fn default() -> Self {
        Self {
            rate_bps: 2_500,
            amount_fit_bps: 1_500,
            approval_history_bps: 2_000,
            responsiveness_bps: 1_500,
            capacity_headroom_bps: 1_000,
            policy_priority_bps: 1_000,
            locality_bps: 500,
        }
    }
}

impl FactorWeights {
    pub fn get(&self, factor: Factor) -> i32 {
        match factor {
            Factor::Rate => self.rate_bps,
            Factor::AmountFit => self.amount_fit_bps,
            Factor::ApprovalHistory => self.approval_history_bps,
            Factor::Responsiveness => self.responsiveness_bps,
            Factor::CapacityHeadroom => self.capacity_headroom_bps,
            Factor::PolicyPriority => self.policy_priority_bps,
            Factor::Locality => self.locality_bps,
        }
    }

    /// Weights in [`Factor::ALL`] order.
    pub fn to_array(&self) -> [i32; Factor::COUNT] {
        Factor::ALL.map(|f| self.get(f))
    }
}

/// How needs are scored and routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingPolicy {
    pub weights: FactorWeights,
    /// Referrals created when a need is first routed, to distinct lenders.
    /// Default 3: enough competition for a good offer without flooding
    /// banks with needs they will mostly not win.
    pub top_k: usize,
    /// Lenders a need may be routed to in all (first routing plus
    /// re-routing after declines and expiries); then it is UNMATCHED.
    /// Default 6: the first three plus three replacements.
    pub max_lenders_per_need: usize,
    /// An expected rate at or below this scores the full rate factor.
    /// Default 300 bps, about the one-year LPR.
    pub rate_best_bps: i32,
    /// An expected rate at or above this scores zero. Default 1,500 bps,
    /// where small-business credit becomes expensive.
    pub rate_worst_bps: i32,
    /// Neutral (50%) observations blended into a lender's approval and SLA
    /// record, so a new lender starts at 50% and one decision moves it
    /// little. Default 10.
    pub prior_observations: u32,
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        Self {
            weights: FactorWeights::default(),
            top_k: 3,
            max_lenders_per_need: 6,
            rate_best_bps: 300,
            rate_worst_bps: 1_500,
            prior_observations: 10,
        }
    }
}

impl RoutingPolicy {
    /// Every rule a policy must meet; field names as in configuration.
    pub fn validate(&self) -> Result<(), Violations> {
        let mut v = Violations::default();
        let weights = self.weights.to_array();
        for (factor, w) in Factor::ALL.iter().zip(weights) {
            if !(0..=10_000).contains(&w) {
                v.add(
                    format!("weights.{}_bps", factor.as_str()),
                    format!("must be between 0 and 10000, got {w}"),
                );
            }
        }
        let sum: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        if sum != 10_000 {
            v.add("weights", format!("must sum to 10000 bps, got {sum}"));
        }
        if self.top_k == 0 {
            v.add("top_k", "must be at least 1");
        }
        if self.max_lenders_per_need < self.top_k {
            v.add(
                "max_lenders_per_need",
                format!(
                    "must be at least top_k ({}), got {}",
                    self.top_k, self.max_lenders_per_need
                ),
            );
        }
        if !(0..=10_000).contains(&self.rate_best_bps) {
            v.add(
                "rate_best_bps",
                format!("must be between 0 and 10000, got {}", self.rate_best_bps),
            );
        }
        if !(0..=10_000).contains(&self.rate_worst_bps) || self.rate_worst_bps <= self.rate_best_bps
        {
            v.add(
                "rate_worst_bps",
                format!(
                    "must be above rate_best_bps ({}) and at most 10000, got {}",
                    self.rate_best_bps, self.rate_worst_bps
                ),
            );
        }
        if self.prior_observations == 0 {
            v.add("prior_observations", "must be at least 1");
        }
        v.finish()
    }

    /// How many more lenders a need may be routed to, given how many it has
    /// been routed to already.
    pub fn remaining_attempts(&self, lenders_tried: usize) -> usize {
        self.max_lenders_per_need.saturating_sub(lenders_tried)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid_and_weights_sum_to_one() {
        let p = RoutingPolicy::default();
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(p.weights.to_array().iter().sum::<i32>(), 10_000);
        assert_eq!((p.top_k, p.max_lenders_per_need), (3, 6));
    }

    #[test]
    fn invalid_policy_names_every_bad_field() {
        let p = RoutingPolicy {
            weights: FactorWeights {
                rate_bps: -1,
                ..FactorWeights::default()
            },
            top_k: 0,
            max_lenders_per_need: 0,
            rate_best_bps: 900,
            rate_worst_bps: 800,
            prior_observations: 0,
        };
        let v = p.validate().unwrap_err();
        let fields: Vec<_> = v.violations().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "weights.rate_bps",
                "weights",
                "top_k",
                "rate_worst_bps",
                "prior_observations"
            ]
        );
        assert_eq!(
            v.violations()[1].description,
            "must sum to 10000 bps, got 7499"
        );
    }

    #[test]
    fn fewer_lenders_than_top_k_is_refused() {
        let p = RoutingPolicy {
            max_lenders_per_need: 2,
            ..RoutingPolicy::default()
        };
        let v = p.validate().unwrap_err();
        assert_eq!(v.violations()[0].field, "max_lenders_per_need");
        assert_eq!(
            v.violations()[0].description,
            "must be at least top_k (3), got 2"
        );
    }

    #[test]
    fn remaining_attempts_counts_down_to_zero() {
        let p = RoutingPolicy::default();
        assert_eq!(p.remaining_attempts(0), 6);
        assert_eq!(p.remaining_attempts(5), 1);
        assert_eq!(p.remaining_attempts(6), 0);
        assert_eq!(p.remaining_attempts(9), 0);
    }
}
