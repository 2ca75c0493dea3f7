//! The cluster transport.
//!
//! All node-to-node traffic is QUIC with mutual TLS 1.3: a peer must present a
//! certificate signed by the cluster CA before it can open a stream. On an
//! authenticated connection:
//! - each request is one bidirectional stream carrying one request frame and
//!   one response frame ([`mosix_proto::read_frame`]);
//! - membership (SWIM) packets and load records travel as QUIC datagrams.
//!
//! Every remote operation is bounded in time: see [`CONNECT_TIMEOUT`] and
//! [`REQUEST_TIMEOUT`].

pub mod limits;
pub mod peers;
pub mod pki;
pub mod server;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

pub use peers::Peers;
pub use server::{serve, Handler, Peer};
pub use tls::{Tls, TlsFiles};

/// Longest wait for a QUIC + TLS handshake with a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a whole request: sending it and reading the response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no traffic (keep-alives included) for this long is
/// dead: the peer is unreachable, and requests waiting on it fail then
/// (`EHOSTDOWN` on /mosix) instead of waiting for [`REQUEST_TIMEOUT`].
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Keep-alive interval: a live peer misses six in a row before its
/// connection is called dead.
pub const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// Most established connections a node holds at once; more are refused.
/// Handshakes under way count apart ([`limits::MAX_HANDSHAKES`]).
pub const MAX_CONNECTIONS: usize = 1024;
/// QUIC connection-level receive window: the most unread data a peer can
/// make this node buffer on one connection.
pub const RECEIVE_WINDOW: usize = 32 << 20;
/// Requests a peer may have open at once on one connection (each is one
/// bidirectional stream); more wait in the peer for a stream to end.
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] quinn::ConnectionError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("protocol: {0}")]
    Frame(#[from] mosix_proto::FrameError),
    #[error("peer sent no response")]
    NoResponse,
    #[error("peer reported: {0}")]
    Remote(#[from] mosix_proto::RemoteError),
    #[error("tls setup: {0}")]
    Tls(String),
    #[error("certificates: {0}")]
    Pki(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = NetError> = std::result::Result<T, E>;

/// Transport settings shared by both ends of every connection.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("idle timeout fits a QUIC varint"),
    ));
    // Room for the bulk data path: a 1 GiB stream should not stall on flow
    // control. The connection's window also bounds what a peer can make
    // this node buffer unread on one connection (see `limits`).
    t.stream_receive_window((16u32 << 20).into());
    t.receive_window((RECEIVE_WINDOW as u32).into());
    t.send_window(64 << 20);
    t.max_concurrent_bidi_streams((MAX_STREAMS_PER_CONNECTION as u32).into());
    // Nothing uses unidirectional streams; a peer gets none to fill.
    t.max_concurrent_uni_streams(0u32.into());
    t.datagram_receive_buffer_size(Some(1 << 20));
    // Larger packets where the path allows (loopback, jumbo frames): packet
    // count, not bytes, is what costs CPU in QUIC. Discovery probes upward
    // from 1452 and stays there on a 1500-byte link.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// The largest UDP payload a node sends or accepts. quinn sends up to 10
/// packets in one GSO batch, which must fit a 64 KiB UDP datagram: above
/// about 6,550 bytes every batch fails to send and the connection crawls
/// (measured: 2.9 GB/s at 6,500 bytes, 4 MB/s at 6,600).
pub const MAX_UDP_PAYLOAD: u16 = 6500;

/// Sends one request on a fresh stream of `conn` and waits for its response,
/// all within [`REQUEST_TIMEOUT`].
pub async fn request(
    conn: &quinn::Connection,
    req: &mosix_proto::Request,
) -> Result<mosix_proto::Response> {
    let r = send_request(conn, req).await;
    // A stream that broke because its connection went silent says so only
    // through the connection: report the peer as unreachable, not as a
    // garbled stream.
    match (r, conn.close_reason()) {
        (Err(_), Some(e @ quinn::ConnectionError::TimedOut)) => Err(NetError::ConnectionLost(e)),
        (r, _) => r,
    }
}

async fn send_request(
    conn: &quinn::Connection,
    req: &mosix_proto::Request,
) -> Result<mosix_proto::Response> {
    with_timeout("request", REQUEST_TIMEOUT, async {
        let (mut send, mut recv) = conn.open_bi().await?;
        match req {
            // Write data goes raw after a small frame: no encoding copy here,
            // no decoding copy there.
            mosix_proto::Request::Fs {
                client_run,
                creds,
                op: mosix_proto::fs::FsRequest::Write { fh, offset, data },
                epoch,
            } if data.len() <= mosix_proto::MAX_FRAME => {
                let head = mosix_proto::Request::FsWrite {
                    client_run: *client_run,
                    creds: creds.clone(),
                    fh: *fh,
                    offset: *offset,
                    len: data.len() as u32,
                    epoch: *epoch,
                };
                mosix_proto::write_frame(&mut send, &head, mosix_proto::MAX_FRAME).await?;
                send.write_all(data).await?;
            }
            req => mosix_proto::write_frame(&mut send, req, mosix_proto::MAX_FRAME).await?,
        }
        send.finish()?;
        match mosix_proto::read_frame(&mut recv, mosix_proto::MAX_FRAME).await? {
            Some(mosix_proto::Response::Error(e)) => Err(NetError::Remote(e)),
            Some(mosix_proto::Response::FsData { epoch, len }) => {
                let data = read_body(&mut recv, len as usize).await?;
                Ok(mosix_proto::Response::Fs {
                    epoch,
                    result: Ok(mosix_proto::fs::FsReply::Data(data)),
                })
            }
            Some(resp) => Ok(resp),
            None => Err(NetError::NoResponse),
        }
    })
    .await
}

/// The `len` raw bytes after a response frame, gathered with one copy.
pub(crate) async fn read_body(recv: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>> {
    if len > mosix_proto::MAX_FRAME {
        return Err(mosix_proto::FrameError::TooLarge {
            len,
            max: mosix_proto::MAX_FRAME,
        }
        .into());
    }
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        let chunk = recv
            .read_chunk(len - data.len(), true)
            .await
            .map_err(|e| mosix_proto::FrameError::Io(e.into()))?;
        match chunk {
            Some(chunk) => data.extend_from_slice(&chunk.bytes),
            None => return Err(mosix_proto::FrameError::Truncated.into()),
        }
    }
    Ok(data)
}

pub(crate) async fn with_timeout<T>(
    what: &'static str,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Timeout { what, after }),
    }
}

/// A QUIC endpoint on an already bound socket (tests bind theirs inside a
/// network namespace). `server` is `None` for a client-only endpoint.
pub fn endpoint_on(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    size_socket_buffers(&socket);
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("a valid UDP payload size");
    quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
}

/// Binds a node's endpoint: it both accepts peers and dials them, from one
/// address, so peers see our listen address as our source.
pub fn bind_endpoint(
    addr: std::net::SocketAddr,
    server: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    endpoint_on(std::net::UdpSocket::bind(addr)?, Some(server))
}

/// Socket buffer size for node endpoints.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// Bulk transfers burst faster than a default-sized UDP buffer drains, and
/// every drop costs a loss-recovery round. Root may exceed the sysctl limits (the *FORCE
/// options); anyone else gets what the limits allow.
fn size_socket_buffers(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER);
    }
}
