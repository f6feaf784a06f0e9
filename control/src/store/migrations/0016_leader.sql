-- Which control replica leads: one row, a lease with a fencing token that grows by one at
-- every change of holder. Times are the database's own clock (see store/leader.rs).
CREATE TABLE leader (
  one INTEGER PRIMARY KEY CHECK (one = 1),
  holder TEXT NOT NULL,
  token INTEGER NOT NULL,
  expires_ms INTEGER NOT NULL,
  api_url TEXT NOT NULL,
  grpc_url TEXT NOT NULL
);
INSERT INTO leader (one, holder, token, expires_ms, api_url, grpc_url) VALUES (1, '', 0, 0, '', '');
