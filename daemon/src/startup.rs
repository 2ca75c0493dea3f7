//! What a daemon checks and waits for before it serves: refusing early what
//! would otherwise fail half-way, and restarting cleanly after a crash or an
//! `umount`.
use std::time::Duration;

use crate::config::Config;
use crate::{identity, mount, DaemonError};

/// How long a starting daemon waits for its UDP port while it is in use: a
/// daemon stopped by `umount` lets go of it a moment after umount returns.
pub const BIND_RETRY: Duration = Duration::from_secs(3);

/// Checks the node's identity (its key's mode, its certificate against the
/// config; a config without `id` takes the certificate's) and refuses a
/// mount at the mountpoint that a live daemon serves: before anything is
/// bound, so that a second daemon says why it cannot start. A dead mount
/// left by a crash stays until the new one replaces it.
pub fn preflight(mut cfg: Config) -> Result<Config, DaemonError> {
    identity::check(&mut cfg)?;
    raise_nofile();
    if cfg.mount {
        mount::check_mountpoint(&cfg.mountpoint).map_err(|source| DaemonError::Mount {
            path: cfg.mountpoint.clone(),
            source,
        })?;
    }
    Ok(cfg)
}

/// The node's revocation list: `revoked` in the directory of its config
/// file (for the documented layout, `/etc/mosix/revoked`), or next to the CA
/// certificate for a config that was not read from a file.
pub fn revocation_file(cfg: &Config) -> std::path::PathBuf {
    let dir = cfg
        .source
        .as_deref()
        .or(Some(cfg.tls.ca.as_path()))
        .and_then(std::path::Path::parent)
        .unwrap_or(std::path::Path::new("/etc/mosix"));
    dir.join("revoked")
}

/// Waits until the node has joined through its configured peers (see
/// [`crate::membership::Membership::wait_joined`]), at most
/// [`crate::membership::JOIN_WAIT`] for the first to answer; a node with no
/// peers configured is a cluster of its own at once. Past the wait it goes
/// on alone, saying so.
pub async fn wait_joined(membership: &crate::membership::Membership, cfg: &Config) {
    if cfg.peers.is_empty() {
        return;
    }
    let wait = crate::membership::JOIN_WAIT;
    let start = std::time::Instant::now();
    match membership.wait_joined(wait).await {
        crate::membership::Joined::Fully => {
            tracing::info!(took = ?start.elapsed(), "joined the cluster")
        }
        crate::membership::Joined::Partly(silent) => tracing::warn!(
            took = ?start.elapsed(),
            ?silent,
            "joined the cluster, but these peers, up as far as the members know, \
             did not answer: their files may not answer here yet"
        ),
        crate::membership::Joined::Alone => tracing::warn!(
            peers = ?cfg.peers,
            "no configured peer answered in {wait:?}: going on alone; \
             members join as they come up"
        ),
    }
}

/// Tells systemd (a `Type=notify` unit) how the daemon is doing: one
/// datagram to `$NOTIFY_SOCKET`, as sd_notify(3) would send. Nothing
/// happens outside systemd.
pub fn notify_systemd(state: &str) {
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = notify_to(&socket, state) {
            tracing::warn!(socket = ?socket, "cannot notify systemd of {state}: {e}");
        }
    }
}

/// Sends `state` to the notification socket `socket` (a path, or an
/// abstract name after `@`).
pub fn notify_to(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// Raises the soft descriptor limit to the hard one (systemd's default soft
/// limit of 1,024 would let a few clients' opens exhaust the node; the
/// quotas of the export are derived from the limit in force) and logs it.
/// Returns the soft limit the daemon runs with.
pub fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        tracing::warn!("cannot read the descriptor limit");
        return 1024;
    }
    let before = rl.rlim_cur;
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            tracing::warn!(
                soft = before,
                hard = rl.rlim_max,
                "cannot raise the descriptor limit"
            );
            rl.rlim_cur = before;
        }
    }
    tracing::info!(
        nofile = rl.rlim_cur,
        was = before,
        hard = rl.rlim_max,
        "descriptor limit"
    );
    rl.rlim_cur
}

/// [`mosix_net::bind_endpoint`], retried for up to [`BIND_RETRY`] while the
/// address is in use.
pub async fn bind_endpoint(
    addr: std::net::SocketAddr,
    server: quinn::ServerConfig,
) -> Result<quinn::Endpoint, DaemonError> {
    let deadline = tokio::time::Instant::now() + BIND_RETRY;
    let mut logged = false;
    loop {
        match mosix_net::bind_endpoint(addr, server.clone()) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                if !logged {
                    tracing::info!(%addr, "address in use; waiting for it to be free");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(source) => return Err(DaemonError::Listen { addr, source }),
            Ok(endpoint) => return Ok(endpoint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_config() -> quinn::ServerConfig {
        let dir = tempfile::tempdir().unwrap();
        mosix_net::pki::init_cluster(dir.path(), &["a".into()]).unwrap();
        let (cert, key) = mosix_net::pki::node_paths(dir.path(), "a");
        mosix_net::Tls::load(&mosix_net::TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert,
            key,
        })
        .unwrap()
        .server
    }

    #[test]
    fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
        let n = raise_nofile();
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        assert_eq!((n, rl.rlim_cur), (rl.rlim_max, rl.rlim_max));
    }

    #[test]
    fn systemd_hears_ready_on_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        // Abstract sockets, as systemd usually hands out.
        let name = format!("mosix-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[tokio::test]
    async fn binding_waits_for_a_port_that_is_about_to_be_free() {
        let server = server_config();
        let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(holder);
        });
        let start = std::time::Instant::now();
        bind_endpoint(addr, server.clone()).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(400));
        release.await.unwrap();

        // A port that stays taken fails after the retry time, saying why.
        let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let start = std::time::Instant::now();
        let e = bind_endpoint(addr, server).await.unwrap_err().to_string();
        assert!(start.elapsed() >= BIND_RETRY, "{:?}", start.elapsed());
        assert!(e.contains(&addr.to_string()), "{e}");
        drop(holder);
    }
}
