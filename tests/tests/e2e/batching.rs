//! Dynamic batching through HTTP and ONNX Runtime: concurrent requests of mixed sizes get the
//! answers they get alone, and the engine runs fewer, larger batches.

use serde_json::json;
use sluice_e2e::*;
use sluice_runtime::{BatchConfig, ModelConfig};
use sluice_server::ServerConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_size_requests_match_unbatched_answers() {
    let batched = ModelConfig {
        instance_count: 1,
        batching: Some(BatchConfig { max_batch_size: 16, ..BatchConfig::default() }),
        ..test_config()
    };
    let single = ModelConfig { instance_count: 1, batching: None, ..test_config() };
    let server = std::sync::Arc::new(
        TestServer::start(
            vec![
                load("mlp-large", "1", &model_path("mlp-large"), batched),
                load("mlp-large", "2", &model_path("mlp-large"), single),
            ],
            ServerConfig::default(),
        )
        .await,
    );
    // A fixed-seed generator keeps the mix of sizes and values the same on every run.
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    let requests: Vec<serde_json::Value> = (0..48)
        .map(|_| {
            let rows = 1 + next() % 4;
            let data: Vec<f32> = (0..rows * 784).map(|_| (next() % 1000) as f32 / 1000.0).collect();
            json!({ "inputs": [{ "name": "input", "shape": [rows, 784], "datatype": "FP32", "data": data }] })
        })
        .collect();
    let answers = server
        .batched_and_alone("/v2/models/mlp-large/versions/1/infer", "/v2/models/mlp-large/versions/2/infer", &requests)
        .await;
    for (batched, alone) in answers {
        assert_eq!(batched["outputs"][0]["shape"], alone["outputs"][0]["shape"]);
        assert_close(
            &numbers(&batched["outputs"][0]["data"]),
            &numbers(&alone["outputs"][0]["data"]),
            1e-4,
            "batched vs alone",
        );
    }
    let runs = server.engine_runs("mlp-large", "1").await;
    assert!(runs < 48, "48 concurrent requests on one instance ran as {runs} batches");
}
