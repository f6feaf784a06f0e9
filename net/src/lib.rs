//! The listeners both sides of hemvist serve on, and the TLS they speak.
//!
//! Keeps true, for every listener (admin API, gRPC, node HTTP): a connection that does not
//! finish its TLS handshake, its first bytes or its request headers in time is closed; one that
//! sends nothing for longer than the idle timeout is closed; no client address holds more than
//! its cap of connections at once, nor the listener more than its total cap. TLS is rustls with
//! ring; certificates and keys come from PEM files.

pub mod http;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod tls;

pub use limits::Limits;
pub use listener::{Conn, Listener, ListenerStats};
