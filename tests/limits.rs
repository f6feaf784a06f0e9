//! Every listener's limits against the real processes: a thousand half-sent requests to a node
//! are all closed within its header timeout while others are served; a client over its
//! connection cap is refused while other clients are served; connections to the admin API and
//! the gRPC port that never finish a request or a handshake are closed too.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::cluster::{Cluster, EU_NORTH};

const LIMITS: &str = "handshake_timeout_ms = 1000\nheader_read_timeout_ms = 1000\n\
                      idle_timeout_ms = 30000\nmax_connections_per_client = 8\n\
                      max_connections = 5000\n";

/// A connection to `addr` from the loopback address `source` (all of 127.0.0.0/8 is this
/// machine, so one test can be many clients).
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

/// Whether the server has closed `s` (EOF or reset) by now, waiting at most `wait`.
fn closed(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // An answer (a 408, say) is fine; what matters is that the connection ends.
            Ok(_) => continue,
            Err(e) => {
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                )
            }
        }
    }
}

fn healthz(source: &str, addr: SocketAddr) -> Option<String> {
    let mut s = connect_from(source, addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

#[test]
fn a_thousand_half_sent_requests_are_closed_within_the_header_timeout() {
    let c = Cluster::start_with_limits(&[EU_NORTH], LIMITS);
    let node = addr_of(&c.node_url("eu-north"));
    let started = Instant::now();
    // 125 clients × 8 connections each: under every client's cap.
    let mut half: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let mut s = connect_from(&format!("127.0.1.{}", 1 + i / 8), node);
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            s
        })
        .collect();
    let opened = started.elapsed();
    // Meanwhile another client is served.
    let answer = healthz("127.0.2.1", node).expect("served while 1000 hang");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // All are closed within the header timeout (1 s) and a little slack.
    let deadline = started + opened + Duration::from_millis(2_500);
    for (i, s) in half.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            closed(s, left.max(Duration::from_millis(50))),
            "half-sent request {i} still open {:?} after it was sent",
            started.elapsed()
        );
    }
}

#[test]
fn a_client_over_its_connection_cap_is_refused_while_others_are_served() {
    // The held connections send nothing: a long handshake timeout keeps them open however
    // slowly this runs.
    let c = Cluster::start_with_limits(
        &[EU_NORTH],
        &LIMITS.replace(
            "handshake_timeout_ms = 1000",
            "handshake_timeout_ms = 10000",
        ),
    );
    let url = c.node_url("eu-north");
    let node = addr_of(&url);
    let refused_before = c.metric(&url, "hemvist_http_connections_refused_total");
    let held: Vec<TcpStream> = (0..8).map(|_| connect_from("127.0.3.1", node)).collect();
    // The ninth connection of that client is closed at once, without an answer.
    let mut over = connect_from("127.0.3.1", node);
    let _ = over.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        closed(&mut over, Duration::from_millis(900)),
        "a client over its cap was served"
    );
    // Others are served meanwhile.
    let answer = healthz("127.0.3.2", node).expect("another client is served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(c.metric(&url, "hemvist_http_connections_refused_total") > refused_before);
    drop(held);
}

#[test]
fn the_admin_api_and_grpc_close_what_never_finishes() {
    let c = Cluster::start_with_limits(&[EU_NORTH], LIMITS);
    let started = Instant::now();
    let mut api = connect_from("127.0.4.1", c.api);
    let _ = api.write_all(b"POST /api/v1/orgs HTTP/1.1\r\nHost: x\r\n");
    // A gRPC client that connects and never says anything (no HTTP/2 preface).
    let mut grpc = connect_from("127.0.4.2", c.grpc);
    for (name, s) in [("admin API", &mut api), ("gRPC", &mut grpc)] {
        let left =
            (started + Duration::from_millis(3_000)).saturating_duration_since(Instant::now());
        assert!(
            closed(s, left.max(Duration::from_millis(50))),
            "{name}: a silent connection is still open after {:?}",
            started.elapsed()
        );
    }
    // The nodes' own gRPC stream, which speaks all the time, is not touched.
    std::thread::sleep(Duration::from_millis(1_500));
    c.wait_nodes_healthy(1);
    let (_, nodes) = c.admin("GET", "/nodes", None);
    assert_eq!(nodes[0]["healthy"], true, "{nodes}");
}
