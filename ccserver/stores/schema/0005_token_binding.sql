-- ccserver schema, version 5: sender-constrained opaque tokens.
-- jkt is the RFC 7638 SHA-256 thumbprint (base64url) of the DPoP key an
-- opaque access token is bound to (RFC 9449 §6), which introspection
-- returns as cnf.jkt; NULL for a bearer token and for every token stored
-- before this version.

ALTER TABLE access_tokens ADD COLUMN jkt TEXT;
