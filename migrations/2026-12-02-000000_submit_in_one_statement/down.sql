-- Reverts 2026-12-02-000000_submit_in_one_statement: no one-statement SubmitNeed, the
-- implied foreign keys back, and the previous documentation (writers notify
-- finmatch_referral_events before they commit).
DROP FUNCTION finmatch_capacity_short();
ALTER TABLE referrals
    ADD CONSTRAINT referrals_lender_id_fkey FOREIGN KEY (lender_id) REFERENCES lenders (id),
    ADD CONSTRAINT referrals_product_id_fkey FOREIGN KEY (product_id) REFERENCES products (id);
ALTER TABLE referral_events
    ADD CONSTRAINT referral_events_referral_id_fkey FOREIGN KEY (referral_id) REFERENCES referrals (id),
    ADD CONSTRAINT referral_events_lender_id_fkey FOREIGN KEY (lender_id) REFERENCES lenders (id),
    ADD CONSTRAINT referral_events_need_id_fkey FOREIGN KEY (need_id) REFERENCES needs (id);
COMMENT ON TABLE referral_events IS 'Append-only log of referral changes, written as an outbox: the source of WatchReferrals. A writer, in the transaction that changes the referral, inserts referral_id, need_id, lender_id (those of the referral), kind, status (after the change) and detail, leaves cursor, delivery_cursor and created_at to their defaults, and sends pg_notify(''finmatch_referral_events'', '''') before it commits (once per transaction is enough). The relay then assigns delivery_cursor and notifies finmatch_referral_deliveries.';
