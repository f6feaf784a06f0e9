-- The first schema: regions, nodes, the desired state (orgs + placements and the generation
-- counter in meta), commands to nodes, what nodes report hosting, and the audit chain.
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('next_generation', 1);
CREATE TABLE regions (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, jurisdiction TEXT NOT NULL,
  countries TEXT NOT NULL, object_store TEXT NOT NULL
);
CREATE TABLE nodes (
  id TEXT PRIMARY KEY, region TEXT NOT NULL, public_url TEXT NOT NULL,
  capacity INTEGER NOT NULL, version TEXT NOT NULL,
  first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL
);
CREATE TABLE orgs (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, home_region TEXT NOT NULL,
  residency TEXT NOT NULL, placement_reason TEXT NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE placements (
  org TEXT PRIMARY KEY REFERENCES orgs(id), node_id TEXT NOT NULL,
  generation INTEGER NOT NULL, updated_ms INTEGER NOT NULL
);
CREATE INDEX placements_by_node ON placements(node_id);
CREATE TABLE commands (
  id TEXT PRIMARY KEY, node_id TEXT NOT NULL, org TEXT NOT NULL, kind TEXT NOT NULL,
  generation INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  error TEXT, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, payload TEXT
);
CREATE INDEX commands_open ON commands(state, node_id);
CREATE TABLE observed (
  node_id TEXT NOT NULL, org TEXT NOT NULL, generation INTEGER NOT NULL,
  schema_version INTEGER NOT NULL, PRIMARY KEY (node_id, org)
);
CREATE TABLE audit (
  seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
  org TEXT, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
