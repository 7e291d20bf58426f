-- The referral event feed becomes an outbox with a single relay (see src/service/events.rs).
--
-- Expand step of an expand/contract change: a binary of the previous release keeps working on
-- this schema during a rolling deploy. It inserts events without delivery_cursor (the relay of a
-- new replica assigns one), keeps serving its streams from `cursor` behind its own horizon, and
-- never updates a row. What it loses until it is replaced: with the NOTIFY trigger gone, an event
-- written through an old replica reaches the relay at the relay's next probe (within about 1 s)
-- and old listeners at theirs (within 5 s).
-- Cursors clients stored before the deploy stay valid: the relay assigns
-- delivery_cursor = greatest(last + 1, cursor), which equals `cursor` for every event committed
-- before the deploy, so resuming after one of them means what it meant.
-- Nothing needs contracting later: delivery_cursor stays nullable (NULL = not relayed yet).

ALTER TABLE referral_events ADD COLUMN delivery_cursor bigint;

-- Final once set; the relay assigns them in increasing order, one batch at a time.
CREATE UNIQUE INDEX referral_events_delivery_cursor_key ON referral_events (delivery_cursor);
-- A stream's catch-up: its lender's delivered events after its cursor.
CREATE INDEX referral_events_lender_id_delivery_cursor_idx
    ON referral_events (lender_id, delivery_cursor);
-- The relay's work list: committed events not delivered yet (small: the relay keeps it empty).
CREATE INDEX referral_events_undelivered_idx
    ON referral_events (cursor) WHERE delivery_cursor IS NULL;

-- Writers notify from their own transaction (storage::referrals::insert_event), not from a
-- trigger: Citus refuses triggers on distributed tables.
DROP TRIGGER referral_events_notify ON referral_events;
DROP FUNCTION finmatch_notify_referral_event();

-- Still append-only, except that the relay sets delivery_cursor once.
CREATE FUNCTION finmatch_referral_event_deliver_once() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.delivery_cursor IS NULL AND NEW.delivery_cursor IS NOT NULL
       AND to_jsonb(NEW) - 'delivery_cursor' = to_jsonb(OLD) - 'delivery_cursor' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% on % is not allowed: rows are append-only, and delivery_cursor is set once',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;
COMMENT ON FUNCTION finmatch_referral_event_deliver_once() IS
    'BEFORE UPDATE OR DELETE trigger on referral_events: refuses everything but setting a NULL delivery_cursor.';
DROP TRIGGER referral_events_append_only ON referral_events;
CREATE TRIGGER referral_events_append_only BEFORE UPDATE OR DELETE ON referral_events
    FOR EACH ROW EXECUTE FUNCTION finmatch_referral_event_deliver_once();

COMMENT ON TABLE referral_events IS 'Append-only log of referral changes, written as an outbox: the source of WatchReferrals. A writer, in the transaction that changes the referral, inserts referral_id, need_id, lender_id (those of the referral), kind, status (after the change) and detail, leaves cursor, delivery_cursor and created_at to their defaults, and sends pg_notify(''finmatch_referral_events'', '''') before it commits (once per transaction is enough). The relay then assigns delivery_cursor and notifies finmatch_referral_deliveries.';
COMMENT ON COLUMN referral_events.cursor IS 'Insertion order (identity, assigned at insert, so not commit order); the relay works through undelivered rows in this order. Not shown to clients.';
COMMENT ON COLUMN referral_events.delivery_cursor IS 'The cursor WatchReferrals shows and resumes from. NULL until the relay, which sees only committed rows, assigns it: greatest(last assigned + 1, cursor), so values only grow in the order they are assigned and equal cursor for events committed in insertion order (cursors of the previous release stay valid). Never changes once set.';

CREATE TABLE relay_leases (
    name text PRIMARY KEY CHECK (btrim(name) <> ''),
    holder uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE relay_leases IS 'Leases of single-replica background roles (''referral_events'': the event relay). The holder renews expires_at (database clock) while it works and in every batch it writes; another replica takes a lease over only after it expired. A row lock, not an advisory lock, so it holds on any PostgreSQL topology.';
COMMENT ON COLUMN relay_leases.holder IS 'Random id of the server process holding the lease (new at every start).';
COMMENT ON COLUMN relay_leases.expires_at IS 'The lease is free after this instant unless renewed.';
COMMENT ON COLUMN relay_leases.acquired_at IS 'When the current holder took the lease.';
