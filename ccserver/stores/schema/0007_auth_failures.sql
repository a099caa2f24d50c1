-- ccserver schema, version 7: counts of failed authentication attempts, so
-- that every instance sharing the database counts them together (the
-- brute-force limits, ccserver.oauth.limits).  One row per counted key (a
-- digest of what was attempted and from where, never a secret): the
-- failures in its window and when the window ends, in milliseconds since
-- the epoch.  Only failures write here; ended windows are purged with the
-- expired tokens.

CREATE TABLE auth_failures (
    failure_key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

CREATE INDEX auth_failures_by_expiry ON auth_failures (expires_at_ms);
