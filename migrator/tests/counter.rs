mod common;
use common::*;
use mosix_migrator::*;

fn special_areas(pid: i32) -> Vec<(u64, u64, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.ends_with("[vdso]") || l.ends_with("[vvar]") || l.ends_with("[vvar_vclock]"))
        .map(|l| {
            let (range, _) = l.split_once(' ').unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let name = l.rsplit(' ').next().unwrap().to_string();
            (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
                name,
            )
        })
        .collect()
}

fn image_specials(img: &ProcessImage) -> Vec<(u64, u64, String)> {
    img.mm
        .vmas
        .iter()
        .filter_map(|v| match &v.kind {
            VmaKind::Special { name } => Some((v.start, v.end, name.clone())),
            _ => None,
        })
        .collect()
}

/// The headline case: a process writing a sequence to a file and to a pipe
/// moves mid-run — twice, the second time from its restored copy — and the
/// file has no gap and no repeat, the pipe keeps flowing, the vDSO sits
/// where the program expects it (it calls clock_gettime all the time), the
/// glibc rseq registration carries over, and the last copy exits with the
/// original's exit code.
#[test]
fn counter_moves_twice_without_gap() {
    require_root();
    let bin = compile("counter");
    let dir = tempfile::tempdir().unwrap();
    let n = 250;
    let input: String = (1..=n).map(|i| format!("{i:07}\n")).collect();
    std::fs::write(dir.path().join("input.txt"), input).unwrap();
    let prog = spawn(&bin, &[&n.to_string()], dir.path());
    let mut out: Vec<u32> = Vec::new();
    for _ in 0..20 {
        out.push(prog.line(10).parse().unwrap());
    }
    let m1 = migrate(prog.pid(), None).expect("first migration");
    assert_ne!(m1.pid, prog.pid());
    eprintln!(
        "counter: moved {} -> {} in {:?}, {} page bytes",
        prog.pid(),
        m1.pid,
        m1.freeze,
        m1.bytes
    );
    let specials = image_specials(&m1.image);
    assert_eq!(specials.len(), 3, "vvar, vvar_vclock, vdso on Linux 6.18");
    assert_eq!(
        special_areas(m1.pid),
        specials,
        "vDSO areas moved into place"
    );
    let rseq1 = m1.image.threads[0].rseq.expect("glibc 2.36 registers rseq");
    let input_fd = m1
        .image
        .fds
        .entries
        .iter()
        .find(|e| matches!(&e.kind, FdKind::File { path } if path.ends_with("input.txt")))
        .expect("input.txt in the fd table");
    assert!(
        input_fd.pos >= 20 * 8,
        "read offset captured: {}",
        input_fd.pos
    );
    // glibc's cached tid (at the set_tid_address pointer) names the new pid.
    let ctid = m1.image.threads[0].clear_child_tid;
    assert_ne!(ctid, 0);
    let mut b = [0u8; 4];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(format!("/proc/{}/mem", m1.pid))
        .unwrap()
        .read_exact_at(&mut b, ctid)
        .unwrap();
    assert_eq!(i32::from_ne_bytes(b), m1.pid, "TCB tid fixed up");

    for _ in 0..20 {
        out.push(prog.line(10).parse().unwrap());
    }
    let m2 = migrate(m1.pid, None).expect("second migration");
    eprintln!("counter: moved {} -> {} in {:?}", m1.pid, m2.pid, m2.freeze);
    assert_eq!(
        m2.image.threads[0].rseq,
        Some(rseq1),
        "rseq registration restored"
    );
    assert_eq!(
        m2.image.threads[0].regs.fs_base,
        m1.image.threads[0].regs.fs_base
    );
    assert_eq!(
        m2.image.threads[0].clear_child_tid,
        m1.image.threads[0].clear_child_tid
    );
    assert_eq!(
        m2.image.threads[0].robust_list,
        m1.image.threads[0].robust_list
    );
    assert_eq!(m2.image.misc.cwd, m1.image.misc.cwd);
    assert_eq!(m2.image.misc.umask, m1.image.misc.umask);
    assert_eq!(m2.image.mm.start_brk, m1.image.mm.start_brk);
    // The program kept growing its heap with brk after the first restore.
    assert!(m2.image.mm.brk > m1.image.mm.brk, "brk grew after restore");
    assert_eq!(m2.image.mm.arg_start, m1.image.mm.arg_start);
    assert_eq!(m2.image.mm.exe, m1.image.mm.exe);
    // The stub would otherwise carry the test thread's name.
    assert!(m1.image.misc.comm.starts_with("counter"));
    assert_eq!(m2.image.misc.comm, m1.image.misc.comm);

    let code = wait_exit(m2.pid, 60);
    out.extend(prog.rest(10).iter().map(|l| l.parse::<u32>().unwrap()));
    let want: Vec<u32> = (1..=n).collect();
    assert_eq!(out, want, "stdout sequence");
    assert_eq!(seq_file(&dir.path().join("seq.txt")), want, "file sequence");
    assert_eq!(code, 7);
}

/// The target-node case, where the old pid is free: the copy gets it back
/// (clone3 set_tid). Pages go through the in-memory sink/source here.
#[test]
fn keeps_pid_when_free() {
    require_root();
    let bin = compile("counter");
    let dir = tempfile::tempdir().unwrap();
    let n = 60;
    let prog = spawn(&bin, &[&n.to_string()], dir.path());
    for want in 1..=5 {
        assert_eq!(prog.line(10), want.to_string());
    }
    let pid = prog.pid();
    let ck = Checkpoint::take(pid).unwrap();
    let image = ck.image().clone();
    let mut pages = MemPages::new();
    ck.send_pages(&mut pages).unwrap();
    // Every pipe end the source holds (stdout, and whatever the test
    // harness leaked into it) goes to the copy.
    use std::os::fd::AsRawFd;
    let held: Vec<(i32, std::os::fd::OwnedFd)> = image
        .fds
        .entries
        .iter()
        .filter(|e| e.kind.needs_relay())
        .map(|e| (e.fd, ck.dup_source_fd(e.fd).unwrap()))
        .collect();
    // Past the point of no return: the pages are all here.
    ck.finish_source().unwrap();
    let opts = RestoreOptions {
        keep_pid: true,
        replacements: held
            .iter()
            .map(|(fd, h)| FdReplacement {
                fd: *fd,
                from: h.as_raw_fd(),
            })
            .collect(),
        ..Default::default()
    };
    let r = restore(&image, &mut pages, &opts).unwrap();
    drop(held);
    assert_eq!(r.pid(), pid, "old pid reused");
    r.run().unwrap();
    assert_eq!(wait_exit(pid, 30), 7);
    let mut got: Vec<u32> = (1..=5).collect();
    got.extend(prog.rest(10).iter().map(|l| l.parse::<u32>().unwrap()));
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
}

/// A non-root process stays non-root: uids, gids, groups and capability
/// sets come back as they were, even though the restorer is root.
#[test]
fn unprivileged_process_keeps_its_credentials() {
    require_root();
    let bin = compile("counter");
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let n = 80;
    let prog = spawn_as(&bin, &[&n.to_string()], dir.path(), 65534, 65534);
    for want in 1..=5 {
        assert_eq!(prog.line(10), want.to_string());
    }
    let keys = [
        "Uid",
        "Gid",
        "Groups",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
    ];
    let before: Vec<String> = keys.iter().map(|k| status_field(prog.pid(), k)).collect();
    assert!(before[0].starts_with("65534"), "{before:?}");
    let m = migrate(prog.pid(), None).expect("migration");
    let after: Vec<String> = keys.iter().map(|k| status_field(m.pid, k)).collect();
    assert_eq!(after, before);
    assert_eq!(wait_exit(m.pid, 30), 7);
    let mut got: Vec<u32> = (1..=5).collect();
    got.extend(prog.rest(10).iter().map(|l| l.parse::<u32>().unwrap()));
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
}
