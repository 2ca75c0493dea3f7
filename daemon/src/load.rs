//! The load record a node spreads about itself.
use std::time::Instant;

use mosix_proto::LoadRecord;
use procfs::Current;

/// Measures relative CPU speed once: a fixed integer workload, reported as
/// iterations per microsecond, best of several short runs so that a busy
/// moment at start-up does not stick to the node. Only meaningful relative to
/// other nodes.
pub fn measure_speed() -> u32 {
    (0..5).map(|_| speed_once()).max().unwrap_or(1)
}

fn speed_once() -> u32 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut iters: u64 = 0;
    let start = Instant::now();
    while start.elapsed().as_millis() < 10 {
        for _ in 0..10_000 {
            // xorshift: cheap, branch-free and not foldable by the compiler.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        iters += 10_000;
        std::hint::black_box(x);
    }
    (iters / start.elapsed().as_micros().max(1) as u64).clamp(1, u32::MAX as u64) as u32
}

pub struct LoadProbe {
    speed: u32,
    started: Instant,
}

impl LoadProbe {
    pub fn new() -> Self {
        LoadProbe {
            speed: measure_speed(),
            started: Instant::now(),
        }
    }

    /// Reads this node's load now. Fields that cannot be read are zero rather
    /// than failing the whole record.
    pub fn sample(&self) -> LoadRecord {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let load1 = procfs::LoadAverage::current()
            .map(|l| l.one as f64)
            .unwrap_or(0.0);
        let (freemem, totalmem) = procfs::Meminfo::current()
            .map(|m| (m.mem_available.unwrap_or(m.mem_free), m.mem_total))
            .unwrap_or((0, 0));
        let procs = procfs::process::all_processes()
            .map(|it| it.count() as u32)
            .unwrap_or(0);
        LoadRecord {
            cpus,
            load1,
            freemem,
            totalmem,
            procs,
            speed: self.speed,
            uptime: self.started.elapsed().as_secs(),
        }
    }
}

impl Default for LoadProbe {
    fn default() -> Self {
        Self::new()
    }
}
