//! The PostgreSQL engine: one connection, owned by a thread of its own (the `postgres` client
//! blocks on a runtime of its own, which cannot run inside the control plane's), to which each
//! statement is handed with its owned parameters and from which its rows come back whole.
//! Statements are translated once ([`super::dialect`]) and prepared once per connection.
//!
//! TLS: `sslmode` in the URL, checked by rustls (`pg_tls`).
//!
//! Keeps true: the connection string is never logged or shown (it may hold a password); a
//! lost connection fails the statement in flight (and so its transaction) and is opened
//! again for the next one.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::mpsc;

use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};

use super::value::{Row, Value};
use super::{dialect, Error};

enum Job {
    Rows(
        String,
        Vec<Value>,
        mpsc::SyncSender<Result<Vec<Row>, Error>>,
    ),
    Execute(String, Vec<Value>, mpsc::SyncSender<Result<usize, Error>>),
    Batch(String, mpsc::SyncSender<Result<(), Error>>),
}

/// A handle on the connection's thread.
pub struct Pg {
    jobs: mpsc::Sender<Job>,
}

impl Pg {
    /// Connects (and fails now if it cannot), then serves statements on its own thread.
    pub fn connect(url: &str) -> Result<Pg, Error> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::sync_channel(1);
        let url = url.to_string();
        std::thread::Builder::new()
            .name("control-store-pg".into())
            .spawn(move || {
                let mut conn = match Connection::open(&url) {
                    Ok(c) => {
                        let _ = ready.send(Ok(()));
                        Some(c)
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                // Inside BEGIN ... COMMIT as this thread saw it; and whether the connection
                // was lost there, so the rest of that transaction must fail, not run in
                // autocommit on a new connection.
                let mut in_tx = false;
                let mut lost_in_tx = false;
                while let Ok(job) = inbox.recv() {
                    let batch = match &job {
                        Job::Batch(sql, _) => sql.trim().to_ascii_uppercase(),
                        _ => String::new(),
                    };
                    if lost_in_tx {
                        if batch == "ROLLBACK" {
                            lost_in_tx = false;
                            in_tx = false;
                            if let Job::Batch(_, r) = job {
                                drop(r.send(Ok(())));
                            }
                            continue;
                        }
                        let lost = || {
                            Error::Gone(
                                "the connection to PostgreSQL was lost inside a transaction".into(),
                            )
                        };
                        match job {
                            Job::Rows(_, _, r) => drop(r.send(Err(lost()))),
                            Job::Execute(_, _, r) => drop(r.send(Err(lost()))),
                            Job::Batch(_, r) => drop(r.send(Err(lost()))),
                        }
                        continue;
                    }
                    if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
                        if in_tx {
                            lost_in_tx = true;
                            conn = None;
                            let lost = || {
                                Error::Gone(
                                    "the connection to PostgreSQL was lost inside a transaction"
                                        .into(),
                                )
                            };
                            match job {
                                Job::Batch(_, r) if batch == "ROLLBACK" => {
                                    lost_in_tx = false;
                                    in_tx = false;
                                    drop(r.send(Ok(())));
                                }
                                Job::Rows(_, _, r) => drop(r.send(Err(lost()))),
                                Job::Execute(_, _, r) => drop(r.send(Err(lost()))),
                                Job::Batch(_, r) => drop(r.send(Err(lost()))),
                            }
                            continue;
                        }
                        conn = Connection::open(&url).ok();
                    }
                    let Some(c) = conn.as_mut() else {
                        let gone =
                            || Error::Gone("the control store's PostgreSQL is unreachable".into());
                        match job {
                            Job::Rows(_, _, r) => drop(r.send(Err(gone()))),
                            Job::Execute(_, _, r) => drop(r.send(Err(gone()))),
                            Job::Batch(_, r) => drop(r.send(Err(gone()))),
                        }
                        continue;
                    };
                    match job {
                        Job::Rows(sql, params, reply) => drop(reply.send(c.rows(&sql, &params))),
                        Job::Execute(sql, params, reply) => {
                            drop(reply.send(c.execute(&sql, &params)))
                        }
                        Job::Batch(sql, reply) => {
                            let done = c.batch(&sql);
                            match batch.as_str() {
                                "BEGIN" => in_tx = done.is_ok(),
                                "COMMIT" | "ROLLBACK" => in_tx = false,
                                _ => {}
                            }
                            drop(reply.send(done))
                        }
                    }
                }
            })
            .map_err(|e| Error::Gone(format!("start the store's connection thread: {e}")))?;
        started
            .recv()
            .map_err(|_| Error::Gone("the store's connection thread ended".into()))??;
        Ok(Pg { jobs })
    }

    fn ask<T>(
        &self,
        job: impl FnOnce(mpsc::SyncSender<Result<T, Error>>) -> Job,
    ) -> Result<T, Error> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(job(reply))
            .map_err(|_| Error::Gone("the store's connection thread ended".into()))?;
        answer
            .recv()
            .map_err(|_| Error::Gone("the store's connection thread ended".into()))?
    }

    pub fn rows(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>, Error> {
        self.ask(|r| Job::Rows(sql.to_string(), params, r))
    }

    pub fn execute(&self, sql: &str, params: Vec<Value>) -> Result<usize, Error> {
        self.ask(|r| Job::Execute(sql.to_string(), params, r))
    }

    /// Statements as they are (a migration, already translated), separated by semicolons.
    pub fn batch(&self, sql: &str) -> Result<(), Error> {
        self.ask(|r| Job::Batch(sql.to_string(), r))
    }
}

struct Connection {
    client: Client,
    prepared: HashMap<String, Statement>,
}

impl Connection {
    fn open(url: &str) -> Result<Connection, Error> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| Error::Gone(format!("the store's PostgreSQL URL: {e}")))?;
        if config.get_password().is_none() {
            if let Ok(p) = std::env::var("PGPASSWORD") {
                config.password(p);
            }
        }
        if config.get_application_name().is_none() {
            config.application_name("hemvist-control");
        }
        config.connect_timeout(std::time::Duration::from_secs(10));
        // NOTICEs ("already exists, skipping") are not the control plane's news. A session
        // left inside a transaction (its process frozen or cut off) is ended by the server,
        // so the lease row it share-locked is free for the next leader; a lock is waited on
        // for a bounded time (then the write is retried, as any busy one).
        if config.get_options().is_none() {
            config.options(
                "-c client_min_messages=warning -c idle_in_transaction_session_timeout=5000 \
                 -c lock_timeout=5000",
            );
        }
        // A dead server or network is noticed within seconds, not TCP's minutes.
        config
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(5))
            .keepalives_interval(std::time::Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(std::time::Duration::from_secs(10));
        let client = match config.get_ssl_mode() {
            postgres::config::SslMode::Disable => config.connect(NoTls),
            _ => {
                let tls = super::pg_tls::Rustls::from_environment()
                    .map_err(|e| Error::Gone(format!("TLS to PostgreSQL: {e:#}")))?;
                config.connect(tls)
            }
        }
        .map_err(|e| pg_error(&e))?;
        Ok(Connection {
            client,
            prepared: HashMap::new(),
        })
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, Error> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let stmt = self
            .client
            .prepare(&dialect::to_postgres(sql))
            .map_err(|e| pg_error(&e))?;
        if self.prepared.len() > 512 {
            self.prepared.clear();
        }
        self.prepared.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    fn rows(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, Error> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = self.client.query(&stmt, &refs).map_err(|e| pg_error(&e))?;
        rows.iter()
            .map(|r| {
                let values = (0..r.len())
                    .map(|i| column(r, i))
                    .collect::<Result<Vec<_>, Error>>()?;
                Ok(Row { values })
            })
            .collect()
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<usize, Error> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let n = self
            .client
            .execute(&stmt, &refs)
            .map_err(|e| pg_error(&e))?;
        Ok(n as usize)
    }

    fn batch(&mut self, sql: &str) -> Result<(), Error> {
        self.client.batch_execute(sql).map_err(|e| pg_error(&e))
    }
}

fn pg_error(e: &postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::Postgres {
            code: db.code().code().to_string(),
            message: db.message().to_string(),
        },
        None if e.is_closed() => Error::Gone("the connection to PostgreSQL was closed".into()),
        None => Error::Gone(match e.source() {
            Some(s) => format!("PostgreSQL: {e}: {s}"),
            None => format!("PostgreSQL: {e}"),
        }),
    }
}

fn column(r: &postgres::Row, i: usize) -> Result<Value, Error> {
    let ty = r.columns()[i].type_().clone();
    let bad = |e: postgres::Error| Error::Value(format!("column {i} ({ty}): {e}"));
    Ok(match ty {
        Type::INT8 => r.try_get::<_, Option<i64>>(i).map_err(bad)?.map(Value::Int),
        Type::INT4 => r
            .try_get::<_, Option<i32>>(i)
            .map_err(bad)?
            .map(|v| Value::Int(v.into())),
        Type::INT2 => r
            .try_get::<_, Option<i16>>(i)
            .map_err(bad)?
            .map(|v| Value::Int(v.into())),
        Type::BOOL => r
            .try_get::<_, Option<bool>>(i)
            .map_err(bad)?
            .map(|v| Value::Int(v.into())),
        Type::FLOAT8 => r
            .try_get::<_, Option<f64>>(i)
            .map_err(bad)?
            .map(Value::Real),
        Type::FLOAT4 => r
            .try_get::<_, Option<f32>>(i)
            .map_err(bad)?
            .map(|v| Value::Real(v.into())),
        Type::BYTEA => r
            .try_get::<_, Option<Vec<u8>>>(i)
            .map_err(bad)?
            .map(Value::Blob),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => r
            .try_get::<_, Option<String>>(i)
            .map_err(bad)?
            .map(Value::Text),
        other => {
            return Err(Error::Value(format!(
                "column {i} has type {other}, which the store does not read (cast it)"
            )))
        }
    }
    .unwrap_or(Value::Null))
}

/// A parameter takes the type PostgreSQL inferred for its place: an integer bound where text
/// is wanted is sent as its digits, and so on; what cannot be converted is an error.
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let wrong = || -> Box<dyn std::error::Error + Sync + Send> {
            format!("a {self:?} cannot be sent as {ty}").into()
        };
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i).map_err(|_| wrong())?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i).map_err(|_| wrong())?.to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Int(i), &Type::TEXT | &Type::VARCHAR) => i.to_string().to_sql(ty, out),
            (Value::Real(r), &Type::FLOAT8) => r.to_sql(ty, out),
            (Value::Real(r), &Type::FLOAT4) => (*r as f32).to_sql(ty, out),
            (Value::Text(s), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
                s.to_sql(ty, out)
            }
            (Value::Text(s), &Type::INT8) => s.parse::<i64>().map_err(|_| wrong())?.to_sql(ty, out),
            (Value::Blob(b), &Type::BYTEA) => b.to_sql(ty, out),
            _ => Err(wrong()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}
