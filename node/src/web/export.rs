//! `GET /internal/v1/exports/{org}?format=sqlite|jsonl&expires_ms=T`: the control plane asks
//! the org's home node for a GDPR export (see [`crate::export`]) with a ticket only it and this
//! node can compute (`Authorization: Bearer`, see `hemvist_proto::ticket`). The body is the
//! export, streamed; its manifest is the `x-hemvist-manifest` header (JSON).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hemvist_proto::{ErrorKind, HemvistError, OrgId};

use super::error_response;
use crate::export::{export, Format};
use crate::routing::{route, Route};
use crate::Node;

pub const MANIFEST_HEADER: &str = "x-hemvist-manifest";

#[derive(serde::Deserialize)]
pub struct ExportQuery {
    format: String,
    expires_ms: i64,
}

pub async fn get(
    State(node): State<Arc<Node>>,
    Path(org): Path<String>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let org = OrgId::parse(&org)?;
        let Query(q) = query.map_err(|_| {
            HemvistError::invalid("format (sqlite or jsonl) and expires_ms are required")
        })?;
        let format = Format::parse(&q.format)?;
        let ticket = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let now = crate::clock::now_ms();
        let fresh = q.expires_ms >= now && q.expires_ms <= now + 10 * 60_000;
        if !fresh
            || !hemvist_proto::ticket::export_ticket_ok(
                &node.config.join_token,
                org.as_str(),
                format.as_str(),
                q.expires_ms,
                ticket,
            )
        {
            return Err(HemvistError::new(
                ErrorKind::Unauthenticated,
                "no valid export ticket for this org",
            ));
        }
        if route(&node.state, &node.config.id, &org) != Route::Local {
            return Err(HemvistError::unavailable(format!(
                "{org} is not served by this node now: ask the control plane again"
            )));
        }
        let (tenants, staging) = (node.tenants.clone(), node.config.data_dir.join("exports"));
        let (file, manifest) =
            tokio::task::spawn_blocking(move || export(&tenants, &org, format, &staging))
                .await
                .map_err(|e| HemvistError::internal(e.to_string()))??;
        tracing::info!(org = %manifest.org, format = manifest.format, bytes = manifest.bytes,
            copy_ms = manifest.copy_ms, "export made");
        Ok((file, manifest))
    }
    .await;
    match answer {
        Ok((file, manifest)) => {
            let stream = tokio_util::io::ReaderStream::with_capacity(
                tokio::fs::File::from_std(file),
                1 << 20,
            );
            let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Ok(v) = HeaderValue::from_str(&manifest.bytes.to_string()) {
                h.insert(header::CONTENT_LENGTH, v);
            }
            if let Ok(v) = serde_json::to_string(&manifest)
                .map_err(|e| e.to_string())
                .and_then(|m| HeaderValue::from_str(&m).map_err(|e| e.to_string()))
            {
                h.insert(MANIFEST_HEADER, v);
            }
            resp
        }
        Err(e) => error_response(true, &e),
    }
}
