//! Runs model instances and admits requests to them.
//!
//! A model version has `instance_count` [`Backend`] instances (engines such as ONNX Runtime need
//! `&mut` to run, so each instance is used by one thread at a time and needs no lock). They run in
//! one of two ways ([`Execution`]):
//!
//! - **threads**: each instance owns a dedicated OS thread fed by one bounded channel per model.
//!   Inference never blocks the async runtime, whatever it costs.
//! - **inline**: the request's own async worker thread borrows an idle instance and runs it. For a
//!   model that answers in microseconds, two cross-thread wake-ups cost more than the model; inline
//!   execution removes them.
//!
//! Threads are the default: measured on 2 cores with `mlp-small` (3.5 us per row), dedicated threads
//! served 31-35k requests/s at 64 connections against 21-25k inline; inline only wins on an idle
//! server (78 against 106 us p50 at one connection; benches/RESULTS.md). With threads, each
//! instance joins what is queued into one batch ([`batch`]).
//!
//! Admission bounds everything: at most `max_concurrent_requests` requests hold a slot, at most
//! `max_queued_requests` wait for one and only for `max_request_wait`; the rest are refused at
//! once, so overload turns into 503s rather than memory growth.
#![forbid(unsafe_code)]

pub mod batch;
mod metrics;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_core::{Backend, BackendError, BackendInfo, ModelSignature, Tensor, TensorData};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

pub use batch::{BatchConfig, batchable};
pub use metrics::{ErrorKind, ModelMetrics};

/// Where inference runs; see the crate documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Execution {
    #[default]
    Threads,
    Inline,
}

impl std::str::FromStr for Execution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "inline" => Ok(Execution::Inline),
            "threads" => Ok(Execution::Threads),
            other => Err(format!("unknown execution mode '{other}' (expected threads or inline)")),
        }
    }
}

/// Limits and parallelism of one served model version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// Model instances, each used by one thread at a time.
    pub instance_count: usize,
    /// Where inference runs.
    pub execution: Execution,
    /// Dynamic batching (threads execution only); `None` runs each request alone. Ignored, with a
    /// log line, for models whose first dimension is not dynamic.
    pub batching: Option<BatchConfig>,
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
            execution: Execution::Threads,
            batching: Some(BatchConfig::default()),
            max_concurrent_requests: sluice_core::DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_queued_requests: sluice_core::DEFAULT_MAX_QUEUED_REQUESTS,
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
    /// The model is named by whoever reports the error (as for the other variants).
    #[error("invalid configuration: {reason}")]
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
    /// The engine run this request was part of.
    pub inference_time: Duration,
    /// Rows in that run (more than the request's own when it was batched with others; 0 when
    /// the inputs have no batch dimension).
    pub batch_rows: usize,
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
    executor: Executor,
    metrics: Arc<ModelMetrics>,
}

enum Executor {
    /// Idle instances, borrowed by the request's own thread; `free` counts them so that a request
    /// can wait for one without spinning.
    Inline { idle: Mutex<Vec<Box<dyn Backend>>>, free: Semaphore },
    /// Dedicated threads, one per instance, fed by a channel.
    Threads { jobs: Option<crossbeam_channel::Sender<Job>>, workers: Vec<JoinHandle<()>> },
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
        let mut instances = (0..config.instance_count).map(&mut load).collect::<Result<Vec<_>, _>>()?;
        let signature = instances[0].signature().clone();
        let info = instances[0].info();
        let per_row = warm_up(name, &mut instances);
        let inline = config.execution == Execution::Inline;
        tracing::debug!(model = name, ?per_row, inline, "warm-up done");
        let batching = match &config.batching {
            Some(b) if b.max_batch_size > 1 && !inline => {
                if batchable(&signature) {
                    Some(b.clone())
                } else {
                    tracing::info!(model = name, "batching off: the model's first dimension is not dynamic");
                    None
                }
            }
            _ => None,
        };
        let metrics = Arc::new(ModelMetrics::default());
        let executor = if inline {
            Executor::Inline { free: Semaphore::new(instances.len()), idle: Mutex::new(instances) }
        } else {
            // Every queued job holds a slot, so the channel can never hold more than that.
            let (tx, rx) = crossbeam_channel::bounded::<Job>(config.max_concurrent_requests);
            let workers = instances
                .into_iter()
                .enumerate()
                .map(|(i, backend)| {
                    let rx = rx.clone();
                    let metrics = metrics.clone();
                    let batching = batching.clone();
                    let model = name.to_owned();
                    std::thread::Builder::new()
                        .name(format!("sluice-{name}-{i}"))
                        .spawn(move || Worker { backend, metrics, batching, model }.run(&rx))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Executor::Threads { jobs: Some(tx), workers }
        };
        Ok(ModelHandle {
            name: name.into(),
            version: version.into(),
            signature,
            info,
            slots: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            waiting: AtomicUsize::new(0),
            executor,
            config,
            metrics,
        })
    }

    /// True when the model runs on the request's own thread.
    pub fn runs_inline(&self) -> bool {
        matches!(self.executor, Executor::Inline { .. })
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
        let admission = self.admit().await?;
        self.infer_admitted(admission, inputs, outputs).await
    }

    /// Takes one of the model's admission slots (`max_concurrent_requests`), waiting at most
    /// `max_request_wait` behind at most `max_queued_requests` others, else
    /// [`InferError::Overloaded`]. A server admits a request before decoding its body, so that
    /// under overload the excess is refused before it costs the CPU a decode takes from the
    /// requests being served.
    pub async fn admit(&self) -> Result<Admission, InferError> {
        self.admit_permit().await.map(Admission)
    }

    /// Runs a request that holds `admission`; see [`ModelHandle::infer`].
    pub async fn infer_admitted(
        &self,
        admission: Admission,
        inputs: Vec<Tensor>,
        outputs: Vec<usize>,
    ) -> Result<InferOutcome, InferError> {
        let permit = admission.0;
        let admitted_at = Instant::now();
        match &self.executor {
            Executor::Inline { idle, free } => {
                // Inline inference never awaits, so at most one instance per async worker thread
                // is out at a time; with instance_count >= worker threads this never waits.
                let instance = match free.try_acquire() {
                    Ok(p) => p,
                    Err(_) => tokio::time::timeout(self.config.scoring_timeout, free.acquire())
                        .await
                        .map_err(|_| self.timeout())?
                        .map_err(|_| InferError::ShuttingDown { model: self.name.clone() })?,
                };
                let result = self.infer_inline(idle, &inputs, &outputs, admitted_at);
                drop(instance);
                result
            }
            Executor::Threads { jobs, .. } => {
                let jobs = jobs.as_ref().ok_or_else(|| InferError::ShuttingDown { model: self.name.clone() })?;
                let (reply, answer) = oneshot::channel();
                let job = Job { inputs, outputs, admitted_at, reply, _permit: permit };
                if jobs.try_send(job).is_err() {
                    // Unreachable while slots == channel capacity; refuse rather than block if it ever is.
                    return Err(InferError::Overloaded { model: self.name.clone(), waited_ms: 0 });
                }
                match tokio::time::timeout(self.config.scoring_timeout, answer).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(InferError::ShuttingDown { model: self.name.clone() }),
                    // Dropping `answer` marks the job abandoned: a worker that has not started it skips it.
                    Err(_) => Err(self.timeout()),
                }
            }
        }
    }

    fn timeout(&self) -> InferError {
        InferError::Timeout { model: self.name.clone(), timeout_ms: self.config.scoring_timeout.as_millis() as u64 }
    }

    fn infer_inline(
        &self,
        idle: &Mutex<Vec<Box<dyn Backend>>>,
        inputs: &[Tensor],
        outputs: &[usize],
        admitted_at: Instant,
    ) -> Result<InferOutcome, InferError> {
        // The caller holds a `free` permit, so an idle instance is there.
        let taken = idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut backend = taken.expect("a free permit guarantees an idle instance; this is a bug");
        let queue_time = admitted_at.elapsed();
        let (result, inference_time) = run_backend(backend.as_mut(), inputs, outputs);
        idle.lock().unwrap_or_else(|e| e.into_inner()).push(backend);
        let batch_rows = batch::rows(inputs);
        self.metrics.record_run([queue_time], inference_time, batch_rows);
        let outputs = result?;
        if admitted_at.elapsed() > self.config.scoring_timeout {
            return Err(self.timeout());
        }
        Ok(InferOutcome { outputs, queue_time, inference_time, batch_rows: batch_rows.unwrap_or(0) })
    }

    async fn admit_permit(&self) -> Result<OwnedSemaphorePermit, InferError> {
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

/// One admission slot of a model, held from before a request is decoded until its answer.
#[derive(Debug)]
pub struct Admission(OwnedSemaphorePermit);

struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ModelHandle {
    fn drop(&mut self) {
        self.slots.close();
        if let Executor::Inline { free, .. } = &self.executor {
            free.close();
        }
        if let Executor::Threads { jobs, workers } = &mut self.executor {
            // Closing the channel ends each worker after the jobs already queued.
            jobs.take();
            for w in workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

/// Runs every instance once on a one-row input of zeros, so the first real request does not pay
/// for lazy initialisation, and returns the fastest time per row. `None` when the model cannot be
/// warmed up that way (say, a fixed dimension that is not 1 is fine, but a non-tensor input is not).
fn warm_up(name: &str, instances: &mut [Box<dyn Backend>]) -> Option<Duration> {
    let signature = instances.first()?.signature().clone();
    let inputs: Vec<Tensor> = signature
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<i64> = spec.shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
            let len = shape.iter().product::<i64>().max(0) as usize;
            let mut data = TensorData::with_capacity(spec.datatype, len);
            data.resize_zeroed(len);
            Tensor { name: spec.name.clone(), shape, data }
        })
        .collect();
    let outputs: Vec<usize> = (0..signature.outputs.len()).collect();
    let mut best: Option<Duration> = None;
    for backend in instances.iter_mut() {
        for _ in 0..3 {
            let (result, took) = run_backend(backend.as_mut(), &inputs, &outputs);
            if let Err(e) = result {
                tracing::warn!(model = name, error = %e, "warm-up inference failed; using worker threads");
                return None;
            }
            best = Some(best.map_or(took, |b| b.min(took)));
        }
    }
    best
}

/// Runs a backend, turning a panic into an error so one bad request cannot take a thread down.
fn run_backend(
    backend: &mut dyn Backend,
    inputs: &[Tensor],
    outputs: &[usize],
) -> (Result<Vec<Tensor>, InferError>, Duration) {
    let started = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| backend.infer(inputs, outputs)));
    let took = started.elapsed();
    let result = match result {
        Ok(Ok(outputs)) => Ok(outputs),
        Ok(Err(e)) => Err(InferError::Backend(e)),
        Err(panic) => Err(InferError::Panicked(panic_message(&panic))),
    };
    (result, took)
}

/// One instance's thread: takes jobs (batching them when configured) and runs them.
struct Worker {
    backend: Box<dyn Backend>,
    metrics: Arc<ModelMetrics>,
    batching: Option<BatchConfig>,
    model: String,
}

impl Worker {
    fn run(mut self, jobs: &crossbeam_channel::Receiver<Job>) {
        // A job taken from the queue that did not fit the batch being built starts the next one.
        let mut carried: Option<Job> = None;
        loop {
            let first = match carried.take() {
                Some(job) => job,
                None => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            if self.abandoned(&first) {
                continue;
            }
            let batch = match &self.batching {
                Some(config) => Self::collect(config, first, jobs, &mut carried, &self.metrics),
                None => vec![first],
            };
            self.run_batch(batch);
        }
    }

    /// A job whose client has gone (disconnected or timed out) is dropped before it costs compute.
    fn abandoned(&self, job: &Job) -> bool {
        let gone = job.reply.is_closed();
        if gone {
            self.metrics.abandoned.inc();
        }
        gone
    }

    /// Gathers compatible queued jobs after `first`, up to the configured limits.
    fn collect(
        config: &BatchConfig,
        first: Job,
        jobs: &crossbeam_channel::Receiver<Job>,
        carried: &mut Option<Job>,
        metrics: &ModelMetrics,
    ) -> Vec<Job> {
        let Some(mut total) = batch::rows(&first.inputs) else { return vec![first] };
        let deadline = Instant::now() + config.max_queue_delay;
        let mut batch = vec![first];
        while total < config.max_batch_size && !config.preferred_batch_sizes.contains(&total) {
            let next =
                if config.max_queue_delay.is_zero() { jobs.try_recv().ok() } else { jobs.recv_deadline(deadline).ok() };
            let Some(job) = next else { break };
            if job.reply.is_closed() {
                metrics.abandoned.inc();
                continue;
            }
            let head = &batch[0];
            match batch::rows(&job.inputs) {
                Some(rows)
                    if total + rows <= config.max_batch_size
                        && batch::compatible(&head.inputs, &head.outputs, &job.inputs, &job.outputs) =>
                {
                    total += rows;
                    batch.push(job);
                }
                _ => {
                    *carried = Some(job);
                    break;
                }
            }
        }
        batch
    }

    fn run_batch(&mut self, batch: Vec<Job>) {
        if batch.len() == 1 {
            return batch.into_iter().for_each(|job| self.run_one(job));
        }
        let rows: Vec<usize> = batch.iter().map(|j| batch::rows(&j.inputs).unwrap_or(0)).collect();
        let parts: Vec<&[Tensor]> = batch.iter().map(|j| j.inputs.as_slice()).collect();
        let Some(inputs) = batch::concat(&parts) else {
            return batch.into_iter().for_each(|job| self.run_one(job));
        };
        let queue_times: Vec<Duration> = batch.iter().map(|j| j.admitted_at.elapsed()).collect();
        let (result, inference_time) = run_backend(self.backend.as_mut(), &inputs, &batch[0].outputs);
        let batch_rows = rows.iter().sum();
        self.metrics.record_run(queue_times.iter().copied(), inference_time, Some(batch_rows));
        match result.map(|outputs| batch::split(outputs, &rows)) {
            Ok(Some(per_request)) => {
                for ((job, outputs), queue_time) in batch.into_iter().zip(per_request).zip(queue_times) {
                    job.answer(Ok(InferOutcome { outputs, queue_time, inference_time, batch_rows }));
                }
            }
            Ok(None) => {
                tracing::warn!(model = %self.model, "batching off: the model's outputs do not keep one row per input row");
                self.batching = None;
                batch.into_iter().for_each(|job| self.run_one(job));
            }
            // One request's bad values must not fail the others it was batched with: run each
            // alone so that only the culprit gets the error.
            Err(_) => batch.into_iter().for_each(|job| self.run_one(job)),
        }
    }

    fn run_one(&mut self, job: Job) {
        let queue_time = job.admitted_at.elapsed();
        let (result, inference_time) = run_backend(self.backend.as_mut(), &job.inputs, &job.outputs);
        let batch_rows = batch::rows(&job.inputs);
        self.metrics.record_run([queue_time], inference_time, batch_rows);
        job.answer(result.map(|outputs| InferOutcome {
            outputs,
            queue_time,
            inference_time,
            batch_rows: batch_rows.unwrap_or(0),
        }));
    }
}

impl Job {
    /// Gives the admission slot back, then the answer: a caller that sends its next request as
    /// soon as it has this answer must find the slot free, not be refused for a moment.
    fn answer(self, result: Result<InferOutcome, InferError>) {
        let Job { reply, _permit, .. } = self;
        drop(_permit);
        let _ = reply.send(result);
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
