//! What a control replica's listeners serve. While it leads: the admin API, the dashboard and
//! the nodes' gRPC service. While it follows: every admin request (and the dashboard) is
//! forwarded to the leader the store's lease names, with its headers and body, and the answer
//! handed back as it came; a node is told this replica does not lead (and which does), so it
//! dials the next control address it knows. A single control plane (the SQLite store) leads
//! from the start.
//!
//! Keeps true: a follower changes nothing itself, and extends no node's lease; a request is
//! forwarded at most once (a replica that is asked by another and does not lead answers 503
//! rather than forwarding again); with no live leader the answer is a retryable 503.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hemvist_proto::pb::{self, node_control_server::NodeControl};
use hemvist_proto::HemvistError;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};
use tower::ServiceExt;

use crate::admin_api::ApiError;
use crate::leadership::Seen;
use crate::node_api::{NodeApi, OutStream};

/// The header a forwarded request carries: the replica that forwarded it.
const FORWARDED_BY: &str = "x-hemvist-forwarded-by";
/// The largest request body a follower forwards.
const MAX_FORWARDED_BODY: usize = 64 * 1024 * 1024;

struct Leading {
    router: axum::Router,
    nodes: NodeApi,
}

/// A replica's front: leading, or forwarding to the leader.
pub struct Front {
    leading: OnceLock<Leading>,
    seen: Arc<Seen>,
    name: String,
    client: reqwest::Client,
}

impl Front {
    pub fn new(name: &str, seen: Arc<Seen>, client: reqwest::Client) -> Arc<Front> {
        Arc::new(Front {
            leading: OnceLock::new(),
            seen,
            name: name.to_string(),
            client,
        })
    }

    /// From now on this replica serves as the leader (once; leading ends with the process).
    pub fn lead(&self, router: axum::Router, nodes: NodeApi) {
        let _ = self.leading.set(Leading { router, nodes });
    }

    /// The admin listener's router.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(front).with_state(self.clone())
    }

    /// The gRPC listener's service.
    pub fn nodes(self: &Arc<Self>) -> Nodes {
        Nodes(self.clone())
    }

    fn leader_hint(&self) -> String {
        match self.seen.get().filter(|l| l.live()) {
            Some(l) => format!("the leader is {} at {}", l.holder, l.grpc_url),
            None => "no replica leads at the moment".to_string(),
        }
    }
}

fn unavailable(message: String) -> Response {
    let mut r = ApiError(HemvistError::unavailable(message)).into_response();
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    r
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "content-length"
    )
}

async fn front(State(front): State<Arc<Front>>, req: Request) -> Response {
    if let Some(leading) = front.leading.get() {
        return match leading.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    if req.uri().path() == "/healthz" {
        // This replica's own health: it is up, and follows.
        return (
            StatusCode::OK,
            format!("ok (follower; {})\n", front.leader_hint()),
        )
            .into_response();
    }
    if req.headers().contains_key(FORWARDED_BY) {
        return unavailable(format!(
            "control replica {} was sent this request as the leader but does not lead; {}",
            front.name,
            front.leader_hint()
        ));
    }
    let Some(lease) = front
        .seen
        .get()
        .filter(|l| l.live() && !l.api_url.is_empty())
    else {
        return unavailable("no control replica leads at the moment; retry shortly".into());
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_FORWARDED_BODY).await else {
        return ApiError(HemvistError::new(
            hemvist_proto::ErrorKind::TooLarge,
            format!("a request forwarded to the leader holds at most {MAX_FORWARDED_BODY} bytes"),
        ))
        .into_response();
    };
    let url = format!("{}{path}", lease.api_url.trim_end_matches('/'));
    let mut out = front.client.request(parts.method, &url).body(body);
    // Host goes as the client sent it: the dashboard checks a change's Origin against it.
    for (k, v) in &parts.headers {
        if !hop_by_hop(k) {
            out = out.header(k, v);
        }
    }
    out = out.header(FORWARDED_BY, &front.name);
    match out.send().await {
        Ok(answer) => {
            let status = answer.status();
            let mut headers = HeaderMap::new();
            for (k, v) in answer.headers() {
                if !hop_by_hop(k) || k == "content-length" {
                    headers.append(k.clone(), v.clone());
                }
            }
            // Streamed as it comes (an export may be gigabytes), never held whole.
            let mut r = Response::new(Body::from_stream(answer.bytes_stream()));
            *r.status_mut() = status;
            *r.headers_mut() = headers;
            r
        }
        Err(e) => unavailable(format!(
            "the leading control replica ({}) did not answer: {e}",
            lease.holder
        )),
    }
}

/// The nodes' gRPC service on a replica.
pub struct Nodes(Arc<Front>);

#[tonic::async_trait]
impl NodeControl for Nodes {
    type SessionStream = OutStream;

    async fn session(
        &self,
        request: GrpcRequest<Streaming<pb::NodeMessage>>,
    ) -> Result<GrpcResponse<Self::SessionStream>, Status> {
        match self.0.leading.get() {
            Some(leading) => leading.nodes.session(request).await,
            None => Err(Status::unavailable(format!(
                "this control replica ({}) does not lead; {}",
                self.0.name,
                self.0.leader_hint()
            ))),
        }
    }
}
