//! Checkpoint/restore of an x86_64 Linux process (all its threads), built on
//! ptrace and syscalls injected into the stopped task (no parasite blob, no
//! kernel module). See `README.md` in this crate for the design.
//!
//! The three entry points:
//! - [`check_movable`] says whether (and why not) a process can move,
//!   without touching it.
//! - [`Checkpoint::take`] freezes a process and captures its state; pages
//!   are pulled lazily from the frozen process into a [`PageSink`].
//! - [`restore`] rebuilds the process inside a fresh stub from an image and
//!   a [`PageSource`], and leaves it stopped until [`Restored::run`].

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("mosix-migrator only supports x86_64 Linux");

mod checkpoint;
mod deputy;
mod error;
mod inject;
mod movable;
mod pages;
mod precopy;
mod proc;
mod ptrace;
mod restore;
mod state;

pub use checkpoint::{grab_fd, Checkpoint, FrozenSource, PageReader};
pub use deputy::{catches, Deputy, DeputyEvent, Ending};
pub use error::{CantMove, CheckpointError, RestoreError, StreamError};
pub use movable::check_movable;
pub use pages::{
    read_image, read_start, write_end, write_holes, write_image, write_pages_header,
    write_precopy_start, write_round_end, BufPool, MemPages, PageRead, PageSink, PageSource,
    PutPieces, Start, StreamSink, StreamSource, DEFAULT_BATCH_BYTES,
};
pub use precopy::{FinalStats, Precopy, RoundStats, FEW_DIRTY_PAGES, MAX_ROUNDS};
pub use restore::{restore, restore_precopy, FdReplacement, RestoreOptions, RestoreStep, Restored};
pub use state::*;
