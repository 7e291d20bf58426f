//! The command that files a financing need.

use super::*;

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
    use crate::domain::commands::test_support::*;

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
