//! The tenant schema's routes: the migration files the control plane holds (`GET`, and `POST`
//! to add files, which are refused if a known one was edited), `migrate status`, and pins.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hemvist_proto::migration::MigrationFile;
use hemvist_proto::HemvistError;
use serde::Deserialize;

use super::{blocking, json_body, Actor, ApiError};
use crate::plane::Plane;

/// The most bytes a request that carries migration files may have.
pub const FILES_BODY_LIMIT: usize = 8 << 20;

/// `GET /migrations`: every file held (without its SQL), and the current version.
pub async fn list(State(plane): State<Arc<Plane>>) -> Result<Response, ApiError> {
    let view = blocking(&plane, |c| {
        let files: Vec<serde_json::Value> = c
            .schema_files()
            .iter()
            .map(|f| {
                serde_json::json!({
                    "version": f.version,
                    "file": f.file_name(),
                    "checksum": f.checksum,
                    "check": f.check,
                })
            })
            .collect();
        Ok(serde_json::json!({"current": c.current_schema()?, "files": files}))
    })
    .await?;
    Ok(Json(view).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GivenFile {
    /// `NNNN_name.sql`.
    pub file: String,
    pub sql: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GivenFiles {
    pub files: Vec<GivenFile>,
}

/// Reads given files as migration files (each checked, and at most 10,000 of them).
pub fn parse_files(given: GivenFiles) -> Result<Vec<MigrationFile>, HemvistError> {
    if given.files.len() > 10_000 {
        return Err(HemvistError::invalid(
            "at most 10000 migration files at once",
        ));
    }
    given
        .files
        .iter()
        .map(|f| MigrationFile::parse(&f.file, f.sql.as_bytes()))
        .collect()
}

/// `POST /migrations`: stores the files not held yet; all refused if one was edited.
pub async fn add(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    body: Result<Json<GivenFiles>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let files = parse_files(json_body(body)?)?;
    let added = blocking(&plane, move |c| c.add_schema_files(files, &actor)).await?;
    Ok(Json(serde_json::json!({"added": added.added, "known": added.known})).into_response())
}

/// `GET /migrations/status`.
pub async fn status(State(plane): State<Arc<Plane>>) -> Result<Response, ApiError> {
    let status = blocking(&plane, |c| c.schema_status()).await?;
    Ok(Json(status).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /orgs/{id}/pin`: rollouts leave the org at its version until it is unpinned.
pub async fn pin(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Json<PinRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let req = json_body(body)?;
    let view = blocking(&plane, move |c| {
        c.pin_org(&id, Some(req.reason.as_deref().unwrap_or("")), &actor)
    })
    .await?;
    Ok(Json(view).into_response())
}

/// `POST /orgs/{id}/unpin`.
pub async fn unpin(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let view = blocking(&plane, move |c| c.pin_org(&id, None, &actor)).await?;
    Ok(Json(view).into_response())
}

/// `POST /migrations/rollouts`: starts a rollout (202, the operation).
pub async fn apply(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    body: Result<
        Json<crate::operations::rollout::RolloutRequest>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    let op = blocking(&plane, move |c| c.request_rollout(req, &actor)).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(op)).into_response())
}

/// `POST /operations/{id}/pause`: a rollout sends nothing new until resumed.
pub async fn pause(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let op = blocking(&plane, move |c| c.pause_rollout(&id, &actor)).await?;
    Ok(Json(op).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// A newer version to go on to (its files held already).
    #[serde(default)]
    pub to: Option<u32>,
}

/// `POST /operations/{id}/resume`: a paused or halted rollout goes on (to `to`, if given).
pub async fn resume(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Json<ResumeRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let req = json_body(body)?;
    let op = blocking(&plane, move |c| c.resume_rollout(&id, req.to, &actor)).await?;
    Ok(Json(op).into_response())
}

/// `POST /orgs/{id}/rollback`: the org back to before its last migration (`confirm` needed).
pub async fn rollback(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<
        Json<crate::operations::rollback::RollbackRequest>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let req = json_body(body)?;
    let op = blocking(&plane, move |c| c.request_rollback(&id, req, &actor)).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(op)).into_response())
}
