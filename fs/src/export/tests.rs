//! The export end to end, through the wire's requests as clients send them.
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use mosix_proto::fs::{
    Attr, Creds, DirEntry, FileKind, FsReply, FsRequest, FsResult, RemoteFh, RemoteIno, SetAttr,
    SetTime, StatFs, Timespec, ROOT_INO,
};

use super::sys::last_errno;
use super::testutil::*;
use super::{Export, NOBODY};
use crate::service::Who;

const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Export>();
};

fn entry(r: FsResult) -> Attr {
    match r {
        Ok(FsReply::Entry(a)) | Ok(FsReply::Attr(a)) => a,
        other => panic!("expected an entry, got {other:?}"),
    }
}

fn lookup(e: &Export, c: &Who, parent: RemoteIno, name: &str) -> FsResult {
    e.handle(
        c,
        FsRequest::Lookup {
            parent,
            name: name.as_bytes().to_vec(),
        },
    )
}

fn fh(r: FsResult) -> RemoteFh {
    match r {
        Ok(FsReply::Opened { fh }) => fh,
        other => panic!("expected a handle, got {other:?}"),
    }
}

fn create(e: &Export, c: &Who, parent: RemoteIno, name: &str, mode: u32) -> FsResult {
    e.handle(
        c,
        FsRequest::Create {
            parent,
            name: name.as_bytes().to_vec(),
            mode,
            umask: 0o022,
            flags: libc::O_RDWR,
        },
    )
}

fn created(r: FsResult) -> (Attr, RemoteFh) {
    match r {
        Ok(FsReply::Created { attr, fh }) => (attr, fh),
        other => panic!("expected Created, got {other:?}"),
    }
}

fn data(r: FsResult) -> Vec<u8> {
    match r {
        Ok(FsReply::Data(d)) => d,
        other => panic!("expected data, got {other:?}"),
    }
}

fn read_all_dir(e: &Export, c: &Who, ino: RemoteIno, size: u32) -> Vec<DirEntry> {
    let dfh = fh(e.handle(c, FsRequest::OpenDir { ino }));
    let mut all = Vec::new();
    let mut offset = 0;
    let mut calls = 0;
    loop {
        let r = e.handle(
            c,
            FsRequest::ReadDir {
                fh: dfh,
                offset,
                size,
            },
        );
        let Ok(FsReply::Entries(batch)) = r else {
            panic!("readdir: {r:?}");
        };
        if batch.is_empty() {
            break;
        }
        calls += 1;
        assert!(calls < 10_000);
        offset = batch.last().unwrap().next_offset;
        all.extend(batch);
    }
    assert_eq!(
        e.handle(c, FsRequest::ReleaseDir { fh: dfh }),
        Ok(FsReply::Ok)
    );
    all
}

#[test]
fn lookup_getattr_readdir_with_cookies() {
    let (dir, e) = setup();
    let d = dir.path().join("d");
    std::fs::create_dir(&d).unwrap();
    for i in 0..200 {
        std::fs::write(d.join(format!("file-{i:03}")), b"x").unwrap();
    }
    std::fs::create_dir(d.join("sub")).unwrap();
    let a = entry(lookup(&e, &root(), ROOT_INO, "d"));
    assert_eq!(a.kind, FileKind::Dir);
    assert_ne!(a.ino, ROOT_INO);
    let meta = std::fs::metadata(&d).unwrap();
    assert_eq!((a.dev, a.st_ino), (meta.dev(), meta.ino()));
    let g = entry(e.handle(&root(), FsRequest::GetAttr { ino: a.ino }));
    assert_eq!(g.st_ino, a.st_ino);
    assert_eq!(g.ino, a.ino);
    let root_attr = entry(e.handle(&root(), FsRequest::GetAttr { ino: ROOT_INO }));
    assert_eq!(root_attr.ino, ROOT_INO);
    assert_eq!(root_attr.kind, FileKind::Dir);

    // Small replies force many calls, each resuming from a cookie.
    let all = read_all_dir(&e, &root(), a.ino, 300);
    let mut names: Vec<String> = all
        .iter()
        .map(|d| String::from_utf8(d.name.clone()).unwrap())
        .collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "duplicates across readdir calls");
    assert_eq!(n, 203);
    assert!(names.contains(&".".to_string()) && names.contains(&"..".to_string()));
    let sub = all.iter().find(|d| d.name == b"sub").unwrap();
    assert_eq!(sub.kind, FileKind::Dir);
    let f = all.iter().find(|d| d.name == b"file-007").unwrap();
    assert_eq!(f.kind, FileKind::File);
    assert_eq!(f.ino, entry(lookup(&e, &root(), a.ino, "file-007")).ino);

    // Resuming from a cookie in the middle gives exactly the rest.
    let dfh = fh(e.handle(&root(), FsRequest::OpenDir { ino: a.ino }));
    let cookie = all[99].next_offset;
    let mut rest = Vec::new();
    let mut offset = cookie;
    loop {
        let Ok(FsReply::Entries(b)) = e.handle(
            &root(),
            FsRequest::ReadDir {
                fh: dfh,
                offset,
                size: 4096,
            },
        ) else {
            panic!()
        };
        if b.is_empty() {
            break;
        }
        offset = b.last().unwrap().next_offset;
        rest.extend(b.into_iter().map(|d| d.name));
    }
    let expect: Vec<Vec<u8>> = all[100..].iter().map(|d| d.name.clone()).collect();
    assert_eq!(rest, expect);
    // Reading from 0 again restarts.
    let Ok(FsReply::Entries(again)) = e.handle(
        &root(),
        FsRequest::ReadDir {
            fh: dfh,
            offset: 0,
            size: 1,
        },
    ) else {
        panic!()
    };
    assert_eq!(again.len(), 1, "a tiny size still makes progress");
    assert_eq!(again[0].name, all[0].name);
    e.handle(&root(), FsRequest::ReleaseDir { fh: dfh })
        .unwrap();
    assert_eq!(
        e.handle(&root(), FsRequest::ReleaseDir { fh: dfh }),
        Err(libc::EBADF)
    );
}

#[test]
fn create_write_read_truncate() {
    let (dir, e) = setup();
    let (attr, h) = created(create(&e, &root(), ROOT_INO, "f", 0o666));
    assert_eq!(attr.kind, FileKind::File);
    assert_eq!(attr.perm, 0o644, "caller's umask applied");
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Write {
                fh: h,
                offset: 0,
                data: b"hello world".to_vec(),
            },
        ),
        Ok(FsReply::Written(11))
    );
    let got = data(e.handle(
        &root(),
        FsRequest::Read {
            fh: h,
            offset: 6,
            size: 100,
        },
    ));
    assert_eq!(got, b"world");
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello world");
    // Truncate through the handle, then without one.
    let a = entry(e.handle(
        &root(),
        FsRequest::SetAttr {
            ino: attr.ino,
            set: SetAttr {
                size: Some(5),
                fh: Some(h),
                ..Default::default()
            },
        },
    ));
    assert_eq!(a.size, 5);
    let a = entry(e.handle(
        &root(),
        FsRequest::SetAttr {
            ino: attr.ino,
            set: SetAttr {
                size: Some(2),
                ..Default::default()
            },
        },
    ));
    assert_eq!(a.size, 2);
    let got = data(e.handle(
        &root(),
        FsRequest::Read {
            fh: h,
            offset: 0,
            size: 100,
        },
    ));
    assert_eq!(got, b"he");
    assert_eq!(
        e.handle(&root(), FsRequest::Flush { fh: h }),
        Ok(FsReply::Ok)
    );
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Fsync {
                fh: h,
                datasync: true
            }
        ),
        Ok(FsReply::Ok)
    );
    assert_eq!(
        e.handle(&root(), FsRequest::Release { fh: h }),
        Ok(FsReply::Ok)
    );
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Read {
                fh: h,
                offset: 0,
                size: 1
            }
        ),
        Err(libc::EBADF)
    );
    // Create of an existing name: O_EXCL fails, without it opens.
    let r = e.handle(
        &root(),
        FsRequest::Create {
            parent: ROOT_INO,
            name: b"f".to_vec(),
            mode: 0o600,
            umask: 0,
            flags: libc::O_RDWR | libc::O_EXCL,
        },
    );
    assert_eq!(r, Err(libc::EEXIST));
    let (a2, h2) = created(create(&e, &root(), ROOT_INO, "f", 0o600));
    assert_eq!(a2.ino, attr.ino);
    assert_eq!(a2.perm, 0o644, "existing file's mode kept");
    e.handle(&root(), FsRequest::Release { fh: h2 }).unwrap();
    // Open + open_file.
    let h3 = fh(e.handle(
        &root(),
        FsRequest::Open {
            ino: attr.ino,
            flags: libc::O_RDONLY | libc::O_CREAT | libc::O_NOCTTY,
        },
    ));
    assert_eq!(
        data(e.handle(
            &root(),
            FsRequest::Read {
                fh: h3,
                offset: 0,
                size: 10
            }
        )),
        b"he"
    );
    let mut f = e.open_file(&root(), attr.ino, libc::O_RDONLY).unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(&mut f, &mut s).unwrap();
    assert_eq!(s, "he");
    // Explicit times and "now".
    let a = entry(e.handle(
        &root(),
        FsRequest::SetAttr {
            ino: attr.ino,
            set: SetAttr {
                atime: Some(SetTime::At(Timespec {
                    secs: 1_000_000,
                    nsecs: 5,
                })),
                mtime: Some(SetTime::At(Timespec {
                    secs: 2_000_000,
                    nsecs: 7,
                })),
                ..Default::default()
            },
        },
    ));
    assert_eq!(
        a.atime,
        Timespec {
            secs: 1_000_000,
            nsecs: 5
        }
    );
    assert_eq!(
        a.mtime,
        Timespec {
            secs: 2_000_000,
            nsecs: 7
        }
    );
    let a = entry(e.handle(
        &root(),
        FsRequest::SetAttr {
            ino: attr.ino,
            set: SetAttr {
                mtime: Some(SetTime::Now),
                mode: Some(0o4711),
                uid: Some(123),
                gid: Some(456),
                ..Default::default()
            },
        },
    ));
    assert!(a.mtime.secs > 2_000_000);
    assert_eq!(
        a.atime,
        Timespec {
            secs: 1_000_000,
            nsecs: 5
        },
        "omitted"
    );
    assert_eq!((a.uid, a.gid, a.perm), (123, 456, 0o4711));
}

#[test]
fn hard_link_shares_id() {
    let (_dir, e) = setup();
    let (a, h) = created(create(&e, &root(), ROOT_INO, "a", 0o644));
    e.handle(&root(), FsRequest::Release { fh: h }).unwrap();
    let l = entry(e.handle(
        &root(),
        FsRequest::Link {
            ino: a.ino,
            new_parent: ROOT_INO,
            new_name: b"b".to_vec(),
        },
    ));
    assert_eq!(l.ino, a.ino);
    assert_eq!(l.nlink, 2);
    assert_eq!(entry(lookup(&e, &root(), ROOT_INO, "b")).ino, a.ino);
}

#[test]
fn rename_noreplace_and_exchange() {
    let (dir, e) = setup();
    std::fs::write(dir.path().join("a"), b"A").unwrap();
    std::fs::write(dir.path().join("b"), b"B").unwrap();
    let rename = |from: &str, to: &str, flags: u32| {
        e.handle(
            &root(),
            FsRequest::Rename {
                parent: ROOT_INO,
                name: from.as_bytes().to_vec(),
                new_parent: ROOT_INO,
                new_name: to.as_bytes().to_vec(),
                flags,
            },
        )
    };
    assert_eq!(rename("a", "b", libc::RENAME_NOREPLACE), Err(libc::EEXIST));
    assert_eq!(rename("a", "b", libc::RENAME_EXCHANGE), Ok(FsReply::Ok));
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"B");
    assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"A");
    assert_eq!(rename("a", "c", 0), Ok(FsReply::Ok));
    assert_eq!(std::fs::read(dir.path().join("c")).unwrap(), b"B");
    assert_eq!(rename("a", "d", 0), Err(libc::ENOENT));
    assert_eq!(rename("c", "..", 0), Err(libc::EINVAL));
}

#[test]
fn symlinks_never_lead_outside() {
    let (dir, e) = setup();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"outside content").unwrap();
    std::os::unix::fs::symlink(&secret, dir.path().join("esc")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("escdir")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
    std::os::unix::fs::symlink("../..", dir.path().join("up")).unwrap();

    let secret_mode = std::fs::metadata(&secret).unwrap().mode();
    let l = entry(lookup(&e, &root(), ROOT_INO, "esc"));
    assert_eq!(l.kind, FileKind::Symlink);
    let lmeta = std::fs::symlink_metadata(dir.path().join("esc")).unwrap();
    assert_eq!(l.st_ino, lmeta.ino());
    assert_eq!(
        data(e.handle(&root(), FsRequest::ReadLink { ino: l.ino })),
        secret.as_os_str().as_bytes()
    );
    // Not openable, not truncatable, not chmod-able through the link.
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Open {
                ino: l.ino,
                flags: libc::O_RDWR | libc::O_TRUNC
            }
        ),
        Err(libc::ELOOP)
    );
    assert!(e.open_file(&root(), l.ino, libc::O_RDONLY).is_err());
    assert!(e
        .handle(
            &root(),
            FsRequest::SetAttr {
                ino: l.ino,
                set: SetAttr {
                    size: Some(0),
                    ..Default::default()
                }
            }
        )
        .is_err());
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::SetAttr {
                ino: l.ino,
                set: SetAttr {
                    mode: Some(0o777),
                    ..Default::default()
                }
            }
        ),
        Err(libc::EOPNOTSUPP)
    );
    // Xattrs of the link are the link's own.
    let xattrs = xattr_supported(outside.path());
    if xattrs {
        xattr_set(&secret, "user.mark", b"target");
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::GetXattr {
                    ino: l.ino,
                    name: b"user.mark".to_vec(),
                    size: 64
                }
            ),
            Err(libc::ENODATA)
        );
    }
    // Chown of the link changes the link, not the target.
    entry(e.handle(
        &root(),
        FsRequest::SetAttr {
            ino: l.ino,
            set: SetAttr {
                uid: Some(4242),
                ..Default::default()
            },
        },
    ));
    assert_eq!(std::fs::metadata(&secret).unwrap().uid(), 0);
    let m = std::fs::metadata(&secret).unwrap();
    assert_eq!(m.len(), 15);
    assert_eq!(m.mode(), secret_mode);
    assert_eq!(std::fs::read(&secret).unwrap(), b"outside content");

    // A symlink as a parent does not resolve.
    for (link, name) in [("escdir", "secret"), ("etc", "passwd"), ("up", "etc")] {
        let l = entry(lookup(&e, &root(), ROOT_INO, link));
        assert_eq!(l.kind, FileKind::Symlink);
        let r = lookup(&e, &root(), l.ino, name);
        assert!(
            matches!(r, Err(libc::ENOTDIR) | Err(libc::ESTALE)),
            "{link}/{name}: {r:?}"
        );
        assert!(matches!(
            e.handle(&root(), FsRequest::OpenDir { ino: l.ino }),
            Err(libc::ENOTDIR)
        ));
    }
    // Multi-component and dot names are refused outright.
    for name in [
        "x/../..",
        "..",
        ".",
        "",
        "etc/passwd",
        "/etc",
        "esc/",
        "a\0b",
    ] {
        assert_eq!(
            lookup(&e, &root(), ROOT_INO, name),
            Err(libc::EINVAL),
            "{name:?}"
        );
    }
    // Creating through a symlinked directory cannot escape either.
    let etc = entry(lookup(&e, &root(), ROOT_INO, "escdir"));
    assert!(create(&e, &root(), etc.ino, "planted", 0o644).is_err());
    assert!(!outside.path().join("planted").exists());
    // Creating over a dangling symlink does not follow it.
    std::os::unix::fs::symlink(outside.path().join("new"), dir.path().join("dangling")).unwrap();
    assert!(create(&e, &root(), ROOT_INO, "dangling", 0o644).is_err());
    assert!(!outside.path().join("new").exists());
}

#[test]
fn nobody_gets_the_kernels_permission_checks() {
    require_root("runs operations as uid 65534");
    let (dir, e) = setup();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"s").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = entry(lookup(&e, &nobody(), ROOT_INO, "secret"));
    assert_eq!(
        e.handle(
            &nobody(),
            FsRequest::Open {
                ino: s.ino,
                flags: libc::O_RDONLY
            }
        ),
        Err(libc::EACCES)
    );
    assert_eq!(
        e.open_file(&nobody(), s.ino, libc::O_RDONLY).unwrap_err(),
        libc::EACCES
    );
    assert_eq!(
        e.handle(
            &nobody(),
            FsRequest::Access {
                ino: s.ino,
                mask: libc::R_OK
            }
        ),
        Err(libc::EACCES)
    );
    assert_eq!(
        e.handle(
            &nobody(),
            FsRequest::Access {
                ino: s.ino,
                mask: libc::F_OK
            }
        ),
        Ok(FsReply::Ok)
    );
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Access {
                ino: s.ino,
                mask: libc::R_OK | libc::W_OK
            }
        ),
        Ok(FsReply::Ok)
    );
    assert_eq!(
        create(&e, &nobody(), ROOT_INO, "new", 0o644),
        Err(libc::EACCES)
    );
    assert_eq!(
        e.handle(
            &nobody(),
            FsRequest::Mkdir {
                parent: ROOT_INO,
                name: b"d".to_vec(),
                mode: 0o755,
                umask: 0
            }
        ),
        Err(libc::EACCES)
    );
    // Truncate without a handle checks write permission.
    assert_eq!(
        e.handle(
            &nobody(),
            FsRequest::SetAttr {
                ino: s.ino,
                set: SetAttr {
                    size: Some(0),
                    ..Default::default()
                }
            }
        ),
        Err(libc::EACCES)
    );
    // Chown and chmod of someone else's file.
    for set in [
        SetAttr {
            uid: Some(NOBODY),
            ..Default::default()
        },
        SetAttr {
            mode: Some(0o777),
            ..Default::default()
        },
        SetAttr {
            mtime: Some(SetTime::At(Timespec { secs: 5, nsecs: 0 })),
            ..Default::default()
        },
    ] {
        assert_eq!(
            e.handle(&nobody(), FsRequest::SetAttr { ino: s.ino, set }),
            Err(libc::EPERM)
        );
    }
    // Privileged xattr namespaces are refused for non-root callers, even
    // on their own file.
    let pubdir = dir.path().join("pub");
    std::fs::create_dir(&pubdir).unwrap();
    std::fs::set_permissions(&pubdir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let p = entry(lookup(&e, &nobody(), ROOT_INO, "pub"));
    let (mine, h) = created(create(&e, &nobody(), p.ino, "mine", 0o644));
    assert_eq!((mine.uid, mine.gid), (NOBODY, NOBODY));
    e.handle(&nobody(), FsRequest::Release { fh: h }).unwrap();
    for name in ["trusted.x", "security.capability"] {
        let r = e.handle(
            &nobody(),
            FsRequest::SetXattr {
                ino: mine.ino,
                name: name.as_bytes().to_vec(),
                value: vec![1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                flags: 0,
            },
        );
        assert!(
            matches!(r, Err(libc::EPERM) | Err(libc::EINVAL)),
            "{name}: {r:?}"
        );
    }
    // ...and the thread is root again afterwards.
    assert_eq!(std::fs::read(&secret).unwrap(), b"s");
}

#[test]
fn concurrent_callers_keep_their_own_identity() {
    require_root("switches threads to uid 65534");
    let (dir, e) = setup();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"s").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = entry(lookup(&e, &root(), ROOT_INO, "secret")).ino;
    std::thread::scope(|scope| {
        for t in 0..8 {
            let e = &e;
            scope.spawn(move || {
                let (c, want) = if t % 2 == 0 {
                    (root(), Ok(FsReply::Ok))
                } else {
                    (nobody(), Err(libc::EACCES))
                };
                for _ in 0..300 {
                    let r = e.handle(
                        &c,
                        FsRequest::Access {
                            ino: s,
                            mask: libc::R_OK,
                        },
                    );
                    assert_eq!(r, want);
                }
            });
        }
    });
}

#[test]
fn root_squash_makes_root_nobody() {
    require_root("switches threads to uid 65534 and creates files as uid 1000");
    let (dir, e) = setup_with(|_, cfg| cfg.root_squash = true);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"s").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = entry(lookup(&e, &root(), ROOT_INO, "secret"));
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Open {
                ino: s.ino,
                flags: libc::O_RDONLY
            }
        ),
        Err(libc::EACCES)
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (a, _) = created(create(&e, &root(), ROOT_INO, "made", 0o644));
    assert_eq!((a.uid, a.gid), (NOBODY, NOBODY));
    // Non-root callers are untouched.
    let c = who(Creds {
        uid: 1000,
        gid: 1000,
        groups: vec![],
        pid: 3,
    });
    let (a, _) = created(create(&e, &c, ROOT_INO, "made2", 0o644));
    assert_eq!((a.uid, a.gid), (1000, 1000));
}

#[test]
fn read_only_export() {
    let (dir, e) = setup_with(|_, cfg| cfg.read_only = true);
    std::fs::write(dir.path().join("f"), b"data").unwrap();
    let f = entry(lookup(&e, &root(), ROOT_INO, "f"));
    let ro = Err(libc::EROFS);
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(e.handle(&root(), FsRequest::Open { ino: f.ino, flags }), ro);
        assert_eq!(e.open_file(&root(), f.ino, flags).unwrap_err(), libc::EROFS);
    }
    let h = fh(e.handle(
        &root(),
        FsRequest::Open {
            ino: f.ino,
            flags: libc::O_RDONLY,
        },
    ));
    assert_eq!(
        data(e.handle(
            &root(),
            FsRequest::Read {
                fh: h,
                offset: 0,
                size: 10
            }
        )),
        b"data"
    );
    let n = || b"n".to_vec();
    let ops = vec![
        FsRequest::SetAttr {
            ino: f.ino,
            set: SetAttr::default(),
        },
        FsRequest::Mknod {
            parent: ROOT_INO,
            name: n(),
            mode: libc::S_IFREG | 0o644,
            rdev: 0,
            umask: 0,
        },
        FsRequest::Mkdir {
            parent: ROOT_INO,
            name: n(),
            mode: 0o755,
            umask: 0,
        },
        FsRequest::Unlink {
            parent: ROOT_INO,
            name: b"f".to_vec(),
        },
        FsRequest::Rmdir {
            parent: ROOT_INO,
            name: n(),
        },
        FsRequest::Symlink {
            parent: ROOT_INO,
            name: n(),
            target: n(),
        },
        FsRequest::Rename {
            parent: ROOT_INO,
            name: b"f".to_vec(),
            new_parent: ROOT_INO,
            new_name: n(),
            flags: 0,
        },
        FsRequest::Link {
            ino: f.ino,
            new_parent: ROOT_INO,
            new_name: n(),
        },
        FsRequest::Create {
            parent: ROOT_INO,
            name: n(),
            mode: 0o644,
            umask: 0,
            flags: libc::O_RDONLY,
        },
        FsRequest::Write {
            fh: h,
            offset: 0,
            data: n(),
        },
        FsRequest::SetXattr {
            ino: f.ino,
            name: b"user.x".to_vec(),
            value: n(),
            flags: 0,
        },
        FsRequest::RemoveXattr {
            ino: f.ino,
            name: b"user.x".to_vec(),
        },
        FsRequest::Fallocate {
            fh: h,
            offset: 0,
            length: 10,
            mode: 0,
        },
    ];
    for op in ops {
        assert_eq!(e.handle(&root(), op.clone()), ro, "{op:?}");
    }
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Access {
                ino: f.ino,
                mask: libc::W_OK
            }
        ),
        ro
    );
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"data");
    assert!(!dir.path().join("n").exists());
}

#[test]
fn hidden_paths_look_absent() {
    let (dir, e) = setup_with(|root, cfg| {
        std::fs::create_dir(root.join("hidden")).unwrap();
        std::fs::create_dir(root.join("shown")).unwrap();
        cfg.hide = vec![root.join("hidden"), root.join("shown/later")];
    });
    assert_eq!(lookup(&e, &root(), ROOT_INO, "hidden"), Err(libc::ENOENT));
    let names: Vec<Vec<u8>> = read_all_dir(&e, &root(), ROOT_INO, 4096)
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(names.contains(&b"shown".to_vec()));
    assert!(!names.contains(&b"hidden".to_vec()));
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Rmdir {
                parent: ROOT_INO,
                name: b"hidden".to_vec()
            }
        ),
        Err(libc::ENOENT)
    );
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Rename {
                parent: ROOT_INO,
                name: b"shown".to_vec(),
                new_parent: ROOT_INO,
                new_name: b"hidden".to_vec(),
                flags: 0
            }
        ),
        Err(libc::EACCES)
    );
    assert!(dir.path().join("hidden").is_dir());
    // A hide path that did not exist at open time is hidden once created.
    let shown = entry(lookup(&e, &root(), ROOT_INO, "shown"));
    std::fs::create_dir(dir.path().join("shown/later")).unwrap();
    assert_eq!(lookup(&e, &root(), shown.ino, "later"), Err(libc::ENOENT));
}

#[test]
fn procfs_mounts_are_never_served() {
    require_root("mounts procfs inside the export");
    let (dir, e) = setup();
    let procdir = dir.path().join("proc");
    std::fs::create_dir(&procdir).unwrap();
    nix::mount::mount(
        Some("proc"),
        &procdir,
        Some("proc"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mounting procfs (root without CAP_SYS_ADMIN?)");
    let r = lookup(&e, &root(), ROOT_INO, "proc");
    let _ = nix::mount::umount2(&procdir, nix::mount::MntFlags::MNT_DETACH);
    assert_eq!(r, Err(libc::ENOENT));
}

#[test]
fn forget_frees_the_inode_but_the_id_stays_the_files() {
    let (dir, e) = setup();
    std::fs::write(dir.path().join("f"), b"").unwrap();
    let a = entry(lookup(&e, &root(), ROOT_INO, "f"));
    assert_eq!(entry(lookup(&e, &root(), ROOT_INO, "f")).ino, a.ino);
    let forget = |n| {
        e.handle(
            &root(),
            FsRequest::Forget {
                items: vec![(a.ino, n), (ROOT_INO, 100), (999_999, 1)],
            },
        )
    };
    assert_eq!(forget(1), Ok(FsReply::Ok));
    assert_eq!(
        entry(e.handle(&root(), FsRequest::GetAttr { ino: a.ino })).ino,
        a.ino
    );
    assert_eq!(forget(1), Ok(FsReply::Ok));
    assert_eq!(
        e.handle(&root(), FsRequest::GetAttr { ino: a.ino }),
        Err(libc::ESTALE)
    );
    assert_eq!(lookup(&e, &root(), a.ino, "x"), Err(libc::ESTALE));
    // A file keeps its id for the life of the export.
    let b = entry(lookup(&e, &root(), ROOT_INO, "f"));
    assert_eq!(b.ino, a.ino);
    std::fs::write(dir.path().join("g"), b"").unwrap();
    assert!(entry(lookup(&e, &root(), ROOT_INO, "g")).ino > a.ino);
    // The root is never forgotten.
    assert!(e
        .handle(&root(), FsRequest::GetAttr { ino: ROOT_INO })
        .is_ok());
    assert_eq!(
        e.handle(&root(), FsRequest::GetAttr { ino: 0 }),
        Err(libc::ESTALE)
    );
}

#[test]
fn mknod_mkdir_symlink_unlink_rmdir() {
    let (dir, e) = setup();
    let fifo = entry(e.handle(
        &root(),
        FsRequest::Mknod {
            parent: ROOT_INO,
            name: b"fifo".to_vec(),
            mode: libc::S_IFIFO | 0o666,
            rdev: 0,
            umask: 0o022,
        },
    ));
    assert_eq!(fifo.kind, FileKind::Fifo);
    assert_eq!(fifo.perm, 0o644);
    // Opening it would block the server thread: refused instead.
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Open {
                ino: fifo.ino,
                flags: libc::O_RDONLY
            }
        ),
        Err(libc::ENXIO)
    );
    assert_eq!(
        create(&e, &root(), ROOT_INO, "fifo", 0o644),
        Err(libc::ENXIO)
    );
    let reg = entry(e.handle(
        &root(),
        FsRequest::Mknod {
            parent: ROOT_INO,
            name: b"reg".to_vec(),
            mode: 0o600,
            rdev: 0,
            umask: 0,
        },
    ));
    assert_eq!(reg.kind, FileKind::File);
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Mknod {
                parent: ROOT_INO,
                name: b"d".to_vec(),
                mode: libc::S_IFDIR | 0o755,
                rdev: 0,
                umask: 0
            }
        ),
        Err(libc::EINVAL)
    );
    let d = entry(e.handle(
        &root(),
        FsRequest::Mkdir {
            parent: ROOT_INO,
            name: b"d".to_vec(),
            mode: 0o1777,
            umask: 0o027,
        },
    ));
    assert_eq!((d.kind, d.perm), (FileKind::Dir, 0o1750));
    let s = entry(e.handle(
        &root(),
        FsRequest::Symlink {
            parent: d.ino,
            name: b"s".to_vec(),
            target: b"../../../etc/passwd".to_vec(),
        },
    ));
    assert_eq!(s.kind, FileKind::Symlink);
    assert_eq!(
        std::fs::read_link(dir.path().join("d/s")).unwrap(),
        Path::new("../../../etc/passwd")
    );
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Rmdir {
                parent: ROOT_INO,
                name: b"d".to_vec()
            }
        ),
        Err(libc::ENOTEMPTY)
    );
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Unlink {
                parent: d.ino,
                name: b"s".to_vec()
            }
        ),
        Ok(FsReply::Ok)
    );
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Rmdir {
                parent: ROOT_INO,
                name: b"d".to_vec()
            }
        ),
        Ok(FsReply::Ok)
    );
    assert!(!dir.path().join("d").exists());
    // The removed directory's id still answers (the fd pins it).
    assert!(e.handle(&root(), FsRequest::GetAttr { ino: d.ino }).is_ok());
    assert!(matches!(
        e.handle(&root(), FsRequest::StatFs { ino: ROOT_INO }),
        Ok(FsReply::StatFs(StatFs { bsize, namelen, .. })) if bsize > 0 && namelen > 0
    ));
}

fn xattr_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    std::fs::write(&probe, b"").unwrap();
    let p = CString::new(probe.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            c"user.probe".as_ptr(),
            c"".as_ptr().cast(),
            0,
            0,
        )
    };
    let ok = r == 0 || last_errno() != libc::EOPNOTSUPP;
    std::fs::remove_file(&probe).unwrap();
    ok
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn xattrs_on_a_file() {
    let (dir, e) = setup();
    if !xattr_supported(dir.path()) {
        eprintln!("note: user xattrs unsupported on the tempdir filesystem, skipping");
        return;
    }
    std::fs::write(dir.path().join("f"), b"").unwrap();
    let f = entry(lookup(&e, &root(), ROOT_INO, "f")).ino;
    let name = || b"user.test".to_vec();
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::SetXattr {
                ino: f,
                name: name(),
                value: b"value!".to_vec(),
                flags: 0
            }
        ),
        Ok(FsReply::Ok)
    );
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::SetXattr {
                ino: f,
                name: name(),
                value: b"v".to_vec(),
                flags: libc::XATTR_CREATE
            }
        ),
        Err(libc::EEXIST)
    );
    let get = |size| {
        e.handle(
            &root(),
            FsRequest::GetXattr {
                ino: f,
                name: name(),
                size,
            },
        )
    };
    assert_eq!(get(0), Ok(FsReply::XattrSize(6)));
    assert_eq!(get(3), Err(libc::ERANGE));
    assert_eq!(get(100), Ok(FsReply::Data(b"value!".to_vec())));
    let list = |size| e.handle(&root(), FsRequest::ListXattr { ino: f, size });
    let Ok(FsReply::XattrSize(n)) = list(0) else {
        panic!()
    };
    assert!(n >= 10);
    let l = data(list(n));
    assert!(l.split(|&b| b == 0).any(|n| n == b"user.test"), "{l:?}");
    assert_eq!(list(1), Err(libc::ERANGE));
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::RemoveXattr {
                ino: f,
                name: name()
            }
        ),
        Ok(FsReply::Ok)
    );
    assert_eq!(get(100), Err(libc::ENODATA));
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::RemoveXattr {
                ino: f,
                name: name()
            }
        ),
        Err(libc::ENODATA)
    );
    // Directories work the same way.
    let r = e.handle(
        &root(),
        FsRequest::SetXattr {
            ino: ROOT_INO,
            name: name(),
            value: b"d".to_vec(),
            flags: 0,
        },
    );
    assert_eq!(r, Ok(FsReply::Ok));
}

#[test]
fn fallocate_extends() {
    let (_dir, e) = setup();
    let (a, h) = created(create(&e, &root(), ROOT_INO, "f", 0o644));
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Fallocate {
                fh: h,
                offset: 0,
                length: 1 << 20,
                mode: 0
            }
        ),
        Ok(FsReply::Ok)
    );
    let g = entry(e.handle(&root(), FsRequest::GetAttr { ino: a.ino }));
    assert_eq!(g.size, 1 << 20);
    assert!(g.blocks >= 2048);
    assert_eq!(
        e.handle(
            &root(),
            FsRequest::Fallocate {
                fh: h,
                offset: u64::MAX,
                length: 1,
                mode: 0
            }
        ),
        Err(libc::EINVAL)
    );
}

/// xorshift64*, enough for junk.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self) -> Vec<u8> {
        // Half short names that often exist (".", "..", "a", "ab.")...
        if self.next() & 1 == 0 {
            let len = 1 + (self.next() % 3) as usize;
            return (0..len)
                .map(|_| b"ab."[(self.next() % 3) as usize])
                .collect();
        }
        // ...half junk.
        let len = (self.next() % 300) as usize;
        let alphabet = b"./\0a.b/..\xff~";
        (0..len)
            .map(|_| {
                let r = self.next();
                if r % 3 == 1 {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                } else {
                    (r >> 16) as u8
                }
            })
            .collect()
    }
}

#[test]
fn junk_never_panics_or_escapes() {
    let (dir, e) = setup();
    let parent = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let before: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let sub = entry(lookup(&e, &root(), ROOT_INO, "sub")).ino;
    let mut oks = 0;
    for i in 0..3000 {
        let name = rng.bytes();
        let ino = [ROOT_INO, sub, rng.next(), rng.next() % 16][i % 4];
        let fh = rng.next() % 8;
        let creds = if i % 3 == 0 { nobody() } else { root() };
        let ops = [
            FsRequest::Lookup {
                parent: ino,
                name: name.clone(),
            },
            FsRequest::Mknod {
                parent: ino,
                name: name.clone(),
                mode: rng.next() as u32,
                rdev: rng.next(),
                umask: 0,
            },
            FsRequest::Mkdir {
                parent: ino,
                name: name.clone(),
                mode: rng.next() as u32,
                umask: rng.next() as u32,
            },
            FsRequest::Symlink {
                parent: ino,
                name: name.clone(),
                target: rng.bytes(),
            },
            FsRequest::Create {
                parent: ino,
                name: name.clone(),
                mode: rng.next() as u32,
                umask: 0,
                flags: rng.next() as i32,
            },
            FsRequest::Open {
                ino,
                flags: rng.next() as i32,
            },
            FsRequest::Read {
                fh,
                offset: rng.next(),
                size: rng.next() as u32,
            },
            FsRequest::Write {
                fh,
                offset: rng.next() >> (rng.next() % 64),
                data: name.clone(),
            },
            FsRequest::ReadDir {
                fh,
                offset: rng.next() >> (rng.next() % 64),
                size: rng.next() as u32,
            },
            FsRequest::OpenDir { ino },
            FsRequest::GetXattr {
                ino,
                name: name.clone(),
                size: rng.next() as u32,
            },
            FsRequest::SetXattr {
                ino,
                name: name.clone(),
                value: rng.bytes(),
                flags: rng.next() as i32,
            },
            FsRequest::ListXattr {
                ino,
                size: rng.next() as u32,
            },
            FsRequest::SetAttr {
                ino,
                set: SetAttr {
                    size: Some(rng.next() >> (rng.next() % 64)),
                    atime: Some(SetTime::At(Timespec {
                        secs: rng.next() as i64,
                        nsecs: rng.next() as u32,
                    })),
                    ..Default::default()
                },
            },
            FsRequest::Rename {
                parent: ino,
                name: name.clone(),
                new_parent: ROOT_INO,
                new_name: rng.bytes(),
                flags: rng.next() as u32,
            },
            FsRequest::Unlink {
                parent: ino,
                name: name.clone(),
            },
            FsRequest::Access {
                ino,
                mask: rng.next() as i32,
            },
            FsRequest::Fallocate {
                fh,
                offset: rng.next(),
                length: rng.next(),
                mode: rng.next() as i32,
            },
            FsRequest::ReadLink { ino },
            FsRequest::Forget {
                items: vec![(rng.next() % 16, rng.next())],
            },
            FsRequest::Release { fh: rng.next() },
        ];
        let op = ops[(rng.next() as usize) % ops.len()].clone();
        if e.handle(&creds, op).is_ok() {
            oks += 1;
        }
        let _ = e.open_file(&creds, ino, rng.next() as i32);
    }
    eprintln!("note: {oks} of 3000 junk requests succeeded");
    assert!(oks > 100);
    let after: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
    assert_eq!(before.len(), after.len());
    // Whatever was made is inside the export, and the server still works.
    assert!(e
        .handle(&root(), FsRequest::GetAttr { ino: ROOT_INO })
        .is_ok());
    assert!(read_all_dir(&e, &root(), ROOT_INO, 4096).len() >= 3);
}
