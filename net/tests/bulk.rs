//! Reads and writes whose bytes follow their frame raw: what each end makes
//! of them, good or bad, over a real QUIC connection with mutual TLS.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mosix_net::{pki, NetError, Peers, Tls, TlsFiles};
use mosix_proto::fs::{Creds, FsReply, FsRequest};
use mosix_proto::{read_frame, write_frame, FrameError, RemoteError, Request, Response, MAX_FRAME};

/// Answers Ping { nonce } with a raw reply chosen by the nonce.
struct Server;

impl mosix_net::Handler for Server {
    async fn handle(&self, _peer: &mosix_net::Peer, _req: Request) -> Response {
        unreachable!("handle_bulk answers everything")
    }
    fn datagram(&self, _peer: &mosix_net::Peer, _data: Bytes) {}
    async fn handle_bulk(&self, peer: &mosix_net::Peer, req: Request) -> (Response, Option<Bytes>) {
        // The server knows the client by its certificate.
        assert_eq!(&*peer.name, "a");
        // A write arrives whole, as an ordinary Fs request: echo its length
        // and first byte.
        if let Request::Fs {
            op: FsRequest::Write { data, offset, .. },
            epoch,
            ..
        } = req
        {
            let first = data.first().copied().unwrap_or(0) as u64;
            let reply = Response::Fs {
                epoch: epoch.unwrap_or(0) + offset + first,
                result: Ok(FsReply::Written(data.len() as u32)),
            };
            return (reply, None);
        }
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

    // On loopback, path-MTU discovery takes packets past the 1452-byte
    // default, up to the cap that keeps a GSO batch within one datagram.
    let conn = peers.connection(b_addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while conn.stats().path.current_mtu <= 1452 && Instant::now() < deadline {
        let _ = peers.request(b_addr, &Request::Ping { nonce: 1 }).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mtu = conn.stats().path.current_mtu;
    assert!(
        mtu > 1452 && mtu <= mosix_net::MAX_UDP_PAYLOAD,
        "path MTU {mtu}"
    );

    // A 1 MiB write goes raw and arrives whole.
    let write = Request::Fs {
        client_run: 1,
        creds: Creds::default(),
        op: FsRequest::Write {
            fh: 1,
            offset: 10,
            data: vec![3u8; 1 << 20],
        },
        epoch: Some(100),
    };
    assert_eq!(
        peers.request(b_addr, &write).await.unwrap(),
        Response::Fs {
            epoch: 113,
            result: Ok(FsReply::Written(1 << 20))
        }
    );
    // A write body shorter than announced, or longer than a frame may be,
    // is refused; the server answers instead of waiting.
    let conn = peers.connection(b_addr).await.unwrap();
    for (len, body) in [(10u32, &b"short"[..]), (MAX_FRAME as u32 + 1, &b""[..])] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let head = Request::FsWrite {
            client_run: 1,
            creds: Creds::default(),
            fh: 1,
            offset: 0,
            len,
            epoch: None,
        };
        write_frame(&mut send, &head, MAX_FRAME).await.unwrap();
        send.write_all(body).await.unwrap();
        send.finish().unwrap();
        let start = Instant::now();
        let r = read_frame::<_, Response>(&mut recv, MAX_FRAME).await;
        assert!(
            matches!(r, Ok(Some(Response::Error(RemoteError::BadRequest(_))))),
            "{len}: {r:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
