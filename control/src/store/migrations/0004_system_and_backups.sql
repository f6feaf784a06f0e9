-- The system's id (random, made once): nodes write it into their region's object store and the
-- operator's verbs compare it, so a store and a control plane of two systems are never mixed.
-- When an org's backups were first seen: from then on a node that finds neither a local file
-- nor a backup of it must fail instead of creating an empty tenant.
CREATE TABLE system (key TEXT PRIMARY KEY, value TEXT NOT NULL);
ALTER TABLE orgs ADD COLUMN backed_up_ms INTEGER;
