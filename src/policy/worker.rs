//! One plugin's worker: the OS thread that owns its Lua state and runs its jobs in order, the
//! bounded queue of jobs to it, and the caller's side of a call. A full queue or a reply that
//! does not come in time is a failed call at once, never a wait; a worker whose call runs past
//! its deadline (stuck in C code, where no hook fires) is reported as stuck so that the host
//! can start a fresh one in its place.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::sandbox::{self, Code, Host, LOAD_TIMEOUT, Limits, Sandbox};
use super::{AdmissionRequest, EntryPoints, PolicyError, SharedStore};
use crate::registry::{Registry, StreamRecord};

/// Jobs queued to one worker at most; one more is refused.
pub const JOB_QUEUE: usize = 1024;
/// How much longer than its deadline a call may take before its worker counts as stuck.
const STUCK_GRACE: Duration = Duration::from_millis(500);
/// The longest a caller waits for a job of many calls (a keep-alive batch).
const MAX_JOB_WAIT: Duration = Duration::from_secs(30);

pub(super) enum Job {
    KeepAlive(
        Vec<StreamRecord>,
        oneshot::Sender<Vec<Result<Code, PolicyError>>>,
    ),
    Filter(
        String,
        serde_json::Value,
        Vec<StreamRecord>,
        oneshot::Sender<Vec<Result<bool, PolicyError>>>,
    ),
    Admit(
        StreamRecord,
        AdmissionRequest,
        oneshot::Sender<Result<Code, PolicyError>>,
    ),
    Stopped(StreamRecord, String),
    /// `on_connect(connection)`: a WCS signalling connection asks to be let in.
    Connect(
        serde_json::Value,
        oneshot::Sender<Result<Code, PolicyError>>,
    ),
}

/// What a worker is started from; kept, so that a stuck worker can be started again.
#[derive(Clone)]
pub(super) struct WorkerSpec {
    pub app: String,
    pub label: String,
    pub source: String,
    pub limits: Limits,
    pub store: Arc<SharedStore>,
    pub registry: Weak<Registry>,
    pub plugin_dir: std::path::PathBuf,
}

/// What the caller sees of a worker's progress.
#[derive(Default)]
struct Progress {
    /// Milliseconds (since the worker's epoch, plus one) at which its current call began; 0
    /// while it waits for a job.
    call_began: AtomicU64,
    /// Set when the worker thread has ended.
    ended: AtomicBool,
}

/// A running worker.
pub(super) struct Worker {
    jobs: SyncSender<Job>,
    progress: Arc<Progress>,
    epoch: Instant,
    limits: Limits,
}

struct RegistryHost(Weak<Registry>, std::path::PathBuf);

impl Host for RegistryHost {
    fn read_lines(&self, file: &str) -> Result<Vec<String>, String> {
        sandbox::read_plugin_file(&self.1, file)
    }

    fn count_streams(&self, name: &str, published: Option<bool>) -> usize {
        self.0.upgrade().map_or(0, |r| {
            r.find_by_name(name)
                .iter()
                .filter(|s| published.is_none_or(|p| p == s.published))
                .count()
        })
    }
}

impl Worker {
    /// Starts a worker thread and loads the plugin in it. Blocking: waits for the load, at
    /// most [`LOAD_TIMEOUT`] (which the load's own budget enforces inside the VM).
    pub fn start(spec: &WorkerSpec) -> Result<(Worker, EntryPoints), PolicyError> {
        let (jobs, inbox) = mpsc::sync_channel::<Job>(JOB_QUEUE);
        let (ready_tx, ready) = mpsc::channel();
        let progress = Arc::new(Progress::default());
        let epoch = Instant::now();
        let thread_progress = progress.clone();
        let spec_for_thread = spec.clone();
        std::thread::Builder::new()
            .name(format!("lua-{}", spec.app))
            .spawn(move || {
                let spec = spec_for_thread;
                let host: Rc<dyn Host> = Rc::new(RegistryHost(spec.registry, spec.plugin_dir));
                let loaded =
                    Sandbox::load(&spec.label, &spec.source, spec.limits, spec.store, host);
                let sandbox = match loaded {
                    Ok(sandbox) => sandbox,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        thread_progress.ended.store(true, Ordering::Release);
                        return;
                    }
                };
                let entries = EntryPoints {
                    on_keepalive: sandbox.has("on_keepalive"),
                    on_publish: sandbox.has("on_publish"),
                    on_play: sandbox.has("on_play"),
                    on_stop: sandbox.has("on_stop"),
                    on_connect: sandbox.has("on_connect"),
                    filters: sandbox.filter_names(),
                };
                if ready_tx.send(Ok(entries)).is_ok() {
                    // Runs until every sender (the host's, and calls in flight) is gone.
                    while let Ok(job) = inbox.recv() {
                        run_job(&sandbox, job, &thread_progress, epoch);
                    }
                }
                thread_progress.ended.store(true, Ordering::Release);
            })
            .map_err(|e| PolicyError::Load(format!("cannot start a plugin thread: {e}")))?;
        let worker = Worker {
            jobs,
            progress,
            epoch,
            limits: spec.limits,
        };
        match ready.recv_timeout(LOAD_TIMEOUT + STUCK_GRACE) {
            Ok(Ok(entries)) => Ok((worker, entries)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PolicyError::Load(format!(
                "loading took over {LOAD_TIMEOUT:?}"
            ))),
        }
    }

    /// Queues a job and waits for its answer: `calls` is how many plugin calls the job makes
    /// (each has its own deadline). A full queue or a late answer fails at once.
    pub async fn call<T>(
        &self,
        calls: usize,
        job: impl FnOnce(oneshot::Sender<T>) -> Job,
    ) -> Result<T, PolicyError> {
        let (tx, rx) = oneshot::channel();
        self.send(job(tx))?;
        let wait = (self.limits.call_timeout * calls.max(1) as u32).min(MAX_JOB_WAIT) + STUCK_GRACE;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(PolicyError::Gone),
            Err(_) => Err(PolicyError::Timeout(wait)),
        }
    }

    /// Queues a job without waiting for it.
    pub fn send(&self, job: Job) -> Result<(), PolicyError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => PolicyError::Busy(JOB_QUEUE),
            TrySendError::Disconnected(_) => PolicyError::Gone,
        })
    }

    /// Whether the worker's current call has run well past its deadline, or its thread ended.
    pub fn is_stuck(&self) -> bool {
        if self.progress.ended.load(Ordering::Acquire) {
            return true;
        }
        let began = self.progress.call_began.load(Ordering::Acquire);
        if began == 0 {
            return false;
        }
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let limit = (self.limits.call_timeout + STUCK_GRACE).as_millis() as u64;
        now.saturating_sub(began) > limit
    }
}

fn run_job(sandbox: &Sandbox, job: Job, progress: &Progress, epoch: Instant) {
    // Each call of a job stamps its start (the sandbox begins a budget per call); the stamp
    // is kept fresh per call by `on_call`.
    let on_call = || {
        progress
            .call_began
            .store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Release)
    };
    match job {
        Job::KeepAlive(views, reply) => {
            let _ = reply.send(sandbox.keepalive_many(views, &on_call));
        }
        Job::Filter(name, args, views, reply) => {
            let _ = reply.send(sandbox.filter_many(&name, views, &args, &on_call));
        }
        Job::Admit(view, request, reply) => {
            on_call();
            let _ = reply.send(sandbox.admit(view, &request));
        }
        Job::Connect(connection, reply) => {
            on_call();
            let _ = reply.send(sandbox.connect(&connection));
        }
        Job::Stopped(view, reason) => {
            on_call();
            if let Err(e) = sandbox.stopped(view, &reason) {
                tracing::warn!(plugin = sandbox.label(), error = %e, "on_stop failed");
            }
        }
    }
    progress.call_began.store(0, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NewStream;

    #[test]
    fn a_full_queue_refuses_at_once_and_a_blocked_worker_is_found_stuck() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let spec = WorkerSpec {
            app: "app".into(),
            label: "blocked.lua".into(),
            source: "local M = {} function M.on_stop(s, why) if shared.incr('n', 1) == 1 then files.lines('fifo') end end return M".into(),
            limits: Limits {
                call_timeout: Duration::from_millis(50),
                ..Limits::default()
            },
            store: Arc::default(),
            registry: Weak::new(),
            plugin_dir: dir.path().to_path_buf(),
        };
        let (worker, entries) = Worker::start(&spec).unwrap();
        assert!(entries.on_stop);
        let record = StreamRecord::preview(NewStream::publisher("cam", "app"), "n");
        let stopped = || Job::Stopped(record.clone(), String::new());
        // The first job blocks the worker in a read; the queue then fills, and one more is
        // refused at once.
        worker.send(stopped()).unwrap();
        let mut accepted = 1;
        let started = Instant::now();
        let refused = loop {
            match worker.send(stopped()) {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted <= JOB_QUEUE + 1, "the queue is bounded");
        };
        assert_eq!(refused, PolicyError::Busy(JOB_QUEUE));
        // The queue holds JOB_QUEUE jobs, plus the one the worker took, if it took it yet.
        assert!(accepted >= JOB_QUEUE, "{accepted}");
        assert!(started.elapsed() < Duration::from_secs(1), "never waits");
        assert!(!worker.is_stuck() || started.elapsed() > Duration::from_millis(550));
        std::thread::sleep(Duration::from_millis(600));
        assert!(worker.is_stuck(), "busy past its deadline and the grace");
        // Unblocking lets the thread drain its queue and end with its sender.
        std::fs::write(&fifo, b"").unwrap();
        drop(worker);
    }
}
