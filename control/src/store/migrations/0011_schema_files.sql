-- The tenant schema migration files the control plane was given (immutable once stored: a
-- known version with another checksum is refused), and what it holds orgs at.
CREATE TABLE schema_files (
  version INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  checksum TEXT NOT NULL,
  sql TEXT NOT NULL,
  check_sql TEXT,
  added_ms INTEGER NOT NULL,
  added_by TEXT NOT NULL
);
-- The schema version the control plane holds each org at; NULL for orgs from before this
-- (their nodes brought them to the newest built-in version): the system's current version.
ALTER TABLE orgs ADD COLUMN schema_version INTEGER;
-- The fingerprint of the migration files each observed tenant ran (version and checksum).
ALTER TABLE observed ADD COLUMN schema_fingerprint TEXT NOT NULL DEFAULT '';
-- Orgs a rollout leaves alone (held at their version), and why.
CREATE TABLE schema_pins (
  org TEXT PRIMARY KEY REFERENCES orgs(id) ON DELETE CASCADE,
  reason TEXT NOT NULL,
  pinned_ms INTEGER NOT NULL,
  pinned_by TEXT NOT NULL
);
-- A rollout reads its own steps (one command per tenant).
CREATE INDEX commands_by_operation ON commands(operation) WHERE operation IS NOT NULL;
