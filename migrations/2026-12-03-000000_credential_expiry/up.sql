-- Credentials may expire: an expired credential is treated exactly like a revoked one (calls and
-- open WatchReferrals streams end UNAUTHENTICATED). Additive; the previous release ignores it.
ALTER TABLE credentials ADD COLUMN expires_at timestamptz;
COMMENT ON COLUMN credentials.expires_at IS 'When the credential stops being valid, as if revoked then; NULL = no expiry.';
