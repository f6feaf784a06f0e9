//! Adding an org's users. Users live in the org's own database on its node; the control plane
//! hashes the password (argon2id) so that plain passwords never reach a node or any disk, and
//! delivers the user as a persisted, idempotent command.

use std::time::{Duration, Instant};

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use hemvist_proto::{ErrorKind, HemvistError, OrgId};
use serde::{Deserialize, Serialize};

use crate::plane::Plane;
use crate::store::{CommandKind, CommandRecord, CommandState, NewCommand};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddUser {
    pub email: String,
    #[serde(default)]
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for AddUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddUser")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
pub struct UserPayload {
    pub email: String,
    pub name: String,
    pub password_hash: String,
    /// Who asked for it (an admin token's name), for the audit log.
    #[serde(default)]
    pub requested_by: String,
}

impl UserPayload {
    /// What an add-user command was recorded with; None if it has no payload that parses.
    pub fn of(cmd: &CommandRecord) -> Option<Self> {
        cmd.payload
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
    }
}

#[derive(Debug, Serialize)]
pub struct UserAdded {
    pub org: OrgId,
    pub email: String,
    pub command: String,
    /// `done`, or `pending` if the node has not confirmed yet (it will be retried).
    pub state: String,
}

fn check(req: &AddUser) -> Result<(String, String), HemvistError> {
    let email = req.email.trim().to_string();
    let valid = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && !email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'));
    if !valid {
        return Err(HemvistError::invalid(
            "email must look like name@example.com",
        ));
    }
    let name = if req.name.trim().is_empty() {
        email.split('@').next().unwrap_or_default().to_string()
    } else {
        req.name.trim().to_string()
    };
    if name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(HemvistError::invalid(
            "name must be at most 200 printable characters",
        ));
    }
    if req.password.chars().count() < 8 || req.password.len() > 1024 {
        return Err(HemvistError::invalid(
            "password must be 8 to 1024 characters",
        ));
    }
    Ok((email, name))
}

fn hash_password(password: &str) -> Result<String, HemvistError> {
    let mut salt = [0u8; 16];
    hemvist_proto::random::fill(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HemvistError::internal(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HemvistError::internal(format!("hash password: {e}")))
}

fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

impl Plane {
    /// Sends the user to the org's node and waits (a while) for it to be stored.
    pub fn add_user(
        &self,
        org: &str,
        req: AddUser,
        actor: &str,
        wait: Duration,
    ) -> Result<UserAdded, HemvistError> {
        let org = OrgId::parse(org)?;
        let (email, name) = check(&req)?;
        let placed = self
            .store
            .org(&org)?
            .ok_or_else(|| HemvistError::not_found(format!("no org {org}")))?;
        // The same request again (same email, same password) finds its earlier command, so a
        // retried call is idempotent. The id itself is random: nothing in it is derived from
        // the password, so it can be logged and shown.
        let earlier = self
            .store
            .commands_for_org(&org)?
            .into_iter()
            .filter(|c| c.kind == CommandKind::AddUser && c.state != CommandState::Failed)
            .find(|c| {
                UserPayload::of(c).is_some_and(|p| {
                    p.email.eq_ignore_ascii_case(&email)
                        && password_matches(&req.password, &p.password_hash)
                })
            });
        let cmd = match earlier {
            Some(cmd) => cmd,
            None => {
                let id = format!("add-user-{org}-{}", hemvist_proto::random::hex(8)?);
                let payload = serde_json::to_string(&UserPayload {
                    email: email.clone(),
                    name,
                    password_hash: hash_password(&req.password)?,
                    requested_by: actor.to_string(),
                })
                .map_err(|e| HemvistError::internal(e.to_string()))?;
                self.store.ensure_command(&NewCommand {
                    id: &id,
                    node: &placed.node_id,
                    org: &org,
                    kind: CommandKind::AddUser,
                    generation: placed.generation,
                    payload: Some(&payload),
                    operation: None,
                })?
            }
        };
        let id = cmd.id.clone();
        self.reconcile_soon(&cmd.node_id);
        let deadline = Instant::now() + wait;
        loop {
            let now = self
                .store
                .command(&id)?
                .ok_or_else(|| HemvistError::internal("command vanished"))?;
            match now.state {
                CommandState::Done => {
                    return Ok(UserAdded {
                        org,
                        email,
                        command: id,
                        state: "done".into(),
                    })
                }
                CommandState::Failed => {
                    let message = now.error.unwrap_or_default();
                    let kind = match now.error_kind {
                        Some(ErrorKind::Conflict) => ErrorKind::Conflict,
                        _ => ErrorKind::InvalidArgument,
                    };
                    return Err(HemvistError::new(
                        kind,
                        format!("the node refused the user: {message}"),
                    ));
                }
                _ if Instant::now() >= deadline => {
                    return Ok(UserAdded {
                        org,
                        email,
                        command: id,
                        state: "pending".into(),
                    })
                }
                _ => std::thread::sleep(Duration::from_millis(25)),
            }
        }
    }
}
