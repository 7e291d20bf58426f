-- SubmitNeed in one statement, foreign keys that others imply dropped, and writers of
-- referral_events stop sending NOTIFY.
--
-- Writers of referral_events stop sending NOTIFY: the relay polls for undelivered events instead
-- (see src/service/events.rs). A NOTIFY in every writer serialised all their commits, fsync
-- included, on one database-wide lock, and PostgreSQL refuses PREPARE TRANSACTION after NOTIFY.
--
-- For the outbox only the table's documentation changes. During a rolling deploy a relay of the
-- previous release still finds what new writers commit, at its 1 s probe; old writers'
-- notifications are ignored.
COMMENT ON TABLE referral_events IS 'Append-only log of referral changes, written as an outbox: the source of WatchReferrals. A writer, in the transaction that changes the referral, inserts referral_id, need_id, lender_id (those of the referral), kind, status (after the change) and detail, and leaves cursor, delivery_cursor and created_at to their defaults; it sends no notification. The relay polls for committed rows without delivery_cursor (index referral_events_undelivered_idx), assigns delivery_cursor and notifies finmatch_referral_deliveries.';

-- SubmitNeed's one-statement write (storage::needs::insert_routed_batch) calls this
-- when a product it routed to had no capacity left: the error undoes the whole statement, and the
-- service routes the need again in a transaction that replaces the full products. VOLATILE, so
-- it runs only on that branch of the CASE that calls it.
CREATE FUNCTION finmatch_capacity_short() RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    RAISE EXCEPTION 'finmatch: a product of this routing has no capacity left today'
        USING ERRCODE = 'FMC01';
END
$$;
COMMENT ON FUNCTION finmatch_capacity_short() IS
    'Raises FMC01: SubmitNeed''s one-statement write routed to a product without capacity (the statement is undone).';

-- Foreign keys that composite ones imply: each costs a lookup and a KEY SHARE lock of the
-- referenced row per inserted row (SubmitNeed inserts three referrals and three events, so 26
-- such checks became 11). referral_events_referral_fkey (referral_id, need_id, lender_id) ->
-- referrals covers referral_id, and through the referral's own keys need_id and lender_id;
-- referrals_product_lender_fkey (product_id, lender_id) -> products covers product_id, and
-- through the product's lender_id, lender_id. What may be referenced or deleted is unchanged.
ALTER TABLE referral_events
    DROP CONSTRAINT referral_events_referral_id_fkey,
    DROP CONSTRAINT referral_events_lender_id_fkey,
    DROP CONSTRAINT referral_events_need_id_fkey;
ALTER TABLE referrals
    DROP CONSTRAINT referrals_lender_id_fkey,
    DROP CONSTRAINT referrals_product_id_fkey;
