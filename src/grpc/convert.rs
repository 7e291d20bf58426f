//! Conversions between the generated proto types and domain values that every handler shares.

use chrono::{DateTime, NaiveDate, Utc};
use prost_types::Timestamp;
use sha2::Digest as _;
use uuid::Uuid;

use crate::domain::{self, DomainError, Violations};
use crate::proto as pb;

/// A proto enum paired with its domain enum: the proto names are the domain's canonical names
/// behind a prefix (`ENTERPRISE_SIZE_MICRO` ⇄ `MICRO`).
pub trait Bridge: Sized + Copy {
    type Domain: Copy + std::str::FromStr + ToString;
    const PREFIX: &'static str;

    fn from_i32(value: i32) -> Option<Self>;
    fn name(self) -> &'static str;
    fn from_name(name: &str) -> Option<Self>;
    fn number(self) -> i32;

    /// The domain value, or None for `*_UNSPECIFIED` and numbers this build does not know.
    fn to_domain(raw: i32) -> Option<Self::Domain> {
        let value = Self::from_i32(raw)?;
        value.name().strip_prefix(Self::PREFIX)?.parse().ok()
    }

    /// The wire number of a domain value.
    fn from_domain(value: Self::Domain) -> i32 {
        Self::from_name(&value.to_string()).map_or(0, Self::number)
    }
}

macro_rules! bridge {
    ($pb:ty, $domain:ty, $prefix:literal) => {
        impl Bridge for $pb {
            type Domain = $domain;
            const PREFIX: &'static str = $prefix;

            fn from_i32(value: i32) -> Option<Self> {
                <$pb>::try_from(value).ok()
            }
            fn name(self) -> &'static str {
                self.as_str_name()
            }
            fn from_name(name: &str) -> Option<Self> {
                <$pb>::from_str_name(name)
            }
            fn number(self) -> i32 {
                self as i32
            }
        }
    };
}

bridge!(
    pb::EnterpriseSize,
    domain::EnterpriseSize,
    "ENTERPRISE_SIZE_"
);
bridge!(pb::LenderKind, domain::LenderKind, "LENDER_KIND_");
bridge!(pb::Collateral, domain::Collateral, "COLLATERAL_");
bridge!(pb::Purpose, domain::Purpose, "PURPOSE_");
bridge!(pb::Channel, domain::Channel, "CHANNEL_");
bridge!(pb::NeedStatus, domain::NeedStatus, "NEED_STATUS_");
bridge!(
    pb::ReferralStatus,
    domain::ReferralStatus,
    "REFERRAL_STATUS_"
);
bridge!(pb::DeclineReason, domain::DeclineReason, "DECLINE_REASON_");
bridge!(
    pb::AllocationStatus,
    domain::AllocationStatus,
    "ALLOCATION_STATUS_"
);
bridge!(
    pb::AllocationReleaseReason,
    domain::ReleaseReason,
    "ALLOCATION_RELEASE_REASON_"
);
bridge!(pb::Role, domain::Role, "ROLE_");
bridge!(
    pb::Ineligibility,
    crate::matching::IneligibleReason,
    "INELIGIBILITY_"
);
bridge!(
    pb::ReferralEventKind,
    domain::ReferralEventKind,
    "REFERRAL_EVENT_KIND_"
);

/// Each element of a repeated enum field, None where unspecified or unknown.
pub fn enums<B: Bridge>(raw: &[i32]) -> Vec<Option<B::Domain>> {
    raw.iter().map(|&v| B::to_domain(v)).collect()
}

/// The wire number of a domain value stored as its canonical name.
pub fn enum_number<B: Bridge>(canonical: &str) -> i32 {
    canonical
        .parse::<B::Domain>()
        .map_or(0, |value| B::from_domain(value))
}

pub fn timestamp(at: DateTime<Utc>) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

/// A proto timestamp as an instant; None when unset.
pub fn instant(
    field: &str,
    value: Option<&Timestamp>,
    violations: &mut Violations,
) -> Option<DateTime<Utc>> {
    let value = value?;
    match u32::try_from(value.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(value.seconds, nanos))
    {
        Some(at) => Some(at),
        None => {
            violations.add(field, "not a valid timestamp");
            None
        }
    }
}

pub fn date(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

pub fn optional_date(day: Option<NaiveDate>) -> String {
    day.map(date).unwrap_or_default()
}

/// A required id field.
pub fn id(field: &str, raw: &str, violations: &mut Violations) -> Option<Uuid> {
    if raw.trim().is_empty() {
        violations.add(field, DomainError::Missing.to_string());
        return None;
    }
    violations.field(field, domain::parse_uuid(raw))
}

/// Requests whose one field is the id of the resource they act on: each converts to that id.
macro_rules! id_requests {
    ($($request:ident . $field:ident),+ $(,)?) => {$(
        impl TryFrom<&pb::$request> for Uuid {
            type Error = Violations;

            fn try_from(request: &pb::$request) -> Result<Uuid, Violations> {
                let mut v = Violations::default();
                let id = id(stringify!($field), &request.$field, &mut v);
                v.values(id)
            }
        }
    )+};
}

id_requests!(
    GetEnterpriseRequest.enterprise_id,
    GetLenderRequest.lender_id,
    RevokeCredentialRequest.credential_id,
    GetNeedRequest.need_id,
    GetReferralRequest.referral_id,
    AcknowledgeReferralRequest.referral_id,
    GetProgramRequest.program_id,
);

/// An optional id filter: `""` means any.
pub fn optional_id(field: &str, raw: &str, violations: &mut Violations) -> Option<Option<Uuid>> {
    if raw.trim().is_empty() {
        Some(None)
    } else {
        violations.field(field, domain::parse_uuid(raw)).map(Some)
    }
}

/// An optional prefix filter: `""` means any.
pub fn optional<T>(
    field: &str,
    raw: &str,
    parse: impl Fn(&str) -> Result<T, DomainError>,
    violations: &mut Violations,
) -> Option<Option<T>> {
    if raw.trim().is_empty() {
        Some(None)
    } else {
        violations.field(field, parse(raw.trim())).map(Some)
    }
}

/// The paths of an update mask, each checked against `allowed`; a violation per unknown path
/// and one when the mask is empty.
pub fn mask_paths<'a>(
    mask: Option<&'a prost_types::FieldMask>,
    allowed: &[&str],
    violations: &mut Violations,
) -> Vec<&'a str> {
    let paths: Vec<&str> = mask
        .map(|m| m.paths.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if paths.is_empty() {
        violations.add(
            "update_mask",
            format!("name the fields to change, from: {}", allowed.join(", ")),
        );
    }
    for (i, path) in paths.iter().enumerate() {
        if !allowed.contains(path) {
            violations.add(
                format!("update_mask.paths[{i}]"),
                format!(
                    "{path:?} cannot be updated; updatable fields: {}",
                    allowed.join(", ")
                ),
            );
        }
    }
    paths
}

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// The idempotency of a retry-sensitive call: its key (required, 1 to 128 printable ASCII
/// characters) and a fingerprint of the request with the key cleared (`unkeyed`), so a retry with
/// the same key can be told from a different request.
pub fn idempotency(
    key: &str,
    unkeyed: &impl prost::Message,
    violations: &mut Violations,
) -> Option<crate::service::Idempotency> {
    if key.is_empty() {
        violations.add("idempotency_key", DomainError::Missing.to_string());
        return None;
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        violations.add(
            "idempotency_key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"),
        );
        return None;
    }
    Some(crate::service::Idempotency {
        key: key.to_owned(),
        fingerprint: sha2::Sha256::digest(unkeyed.encode_to_vec()).to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_bridge_by_canonical_name() {
        assert_eq!(
            pb::EnterpriseSize::to_domain(pb::EnterpriseSize::Medium as i32),
            Some(domain::EnterpriseSize::Medium)
        );
        assert_eq!(pb::EnterpriseSize::to_domain(0), None);
        assert_eq!(pb::EnterpriseSize::to_domain(99), None);
        assert_eq!(
            pb::Channel::from_domain(domain::Channel::BankReferral),
            pb::Channel::BankReferral as i32
        );
        assert_eq!(
            enum_number::<pb::Collateral>("IP_PLEDGE"),
            pb::Collateral::IpPledge as i32
        );
    }

    #[test]
    fn every_domain_value_has_a_wire_number() {
        for v in domain::ReferralStatus::ALL {
            assert_ne!(pb::ReferralStatus::from_domain(*v), 0, "{v}");
        }
        for v in domain::Purpose::ALL {
            assert_ne!(pb::Purpose::from_domain(*v), 0, "{v}");
        }
        for v in domain::DeclineReason::ALL {
            assert_ne!(pb::DeclineReason::from_domain(*v), 0, "{v}");
        }
    }

    #[test]
    fn ineligibility_reasons_and_the_proto_list_the_same_values() {
        use crate::matching::IneligibleReason;
        for v in IneligibleReason::ALL {
            let number = pb::Ineligibility::from_domain(*v);
            assert_ne!(number, 0, "{v}");
            assert_eq!(pb::Ineligibility::to_domain(number), Some(*v));
        }
        // Every proto value but UNSPECIFIED names a reason the engine gives.
        let wire: Vec<i32> = (1..64)
            .filter(|n| pb::Ineligibility::try_from(*n).is_ok())
            .collect();
        assert_eq!(wire.len(), IneligibleReason::ALL.len());
        for n in wire {
            assert!(pb::Ineligibility::to_domain(n).is_some(), "{n}");
        }
    }
}
