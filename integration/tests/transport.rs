//! The cluster transport against hostile clients: strangers get no answer,
//! and garbage never stops a node from serving the next good request.
use std::time::Duration;

use mosix_integration::Cluster;
use mosix_net::{pki, tls};
use mosix_proto::{MemberState, Request, Response, MAX_FRAME, SERVER_NAME};
use tokio::io::AsyncWriteExt;

/// Every step of these tests is bounded: a hang is a failure, not a stall.
const STEP: Duration = Duration::from_secs(15);

fn client_endpoint(c: &Cluster, bind: &str) -> quinn::Endpoint {
    let sock = c.udp_socket_in_cluster(bind);
    mosix_net::endpoint_on(sock, None).expect("client endpoint")
}

/// Connects with `cfg` and sends a real request. Returns the response, or
/// the error that stopped it.
async fn ping(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: std::net::SocketAddr,
) -> Result<Response, String> {
    let attempt = async {
        let conn = ep
            .connect_with(cfg, addr, SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        mosix_net::request(&conn, &Request::Ping { nonce: 42 })
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(STEP, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// A client certificate the cluster CA really signed, for a non-node user.
fn cluster_identity(c: &Cluster, name: &str) -> quinn::ClientConfig {
    let certs = c.certs();
    pki::issue_node(&certs, name).unwrap();
    let (cert, key) = pki::node_paths(&certs, name);
    let ca = tls::load_ca(&certs.join("ca.pem")).unwrap();
    tls::client_config(&ca, Some(tls::load_identity(&cert, &key).unwrap())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_no_answer() {
    let c = Cluster::up(2);
    let ep = client_endpoint(&c, "127.0.0.100:0");
    let n1 = c.addr("n1");
    let ca = tls::load_ca(&c.certs().join("ca.pem")).unwrap();

    // Control: the same client with a cluster certificate gets its answer, so
    // the refusals below are about identity, not about reachability.
    match ping(&ep, cluster_identity(&c, "tester"), n1).await {
        Ok(Response::Pong { nonce: 42, node }) => assert_eq!(node, "n1"),
        other => panic!("authenticated ping failed: {other:?}"),
    }

    // No client certificate at all.
    let anonymous = tls::client_config(&ca, None).unwrap();
    let r = ping(&ep, anonymous, n1).await;
    eprintln!("no certificate: {r:?}");
    assert!(r.is_err(), "a client without a certificate got {r:?}");

    // A certificate from another cluster's CA (the client still trusts ours,
    // so only the server's check can refuse it).
    let other = tempfile::tempdir().unwrap();
    pki::init_cluster(other.path(), &["n1".into()]).unwrap();
    let (cert, key) = pki::node_paths(other.path(), "n1");
    let foreign = tls::client_config(&ca, Some(tls::load_identity(&cert, &key).unwrap())).unwrap();
    let r = ping(&ep, foreign, n1).await;
    eprintln!("foreign CA: {r:?}");
    assert!(
        r.is_err(),
        "a client with a foreign CA certificate got {r:?}"
    );

    // The node is unharmed.
    assert!(matches!(
        ping(&ep, cluster_identity(&c, "tester2"), n1).await,
        Ok(Response::Pong { .. })
    ));
}

/// Sends raw bytes on a fresh stream and returns what came back: a decoded
/// response, or the stream error.
async fn raw_exchange(
    conn: &quinn::Connection,
    bytes: &[u8],
    finish: bool,
) -> Result<Option<Response>, String> {
    let attempt = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        // A write may fail once the server stops reading; that is a valid refusal.
        let _ = send.write_all(bytes).await;
        if finish {
            let _ = send.finish();
        }
        let r = mosix_proto::read_frame::<_, Response>(&mut recv, MAX_FRAME).await;
        let _ = send.shutdown().await;
        r.map_err(|e| e.to_string())
    };
    tokio::time::timeout(STEP, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

fn assert_refused(what: &str, r: Result<Option<Response>, String>) {
    match r {
        Ok(Some(Response::Error(_))) | Err(_) => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
    assert!(
        !format!("{r:?}").contains("timed out"),
        "{what}: the node stalled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_do_not_stop_the_node() {
    let c = Cluster::up(2);
    let ep = client_endpoint(&c, "127.0.0.101:0");
    let n2 = c.addr("n2");
    let conn = ep
        .connect_with(cluster_identity(&c, "fuzzer"), n2, SERVER_NAME)
        .unwrap()
        .await
        .expect("authenticated connection");
    let good = |conn: quinn::Connection| async move {
        tokio::time::timeout(STEP, mosix_net::request(&conn, &Request::Ping { nonce: 7 })).await
    };

    // A well-sized frame whose body is not MessagePack (0xc1 is never valid).
    let mut garbage = vec![0, 0, 0, 16];
    garbage.extend([0xc1u8; 16]);
    let r = raw_exchange(&conn, &garbage, true).await;
    assert!(
        matches!(
            &r,
            Ok(Some(Response::Error(mosix_proto::RemoteError::BadRequest(
                _
            ))))
        ),
        "garbage frame: {r:?}"
    );
    assert!(matches!(
        good(conn.clone()).await,
        Ok(Ok(Response::Pong { nonce: 7, .. }))
    ));

    // Valid MessagePack, but not a request.
    let mut wrong = Vec::new();
    mosix_proto::write_frame(&mut wrong, &"hello", MAX_FRAME)
        .await
        .unwrap();
    assert_refused("wrong type", raw_exchange(&conn, &wrong, true).await);
    assert!(matches!(
        good(conn.clone()).await,
        Ok(Ok(Response::Pong { .. }))
    ));

    // An oversized length: refused from the header alone, without waiting
    // for 4 GiB that never come.
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend(vec![0u8; 64 << 10]);
    assert_refused("oversized frame", raw_exchange(&conn, &huge, false).await);
    assert!(matches!(
        good(conn.clone()).await,
        Ok(Ok(Response::Pong { .. }))
    ));

    // Just over the limit.
    let mut over = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    over.extend(vec![0x90u8; 1024]);
    assert_refused("limit+1 frame", raw_exchange(&conn, &over, true).await);

    // A frame cut short by the end of the stream.
    assert_refused(
        "truncated frame",
        raw_exchange(&conn, &[0, 0, 1, 0, 1, 2, 3], true).await,
    );
    assert!(matches!(
        good(conn.clone()).await,
        Ok(Ok(Response::Pong { .. }))
    ));

    // Junk datagrams, including ones tagged as membership and load traffic.
    for i in 0..200u32 {
        let mut d = vec![(i % 4) as u8];
        d.extend(i.to_le_bytes().repeat(20));
        let _ = conn.send_datagram(d.into());
    }
    // Many good requests at once, on the same connection, all answered.
    let mut set = tokio::task::JoinSet::new();
    for nonce in 0..100u64 {
        let conn = conn.clone();
        set.spawn(async move { mosix_net::request(&conn, &Request::Ping { nonce }).await });
    }
    while let Some(r) = set.join_next().await {
        assert!(matches!(r.unwrap(), Ok(Response::Pong { .. })));
    }

    // Membership survived the junk.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let members = tokio::task::spawn_blocking(move || c.status("n1"))
        .await
        .unwrap();
    assert!(
        members.iter().all(|m| m.state == MemberState::Alive) && members.len() == 2,
        "{members:?}"
    );
}
