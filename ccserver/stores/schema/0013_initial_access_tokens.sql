-- ccserver schema, version 13: initial access tokens (RFC 7591 §3), which
-- let a team register its own clients without the master token, within
-- limits.  Kept by the SHA-256 digest of the token, never the token; its
-- public identifier names it to the operator and in the audit trail.  The
-- limits are JSON arrays of strings, or NULL for no limit.  A row is purged
-- once it has expired.
CREATE TABLE initial_access_tokens (
    token_id TEXT NOT NULL UNIQUE,
    token_digest TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_uses INTEGER NOT NULL,
    uses INTEGER NOT NULL,
    note TEXT NOT NULL,
    scope_limit TEXT,
    audience_limit TEXT,
    auth_method_limit TEXT,
    grant_type_limit TEXT,
    revoked_at BIGINT
);

CREATE INDEX initial_access_tokens_by_expiry ON initial_access_tokens (expires_at);
