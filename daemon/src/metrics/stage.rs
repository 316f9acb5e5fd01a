//! The time and the CPU the JIT stages spend: wall time (`jitwgd_stage_seconds`) for every
//! stage, and CPU beside it (`jitwgd_stage_cpu_seconds_total`). On a busy
//! gateway a stage's wall time includes the time its thread waited for the core (identify
//! workers run at nice 5, below the data plane), so a capacity model that needs CPU per
//! identify or per install batch reads it here. Only stages that run start to finish on one
//! thread are measured: identify (on its worker) and install (on the install worker). A
//! lookup's work is spread over async tasks and the control plane's answer, so it has no CPU
//! series; its share is in jitwgd's whole CPU.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{Metrics, StageLabel, TIMED_STAGES};

/// Values of the `stage` label of `jitwgd_stage_cpu_seconds_total`.
pub const CPU_TIMED_STAGES: &[&str] = &["identify", "install"];

/// `jitwgd_stage_cpu_seconds_total{stage}`.
#[derive(Debug, Default)]
pub struct StageCpuMetrics {
    /// CPU seconds of the thread that ran the stage, summed over its runs.
    pub seconds: Family<StageLabel, Counter<f64, AtomicU64>>,
}

impl StageCpuMetrics {
    /// Every stage's series, present at 0 from the start.
    pub(super) fn new() -> Self {
        let m = Self::default();
        for &stage in CPU_TIMED_STAGES {
            let _ = m.seconds.get_or_create(&StageLabel { stage });
        }
        m
    }

    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "stage_cpu_seconds",
            "CPU seconds spent in each JIT stage that runs on one thread (identify, install)",
            self.seconds.clone(),
        );
    }
}

/// Record `elapsed` (wall time) spent in `stage` (one of `TIMED_STAGES`).
pub fn observe_stage(metrics: &Metrics, stage: &'static str, elapsed: Duration) {
    debug_assert!(TIMED_STAGES.contains(&stage), "unknown stage {stage}");
    metrics
        .stage_seconds
        .get_or_create(&StageLabel { stage })
        .observe(elapsed.as_secs_f64());
}

/// The calling thread's CPU time so far (`CLOCK_THREAD_CPUTIME_ID`); `None` if it cannot be
/// read.
fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    let secs = u64::try_from(now.tv_sec).ok()?;
    let nanos = u32::try_from(now.tv_nsec).ok()?;
    (rc == 0).then(|| Duration::new(secs, nanos))
}

/// Times one run of a stage that starts and ends on the calling thread: its wall time into
/// `jitwgd_stage_seconds`, its thread's CPU time into `jitwgd_stage_cpu_seconds_total`.
pub struct StageTimer {
    stage: &'static str,
    wall: Instant,
    cpu: Option<Duration>,
}

impl StageTimer {
    /// Starts timing `stage` (one of `CPU_TIMED_STAGES`) on this thread.
    pub fn start(stage: &'static str) -> Self {
        debug_assert!(CPU_TIMED_STAGES.contains(&stage), "unknown stage {stage}");
        StageTimer {
            stage,
            wall: Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    /// When the stage started (wall clock).
    pub fn started(&self) -> Instant {
        self.wall
    }

    /// Records the stage's wall and CPU time; call it on the thread that started it.
    pub fn finish(self, metrics: &Metrics) {
        observe_stage(metrics, self.stage, self.wall.elapsed());
        if let (Some(start), Some(end)) = (self.cpu, thread_cpu_time()) {
            metrics
                .stage_cpu
                .seconds
                .get_or_create(&StageLabel { stage: self.stage })
                .inc_by(end.saturating_sub(start).as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_stage_records_cpu_and_a_sleeping_one_records_wall_time_only() {
        let m = Metrics::new();
        let busy = StageTimer::start("identify");
        // Work until this thread has used 5 ms of CPU, however long the box takes to give it.
        let from = thread_cpu_time().expect("the thread CPU clock reads");
        let mut x = 0u64;
        while thread_cpu_time().is_some_and(|t| t < from + Duration::from_millis(5)) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        busy.finish(&m);
        let idle = StageTimer::start("install");
        std::thread::sleep(Duration::from_millis(30));
        idle.finish(&m);
        let cpu = |stage| {
            m.stage_cpu
                .seconds
                .get_or_create(&StageLabel { stage })
                .get()
        };
        assert!(cpu("identify") >= 0.005, "{}", cpu("identify"));
        // A sleep is 30 ms of wall time and next to no CPU.
        assert!(cpu("install") < 0.005, "{}", cpu("install"));
        let text = m.encode();
        assert!(text.contains("jitwgd_stage_cpu_seconds_total{stage=\"identify\"}"));
        assert!(text.contains("jitwgd_stage_seconds_count{stage=\"install\"} 1"));
    }
}
