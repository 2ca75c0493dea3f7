//! The accepting side: triage, handshake, then one task per request stream.
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use mosix_proto::{read_frame, write_frame, RemoteError, Request, Response, MAX_FRAME};
use tracing::Instrument;

use crate::{CONNECT_TIMEOUT, MAX_CONNECTIONS, REQUEST_TIMEOUT};

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
}

impl Peer {
    /// The node a connection's client certificate names.
    pub fn of(conn: &quinn::Connection) -> Option<Peer> {
        let certs = conn
            .peer_identity()?
            .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
            .ok()?;
        let (name, id) = crate::pki::node_identity(certs.first()?).ok()?;
        Some(Peer {
            name: name.into(),
            id,
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
pub async fn serve<H: Handler>(endpoint: quinn::Endpoint, handler: Arc<H>) {
    while let Some(incoming) = endpoint.accept().await {
        // Triage before any TLS work: an overloaded node refuses cheaply.
        if endpoint.open_connections() >= MAX_CONNECTIONS {
            tracing::warn!(remote = %incoming.remote_address(), "refusing connection: too many open");
            incoming.refuse();
            continue;
        }
        let remote = incoming.remote_address();
        let handler = handler.clone();
        tokio::spawn(
            async move {
                let conn =
                    match tokio::time::timeout(CONNECT_TIMEOUT, async { incoming.accept()?.await })
                        .await
                    {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            // Includes peers without a CA-signed certificate.
                            tracing::info!(error = %e, "handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::info!("handshake timed out");
                            return;
                        }
                    };
                serve_connection(conn, handler).await;
            }
            .instrument(tracing::info_span!("peer", %remote)),
        );
    }
}

async fn serve_connection<H: Handler>(conn: quinn::Connection, handler: Arc<H>) {
    // The handshake verified the chain to the cluster CA; a certificate
    // without a node name in it names no member.
    let Some(peer) = Peer::of(&conn) else {
        tracing::warn!("peer certificate names no node; closing");
        conn.close(ERR_PROTOCOL.into(), b"certificate names no node");
        return;
    };
    let peer = Arc::new(peer);
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
                tokio::spawn(handle_stream(handler, peer, send, recv).in_current_span());
            }
            Err(e) => {
                tracing::debug!(reason = %e, "connection ended");
                return;
            }
        }
    }
}

async fn handle_stream<H: Handler>(
    handler: Arc<H>,
    peer: Arc<Peer>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let req = match in_time(
        "request frame",
        read_frame::<_, Request>(&mut recv, MAX_FRAME),
    )
    .await
    {
        Ok(Some(req)) => req,
        Ok(None) => return,
        Err(why) => {
            reject(&mut send, &mut recv, why).await;
            return;
        }
    };
    let (resp, body) = match req {
        // A long-lived stream: the handler owns both directions from here.
        req @ Request::Arrive { .. } => return handler.stream(&peer, req, send, recv).await,
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
