//! The embedded engine: one SQLite connection, statements cached by their text.

use rusqlite::types::{Value as Sql, ValueRef};

use super::value::{Row, Value};
use super::Error;

fn bind(v: &Value) -> Sql {
    match v {
        Value::Null => Sql::Null,
        Value::Int(i) => Sql::Integer(*i),
        Value::Real(r) => Sql::Real(*r),
        Value::Text(s) => Sql::Text(s.clone()),
        Value::Blob(b) => Sql::Blob(b.clone()),
    }
}

fn column(v: ValueRef<'_>) -> Result<Value, Error> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(
            String::from_utf8(t.to_vec())
                .map_err(|_| Error::Value("text that is not UTF-8".into()))?,
        ),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    })
}

pub fn rows(conn: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>, Error> {
    let mut stmt = conn.prepare_cached(sql)?;
    let n = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter().map(bind)))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let values = (0..n)
            .map(|i| column(r.get_ref(i)?))
            .collect::<Result<Vec<_>, Error>>()?;
        out.push(Row { values });
    }
    Ok(out)
}

pub fn execute(conn: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<usize, Error> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt.execute(rusqlite::params_from_iter(params.iter().map(bind)))?)
}
