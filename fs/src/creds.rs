//! Per-thread credential switching for the export server.
//!
//! The daemon serves many callers at once from a thread pool, so the caller's
//! identity must be set on the *current thread only*. Linux keeps credentials
//! per thread; it is glibc that broadcasts `setuid`/`setgroups` to every
//! thread of the process. So this module uses `setfsuid`/`setfsgid` (which
//! glibc leaves per-thread) and the raw `setgroups` and `capset` syscalls.
//!
//! Switching the fsuid away from 0 makes the kernel drop the filesystem
//! capabilities (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_CHOWN,
//! CAP_FSETID, CAP_MKNOD, ...) from the thread's effective set, so permission
//! checks on files happen exactly as they would for the caller. The daemon
//! still holds other capabilities that some file operations consult
//! (CAP_SYS_ADMIN for `trusted.*` xattrs, CAP_SETFCAP for
//! `security.capability`, CAP_SYS_RESOURCE for reserved blocks), so for a
//! non-root caller the effective set is cut down to CAP_SETUID and CAP_SETGID
//! (kept only so the guard can switch back) for the guard's lifetime.
//!
//! When the caller is uid 0 the kernel keeps root's capabilities: that is
//! intended (root on a cluster node is root on the exported tree, unless the
//! export squashes root).
use nix::errno::Errno;

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

type CapSet = [CapData; 2];

fn capget() -> Result<CapSet, Errno> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        // 0 = the calling thread.
        pid: 0,
    };
    let mut data = CapSet::default();
    // SAFETY: hdr and data are valid for the sizes the v3 ABI expects.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    Errno::result(r).map(|_| data)
}

fn capset(data: &CapSet) -> Result<(), Errno> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: hdr and data are valid for the sizes the v3 ABI expects; capset
    // only reads data.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    Errno::result(r).map(drop)
}

fn set_groups(groups: &[u32]) -> Result<(), Errno> {
    // The raw syscall, not glibc's setgroups(3): glibc would apply it to every
    // thread in the process, i.e. to other callers being served right now.
    // SAFETY: the pointer and length describe a valid gid_t slice.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            groups.len() as libc::size_t,
            groups.as_ptr() as *const libc::gid_t,
        )
    };
    Errno::result(r).map(drop)
}

/// Reads the thread's fsuid without changing it: -1 is never a valid id, so
/// the kernel leaves the fsuid alone and returns the current one.
fn current_fsuid() -> u32 {
    // SAFETY: plain syscall wrapper.
    unsafe { libc::setfsuid(u32::MAX) as u32 }
}

fn current_fsgid() -> u32 {
    // SAFETY: plain syscall wrapper.
    unsafe { libc::setfsgid(u32::MAX) as u32 }
}

/// The current thread runs file operations as some caller while this lives.
/// Dropping it gives the thread back fsuid 0, fsgid 0, no supplementary
/// groups and its previous capabilities.
#[derive(Debug)]
pub struct CredGuard {
    /// Capabilities to put back, when they were narrowed for a non-root caller.
    saved_caps: Option<CapSet>,
    /// Not Send: credentials belong to the thread that set them.
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Switches the current thread's filesystem identity to `uid`/`gid` with
/// supplementary `groups` (in that order: groups, fsgid, fsuid) and checks
/// that each took effect. Fails with the errno of the first step that did not
/// (EPERM when the kernel silently refused an id); whatever was already
/// changed is restored before returning.
pub fn become_caller(uid: u32, gid: u32, groups: &[u32]) -> Result<CredGuard, Errno> {
    // Created first so that an early return restores what was already set.
    let mut guard = CredGuard {
        saved_caps: None,
        _not_send: std::marker::PhantomData,
    };
    set_groups(groups)?;
    // setfs[ug]id report failure only by not changing the id, hence the
    // read-back.
    // SAFETY: plain syscall wrappers.
    unsafe { libc::setfsgid(gid) };
    if current_fsgid() != gid {
        return Err(Errno::EPERM);
    }
    unsafe { libc::setfsuid(uid) };
    if current_fsuid() != uid {
        return Err(Errno::EPERM);
    }
    if uid != 0 {
        let caps = capget()?;
        let keep = (1u32 << CAP_SETUID) | (1u32 << CAP_SETGID);
        let mut narrowed = caps;
        narrowed[0].effective &= keep;
        narrowed[1].effective = 0;
        if narrowed != caps {
            capset(&narrowed)?;
            guard.saved_caps = Some(caps);
        }
    }
    Ok(guard)
}

impl Drop for CredGuard {
    fn drop(&mut self) {
        // Reverse order of become_caller. Failures here would leave the
        // thread with someone else's identity; they cannot happen while the
        // process keeps CAP_SETUID/CAP_SETGID (which become_caller needed
        // anyway), so they are only logged.
        if let Some(caps) = self.saved_caps.take() {
            if let Err(e) = capset(&caps) {
                tracing::error!("restoring capabilities failed: {e}");
            }
        }
        // SAFETY: plain syscall wrappers.
        unsafe { libc::setfsuid(0) };
        if current_fsuid() != 0 {
            tracing::error!("restoring fsuid 0 failed");
        }
        unsafe { libc::setfsgid(0) };
        if current_fsgid() != 0 {
            tracing::error!("restoring fsgid 0 failed");
        }
        if let Err(e) = set_groups(&[]) {
            tracing::error!("restoring supplementary groups failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails the test unless it runs as root (see the export's tests).
    fn require_root(why: &str) {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root ({why}); run it as root or skip it by name"
        );
    }

    fn thread_status(field: &str) -> String {
        let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        s.lines()
            .find(|l| l.starts_with(field))
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn switches_and_restores_this_thread_only() {
        require_root("changes this thread's fsuid, groups and capabilities");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (tx2, rx2) = std::sync::mpsc::channel::<String>();
        let other = std::thread::spawn(move || {
            rx.recv().unwrap();
            tx2.send(thread_status("Uid:")).unwrap();
        });
        {
            let _g = become_caller(1234, 5678, &[42, 43]).unwrap();
            assert_eq!(current_fsuid(), 1234);
            assert_eq!(current_fsgid(), 5678);
            let groups = thread_status("Groups:");
            assert!(groups.contains("42") && groups.contains("43"), "{groups}");
            let eff = thread_status("CapEff:");
            assert!(eff.ends_with("00000000000000c0"), "{eff}");
            tx.send(()).unwrap();
            // Another thread keeps fsuid 0 (4th field of Uid:).
            let uid_line = rx2.recv().unwrap();
            assert_eq!(uid_line.split_whitespace().nth(4), Some("0"), "{uid_line}");
        }
        other.join().unwrap();
        assert_eq!(current_fsuid(), 0);
        assert_eq!(current_fsgid(), 0);
        assert_eq!(thread_status("Groups:").trim(), "Groups:");
        let eff = thread_status("CapEff:");
        let prm = thread_status("CapPrm:");
        assert_eq!(eff.split_whitespace().nth(1), prm.split_whitespace().nth(1));
    }

    #[test]
    fn root_keeps_capabilities() {
        require_root("needs capabilities to keep");
        let before = thread_status("CapEff:");
        let g = become_caller(0, 0, &[]).unwrap();
        assert_eq!(thread_status("CapEff:"), before);
        drop(g);
    }

    #[test]
    fn invalid_id_is_refused_and_restored() {
        require_root("only root may try to change its fsuid");
        assert_eq!(become_caller(u32::MAX, 0, &[]).unwrap_err(), Errno::EPERM);
        assert_eq!(current_fsuid(), 0);
        assert_eq!(current_fsgid(), 0);
    }
}
