ALTER TABLE referral_events DROP CONSTRAINT referral_events_kind_check;
ALTER TABLE referral_events ADD CONSTRAINT referral_events_kind_check CHECK (kind IN
    ('CREATED', 'ACKNOWLEDGED', 'INFO_REQUESTED', 'APPROVED', 'DECLINED', 'DISBURSED', 'EXPIRED',
     'CANCELLED'));
