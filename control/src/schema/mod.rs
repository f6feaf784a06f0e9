//! The tenant schema, decided here: the migration files the control plane holds (given by
//! operators with `hemvist migrate ... --dir`, the binary's built-in set at first start), the
//! version new orgs start at, and the version each org is held at. A node creates a tenant at
//! the version it is told, with the files it is sent, and migrates one only when told
//! (`operations::rollout`), so a rollout needs no node redeploy.
//!
//! Keeps true: a file, once held, never changes (a known version under another checksum is
//! refused, naming both); files are numbered 1, 2, 3, ... without a gap; the files in memory are
//! the store's.

use std::sync::Arc;

use hemvist_proto::migration::{self, MigrationFile};
use hemvist_proto::{ErrorKind, HemvistError};

use crate::link::SchemaTarget;
use crate::plane::Plane;
use crate::store::{AddedFiles, OrgRecord};

pub mod status;

impl Plane {
    /// Adds the built-in files the store lacks (a built-in file the store holds under another
    /// checksum is logged, and the held one kept), sets the current version at first start,
    /// and reads what the store holds into memory.
    pub(crate) fn load_schema(&self) -> anyhow::Result<()> {
        let store = &self.store;
        let builtin = migration::builtin();
        let held = store.schema_files()?;
        let new: Vec<MigrationFile> = builtin
            .iter()
            .filter(|b| match held.iter().find(|h| h.version == b.version) {
                Some(h) if h.checksum != b.checksum => {
                    tracing::error!(file = %b.file_name(), held = %h.checksum, built_in = %b.checksum,
                        "a built-in migration file differs from the one this control plane holds \
                         (edited after it shipped?); the held one is kept");
                    false
                }
                Some(_) => false,
                None => true,
            })
            .cloned()
            .collect();
        if !new.is_empty() {
            if let Err(e) = store.add_schema_files(&new, "built-in")? {
                tracing::error!(file = %e.file, "a built-in migration file was refused");
            }
        }
        let files = store.schema_files()?;
        if store.schema_current()?.is_none() {
            // First start (or the first with a held schema): orgs so far were brought to the
            // newest built-in version by their nodes.
            store.set_schema_current(files.last().map_or(0, |f| f.version))?;
        }
        *self.schema.0.write().unwrap_or_else(|p| p.into_inner()) = files.into();
        Ok(())
    }

    fn all_files(&self) -> Arc<[MigrationFile]> {
        self.schema
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every file held, in order.
    pub fn schema_files(&self) -> Arc<[MigrationFile]> {
        self.all_files()
    }

    /// The version new orgs start at.
    pub fn current_schema(&self) -> Result<u32, HemvistError> {
        Ok(self.store.schema_current()?.unwrap_or(0))
    }

    /// The version a new org starts at: a running rollout's target, else the current one.
    pub fn new_org_schema(&self) -> Result<u32, HemvistError> {
        match self.rollout_target()? {
            Some(v) => Ok(v.max(self.current_schema()?)),
            None => self.current_schema(),
        }
    }

    /// `version` and every file up to it; an error if the control plane holds no such version.
    pub fn schema_target(&self, version: u32) -> Result<SchemaTarget, HemvistError> {
        let all = self.all_files();
        if version as usize > all.len() {
            return Err(HemvistError::not_found(format!(
                "schema version {version} is not held here (the newest is {}); send its file \
                 with `hemvist migrate apply --dir DIR`",
                all.len()
            )));
        }
        Ok(SchemaTarget {
            version,
            files: all[..version as usize].to_vec().into(),
        })
    }

    /// The schema `org` is held at.
    pub fn schema_of(&self, org: &OrgRecord) -> Result<SchemaTarget, HemvistError> {
        let version = match org.schema_version {
            Some(v) => v,
            None => self.current_schema()?,
        };
        self.schema_target(version)
    }

    /// Pins (`Some(reason)`) or unpins an org: rollouts leave a pinned org at its version.
    pub fn pin_org(
        &self,
        org: &str,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<serde_json::Value, HemvistError> {
        let org = hemvist_proto::OrgId::parse(org)?;
        if self.store.org(&org)?.is_none() {
            return Err(HemvistError::not_found(format!("no org {org}")));
        }
        let reason: Option<String> =
            reason.map(|r| r.chars().filter(|c| !c.is_control()).take(200).collect());
        let changed = self.store.set_pin(&org, reason.as_deref(), actor)?;
        // A rollout counts pinned orgs apart: its passes look at every org again.
        self.forget_rollout_passes();
        Ok(serde_json::json!({"org": org, "pinned": reason.is_some(), "changed": changed}))
    }

    /// Stores the files the control plane does not hold yet (audited); refuses all of them if
    /// one is a held version under another checksum (409, naming the file and both checksums)
    /// or if they would leave a gap (400).
    pub fn add_schema_files(
        &self,
        mut files: Vec<MigrationFile>,
        actor: &str,
    ) -> Result<AddedFiles, HemvistError> {
        files.sort_by_key(|f| f.version);
        if let Some(w) = files.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(HemvistError::invalid(format!(
                "two files have version {}: {} and {}",
                w[0].version,
                w[0].file_name(),
                w[1].file_name()
            )));
        }
        let mut next = self.all_files().len() as u32 + 1;
        for f in &files {
            if f.version < next {
                continue;
            }
            if f.version != next {
                return Err(HemvistError::invalid(format!(
                    "{} would leave a gap: the control plane holds versions up to {}, and no \
                     file given is version {next}; nothing was stored",
                    f.file_name(),
                    next - 1
                )));
            }
            next += 1;
        }
        match self.store.add_schema_files(&files, actor)? {
            Ok(added) => {
                let now = self.store.schema_files()?;
                *self.schema.0.write().unwrap_or_else(|p| p.into_inner()) = now.into();
                Ok(added)
            }
            Err(edited) => Err(HemvistError::new(
                ErrorKind::Conflict,
                format!(
                    "{} was edited after it shipped: the control plane holds it with checksum \
                     {}, the file given has {}; a shipped migration never changes (add a new \
                     file instead); nothing was stored",
                    edited.file, edited.held, edited.given
                ),
            )),
        }
    }
}
