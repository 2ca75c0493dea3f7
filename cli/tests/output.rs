//! The `mosix` binary's output: a reader that goes away early (`mosix ps |
//! head`) ends a command quietly, and `mosix status` explains its dashes.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use mosix_proto::{
    read_frame, write_frame, ControlRequest, ControlResponse, LoadRecord, MemberInfo, MemberState,
};

fn mosix() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mosix"))
}

/// Runs `cmd` with a stdout whose reader is already gone: its first write
/// fails with EPIPE, as under `| head` once head has exited.
fn with_closed_stdout(mut cmd: Command) -> Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    cmd.stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[track_caller]
fn assert_quiet_success(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(0) && stderr.is_empty(),
        "{what}: status {:?}, stderr: {stderr}",
        out.status
    );
}

/// A stand-in for a node daemon's control socket: answers Status with two
/// members, one of which has sent no load record yet.
fn fake_daemon(dir: &Path) -> PathBuf {
    let path = dir.join("control.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let _: Option<ControlRequest> = read_frame(&mut s, 1 << 16).await.unwrap();
                let member = |name: &str, is_self, load| MemberInfo {
                    name: name.into(),
                    addr: "10.0.0.1:7700".parse().unwrap(),
                    state: MemberState::Alive,
                    load,
                    load_age_ms: None,
                    is_self,
                };
                let load = LoadRecord {
                    cpus: 4,
                    load1: 0.5,
                    freemem: 1 << 30,
                    totalmem: 4 << 30,
                    procs: 10,
                    speed: 100,
                    uptime: 5,
                };
                let resp = ControlResponse::Status {
                    node: "n1".into(),
                    members: vec![member("n1", true, Some(load)), member("n4", false, None)],
                };
                let _ = write_frame(&mut s, &resp, 1 << 22).await;
            }
        })
    });
    path
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let control = fake_daemon(dir.path());

    // Many lines: the host's processes, read from its /proc.
    let mut ps = mosix();
    ps.args(["ps", "--mosix", "/"]);
    assert_quiet_success("mosix ps", &with_closed_stdout(ps));

    for json in [false, true] {
        let mut status = mosix();
        status.arg("status").arg("--control").arg(&control);
        if json {
            status.arg("--json");
        }
        assert_quiet_success("mosix status", &with_closed_stdout(status));
    }

    let mut init = mosix();
    init.args(["cluster", "init", "--nodes", "a,b", "--dir"])
        .arg(dir.path().join("pki"));
    assert_quiet_success("mosix cluster init", &with_closed_stdout(init));
    let mut add = mosix();
    add.args(["cluster", "add-node", "c", "--dir"])
        .arg(dir.path().join("pki"));
    assert_quiet_success("mosix cluster add-node", &with_closed_stdout(add));

    let mut help = mosix();
    help.arg("--help");
    assert_quiet_success("mosix --help", &with_closed_stdout(help));
}

#[test]
fn status_explains_a_member_without_load() {
    let dir = tempfile::tempdir().unwrap();
    let control = fake_daemon(dir.path());
    let out = mosix()
        .arg("status")
        .arg("--control")
        .arg(&control)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[1].starts_with("n1*") && lines[1].contains("0.50"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("n4") && lines[2].contains(" - "),
        "{text}"
    );
    assert!(lines[3].contains("no load record"), "{text}");
}

#[test]
fn an_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = mosix()
        .arg("daemon")
        .arg("--config")
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let cause = "No such file or directory";
    assert_eq!(stderr.matches(cause).count(), 1, "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}
