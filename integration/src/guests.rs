//! Programs that tests run inside a cluster and move around: the
//! migrator's C test programs compiled where every node sees them, and
//! shell scripts started in the background on a node.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{mosix_bin, Cluster};

pub use mosix_proto::proc::gpid;

impl Cluster {
    /// Compiles `migrator/tests/c/<name>.c` into the cluster's state
    /// directory, which every node sees.
    pub fn compile(&self, name: &str) -> PathBuf {
        let src =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../migrator/tests/c/{name}.c"));
        let out = self.state().join(name);
        let st = Command::new("cc")
            .args(["-O1", "-pthread", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("cc");
        assert!(st.success(), "compiling {name}.c");
        out
    }

    /// Starts `script` (bash) on `node` in the background; it is the
    /// parent of whatever it runs, and is killed when the test drops it.
    pub fn start(&self, node: &str, script: &str) -> Bg {
        Bg(Command::new(mosix_bin())
            .args(["enter", "--state"])
            .arg(self.state())
            .args([node, "--", "bash", "-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap())
    }
}

/// A background `mosix enter`, reaped when the test is done with it.
pub struct Bg(pub std::process::Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of `text` must be exactly 1..=n.
#[track_caller]
pub fn assert_gap_free(text: &str, n: usize, what: &str) {
    let got: Vec<usize> = text.lines().map(|l| l.parse().expect(what)).collect();
    let want: Vec<usize> = (1..=n).collect();
    assert_eq!(got, want, "{what} is not a gap-free 1..{n}");
}
