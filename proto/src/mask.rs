//! A branch's mask: which columns of which tables are rewritten before the branch serves or
//! ships anything, and how. The file is TOML, one table per SQL table, `column = "rule"`:
//!
//! ```toml
//! [contacts]
//! name = "fake_name"     # a made-up full name
//! email = "fake_email"   # a made-up local part, the domain kept
//! phone = "hash"         # a keyed hash of the value (16 hex digits)
//! notes = "null"         # NULL, or the empty value ('' or 0) where the column is NOT NULL
//! city = "shuffle"       # the column's own values, dealt out to other rows
//! company = "keep"       # unchanged (as every column not named)
//! ```
//!
//! Shared by the control plane (which checks a mask against the parent's schema before any
//! work) and the node (which applies it). Every rule is deterministic per branch: the same value
//! masks to the same result everywhere in one branch, so joins on a masked column still match.

use std::collections::BTreeMap;

use crate::HemvistError;

/// The largest mask file accepted.
pub const MAX_MASK_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    FakeName,
    FakeEmail,
    Hash,
    Null,
    Keep,
    Shuffle,
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::FakeName,
        Rule::FakeEmail,
        Rule::Hash,
        Rule::Null,
        Rule::Keep,
        Rule::Shuffle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::FakeName => "fake_name",
            Rule::FakeEmail => "fake_email",
            Rule::Hash => "hash",
            Rule::Null => "null",
            Rule::Keep => "keep",
            Rule::Shuffle => "shuffle",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A parsed mask: table → column → rule, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mask {
    pub tables: BTreeMap<String, BTreeMap<String, Rule>>,
}

/// A column of a table as the schema has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnShape {
    pub name: String,
    pub not_null: bool,
    /// Part of the primary key: never masked (rows would lose their identity).
    pub primary_key: bool,
}

/// A table or column name a mask may use: an SQL identifier, quoted safely as `"name"`.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
}

fn shown(s: &str) -> String {
    s.chars().take(40).flat_map(char::escape_default).collect()
}

impl Mask {
    /// Parses a mask file; an empty file masks nothing.
    pub fn parse(text: &str) -> Result<Mask, HemvistError> {
        if text.len() > MAX_MASK_BYTES {
            return Err(HemvistError::invalid(format!(
                "the mask is {} bytes, more than the {MAX_MASK_BYTES} allowed",
                text.len()
            )));
        }
        let value: toml::Table = text
            .parse()
            .map_err(|e| HemvistError::invalid(format!("the mask is not valid TOML: {e}")))?;
        let mut tables = BTreeMap::new();
        for (table, columns) in value {
            if !is_identifier(&table) {
                return Err(HemvistError::invalid(format!(
                    "mask: \"{}\" is not a table name",
                    shown(&table)
                )));
            }
            let toml::Value::Table(columns) = columns else {
                return Err(HemvistError::invalid(format!(
                    "mask: [{table}] must be a table of column = \"rule\""
                )));
            };
            let mut rules = BTreeMap::new();
            for (column, rule) in columns {
                if !is_identifier(&column) {
                    return Err(HemvistError::invalid(format!(
                        "mask: \"{}\" in [{table}] is not a column name",
                        shown(&column)
                    )));
                }
                let rule = rule.as_str().and_then(Rule::parse).ok_or_else(|| {
                    HemvistError::invalid(format!(
                        "mask: {table}.{column} = {rule}: the rule must be one of {}",
                        Rule::ALL.map(Rule::as_str).join(", ")
                    ))
                })?;
                rules.insert(column, rule);
            }
            tables.insert(table, rules);
        }
        Ok(Mask { tables })
    }

    pub fn is_empty(&self) -> bool {
        self.tables
            .values()
            .all(|c| c.values().all(|r| *r == Rule::Keep))
    }

    /// Checks every table and column the mask names against a schema (`columns` gives a
    /// table's columns, `None` if there is no such table): an unknown name, or a primary key
    /// column, is refused naming it.
    pub fn check(
        &self,
        columns: impl Fn(&str) -> Option<Vec<ColumnShape>>,
    ) -> Result<(), HemvistError> {
        for (table, rules) in &self.tables {
            let Some(shape) = columns(table) else {
                return Err(HemvistError::invalid(format!(
                    "mask: there is no table {table} in the org's schema; nothing was done"
                )));
            };
            for (column, rule) in rules {
                let Some(c) = shape.iter().find(|c| c.name.eq_ignore_ascii_case(column)) else {
                    return Err(HemvistError::invalid(format!(
                        "mask: table {table} has no column {column} (it has {}); nothing was done",
                        shape
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                };
                if c.primary_key && *rule != Rule::Keep {
                    return Err(HemvistError::invalid(format!(
                        "mask: {table}.{column} is the table's primary key, which is never \
                         masked; nothing was done"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contacts(table: &str) -> Option<Vec<ColumnShape>> {
        (table == "contacts").then(|| {
            ["id", "name", "email"]
                .iter()
                .map(|n| ColumnShape {
                    name: n.to_string(),
                    not_null: true,
                    primary_key: *n == "id",
                })
                .collect()
        })
    }

    #[test]
    fn a_mask_names_tables_columns_and_rules_and_is_checked_against_the_schema() {
        let m = Mask::parse("[contacts]\nname = \"fake_name\"\nemail = \"fake_email\"\n").unwrap();
        assert_eq!(m.tables["contacts"]["email"], Rule::FakeEmail);
        assert!(!m.is_empty());
        m.check(contacts).unwrap();
        assert!(Mask::parse("").unwrap().is_empty());

        let unknown_table = Mask::parse("[people]\nname = \"null\"\n").unwrap();
        let err = unknown_table.check(contacts).unwrap_err();
        assert!(err.message.contains("no table people"), "{err}");
        let unknown_column = Mask::parse("[contacts]\nphone = \"hash\"\n").unwrap();
        let err = unknown_column.check(contacts).unwrap_err();
        assert!(err.message.contains("no column phone"), "{err}");
        let key = Mask::parse("[contacts]\nid = \"hash\"\n").unwrap();
        assert!(key.check(contacts).is_err());

        for bad in [
            "[contacts]\nname = \"scramble\"\n",
            "[contacts]\nname = 3\n",
            "contacts = \"hash\"\n",
            "[\"con tacts\"]\nname = \"hash\"\n",
            "[contacts]\n\"na;me\" = \"hash\"\n",
            "not toml at all [",
        ] {
            assert!(Mask::parse(bad).is_err(), "{bad}");
        }
        assert!(Mask::parse(&"#".repeat(MAX_MASK_BYTES + 1)).is_err());
    }
}
