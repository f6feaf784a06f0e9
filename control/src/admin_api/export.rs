//! `GET /orgs/{id}/export?format=sqlite|jsonl`: the org's GDPR export, made on its home node
//! and streamed through to the requester; its manifest in the `x-hemvist-manifest` header
//! (JSON). Audited as `org.exported` once the node has made it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hemvist_proto::HemvistError;

use super::{blocking, Actor, ApiError};
use crate::plane::Plane;

const MANIFEST_HEADER: &str = "x-hemvist-manifest";

#[derive(serde::Deserialize)]
pub struct ExportQuery {
    format: Option<String>,
}

pub async fn export(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let Query(q) = query.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let format = q.format.unwrap_or_else(|| "sqlite".into());
    let source = blocking(&plane, move |c| c.export_source(&id, &format)).await?;
    hemvist_net::tls::install_crypto();
    let mut http = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5));
    if let Some(pem) = &plane.node_ca_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| ApiError(HemvistError::internal(format!("node_ca_file: {e}"))))?
        {
            http = http.add_root_certificate(cert);
        }
    }
    let http = http
        .build()
        .map_err(|e| ApiError(HemvistError::internal(e.to_string())))?;
    let resp = http
        .get(&source.url)
        .bearer_auth(&source.ticket)
        .send()
        .await
        .map_err(|e| {
            ApiError(HemvistError::unavailable(format!(
                "{}'s node {} did not answer: {e}",
                source.org, source.node
            )))
        })?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err(ApiError(HemvistError::unavailable(format!(
            "{}'s node {} could not make the export ({status}): {text}",
            source.org, source.node
        ))));
    }
    let manifest_text = resp
        .headers()
        .get(MANIFEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let manifest: serde_json::Value = serde_json::from_str(&manifest_text).map_err(|_| {
        ApiError(HemvistError::internal(
            "the node's export came without a manifest",
        ))
    })?;
    let length = resp.headers().get(header::CONTENT_LENGTH).cloned();
    let p = plane.clone();
    let m = manifest.clone();
    let (s, a) = (source, actor);
    blocking(&plane, move |_| p.record_export(&s, &a, &m)).await?;
    let (_, body) = http::Response::<reqwest::Body>::from(resp).into_parts();
    let mut out = (StatusCode::OK, Body::new(body)).into_response();
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(l) = length {
        h.insert(header::CONTENT_LENGTH, l);
    }
    if let Ok(v) = HeaderValue::from_str(&manifest_text) {
        h.insert(MANIFEST_HEADER, v);
    }
    Ok(out)
}
