//! The branch routes: make a branch of an org (`POST /orgs/{id}/branches`), list and show
//! branches, keep one alive, destroy one. Making and destroying are operations (202).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hemvist_proto::HemvistError;
use serde::Deserialize;

use super::{blocking, json_body, Actor, ApiError};
use crate::operations::branch::BranchRequest;
use crate::plane::Plane;

type PathResult = Result<Path<String>, axum::extract::rejection::PathRejection>;

fn path(id: PathResult) -> Result<String, ApiError> {
    id.map(|Path(id)| id)
        .map_err(|e| ApiError(HemvistError::invalid(e.body_text())))
}

/// `POST /orgs/{id}/branches`: 202 with the operation that makes it; 422 if the parent's
/// residency policy forbids the region, 400 for a bad name, TTL or mask (nothing is done).
pub async fn create(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: PathResult,
    body: Result<Json<BranchRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let id = path(id)?;
    let req = json_body(body)?;
    let op = blocking(&plane, move |c| c.request_branch(&id, req, &actor)).await?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    org: Option<String>,
}

/// `GET /branches[?org=ID]`: every live branch (of that org).
pub async fn list(
    State(plane): State<Arc<Plane>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let all = blocking(&plane, move |c| c.list_branches(q.org.as_deref())).await?;
    Ok(Json(all).into_response())
}

pub async fn show(State(plane): State<Arc<Plane>>, id: PathResult) -> Result<Response, ApiError> {
    let id = path(id)?;
    Ok(Json(blocking(&plane, move |c| c.show_branch(&id)).await?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    /// How far from now; the branch's TTL if absent.
    #[serde(default)]
    for_ms: Option<u64>,
}

/// `POST /branches/{id}/keepalive {"for_ms"?: N}`: the branch as it is now.
pub async fn keepalive(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: PathResult,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let id = path(id)?;
    let req: Keepalive = if body.iter().all(u8::is_ascii_whitespace) {
        Keepalive::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(HemvistError::invalid(format!("the body: {e}"))))?
    };
    let kept = blocking(&plane, move |c| {
        c.keep_branch_alive(&id, req.for_ms, &actor, "asked by an operator")
    })
    .await?;
    Ok(Json(kept).into_response())
}

/// `DELETE /branches/{id}`: 202 with the operation that destroys it.
pub async fn destroy(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: PathResult,
) -> Result<Response, ApiError> {
    let id = path(id)?;
    let op = blocking(&plane, move |c| c.destroy_branch(&id, &actor)).await?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}
