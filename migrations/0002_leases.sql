-- Lease engine: a cancel requested while an agent holds the task (the epoch is bumped at once, the task ends
-- CANCELLED when the agent confirms or the cancel times out), and the last heartbeat of each attempt, written by
-- group commit (one transaction per sweep, not one fsync per heartbeat).
ALTER TABLE tasks ADD COLUMN cancel_requested_at_ms INTEGER;
ALTER TABLE attempts ADD COLUMN last_heartbeat_ms INTEGER;
