//! `mosix mon` in a real terminal (tmux): it draws every node, refreshes,
//! and quits on `q`.
use std::process::Command;
use std::time::Duration;

use mosix_integration::{mosix_bin, Cluster};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux (scripts/setup-debian installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn mon_shows_the_cluster_live_and_quits_on_q() {
    let c = Cluster::up(3);
    let session = format!("mosix-mon-{}", std::process::id());
    let cmd = format!(
        "{bin} enter --state {} n2 -- {bin} mon --interval 0.3",
        c.state().display(),
        bin = mosix_bin().display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "20",
        &cmd,
    ]);
    let screen = || tmux(&["capture-pane", "-p", "-t", &session]);
    let shown = Cluster::wait_for(Duration::from_secs(10), || {
        let s = screen();
        s.contains("3 of 3 nodes alive")
            && s.contains("n1")
            && s.contains("n2*")
            && s.contains("n3")
    });
    assert!(
        shown.is_some(),
        "mon did not show the cluster:\n{}",
        screen()
    );

    // Live: a node's death shows up without touching the terminal.
    c.kill_daemon("n3");
    let bound = mosix_daemon::membership::dead_bound(3) + Duration::from_secs(2);
    let updated = Cluster::wait_for(bound, || screen().contains("2 of 3 nodes alive"));
    assert!(updated.is_some(), "mon did not refresh:\n{}", screen());

    tmux(&["send-keys", "-t", &session, "q"]);
    let quit = Cluster::wait_for(Duration::from_secs(5), || {
        !tmux(&["list-sessions"]).contains(&session)
    });
    if quit.is_none() {
        tmux(&["kill-session", "-t", &session]);
        panic!("mon did not quit on q");
    }
}
