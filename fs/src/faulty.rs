//! Transports for tests of the namespace without a cluster: [`Loopback`]
//! serves a real [`Export`] in-process, as another node's daemon would, and
//! [`Faulty`] fails it on a countdown (mountpoint-s3's failure client is the
//! model), so every row of the failure table in docs/SEMANTICS.md can be
//! driven through the real namespace code.
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{FsError, FsResult};
use crate::export::Export;
use crate::remote::{FsCall, Transport};
use crate::service::{ClientId, Run, Who};

/// Another node's export, served in-process with the serving daemon's epoch
/// check. [`Loopback::restart`] replaces it with a new run.
pub struct Loopback {
    export: Mutex<Arc<Export>>,
    client: ClientId,
}

impl Loopback {
    pub fn new(export: Arc<Export>, client: &str) -> Self {
        Loopback {
            export: Mutex::new(export),
            client: ClientId {
                node: client.into(),
                run: 1,
            },
        }
    }

    /// The serving daemon restarted: a new export, a new run.
    pub fn restart(&self, export: Arc<Export>) {
        *self.export.lock().expect("loopback") = export;
    }

    pub fn export(&self) -> Arc<Export> {
        self.export.lock().expect("loopback").clone()
    }
}

#[async_trait]
impl Transport for Loopback {
    async fn fs(&self, _node: &str, call: FsCall) -> FsResult<(Run, mosix_proto::fs::FsResult)> {
        let e = self.export();
        if call.epoch.is_some_and(|x| x != e.epoch()) {
            return Ok((e.epoch(), Err(libc::ESTALE)));
        }
        let who = Who {
            client: self.client.clone(),
            creds: call.creds,
        };
        Ok((e.epoch(), e.handle(&who, call.op)))
    }
}

/// What goes wrong.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Membership says the node is dead: fails at once.
    Dead,
    /// The node does not answer the handshake: fails after the connect
    /// timeout, as the daemon's transport does.
    Unreachable(Duration),
    /// The request was sent and no answer came within the request timeout.
    NoAnswer(Duration),
}

/// A transport that works for `countdown` calls, then fails with `fault`.
pub struct Faulty<T> {
    inner: T,
    countdown: AtomicI64,
    fault: Mutex<Option<Fault>>,
}

impl<T: Transport> Faulty<T> {
    pub fn new(inner: T) -> Self {
        Faulty {
            inner,
            countdown: AtomicI64::new(i64::MAX),
            fault: Mutex::new(None),
        }
    }

    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// After `calls` more calls succeed, every call fails with `fault`.
    pub fn fail_after(&self, calls: i64, fault: Fault) {
        *self.fault.lock().expect("fault") = Some(fault);
        self.countdown.store(calls, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        *self.fault.lock().expect("fault") = None;
        self.countdown.store(i64::MAX, Ordering::SeqCst);
    }
}

#[async_trait]
impl<T: Transport> Transport for Faulty<T> {
    async fn fs(&self, node: &str, call: FsCall) -> FsResult<(Run, mosix_proto::fs::FsResult)> {
        if self.countdown.fetch_sub(1, Ordering::SeqCst) <= 0 {
            let fault = self.fault.lock().expect("fault").clone();
            match fault {
                Some(Fault::Dead) => return Err(FsError::NodeDown(node.to_string())),
                Some(Fault::Unreachable(after)) => {
                    tokio::time::sleep(after).await;
                    return Err(FsError::NodeDown(node.to_string()));
                }
                Some(Fault::NoAnswer(after)) => {
                    tokio::time::sleep(after).await;
                    return Err(FsError::Transport("request timed out".into()));
                }
                None => {}
            }
        }
        self.inner.fs(node, call).await
    }
}
