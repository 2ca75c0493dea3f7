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
