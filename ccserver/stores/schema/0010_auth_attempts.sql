-- ccserver schema, version 10: the brute-force limits reserve a slot before
-- each credential check instead of counting failures after it
-- (ccserver.oauth.limits), so auth_failures gives way to two tables.  Their
-- rows are counts kept for a minute and marks kept for a day: nothing in
-- them is worth migrating.

DROP TABLE auth_failures;

-- One row per counter (a credential from one source) or cap (a credential
-- from every source not known for it), by a digest, never a secret: the
-- slots reserved in its window (failed checks, checks under way, slots a
-- process keeps) and when the window ends, in milliseconds since the epoch.
CREATE TABLE auth_attempts (
    attempt_key TEXT PRIMARY KEY,
    attempts INTEGER NOT NULL,
    window_ends_ms BIGINT NOT NULL
);

CREATE INDEX auth_attempts_by_window ON auth_attempts (window_ends_ms);

-- One row per (credential, source) that authenticated successfully not long
-- ago, by a digest: exempt from the cap until known_until_ms.
CREATE TABLE auth_known_sources (
    known_key TEXT PRIMARY KEY,
    known_until_ms BIGINT NOT NULL
);

CREATE INDEX auth_known_sources_by_expiry ON auth_known_sources (known_until_ms);
