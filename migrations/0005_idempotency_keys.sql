-- The idempotency keys of the org's writes. A key is recorded in the same transaction as the
-- write it names, so a retry (after a timeout, or a 503 for a committed `sync` write) finds it
-- and is given the first answer instead of writing again. The key and the request are kept as
-- SHA-256 digests (fixed width, and no client string at rest); the answer is what the first
-- request was told: a status, a JSON body and a location under the org, none of them secret.
-- Rows older than the node's `idempotency_ttl_secs` are pruned by later writes.
CREATE TABLE idempotency_keys (
  key_hash BLOB PRIMARY KEY,
  request_hash BLOB NOT NULL,
  status INTEGER NOT NULL,
  body TEXT NOT NULL,
  location TEXT NOT NULL,
  created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys(created_ms);
