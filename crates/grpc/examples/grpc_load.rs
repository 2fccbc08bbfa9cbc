//! A small closed-loop gRPC load generator for OIP ModelInfer, the gRPC counterpart of the load
//! harness's `wrk -t1`: C connections (one HTTP/2 connection each, one call in flight on each, as
//! wrk keeps one request in flight per connection) for D seconds, on one thread by default.
//!
//! ```text
//! cargo run --release -p sluice-grpc --example grpc_load -- \
//!     --addr 127.0.0.1:8003 --model mlp-small --body v2-mlp-small.json -c 64 -d 10 \
//!     [--threads 1] [--typed] [--metadata 'authorization=Bearer KEY']...
//! ```
//!
//! `--body` is an OIP v2 REST infer body (the harness's `bodies/v2-*.json`); its inputs are sent
//! as `raw_input_contents` (little-endian, as the Triton client sends them), or as typed contents
//! with `--typed`. Prints a summary and a `GRPCJSON {...}` line with requests, errors and latency
//! percentiles in microseconds.

use std::io::Write;
use std::time::{Duration, Instant};

use sluice_grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use sluice_grpc::pb::model_infer_request::InferInputTensor;
use sluice_grpc::pb::{InferTensorContents, ModelInferRequest};
use tonic::metadata::{MetadataKey, MetadataValue};

struct Args {
    addr: String,
    model: String,
    body: String,
    connections: usize,
    seconds: u64,
    threads: usize,
    typed: bool,
    metadata: Vec<(String, String)>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        addr: String::new(),
        model: String::new(),
        body: String::new(),
        connections: 1,
        seconds: 10,
        threads: 1,
        typed: false,
        metadata: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = value()?,
            "--model" => a.model = value()?,
            "--body" => a.body = value()?,
            "-c" | "--connections" => a.connections = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "-d" | "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--threads" => a.threads = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--typed" => a.typed = true,
            "--metadata" => {
                let kv = value()?;
                let (k, v) = kv.split_once('=').ok_or("--metadata takes KEY=VALUE")?;
                a.metadata.push((k.to_owned(), v.to_owned()));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.addr.is_empty() || a.model.is_empty() || a.body.is_empty() || a.connections == 0 || a.threads == 0 {
        return Err("usage: grpc_load --addr HOST:PORT --model NAME --body V2.json [-c N] [-d SECONDS] \
                    [--threads N] [--typed] [--metadata KEY=VALUE]..."
            .into());
    }
    Ok(a)
}

/// The ModelInferRequest for an OIP v2 REST body.
fn request(model: &str, body: &serde_json::Value, typed: bool) -> Result<ModelInferRequest, String> {
    let mut request = ModelInferRequest { model_name: model.to_owned(), ..Default::default() };
    for input in body["inputs"].as_array().ok_or("the body has no inputs")? {
        let datatype = input["datatype"].as_str().ok_or("an input has no datatype")?.to_owned();
        let shape: Vec<i64> = input["shape"].as_array().ok_or("no shape")?.iter().filter_map(|d| d.as_i64()).collect();
        let mut flat = Vec::new();
        flatten(&input["data"], &mut flat);
        let mut contents = InferTensorContents::default();
        let mut raw = Vec::new();
        match datatype.as_str() {
            "FP32" => {
                #[allow(clippy::cast_possible_truncation)]
                let v: Vec<f32> = flat.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect();
                v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes()));
                contents.fp32_contents = v;
            }
            "FP64" => {
                let v: Vec<f64> = flat.iter().filter_map(|x| x.as_f64()).collect();
                v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes()));
                contents.fp64_contents = v;
            }
            "INT64" => {
                let v: Vec<i64> = flat.iter().filter_map(|x| x.as_i64()).collect();
                v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes()));
                contents.int64_contents = v;
            }
            "INT32" => {
                let v: Vec<i32> =
                    flat.iter().filter_map(|x| x.as_i64()).filter_map(|x| i32::try_from(x).ok()).collect();
                v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes()));
                contents.int_contents = v;
            }
            other => return Err(format!("datatype {other} is not supported by this load generator")),
        }
        request.inputs.push(InferInputTensor {
            name: input["name"].as_str().ok_or("an input has no name")?.to_owned(),
            datatype,
            shape,
            parameters: Default::default(),
            contents: typed.then_some(contents),
        });
        if !typed {
            request.raw_input_contents.push(raw.into());
        }
    }
    Ok(request)
}

fn flatten<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Array(items) => items.iter().for_each(|x| flatten(x, out)),
        scalar => out.push(scalar),
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&args.body)?)?;
    let request = request(&args.model, &body, args.typed)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?;
    let (requests, errors, mut latencies, elapsed) = runtime.block_on(async {
        let url = format!("http://{}", args.addr);
        let mut clients = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            // One channel per worker: its own HTTP/2 connection, like one wrk connection.
            let channel = tonic::transport::Endpoint::from_shared(url.clone())?.tcp_nodelay(true).connect().await?;
            clients.push(
                GrpcInferenceServiceClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            );
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.seconds);
        let mut workers = Vec::new();
        for mut client in clients {
            let request = request.clone();
            let metadata = args.metadata.clone();
            workers.push(tokio::spawn(async move {
                let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::with_capacity(1 << 16));
                while Instant::now() < deadline {
                    let mut call = tonic::Request::new(request.clone());
                    for (k, v) in &metadata {
                        if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(k.as_bytes()), MetadataValue::try_from(v)) {
                            call.metadata_mut().insert(k, v);
                        }
                    }
                    let t = Instant::now();
                    match client.model_infer(call).await {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                    lat.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                }
                (ok, failed, lat)
            }));
        }
        let (mut ok, mut failed, mut all) = (0, 0, Vec::new());
        for w in workers {
            let (o, f, l) = w.await?;
            ok += o;
            failed += f;
            all.extend(l);
        }
        Ok::<_, Box<dyn std::error::Error>>((ok, failed, all, started.elapsed()))
    })?;
    latencies.sort_unstable();
    let rps = requests as f64 / elapsed.as_secs_f64();
    let (p50, p90, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 90.0), percentile(&latencies, 99.0));
    // Written without panicking when the reader has gone (`| head -1`).
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "grpc_load: {} connections, {:.1} s: {requests} ok, {errors} errors, {rps:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
        args.connections,
        elapsed.as_secs_f64(),
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "GRPCJSON {}",
        serde_json::json!({
            "requests": requests, "errors": errors, "duration_us": elapsed.as_micros() as u64,
            "rps": rps, "lat_p50_us": p50, "lat_p90_us": p90, "lat_p99_us": p99,
            "lat_max_us": latencies.last().copied().unwrap_or(0),
        })
    );
    Ok(())
}
