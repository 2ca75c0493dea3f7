//! `mosix migrate` and `mosix run`: moving processes by hand, through the
//! same `/mosix/proc/<gpid>/where` files any program can write.
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Moves process `gpid` to `target` (a node name, or `home`); returns once
/// it runs there.
pub fn migrate(mosix: &Path, gpid: u32, target: &str) -> anyhow::Result<i32> {
    let where_ = mosix.join(format!("proc/{gpid}/where"));
    let from = std::fs::read_to_string(&where_)
        .with_context(|| format!("process {gpid}"))?
        .trim()
        .to_string();
    // The home node writes the migration's progress (rounds, bytes, the
    // dirty set, the freeze) to a file of its own, read here while the
    // write to `where` waits for the move. Only on the home node: `/run` is
    // not part of what a node exports.
    let home = std::fs::read_to_string(mosix.join(format!("proc/{gpid}/home")))
        .unwrap_or_default()
        .trim()
        .to_string();
    let here = std::fs::read_link(mosix.join("here"))
        .map(|p| p.to_string_lossy().trim_start_matches("nodes/").to_string())
        .unwrap_or_default();
    let progress = std::path::PathBuf::from(if home == here {
        format!("/run/mosix/migrations/{}", gpid & ((1 << 22) - 1))
    } else {
        String::new()
    });
    let old = std::fs::read_to_string(&progress).unwrap_or_default();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("moving {gpid} from {from} to {target}"));
    bar.enable_steady_tick(Duration::from_millis(100));
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let (w, t) = (where_.clone(), target.to_string());
    std::thread::spawn(move || {
        let r = std::fs::OpenOptions::new()
            .write(true)
            .open(&w)
            .and_then(|mut f| f.write_all(format!("{t}\n").as_bytes()));
        let _ = tx.send(r);
    });
    let mut shown = 0;
    let mut show = |bar: &indicatif::ProgressBar| {
        let now = std::fs::read_to_string(&progress).unwrap_or_default();
        if now == old {
            return;
        }
        for l in now.lines().skip(shown) {
            // Not `println`: a hidden bar (no terminal) would drop it.
            bar.suspend(|| outln!("{gpid}: {l}"));
            shown += 1;
        }
    };
    // Bounded like the move itself: the home node answers the write once
    // the process runs somewhere, or fails it.
    let r = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => break r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => show(&bar),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break Err(std::io::Error::other("the writer thread died"))
            }
        }
    };
    let took = start.elapsed();
    show(&bar);
    bar.finish_and_clear();
    if let Err(e) = r {
        bail!("cannot move {gpid} to {target}: {e}");
    }
    let now = std::fs::read_to_string(&where_).unwrap_or_default();
    outln!(
        "{gpid}: {from} -> {} in {:.3} s",
        now.trim(),
        took.as_secs_f64()
    );
    Ok(0)
}

/// Starts `cmd` here and, with `on`, moves it to that node at once; waits
/// for it and exits as it did.
pub fn run(mosix: &Path, on: Option<&str>, cmd: &[String]) -> anyhow::Result<i32> {
    let Some((prog, args)) = cmd.split_first() else {
        bail!("no command given");
    };
    let mut child = std::process::Command::new(prog)
        .args(args)
        .spawn()
        .with_context(|| format!("starting {prog}"))?;
    if let Some(node) = on {
        // This node's id is in our own gpid.
        let me: u32 = std::fs::read_link(mosix.join("proc/self"))
            .context("reading /mosix/proc/self")?
            .to_string_lossy()
            .parse()
            .context("/mosix/proc/self is not a gpid")?;
        let gpid = (me >> 22) << 22 | child.id();
        let where_ = mosix.join(format!("proc/{gpid}/where"));
        let moved = std::fs::OpenOptions::new()
            .write(true)
            .open(&where_)
            .and_then(|mut f| f.write_all(format!("{node}\n").as_bytes()));
        if let Err(e) = moved {
            eprintln!("mosix run: {prog} runs here: cannot move it to {node}: {e}");
        }
    }
    let status = child.wait().context("waiting for the command")?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
