-- ccserver schema, version 2: what the token lifecycle keeps (ITokenStore):
-- opaque access tokens, by digest, and the deny list of revoked JWTs.
-- Both are forgotten after they expire (purge_expired), hence the indexes.

CREATE TABLE access_tokens (
    -- SHA-256 digest (hex) of the token: never the token itself
    token_digest TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    -- the granted scope values, space-separated
    scope TEXT NOT NULL,
    -- JSON array of strings
    audience TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    jti TEXT NOT NULL,
    -- JSON object: the grant handler's extra claims
    claims TEXT NOT NULL
);

CREATE INDEX access_tokens_by_expiry ON access_tokens (expires_at);

CREATE TABLE revoked_jtis (
    jti TEXT PRIMARY KEY,
    -- the revoked token's own expiry, after which the entry may go
    expires_at BIGINT NOT NULL
);

CREATE INDEX revoked_jtis_by_expiry ON revoked_jtis (expires_at);
