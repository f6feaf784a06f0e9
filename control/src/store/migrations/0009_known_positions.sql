-- The newest backup position nodes reported of each org (generation, LSN after the last object
-- shipped, when it was reported; it only grows), so a control plane that restarted still knows
-- what a node's rebuild of the org must reach. And an operator's acceptance of an older point:
-- the known position it was given against (0, 0 when none was known), so it lapses as soon as a
-- newer position is reported.
ALTER TABLE orgs ADD COLUMN known_generation INTEGER;
ALTER TABLE orgs ADD COLUMN known_lsn INTEGER;
ALTER TABLE orgs ADD COLUMN known_ms INTEGER;
ALTER TABLE orgs ADD COLUMN accept_older_generation INTEGER;
ALTER TABLE orgs ADD COLUMN accept_older_lsn INTEGER;
