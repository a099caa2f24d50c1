-- ccserver schema, version 4: one-time records (ITokenStore.use_once), so
-- that a client assertion's jti (RFC 7523 §3, item 7) or a DPoP proof's is
-- accepted once across every instance sharing the database; and the
-- encrypted secret of client_secret_jwt clients.

CREATE TABLE used_once (
    -- namespaced by the caller: "assertion:<client_id>:<jti>", "dpop:<jkt>:<jti>"
    record_key TEXT PRIMARY KEY,
    -- when the record may be forgotten (the assertion's own exp)
    expires_at BIGINT NOT NULL
);

CREATE INDEX used_once_by_expiry ON used_once (expires_at);

-- Fernet token (key-encryption key) of a client_secret_jwt client's secret,
-- which the server needs to check an HMAC; NULL for every other client.
ALTER TABLE clients ADD COLUMN encrypted_secret TEXT;
