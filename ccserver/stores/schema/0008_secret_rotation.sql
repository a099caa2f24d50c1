-- ccserver schema, version 8: a client's previous secret after a rotation
-- (ccserver clients rotate-secret, POST /client-reg/{id}/rotate-secret).
-- It still authenticates until previous_secret_expires_at (the grace
-- period); both are NULL when the client has no previous secret.

-- SHA-256 digest (hex) of the secret replaced: a secret is never stored
ALTER TABLE clients ADD COLUMN previous_secret_digest TEXT;

-- seconds since the epoch: the previous secret works before it only
ALTER TABLE clients ADD COLUMN previous_secret_expires_at BIGINT;
