-- ccserver schema, version 14: leases, a name held by one process at a time
-- across every instance sharing the database, for work exactly one of them
-- must do (the scheduled rotation of the signing keys, [keys] rotate_every).
-- A lease whose expires_ms (milliseconds since the epoch) has passed is
-- free again, so that a process that died never keeps one.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
