-- A credential may be bound to a client certificate: its calls are accepted only over a mutual
-- TLS connection whose client certificate has this subject. Additive; the previous release
-- ignores it (and so does not enforce it: do not roll back past this with bound credentials).
ALTER TABLE credentials ADD COLUMN certificate_subject text CHECK (btrim(certificate_subject) <> '');
COMMENT ON COLUMN credentials.certificate_subject IS 'Subject (RFC 4514, as finmatch renders it) of the client certificate the credential is bound to; NULL = any connection.';
