-- Named admin tokens. Only the SHA-256 of a token is kept (a token is 128 random bits, so a
-- fast hash is enough); a revoked token stays listed, with when it was revoked.
CREATE TABLE admin_tokens (
  name TEXT PRIMARY KEY,
  sha256 TEXT NOT NULL UNIQUE,
  created_ms INTEGER NOT NULL,
  created_by TEXT NOT NULL,
  revoked_ms INTEGER
);
