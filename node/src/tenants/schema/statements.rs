//! A migration file split into its statements the way SQLite reads them, so that a failure
//! names the one statement that failed. This is the state machine of SQLite's own
//! `sqlite3_complete`: a `;` ends a statement, except inside a string, a quoted name, a comment
//! or the body of a `CREATE TRIGGER ... END`.
//!
//! Keeps true: the statements, run one after the other, are the file (only whitespace and
//! comments between statements are left out). The split decides only what a failure is said to
//! be; a wrong split could make SQLite refuse a part, never run something the file does not say.

/// What `sqlite3_complete` tells apart.
#[derive(Clone, Copy)]
enum Token {
    Semi,
    Space,
    Other,
    Explain,
    Create,
    Temp,
    Trigger,
    End,
}

/// `sqlite3_complete`'s transitions: `NEXT[state][token]`. States: 0 nothing yet, 1 at the end
/// of a statement, 2 in a statement, 3 after EXPLAIN, 4 after CREATE, 5 in a trigger's body,
/// 6 after a `;` in a trigger's body, 7 after its END.
const NEXT: [[u8; 8]; 8] = [
    //  ;  ws oth expl crt tmp trg end
    [1, 0, 2, 3, 4, 2, 2, 2],
    [1, 1, 2, 3, 4, 2, 2, 2],
    [1, 2, 2, 2, 2, 2, 2, 2],
    [1, 3, 3, 2, 4, 2, 2, 2],
    [1, 4, 2, 2, 2, 4, 5, 2],
    [6, 5, 5, 5, 5, 5, 5, 5],
    [6, 6, 5, 5, 5, 5, 5, 7],
    [1, 7, 5, 5, 5, 5, 5, 5],
];

/// The statements of `sql`, in order, each from its first token to its `;` (the last one may
/// have none).
pub fn split(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut state = 0u8;
    let mut start: Option<usize> = None;
    let mut at = 0;
    while at < bytes.len() {
        let (token, len) = token(&bytes[at..]);
        let next = NEXT[state as usize][token as usize];
        if !matches!(token, Token::Space | Token::Semi) && start.is_none() {
            start = Some(at);
        }
        at += len;
        if next == 1 && matches!(token, Token::Semi) {
            if let Some(s) = start.take() {
                out.push(&sql[s..at]);
            }
        }
        state = next;
    }
    if let Some(s) = start {
        out.push(sql[s..].trim_end());
    }
    out
}

/// The token at the start of `s` (not empty) and its length in bytes. Every length ends on a
/// character boundary: a token ends only at an ASCII byte or at the end of `s`.
fn token(s: &[u8]) -> (Token, usize) {
    let until = |from: usize, end: &[u8]| {
        s[from..]
            .windows(end.len())
            .position(|w| w == end)
            .map_or(s.len(), |i| from + i + end.len())
    };
    match s[0] {
        b';' => (Token::Semi, 1),
        b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => (Token::Space, 1),
        b'-' if s.get(1) == Some(&b'-') => (Token::Space, until(2, b"\n")),
        b'/' if s.get(1) == Some(&b'*') => (Token::Space, until(2, b"*/")),
        b'[' => (Token::Other, until(1, b"]")),
        // A doubled quote inside ends one token and begins the next: still one string.
        q @ (b'\'' | b'"' | b'`') => (Token::Other, until(1, &[q])),
        c if is_word(c) => {
            let len = s.iter().position(|&c| !is_word(c)).unwrap_or(s.len());
            let word = &s[..len];
            let token = if word.eq_ignore_ascii_case(b"create") {
                Token::Create
            } else if word.eq_ignore_ascii_case(b"trigger") {
                Token::Trigger
            } else if word.eq_ignore_ascii_case(b"temp") || word.eq_ignore_ascii_case(b"temporary")
            {
                Token::Temp
            } else if word.eq_ignore_ascii_case(b"end") {
                Token::End
            } else if word.eq_ignore_ascii_case(b"explain") {
                Token::Explain
            } else {
                Token::Other
            };
            (token, len)
        }
        _ => (Token::Other, 1),
    }
}

/// A byte of a name or keyword (non-ASCII bytes are, as in SQLite).
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn statements_end_at_semicolons_outside_strings_comments_and_triggers() {
        let sql = "-- a comment; not a statement\n\
                   CREATE TABLE t (a TEXT DEFAULT 'x;y', \"b;\" INT, [c;] INT);\n\
                   /* ; */ INSERT INTO t (a) VALUES ('it''s; fine');\n\
                   CREATE TEMP TRIGGER t_ai AFTER INSERT ON t BEGIN\n\
                     UPDATE t SET a = CASE WHEN a = '' THEN 'e' END WHERE rowid = new.rowid;\n\
                     SELECT 1;\n\
                   END;\n\
                   ;;\n\
                   CREATE INDEX t_a ON t(a)\n";
        assert_eq!(
            split(sql),
            [
                "CREATE TABLE t (a TEXT DEFAULT 'x;y', \"b;\" INT, [c;] INT);",
                "INSERT INTO t (a) VALUES ('it''s; fine');",
                "CREATE TEMP TRIGGER t_ai AFTER INSERT ON t BEGIN\n\
                   UPDATE t SET a = CASE WHEN a = '' THEN 'e' END WHERE rowid = new.rowid;\n\
                   SELECT 1;\n\
                 END;",
                "CREATE INDEX t_a ON t(a)",
            ]
        );
    }

    #[test]
    fn the_built_in_files_split_into_statements_sqlite_runs_as_the_file() {
        for f in hemvist_proto::migration::builtin() {
            let parts = split(&f.sql);
            assert!(!parts.is_empty(), "{}", f.file_name());
            let whole = rusqlite::Connection::open_in_memory().unwrap();
            let pieces = rusqlite::Connection::open_in_memory().unwrap();
            for c in [&whole, &pieces] {
                c.create_scalar_function("hv_name_words", 1, Default::default(), |_| {
                    Ok("[]".to_string())
                })
                .unwrap();
            }
            let earlier: Vec<_> = hemvist_proto::migration::builtin()
                .into_iter()
                .take_while(|e| e.version < f.version)
                .collect();
            for e in &earlier {
                whole.execute_batch(&e.sql).unwrap();
                pieces.execute_batch(&e.sql).unwrap();
            }
            whole.execute_batch(&f.sql).unwrap();
            for p in parts {
                // One statement each: `prepare` refuses more than one.
                pieces.prepare(p).unwrap();
                pieces.execute_batch(p).unwrap();
            }
            let schema = |c: &rusqlite::Connection| -> Vec<String> {
                c.prepare("SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY name")
                    .unwrap()
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            };
            assert_eq!(schema(&whole), schema(&pieces), "{}", f.file_name());
        }
    }
}
