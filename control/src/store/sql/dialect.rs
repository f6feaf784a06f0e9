//! The store writes its SQL once, in the common part of SQLite's and PostgreSQL's dialects,
//! with SQLite's numbered parameters (`?1`). What PostgreSQL says differently is rewritten
//! here, word by word outside quoted strings:
//!
//! - `?N` becomes `$N`;
//! - `LIKE` becomes `ILIKE` (SQLite's `LIKE` ignores ASCII case; PostgreSQL's does not);
//! - `json_each(?N)` (a JSON array of ids as a table with a `value` column) becomes
//!   `json_array_elements_text($N::text::json)`;
//! - in schema migrations only, `INTEGER` becomes `BIGINT` (SQLite's integers are 64-bit).
//!
//! Keeps true: nothing inside a quoted string or identifier is changed.

/// A statement for PostgreSQL.
pub fn to_postgres(sql: &str) -> String {
    rewrite(sql, false)
}

/// A schema migration for PostgreSQL.
pub fn migration_to_postgres(sql: &str) -> String {
    rewrite(sql, true)
}

fn rewrite(sql: &str, ddl: bool) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' => {
                // Copied as is up to its closing quote (a doubled quote stays inside).
                out.push(c);
                i += 1;
                while i < chars.len() {
                    out.push(chars[i]);
                    if chars[i] == c {
                        if chars.get(i + 1) == Some(&c) {
                            out.push(c);
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    out.push(chars[i]);
                    i += 1;
                }
            }
            '?' => {
                out.push('$');
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let upper = word.to_ascii_uppercase();
                if upper == "LIKE" {
                    out.push_str("ILIKE");
                } else if ddl && upper == "INTEGER" {
                    out.push_str("BIGINT");
                } else if word.eq_ignore_ascii_case("json_each") && chars.get(i) == Some(&'(') {
                    // json_each(?N) -> json_array_elements_text($N::json)
                    let close = chars[i..].iter().position(|&c| c == ')').map(|p| i + p);
                    match close {
                        Some(close) => {
                            let inner: String = chars[i + 1..close].iter().collect();
                            out.push_str("json_array_elements_text(");
                            out.push_str(&inner.trim().replace('?', "$"));
                            out.push_str("::text::json)");
                            i = close + 1;
                        }
                        None => out.push_str(&word),
                    }
                } else {
                    out.push_str(&word);
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_like_and_json_each_are_rewritten_outside_strings() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE b = ?1 AND c LIKE ?2 ESCAPE '\\' AND d = '?3 like'"),
            "SELECT a FROM t WHERE b = $1 AND c ILIKE $2 ESCAPE '\\' AND d = '?3 like'"
        );
        assert_eq!(
            to_postgres("SELECT x FROM t WHERE id IN (SELECT value FROM json_each(?1))"),
            "SELECT x FROM t WHERE id IN (SELECT value FROM json_array_elements_text($1::text::json))"
        );
        assert_eq!(
            to_postgres("SELECT 'it''s ?1', \"likes\" FROM t -- a ?2 comment\nWHERE a = ?3"),
            "SELECT 'it''s ?1', \"likes\" FROM t -- a ?2 comment\nWHERE a = $3"
        );
        // A word that only contains LIKE is left alone.
        assert_eq!(to_postgres("SELECT likely FROM t"), "SELECT likely FROM t");
    }

    #[test]
    fn migrations_widen_integers_only_as_words() {
        assert_eq!(
            migration_to_postgres("CREATE TABLE t (a INTEGER NOT NULL, integers TEXT)"),
            "CREATE TABLE t (a BIGINT NOT NULL, integers TEXT)"
        );
        assert_eq!(
            to_postgres("SELECT CAST(a AS INTEGER)"),
            "SELECT CAST(a AS INTEGER)"
        );
    }
}
