-- A node being drained: since when (its orgs are moved off it, and nothing new is placed there).
ALTER TABLE nodes ADD COLUMN draining_since_ms INTEGER;
