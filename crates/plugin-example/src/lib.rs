//! An example accelerator plugin for Sluice, written against `crates/backend-plugin/include/
//! sluice_plugin.h` (ABI version 1). It emulates what an FPGA card does with a small MLP: weights
//! and activations in 16-bit fixed point (Q`frac_bits`), 64-bit accumulators, saturation instead
//! of overflow; FP32 in and out.
//!
//! The artifact is a JSON file:
//! `{"input": "x", "output": "y", "layers": [{"weights": [[w, ...], ...], "bias": [b, ...], "relu": true}]}`
//! with `weights` as `[outputs][inputs]`. Options (the model config's `plugin.options`):
//! `frac_bits` (1-14, default 8) and `fault` (`"load"`, `"run"` or `"health"`), which makes that
//! call fail the way a broken device would, for testing how Sluice copes. The environment variable
//! `SLUICE_EXAMPLE_PLUGIN_ABI` overrides the reported ABI version, for the same reason.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

const OK: i32 = 0;
const INVALID_INPUT: i32 = 1;
const ERROR: i32 = 2;
const FP32: i32 = 10;

/// `sluice_tensor` from the header.
#[repr(C)]
pub struct RawTensor {
    name: *const c_char,
    dtype: i32,
    rank: u32,
    shape: *const i64,
    data: *const c_void,
    byte_len: u64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Artifact {
    input: String,
    output: String,
    layers: Vec<LayerFile>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerFile {
    weights: Vec<Vec<f64>>,
    bias: Vec<f64>,
    #[serde(default)]
    relu: bool,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {
    frac_bits: Option<u32>,
    fault: Option<String>,
}

/// A layer as the device holds it: quantised weights.
struct Layer {
    inputs: usize,
    outputs: usize,
    /// Row-major `[outputs][inputs]`.
    weights: Vec<i16>,
    bias: Vec<i16>,
    relu: bool,
}

struct Model {
    input: CString,
    output: CString,
    layers: Vec<Layer>,
    frac_bits: u32,
    fault: Option<String>,
}

fn quantise(v: f64, frac_bits: u32) -> i16 {
    (v * f64::from(1u32 << frac_bits)).round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
}

impl Model {
    fn load(artifact: &str, options: &str) -> Result<Model, String> {
        let options: Options = serde_json::from_str(options).map_err(|e| format!("bad options: {e}"))?;
        let frac_bits = options.frac_bits.unwrap_or(8);
        if !(1..=14).contains(&frac_bits) {
            return Err(format!("frac_bits must be 1-14, got {frac_bits}"));
        }
        if options.fault.as_deref() == Some("load") {
            return Err("device did not respond while loading the bitstream (emulated fault)".into());
        }
        let text = std::fs::read_to_string(artifact).map_err(|e| format!("cannot read {artifact}: {e}"))?;
        let file: Artifact = serde_json::from_str(&text).map_err(|e| format!("{artifact} is not a model file: {e}"))?;
        if file.layers.is_empty() {
            return Err("the model has no layers".into());
        }
        let mut layers = Vec::new();
        let mut width = file.layers[0].weights.first().map_or(0, Vec::len);
        for (i, l) in file.layers.iter().enumerate() {
            if l.weights.is_empty() || l.weights.iter().any(|row| row.len() != width) || l.bias.len() != l.weights.len()
            {
                return Err(format!("layer {i}: weights must be [outputs][{width}] and bias [outputs]"));
            }
            layers.push(Layer {
                inputs: width,
                outputs: l.weights.len(),
                weights: l.weights.iter().flatten().map(|&w| quantise(w, frac_bits)).collect(),
                bias: l.bias.iter().map(|&b| quantise(b, frac_bits)).collect(),
                relu: l.relu,
            });
            width = l.weights.len();
        }
        Ok(Model {
            input: CString::new(file.input).map_err(|_| "bad input name")?,
            output: CString::new(file.output).map_err(|_| "bad output name")?,
            layers,
            frac_bits,
            fault: options.fault,
        })
    }

    fn signature(&self) -> String {
        let (n_in, n_out) = (self.layers[0].inputs, self.layers[self.layers.len() - 1].outputs);
        serde_json::json!({
            "inputs": [{ "name": self.input.to_string_lossy(), "datatype": "FP32", "shape": [-1, n_in] }],
            "outputs": [{ "name": self.output.to_string_lossy(), "datatype": "FP32", "shape": [-1, n_out] }],
        })
        .to_string()
    }

    /// One batch through the fixed-point datapath.
    fn run(&self, rows: usize, input: &[f32]) -> Vec<f32> {
        let mut acts: Vec<i16> = input.iter().map(|&v| quantise(f64::from(v), self.frac_bits)).collect();
        for layer in &self.layers {
            let mut next = Vec::with_capacity(rows * layer.outputs);
            for r in 0..rows {
                let x = &acts[r * layer.inputs..(r + 1) * layer.inputs];
                for o in 0..layer.outputs {
                    let w = &layer.weights[o * layer.inputs..(o + 1) * layer.inputs];
                    let acc: i64 = x.iter().zip(w).map(|(&a, &b)| i64::from(a) * i64::from(b)).sum();
                    let v = (acc >> self.frac_bits) + i64::from(layer.bias[o]);
                    let v = v.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16;
                    next.push(if layer.relu { v.max(0) } else { v });
                }
            }
            acts = next;
        }
        let scale = 1.0 / (1u32 << self.frac_bits) as f32;
        acts.iter().map(|&v| f32::from(v) * scale).collect()
    }
}

fn set_error(error: *mut *mut c_char, message: &str) {
    if !error.is_null() {
        let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: the host passes a valid out-pointer (or null, checked above).
        unsafe { *error = c.into_raw() };
    }
}

/// Runs `f`, turning a panic into SLUICE_ERROR: a panic must not cross the C boundary.
fn guarded(error: *mut *mut c_char, f: impl FnOnce() -> Result<(), (i32, String)>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => OK,
        Ok(Err((status, message))) => {
            set_error(error, &message);
            status
        }
        Err(_) => {
            set_error(error, "the plugin panicked");
            ERROR
        }
    }
}

/// # Safety
/// Takes no arguments.
#[unsafe(no_mangle)]
pub extern "C" fn sluice_plugin_abi_version() -> u32 {
    std::env::var("SLUICE_EXAMPLE_PLUGIN_ABI").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

/// # Safety
/// Per `sluice_plugin.h`: NUL-terminated strings, valid out-pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sluice_plugin_load(
    artifact: *const c_char,
    options: *const c_char,
    model: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32 {
    guarded(error, || {
        if artifact.is_null() || options.is_null() || model.is_null() {
            return Err((ERROR, "null argument".into()));
        }
        // SAFETY: non-null, NUL-terminated per the header.
        let (artifact, options) = unsafe { (CStr::from_ptr(artifact), CStr::from_ptr(options)) };
        let loaded = Model::load(&artifact.to_string_lossy(), &options.to_string_lossy()).map_err(|e| (ERROR, e))?;
        // SAFETY: valid out-pointer per the header.
        unsafe { *model = Box::into_raw(Box::new(loaded)).cast() };
        Ok(())
    })
}

/// # Safety
/// `model` from `sluice_plugin_load`; valid out-pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sluice_plugin_signature(
    model: *const c_void,
    json: *mut *mut c_char,
    error: *mut *mut c_char,
) -> i32 {
    guarded(error, || {
        if model.is_null() || json.is_null() {
            return Err((ERROR, "null argument".into()));
        }
        // SAFETY: a live handle from `sluice_plugin_load`.
        let model = unsafe { &*model.cast::<Model>() };
        let text = CString::new(model.signature()).map_err(|_| (ERROR, "signature has a NUL byte".to_owned()))?;
        // SAFETY: valid out-pointer per the header.
        unsafe { *json = text.into_raw() };
        Ok(())
    })
}

/// # Safety
/// `model` from `sluice_plugin_load`, used by one thread at a time; `inputs` points to `n_inputs`
/// tensors valid for the call; valid out-pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sluice_plugin_run(
    model: *mut c_void,
    inputs: *const RawTensor,
    n_inputs: usize,
    outputs: *mut *mut RawTensor,
    n_outputs: *mut usize,
    error: *mut *mut c_char,
) -> i32 {
    guarded(error, || {
        if model.is_null() || outputs.is_null() || n_outputs.is_null() || (n_inputs > 0 && inputs.is_null()) {
            return Err((ERROR, "null argument".into()));
        }
        // SAFETY: a live handle, used by this thread only (header contract).
        let model = unsafe { &*model.cast::<Model>() };
        if model.fault.as_deref() == Some("run") {
            return Err((ERROR, "DMA transfer timed out (emulated fault)".into()));
        }
        if n_inputs != 1 {
            return Err((INVALID_INPUT, format!("expected 1 input, got {n_inputs}")));
        }
        // SAFETY: `inputs` points to `n_inputs` (1) valid tensors.
        let input = unsafe { &*inputs };
        let width = model.layers[0].inputs;
        // SAFETY: `shape` has `rank` entries per the header.
        let shape = if input.rank == 0 {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(input.shape, input.rank as usize) }
        };
        if input.dtype != FP32 || shape.len() != 2 || shape[1] != width as i64 || shape[0] < 0 {
            return Err((
                INVALID_INPUT,
                format!("expected FP32 [batch, {width}], got dtype {} shape {shape:?}", input.dtype),
            ));
        }
        let rows = shape[0] as usize;
        if input.byte_len as usize != rows * width * 4 {
            return Err((INVALID_INPUT, "data length does not match the shape".into()));
        }
        // SAFETY: `data` holds `byte_len` bytes; they are copied, so alignment does not matter.
        let bytes = if rows == 0 {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(input.data.cast::<u8>(), input.byte_len as usize) }
        };
        let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let result = model.run(rows, &values);
        let out_width = model.layers[model.layers.len() - 1].outputs;
        let data: Box<[u8]> = result.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape: Box<[i64]> = Box::new([rows as i64, out_width as i64]);
        let tensor = RawTensor {
            name: CString::new(model.output.as_bytes()).map_err(|_| (ERROR, "name".to_owned()))?.into_raw(),
            dtype: FP32,
            rank: 2,
            byte_len: data.len() as u64,
            shape: Box::into_raw(shape).cast::<i64>(),
            data: Box::into_raw(data).cast::<u8>().cast(),
        };
        let all: Box<[RawTensor]> = Box::new([tensor]);
        // SAFETY: valid out-pointers per the header.
        unsafe {
            *n_outputs = all.len();
            *outputs = Box::into_raw(all).cast::<RawTensor>();
        }
        Ok(())
    })
}

/// # Safety
/// `model` from `sluice_plugin_load`; valid out-pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sluice_plugin_health(model: *const c_void, error: *mut *mut c_char) -> i32 {
    guarded(error, || {
        if model.is_null() {
            return Err((ERROR, "null argument".into()));
        }
        // SAFETY: a live handle.
        let model = unsafe { &*model.cast::<Model>() };
        if model.fault.as_deref() == Some("health") {
            return Err((ERROR, "device temperature sensor reports a fault (emulated)".into()));
        }
        Ok(())
    })
}

/// # Safety
/// `outputs`/`n_outputs` exactly as returned by `sluice_plugin_run`, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sluice_plugin_free_outputs(outputs: *mut RawTensor, n_outputs: usize) {
    if outputs.is_null() {
        return;
    }
    // SAFETY: rebuilds exactly the boxes `sluice_plugin_run` leaked, with their lengths.
    unsafe {
        let all = Box::from_raw(ptr::slice_from_raw_parts_mut(outputs, n_outputs));
        for t in all.iter() {
            drop(CString::from_raw(t.name.cast_mut()));
            drop(Box::from_raw(ptr::slice_from_raw_parts_mut(t.shape.cast_mut(), t.rank as usize)));
            drop(Box::from_raw(ptr::slice_from_raw_parts_mut(t.data.cast::<u8>().cast_mut(), t.byte_len as usize)));
        }
    }
}

/// # Safety
/// A string this plugin returned, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sluice_plugin_free_string(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: came from `CString::into_raw` in this plugin.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// # Safety
/// A handle from `sluice_plugin_load`, unloaded once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sluice_plugin_unload(model: *mut c_void) {
    if !model.is_null() {
        // SAFETY: came from `Box::into_raw` in `sluice_plugin_load`.
        drop(unsafe { Box::from_raw(model.cast::<Model>()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_tracks_floating_point() {
        let dir = std::env::temp_dir().join(format!("sluice-plugin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("m.json");
        std::fs::write(&path, r#"{"input":"x","output":"y","layers":[{"weights":[[0.5,-0.25],[1.0,0.75]],"bias":[0.1,-0.2],"relu":false}]}"#)
            .expect("write");
        let model = Model::load(path.to_str().expect("utf8"), "{}").expect("load");
        let out = model.run(1, &[1.0, 2.0]);
        // 0.5 - 0.5 + 0.1 = 0.1; 1.0 + 1.5 - 0.2 = 2.3, within a few 1/256 steps.
        assert!((out[0] - 0.1).abs() < 0.02 && (out[1] - 2.3).abs() < 0.02, "{out:?}");
        assert!(Model::load(path.to_str().expect("utf8"), r#"{"frac_bits": 20}"#).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
