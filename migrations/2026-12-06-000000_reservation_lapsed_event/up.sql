-- A special-loan reservation made through a referral that lapses unconfirmed is told to the
-- lender on its feed, as an event of that referral (its status unchanged). Expand only: the
-- previous release writes none of these, though its streams would refuse to read one.
ALTER TABLE referral_events DROP CONSTRAINT referral_events_kind_check;
ALTER TABLE referral_events ADD CONSTRAINT referral_events_kind_check CHECK (kind IN
    ('CREATED', 'ACKNOWLEDGED', 'INFO_REQUESTED', 'APPROVED', 'DECLINED', 'DISBURSED', 'EXPIRED',
     'CANCELLED', 'RESERVATION_LAPSED'));
