//! Runs ONNX backend node tests through Sluice's ONNX Runtime path: `node_tests LIB DIR...`.
//!
//! Each DIR holds `model.onnx` and `test_data_set_0/{input,output}_N.pb` (the layout of the `onnx`
//! package's `onnx/backend/test/data/node`). The model is loaded with [`OrtBackend::load`], exactly
//! as `sluice serve` loads one, from the library at LIB; then the inputs are run and the outputs
//! compared. One line per model, tab-separated: `name  ir_version  opset  status  detail`, where
//! status is
//!
//! - `pass`: loaded, ran, every output within rtol 1e-3 / atol 1e-5 (exact for integers);
//! - `mismatch`: loaded and ran, an output differs;
//! - `run-error`: loaded, the run failed;
//! - `unsupported`: ONNX Runtime built the session, but Sluice cannot serve its signature (an
//!   input or output that is a sequence, a string, bfloat16, float8, ...);
//! - `load-error`: ONNX Runtime refused the model (IR version, opset, missing kernel, ...);
//! - `no-data`: loaded, but the test data could not be read as plain tensors.
//!
//! `scripts/ort-node-tests.py` drives it for two ONNX Runtime versions and compares the counts.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use half::f16;
use sluice_backend_ort::{OrtBackend, OrtOptions, init};
use sluice_core::{Backend, BackendError, Tensor, TensorData};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: node_tests LIB DIR...");
        std::process::exit(2);
    }
    let env = match init(Path::new(&args[1])) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("node_tests: {e}");
            std::process::exit(1);
        }
    };
    let stdout = std::io::stdout();
    for dir in &args[2..] {
        let dir = PathBuf::from(dir);
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (ir, opset) = model_versions(&dir.join("model.onnx")).unwrap_or((0, 0));
        // A panic inside one model (in ort or here) is that model's result, not the end of the run.
        let (status, detail) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_one(env, &dir)))
            .unwrap_or_else(|_| ("run-error", "panicked".to_owned()));
        let detail: String = detail.replace(['\t', '\n', '\r'], " ").chars().take(1000).collect();
        let mut out = stdout.lock();
        let _ = writeln!(out, "{name}\t{ir}\t{opset}\t{status}\t{detail}");
        let _ = out.flush();
    }
}

fn run_one(env: &'static sluice_backend_ort::Environment, dir: &Path) -> (&'static str, String) {
    let mut backend = match OrtBackend::load(env, &dir.join("model.onnx"), &OrtOptions::default()) {
        Ok(b) => b,
        Err(BackendError::Unsupported(e)) => return ("unsupported", e),
        Err(e) => return ("load-error", e.to_string()),
    };
    let data = dir.join("test_data_set_0");
    if !data.is_dir() {
        return ("no-data", "no test_data_set_0".into());
    }
    let (inputs, expected) = match (read_tensors(&data, "input"), read_tensors(&data, "output")) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => return ("no-data", e),
    };
    let signature = backend.signature().clone();
    // Expected outputs by name, in the order of the model's outputs; unnamed ones by position.
    let mut wanted = Vec::new();
    for (j, exp) in expected.iter().enumerate() {
        let idx = signature.outputs.iter().position(|o| o.name == exp.name).or((exp.name.is_empty()).then_some(j));
        match idx {
            Some(idx) if idx < signature.outputs.len() => wanted.push(idx),
            _ => return ("no-data", format!("expected output '{}' is not an output of the model", exp.name)),
        }
    }
    let got = match backend.infer(&inputs, &wanted) {
        Ok(got) => got,
        Err(e) => return ("run-error", e.to_string()),
    };
    for (g, e) in got.iter().zip(&expected) {
        if let Err(why) = compare(g, e) {
            return ("mismatch", format!("output '{}': {why}", g.name));
        }
    }
    ("pass", String::new())
}

fn read_tensors(dir: &Path, prefix: &str) -> Result<Vec<Tensor>, String> {
    let mut tensors = Vec::new();
    for j in 0.. {
        let path = dir.join(format!("{prefix}_{j}.pb"));
        if !path.is_file() {
            break;
        }
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let proto = TensorProto::parse(&bytes).map_err(|e| format!("{prefix}_{j}.pb: {e}"))?;
        tensors.push(proto.into_tensor().map_err(|e| format!("{prefix}_{j}.pb: {e}"))?);
    }
    Ok(tensors)
}

fn compare(got: &Tensor, expected: &Tensor) -> Result<(), String> {
    if got.shape != expected.shape {
        return Err(format!("shape {:?}, expected {:?}", got.shape, expected.shape));
    }
    if got.dtype() != expected.dtype() {
        return Err(format!("datatype {:?}, expected {:?}", got.dtype(), expected.dtype()));
    }
    let floats = |d: &TensorData| -> Option<Vec<f64>> {
        match d {
            TensorData::F16(v) => Some(v.iter().map(|x| f64::from(x.to_f32())).collect()),
            TensorData::F32(v) => Some(v.iter().map(|&x| f64::from(x)).collect()),
            TensorData::F64(v) => Some(v.clone()),
            _ => None,
        }
    };
    match (floats(&got.data), floats(&expected.data)) {
        (Some(g), Some(e)) => {
            for (i, (&a, &b)) in g.iter().zip(&e).enumerate() {
                let close = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-5 + 1e-3 * b.abs();
                if !close {
                    return Err(format!("element {i} is {a}, expected {b}"));
                }
            }
            Ok(())
        }
        _ if got.data == expected.data => Ok(()),
        _ => Err("values differ".into()),
    }
}

/// The model's IR version and its default-domain (`ai.onnx`) opset, read from `ModelProto`.
fn model_versions(path: &Path) -> Option<(u64, u64)> {
    let bytes = fs::read(path).ok()?;
    let (mut ir, mut opset) = (0, 0);
    let mut r = Reader { buf: &bytes, pos: 0 };
    while let Some((field, value)) = r.field().ok()? {
        match (field, value) {
            (1, Wire::Varint(v)) => ir = v,
            (8, Wire::Bytes(b)) => {
                let (mut domain, mut version) = (&b[..0], 0);
                let mut o = Reader { buf: b, pos: 0 };
                while let Some((f, v)) = o.field().ok()? {
                    match (f, v) {
                        (1, Wire::Bytes(d)) => domain = d,
                        (2, Wire::Varint(n)) => version = n,
                        _ => {}
                    }
                }
                if domain.is_empty() || domain == b"ai.onnx" {
                    opset = version;
                }
            }
            _ => {}
        }
    }
    Some((ir, opset))
}

/// The parts of `onnx.TensorProto` the node tests use.
#[derive(Default)]
struct TensorProto {
    name: String,
    dims: Vec<i64>,
    data_type: u64,
    raw: Option<Vec<u8>>,
    floats: Vec<f32>,
    int32s: Vec<i32>,
    int64s: Vec<i64>,
    doubles: Vec<f64>,
    uint64s: Vec<u64>,
    external: bool,
}

impl TensorProto {
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut t = TensorProto::default();
        let mut r = Reader { buf: bytes, pos: 0 };
        while let Some((field, value)) = r.field()? {
            match (field, value) {
                (1, v) => v.each_varint(|x| t.dims.push(x as i64))?,
                (2, Wire::Varint(v)) => t.data_type = v,
                (4, Wire::Fixed32(b)) => t.floats.push(f32::from_le_bytes(b)),
                (4, Wire::Bytes(b)) => {
                    t.floats.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("chunks_exact"))))
                }
                (5, v) => v.each_varint(|x| t.int32s.push(x as i32))?,
                (6, _) => return Err("string data".into()),
                (7, v) => v.each_varint(|x| t.int64s.push(x as i64))?,
                (8, Wire::Bytes(b)) => t.name = String::from_utf8_lossy(b).into_owned(),
                (9, Wire::Bytes(b)) => t.raw = Some(b.to_vec()),
                (10, Wire::Fixed64(b)) => t.doubles.push(f64::from_le_bytes(b)),
                (10, Wire::Bytes(b)) => {
                    t.doubles.extend(b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("chunks_exact"))))
                }
                (11, v) => v.each_varint(|x| t.uint64s.push(x))?,
                (13, _) => t.external = true,
                _ => {}
            }
        }
        Ok(t)
    }

    fn into_tensor(self) -> Result<Tensor, String> {
        if self.external {
            return Err("external data".into());
        }
        macro_rules! le {
            ($t:ty) => {
                self.raw.as_ref().map(|raw| {
                    raw.chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunks_exact")))
                        .collect::<Vec<$t>>()
                })
            };
        }
        let data = match self.data_type {
            1 => TensorData::F32(le!(f32).unwrap_or(self.floats)),
            2 => TensorData::U8(le!(u8).unwrap_or_else(|| self.int32s.iter().map(|&x| x as u8).collect())),
            3 => TensorData::I8(le!(i8).unwrap_or_else(|| self.int32s.iter().map(|&x| x as i8).collect())),
            4 => TensorData::U16(le!(u16).unwrap_or_else(|| self.int32s.iter().map(|&x| x as u16).collect())),
            5 => TensorData::I16(le!(i16).unwrap_or_else(|| self.int32s.iter().map(|&x| x as i16).collect())),
            6 => TensorData::I32(le!(i32).unwrap_or(self.int32s)),
            7 => TensorData::I64(le!(i64).unwrap_or(self.int64s)),
            9 => TensorData::Bool(match &self.raw {
                Some(raw) => raw.iter().map(|&b| b != 0).collect(),
                None => self.int32s.iter().map(|&x| x != 0).collect(),
            }),
            10 => TensorData::F16(
                le!(u16)
                    .unwrap_or_else(|| self.int32s.iter().map(|&x| x as u16).collect())
                    .into_iter()
                    .map(f16::from_bits)
                    .collect(),
            ),
            11 => TensorData::F64(le!(f64).unwrap_or(self.doubles)),
            12 => TensorData::U32(le!(u32).unwrap_or_else(|| self.uint64s.iter().map(|&x| x as u32).collect())),
            13 => TensorData::U64(le!(u64).unwrap_or(self.uint64s)),
            other => return Err(format!("element type {other}")),
        };
        Tensor::new(self.name, self.dims, data).map_err(|e| e.to_string())
    }
}

enum Wire<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

impl Wire<'_> {
    /// A repeated integer field, packed or not.
    fn each_varint(self, mut f: impl FnMut(u64)) -> Result<(), String> {
        match self {
            Wire::Varint(v) => f(v),
            Wire::Bytes(b) => {
                let mut r = Reader { buf: b, pos: 0 };
                while r.pos < b.len() {
                    f(r.varint()?);
                }
            }
            _ => return Err("unexpected wire type for an integer".into()),
        }
        Ok(())
    }
}

/// A minimal protobuf reader: enough for TensorProto and ModelProto's header fields.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or("truncated field")?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn field(&mut self) -> Result<Option<(u64, Wire<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(self.take(8)?.try_into().expect("8 bytes")),
            2 => {
                let len = self.varint()? as usize;
                Wire::Bytes(self.take(len)?)
            }
            5 => Wire::Fixed32(self.take(4)?.try_into().expect("4 bytes")),
            other => return Err(format!("wire type {other}")),
        };
        Ok(Some((key >> 3, value)))
    }
}
