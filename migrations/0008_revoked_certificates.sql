-- Certificates revoked one by one (by serial, as lowercase hex without leading zeros): connections presenting one
-- are refused until it expires, even though its worker is not revoked (it may join again with a token).
CREATE TABLE revoked_certificates (
    serial                TEXT PRIMARY KEY NOT NULL,
    worker_id             TEXT,
    revoked_at_ms         INTEGER NOT NULL,
    reason                TEXT NOT NULL
);
