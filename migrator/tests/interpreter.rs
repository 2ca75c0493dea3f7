//! Not a purpose-built C program: a stock CPython interpreter (dynamic
//! libraries, a large heap, locale files mapped, glibc rseq) moves mid-loop.
mod common;
use common::*;
use std::process::{Command, Stdio};

#[test]
fn python_moves_mid_loop() {
    require_root();
    // Debian's own interpreter (not a pyenv shim script): the machine
    // description lists CPython 3.11 on every machine of this project.
    let py = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| which("python3").ok())
        .expect("python3 is on every machine of this project");
    let dir = tempfile::tempdir().unwrap();
    let script = "import sys, time, hashlib\n\
        data = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(50000)]\n\
        for i in range(1, 201):\n\
        \x20   print(i, flush=True)\n\
        \x20   time.sleep(0.01)\n\
        assert data[12345] == hashlib.sha256(b'12345').hexdigest()\n\
        sys.exit(7)\n";
    let mut child = Command::new(py)
        .args(["-c", script])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prog = Prog {
        lines: lines_of(child.stdout.take().unwrap()),
        child,
    };
    let mut out: Vec<u32> = Vec::new();
    for _ in 0..30 {
        out.push(prog.line(20).parse().unwrap());
    }
    let m = migrate(prog.pid(), None).expect("migration");
    eprintln!(
        "python: freeze {:?}, {} KiB of pages",
        m.freeze,
        m.bytes >> 10
    );
    let code = wait_exit(m.pid, 60);
    out.extend(prog.rest(20).iter().map(|l| l.parse::<u32>().unwrap()));
    assert_eq!(out, (1..=200).collect::<Vec<_>>());
    assert_eq!(code, 7);
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or(())
}
