//! The closed value sets of the domain, by their canonical names (the bare
//! upper-case names stored in SQL) and their wire names (the proto's, the
//! canonical name after the enum's prefix: `PURPOSE_WORKING_CAPITAL`). Messages
//! a client reads name values as it must type them: [`fmt::Display`] is the wire name.

use std::fmt;
use std::str::FromStr;

macro_rules! canonical_enum {
    (
        $(#[$meta:meta])*
        $name:ident($prefix:literal) { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        // Stored by its canonical name in a `text` column: `storage::sql_enums` reads and
        // writes it, so rows hold the domain value and never a string.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
        #[diesel(sql_type = diesel::sql_types::Text)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The canonical name, e.g. as stored in SQL.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            /// The proto's name, as a client types it, e.g. in JSON.
            pub const fn wire_name(self) -> &'static str {
                match self {
                    $(Self::$variant => concat!($prefix, $text)),+
                }
            }

            /// `"A, B, C"`: the canonical names, for errors about stored values.
            pub fn expected() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }

            /// `"P_A, P_B, P_C"`: the wire names, for errors a client reads.
            pub fn wire_expected() -> String {
                Self::ALL.iter().map(|v| v.wire_name()).collect::<Vec<_>>().join(", ")
            }

            /// The error for a value that was not given (a proto enum left at
            /// `*_UNSPECIFIED`, or a number this build does not know).
            pub fn unspecified() -> $crate::domain::DomainError {
                $crate::domain::DomainError::Unspecified { expected: Self::wire_expected() }
            }

            /// Turns an optional value into a required one.
            pub fn required(value: Option<Self>) -> Result<Self, $crate::domain::DomainError> {
                value.ok_or_else(Self::unspecified)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::domain::DomainError;

            /// Accepts exactly the canonical name.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err($crate::domain::DomainError::UnknownValue {
                        found: s.to_owned(),
                        expected: Self::expected(),
                    }),
                }
            }
        }

        /// The canonical name, as a replay record stores it.
        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = <String as ::serde::Deserialize>::deserialize(deserializer)?;
                name.parse().map_err(::serde::de::Error::custom)
            }
        }

        /// The wire name: what a message shows a client.
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.wire_name())
            }
        }
    };
}
/// For the other closed sets named by the proto (the matching engine's reasons).
pub(crate) use canonical_enum;

canonical_enum! {
    /// Enterprise size class (MIIT 2011 thresholds), ordered smallest first
    /// so that `size >= product.min_size` reads naturally.
    EnterpriseSize("ENTERPRISE_SIZE_") { Micro = "MICRO", Small = "SMALL", Medium = "MEDIUM", Large = "LARGE" }
}

canonical_enum! {
    LenderKind("LENDER_KIND_") {
        Policy = "POLICY",
        StateOwned = "STATE_OWNED",
        JointStock = "JOINT_STOCK",
        CityCommercial = "CITY_COMMERCIAL",
        Rural = "RURAL",
        Other = "OTHER",
    }
}

canonical_enum! {
    /// Security offered for a loan; CREDIT means unsecured.
    Collateral("COLLATERAL_") {
        Credit = "CREDIT",
        Guarantee = "GUARANTEE",
        RealEstate = "REAL_ESTATE",
        Equipment = "EQUIPMENT",
        Receivables = "RECEIVABLES",
        IpPledge = "IP_PLEDGE",
        Inventory = "INVENTORY",
    }
}

canonical_enum! {
    Purpose("PURPOSE_") {
        WorkingCapital = "WORKING_CAPITAL",
        Payroll = "PAYROLL",
        RawMaterials = "RAW_MATERIALS",
        Equipment = "EQUIPMENT",
        Expansion = "EXPANSION",
        Conversion = "CONVERSION",
        Refinancing = "REFINANCING",
    }
}

canonical_enum! {
    /// How a need reached finmatch.
    Channel("CHANNEL_") { SelfService = "SELF", Bureau = "BUREAU", BankReferral = "BANK_REFERRAL" }
}

canonical_enum! {
    /// Lifecycle of a financing need; see [`NeedStatus::can_transition`].
    NeedStatus("NEED_STATUS_") {
        Submitted = "SUBMITTED",
        Routed = "ROUTED",
        Approved = "APPROVED",
        Funded = "FUNDED",
        Unmatched = "UNMATCHED",
        Withdrawn = "WITHDRAWN",
        Expired = "EXPIRED",
    }
}

canonical_enum! {
    /// Lifecycle of a referral; see [`ReferralStatus::can_transition`].
    ReferralStatus("REFERRAL_STATUS_") {
        Pending = "PENDING",
        Acknowledged = "ACKNOWLEDGED",
        InfoRequested = "INFO_REQUESTED",
        Approved = "APPROVED",
        Disbursed = "DISBURSED",
        Declined = "DECLINED",
        Expired = "EXPIRED",
        Cancelled = "CANCELLED",
    }
}

canonical_enum! {
    DeclineReason("DECLINE_REASON_") {
        OutsideAppetite = "OUTSIDE_APPETITE",
        InsufficientCollateral = "INSUFFICIENT_COLLATERAL",
        CreditHistory = "CREDIT_HISTORY",
        IncompleteInformation = "INCOMPLETE_INFORMATION",
        Capacity = "CAPACITY",
        Other = "OTHER",
    }
}

canonical_enum! {
    /// Lifecycle of a special-loan allocation; see
    /// [`AllocationStatus::can_transition`].
    AllocationStatus("ALLOCATION_STATUS_") { Reserved = "RESERVED", Confirmed = "CONFIRMED", Released = "RELEASED" }
}

canonical_enum! {
    /// Why a RELEASED allocation was released.
    ReleaseReason("ALLOCATION_RELEASE_REASON_") { ReleasedByCaller = "RELEASED_BY_CALLER", Lapsed = "LAPSED" }
}

canonical_enum! {
    /// Who a credential speaks for.
    Role("ROLE_") { Operator = "OPERATOR", Portal = "PORTAL", Lender = "LENDER" }
}

canonical_enum! {
    ReferralEventKind("REFERRAL_EVENT_KIND_") {
        Created = "CREATED",
        Acknowledged = "ACKNOWLEDGED",
        InfoRequested = "INFO_REQUESTED",
        Approved = "APPROVED",
        Declined = "DECLINED",
        Disbursed = "DISBURSED",
        Expired = "EXPIRED",
        Cancelled = "CANCELLED",
        /// A special-loan reservation made through the referral lapsed unconfirmed; the
        /// referral's status is unchanged.
        ReservationLapsed = "RESERVATION_LAPSED",
    }
}

/// The wire name of a value stored by its canonical name (`WORKING_CAPITAL` as `Purpose` gives
/// `PURPOSE_WORKING_CAPITAL`), for messages; a name the enum does not know is shown as it is.
pub fn wire_name<E: FromStr + fmt::Display>(canonical: &str) -> String {
    canonical
        .parse::<E>()
        .map_or_else(|_| canonical.to_owned(), |value| value.to_string())
}

/// A set of [`Collateral`] kinds as a bitset: what a need offers or a product
/// accepts. Duplicates collapse; iteration is in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CollateralSet(u8);

impl CollateralSet {
    pub const fn empty() -> Self {
        Self(0)
    }

    pub fn insert(&mut self, c: Collateral) {
        self.0 |= 1 << (c as u8);
    }

    pub fn contains(&self, c: Collateral) -> bool {
        self.0 & (1 << (c as u8)) != 0
    }

    #[inline]
    pub fn intersects(&self, other: CollateralSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn iter(&self) -> impl Iterator<Item = Collateral> + '_ {
        Collateral::ALL
            .iter()
            .copied()
            .filter(|c| self.contains(*c))
    }
}

impl FromIterator<Collateral> for CollateralSet {
    fn from_iter<I: IntoIterator<Item = Collateral>>(iter: I) -> Self {
        let mut set = Self::empty();
        for c in iter {
            set.insert(c);
        }
        set
    }
}

impl fmt::Display for CollateralSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(c.wire_name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value parses back from its canonical name, and shows as its wire name: the
    /// canonical name behind the enum's prefix.
    macro_rules! round_trips {
        ($($t:ident: $prefix:literal),+ $(,)?) => {$(
            for v in $t::ALL {
                assert_eq!(v.as_str().parse::<$t>(), Ok(*v));
                assert_eq!(v.to_string(), format!("{}{}", $prefix, v.as_str()));
                assert_eq!(wire_name::<$t>(v.as_str()), v.wire_name());
            }
        )+};
    }

    #[test]
    fn every_enum_round_trips_through_its_canonical_name() {
        round_trips!(
            EnterpriseSize: "ENTERPRISE_SIZE_",
            LenderKind: "LENDER_KIND_",
            Collateral: "COLLATERAL_",
            Purpose: "PURPOSE_",
            Channel: "CHANNEL_",
            NeedStatus: "NEED_STATUS_",
            ReferralStatus: "REFERRAL_STATUS_",
            DeclineReason: "DECLINE_REASON_",
            AllocationStatus: "ALLOCATION_STATUS_",
            ReleaseReason: "ALLOCATION_RELEASE_REASON_",
            Role: "ROLE_",
            ReferralEventKind: "REFERRAL_EVENT_KIND_",
        );
    }

    #[test]
    fn canonical_names_are_exactly_the_briefs() {
        let names = |all: &[&'static str]| all.join(",");
        assert_eq!(
            names(
                &EnterpriseSize::ALL
                    .iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
            ),
            "MICRO,SMALL,MEDIUM,LARGE"
        );
        assert_eq!(
            LenderKind::expected(),
            "POLICY, STATE_OWNED, JOINT_STOCK, CITY_COMMERCIAL, RURAL, OTHER"
        );
        assert_eq!(
            Collateral::expected(),
            "CREDIT, GUARANTEE, REAL_ESTATE, EQUIPMENT, RECEIVABLES, IP_PLEDGE, INVENTORY"
        );
        assert_eq!(
            Purpose::expected(),
            "WORKING_CAPITAL, PAYROLL, RAW_MATERIALS, EQUIPMENT, EXPANSION, CONVERSION, REFINANCING"
        );
        assert_eq!(Channel::expected(), "SELF, BUREAU, BANK_REFERRAL");
        assert_eq!(
            NeedStatus::expected(),
            "SUBMITTED, ROUTED, APPROVED, FUNDED, UNMATCHED, WITHDRAWN, EXPIRED"
        );
        assert_eq!(
            ReferralStatus::expected(),
            "PENDING, ACKNOWLEDGED, INFO_REQUESTED, APPROVED, DISBURSED, DECLINED, EXPIRED, CANCELLED"
        );
        assert_eq!(
            DeclineReason::expected(),
            "OUTSIDE_APPETITE, INSUFFICIENT_COLLATERAL, CREDIT_HISTORY, INCOMPLETE_INFORMATION, CAPACITY, OTHER"
        );
        assert_eq!(
            AllocationStatus::expected(),
            "RESERVED, CONFIRMED, RELEASED"
        );
        assert_eq!(ReleaseReason::expected(), "RELEASED_BY_CALLER, LAPSED");
        assert_eq!(Role::expected(), "OPERATOR, PORTAL, LENDER");
        assert_eq!(
            ReferralEventKind::expected(),
            "CREATED, ACKNOWLEDGED, INFO_REQUESTED, APPROVED, DECLINED, DISBURSED, EXPIRED, CANCELLED, \
             RESERVATION_LAPSED"
        );
    }

    #[test]
    fn unknown_and_unspecified_values_name_the_accepted_ones() {
        assert_eq!(
            "micro".parse::<EnterpriseSize>().unwrap_err().to_string(),
            "unknown value \"micro\"; expected one of MICRO, SMALL, MEDIUM, LARGE"
        );
        assert_eq!(
            Role::required(None).unwrap_err().to_string(),
            "must be specified; expected one of ROLE_OPERATOR, ROLE_PORTAL, ROLE_LENDER"
        );
        assert_eq!(Role::required(Some(Role::Lender)), Ok(Role::Lender));
    }

    #[test]
    fn enterprise_sizes_are_ordered_smallest_first() {
        assert!(EnterpriseSize::Micro < EnterpriseSize::Small);
        assert!(EnterpriseSize::Small < EnterpriseSize::Medium);
        assert!(EnterpriseSize::Medium < EnterpriseSize::Large);
    }

    #[test]
    fn collateral_set_collapses_duplicates_and_intersects() {
        let offered: CollateralSet = [
            Collateral::RealEstate,
            Collateral::Credit,
            Collateral::RealEstate,
        ]
        .into_iter()
        .collect();
        assert_eq!(offered.len(), 2);
        assert_eq!(
            offered.to_string(),
            "COLLATERAL_CREDIT, COLLATERAL_REAL_ESTATE"
        );
        assert!(offered.contains(Collateral::Credit));
        assert!(!offered.contains(Collateral::Inventory));
        let accepted: CollateralSet = [Collateral::Inventory, Collateral::RealEstate]
            .into_iter()
            .collect();
        assert!(offered.intersects(accepted));
        let other: CollateralSet = [Collateral::IpPledge].into_iter().collect();
        assert!(!offered.intersects(other));
        assert!(CollateralSet::empty().is_empty());
        let all: CollateralSet = Collateral::ALL.iter().copied().collect();
        assert_eq!(all.len(), 7);
        assert_eq!(all.iter().collect::<Vec<_>>(), Collateral::ALL);
    }
}
