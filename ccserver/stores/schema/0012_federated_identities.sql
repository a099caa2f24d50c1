-- ccserver schema, version 12: the workload identities bound to clients
-- (federated_jwt clients' federated_identities), so that a workload's
-- token finds its client with one lookup, never a scan.  The client's
-- metadata holds each binding itself; this is their index, written in the
-- same transaction as the client: the digest of the binding's issuer and
-- subject, the digest of its claim conditions, and its client.  The
-- primary key makes a binding one client's: a second client registered
-- with it at the same moment is refused.

CREATE TABLE federated_identities (
    binding_key TEXT NOT NULL,
    conditions_key TEXT NOT NULL,
    client_id TEXT NOT NULL,
    PRIMARY KEY (binding_key, conditions_key)
);

CREATE INDEX federated_identities_by_client ON federated_identities (client_id);
