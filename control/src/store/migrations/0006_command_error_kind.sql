-- A failed command's error kind, typed (`ErrorKind::as_str`), beside its message: callers decide
-- by the kind, never by reading the message.
ALTER TABLE commands ADD COLUMN error_kind TEXT;
