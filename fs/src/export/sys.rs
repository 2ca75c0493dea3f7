//! Thin wrappers over the syscalls the export makes: each turns the C
//! convention (-1 and errno) into `Res`, and none resolves more than one
//! path component.
use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::Res;

// The plain libc calls take off_t; make sure it is 64-bit.
const _: () = assert!(std::mem::size_of::<libc::off_t>() == 8);

/// faccessat2's flag to check with the thread's fs credentials.
pub(super) const AT_EACCESS: libc::c_int = 0x200;

pub(super) fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

pub(super) fn io_errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

pub(super) fn cvt(r: libc::c_int) -> Res<libc::c_int> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r)
    }
}

pub(super) fn cvt_long(r: libc::c_long) -> Res<libc::c_long> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r)
    }
}

pub(super) fn cvt_size(r: libc::ssize_t) -> Res<usize> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r as usize)
    }
}

/// Retries a syscall interrupted by a signal.
pub(super) fn retry<T>(mut f: impl FnMut() -> Res<T>) -> Res<T> {
    loop {
        match f() {
            Err(libc::EINTR) => continue,
            r => return r,
        }
    }
}

/// One path component from the wire.
pub(super) fn component(name: &[u8]) -> Res<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(libc::EINVAL);
    }
    CString::new(name).map_err(|_| libc::EINVAL)
}

pub(super) fn cstring(bytes: &[u8]) -> Res<CString> {
    CString::new(bytes).map_err(|_| libc::EINVAL)
}

/// The name of `fd` inside `/proc/self/fd`.
pub(super) fn fd_name(fd: RawFd) -> Res<CString> {
    cstring(fd.to_string().as_bytes())
}

/// Absolute magic-link path for calls that take no directory fd (xattrs).
pub(super) fn fd_path(fd: RawFd) -> Res<CString> {
    cstring(format!("/proc/self/fd/{fd}").as_bytes())
}

pub(super) fn fstat(fd: RawFd) -> Res<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: valid C string and out-pointer.
    cvt(unsafe {
        libc::fstatat(
            fd,
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded and filled it in (and it was zeroed anyway).
    Ok(unsafe { st.assume_init() })
}

/// stat of `name` in `dirfd`, not following a symlink.
pub(super) fn fstatat(dirfd: RawFd, name: &CStr) -> Res<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: valid C string and out-pointer.
    cvt(unsafe {
        libc::fstatat(
            dirfd,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded.
    Ok(unsafe { st.assume_init() })
}

pub(super) fn fstatfs(fd: RawFd) -> Res<libc::statfs> {
    let mut st = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: valid out-pointer.
    cvt(unsafe { libc::fstatfs(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded.
    Ok(unsafe { st.assume_init() })
}

pub(super) fn openat(dirfd: RawFd, name: &CStr, flags: i32, mode: libc::mode_t) -> Res<OwnedFd> {
    // SAFETY: valid C string; the returned fd is new and owned by us.
    let fd = retry(|| cvt(unsafe { libc::openat(dirfd, name.as_ptr(), flags, mode) }))?;
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An offset or length from the wire as the kernel's signed type.
pub(super) fn to_off_t(off: u64) -> Res<libc::off_t> {
    libc::off_t::try_from(off).map_err(|_| libc::EINVAL)
}

/// `MAX_HANDLE_SZ`: the largest file handle the kernel gives out.
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for any handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// A kernel file handle: names an inode for as long as it exists, without
/// holding a descriptor (what NFS servers give their clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KernelHandle {
    pub handle_type: i32,
    pub bytes: Box<[u8]>,
}

/// The file handle of the file behind `fd` (any kind of fd, O_PATH
/// included), and the id of the mount it was reached through.
pub(super) fn name_to_handle(fd: RawFd) -> Res<(KernelHandle, i32)> {
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as libc::c_uint,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: raw has room for MAX_HANDLE_SZ bytes as its header says; the
    // empty path with AT_EMPTY_PATH names fd itself.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd,
            c"".as_ptr(),
            &mut raw as *mut RawHandle,
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        ) as libc::c_int
    })?;
    let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((
        KernelHandle {
            handle_type: raw.handle_type,
            bytes: raw.f_handle[..len].into(),
        },
        mount_id,
    ))
}

/// Opens the file `h` names as an O_PATH descriptor, `mount_fd` being any
/// descriptor on its mount. Needs CAP_DAC_READ_SEARCH in the thread's
/// effective set, which a thread acting for a non-root caller has dropped:
/// it is raised for this one call and dropped again.
pub(super) fn open_by_handle(mount_fd: RawFd, h: &KernelHandle) -> Res<OwnedFd> {
    let mut raw = RawHandle {
        handle_bytes: h.bytes.len() as libc::c_uint,
        handle_type: h.handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    let open = || {
        // SAFETY: raw is a valid file_handle; the fd returned is new.
        retry(|| {
            cvt(unsafe {
                libc::syscall(
                    libc::SYS_open_by_handle_at,
                    mount_fd,
                    &raw as *const RawHandle,
                    libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                ) as libc::c_int
            })
        })
    };
    let fd = match open() {
        Err(libc::EPERM) => with_cap(CAP_DAC_READ_SEARCH, open)?,
        r => r?,
    };
    // SAFETY: fd was just returned by open_by_handle_at.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) const CAP_DAC_READ_SEARCH: u32 = 2;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Runs `f` with capability `cap` (below 32) raised in this thread's
/// effective set, if it is permitted, then puts the set back as it was.
pub(super) fn with_cap<T>(cap: u32, f: impl FnOnce() -> Res<T>) -> Res<T> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut saved = [CapData::default(); 2];
    // SAFETY: hdr and saved are what the v3 ABI expects.
    cvt(unsafe { libc::syscall(libc::SYS_capget, &mut hdr, saved.as_mut_ptr()) as libc::c_int })?;
    let bit = 1u32 << cap;
    if saved[0].effective & bit != 0 || saved[0].permitted & bit == 0 {
        return f();
    }
    let mut raised = saved;
    raised[0].effective |= bit;
    // SAFETY: as above; capset only reads the data.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &mut hdr, raised.as_ptr()) as libc::c_int })?;
    let r = f();
    // SAFETY: as above. Dropping a bit we raised cannot fail.
    let back = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, saved.as_ptr()) };
    if back != 0 {
        tracing::error!(
            "dropping CAP_DAC_READ_SEARCH again failed: {}",
            last_errno()
        );
    }
    r
}

/// A plain (not O_PATH) read-only descriptor of directory `fd`, which
/// `open_by_handle_at` needs to name a mount; through the magic link, with
/// CAP_DAC_READ_SEARCH if the thread's caller could not read it.
pub(super) fn open_dir_again(fd: RawFd) -> Res<OwnedFd> {
    let path = fd_path(fd)?;
    let open = || {
        openat(
            libc::AT_FDCWD,
            &path,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
        )
    };
    match open() {
        Err(libc::EACCES | libc::EPERM) => with_cap(CAP_DAC_READ_SEARCH, open),
        r => r,
    }
}
