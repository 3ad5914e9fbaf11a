-- The durable outbox of writes to DataHub's GMS. A row is written in the same transaction as the state change it
-- reports (an attempt starting → RUNNING; a task ending → its terminal status), so a crash can never lose a result
-- that was recorded. The payload is built from the task row when the row is sent; a row is deleted once GMS took it.
CREATE TABLE gms_outbox (
    seq                   INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id               TEXT NOT NULL REFERENCES tasks (id),
    kind                  TEXT NOT NULL CHECK (kind IN ('RUNNING', 'TERMINAL')),
    start_time_ms         INTEGER NOT NULL,
    created_at_ms         INTEGER NOT NULL,
    tries                 INTEGER NOT NULL DEFAULT 0,
    next_try_at_ms        INTEGER NOT NULL DEFAULT 0,
    last_error            TEXT
);

CREATE INDEX gms_outbox_by_task ON gms_outbox (task_id, seq);

-- When the terminal result reached GMS (or, with reporting off, when it was recorded).
ALTER TABLE tasks ADD COLUMN reported_at_ms INTEGER;
