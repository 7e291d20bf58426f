//! The state machines of DESIGN §1. Statuses only move forward; the one loop
//! is a referral's INFO_REQUESTED ↔ ACKNOWLEDGED. Staying in a status is not
//! a transition (`can_transition(s, s)` is false): a service that sees a
//! repeat treats it as a replay, not as a change.

use super::{AllocationStatus, NeedStatus, ReferralEventKind, ReferralStatus};

impl NeedStatus {
    /// SUBMITTED → ROUTED → APPROVED → FUNDED; any open status may end as
    /// WITHDRAWN (the enterprise); SUBMITTED and ROUTED may end as EXPIRED
    /// (`needed_by` passed) or UNMATCHED (no eligible lender left). An
    /// APPROVED need has a lender's yes: it is no longer unmatched, and the
    /// calendar does not void it (the bank must still record its loan).
    pub fn can_transition(self, to: NeedStatus) -> bool {
        use NeedStatus::*;
        matches!(
            (self, to),
            (Submitted, Routed | Unmatched | Withdrawn | Expired)
                | (Routed, Approved | Unmatched | Withdrawn | Expired)
                | (Approved, Funded | Withdrawn)
        )
    }

    /// SUBMITTED and ROUTED: no lender has approved the need yet, so a decline sends it on to
    /// the next untried lender.
    pub fn awaits_approval(self) -> bool {
        matches!(self, NeedStatus::Submitted | NeedStatus::Routed)
    }

    /// SUBMITTED, ROUTED and APPROVED: the need is still being worked on
    /// (and blocks a second need of the same enterprise and purpose).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            NeedStatus::Submitted | NeedStatus::Routed | NeedStatus::Approved
        )
    }
}

impl ReferralStatus {
    /// PENDING → ACKNOWLEDGED → (INFO_REQUESTED ↔ ACKNOWLEDGED) → APPROVED →
    /// DISBURSED, as the proto's `ReferralStatus` states it: a lender asks
    /// for information or approves only an ACKNOWLEDGED referral (a PENDING
    /// one is acknowledged first, an INFO_REQUESTED one acknowledged again).
    /// Before a decision a referral may be DECLINED, EXPIRED (SLA passed) or
    /// CANCELLED; once APPROVED it can only be DISBURSED or CANCELLED (the
    /// need was funded through another referral, or withdrawn). This is the
    /// one table: every use case that moves a referral asks it.
    pub fn can_transition(self, to: ReferralStatus) -> bool {
        use ReferralStatus::*;
        matches!(
            (self, to),
            (Pending, Acknowledged | Declined | Expired | Cancelled)
                | (
                    Acknowledged,
                    InfoRequested | Approved | Declined | Expired | Cancelled
                )
                | (InfoRequested, Acknowledged | Declined | Expired | Cancelled)
                | (Approved, Disbursed | Cancelled)
        )
    }

    /// PENDING, ACKNOWLEDGED and INFO_REQUESTED: waiting for the lender's decision, which is
    /// due by the referral's SLA deadline.
    pub fn is_undecided(self) -> bool {
        matches!(
            self,
            ReferralStatus::Pending | ReferralStatus::Acknowledged | ReferralStatus::InfoRequested
        )
    }

    /// PENDING, ACKNOWLEDGED, INFO_REQUESTED and APPROVED.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            ReferralStatus::Pending
                | ReferralStatus::Acknowledged
                | ReferralStatus::InfoRequested
                | ReferralStatus::Approved
        )
    }

    /// APPROVED and DISBURSED: the lender said yes (a lender's approval rate counts these).
    pub fn is_approved(self) -> bool {
        matches!(self, ReferralStatus::Approved | ReferralStatus::Disbursed)
    }

    /// Whether the lender may see the enterprise's contact data on a referral in this status
    /// (given the owner's consent): while the referral is open, and once the lender has lent on
    /// it. Declined, expired and cancelled referrals (a withdrawn need's among them) show none.
    pub fn shows_contact(self) -> bool {
        self.is_open() || self == ReferralStatus::Disbursed
    }

    /// Whether the lender still owes a decision (the SLA clock runs).
    pub fn awaits_decision(self) -> bool {
        matches!(
            self,
            ReferralStatus::Pending | ReferralStatus::Acknowledged | ReferralStatus::InfoRequested
        )
    }

    /// The event recorded when a referral enters this status.
    pub fn event_kind(self) -> ReferralEventKind {
        match self {
            ReferralStatus::Pending => ReferralEventKind::Created,
            ReferralStatus::Acknowledged => ReferralEventKind::Acknowledged,
            ReferralStatus::InfoRequested => ReferralEventKind::InfoRequested,
            ReferralStatus::Approved => ReferralEventKind::Approved,
            ReferralStatus::Disbursed => ReferralEventKind::Disbursed,
            ReferralStatus::Declined => ReferralEventKind::Declined,
            ReferralStatus::Expired => ReferralEventKind::Expired,
            ReferralStatus::Cancelled => ReferralEventKind::Cancelled,
        }
    }
}

impl AllocationStatus {
    /// RESERVED → CONFIRMED (loan disbursed) or RELEASED (quota returns).
    pub fn can_transition(self, to: AllocationStatus) -> bool {
        matches!(
            (self, to),
            (
                AllocationStatus::Reserved,
                AllocationStatus::Confirmed | AllocationStatus::Released
            )
        )
    }

    /// RESERVED and CONFIRMED allocations use quota.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            AllocationStatus::Reserved | AllocationStatus::Confirmed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `can_transition` against an explicit list over every pair.
    fn exhaustive<T: Copy + PartialEq + std::fmt::Debug>(
        all: &[T],
        allowed: &[(T, T)],
        can: impl Fn(T, T) -> bool,
    ) {
        for &from in all {
            for &to in all {
                assert_eq!(
                    can(from, to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn need_transitions_are_exactly_the_forward_ones() {
        use NeedStatus::*;
        let allowed = [
            (Submitted, Routed),
            (Submitted, Unmatched),
            (Submitted, Withdrawn),
            (Submitted, Expired),
            (Routed, Approved),
            (Routed, Unmatched),
            (Routed, Withdrawn),
            (Routed, Expired),
            (Approved, Funded),
            (Approved, Withdrawn),
        ];
        exhaustive(NeedStatus::ALL, &allowed, NeedStatus::can_transition);
    }

    #[test]
    fn closed_needs_go_nowhere() {
        for from in [
            NeedStatus::Funded,
            NeedStatus::Unmatched,
            NeedStatus::Withdrawn,
            NeedStatus::Expired,
        ] {
            assert!(!from.is_open());
            assert!(
                NeedStatus::ALL.iter().all(|&to| !from.can_transition(to)),
                "{from:?}"
            );
        }
        let awaiting: Vec<_> = NeedStatus::ALL
            .iter()
            .filter(|s| s.awaits_approval())
            .collect();
        assert_eq!(awaiting, [&NeedStatus::Submitted, &NeedStatus::Routed]);
        let open: Vec<_> = NeedStatus::ALL.iter().filter(|s| s.is_open()).collect();
        assert_eq!(
            open,
            [
                &NeedStatus::Submitted,
                &NeedStatus::Routed,
                &NeedStatus::Approved
            ]
        );
    }

    #[test]
    fn referral_transitions_are_exactly_the_forward_ones_and_the_info_loop() {
        use ReferralStatus::*;
        let allowed = [
            (Pending, Acknowledged),
            (Pending, Declined),
            (Pending, Expired),
            (Pending, Cancelled),
            (Acknowledged, InfoRequested),
            (Acknowledged, Approved),
            (Acknowledged, Declined),
            (Acknowledged, Expired),
            (Acknowledged, Cancelled),
            (InfoRequested, Acknowledged),
            (InfoRequested, Declined),
            (InfoRequested, Expired),
            (InfoRequested, Cancelled),
            (Approved, Disbursed),
            (Approved, Cancelled),
        ];
        exhaustive(
            ReferralStatus::ALL,
            &allowed,
            ReferralStatus::can_transition,
        );
    }

    #[test]
    fn closed_referrals_go_nowhere() {
        use ReferralStatus::*;
        for from in [Disbursed, Declined, Expired, Cancelled] {
            assert!(!from.is_open());
            assert!(!from.awaits_decision());
            assert!(
                ReferralStatus::ALL
                    .iter()
                    .all(|&to| !from.can_transition(to)),
                "{from:?}"
            );
        }
        assert!(Approved.is_open());
        assert!(!Approved.awaits_decision());
        for s in [Pending, Acknowledged, InfoRequested] {
            assert!(s.is_open() && s.awaits_decision(), "{s:?}");
        }
    }

    #[test]
    fn each_referral_status_has_its_event_kind() {
        let kinds: Vec<_> = ReferralStatus::ALL
            .iter()
            .map(|s| s.event_kind().as_str())
            .collect();
        assert_eq!(
            kinds,
            [
                "CREATED",
                "ACKNOWLEDGED",
                "INFO_REQUESTED",
                "APPROVED",
                "DISBURSED",
                "DECLINED",
                "EXPIRED",
                "CANCELLED"
            ]
        );
    }

    #[test]
    fn allocations_are_confirmed_or_released_once() {
        use AllocationStatus::*;
        exhaustive(
            AllocationStatus::ALL,
            &[(Reserved, Confirmed), (Reserved, Released)],
            AllocationStatus::can_transition,
        );
        assert!(Reserved.is_live() && Confirmed.is_live() && !Released.is_live());
    }
}
