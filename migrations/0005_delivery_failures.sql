-- A GMS write that can never succeed (GMS refused the payload itself: HTTP 400, 413, a 422 that is not "already
-- terminal") leaves the outbox and is recorded on its task, so it stops blocking the task's later writes and its
-- SQS message. The latest such failure per task; NULL while every write was delivered.
ALTER TABLE tasks ADD COLUMN delivery_failure TEXT;
