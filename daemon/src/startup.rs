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
/// config; a config without `id` takes the certificate's) and clears a dead
/// mount left at the mountpoint, or refuses one a live daemon serves: before
/// anything is bound, so that a second daemon says why it cannot start.
pub fn preflight(mut cfg: Config) -> Result<Config, DaemonError> {
    identity::check(&mut cfg)?;
    raise_nofile();
    if cfg.mount {
        mount::clean_stale_mount(&cfg.mountpoint).map_err(|source| DaemonError::Mount {
            path: cfg.mountpoint.clone(),
            source,
        })?;
    }
    Ok(cfg)
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
