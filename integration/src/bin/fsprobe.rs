//! Makes single syscalls that shell tools on Debian 12 cannot (renameat2
//! flags, xattrs) and prints the outcome, for the end-to-end tests.
//!
//!   fsprobe rename2 FROM TO noreplace|exchange
//!   fsprobe setxattr PATH NAME VALUE | getxattr PATH NAME | listxattr PATH | removexattr PATH NAME
//!   fsprobe stat PATH          -> "ino nlink mode uid gid size"
//!   fsprobe open PATH rdonly|wronly|rdwr
//!   fsprobe lock PATH wr|rd try|wait|hold [SECONDS]   (fcntl F_SETLK/F_SETLKW)
//!   fsprobe getlk PATH        -> unlocked | read-locked | write-locked
//! Prints "ok"/the value on success; "error ERRNO_NAME" and exit 1 on failure.
use std::ffi::CString;

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL in arguments")
}

fn fail() -> ! {
    let e = std::io::Error::last_os_error();
    let name = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0));
    println!("error {name:?}");
    std::process::exit(1);
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        a.get(i).map(String::as_str).unwrap_or_else(|| {
            eprintln!("missing argument {i}");
            std::process::exit(2)
        })
    };
    // SAFETY: plain syscalls on NUL-terminated strings and local buffers.
    unsafe {
        match arg(0) {
            "rename2" => {
                let flags = match arg(3) {
                    "noreplace" => libc::RENAME_NOREPLACE,
                    "exchange" => libc::RENAME_EXCHANGE,
                    _ => 0,
                };
                let (f, t) = (c(arg(1)), c(arg(2)));
                if libc::renameat2(
                    libc::AT_FDCWD,
                    f.as_ptr(),
                    libc::AT_FDCWD,
                    t.as_ptr(),
                    flags,
                ) != 0
                {
                    fail()
                }
                println!("ok");
            }
            "setxattr" => {
                let (p, n, v) = (c(arg(1)), c(arg(2)), arg(3));
                if libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) != 0 {
                    fail()
                }
                println!("ok");
            }
            "getxattr" => {
                let (p, n) = (c(arg(1)), c(arg(2)));
                let mut buf = vec![0u8; 65536];
                let r = libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
                if r < 0 {
                    fail()
                }
                println!("{}", String::from_utf8_lossy(&buf[..r as usize]));
            }
            "listxattr" => {
                let p = c(arg(1));
                let mut buf = vec![0u8; 65536];
                let r = libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
                if r < 0 {
                    fail()
                }
                for name in buf[..r as usize]
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                {
                    println!("{}", String::from_utf8_lossy(name));
                }
            }
            "removexattr" => {
                let (p, n) = (c(arg(1)), c(arg(2)));
                if libc::removexattr(p.as_ptr(), n.as_ptr()) != 0 {
                    fail()
                }
                println!("ok");
            }
            "open" => {
                let flags = match arg(2) {
                    "rdonly" => libc::O_RDONLY,
                    "wronly" => libc::O_WRONLY,
                    _ => libc::O_RDWR,
                };
                let p = c(arg(1));
                let fd = libc::open(p.as_ptr(), flags);
                if fd < 0 {
                    fail()
                }
                libc::close(fd);
                println!("ok");
            }
            "lock" => {
                // fsprobe lock PATH wr|rd try|wait|hold [SECONDS]
                let p = c(arg(1));
                let fd = libc::open(p.as_ptr(), libc::O_RDWR);
                if fd < 0 {
                    fail()
                }
                let mut fl: libc::flock = std::mem::zeroed();
                fl.l_type = if arg(2) == "rd" {
                    libc::F_RDLCK
                } else {
                    libc::F_WRLCK
                } as libc::c_short;
                fl.l_whence = libc::SEEK_SET as libc::c_short;
                let start = std::time::Instant::now();
                let cmd = if arg(3) == "wait" {
                    libc::F_SETLKW
                } else {
                    libc::F_SETLK
                };
                if libc::fcntl(fd, cmd, &mut fl) != 0 {
                    fail()
                }
                match arg(3) {
                    "hold" => {
                        println!("locked");
                        use std::io::Write;
                        let _ = std::io::stdout().flush();
                        let secs: u64 = arg(4).parse().unwrap_or(1);
                        std::thread::sleep(std::time::Duration::from_secs(secs));
                    }
                    "wait" => println!("ok after {} ms", start.elapsed().as_millis()),
                    _ => println!("ok"),
                }
            }
            "getlk" => {
                let p = c(arg(1));
                let fd = libc::open(p.as_ptr(), libc::O_RDWR);
                if fd < 0 {
                    fail()
                }
                let mut fl: libc::flock = std::mem::zeroed();
                fl.l_type = libc::F_WRLCK as libc::c_short;
                fl.l_whence = libc::SEEK_SET as libc::c_short;
                if libc::fcntl(fd, libc::F_GETLK, &mut fl) != 0 {
                    fail()
                }
                println!(
                    "{}",
                    match fl.l_type as i32 {
                        libc::F_UNLCK => "unlocked",
                        libc::F_RDLCK => "read-locked",
                        _ => "write-locked",
                    }
                );
            }
            "stat" => {
                let p = c(arg(1));
                let mut st: libc::stat = std::mem::zeroed();
                if libc::lstat(p.as_ptr(), &mut st) != 0 {
                    fail()
                }
                println!(
                    "{} {} {:o} {} {} {}",
                    st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_gid, st.st_size
                );
            }
            other => {
                eprintln!("unknown command {other}");
                std::process::exit(2);
            }
        }
    }
}
