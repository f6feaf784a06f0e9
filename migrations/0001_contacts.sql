-- The org's contact book, and a full-text index over it that folds diacritics,
-- so that `asa` finds `Åsa`. Prefix indexes for 1 to 12 characters make every prefix a user
-- types one doclist, read lazily, instead of a merge of every term that starts with it.
CREATE TABLE contacts (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  email TEXT NOT NULL DEFAULT '',
  company TEXT NOT NULL DEFAULT '',
  city TEXT NOT NULL DEFAULT '',
  phone TEXT NOT NULL DEFAULT '',
  notes TEXT NOT NULL DEFAULT '',
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL
);
CREATE INDEX contacts_by_updated ON contacts(updated_ms DESC);

CREATE VIRTUAL TABLE contacts_fts USING fts5(
  name, email, company, city, phone, notes,
  content="contacts", content_rowid="id",
  tokenize = "unicode61 remove_diacritics 2",
  prefix = '1 2 3 4 5 6 7 8 9 10 11 12'
);

CREATE TRIGGER contacts_ai AFTER INSERT ON contacts BEGIN
  INSERT INTO contacts_fts(rowid, name, email, company, city, phone, notes)
  VALUES (new.id, new.name, new.email, new.company, new.city, new.phone, new.notes);
END;
CREATE TRIGGER contacts_ad AFTER DELETE ON contacts BEGIN
  INSERT INTO contacts_fts(contacts_fts, rowid, name, email, company, city, phone, notes)
  VALUES ('delete', old.id, old.name, old.email, old.company, old.city, old.phone, old.notes);
END;
CREATE TRIGGER contacts_au AFTER UPDATE ON contacts BEGIN
  INSERT INTO contacts_fts(contacts_fts, rowid, name, email, company, city, phone, notes)
  VALUES ('delete', old.id, old.name, old.email, old.company, old.city, old.phone, old.notes);
  INSERT INTO contacts_fts(rowid, name, email, company, city, phone, notes)
  VALUES (new.id, new.name, new.email, new.company, new.city, new.phone, new.notes);
END;
