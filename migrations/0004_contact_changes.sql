-- Every change to a contact, in order, so a node's in-memory search index catches up by reading
-- what changed since it last looked instead of reading the whole contact book again.
-- AUTOINCREMENT: a sequence number is never reused, even after the tail is pruned. Only the
-- newest 4096 changes are kept; an index further behind than that is rebuilt.
CREATE TABLE contact_changes (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  contact_id INTEGER NOT NULL
);

CREATE TRIGGER contact_changes_ai AFTER INSERT ON contacts BEGIN
  INSERT INTO contact_changes (contact_id) VALUES (new.id);
END;
CREATE TRIGGER contact_changes_au AFTER UPDATE ON contacts BEGIN
  INSERT INTO contact_changes (contact_id) VALUES (new.id);
END;
CREATE TRIGGER contact_changes_ad AFTER DELETE ON contacts BEGIN
  INSERT INTO contact_changes (contact_id) VALUES (old.id);
END;
CREATE TRIGGER contact_changes_prune AFTER INSERT ON contact_changes
  WHEN new.seq % 1024 = 0 BEGIN
  DELETE FROM contact_changes WHERE seq <= new.seq - 4096;
END;

-- Search now reads name words from the in-memory index; the table and its triggers go.
DROP TRIGGER name_words_ai;
DROP TRIGGER name_words_ad;
DROP TRIGGER name_words_au;
DROP TABLE name_words;
