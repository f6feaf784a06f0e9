//! The node-to-node side of a move: the target reads the moved org's backup objects from its
//! source here, with the move's bearer credential. `GET /internal/v1/moves/{org}/catalog`
//! lists what it may copy (`?since_ms=T`: only what a target that has everything up to T
//! needs); `GET /internal/v1/moves/{org}/objects/{key}` (with an optional
//! `Range: bytes=a-b`) reads one object, its whole size in `x-hemvist-object-size`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hemvist_proto::{HemvistError, OrgId};

use super::error_response;
use crate::moves::remote::OBJECT_SIZE;
use crate::Node;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// `bytes=a-b` (both ends given, inclusive), the only form a target sends.
fn range(headers: &HeaderMap) -> Result<Option<std::ops::Range<u64>>, HemvistError> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let bad = || HemvistError::invalid("Range must be bytes=FIRST-LAST");
    let (a, b) = v
        .to_str()
        .map_err(|_| bad())?
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if b < a {
        return Err(bad());
    }
    Ok(Some(a..b.checked_add(1).ok_or_else(bad)?))
}

fn store(node: &Node) -> Result<&Arc<dyn object_store::ObjectStore>, HemvistError> {
    node.backup
        .as_ref()
        .map(|b| &b.store)
        .ok_or_else(|| HemvistError::unavailable("this node keeps no backups to move from"))
}

#[derive(serde::Deserialize)]
pub struct Since {
    since_ms: Option<i64>,
}

pub async fn catalog(
    State(node): State<Arc<Node>>,
    Path(org): Path<String>,
    since: Result<Query<Since>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let org = OrgId::parse(&org)?;
        let Query(since) =
            since.map_err(|_| HemvistError::invalid("since_ms must be milliseconds"))?;
        let backup = node
            .backup
            .as_ref()
            .ok_or_else(|| HemvistError::unavailable("this node keeps no backups to move from"))?;
        node.moves_out
            .catalog(backup, &org, bearer(&headers), since.since_ms)
            .await
    }
    .await;
    match answer {
        Ok(wire) => axum::Json(wire).into_response(),
        Err(e) => error_response(true, &e),
    }
}

pub async fn object(
    State(node): State<Arc<Node>>,
    Path((org, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let org = OrgId::parse(&org)?;
        node.moves_out
            .object(store(&node)?, &org, bearer(&headers), &key, || {
                range(&headers)
            })
            .await
    }
    .await;
    match answer {
        Ok((bytes, size)) => {
            let mut resp = (StatusCode::OK, Body::from(bytes)).into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
                h.insert(OBJECT_SIZE, v);
            }
            resp
        }
        Err(e) => error_response(true, &e),
    }
}
