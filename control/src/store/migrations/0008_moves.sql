-- Moves: a command may be a step of an operation (and then say what it found: a final
-- position, say), and every placement an org has had is kept with its time range, so "where
-- has this org lived, and since when" is answered from the store.
ALTER TABLE commands ADD COLUMN operation TEXT;
ALTER TABLE commands ADD COLUMN result TEXT;
CREATE TABLE placement_history (
  org TEXT NOT NULL,
  region TEXT NOT NULL,
  node_id TEXT NOT NULL,
  generation INTEGER NOT NULL,
  from_ms INTEGER NOT NULL,
  -- NULL while it is the org's placement.
  to_ms INTEGER,
  -- The operation that brought the org here (a move); NULL for its first placement.
  operation TEXT,
  PRIMARY KEY (org, generation)
);
INSERT INTO placement_history (org, region, node_id, generation, from_ms)
  SELECT p.org, o.home_region, p.node_id, p.generation, o.created_ms
  FROM placements p JOIN orgs o ON o.id = p.org;
