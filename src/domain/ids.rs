//! Ids of the rows that belong to an enterprise (its needs, their referrals and disbursements,
//! its allocations and designations) carry a 16-bit routing key derived from the enterprise, so
//! a PostgreSQL distributed by enterprise (DESIGN §9, docs/scaling.md) can find the shard of any
//! such row from its id alone, as a bank quoting a referral id would give it.
//!
//! Layout (RFC 9562 UUIDv8, big-endian): bytes 0–5 the Unix time in milliseconds, as UUIDv7
//! (ids sort by creation and index as well as v7 ones); the version nibble 8 and 12 random bits;
//! the variant and 14 random bits; bytes 10–11 the routing key; bytes 12–15 random. The
//! enterprise's own id is random (v4), and its key is its last two bytes: random bits whatever
//! version the id has.

use uuid::Uuid;

/// The routing key of an enterprise: the last two bytes of its id.
pub fn routing_key(enterprise_id: Uuid) -> u16 {
    let bytes = enterprise_id.as_bytes();
    u16::from_be_bytes([bytes[14], bytes[15]])
}

/// A new id for a row of the enterprise `enterprise_id` (a need, an allocation, a designation):
/// time-ordered, carrying the enterprise's routing key.
pub fn scoped_id(enterprise_id: Uuid) -> Uuid {
    with_key(routing_key(enterprise_id))
}

/// A new id for a row that belongs to the row `parent` (a need's referral, a referral's
/// disbursement): it inherits the parent's routing key. A parent created before scoped ids has
/// none to give, and its child gets a plain time-ordered id.
pub fn child_id(parent: Uuid) -> Uuid {
    key_of(parent).map_or_else(Uuid::now_v7, with_key)
}

fn with_key(key: u16) -> Uuid {
    let mut bytes = *Uuid::now_v7().as_bytes();
    [bytes[10], bytes[11]] = key.to_be_bytes();
    Uuid::new_v8(bytes)
}

/// The routing key an id carries, if it is a scoped id; `None` for ids of other rows (and for
/// rows created before scoped ids were).
pub fn key_of(id: Uuid) -> Option<u16> {
    (id.get_version_num() == 8).then(|| {
        let bytes = id.as_bytes();
        u16::from_be_bytes([bytes[10], bytes[11]])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scoped_id_carries_its_enterprises_key_and_sorts_by_time() {
        let enterprise = Uuid::new_v4();
        let first = scoped_id(enterprise);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = scoped_id(enterprise);
        assert_eq!(first.get_version_num(), 8);
        assert_eq!(first.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(key_of(first), Some(routing_key(enterprise)));
        assert_eq!(key_of(second), Some(routing_key(enterprise)));
        assert!(first < second, "{first} then {second}");
        assert_ne!(first, scoped_id(enterprise));
    }

    #[test]
    fn a_child_inherits_its_parents_key() {
        let enterprise = Uuid::new_v4();
        let need = scoped_id(enterprise);
        let referral = child_id(need);
        assert_eq!(key_of(child_id(referral)), Some(routing_key(enterprise)));
        assert_ne!(referral, need);
        // A parent from before scoped ids: a plain v7.
        assert_eq!(child_id(Uuid::now_v7()).get_version_num(), 7);
    }

    #[test]
    fn other_ids_carry_no_key() {
        assert_eq!(key_of(Uuid::new_v4()), None);
        assert_eq!(key_of(Uuid::now_v7()), None);
    }

    #[test]
    fn enterprises_spread_over_the_keys() {
        let keys: std::collections::HashSet<u16> =
            (0..1000).map(|_| routing_key(Uuid::new_v4())).collect();
        assert!(keys.len() > 950, "{} distinct keys of 1000", keys.len());
    }
}
