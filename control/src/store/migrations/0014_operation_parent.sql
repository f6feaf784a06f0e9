-- An operation may run another as one of its steps (a residency change moves its org): the
-- child names its parent. The org still has one owner: at most one unfinished operation without
-- a parent, and at most one unfinished child, started only while its parent is unfinished.
ALTER TABLE operations ADD COLUMN parent TEXT;
DROP INDEX operations_one_open_per_org;
CREATE UNIQUE INDEX operations_one_open_per_org ON operations (org)
  WHERE finished_ms IS NULL AND parent IS NULL;
CREATE UNIQUE INDEX operations_one_open_child_per_org ON operations (org)
  WHERE finished_ms IS NULL AND parent IS NOT NULL;
CREATE INDEX operations_by_parent ON operations (parent) WHERE parent IS NOT NULL;
