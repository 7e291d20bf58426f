-- A hash chain over the audit log, so an edited, removed or back-dated row is found. Kept apart
-- from audit_log (append-only, and its writers never wait on the chain): a background step seals
-- settled rows in id order, seal n holding sha256(seal n-1 || row n as PostgreSQL renders it).
CREATE TABLE audit_seals (
    audit_id bigint PRIMARY KEY,
    hash bytea NOT NULL CHECK (length(hash) = 32),
    sealed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER audit_seals_append_only BEFORE UPDATE OR DELETE ON audit_seals
    FOR EACH ROW EXECUTE FUNCTION finmatch_forbid_change();

COMMENT ON TABLE audit_seals IS 'Hash chain over audit_log in id order: hash = sha256(previous hash || the row rendered as storage::audit renders it); the first row chains from 32 zero bytes. finmatch audit verify recomputes it.';
COMMENT ON COLUMN audit_seals.audit_id IS 'The audit_log row sealed (no foreign key: a seal outlives a deleted row, which is how the deletion is found).';
COMMENT ON COLUMN audit_seals.hash IS 'The chain''s SHA-256 through this row.';
