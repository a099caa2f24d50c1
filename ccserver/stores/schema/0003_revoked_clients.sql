-- ccserver schema, version 3: the revocation marks of deleted clients.
-- Deleting a client deletes its opaque tokens (hence the index by client)
-- and writes a mark: its tokens issued at or before issued_before are dead.
-- JWTs cannot be deleted, so introspection checks the mark.  A mark is kept
-- until the longest token lifetime has passed (expires_at), then purged.

CREATE INDEX access_tokens_by_client ON access_tokens (client_id);

CREATE TABLE revoked_clients (
    client_id TEXT PRIMARY KEY,
    -- seconds since the epoch: tokens with an iat at or before it are dead
    issued_before BIGINT NOT NULL,
    -- when no token the mark kills can still be alive
    expires_at BIGINT NOT NULL
);

CREATE INDEX revoked_clients_by_expiry ON revoked_clients (expires_at);
