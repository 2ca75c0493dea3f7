//! The accepting side: triage, handshake, then one task per request stream.
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use mosix_proto::{write_frame, RemoteError, Request, Response, MAX_FRAME};
use tracing::Instrument;

use mosix_proto::FrameError;
use tokio::sync::Semaphore;

use crate::limits::{
    Counter, FrameBudget, LogLimit, PeerTable, FRAME_BUDGET_TOTAL, MAX_HANDSHAKES, REPLY_ALLOWANCE,
};
use crate::{CONNECT_TIMEOUT, MAX_CONNECTIONS, REQUEST_TIMEOUT};
use std::time::Duration;

/// QUIC application error code used when we abort a stream for a protocol
/// violation.
pub const ERR_PROTOCOL: u32 = 1;

/// Who is on the other end of a connection, as its certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The node name in the certificate, signed by the cluster CA: the only
    /// name a serving node believes.
    pub name: std::sync::Arc<str>,
    /// The node id the certificate carries (older certificates carry none).
    pub id: Option<u16>,
    /// SHA-256 of the certificate ([`crate::pki::fingerprint`]): what a
    /// revocation names.
    pub fingerprint: std::sync::Arc<str>,
}

impl Peer {
    /// The node a connection's client certificate names.
    pub fn of(conn: &quinn::Connection) -> Option<Peer> {
        let certs = conn
            .peer_identity()?
            .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
            .ok()?;
        let cert = certs.first()?;
        let (name, id) = crate::pki::node_identity(cert).ok()?;
        Some(Peer {
            name: name.into(),
            id,
            fingerprint: crate::pki::fingerprint(cert).into(),
        })
    }
}

/// What a node does with requests and datagrams from authenticated peers.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, peer: &Peer, req: Request) -> impl Future<Output = Response> + Send;
    fn datagram(&self, peer: &Peer, data: Bytes);
    /// Like `handle`, but may answer with raw bytes to send after the
    /// response frame (see [`Response::FsData`]).
    fn handle_bulk(
        &self,
        peer: &Peer,
        req: Request,
    ) -> impl Future<Output = (Response, Option<Bytes>)> + Send {
        let reply = self.handle(peer, req);
        async move { (reply.await, None) }
    }
    /// A request that opens a long-lived stream (a process migrating in):
    /// the handler gets both directions of it. Refused by default.
    fn stream(
        &self,
        _peer: &Peer,
        _req: Request,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> impl Future<Output = ()> + Send {
        async move {
            reject(&mut send, &mut recv, "streams are not served here".into()).await;
        }
    }
}

/// Accepts connections until the endpoint closes.
///
/// A stranger costs little: an Initial from an address not yet validated
/// is answered with a stateless QUIC Retry (nothing is kept), handshakes
/// from validated addresses are capped at [`MAX_HANDSHAKES`] apart from the
/// [`MAX_CONNECTIONS`] established ones, and refusals are logged at most
/// once a second.
pub async fn serve<H: Handler>(endpoint: quinn::Endpoint, handler: Arc<H>) {
    let limits = Arc::new(ServerLimits::default());
    tokio::spawn(give_back_memory(limits.frames.clone()));
    while let Some(incoming) = endpoint.accept().await {
        // Triage before any TLS work: an overloaded node refuses cheaply.
        if !incoming.remote_address_validated() {
            if incoming.may_retry() {
                // Stateless: the peer must echo the token from its address.
                let _ = incoming.retry();
            } else {
                incoming.ignore();
            }
            continue;
        }
        let remote = incoming.remote_address();
        if limits.established.get() >= MAX_CONNECTIONS {
            if let Some(left_out) = limits.refusals.allow() {
                tracing::warn!(%remote, left_out, "refusing connection: too many open");
            }
            incoming.refuse();
            continue;
        }
        let Some(handshaking) = limits.handshakes.try_take(MAX_HANDSHAKES) else {
            if let Some(left_out) = limits.refusals.allow() {
                tracing::warn!(%remote, left_out, "ignoring connection: too many handshakes");
            }
            incoming.ignore();
            continue;
        };
        let (handler, limits) = (handler.clone(), limits.clone());
        tokio::spawn(
            async move {
                let conn =
                    match tokio::time::timeout(CONNECT_TIMEOUT, async { incoming.accept()?.await })
                        .await
                    {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            // Includes peers without a CA-signed certificate.
                            if let Some(left_out) = limits.refusals.allow() {
                                tracing::info!(error = %e, left_out, "handshake refused");
                            }
                            return;
                        }
                        Err(_) => {
                            if let Some(left_out) = limits.refusals.allow() {
                                tracing::info!(left_out, "handshake timed out");
                            }
                            return;
                        }
                    };
                drop(handshaking);
                let Some(established) = limits.established.try_take(MAX_CONNECTIONS) else {
                    conn.close(ERR_PROTOCOL.into(), b"too many connections");
                    return;
                };
                serve_connection(conn, handler, &limits).await;
                drop(established);
            }
            .instrument(tracing::info_span!("peer", %remote)),
        );
    }
}

/// The node's bounds on what its peers hold (see [`crate::limits`]).
struct ServerLimits {
    handshakes: Counter,
    established: Counter,
    peers: Arc<PeerTable>,
    frames: Arc<Semaphore>,
    refusals: LogLimit,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            handshakes: Counter::default(),
            established: Counter::default(),
            peers: Arc::default(),
            frames: FrameBudget::node_total(),
            refusals: LogLimit::new(Duration::from_secs(1)),
        }
    }
}

/// Hands memory freed by a burst of large frames back to the system: the
/// allocator keeps freed heap pages for reuse otherwise, so a node that
/// once held its whole frame budget would keep that much resident. QUIC's
/// own buffers for those streams are freed over the moments after the
/// frames, at no time a tick can predict, so the heap is trimmed on any
/// tick, outside a burst, where the allocator holds more than
/// [`FREE_HEAP_TRIM`] unused and more than a MiB was freed since the last
/// trim (trimming a small free heap would only make the next allocations
/// fault pages in again, and an idle node has nothing to trim).
async fn give_back_memory(frames: Arc<Semaphore>) {
    map_large_blocks();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The least the allocator held free since the last trim: what it
    // holds above that was freed since.
    let mut floor = usize::MAX;
    loop {
        tick.tick().await;
        let in_use = FRAME_BUDGET_TOTAL - frames.available_permits();
        let free = free_heap();
        floor = floor.min(free);
        if in_use < 8 << 20 && free > FREE_HEAP_TRIM && free > floor + (1 << 20) {
            trim_heap();
            floor = free_heap();
        }
    }
}

/// Blocks of 2 MiB and more (frames near the 4 MiB limit, whole batches
/// of pages) get their own mapping, unmapped when freed. glibc would
/// otherwise raise its mapping threshold to the largest block freed so
/// far and carve later frames out of the heap, where a few small
/// allocations between them keep the freed memory resident: after a burst
/// of frames under load, 37 MiB stayed with no trim able to free it. The
/// 1 MiB blocks of file I/O stay on the heap (a fresh mapping for each
/// would fault every page in again).
fn map_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's own tunable.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 2 << 20);
    }
}

/// Unused heap above which an idle node gives memory back.
const FREE_HEAP_TRIM: usize = 8 << 20;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { nix::libc::malloc_trim(0) };
}

/// Bytes the allocator holds free (all arenas).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_heap() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's own statistics.
    unsafe { nix::libc::mallinfo2() }.fordblks
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn free_heap() -> usize {
    0
}

async fn serve_connection<H: Handler>(
    conn: quinn::Connection,
    handler: Arc<H>,
    limits: &ServerLimits,
) {
    // The handshake verified the chain to the cluster CA; a certificate
    // without a node name in it names no member.
    let Some(peer) = Peer::of(&conn) else {
        tracing::warn!("peer certificate names no node; closing");
        conn.close(ERR_PROTOCOL.into(), b"certificate names no node");
        return;
    };
    let Some(slot) = limits.peers.connect(&peer.name) else {
        if let Some(left_out) = limits.refusals.allow() {
            tracing::warn!(peer = %peer.name, left_out, "refusing connection: the peer holds too many");
        }
        conn.close(ERR_PROTOCOL.into(), b"too many connections from this node");
        return;
    };
    let peer = Arc::new(peer);
    let budget = FrameBudget::for_connection(&limits.frames);
    let dgram_conn = conn.clone();
    let dgram_handler = handler.clone();
    let dgram_peer = peer.clone();
    tokio::spawn(
        async move {
            while let Ok(d) = dgram_conn.read_datagram().await {
                dgram_handler.datagram(&dgram_peer, d);
            }
        }
        .in_current_span(),
    );
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let (handler, peer) = (handler.clone(), peer.clone());
                let stream = Stream {
                    budget: budget.clone(),
                    requests: slot.requests.clone(),
                };
                tokio::spawn(handle_stream(handler, peer, stream, send, recv).in_current_span());
            }
            Err(e) => {
                tracing::debug!(reason = %e, "connection ended");
                return;
            }
        }
    }
}

/// What a stream draws on: its connection's frame budget and its peer's
/// request slots.
struct Stream {
    budget: FrameBudget,
    requests: Arc<Semaphore>,
}

/// Reads a request frame's length; `Ok(None)` if the stream ended first.
async fn read_len(recv: &mut quinn::RecvStream) -> Result<Option<usize>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match recv
            .read(&mut len[got..])
            .await
            .map_err(|e| FrameError::Io(e.into()))?
        {
            Some(n) => got += n,
            None if got == 0 => return Ok(None),
            None => return Err(FrameError::Truncated),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(Some(len))
}

/// Bytes the reply to `req` may take besides its frame, charged to the
/// budget while the request is handled and its reply sent.
fn reply_bytes(req: &Request) -> usize {
    use mosix_proto::fs::FsRequest;
    match req {
        Request::Fs {
            op: FsRequest::Read { size, .. },
            ..
        } => (*size as usize).min(MAX_FRAME),
        Request::Fs {
            op: FsRequest::ReadDir { .. },
            ..
        } => MAX_FRAME / 2,
        Request::FsWrite { len, .. } => (*len as usize).min(MAX_FRAME),
        _ => 0,
    }
    .max(REPLY_ALLOWANCE)
}

async fn handle_stream<H: Handler>(
    handler: Arc<H>,
    peer: Arc<Peer>,
    stream: Stream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    // The frame's bytes are charged before they are read: a peer that
    // sends more than the budget waits, and QUIC flow control stops it.
    let read = async {
        let Some(len) = read_len(&mut recv).await? else {
            return Ok(None);
        };
        let bytes = stream.budget.take(len).await;
        let body = crate::read_body(&mut recv, len)
            .await
            .map_err(|e| match e {
                crate::NetError::Frame(f) => f,
                e => FrameError::Io(std::io::Error::other(e.to_string())),
            })?;
        let req: Request = mosix_proto::decode(&body)?;
        drop(body);
        drop(bytes);
        Ok::<_, FrameError>(Some(req))
    };
    let req = match in_time("request frame", read).await {
        Ok(Some(req)) => req,
        Ok(None) => return,
        Err(why) => {
            reject(&mut send, &mut recv, why).await;
            return;
        }
    };
    // One charge per stream at a time (never hold one while waiting for
    // another): the write body or the reply it asks for.
    let slot = async {
        let bytes = stream.budget.take(reply_bytes(&req)).await;
        let request = stream
            .requests
            .clone()
            .acquire_owned()
            .await
            .expect("request slots never close");
        Ok::<_, FrameError>((bytes, request))
    };
    let _held = match in_time("a free slot", slot).await {
        Ok(held) => held,
        Err(why) => {
            reject(&mut send, &mut recv, why).await;
            return;
        }
    };
    let (resp, body) = match req {
        // A long-lived stream: the handler owns both directions from here.
        req @ (Request::Arrive { .. } | Request::Checkpoint { .. } | Request::Restart { .. }) => {
            return handler.stream(&peer, req, send, recv).await
        }
        Request::Discard { len } => match discard(&mut recv, len).await {
            Ok(bytes) => (Response::Discarded { bytes }, None),
            Err(e) => {
                tracing::warn!(error = %e, "discard stream failed");
                let _ = send.reset(ERR_PROTOCOL.into());
                return;
            }
        },
        Request::FsWrite {
            client_run,
            creds,
            fh,
            offset,
            len,
            epoch,
        } => match in_time("write body", crate::read_body(&mut recv, len as usize)).await {
            Ok(data) => {
                let op = mosix_proto::fs::FsRequest::Write { fh, offset, data };
                let req = Request::Fs {
                    client_run,
                    creds,
                    op,
                    epoch,
                };
                handler.handle_bulk(&peer, req).await
            }
            Err(why) => {
                reject(&mut send, &mut recv, why).await;
                return;
            }
        },
        req => handler.handle_bulk(&peer, req).await,
    };
    if let Err(e) = write_frame(&mut send, &resp, MAX_FRAME).await {
        tracing::warn!(error = %e, "cannot send response");
        let _ = send.reset(ERR_PROTOCOL.into());
        return;
    }
    // Handed to quinn as it is: no copy into the stream's buffer.
    if let Some(body) = body {
        if let Err(e) = send.write_chunk(body).await {
            tracing::warn!(error = %e, "cannot send response body");
            let _ = send.reset(ERR_PROTOCOL.into());
            return;
        }
    }
    let _ = send.finish();
    // Let the peer read the response before the stream state is dropped.
    let _ = send.stopped().await;
}

/// What a peer sends, within [`REQUEST_TIMEOUT`]; on failure, the reason to
/// refuse the stream with.
async fn in_time<T, E: std::fmt::Display>(
    what: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, what, "bad input; closing stream");
            Err(e.to_string())
        }
        Err(_) => {
            tracing::warn!(what, "not received in time; closing stream");
            Err("request timed out".into())
        }
    }
}

/// Answers a protocol violation with an error and stops reading, so the peer
/// learns why its stream died and cannot keep pushing bytes into it.
pub async fn reject(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, why: String) {
    let _ = recv.stop(ERR_PROTOCOL.into());
    let resp = Response::Error(RemoteError::BadRequest(why));
    if write_frame(send, &resp, MAX_FRAME).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, send.stopped()).await;
    } else {
        let _ = send.reset(ERR_PROTOCOL.into());
    }
}

async fn discard(recv: &mut quinn::RecvStream, len: u64) -> Result<u64, String> {
    let mut got = 0u64;
    while got < len {
        // Bounded per chunk, not for the whole transfer: a slow but live
        // stream may take as long as it needs.
        let chunk = tokio::time::timeout(REQUEST_TIMEOUT, recv.read_chunk(1 << 20, true))
            .await
            .map_err(|_| "stalled".to_string())?
            .map_err(|e| e.to_string())?;
        match chunk {
            Some(c) => got += c.bytes.len() as u64,
            None => return Err(format!("stream ended after {got} of {len} bytes")),
        }
    }
    Ok(got)
}
