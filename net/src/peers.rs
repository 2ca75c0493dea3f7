//! Outgoing connections, one per peer address, reused by every request and
//! datagram to that peer.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{with_timeout, NetError, Result, CONNECT_TIMEOUT};

/// After a failed connect, further attempts to that peer fail at once for this
/// long, so callers of a dead node get an error fast instead of each waiting
/// out a full handshake timeout.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// Datagrams queued per peer while a connection is being set up; beyond that
/// they are dropped, which SWIM and load records tolerate.
const DATAGRAM_QUEUE: usize = 64;

#[derive(Default)]
struct Slot {
    conn: Option<quinn::Connection>,
    failed_at: Option<(Instant, String)>,
}

pub struct Peers {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    slots: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Slot>>>>,
    senders: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
}

impl Peers {
    pub fn new(endpoint: quinn::Endpoint, client: quinn::ClientConfig) -> Arc<Self> {
        Arc::new(Peers {
            endpoint,
            client,
            slots: Mutex::default(),
            senders: Mutex::default(),
        })
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// The live connection to `addr`, dialing it if needed.
    pub async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection> {
        let slot = self
            .slots
            .lock()
            .expect("peer table lock")
            .entry(addr)
            .or_default()
            .clone();
        // One dial per peer at a time: concurrent callers wait for it and share
        // the result instead of racing duplicate handshakes.
        let mut slot = slot.lock().await;
        if let Some(c) = &slot.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        if let Some((at, reason)) = &slot.failed_at {
            if at.elapsed() < RECONNECT_BACKOFF {
                return Err(NetError::Connect {
                    addr,
                    reason: reason.clone(),
                });
            }
        }
        let dial = async {
            let connecting = self
                .endpoint
                .connect_with(self.client.clone(), addr, mosix_proto::SERVER_NAME)
                .map_err(|e| NetError::Connect {
                    addr,
                    reason: e.to_string(),
                })?;
            connecting.await.map_err(|e| NetError::Connect {
                addr,
                reason: e.to_string(),
            })
        };
        // A handshake that never finishes is a peer that cannot be
        // reached, like one that refuses.
        let dialed = with_timeout("connect", CONNECT_TIMEOUT, dial)
            .await
            .map_err(|e| match e {
                NetError::Timeout { .. } => NetError::Connect {
                    addr,
                    reason: format!("no handshake within {CONNECT_TIMEOUT:?}"),
                },
                e => e,
            });
        match dialed {
            Ok(c) => {
                slot.conn = Some(c.clone());
                slot.failed_at = None;
                Ok(c)
            }
            Err(e) => {
                slot.conn = None;
                slot.failed_at = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    /// Closes the connection to `addr`, so the next request or datagram
    /// dials afresh. For a peer that restarted: the old connection leads to
    /// its dead predecessor until it idles out, and what goes on it is lost.
    /// Never waits: a slot busy dialing is reaching whoever listens now.
    pub fn drop_connection(&self, addr: SocketAddr) {
        let slot = self
            .slots
            .lock()
            .expect("peer table lock")
            .get(&addr)
            .cloned();
        let Some(slot) = slot else { return };
        if let Ok(mut slot) = slot.try_lock() {
            if let Some(c) = slot.conn.take() {
                c.close(0u32.into(), b"peer restarted");
            }
            slot.failed_at = None;
        };
    }

    /// One request/response with the peer at `addr`, bounded by
    /// `CONNECT_TIMEOUT + REQUEST_TIMEOUT`.
    pub async fn request(
        &self,
        addr: SocketAddr,
        req: &mosix_proto::Request,
    ) -> Result<mosix_proto::Response> {
        let conn = self.connection(addr).await?;
        let r = crate::request(&conn, req).await;
        if let Err(NetError::ConnectionLost(quinn::ConnectionError::TimedOut)) = &r {
            // The peer went silent: the calls right behind this one (the
            // kernel retries a failed lookup at once) fail now too, instead
            // of each waiting out a handshake with a peer that is gone.
            let slot = self
                .slots
                .lock()
                .expect("peer table lock")
                .get(&addr)
                .cloned();
            if let Some(slot) = slot {
                slot.lock().await.failed_at = Some((Instant::now(), "peer went silent".into()));
            }
        }
        r
    }

    /// Opens a long-lived stream to `addr` that starts with `req` (see
    /// [`crate::Handler::stream`]); the caller owns both directions.
    pub async fn open_stream(
        &self,
        addr: SocketAddr,
        req: &mosix_proto::Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        let conn = self.connection(addr).await?;
        crate::with_timeout("stream", crate::REQUEST_TIMEOUT, async {
            let (mut send, recv) = conn.open_bi().await?;
            mosix_proto::write_frame(&mut send, req, mosix_proto::MAX_FRAME).await?;
            Ok((send, recv))
        })
        .await
    }

    /// Queues an unreliable datagram to `addr`. Never blocks; drops the
    /// datagram when the peer is unreachable or its queue is full.
    pub fn send_datagram(self: &Arc<Self>, addr: SocketAddr, data: Bytes) {
        let tx = {
            let mut senders = self.senders.lock().expect("sender table lock");
            senders
                .entry(addr)
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(DATAGRAM_QUEUE);
                    tokio::spawn(datagram_pump(Arc::downgrade(self), addr, rx));
                    tx
                })
                .clone()
        };
        let _ = tx.try_send(data);
    }
}

async fn datagram_pump(
    peers: std::sync::Weak<Peers>,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
) {
    while let Some(data) = rx.recv().await {
        let Some(peers) = peers.upgrade() else { return };
        match peers.connection(addr).await {
            Ok(conn) => {
                if let Err(e) = conn.send_datagram(data) {
                    tracing::debug!(%addr, error = %e, "datagram dropped");
                }
            }
            Err(e) => tracing::trace!(%addr, error = %e, "datagram dropped: peer unreachable"),
        }
    }
}
