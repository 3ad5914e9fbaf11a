-- The open attempt of a task lives on its task row, so the grant, the start and the heartbeats of an attempt
-- each change one row (issue "cost per task"). The attempts table keeps ended attempts only: each is inserted
-- once, when it ends, in the same transaction that moves its task on. attempt_epoch is NULL exactly when no
-- attempt is open (the task is not ASSIGNED or RUNNING); the open attempt's number is tasks.attempts and its
-- worker tasks.worker_id.
ALTER TABLE tasks ADD COLUMN attempt_epoch INTEGER;
ALTER TABLE tasks ADD COLUMN attempt_assigned_at_ms INTEGER;
ALTER TABLE tasks ADD COLUMN attempt_started_at_ms INTEGER;
ALTER TABLE tasks ADD COLUMN attempt_heartbeat_ms INTEGER;

UPDATE tasks SET
    attempt_epoch = (SELECT a.epoch FROM attempts a WHERE a.task_id = tasks.id AND a.ended_at_ms IS NULL),
    attempt_assigned_at_ms = (SELECT a.assigned_at_ms FROM attempts a WHERE a.task_id = tasks.id AND a.ended_at_ms IS NULL),
    attempt_started_at_ms = (SELECT a.started_at_ms FROM attempts a WHERE a.task_id = tasks.id AND a.ended_at_ms IS NULL),
    attempt_heartbeat_ms = (SELECT a.last_heartbeat_ms FROM attempts a WHERE a.task_id = tasks.id AND a.ended_at_ms IS NULL)
WHERE state IN ('ASSIGNED', 'RUNNING');

DELETE FROM attempts WHERE ended_at_ms IS NULL
    AND task_id IN (SELECT id FROM tasks WHERE attempt_epoch IS NOT NULL);
