-- Reverts 2026-12-01-000000_referral_event_relay: the NOTIFY trigger and the strict append-only
-- guard come back; relay-assigned cursors are dropped (clients fall back to insertion cursors,
-- which equal them for events committed in insertion order).
DROP TABLE relay_leases;

DROP TRIGGER referral_events_append_only ON referral_events;
DROP FUNCTION finmatch_referral_event_deliver_once();
CREATE TRIGGER referral_events_append_only BEFORE UPDATE OR DELETE ON referral_events
    FOR EACH ROW EXECUTE FUNCTION finmatch_forbid_change();

CREATE FUNCTION finmatch_notify_referral_event() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('finmatch_referral_events',
        json_build_object('lender_id', NEW.lender_id, 'cursor', NEW.cursor)::text);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION finmatch_notify_referral_event() IS
    'AFTER INSERT trigger on referral_events: NOTIFY finmatch_referral_events with {"lender_id": uuid, "cursor": bigint}, delivered at commit.';
CREATE TRIGGER referral_events_notify AFTER INSERT ON referral_events
    FOR EACH ROW EXECUTE FUNCTION finmatch_notify_referral_event();

DROP INDEX referral_events_undelivered_idx;
DROP INDEX referral_events_lender_id_delivery_cursor_idx;
DROP INDEX referral_events_delivery_cursor_key;
ALTER TABLE referral_events DROP COLUMN delivery_cursor;

COMMENT ON TABLE referral_events IS 'Append-only log of referral changes; the source of WatchReferrals. Each insert notifies channel finmatch_referral_events.';
COMMENT ON COLUMN referral_events.cursor IS 'Monotonically increasing position; WatchReferrals resumes after a cursor. Identity values are assigned at insert, so a reader must allow for a lower cursor committing after a higher one.';
