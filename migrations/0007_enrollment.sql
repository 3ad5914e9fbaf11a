-- Agent enrollment: join tokens (only hashes of their secrets), their uses, the certificates issued to workers, and
-- revoked workers. No secret or private key is ever stored.
CREATE TABLE join_tokens (
    id                    TEXT PRIMARY KEY NOT NULL,       -- the public part, before the dot
    secret_hash           TEXT NOT NULL,                   -- hex SHA-256("outpost-join-token:" + secret)
    bundle_key            TEXT NOT NULL,                   -- hex SHA-256("outpost-ca-bundle:" + secret): signs the CA bundle
    pool                  TEXT NOT NULL,
    expires_at_ms         INTEGER NOT NULL,
    uses_left             INTEGER,                         -- NULL = reusable
    description           TEXT NOT NULL DEFAULT '',
    created_by            TEXT NOT NULL,
    created_at_ms         INTEGER NOT NULL,
    revoked_at_ms         INTEGER
);

CREATE TABLE join_token_uses (
    token_id              TEXT NOT NULL REFERENCES join_tokens (id),
    worker_id             TEXT NOT NULL,
    address               TEXT NOT NULL,
    used_at_ms            INTEGER NOT NULL
);

-- The pool each joined worker is bound to (by its token).
CREATE TABLE worker_bindings (
    worker_id             TEXT PRIMARY KEY NOT NULL,
    pool                  TEXT NOT NULL,
    token_id              TEXT NOT NULL
);

CREATE TABLE issued_certificates (
    serial                TEXT PRIMARY KEY NOT NULL,       -- hex
    worker_id             TEXT NOT NULL,
    issued_at_ms          INTEGER NOT NULL,
    expires_at_ms         INTEGER NOT NULL
);
CREATE INDEX issued_certificates_by_worker ON issued_certificates (worker_id, expires_at_ms);

CREATE TABLE revoked_workers (
    worker_id             TEXT PRIMARY KEY NOT NULL,
    revoked_at_ms         INTEGER NOT NULL,
    reason                TEXT NOT NULL
);
