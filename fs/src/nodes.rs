//! The node table: which slot of the inode number space stands for which run
//! of which node.
//!
//! A slot is given to a node name when it is first seen and bound to the run
//! (the serving daemon's epoch) that first answers through it. When the node
//! answers from another run, the old slot is retired and a new one begins:
//! inode numbers of the old run then give `ESTALE` without asking anyone,
//! and can never alias files of the new run.
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::error::{FsError, FsResult};
use crate::service::Run;

#[derive(Default)]
struct Table {
    /// slot - 1 -> (node name, the run this slot stands for)
    by_slot: Vec<(String, Option<Run>)>,
    /// node name -> its current slot
    current: HashMap<String, usize>,
    /// Runs that have ended: a late answer from one must not start yet
    /// another slot.
    retired: HashSet<(String, Run)>,
}

impl Table {
    fn slot_of(&mut self, name: &str) -> usize {
        if let Some(&i) = self.current.get(name) {
            return i;
        }
        self.by_slot.push((name.to_string(), None));
        // Slot 0 is the virtual part of the namespace.
        let i = self.by_slot.len();
        self.current.insert(name.to_string(), i);
        i
    }
}

/// A node file's home: the node, its slot and the run the slot stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub node: String,
    pub slot: usize,
    pub run: Option<Run>,
}

#[derive(Default)]
pub struct Nodes(Mutex<Table>);

impl Nodes {
    /// The current slot of node `name` (a new one if it has none yet).
    pub fn slot_of(&self, name: &str) -> usize {
        self.0.lock().expect("node table").slot_of(name)
    }

    pub fn name_of(&self, slot: usize) -> Option<String> {
        let t = self.0.lock().expect("node table");
        t.by_slot.get(slot.checked_sub(1)?).map(|(n, _)| n.clone())
    }

    /// The node and run behind `slot`; `ESTALE` for a slot of a run that
    /// has ended.
    pub fn locate(&self, slot: usize) -> FsResult<Located> {
        let t = self.0.lock().expect("node table");
        let (name, run) = t
            .by_slot
            .get(slot.checked_sub(1).ok_or(FsError::Stale)?)
            .ok_or(FsError::Stale)?;
        if t.current.get(name) != Some(&slot) {
            return Err(FsError::Stale);
        }
        Ok(Located {
            node: name.clone(),
            slot,
            run: *run,
        })
    }

    /// The slot standing for run `run` of node `name`, if that run is the
    /// node's current one.
    pub fn slot_of_run(&self, name: &str, run: Run) -> Option<usize> {
        let t = self.0.lock().expect("node table");
        let &slot = t.current.get(name)?;
        (t.by_slot.get(slot - 1)?.1 == Some(run)).then_some(slot)
    }

    /// Node `name` answered from run `run`: the slot that stands for it. A
    /// new run retires the node's current slot; a run that already ended is
    /// `ESTALE`.
    pub fn bind(&self, name: &str, run: Run) -> FsResult<usize> {
        let mut t = self.0.lock().expect("node table");
        if t.retired.contains(&(name.to_string(), run)) {
            return Err(FsError::Stale);
        }
        let cur = t.slot_of(name);
        let bound = &mut t.by_slot[cur - 1].1;
        match *bound {
            None => {
                *bound = Some(run);
                Ok(cur)
            }
            Some(r) if r == run => Ok(cur),
            Some(old) => {
                // The node restarted: everything it handed out before is
                // gone.
                t.retired.insert((name.to_string(), old));
                t.by_slot.push((name.to_string(), Some(run)));
                let n = t.by_slot.len();
                t.current.insert(name.to_string(), n);
                tracing::info!(
                    node = name,
                    "node restarted; earlier inode numbers are stale"
                );
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_run_retires_the_old_slot_for_good() {
        let n = Nodes::default();
        let s = n.slot_of("n2");
        assert_eq!(n.locate(s).unwrap().run, None);
        assert_eq!(n.bind("n2", 10).unwrap(), s);
        assert_eq!(n.bind("n2", 10).unwrap(), s);
        let s2 = n.bind("n2", 11).unwrap();
        assert_ne!(s2, s);
        assert_eq!(n.locate(s), Err(FsError::Stale));
        assert_eq!(n.locate(s2).unwrap().run, Some(11));
        // A late answer from the ended run starts nothing.
        assert_eq!(n.bind("n2", 10), Err(FsError::Stale));
        assert_eq!(n.slot_of("n2"), s2);
        assert_eq!(n.locate(0), Err(FsError::Stale));
        assert_eq!(n.locate(99), Err(FsError::Stale));
    }
}
