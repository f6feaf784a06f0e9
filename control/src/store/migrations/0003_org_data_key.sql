-- Per-org data keys (hex): nodes seal the org's backups with it; NULL once destroyed.
ALTER TABLE orgs ADD COLUMN data_key TEXT;
