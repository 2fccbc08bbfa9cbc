//! Dynamic batching keeps every request's answer its own: for random mixes of request sizes,
//! arrival times and cancellations, batched results equal what each request gets alone.
//!
//! The backend here is a small row-wise Rust model (no engine needed to test the batcher's
//! bookkeeping); the end-to-end tests run the same checks through ONNX Runtime.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice_core::{
    Backend, BackendError, BackendInfo, DataType, Device, ModelSignature, Tensor, TensorData, TensorSpec,
};
use sluice_runtime::{BatchConfig, Execution, ModelConfig, ModelHandle};

/// y[r] = [sum(x[r]), 2 * x[r][0] - x[r][2]]: every output row depends only on its input row.
struct RowModel {
    signature: ModelSignature,
    delay: Duration,
}

impl RowModel {
    fn new(delay: Duration) -> Self {
        let spec = |name: &str, cols| TensorSpec::new(name, DataType::F32, vec![-1, cols]);
        RowModel { signature: ModelSignature { inputs: vec![spec("x", 3)], outputs: vec![spec("y", 2)] }, delay }
    }
}

fn expected(x: &[f32]) -> Vec<f32> {
    x.chunks(3).flat_map(|r| [r[0] + r[1] + r[2], 2.0 * r[0] - r[2]]).collect()
}

impl Backend for RowModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn info(&self) -> BackendInfo {
        BackendInfo { platform: "rust-test", device: Device::Cpu }
    }

    fn infer(&mut self, inputs: &[Tensor], _outputs: &[usize]) -> Result<Vec<Tensor>, BackendError> {
        std::thread::sleep(self.delay);
        let TensorData::F32(x) = &inputs[0].data else { return Err(BackendError::Inference("not f32".into())) };
        if x.iter().any(|v| *v < 0.0) {
            return Err(BackendError::InvalidInput("negative values are out of range".into()));
        }
        let rows = inputs[0].shape[0];
        Ok(vec![Tensor { name: "y".into(), shape: vec![rows, 2], data: TensorData::F32(expected(x)) }])
    }
}

fn handle(batching: Option<BatchConfig>, instances: usize) -> Arc<ModelHandle> {
    let config = ModelConfig {
        instance_count: instances,
        execution: Execution::Threads,
        batching,
        max_concurrent_requests: 256,
        max_queued_requests: 256,
        max_request_wait: Duration::from_secs(5),
        scoring_timeout: Duration::from_secs(5),
    };
    Arc::new(
        ModelHandle::start("rows", "1", config, |_| {
            Ok(Box::new(RowModel::new(Duration::from_micros(300))) as Box<dyn Backend>)
        })
        .expect("starts"),
    )
}

/// One request: rows, microseconds to wait before sending, and whether the client gives up early.
type Plan = (usize, u64, bool);

fn run(model: Arc<ModelHandle>, plans: Vec<Plan>) -> Vec<Option<(Vec<f32>, Vec<f32>)>> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let tasks: Vec<_> = plans
            .into_iter()
            .enumerate()
            .map(|(i, (rows, wait_us, cancel))| {
                let model = model.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(wait_us)).await;
                    let x: Vec<f32> = (0..rows * 3).map(|k| (i * 1000 + k) as f32).collect();
                    let input = Tensor::new("x", vec![rows as i64, 3], TensorData::F32(x.clone())).expect("valid");
                    let call = model.infer(vec![input], vec![0]);
                    let outcome = if cancel {
                        // The client gives up almost at once: it must never see an answer, and the
                        // others must never see its rows.
                        match tokio::time::timeout(Duration::from_micros(50), call).await {
                            Ok(r) => r,
                            Err(_) => return None,
                        }
                    } else {
                        call.await
                    };
                    let out = outcome.expect("inference succeeds");
                    assert_eq!(out.outputs[0].shape, vec![rows as i64, 2]);
                    let TensorData::F32(y) = out.outputs[0].data.clone() else { panic!("f32 output") };
                    Some((x, y))
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("task"));
        }
        results
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn batched_results_equal_unbatched(
        plans in proptest::collection::vec((1usize..12, 0u64..2000, proptest::bool::weighted(0.2)), 1..40),
        max_batch_size in 2usize..48,
        delay_us in prop_oneof![Just(0u64), 100u64..1500],
    ) {
        let config = BatchConfig {
            max_batch_size,
            max_queue_delay: Duration::from_micros(delay_us),
            preferred_batch_sizes: vec![],
        };
        for (x, y) in run(handle(Some(config), 1), plans.clone()).into_iter().flatten() {
            prop_assert_eq!(y, expected(&x));
        }
        // The same requests with batching off give the same answers.
        for (x, y) in run(handle(None, 1), plans).into_iter().flatten() {
            prop_assert_eq!(y, expected(&x));
        }
    }
}

#[test]
fn concurrent_requests_are_actually_batched() {
    let model = handle(Some(BatchConfig { max_batch_size: 32, ..BatchConfig::default() }), 1);
    let plans: Vec<Plan> = (0..64).map(|i| (1 + i % 3, 0, false)).collect();
    let results = run(model.clone(), plans);
    assert!(results.iter().all(Option::is_some));
    let runs = model.metrics().batch_size.count();
    let rows = model.metrics().batch_size.sum();
    let sent: usize = (0..64).map(|i| 1 + i % 3).sum();
    assert_eq!(rows as usize, sent, "every row ran exactly once");
    assert!(runs < 64, "64 concurrent requests on one slow instance take fewer than 64 runs, took {runs}");
    assert!(rows / runs as f64 > 1.5, "average batch {} rows", rows / runs as f64);
}

#[test]
fn one_bad_request_does_not_fail_its_batch() {
    let model = handle(Some(BatchConfig { max_batch_size: 32, ..BatchConfig::default() }), 1);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let outcomes = rt.block_on(async move {
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let model = model.clone();
                tokio::spawn(async move {
                    let value = if i == 7 { -1.0 } else { i as f32 };
                    let input = Tensor::new("x", vec![1, 3], TensorData::F32(vec![value; 3])).expect("valid");
                    model.infer(vec![input], vec![0]).await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match (i, outcome) {
            (7, Err(e)) => assert!(e.to_string().contains("out of range"), "{e}"),
            (7, Ok(_)) => panic!("the bad request must fail"),
            (_, Ok(out)) => assert_eq!(out.outputs[0].data, TensorData::F32(expected(&[i as f32; 3]))),
            (_, Err(e)) => panic!("request {i} failed because it shared a batch: {e}"),
        }
    }
}

#[test]
fn a_preferred_size_ends_a_batch_early() {
    let config = BatchConfig { max_batch_size: 32, preferred_batch_sizes: vec![2], ..BatchConfig::default() };
    let model = handle(Some(config), 1);
    let results = run(model.clone(), (0..64).map(|_| (1, 0, false)).collect());
    assert!(results.iter().all(Option::is_some));
    let (runs, rows) = (model.metrics().batch_size.count(), model.metrics().batch_size.sum());
    assert_eq!(rows as usize, 64);
    assert!(runs >= 32, "with preferred size 2 no batch grows past 2 rows: {runs} runs for 64 rows");
    assert!(runs < 64, "but batches of 2 do form: {runs} runs");
}

#[test]
fn batching_is_off_for_models_without_a_dynamic_first_dimension() {
    struct Fixed(ModelSignature);
    impl Backend for Fixed {
        fn signature(&self) -> &ModelSignature {
            &self.0
        }
        fn info(&self) -> BackendInfo {
            BackendInfo { platform: "rust-test", device: Device::Cpu }
        }
        fn infer(&mut self, inputs: &[Tensor], _: &[usize]) -> Result<Vec<Tensor>, BackendError> {
            Ok(vec![Tensor { name: "y".into(), shape: inputs[0].shape.clone(), data: inputs[0].data.clone() }])
        }
    }
    let spec = |name: &str| TensorSpec::new(name, DataType::F32, vec![1, 2]);
    let sig = ModelSignature { inputs: vec![spec("x")], outputs: vec![spec("y")] };
    assert!(!sluice_runtime::batchable(&sig));
    let model =
        ModelHandle::start("fixed", "1", ModelConfig { instance_count: 1, ..ModelConfig::for_this_machine() }, |_| {
            Ok(Box::new(Fixed(sig.clone())) as Box<dyn Backend>)
        })
        .expect("starts");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let out = rt
        .block_on(
            model.infer(vec![Tensor::new("x", vec![1, 2], TensorData::F32(vec![1.0, 2.0])).expect("valid")], vec![0]),
        )
        .expect("runs");
    assert_eq!(out.outputs[0].data, TensorData::F32(vec![1.0, 2.0]));
}
