-- ccserver schema, version 6: certificate-bound opaque tokens (RFC 8705 §3).
-- The base64url SHA-256 thumbprint of the TLS client certificate an opaque
-- token is bound to, which introspection returns as cnf.x5t#S256; NULL for
-- a bearer token.

ALTER TABLE access_tokens ADD COLUMN x5t_s256 TEXT;
