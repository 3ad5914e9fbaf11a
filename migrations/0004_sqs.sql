-- SQS bridge: the messages each task came in on (a duplicate delivery is a second message for the same task; a
-- re-delivery of the same message adopts its new receipt handle), kept invisible while the task lives and deleted
-- once its result reached GMS; and the quarantine of messages that could not be used.
CREATE TABLE sqs_messages (
    message_id            TEXT PRIMARY KEY NOT NULL,
    task_id               TEXT NOT NULL REFERENCES tasks (id),
    queue_url             TEXT NOT NULL,
    receipt_handle        TEXT NOT NULL,
    first_received_at_ms  INTEGER NOT NULL,
    received_at_ms        INTEGER NOT NULL
);

CREATE INDEX sqs_messages_by_queue ON sqs_messages (queue_url);
CREATE INDEX sqs_messages_by_task ON sqs_messages (task_id);

CREATE TABLE quarantine (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_url             TEXT NOT NULL,
    message_id            TEXT NOT NULL,
    reason                TEXT NOT NULL,
    body                  TEXT NOT NULL,      -- the body, cut at the quarantine cap (body_bytes says how long it was)
    body_bytes            INTEGER NOT NULL,
    received_at_ms        INTEGER NOT NULL,
    replayed_at_ms        INTEGER
);
