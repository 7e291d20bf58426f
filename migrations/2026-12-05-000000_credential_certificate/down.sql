ALTER TABLE credentials DROP COLUMN certificate_subject;
