//! mount-helpers/install: stages into DESTDIR/PREFIX, installs exactly the
//! documented files (and the doc the unit names), and explains instead of
//! failing on a host without systemd.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mount-helpers/install")
}

fn install(vars: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(script())
        .env("MOSIX_BIN", env!("CARGO_BIN_EXE_mosix"))
        .env_remove("DESTDIR")
        .env_remove("PREFIX");
    for (k, v) in vars {
        cmd.arg(format!("{k}={}", v.display()));
    }
    cmd.output().unwrap()
}

fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn install_stages_exactly_the_documented_files() {
    let dest = tempfile::tempdir().unwrap();
    let out = install(&[("DESTDIR", dest.path()), ("PREFIX", Path::new("/usr"))]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut docs: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs"))
            .unwrap()
            .flatten()
            .map(|e| format!("usr/share/doc/mosix/{}", e.file_name().to_string_lossy()))
            .filter(|p| p.ends_with(".md"))
            .collect();
    docs.push("usr/share/doc/mosix/README.md".into());
    let mut want = vec![
        "etc/systemd/system/mosix.service".to_string(),
        "sbin/mount.fuse.mosix".into(),
        "usr/bin/mosix".into(),
    ];
    want.extend(docs);
    want.sort();
    assert_eq!(files(dest.path()), want);
    assert!(dest.path().join("etc/mosix").is_dir());

    // The unit runs the installed binary, names docs that were installed,
    // and raises the open-file limit.
    let unit =
        std::fs::read_to_string(dest.path().join("etc/systemd/system/mosix.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/mosix daemon --config /etc/mosix/node.toml"),
        "{unit}"
    );
    assert!(unit.contains("\nLimitNOFILE=1048576\n"), "{unit}");
    let doc_line = unit
        .lines()
        .find(|l| l.starts_with("Documentation="))
        .unwrap();
    for url in doc_line["Documentation=".len()..].split_whitespace() {
        let path = url.strip_prefix("file://").expect("a file URL");
        assert!(
            dest.path().join(&path[1..]).is_file(),
            "{path} is not installed"
        );
    }
    let helper = std::fs::read_to_string(dest.path().join("sbin/mount.fuse.mosix")).unwrap();
    assert!(helper.contains("|| echo /usr/bin/mosix)"));
}

#[test]
fn install_on_a_host_without_systemd_explains_and_succeeds() {
    if Path::new("/run/systemd/system").exists() {
        eprintln!("systemd runs on this host: the no-systemd case is not checked here");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = |d: &str| root.path().join(d);
    let out = install(&[
        ("PREFIX", &dir("usr")),
        ("SBINDIR", &dir("sbin")),
        ("UNITDIR", &dir("units")),
        ("SYSCONFDIR", &dir("etc")),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("systemd is not running here"), "{stdout}");
    assert!(stdout.contains("mount -t fuse.mosix"), "{stdout}");
    assert!(dir("units/mosix.service").is_file() && dir("etc/mosix").is_dir());
}

#[test]
fn install_refuses_unknown_arguments_and_a_missing_binary() {
    let out = Command::new("sh")
        .arg(script())
        .arg("--bogus")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let dest = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg(script())
        .arg(format!("DESTDIR={}", dest.path().display()))
        .env("MOSIX_BIN", dest.path().join("nothing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    assert!(files(dest.path()).is_empty());
}
