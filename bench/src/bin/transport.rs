//! Raw transport throughput: one node streams N MiB to another over the
//! project's QUIC channel (mutual TLS, the same endpoint, connection and
//! stream code the daemon uses), against a plain tokio TCP copy over loopback
//! in the same run. Reports MB/s and the ratio.
//!
//!   cargo run --release -p mosix-bench --bin transport -- [--mib 1024] [--runs 3]
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use mosix_net::{pki, Peers, Tls, TlsFiles};
use mosix_proto::{read_frame, write_frame, Request, Response, MAX_FRAME};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// MiB to stream per run.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Runs per transport; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

struct Sink;

impl mosix_net::Handler for Sink {
    async fn handle(&self, _peer: &mosix_net::Peer, _req: Request) -> Response {
        Response::Pong {
            nonce: 0,
            node: "sink".into(),
        }
    }
    fn datagram(&self, _peer: &mosix_net::Peer, _data: bytes::Bytes) {}
}

fn tls(dir: &std::path::Path, node: &str) -> anyhow::Result<Tls> {
    let (cert, key) = pki::node_paths(dir, node);
    Ok(Tls::load(&TlsFiles {
        ca: dir.join("ca.pem"),
        cert,
        key,
    })?)
}

async fn quic_run(peers: &Peers, to: SocketAddr, len: u64) -> anyhow::Result<Duration> {
    let chunk = bytes::Bytes::from(vec![0xA5u8; 1 << 20]);
    let start = Instant::now();
    let conn = peers.connection(to).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &Request::Discard { len }, MAX_FRAME).await?;
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        send.write_chunk(chunk.slice(..n)).await?;
        left -= n as u64;
    }
    send.finish()?;
    match read_frame::<_, Response>(&mut recv, MAX_FRAME).await? {
        Some(Response::Discarded { bytes }) if bytes == len => Ok(start.elapsed()),
        other => anyhow::bail!("sink answered {other:?}"),
    }
}

async fn tcp_run(to: SocketAddr, len: u64) -> anyhow::Result<Duration> {
    let chunk = vec![0xA5u8; 1 << 20];
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(to).await?;
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let got = s.read_u64().await?;
    anyhow::ensure!(got == len, "tcp sink got {got} of {len}");
    Ok(start.elapsed())
}

async fn tcp_sink(l: tokio::net::TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            let _ = s.write_u64(total).await;
        });
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mbps(len: u64, d: Duration) -> f64 {
    len as f64 / 1e6 / d.as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    // Our own network namespace: no packet of the benchmark can leave the machine.
    let isolated = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_ok();
    if isolated {
        let st = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .context("running ip (iproute2)")?;
        anyhow::ensure!(st.success(), "cannot bring lo up");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        pki::init_cluster(dir.path(), &["a".into(), "b".into()])?;
        let (ta, tb) = (tls(dir.path(), "a")?, tls(dir.path(), "b")?);
        let a_addr: SocketAddr = "127.0.0.1:7790".parse()?;
        let b_addr: SocketAddr = "127.0.0.2:7790".parse()?;
        let eb = mosix_net::bind_endpoint(b_addr, tb.server.clone())?;
        tokio::spawn(mosix_net::serve(eb, Arc::new(Sink)));
        let ea = mosix_net::bind_endpoint(a_addr, ta.server.clone())?;
        let peers = Peers::new(ea, ta.client.clone());
        let tcp_addr: SocketAddr = "127.0.0.2:7791".parse()?;
        tokio::spawn(tcp_sink(tokio::net::TcpListener::bind(tcp_addr).await?));

        let len = args.mib << 20;
        // Warm-up: handshake, allocator, congestion window.
        quic_run(&peers, b_addr, 64 << 20).await?;
        tcp_run(tcp_addr, 64 << 20).await?;
        let (mut q, mut t) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            q.push(quic_run(&peers, b_addr, len).await?);
            t.push(tcp_run(tcp_addr, len).await?);
        }
        let conn = peers.connection(b_addr).await?;
        let mtu = conn.stats().path.current_mtu;
        let (q, t) = (median(q), median(t));
        println!(
            "transport: {} MiB x {} runs (median), {}",
            args.mib,
            args.runs,
            if isolated {
                "private netns"
            } else {
                "host loopback"
            }
        );
        println!(
            "  mosix QUIC+mTLS stream  {:>8.0} MB/s  ({:.2} s)",
            mbps(len, q),
            q.as_secs_f64()
        );
        println!(
            "  loopback TCP (tokio)    {:>8.0} MB/s  ({:.2} s)",
            mbps(len, t),
            t.as_secs_f64()
        );
        println!(
            "  ratio QUIC/TCP          {:>8.2}",
            mbps(len, q) / mbps(len, t)
        );
        println!("  QUIC path MTU           {mtu:>8} bytes");
        anyhow::Ok(())
    })
}
