-- A status page login token carries the role its sessions act with (viewer, operator or admin). Tokens made before
-- roles become viewers: the page was read-only then.
ALTER TABLE ui_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'viewer';
