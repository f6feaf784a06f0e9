//! The operator's JSON API (axum), behind a bearer token. A thin adapter over the domain
//! ([`Plane`]): parse, call, map the error kind to an HTTP status. Every route but `/healthz`,
//! `/metrics` and `/api/v1/openapi.json` (the API described) needs the admin token.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hemvist_proto::{ErrorKind, HemvistError, OrgId};
use serde::Serialize;

mod branches;
mod export;
mod openapi;
mod schema;

use crate::metrics::Gauges;
use crate::orgs::CreateOrg;
use crate::plane::Plane;

pub fn router(plane: Arc<Plane>) -> Router {
    let api = Router::new()
        .route("/regions", get(regions))
        .route("/nodes", get(nodes))
        .route("/orgs", get(list_orgs).post(create_org))
        .route("/orgs/{id}", get(show_org))
        .route("/orgs/{id}/users", axum::routing::post(add_user))
        .route(
            "/orgs/{id}/data-key",
            get(data_key).delete(destroy_data_key),
        )
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{name}/revoke", axum::routing::post(revoke_token))
        .route("/audit", get(recent_audit))
        .route("/audit/verify", get(verify_audit))
        .route("/audit/report", get(audit_report))
        .route("/system", get(system))
        .route("/operations", get(list_operations))
        .route("/operations/{id}", get(show_operation))
        .route(
            "/operations/{id}/cancel",
            axum::routing::post(cancel_operation),
        )
        .route("/orgs/{id}/move", axum::routing::post(move_org))
        .route("/orgs/{id}/erase", axum::routing::post(erase_org))
        .route("/orgs/{id}/residency", axum::routing::post(set_residency))
        .route("/orgs/{id}/export", get(export::export))
        .route("/orgs/{id}/accept-older", axum::routing::post(accept_older))
        .route("/nodes/{id}/drain", axum::routing::post(drain_node))
        .route("/nodes/{id}/undrain", axum::routing::post(undrain_node))
        .route(
            "/migrations",
            get(schema::list)
                .post(schema::add)
                .layer(DefaultBodyLimit::max(schema::FILES_BODY_LIMIT)),
        )
        .route("/migrations/status", get(schema::status))
        .route("/migrations/rollouts", axum::routing::post(schema::apply))
        .route("/operations/{id}/pause", axum::routing::post(schema::pause))
        .route(
            "/operations/{id}/resume",
            axum::routing::post(schema::resume),
        )
        .route("/orgs/{id}/pin", axum::routing::post(schema::pin))
        .route("/orgs/{id}/unpin", axum::routing::post(schema::unpin))
        .route("/orgs/{id}/rollback", axum::routing::post(schema::rollback))
        .route(
            "/orgs/{id}/branches",
            axum::routing::post(branches::create).layer(DefaultBodyLimit::max(
                2 * hemvist_proto::mask::MAX_MASK_BYTES,
            )),
        )
        .route("/branches", get(branches::list))
        .route(
            "/branches/{id}",
            get(branches::show).delete(branches::destroy),
        )
        .route(
            "/branches/{id}/keepalive",
            axum::routing::post(branches::keepalive),
        )
        .fallback(|| async { ApiError(HemvistError::not_found("no such API route")) })
        .layer(middleware::from_fn_with_state(plane.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        // Outside the token's layer: a client reads what the API is before it has a token.
        .route(
            "/api/v1/openapi.json",
            get(|| async { Json(openapi::served()) }),
        )
        .nest("/api/v1", api)
        .layer(middleware::from_fn_with_state(plane.clone(), time_request))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(plane)
}

pub struct ApiError(pub HemvistError);

impl From<HemvistError> for ApiError {
    fn from(e: HemvistError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if self.0.kind == ErrorKind::Internal {
            tracing::error!(error = %self.0, "admin API internal error");
        }
        let body = serde_json::json!({
            "error": {
                "kind": self.0.kind,
                "message": self.0.message,
                "retryable": self.0.kind.retryable(),
            }
        });
        (status, Json(body)).into_response()
    }
}

async fn require_token(State(plane): State<Arc<Plane>>, req: Request, next: Next) -> Response {
    plane.metrics.api_requests.inc();
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let actor = match plane.authenticate(presented) {
        Ok(actor) => actor,
        Err(e) => return ApiError(e).into_response(),
    };
    let Some(actor) = actor else {
        plane.metrics.api_unauthorized.inc();
        let mut resp = ApiError(HemvistError::new(
            ErrorKind::Unauthenticated,
            "missing or wrong admin token (Authorization: Bearer ...)",
        ))
        .into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    let mut req = req;
    req.extensions_mut().insert(Actor(actor));
    let resp = next.run(req).await;
    if resp.status().is_client_error() || resp.status().is_server_error() {
        plane.metrics.api_errors.inc();
    }
    resp
}

/// Who the request's token speaks for: what the audit log records as the actor.
#[derive(Clone)]
struct Actor(String);

/// A JSON body, or why not: too large is 413 on every route, anything else 400.
fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(|e| {
        let kind = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorKind::TooLarge
        } else {
            ErrorKind::InvalidArgument
        };
        ApiError(HemvistError::new(kind, e.body_text()))
    })
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    plane: &Arc<Plane>,
    f: impl FnOnce(&Plane) -> Result<T, HemvistError> + Send + 'static,
) -> Result<T, ApiError> {
    let c = plane.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .map_err(|e| ApiError(HemvistError::internal(e.to_string())))?
        .map_err(ApiError)
}

#[derive(Serialize)]
struct RegionView {
    id: String,
    name: String,
    jurisdiction: String,
    countries: Vec<String>,
    object_store: String,
    object_store_endpoint: Option<String>,
    object_store_s3_region: Option<String>,
    nodes: usize,
    healthy_nodes: usize,
    default: bool,
}

async fn list_operations(State(plane): State<Arc<Plane>>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(blocking(&plane, |c| c.operations()).await?))
}

fn operation_id(
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ApiError(HemvistError::invalid(
            "an operation id is letters, digits and '-'",
        )));
    }
    Ok(id)
}

/// An operation with its steps (the commands it sent) and, while it copies, its progress.
async fn show_operation(
    State(plane): State<Arc<Plane>>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let id = operation_id(id)?;
    Ok(Json(
        blocking(&plane, move |c| c.operation_view(&id)).await?,
    ))
}

async fn cancel_operation(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let id = operation_id(id)?;
    Ok(Json(
        blocking(&plane, move |c| c.cancel_operation(&id, &actor)).await?,
    ))
}

/// `POST /orgs/{id}/move {"to": REGION, "node"?: NODE, "reason"?: TEXT}`: 202 with the move's
/// operation; 422 if its residency policy forbids the region (nothing changes).
async fn move_org(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<
        Json<crate::operations::move_org::MoveRequest>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let req = json_body(body)?;
    let op = blocking(&plane, move |c| c.request_move(&id, req, &actor)).await?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

/// `POST /orgs/{id}/residency {"policy": "EU", "reason": …, "move_to"?: REGION}`: 200 with the
/// org's new policy; 202 with the operation that carries it over first (`move_to`); or 422
/// naming every place the new policy forbids (nothing changes).
async fn set_residency(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<
        Json<crate::residency_change::ResidencyRequest>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Result<impl IntoResponse, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let req = json_body(body)?;
    use crate::residency_change::ResidencyOutcome;
    Ok(
        match blocking(&plane, move |c| c.set_residency(&id, req, &actor)).await? {
            ResidencyOutcome::Changed(org) => Json(serde_json::json!({
                "id": org.id,
                "residency": crate::residency::ResidencyPolicy::from_stored(&org.residency)
                    .describe(),
            }))
            .into_response(),
            ResidencyOutcome::Started(op) => (StatusCode::ACCEPTED, Json(op)).into_response(),
        },
    )
}

/// `POST /orgs/{id}/erase {"confirm": ID}`: 202 with the erasure's operation.
async fn erase_org(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<
        Json<crate::operations::erase::EraseRequest>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let req = json_body(body)?;
    let op = blocking(&plane, move |c| c.request_erase(&id, req, &actor)).await?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

/// An operator accepts that the org's rebuild takes the newest point its backups reach, older
/// than the one known (audited).
async fn accept_older(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Json<crate::orgs::AcceptOlder>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let req = json_body(body)?;
    let accepted = blocking(&plane, move |c| c.accept_older(&id, req, &actor)).await?;
    Ok(Json(accepted).into_response())
}

/// `POST /nodes/{id}/drain`: every org on the node moves to another node of its region (each by
/// a live move); the node takes no new org until undrained. 202 with the drain's state.
async fn drain_node(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let view = blocking(&plane, move |c| c.request_drain(&id, &actor)).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// `POST /nodes/{id}/undrain`: the node takes orgs again.
async fn undrain_node(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let view = blocking(&plane, move |c| c.request_undrain(&id, &actor)).await?;
    Ok(Json(view).into_response())
}

/// Which hemvist system this is: the id its nodes write into every region's store, so the
/// operator's verbs can tell a store of this system from one of another.
async fn system(State(plane): State<Arc<Plane>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "system_id": plane.system_id }))
}

async fn regions(State(plane): State<Arc<Plane>>) -> Result<Json<Vec<RegionView>>, ApiError> {
    let out = blocking(&plane, |c| {
        let nodes = c.node_loads()?;
        Ok(c.config
            .regions
            .iter()
            .map(|r| RegionView {
                id: r.id.to_string(),
                name: r.name.clone(),
                jurisdiction: r.jurisdiction.clone(),
                countries: r.countries.clone(),
                object_store: r.object_store.clone(),
                object_store_endpoint: r.object_store_endpoint.clone(),
                object_store_s3_region: r.object_store_s3_region.clone(),
                nodes: nodes.iter().filter(|n| n.region == r.id).count(),
                healthy_nodes: nodes
                    .iter()
                    .filter(|n| n.region == r.id && n.healthy)
                    .count(),
                default: r.id == c.config.default_region,
            })
            .collect())
    })
    .await?;
    Ok(Json(out))
}

#[derive(Serialize)]
struct NodeView {
    #[serde(flatten)]
    record: crate::store::NodeRecord,
    #[serde(flatten)]
    session: crate::link::SessionInfo,
    tenants: u64,
    /// Since when the node is being drained (its orgs move off; it takes no new one).
    draining_since_ms: Option<i64>,
    /// Its data disk's free bytes and whether that is below its headroom, as it last said.
    disk_free_bytes: Option<u64>,
    disk_low: Option<bool>,
    /// The largest backup lag among the orgs it ships (ms), if it reported any.
    backup_lag_ms: Option<i64>,
}

async fn nodes(State(plane): State<Arc<Plane>>) -> Result<Json<Vec<NodeView>>, ApiError> {
    let out = blocking(&plane, |c| {
        let counts: std::collections::HashMap<_, _> =
            c.store.tenants_per_node()?.into_iter().collect();
        let draining = c.store.draining_nodes()?;
        let lags = c.replication.lag_by_node();
        Ok(c.store
            .nodes()?
            .into_iter()
            .map(|n| NodeView {
                disk_free_bytes: c.node_disk(&n.id).map(|d| d.free_bytes),
                disk_low: c.node_disk(&n.id).map(|d| d.low),
                backup_lag_ms: lags.get(&n.id).copied(),
                session: c.nodes.session(&n.id),
                tenants: counts.get(&n.id).copied().unwrap_or(0),
                draining_since_ms: draining.get(&n.id).copied(),
                record: n,
            })
            .collect())
    })
    .await?;
    Ok(Json(out))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgsQuery {
    #[serde(default)]
    limit: Option<usize>,
    /// The id of the last org of the previous page.
    #[serde(default)]
    after: Option<String>,
}

/// `GET /orgs?[after=ID][&limit=N]`: orgs by id, a page at a time (at most 10,000; default
/// 1,000). A page shorter than its limit is the last.
async fn list_orgs(
    State(plane): State<Arc<Plane>>,
    query: Result<axum::extract::Query<OrgsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let limit = match q.limit {
        None => 1_000,
        Some(n @ 1..=10_000) => n,
        Some(n) => {
            return Err(ApiError(HemvistError::invalid(format!(
                "limit {n}: a page holds 1 to 10000 orgs"
            ))))
        }
    };
    let after = q
        .after
        .as_deref()
        .map(OrgId::parse)
        .transpose()
        .map_err(|e| ApiError(HemvistError::invalid(format!("after: {e}"))))?;
    Ok(Json(
        blocking(&plane, move |c| c.list_orgs(after.as_ref(), limit)).await?,
    ))
}

async fn create_org(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    body: Result<Json<CreateOrg>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    let created = blocking(&plane, move |c| c.create_org(req, &actor)).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(created)).into_response())
}

async fn show_org(
    State(plane): State<Arc<Plane>>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    Ok(Json(blocking(&plane, move |c| c.show_org(&id)).await?))
}

async fn data_key(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let key = blocking(&plane, move |c| c.data_key(&id, &actor)).await?;
    Ok(Json(serde_json::json!({ "data_key": key })))
}

#[derive(serde::Deserialize)]
struct Confirm {
    confirm: Option<String>,
}

/// Destroys the control plane's copy of an org's data key (`?confirm=ORG`): every backup of
/// the org becomes unreadable, everywhere. Audited.
async fn destroy_data_key(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    confirm: Result<axum::extract::Query<Confirm>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let confirm = confirm.ok().and_then(|q| q.0.confirm).unwrap_or_default();
    if confirm != id {
        return Err(ApiError(HemvistError::invalid(format!(
            "destroying a data key makes every backup of the org unreadable, for good: repeat \
             the org id as ?confirm={}",
            id.chars().take(63).collect::<String>()
        ))));
    }
    blocking(&plane, move |c| c.destroy_data_key(&id, &actor)).await?;
    Ok(Json(serde_json::json!({ "destroyed": true })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenRequest {
    name: String,
}

async fn create_token(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    body: Result<Json<NewTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    let made = blocking(&plane, move |c| c.create_token(&req.name, &actor)).await?;
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

async fn list_tokens(State(plane): State<Arc<Plane>>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(blocking(&plane, |c| c.list_tokens()).await?))
}

async fn revoke_token(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(name) = name.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    Ok(Json(
        blocking(&plane, move |c| c.revoke_token(&name, &actor)).await?,
    ))
}

async fn add_user(
    State(plane): State<Arc<Plane>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Json<crate::users::AddUser>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let req = json_body(body)?;
    let added = blocking(&plane, move |c| {
        c.add_user(&id, req, &actor, std::time::Duration::from_secs(15))
    })
    .await?;
    let status = if added.state == "done" {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(added)).into_response())
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
    org: Option<String>,
    /// RFC 3339 or milliseconds since 1970.
    since: Option<String>,
    /// The `seq` of the last entry of the previous page.
    after: Option<i64>,
}

/// `GET /audit?[org=ID][&since=T][&after=SEQ][&limit=N]`: entries oldest first (at most
/// 10,000 a page; default 1,000). Without a filter, the newest N.
async fn recent_audit(
    State(plane): State<Arc<Plane>>,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let limit = q.limit.unwrap_or(1_000).clamp(1, 10_000);
    let org = q
        .org
        .as_deref()
        .map(OrgId::parse)
        .transpose()
        .map_err(|e| ApiError(HemvistError::invalid(e.to_string())))?;
    let since_ms = match q.since.as_deref() {
        None => None,
        Some(t) => {
            Some(crate::clock::parse_time(t).map_err(|e| ApiError(HemvistError::invalid(e)))?)
        }
    };
    let records = blocking(&plane, move |c| {
        if org.is_none() && since_ms.is_none() && q.after.is_none() {
            return Ok(c.store.audit_recent(limit)?);
        }
        Ok(c.store.audit_query(&crate::store::AuditFilter {
            org: org.as_ref(),
            since_ms: since_ms.unwrap_or(0),
            after_seq: q.after.unwrap_or(0),
            limit,
        })?)
    })
    .await?;
    Ok(Json(records))
}

/// `GET /audit/verify`: the chain, entry by entry, then against every signed checkpoint.
async fn verify_audit(State(plane): State<Arc<Plane>>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(audit_verdict(&plane).await?))
}

async fn audit_verdict(plane: &Arc<Plane>) -> Result<crate::audit::verify::Verdict, ApiError> {
    let found = match &plane.checkpoints {
        Some(c) => Some(c.read_all(&plane.system_id).await.map_err(|e| {
            ApiError(HemvistError::unavailable(format!(
                "audit verify: the checkpoint store: {e:#}"
            )))
        })?),
        None => None,
    };
    let seqs: Vec<i64> = found
        .iter()
        .flatten()
        .filter_map(|f| f.checkpoint.as_ref().ok().map(|c| c.seq))
        .collect();
    let chain = blocking(plane, move |c| Ok(c.store.check_audit_chain(&seqs)?)).await?;
    let public_key = plane.checkpoints.as_ref().map(|c| c.signer.public_key());
    let store = plane
        .config
        .audit
        .checkpoints
        .as_ref()
        .map(|c| c.url.as_str());
    Ok(crate::audit::verify::judge(
        &chain,
        found,
        public_key.as_deref(),
        &plane.system_id,
        store.unwrap_or_default(),
    ))
}

#[derive(serde::Deserialize)]
struct ReportQuery {
    org: Option<String>,
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

/// `GET /audit/report?[org=ID][&from=T][&to=T][&format=json|csv|html]`: the residency report
/// (every org, branches inside their parent's section), with the chain's verification.
async fn audit_report(
    State(plane): State<Arc<Plane>>,
    query: Result<axum::extract::Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    use crate::audit::report::{org_report, OrgFacts, Report, Window};
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError(HemvistError::invalid(e.body_text())))?;
    let time = |t: &Option<String>| {
        t.as_deref()
            .map(crate::clock::parse_time)
            .transpose()
            .map_err(|e| ApiError(HemvistError::invalid(e)))
    };
    let window = Window {
        from_ms: time(&q.from)?,
        to_ms: time(&q.to)?,
    };
    let format = q.format.unwrap_or_else(|| "json".into());
    if !["json", "csv", "html"].contains(&format.as_str()) {
        return Err(ApiError(HemvistError::invalid(format!(
            "format {format:?}: use json, csv or html"
        ))));
    }
    let org = q
        .org
        .as_deref()
        .map(OrgId::parse)
        .transpose()
        .map_err(|e| ApiError(HemvistError::invalid(e.to_string())))?;
    let verification = audit_verdict(&plane).await?;
    let orgs = blocking(&plane, move |c| {
        let orgs = match &org {
            Some(id) => vec![c
                .store
                .org(id)?
                .ok_or_else(|| HemvistError::not_found(format!("no org {id}")))?],
            None => c.store.orgs()?,
        };
        let mut moves: HashMap<String, Vec<crate::store::OperationRecord>> = HashMap::new();
        let mut purges: HashMap<String, Vec<(i64, String, String)>> = HashMap::new();
        for op in c.store.operations()? {
            let Some(o) = op.org.as_ref().map(|o| o.to_string()) else {
                continue;
            };
            if op.kind == "move" {
                moves.entry(o).or_default().push(op);
            } else if op.kind == "set-residency" {
                let at = op.detail["purged_ms"].as_i64();
                let regions = op.detail["purged"].as_array().cloned().unwrap_or_default();
                for r in regions {
                    if let (Some(at), Some(region)) = (at, r[0].as_str()) {
                        purges.entry(o.clone()).or_default().push((
                            at,
                            region.to_string(),
                            op.id.clone(),
                        ));
                    }
                }
            }
        }
        let mut branches: HashMap<String, Vec<crate::store::BranchRecord>> = HashMap::new();
        for b in c.store.all_branches(org.as_ref())? {
            branches.entry(b.parent.to_string()).or_default().push(b);
        }
        let mut changes: HashMap<String, Vec<(i64, crate::store::StoredResidency)>> =
            HashMap::new();
        let mut initial: HashMap<String, crate::store::StoredResidency> = HashMap::new();
        for (o, at, d) in c.store.audit_of_action("org.residency_changed")? {
            let (Some(o), Ok(r)) = (o, serde_json::from_value(d["residency"].clone())) else {
                continue;
            };
            changes.entry(o).or_default().push((at, r));
        }
        for (o, _, d) in c.store.audit_of_action("org.placed")? {
            if let (Some(o), Ok(r)) = (o, serde_json::from_value(d["residency"].clone())) {
                if changes.contains_key(&o) {
                    initial.entry(o).or_insert(r);
                }
            }
        }
        let mut exports: HashMap<String, Vec<(i64, i64, String, String)>> = HashMap::new();
        for (o, at, d) in c.store.audit_of_action("org.exported")? {
            if let Some(o) = o {
                let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
                let from = d["as_of_ms"].as_i64().unwrap_or(at).min(at);
                exports
                    .entry(o)
                    .or_default()
                    .push((from, at, text("region"), text("node")));
            }
        }
        let mut out = Vec::new();
        for o in orgs.into_iter().filter(|o| !o.id.is_branch()) {
            let exports = exports.remove(o.id.as_str()).unwrap_or_default();
            let policy_changes = changes.remove(o.id.as_str()).unwrap_or_default();
            let initial_policy = crate::residency::ResidencyPolicy::from_stored(
                initial.get(o.id.as_str()).unwrap_or(&o.residency),
            );
            let facts = OrgFacts {
                purges: purges.remove(o.id.as_str()).unwrap_or_default(),
                exports,
                policy_changes,
                initial_policy,
                spans: c.store.placement_history(&o.id)?,
                moves: moves.remove(o.id.as_str()).unwrap_or_default(),
                branches: branches.remove(o.id.as_str()).unwrap_or_default(),
                org: o,
            };
            out.push(org_report(&facts, &c.config.regions, window));
        }
        Ok(out)
    })
    .await?;
    let report = Report::new(
        &plane.system_id,
        window,
        verification,
        orgs,
        crate::clock::now_ms(),
    );
    Ok(match format.as_str() {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            report.csv(),
        )
            .into_response(),
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            report.html(),
        )
            .into_response(),
        _ => Json(report).into_response(),
    })
}

async fn metrics(
    State(plane): State<Arc<Plane>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::from_accept(accept);
    let text = blocking(&plane, move |c| {
        let nodes = c.node_loads()?;
        let (lag, behind) = c.replication.summary();
        let (branches, branches_expiring) = c.branch_counts()?;
        let gauges = Gauges {
            branches,
            branches_expiring,
            replication_lag_max_ms: lag.max(0) as u64,
            replication_behind: behind,
            operations_stalled: c.stalled_count(),
            schema_current: c.current_schema()? as u64,
            rollout_pending: c.rollout_pending()?,
            orgs: c.store.count_orgs()?,
            nodes_known: nodes.len() as u64,
            nodes_healthy: nodes.iter().filter(|n| n.healthy).count() as u64,
            commands_open: c.store.count_open_commands()?,
        };
        Ok(c.metrics
            .render(&gauges, c.replication.reported_lag(), format))
    })
    .await?;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, format.content_type())
        .body(Body::from(text))
        .unwrap_or_default())
}

/// Times every request into the latency histogram, by method and route pattern (a method
/// outside the usual few counts as `other`, so a client cannot mint series).
async fn time_request(State(plane): State<Arc<Plane>>, req: Request, next: Next) -> Response {
    let labels = crate::metrics::RouteLabels::of(&req);
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    plane
        .metrics
        .api_latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    resp
}
