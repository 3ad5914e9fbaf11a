-- Login tokens of the status page (--ui-listen): only hashes of their secrets. A browser that logs in with one
-- gets a session cookie; sessions live in the controller's memory only.
CREATE TABLE ui_tokens (
    id                    TEXT PRIMARY KEY NOT NULL,       -- the public part, before the dot
    secret_hash           TEXT NOT NULL,                   -- hex SHA-256("outpost-ui-token:" + secret)
    description           TEXT NOT NULL DEFAULT '',
    created_by            TEXT NOT NULL,
    created_at_ms         INTEGER NOT NULL,
    expires_at_ms         INTEGER NOT NULL,
    revoked_at_ms         INTEGER
);
