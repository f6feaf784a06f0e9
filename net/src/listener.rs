//! Accepting connections: caps per client address and in total, the TLS handshake (with its
//! timeout, off the accept loop so a slow client delays nobody else), and a read deadline on
//! every connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::Limits;

/// What a listener has seen, for its process's metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub accepted: AtomicU64,
    /// Closed on accept: the client or the listener was at its cap.
    pub refused_over_cap: AtomicU64,
    /// Closed before the TLS handshake finished (timeout or a failed handshake).
    pub handshake_failures: AtomicU64,
    /// Closed for sending nothing in time.
    pub timed_out: AtomicU64,
    open: AtomicU64,
}

impl ListenerStats {
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// The counters as (name after `{prefix}_connections_`, is a counter, help, value).
    fn rows(&self) -> [(&'static str, bool, &'static str, u64); 5] {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("open", false, "Connections open now.", self.open()),
            (
                "accepted",
                true,
                "Connections accepted.",
                get(&self.accepted),
            ),
            (
                "refused",
                true,
                "Connections closed on accept: the client or the listener was at its cap.",
                get(&self.refused_over_cap),
            ),
            (
                "handshake_failures",
                true,
                "Connections closed before their TLS handshake finished.",
                get(&self.handshake_failures),
            ),
            (
                "timeouts",
                true,
                "Connections closed for sending nothing in time.",
                get(&self.timed_out),
            ),
        ]
    }

    /// Registers these counters in `registry` as `{prefix}_connections_*` (`_open` a gauge, the
    /// rest counters ending in `_total`), read from the atomics at each scrape.
    pub fn register(self: &Arc<Self>, registry: &mut Registry, prefix: &str) {
        registry
            .sub_registry_with_prefix(prefix)
            .register_collector(Box::new(StatsCollector(self.clone())));
    }
}

#[derive(Debug)]
struct StatsCollector(Arc<ListenerStats>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for (name, counter, help, v) in self.0.rows() {
            let name = format!("connections_{name}");
            if counter {
                let c = ConstCounter::new(v);
                c.encode(encoder.encode_descriptor(&name, help, None, c.metric_type())?)?;
            } else {
                let g = crate::metrics::gauge(v);
                g.encode(encoder.encode_descriptor(&name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

/// A bound listener, plain or TLS.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    stats: Arc<ListenerStats>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Listener {
    pub fn new(
        tcp: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        limits: Limits,
    ) -> Listener {
        Listener {
            tcp,
            tls: tls.map(TlsAcceptor::from),
            limits,
            stats: Arc::default(),
            per_client: Arc::default(),
        }
    }

    /// Counts into `stats` (kept by whoever renders the process's metrics).
    pub fn with_stats(mut self, stats: Arc<ListenerStats>) -> Listener {
        self.stats = stats;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The connections that passed the caps and their handshake, until `shutdown`.
    pub fn incoming(self, shutdown: CancellationToken) -> Incoming {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(self.accept_loop(tx, shutdown));
        Incoming { rx }
    }

    async fn accept_loop(self, tx: mpsc::Sender<io::Result<Conn>>, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = self.tcp.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = self.take_slot(remote.ip()) else {
                self.stats.refused_over_cap.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = %remote.ip(), "connection over the cap closed");
                drop(tcp);
                continue;
            };
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            let _ = tcp.set_nodelay(true);
            let (tls, limits, stats, tx) = (
                self.tls.clone(),
                self.limits.clone(),
                self.stats.clone(),
                tx.clone(),
            );
            tokio::spawn(async move {
                let io = match tls {
                    None => Io::Plain(tcp),
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.handshake_timeout(), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => Io::Tls(Box::new(s)),
                            Ok(Err(e)) => {
                                stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(client = %remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(client = %remote, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                let conn = Conn {
                    io,
                    remote,
                    deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout())),
                    idle: limits.idle_timeout(),
                    stats: stats.clone(),
                    _slot: slot,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    }

    fn take_slot(&self, ip: IpAddr) -> Option<Slot> {
        let mut per = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let open = self.stats.open.load(Ordering::Relaxed) as usize;
        let n = per.entry(ip).or_insert(0);
        if *n >= self.limits.max_connections_per_client || open >= self.limits.max_connections {
            if *n == 0 {
                per.remove(&ip);
            }
            return None;
        }
        *n += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            ip,
            per_client: self.per_client.clone(),
            stats: self.stats.clone(),
        })
    }
}

/// A connection's place under the caps, given back when it closes.
struct Slot {
    ip: IpAddr,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    stats: Arc<ListenerStats>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The accepted connections, as a stream (what tonic's `serve_with_incoming` takes).
pub struct Incoming {
    rx: mpsc::Receiver<io::Result<Conn>>,
}

impl Incoming {
    pub async fn next(&mut self) -> Option<io::Result<Conn>> {
        self.rx.recv().await
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection. Reading fails with `TimedOut` once nothing has arrived for the
/// idle timeout (for the first bytes: the handshake timeout).
pub struct Conn {
    io: Io,
    remote: SocketAddr,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    stats: Arc<ListenerStats>,
    _slot: Slot,
}

impl Conn {
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// The client's certificate chain, when it presented one (mutual TLS).
    pub fn peer_certificates(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        match &self.io {
            Io::Tls(s) => s.get_ref().1.peer_certificates().map(|c| c.to_vec()),
            Io::Plain(_) => None,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match read {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing in time",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What tonic records of each connection: the client's address.
impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = SocketAddr;
    fn connect_info(&self) -> SocketAddr {
        self.remote
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_stats_read_the_counters_at_each_scrape() {
        let stats = Arc::new(ListenerStats::default());
        let mut registry = Registry::default();
        stats.register(&mut registry, "hemvist_admin");
        stats.accepted.fetch_add(3, Ordering::Relaxed);
        stats.open.fetch_add(2, Ordering::Relaxed);

        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(text.starts_with(
            "# HELP hemvist_admin_connections_open Connections open now.\n\
             # TYPE hemvist_admin_connections_open gauge\n\
             hemvist_admin_connections_open 2\n"
        ));
        assert_eq!(text.matches("# HELP ").count(), 5, "{text}");
        assert!(text.contains("\nhemvist_admin_connections_accepted_total 3\n"));
        assert!(text.contains("\nhemvist_admin_connections_open 2\n"));

        stats.timed_out.fetch_add(1, Ordering::Relaxed);
        let mut open_metrics = String::new();
        prometheus_client::encoding::text::encode(&mut open_metrics, &registry).unwrap();
        assert!(open_metrics.contains("# TYPE hemvist_admin_connections_timeouts counter\n"));
        assert!(open_metrics.contains("\nhemvist_admin_connections_timeouts_total 1\n"));
    }
}
