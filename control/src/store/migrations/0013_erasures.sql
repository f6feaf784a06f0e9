-- Erased orgs: their id stays taken (a tombstone), so an erased org is never silently
-- recreated under its old name.
CREATE TABLE tombstones (
  id TEXT PRIMARY KEY,
  erased_ms INTEGER NOT NULL,
  operation TEXT NOT NULL,
  erased_by TEXT NOT NULL
);
