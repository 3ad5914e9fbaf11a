-- The audit trail: every change made through the admin API or the status page, written in the transaction of the
-- change (a refusal or a failure alone). Only ids and names, never a secret or a token. Reads are not recorded.
CREATE TABLE audit (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms                 INTEGER NOT NULL,
    actor                 TEXT NOT NULL,      -- an admin certificate's name, or ui-token/<id> for a status page login
    role                  TEXT NOT NULL,      -- viewer | operator | admin | '' (none: an agent, an unmapped old cert)
    via                   TEXT NOT NULL,      -- api | page
    peer                  TEXT NOT NULL,      -- the caller's address, when known
    action                TEXT NOT NULL,      -- the admin RPC's name (CancelTask), the same for page actions
    target                TEXT NOT NULL,      -- a task, worker, token id, certificate serial, pool, CA phase
    outcome               TEXT NOT NULL,      -- done | denied | failed
    reason                TEXT NOT NULL,      -- the reason the caller gave
    detail                TEXT NOT NULL       -- why it was denied or failed
);
CREATE INDEX audit_at ON audit (at_ms);
