//! The `commands` table: every command sent to a node, with its state, so that after a crash of
//! either side the reconciler re-drives exactly what is unfinished, under the same ids. Kind and
//! state are closed enums: a value this binary does not know is a corrupt row, never a guess.

use super::sql::{params, Conn, OptionalExtension};
use hemvist_proto::{ErrorKind, Generation, NodeId, OrgId};
use serde::Serialize;

use super::db::Store;
use super::error::{Result, StoreError};
use crate::clock::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Host,
    Drop,
    AddUser,
    /// The steps of a move (see `operations::move_org`).
    MoveOut,
    MoveIn,
    Fence,
    FinishMove,
    EndMove,
    /// A tenant's schema migration (a rollout's step, see `operations::rollout`).
    Migrate,
    /// A branch destroyed on its node (see `operations::branch_expiry`).
    Destroy,
    /// What a region's store holds of an org, asked of one of its nodes (a move's recovery).
    Probe,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Host => "host",
            CommandKind::Drop => "drop",
            CommandKind::AddUser => "add_user",
            CommandKind::MoveOut => "move_out",
            CommandKind::MoveIn => "move_in",
            CommandKind::Fence => "fence",
            CommandKind::FinishMove => "finish_move",
            CommandKind::EndMove => "end_move",
            CommandKind::Migrate => "migrate",
            CommandKind::Destroy => "destroy",
            CommandKind::Probe => "probe",
        }
    }

    pub const ALL: [CommandKind; 11] = [
        CommandKind::Host,
        CommandKind::Drop,
        CommandKind::AddUser,
        CommandKind::MoveOut,
        CommandKind::MoveIn,
        CommandKind::Fence,
        CommandKind::FinishMove,
        CommandKind::EndMove,
        CommandKind::Migrate,
        CommandKind::Destroy,
        CommandKind::Probe,
    ];

    pub fn parse(s: &str) -> Result<Self> {
        CommandKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| StoreError::corrupt(format!("unknown command kind {s:?}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Recorded, never sent.
    Pending,
    /// Sent at least once, not answered.
    Sent,
    Done,
    /// Failed in a way retrying can fix; sent again after a while.
    Retry,
    /// Failed in a way retrying cannot fix.
    Failed,
}

impl CommandState {
    /// The states the reconciler still has work for.
    pub const OPEN: [CommandState; 3] = [
        CommandState::Pending,
        CommandState::Sent,
        CommandState::Retry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Pending => "pending",
            CommandState::Sent => "sent",
            CommandState::Done => "done",
            CommandState::Retry => "retry",
            CommandState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(CommandState::Pending),
            "sent" => Ok(CommandState::Sent),
            "done" => Ok(CommandState::Done),
            "retry" => Ok(CommandState::Retry),
            "failed" => Ok(CommandState::Failed),
            other => Err(StoreError::corrupt(format!(
                "unknown command state {other:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CommandRecord {
    pub id: String,
    pub node_id: NodeId,
    pub org: OrgId,
    pub kind: CommandKind,
    pub generation: Generation,
    pub state: CommandState,
    pub attempts: u32,
    /// Why the node refused it, when it did: the kind, and the node's message.
    pub error_kind: Option<ErrorKind>,
    pub error: Option<String>,
    pub updated_ms: i64,
    /// What the command carries beyond its kind (JSON); never shown by the API, as it may hold
    /// a password hash.
    #[serde(skip)]
    pub payload: Option<String>,
    /// The operation this command is a step of.
    pub operation: Option<String>,
    /// What the node reported doing it (JSON), for an operation's step.
    pub result: Option<serde_json::Value>,
}

/// A command to record in state `pending`.
pub struct NewCommand<'a> {
    pub id: &'a str,
    pub node: &'a NodeId,
    pub org: &'a OrgId,
    pub kind: CommandKind,
    pub generation: Generation,
    pub payload: Option<&'a str>,
    pub operation: Option<&'a str>,
}

impl Store {
    /// Records a command unless one with the same id exists (so asking twice is one command);
    /// returns its current record.
    pub fn ensure_command(&self, new: &NewCommand<'_>) -> Result<CommandRecord> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO commands (id, node_id, org, kind, generation, state, created_ms,
               updated_ms, payload, operation) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)
             ON CONFLICT (id) DO NOTHING",
            params![
                new.id,
                new.node.as_str(),
                new.org.as_str(),
                new.kind.as_str(),
                new.generation.get() as i64,
                CommandState::Pending.as_str(),
                now_ms(),
                new.payload,
                new.operation
            ],
        )?;
        command_by_id(&conn, new.id)?
            .ok_or_else(|| StoreError::corrupt(format!("command {} vanished", new.id)))
    }

    pub fn command(&self, id: &str) -> Result<Option<CommandRecord>> {
        command_by_id(&self.lock(), id)
    }

    /// Counts an attempt; a pending command becomes sent.
    pub fn mark_command_sent(&self, id: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE commands SET attempts = attempts + 1, updated_ms = ?2,
               state = CASE WHEN state = ?3 THEN ?4 ELSE state END
             WHERE id = ?1",
            params![
                id,
                now_ms(),
                CommandState::Pending.as_str(),
                CommandState::Sent.as_str()
            ],
        )?;
        Ok(())
    }

    /// Records a node's answer to one of its commands; returns the command, if it is one.
    pub fn ack_command(
        &self,
        node: &NodeId,
        id: &str,
        state: CommandState,
        error: Option<(ErrorKind, &str)>,
        result: Option<&serde_json::Value>,
    ) -> Result<Option<CommandRecord>> {
        let conn = self.lock();
        conn.execute(
            "UPDATE commands SET state = ?3, error_kind = ?4, error = ?5, updated_ms = ?6,
               result = COALESCE(?7, result)
             WHERE id = ?1 AND node_id = ?2",
            params![
                id,
                node.as_str(),
                state.as_str(),
                error.map(|e| e.0.as_str()),
                error.map(|e| e.1),
                now_ms(),
                result.map(|r| r.to_string())
            ],
        )?;
        command_by_id(&conn, id)
    }

    pub fn open_commands(&self, node: &NodeId) -> Result<Vec<CommandRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id FROM commands WHERE node_id = ?1 AND state IN (?2, ?3, ?4)
             ORDER BY created_ms",
        )?;
        let [a, b, c] = CommandState::OPEN.map(CommandState::as_str);
        let ids: Vec<String> = stmt
            .query_map(params![node.as_str(), a, b, c], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        ids.iter()
            .filter_map(|id| command_by_id(&conn, id).transpose())
            .collect()
    }

    pub fn nodes_with_open_commands(&self) -> Result<Vec<NodeId>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT DISTINCT node_id FROM commands WHERE state IN (?1, ?2, ?3)")?;
        let ids: Vec<String> = stmt
            .query_map(CommandState::OPEN.map(CommandState::as_str), |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        ids.into_iter()
            .map(|id| NodeId::try_from(id).map_err(StoreError::corrupt))
            .collect()
    }

    pub fn commands_for_org(&self, org: &OrgId) -> Result<Vec<CommandRecord>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT id FROM commands WHERE org = ?1 ORDER BY created_ms")?;
        let ids: Vec<String> = stmt
            .query_map([org.as_str()], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        ids.iter()
            .filter_map(|id| command_by_id(&conn, id).transpose())
            .collect()
    }

    /// Every step of an operation (by the `commands_by_operation` index).
    pub fn commands_of_operation(&self, operation: &str) -> Result<Vec<CommandRecord>> {
        commands_by_operation(&self.lock(), operation)
    }

    /// The commands of `ids` that exist, in one query.
    pub fn commands_by_ids(&self, ids: &[String]) -> Result<Vec<CommandRecord>> {
        let list = serde_json::to_string(ids).map_err(|e| StoreError::corrupt(e.to_string()))?;
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "{COMMAND_SELECT} WHERE id IN (SELECT value FROM json_each(?1))"
        ))?;
        let rows = stmt.query_map([list], command_row)?;
        rows.map(|r| check_command(r?)).collect()
    }

    pub fn count_open_commands(&self) -> Result<u64> {
        let n = self.lock().query_row(
            "SELECT COUNT(*) FROM commands WHERE state IN (?1, ?2, ?3)",
            CommandState::OPEN.map(CommandState::as_str),
            |r| r.get::<_, i64>(0),
        )?;
        Ok(n as u64)
    }
}

const COMMAND_SELECT: &str = "SELECT id, node_id, org, kind, generation, state, attempts, error,
    updated_ms, payload, error_kind, operation, result FROM commands";

type CommandRow = (
    String,
    String,
    String,
    String,
    i64,
    String,
    u32,
    Option<String>,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn command_row(r: &super::sql::Row) -> super::sql::Result<CommandRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
    ))
}

fn command_by_id(conn: &Conn, id: &str) -> Result<Option<CommandRecord>> {
    conn.query_row(
        &format!("{COMMAND_SELECT} WHERE id = ?1"),
        [id],
        command_row,
    )
    .optional()?
    .map(check_command)
    .transpose()
}

/// Every command of `operation`, in one query (a rollout reads its own at every step).
fn commands_by_operation(conn: &Conn, operation: &str) -> Result<Vec<CommandRecord>> {
    let mut stmt = conn.prepare_cached(&format!("{COMMAND_SELECT} WHERE operation = ?1"))?;
    let rows = stmt.query_map([operation], command_row)?;
    rows.map(|r| check_command(r?)).collect()
}

fn check_command(row: CommandRow) -> Result<CommandRecord> {
    let (
        id,
        node,
        org,
        kind,
        generation,
        state,
        attempts,
        error,
        updated_ms,
        payload,
        error_kind,
        operation,
        result,
    ) = row;
    let result = result
        .map(|r| serde_json::from_str(&r).map_err(StoreError::corrupt))
        .transpose()?;
    let error_kind = super::error::stored_error_kind(error_kind)?;
    Ok(CommandRecord {
        node_id: NodeId::try_from(node).map_err(StoreError::corrupt)?,
        org: OrgId::try_from(org).map_err(StoreError::corrupt)?,
        kind: CommandKind::parse(&kind)?,
        generation: Generation::new(generation as u64).map_err(StoreError::corrupt)?,
        state: CommandState::parse(&state)?,
        id,
        attempts,
        error_kind,
        error,
        updated_ms,
        payload,
        operation,
        result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_states_round_trip_and_unknown_ones_are_corrupt() {
        for kind in CommandKind::ALL {
            assert_eq!(CommandKind::parse(kind.as_str()).unwrap(), kind);
        }
        for state in [
            CommandState::Pending,
            CommandState::Sent,
            CommandState::Done,
            CommandState::Retry,
            CommandState::Failed,
        ] {
            assert_eq!(CommandState::parse(state.as_str()).unwrap(), state);
        }
        assert!(matches!(
            CommandKind::parse("move"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            CommandState::parse("running"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_command_of_an_unknown_kind_is_an_error_not_a_host() {
        let (store, _) = super::super::db::temp_store();
        let (node, org) = (NodeId::parse("n1").unwrap(), OrgId::parse("acme").unwrap());
        let cmd = store
            .ensure_command(&NewCommand {
                id: "c1",
                node: &node,
                org: &org,
                kind: CommandKind::Drop,
                generation: Generation::new(3).unwrap(),
                payload: None,
                operation: None,
            })
            .unwrap();
        assert_eq!(
            (cmd.kind, cmd.state),
            (CommandKind::Drop, CommandState::Pending)
        );
        store
            .lock()
            .execute("UPDATE commands SET kind = 'move' WHERE id = 'c1'", [])
            .unwrap();
        let err = store.command("c1").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert!(!err.retryable());
    }

    #[test]
    fn a_refusal_keeps_its_kind_beside_its_message() {
        let (store, _) = super::super::db::temp_store();
        let (node, org) = (NodeId::parse("n1").unwrap(), OrgId::parse("acme").unwrap());
        store
            .ensure_command(&NewCommand {
                id: "c2",
                node: &node,
                org: &org,
                kind: CommandKind::AddUser,
                generation: Generation::new(1).unwrap(),
                payload: None,
                operation: None,
            })
            .unwrap();
        let cmd = store
            .ack_command(
                &node,
                "c2",
                CommandState::Failed,
                Some((ErrorKind::Conflict, "a different user ada@x exists")),
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(cmd.error_kind, Some(ErrorKind::Conflict));
        assert_eq!(cmd.error.as_deref(), Some("a different user ada@x exists"));
        store
            .lock()
            .execute(
                "UPDATE commands SET error_kind = 'oops' WHERE id = 'c2'",
                [],
            )
            .unwrap();
        assert!(matches!(store.command("c2"), Err(StoreError::Corrupt(_))));
    }
}
