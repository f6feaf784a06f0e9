//! Serving an axum router over a [`Listener`]: HTTP/1.1 with a header-read timeout (which also
//! closes keep-alive connections idle that long), each request carrying the client's address
//! (`ConnectInfo<SocketAddr>`), and a graceful drain on shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

use crate::Listener;

/// How long in-flight requests may take to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(5);

pub async fn serve(listener: Listener, router: axum::Router, shutdown: CancellationToken) {
    let header_timeout = listener.limits().header_read_timeout();
    let mut incoming = listener.incoming(shutdown.clone());
    let graceful = GracefulShutdown::new();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = incoming.next() => c,
        };
        let conn = match next {
            Some(Ok(conn)) => conn,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "connection failed before serving");
                continue;
            }
            None => break,
        };
        let remote: SocketAddr = conn.remote();
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                req
            },
        );
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        let served = graceful
            .watch(builder.serve_connection(TokioIo::new(conn), TowerToHyperService::new(service)));
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(client = %remote, error = %e, "connection closed with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections did not drain within {DRAIN:?}; closing them");
    }
}
