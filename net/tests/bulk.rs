//! Read replies whose bytes follow the frame raw: what a client makes of
//! them, good or bad, over a real QUIC connection with mutual TLS.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mosix_net::{pki, NetError, Peers, Tls, TlsFiles};
use mosix_proto::fs::FsReply;
use mosix_proto::{FrameError, Request, Response, MAX_FRAME};

/// Answers Ping { nonce } with a raw reply chosen by the nonce.
struct Server;

impl mosix_net::Handler for Server {
    async fn handle(&self, _req: Request) -> Response {
        unreachable!("handle_bulk answers everything")
    }
    fn datagram(&self, _data: Bytes) {}
    async fn handle_bulk(&self, req: Request) -> (Response, Option<Bytes>) {
        let Request::Ping { nonce } = req else {
            return (
                Response::Error(mosix_proto::RemoteError::BadRequest("?".into())),
                None,
            );
        };
        let data = |len, body: &'static [u8]| {
            (
                Response::FsData { epoch: 7, len },
                Some(Bytes::from_static(body)),
            )
        };
        match nonce {
            1 => data(5, b"hello"),
            // Claims more than it sends, then ends the stream.
            2 => data(10, b"short"),
            // Claims more than any frame may carry.
            _ => data(MAX_FRAME as u32 + 1, b""),
        }
    }
}

fn tls(dir: &std::path::Path, node: &str) -> Tls {
    let (cert, key) = pki::node_paths(dir, node);
    Tls::load(&TlsFiles {
        ca: dir.join("ca.pem"),
        cert,
        key,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_read_replies_arrive_whole_or_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    pki::init_cluster(dir.path(), &["a".into(), "b".into()]).unwrap();
    let (ta, tb) = (tls(dir.path(), "a"), tls(dir.path(), "b"));
    let b = mosix_net::bind_endpoint("127.0.0.1:0".parse().unwrap(), tb.server.clone()).unwrap();
    let b_addr: SocketAddr = b.local_addr().unwrap();
    tokio::spawn(mosix_net::serve(b, Arc::new(Server)));
    let a = mosix_net::bind_endpoint("127.0.0.1:0".parse().unwrap(), ta.server.clone()).unwrap();
    let peers = Peers::new(a, ta.client.clone());

    let r = peers.request(b_addr, &Request::Ping { nonce: 1 }).await;
    assert_eq!(
        r.unwrap(),
        Response::Fs {
            epoch: 7,
            result: Ok(FsReply::Data(b"hello".to_vec()))
        }
    );
    let start = Instant::now();
    let r = peers.request(b_addr, &Request::Ping { nonce: 2 }).await;
    assert!(
        matches!(r, Err(NetError::Frame(FrameError::Truncated))),
        "{r:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    let r = peers.request(b_addr, &Request::Ping { nonce: 3 }).await;
    assert!(
        matches!(r, Err(NetError::Frame(FrameError::TooLarge { .. }))),
        "{r:?}"
    );
    // The connection is still good for the next request.
    let r = peers.request(b_addr, &Request::Ping { nonce: 1 }).await;
    assert!(r.is_ok(), "{r:?}");
}
