-- Status page sessions, so a controller restart logs nobody out: only a hash of each session id (the cookie's
-- value never reaches the database). A session acts with its login token's role and ends with the token.
CREATE TABLE ui_sessions (
    hash                  TEXT PRIMARY KEY NOT NULL,       -- hex SHA-256("outpost-ui-session:" + session id)
    token_id              TEXT NOT NULL,
    role                  TEXT NOT NULL,
    created_at_ms         INTEGER NOT NULL,
    expires_at_ms         INTEGER NOT NULL
);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at_ms);
