//! The listener's limits against real sockets on loopback: half-sent requests, idle and
//! never-speaking connections, clients over their cap, and TLS that must be TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hemvist_net::tls::{Alpn, ServerTls};
use hemvist_net::{Limits, Listener};
use tokio_util::sync::CancellationToken;

fn limits() -> Limits {
    Limits {
        handshake_timeout_ms: 300,
        header_read_timeout_ms: 300,
        idle_timeout_ms: 1_000,
        max_connections_per_client: 4,
        max_connections: 100,
    }
}

/// Serves "ok" on a runtime of its own; the address and a guard that stops it.
fn serve(limits: Limits, tls: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, Server) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let addr = rt.block_on(async {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = Listener::new(tcp, tls, limits);
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(
                |axum::extract::ConnectInfo(c): axum::extract::ConnectInfo<SocketAddr>| async move {
                    format!("ok {}", c.ip())
                },
            ),
        );
        tokio::spawn(hemvist_net::http::serve(listener, app, stop.clone()));
        addr
    });
    (addr, Server { _rt: rt, stop })
}

struct Server {
    _rt: tokio::runtime::Runtime,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A connection to `addr` from the loopback address `source` (127.0.0.0/8 is all loopback, so
/// one machine can be several clients).
fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{source}:0").parse().unwrap()).unwrap();
        s.connect(addr).await.unwrap().into_std().unwrap()
    });
    s.set_nonblocking(false).unwrap();
    s
}

/// GET / on a connection: the status line's code, or None if the server closed it.
fn get(s: &mut TcpStream) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Whether the server closes `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    }
}

#[test]
fn half_sent_and_idle_connections_are_closed_within_the_header_timeout() {
    let (addr, _server) = serve(limits(), None);
    let started = Instant::now();
    let mut half: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut s = connect_from(&format!("127.0.0.{}", 10 + i), addr);
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let mut silent = connect_from("127.0.0.20", addr);
    for s in &mut half {
        assert!(
            closed_within(s, Duration::from_secs(3)),
            "half-sent request still open"
        );
    }
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)),
        "silent connection still open"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // A keep-alive connection that goes quiet after a request is closed too.
    let mut kept = connect_from("127.0.0.21", addr);
    assert!(get(&mut kept).is_some_and(|r| r.starts_with("HTTP/1.1 200")));
    assert!(
        closed_within(&mut kept, Duration::from_secs(3)),
        "idle keep-alive still open"
    );
}

#[test]
fn a_client_over_its_connection_cap_is_refused_while_others_are_served() {
    // The held connections send nothing: a long handshake timeout keeps them open however
    // slowly this runs.
    let (addr, _server) = serve(
        Limits {
            handshake_timeout_ms: 10_000,
            ..limits()
        },
        None,
    );
    let mut held: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.2", addr)).collect();
    // Let the accept loop count them.
    assert!(get(&mut held[0]).is_some_and(|r| r.starts_with("HTTP/1.1 200")));
    let mut over = connect_from("127.0.0.2", addr);
    assert!(
        get(&mut over).is_none(),
        "the fifth connection of one client was served"
    );
    let mut other = connect_from("127.0.0.3", addr);
    let answer = get(&mut other).expect("another client is served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("ok 127.0.0.3"),
        "the handler sees the client address: {answer}"
    );
    // Once one closes, the client may connect again.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = connect_from("127.0.0.2", addr);
    assert!(get(&mut again).is_some_and(|r| r.starts_with("HTTP/1.1 200")));
}

/// A throwaway CA and a certificate for 127.0.0.1 signed by it, in a folder.
fn tls_files(dir: &std::path::Path) -> (ServerTls, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    (
        ServerTls {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
        },
        dir.join("ca.pem"),
    )
}

#[test]
fn a_tls_listener_serves_tls_and_gives_a_plain_client_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = tls_files(dir.path());
    let config = tls.load(Alpn::Http1).unwrap();
    let (addr, _server) = serve(limits(), Some(config));

    // A plain client gets no HTTP answer: at most a TLS alert, then the connection closes.
    let mut plain = connect_from("127.0.0.4", addr);
    let answer = get(&mut plain);
    assert!(
        !answer.as_deref().unwrap_or_default().contains("HTTP/"),
        "a plain client got an HTTP answer: {answer:?}"
    );
    assert!(closed_within(&mut plain, Duration::from_secs(3)));

    // A TLS client that trusts the CA is served.
    let roots = hemvist_net::tls::roots(&ca).unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(client),
        rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let mut sock = connect_from("127.0.0.5", addr);
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stream = rustls::Stream::new(&mut conn, &mut sock);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A client that does not trust the CA refuses the server.
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_ca) = tls_files(other_dir.path());
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(hemvist_net::tls::roots(&other_ca).unwrap())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(client),
        rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let mut sock = connect_from("127.0.0.6", addr);
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stream = rustls::Stream::new(&mut conn, &mut sock);
    let err = stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .and_then(|_| stream.read(&mut [0u8; 16]).map(|_| ()))
        .expect_err("an untrusted certificate was accepted");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}
