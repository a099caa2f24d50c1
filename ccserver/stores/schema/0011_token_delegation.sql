-- ccserver schema, version 11: what a token exchange (RFC 8693) sets on an
-- opaque token, which introspection returns as claims: its sub when it is
-- not its client's, act, may_act, and the tokens it dies with
-- (exchanged_from). A JSON object; NULL for the many tokens without any.

ALTER TABLE access_tokens ADD COLUMN delegation TEXT;
