-- Durability per org: `async` (lag up to the replication interval) or `sync`.
ALTER TABLE orgs ADD COLUMN durability TEXT NOT NULL DEFAULT 'async';
