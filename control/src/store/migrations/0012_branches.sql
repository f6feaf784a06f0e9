-- Branches: orgs made from another org's backups at a point in time, for tests, each with an
-- expiry (the dead man's switch). The branch is an org of its own (`orgs`, `placements`); this
-- row says what it is a branch of and until when it lives. A destroyed branch's row stays, with
-- when and why, until a new branch takes its name.
CREATE TABLE branches (
  id TEXT PRIMARY KEY,
  parent TEXT NOT NULL,
  name TEXT NOT NULL,
  -- The parent's point in time the branch holds.
  at_ms INTEGER NOT NULL,
  region TEXT NOT NULL,
  owner TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  -- How far a keepalive (or a use, with keepalive_on_use) pushes the expiry out.
  ttl_ms INTEGER NOT NULL,
  expires_ms INTEGER NOT NULL,
  keepalive_on_use INTEGER NOT NULL,
  users TEXT NOT NULL,
  masked INTEGER NOT NULL,
  last_used_ms INTEGER,
  -- Its file's size as its node last reported it (after each change of what it hosts).
  size_bytes INTEGER,
  destroyed_ms INTEGER,
  destroyed_why TEXT
);
CREATE INDEX branches_by_parent ON branches(parent);
CREATE INDEX branches_live_by_expiry ON branches(expires_ms) WHERE destroyed_ms IS NULL;
