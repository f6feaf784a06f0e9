-- What one org's page reads (its audit trail, commands, placement history is keyed already,
-- what nodes hold of it), by org: at 100,000 orgs a scan of each table per page is too slow.
CREATE INDEX audit_by_org ON audit (org, seq) WHERE org IS NOT NULL;
CREATE INDEX commands_by_org ON commands (org);
CREATE INDEX observed_by_org ON observed (org);
