-- ccserver schema, version 1: registered clients and signing keys.
--
-- Written in the SQL that both SQLite and PostgreSQL accept.  ccserver.stores.sql
-- splits a migration file on semicolons at the end of a line and runs each
-- statement in one transaction, with the version row; so: no semicolon
-- inside a statement, one statement may span lines.  The schema_version
-- table itself is made by the code, which has to read it first.

CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    -- seconds since the epoch
    client_id_issued_at BIGINT NOT NULL,
    -- RFC 7591 metadata as a JSON object, without client_id or any secret
    metadata TEXT NOT NULL,
    -- SHA-256 digests (hex): a secret is never stored
    client_secret_digest TEXT NOT NULL,
    registration_access_token_digest TEXT NOT NULL
);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    -- Fernet token of the private key's PEM: never a key in clear
    encrypted_private_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    active_from BIGINT NOT NULL,
    retired_at BIGINT
);
