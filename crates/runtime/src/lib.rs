//! Runs model instances and admits requests to them.
//!
//! Each loaded model version gets `instance_count` dedicated OS threads, each owning one
//! [`Backend`] instance (engines such as ONNX Runtime need `&mut` to run, so one instance per thread
//! means no lock on the hot path). Requests reach the threads through one bounded channel per
//! model. Admission bounds everything: at most `max_concurrent_requests` requests hold a slot, at
//! most `max_queued_requests` wait for one and only for `max_request_wait`; the rest are refused
//! at once, so overload turns into 503s rather than memory growth.
#![forbid(unsafe_code)]

mod metrics;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_core::{Backend, BackendError, BackendInfo, ModelSignature, Tensor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

pub use metrics::{ErrorKind, ModelMetrics};

/// Limits and parallelism of one served model version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// Model instances, each on its own worker thread.
    pub instance_count: usize,
    /// Requests admitted at once (Azure ML's `replica_max_concurrent_requests`).
    pub max_concurrent_requests: usize,
    /// Requests that may wait for a slot; past this they are refused at once.
    pub max_queued_requests: usize,
    /// How long a request waits for a slot before a 503 (`max_request_wait_time`).
    pub max_request_wait: Duration,
    /// How long an admitted request may take before a 504 (`scoring_timeout_ms`).
    pub scoring_timeout: Duration,
}

impl ModelConfig {
    /// Defaults for this machine: one instance per core (each with one ONNX Runtime thread) and
    /// enough admitted requests to keep every instance busy while the next requests are decoded.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ModelConfig {
            instance_count: cores,
            max_concurrent_requests: 64,
            max_queued_requests: 256,
            max_request_wait: Duration::from_millis(500),
            scoring_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a request got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    #[error("model '{model}' is overloaded: no slot freed up within {waited_ms} ms; retry later")]
    Overloaded { model: String, waited_ms: u64 },
    #[error("model '{model}' did not answer within the scoring timeout of {timeout_ms} ms")]
    Timeout { model: String, timeout_ms: u64 },
    #[error("model '{model}' is shutting down")]
    ShuttingDown { model: String },
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("the model instance panicked: {0}")]
    Panicked(String),
}

/// Errors starting a model.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("invalid configuration for model '{model}': {reason}")]
    Config { model: String, reason: String },
    #[error("cannot start a worker thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// A result and where its time went.
#[derive(Debug)]
pub struct InferOutcome {
    pub outputs: Vec<Tensor>,
    /// From admission until an instance took the request.
    pub queue_time: Duration,
    pub inference_time: Duration,
}

struct Job {
    inputs: Vec<Tensor>,
    outputs: Vec<usize>,
    admitted_at: Instant,
    reply: oneshot::Sender<Result<InferOutcome, InferError>>,
    /// Held until the job is answered or dropped, so a slot stays taken while an instance works on
    /// it even if the client has gone.
    _permit: OwnedSemaphorePermit,
}

/// A loaded model version: its instances, admission state and metrics.
pub struct ModelHandle {
    name: String,
    version: String,
    signature: ModelSignature,
    info: BackendInfo,
    config: ModelConfig,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    jobs: Option<crossbeam_channel::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    metrics: Arc<ModelMetrics>,
}

impl std::fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHandle").field("name", &self.name).field("version", &self.version).finish()
    }
}

impl ModelHandle {
    /// Loads `config.instance_count` instances with `load` (called with the instance index) and
    /// starts their worker threads. Returns once every instance is loaded, so a handle is ready.
    pub fn start(
        name: &str,
        version: &str,
        config: ModelConfig,
        mut load: impl FnMut(usize) -> Result<Box<dyn Backend>, BackendError>,
    ) -> Result<Self, StartError> {
        let bad = |reason: &str| StartError::Config { model: name.into(), reason: reason.into() };
        if config.instance_count == 0 {
            return Err(bad("instance_count must be at least 1"));
        }
        if config.max_concurrent_requests == 0 {
            return Err(bad("max_concurrent_requests must be at least 1"));
        }
        let instances = (0..config.instance_count).map(&mut load).collect::<Result<Vec<_>, _>>()?;
        let signature = instances[0].signature().clone();
        let info = instances[0].info();
        let metrics = Arc::new(ModelMetrics::default());
        // Every queued job holds a slot, so the channel can never hold more than that.
        let (tx, rx) = crossbeam_channel::bounded::<Job>(config.max_concurrent_requests);
        let workers = instances
            .into_iter()
            .enumerate()
            .map(|(i, backend)| {
                let rx = rx.clone();
                let metrics = metrics.clone();
                std::thread::Builder::new()
                    .name(format!("sluice-{name}-{i}"))
                    .spawn(move || worker(backend, rx, &metrics))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ModelHandle {
            name: name.into(),
            version: version.into(),
            signature,
            info,
            slots: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            waiting: AtomicUsize::new(0),
            jobs: Some(tx),
            workers,
            config,
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    pub fn info(&self) -> &BackendInfo {
        &self.info
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn metrics(&self) -> &ModelMetrics {
        &self.metrics
    }

    /// Runs one request: `inputs` in signature order, `outputs` as indices into the signature.
    pub async fn infer(&self, inputs: Vec<Tensor>, outputs: Vec<usize>) -> Result<InferOutcome, InferError> {
        let permit = self.admit().await?;
        let admitted_at = Instant::now();
        let (reply, answer) = oneshot::channel();
        let job = Job { inputs, outputs, admitted_at, reply, _permit: permit };
        let jobs = self.jobs.as_ref().ok_or_else(|| InferError::ShuttingDown { model: self.name.clone() })?;
        if jobs.try_send(job).is_err() {
            // Unreachable while slots == channel capacity; refuse rather than block if it ever is.
            return Err(InferError::Overloaded { model: self.name.clone(), waited_ms: 0 });
        }
        match tokio::time::timeout(self.config.scoring_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(InferError::ShuttingDown { model: self.name.clone() }),
            // Dropping `answer` marks the job abandoned: a worker that has not started it skips it.
            Err(_) => Err(InferError::Timeout {
                model: self.name.clone(),
                timeout_ms: self.config.scoring_timeout.as_millis() as u64,
            }),
        }
    }

    async fn admit(&self) -> Result<OwnedSemaphorePermit, InferError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let overloaded = || InferError::Overloaded {
            model: self.name.clone(),
            waited_ms: self.config.max_request_wait.as_millis() as u64,
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.max_queued_requests {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(InferError::Overloaded { model: self.name.clone(), waited_ms: 0 });
        }
        let _waiting = DecrementOnDrop(&self.waiting);
        match tokio::time::timeout(self.config.max_request_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(InferError::ShuttingDown { model: self.name.clone() }),
            Err(_) => Err(overloaded()),
        }
    }
}

struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ModelHandle {
    fn drop(&mut self) {
        // Closing the channel ends each worker after the jobs already queued.
        self.jobs.take();
        self.slots.close();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(mut backend: Box<dyn Backend>, jobs: crossbeam_channel::Receiver<Job>, metrics: &ModelMetrics) {
    while let Ok(job) = jobs.recv() {
        if job.reply.is_closed() {
            // The client went away or timed out while queued: do not spend compute on it.
            metrics.abandoned.inc();
            continue;
        }
        let queue_time = job.admitted_at.elapsed();
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| backend.infer(&job.inputs, &job.outputs)));
        let inference_time = started.elapsed();
        metrics.queue.observe(queue_time);
        metrics.inference.observe(inference_time);
        let result = match result {
            Ok(Ok(outputs)) => Ok(InferOutcome { outputs, queue_time, inference_time }),
            Ok(Err(e)) => Err(InferError::Backend(e)),
            Err(panic) => Err(InferError::Panicked(panic_message(&panic))),
        };
        let _ = job.reply.send(result);
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
