-- Operations that span machines and time (moves, failovers, rollouts, branches, erasures): one
-- row each, its phase recorded before any side effect of that phase is acknowledged. At most one
-- unfinished operation owns an org at a time.
CREATE TABLE operations (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  org TEXT NOT NULL,
  phase TEXT NOT NULL,
  requested_by TEXT NOT NULL,
  started_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  finished_ms INTEGER,
  error_kind TEXT,
  error TEXT,
  detail TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX operations_one_open_per_org ON operations (org) WHERE finished_ms IS NULL;
