-- Every word of every contact's name, folded (lower case, no diacritics), so the best matches of
-- a short prefix (names that start with it) come from an index range, not from ranking every
-- contact that merely contains it. `hv_name_words` is registered by the node on every
-- connection that writes.
CREATE TABLE name_words (
  word TEXT NOT NULL,
  contact_id INTEGER NOT NULL,
  PRIMARY KEY (word, contact_id)
) WITHOUT ROWID;

INSERT OR IGNORE INTO name_words (word, contact_id)
  SELECT j.value, c.id FROM contacts c, json_each(hv_name_words(c.name)) j;

CREATE TRIGGER name_words_ai AFTER INSERT ON contacts BEGIN
  INSERT OR IGNORE INTO name_words (word, contact_id)
    SELECT value, new.id FROM json_each(hv_name_words(new.name));
END;
CREATE TRIGGER name_words_ad AFTER DELETE ON contacts BEGIN
  DELETE FROM name_words WHERE contact_id = old.id;
END;
CREATE TRIGGER name_words_au AFTER UPDATE OF name ON contacts BEGIN
  DELETE FROM name_words WHERE contact_id = old.id;
  INSERT OR IGNORE INTO name_words (word, contact_id)
    SELECT value, new.id FROM json_each(hv_name_words(new.name));
END;

-- The number of contacts, kept by triggers, so showing it never counts the whole book.
CREATE TABLE stats (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO stats (key, value) SELECT 'contacts', COUNT(*) FROM contacts;
CREATE TRIGGER stats_contacts_ai AFTER INSERT ON contacts BEGIN
  UPDATE stats SET value = value + 1 WHERE key = 'contacts';
END;
CREATE TRIGGER stats_contacts_ad AFTER DELETE ON contacts BEGIN
  UPDATE stats SET value = value - 1 WHERE key = 'contacts';
END;
