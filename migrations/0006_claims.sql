-- Claims at GMS (datahub-protocol.md §2.6). A task taken in with a claim records the version of its
-- dataHubExecutionRequestResult aspect that this controller's last accepted write produced; every later write is
-- conditional on it (If-Version-Match), so a controller whose claim passed to another learns it from the refusal.
-- NULL: writes are unconditional (reporting off, or a GMS without conditional writes).
ALTER TABLE tasks ADD COLUMN gms_version TEXT;
-- When that write was accepted (claims of waiting tasks are renewed before they look abandoned).
ALTER TABLE tasks ADD COLUMN gms_written_at_ms INTEGER;
-- Another controller took the claim over: this one stops the run and sends nothing more about it.
ALTER TABLE tasks ADD COLUMN claim_lost_at_ms INTEGER;

-- Who this controller is at GMS (the holder its claims name); made once per database, so a restart on the same
-- file holds the same claims.
CREATE TABLE controller_identity (
    only                  INTEGER PRIMARY KEY NOT NULL CHECK (only = 1),
    controller_id         TEXT NOT NULL
);
