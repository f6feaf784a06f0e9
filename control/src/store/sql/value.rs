//! What crosses between the store and either engine: a parameter or a column is one
//! [`Value`] (NULL, a 64-bit integer, a real, text or bytes, the types SQLite has), converted
//! from and to Rust types by [`ToValue`] and [`FromValue`]. A row is read whole into a
//! [`Row`]; a column that is not what the reader asks for is an error, never a default.

use super::Error;

/// One parameter or column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

/// A Rust value as a parameter.
pub trait ToValue {
    fn to_value(&self) -> Result<Value, Error>;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Result<Value, Error> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Result<Value, Error> {
        match self {
            Some(v) => v.to_value(),
            None => Ok(Value::Null),
        }
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Result<Value, Error> {
        Ok(self.clone())
    }
}

impl ToValue for str {
    fn to_value(&self) -> Result<Value, Error> {
        Ok(Value::Text(self.to_string()))
    }
}

impl ToValue for String {
    fn to_value(&self) -> Result<Value, Error> {
        Ok(Value::Text(self.clone()))
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Result<Value, Error> {
        Ok(Value::Blob(self.to_vec()))
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Result<Value, Error> {
        Ok(Value::Blob(self.clone()))
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Result<Value, Error> {
        Ok(Value::Int(i64::from(*self)))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Result<Value, Error> {
        Ok(Value::Real(*self))
    }
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Result<Value, Error> {
                i64::try_from(*self)
                    .map(Value::Int)
                    .map_err(|_| Error::Value(format!("{} does not fit a 64-bit integer", self)))
            }
        }

        impl FromValue for $t {
            fn from_value(v: &Value) -> Result<Self, Error> {
                match v {
                    Value::Int(i) => <$t>::try_from(*i).map_err(|_| {
                        Error::Value(format!("{i} is out of range for {}", stringify!($t)))
                    }),
                    other => Err(mismatch("an integer", other)),
                }
            }
        }
    )*};
}
integer!(i64, i32, u32, u64, usize, u16, u8);

/// A column as a Rust value.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Result<Self, Error>;
}

fn mismatch(wanted: &str, found: &Value) -> Error {
    Error::Value(format!("expected {wanted}, found {}", found.kind()))
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Result<Self, Error> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Result<Self, Error> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => Err(mismatch("text", other)),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Result<Self, Error> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            other => Err(mismatch("bytes", other)),
        }
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> Result<Self, Error> {
        match v {
            Value::Int(i) => Ok(*i != 0),
            other => Err(mismatch("a truth value", other)),
        }
    }
}

impl FromValue for f64 {
    fn from_value(v: &Value) -> Result<Self, Error> {
        match v {
            Value::Real(r) => Ok(*r),
            Value::Int(i) => Ok(*i as f64),
            other => Err(mismatch("a number", other)),
        }
    }
}

impl FromValue for Value {
    fn from_value(v: &Value) -> Result<Self, Error> {
        Ok(v.clone())
    }
}

/// A column's position in a row.
pub trait RowIndex {
    fn index(&self) -> usize;
}

impl RowIndex for usize {
    fn index(&self) -> usize {
        *self
    }
}

/// One row, read whole.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub(super) values: Vec<Value>,
}

impl Row {
    pub fn get<I: RowIndex, T: FromValue>(&self, idx: I) -> Result<T, Error> {
        let i = idx.index();
        let v = self
            .values
            .get(i)
            .ok_or_else(|| Error::Value(format!("no column {i}")))?;
        T::from_value(v).map_err(|e| match e {
            Error::Value(m) => Error::Value(format!("column {i}: {m}")),
            e => e,
        })
    }
}

/// A statement's parameters: `[]`, an array of values of one type, or `params![...]`.
pub trait Params {
    fn values(self) -> Result<Vec<Value>, Error>;
}

impl Params for &[&dyn ToValue] {
    fn values(self) -> Result<Vec<Value>, Error> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

impl Params for [&dyn ToValue; 0] {
    fn values(self) -> Result<Vec<Value>, Error> {
        Ok(Vec::new())
    }
}

impl Params for Vec<Value> {
    fn values(self) -> Result<Vec<Value>, Error> {
        Ok(self)
    }
}

macro_rules! arrays {
    ($($n:literal),*) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn values(self) -> Result<Vec<Value>, Error> {
                self.iter().map(|v| v.to_value()).collect()
            }
        }
    )*};
}
arrays!(1, 2, 3, 4, 5, 6, 7, 8);

/// `params![a, b, c]`: parameters of different types, in order (`?1`, `?2`, ...).
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::store::sql::ToValue]
    };
    ($($param:expr),+ $(,)?) => {
        &[$(&$param as &dyn $crate::store::sql::ToValue),+] as &[&dyn $crate::store::sql::ToValue]
    };
}
pub(crate) use params;
