-- ccserver schema, version 9: whether a client's registration named its
-- token_endpoint_auth_method.  One that did not (0) is registered with
-- client_secret_basic, RFC 7591's default, and may present its secret with
-- client_secret_post too; one that did (1) is held to the method it named.
-- Clients registered before this version are held to theirs (1).
ALTER TABLE clients ADD COLUMN auth_method_named INTEGER NOT NULL DEFAULT 1;
