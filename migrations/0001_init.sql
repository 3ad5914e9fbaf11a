-- Tasks, attempts and workers. States are TEXT with CHECK constraints; the Rust enums in
-- common/src/task.rs are the only code that produces or parses them (inside controller/src/store).

CREATE TABLE tasks (
    id                    TEXT PRIMARY KEY NOT NULL,       -- execution request id (the URN's last part)
    task_name             TEXT NOT NULL,                   -- RUN_INGEST, TEST_CONNECTION, ...
    pool                  TEXT NOT NULL,                   -- executorId
    args_json             TEXT NOT NULL,                   -- args map as submitted; ${NAME} references unresolved
    source_type           TEXT NOT NULL,
    requested_at_ms       INTEGER NOT NULL,
    state                 TEXT NOT NULL CHECK (state IN
                          ('RECEIVED','QUEUED','ASSIGNED','RUNNING','SUCCEEDED','FAILED','CANCELLED','TIMED_OUT','ABORTED')),
    epoch                 INTEGER NOT NULL DEFAULT 0,      -- fencing token, bumped by every grant
    attempts              INTEGER NOT NULL DEFAULT 0,
    worker_id             TEXT,                            -- holder (or last holder)
    not_before_ms         INTEGER NOT NULL DEFAULT 0,      -- retry backoff: not granted before this time
    created_at_ms         INTEGER NOT NULL,
    updated_at_ms         INTEGER NOT NULL,
    -- The terminal result, once there is one.
    exit_code             INTEGER,
    report                TEXT,
    structured_report     TEXT,
    start_time_ms         INTEGER,
    duration_ms           INTEGER,
    finished_at_ms        INTEGER
);

CREATE INDEX tasks_by_state ON tasks (state, pool, created_at_ms);
CREATE INDEX tasks_by_created ON tasks (created_at_ms DESC);

CREATE TABLE attempts (
    task_id               TEXT NOT NULL REFERENCES tasks (id),
    number                INTEGER NOT NULL,                -- 1 for the first attempt
    epoch                 INTEGER NOT NULL,
    worker_id             TEXT NOT NULL,
    state                 TEXT NOT NULL CHECK (state IN
                          ('ASSIGNED','RUNNING','SUCCEEDED','FAILED','CANCELLED','TIMED_OUT','INTERRUPTED','LOST','REVOKED')),
    assigned_at_ms        INTEGER NOT NULL,
    started_at_ms         INTEGER,
    ended_at_ms           INTEGER,
    reason                TEXT,
    PRIMARY KEY (task_id, number),
    UNIQUE (task_id, epoch)
);

CREATE TABLE workers (
    worker_id             TEXT PRIMARY KEY NOT NULL,
    pools_json            TEXT NOT NULL,
    slots                 INTEGER NOT NULL,
    version               TEXT NOT NULL,
    labels_json           TEXT NOT NULL,
    first_seen_ms         INTEGER NOT NULL,
    connected_since_ms    INTEGER,                          -- NULL while disconnected
    last_seen_ms          INTEGER NOT NULL
);
