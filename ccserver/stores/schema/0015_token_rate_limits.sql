-- ccserver schema, version 15: per-client token rate limits.
--
-- A client's token_rate_limit, set by the operator: its JSON object
-- ({"tokens_per_second": 50, "burst": 100}), or NULL for the server's
-- default ([limits] tokens_per_client_per_second).
ALTER TABLE clients ADD COLUMN token_rate_limit TEXT;

-- One token bucket per limited client, by a digest (never the client id
-- itself): the tokens it holds (a fraction, as it fills continuously), when
-- they were last counted (milliseconds since the epoch, by the callers'
-- clocks), and when it is full again if untouched, after which it may be
-- forgotten (purge_expired).  Every process and instance takes its tokens
-- from here, a few at a time (ccserver.oauth.limits.IssuanceLimit).
CREATE TABLE token_buckets (
    bucket_key TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    counted_ms BIGINT NOT NULL,
    full_ms BIGINT NOT NULL
);

CREATE INDEX token_buckets_by_expiry ON token_buckets (full_ms);
