//! PID 1 of a test machine (see `mosix_integration::machine`): names the
//! machine, then reaps every orphan as an init does, so a daemon that the
//! mount helper started and a test killed does not linger as a zombie.
//! Ends when killed (SIGKILL from outside the machine), which ends
//! everything in it.
//!
//!   machine-init HOSTNAME
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::waitpid;

fn main() {
    if let Some(name) = std::env::args().nth(1) {
        if let Err(e) = nix::unistd::sethostname(&name) {
            eprintln!("machine-init: sethostname {name}: {e}");
            std::process::exit(1);
        }
    }
    loop {
        match waitpid(None, None) {
            Err(Errno::ECHILD) => std::thread::sleep(Duration::from_millis(100)),
            Err(Errno::EINTR) | Ok(_) => {}
            Err(e) => {
                eprintln!("machine-init: waitpid: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
