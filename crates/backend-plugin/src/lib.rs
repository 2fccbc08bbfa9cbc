//! Accelerator plugins: shared libraries that implement the C ABI in `include/sluice_plugin.h`
//! (version [`ABI_VERSION`]) to run models on a device Sluice does not know (an FPGA card, say).
//!
//! [`PluginLibrary::open`] checks every symbol and the ABI version before anything is called, so a
//! wrong library is refused with an error naming what is missing; [`PluginBackend`] is one loaded
//! model behind the ordinary [`Backend`] trait, so plugin models get batching, admission, metrics
//! and both wire protocols like any other.
//!
//! This is the one crate where Sluice calls foreign code: every `unsafe` block says which part of
//! the header's contract makes it sound.
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(unsafe_code)]

mod config;

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use sluice_core::{Backend, BackendError, BackendInfo, DataType, Device, ModelSignature, Tensor, TensorData};

pub use config::{PluginConfig, describe};

/// The ABI version this host implements (`SLUICE_PLUGIN_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;

const OK: i32 = 0;
const INVALID_INPUT: i32 = 1;

/// `sluice_tensor` from the header.
#[repr(C)]
struct RawTensor {
    name: *const c_char,
    dtype: i32,
    rank: u32,
    shape: *const i64,
    data: *const c_void,
    byte_len: u64,
}

type AbiVersionFn = unsafe extern "C" fn() -> u32;
type LoadFn = unsafe extern "C" fn(*const c_char, *const c_char, *mut *mut c_void, *mut *mut c_char) -> i32;
type SignatureFn = unsafe extern "C" fn(*const c_void, *mut *mut c_char, *mut *mut c_char) -> i32;
type RunFn = unsafe extern "C" fn(
    *mut c_void,
    *const RawTensor,
    usize,
    *mut *mut RawTensor,
    *mut usize,
    *mut *mut c_char,
) -> i32;
type HealthFn = unsafe extern "C" fn(*const c_void, *mut *mut c_char) -> i32;
type FreeOutputsFn = unsafe extern "C" fn(*mut RawTensor, usize);
type FreeStringFn = unsafe extern "C" fn(*mut c_char);
type UnloadFn = unsafe extern "C" fn(*mut c_void);

/// The plugin's entry points, resolved once.
struct Api {
    load: LoadFn,
    signature: SignatureFn,
    run: RunFn,
    health: HealthFn,
    free_outputs: FreeOutputsFn,
    free_string: FreeStringFn,
    unload: UnloadFn,
}

/// An opened plugin library. Kept alive (in an `Arc`) by every model loaded from it, so the code
/// of a loaded model can never be unmapped under it.
pub struct PluginLibrary {
    path: PathBuf,
    api: Api,
    // Last field: dropped after everything that could call into it.
    _library: libloading::Library,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary").field("path", &self.path).finish_non_exhaustive()
    }
}

fn load_error(path: &Path, what: impl std::fmt::Display) -> BackendError {
    BackendError::Load(format!("plugin {}: {what}", path.display()))
}

impl PluginLibrary {
    /// Opens the library at `path`, resolves every symbol of the ABI and checks its version.
    pub fn open(path: &Path) -> Result<Arc<Self>, BackendError> {
        // SAFETY: opening a library runs its initialisers. That is the point of a plugin: the
        // operator names a library in the model config and trusts it like the server binary.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| load_error(path, e))?;
        // SAFETY (every `get` below): each symbol is looked up with the exact signature the header
        // declares for it; a library that exports the name with another signature breaks the ABI
        // it claims by returning ABI_VERSION.
        unsafe fn symbol<T: Copy>(library: &libloading::Library, path: &Path, name: &str) -> Result<T, BackendError> {
            // SAFETY: see above; the caller picks `T` from the header.
            let sym = unsafe { library.get::<T>(name.as_bytes()) };
            sym.map(|s| *s).map_err(|_| {
                load_error(path, format!("missing symbol {name} (not a Sluice plugin, or built for another ABI)"))
            })
        }
        // SAFETY: see `symbol`.
        let version: AbiVersionFn = unsafe { symbol(&library, path, "sluice_plugin_abi_version") }?;
        // SAFETY: takes no arguments and returns a number, per the header.
        let found = unsafe { version() };
        if found != ABI_VERSION {
            return Err(load_error(
                path,
                format!("implements plugin ABI version {found}, but this Sluice speaks version {ABI_VERSION}"),
            ));
        }
        // SAFETY: see `symbol`.
        let api = unsafe {
            Api {
                load: symbol(&library, path, "sluice_plugin_load")?,
                signature: symbol(&library, path, "sluice_plugin_signature")?,
                run: symbol(&library, path, "sluice_plugin_run")?,
                health: symbol(&library, path, "sluice_plugin_health")?,
                free_outputs: symbol(&library, path, "sluice_plugin_free_outputs")?,
                free_string: symbol(&library, path, "sluice_plugin_free_string")?,
                unload: symbol(&library, path, "sluice_plugin_unload")?,
            }
        };
        Ok(Arc::new(PluginLibrary { path: path.to_path_buf(), api, _library: library }))
    }

    /// Takes ownership of a plugin-allocated string: copies it and hands it back to the plugin.
    fn take_string(&self, s: *mut c_char) -> Option<String> {
        if s.is_null() {
            return None;
        }
        // SAFETY: the header says returned strings are NUL-terminated and stay valid until freed.
        let text = unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
        // SAFETY: `s` came from this plugin and is freed exactly once, here.
        unsafe { (self.api.free_string)(s) };
        Some(text)
    }

    fn failure(&self, status: i32, error: *mut c_char, call: &str) -> String {
        let message = self.take_string(error).unwrap_or_else(|| "no message".into());
        format!("plugin {} failed in {call} (status {status}): {message}", self.path.display())
    }
}

/// One model loaded by a plugin.
pub struct PluginBackend {
    library: Arc<PluginLibrary>,
    model: NonNull<c_void>,
    signature: ModelSignature,
    /// Output names as C strings are not needed; input names are, once per run.
    input_names: Vec<CString>,
}

// SAFETY: the header allows a model handle to be called from any thread, one thread at a time;
// `Backend::infer` takes `&mut self`, and `health` is only called by the owning worker.
unsafe impl Send for PluginBackend {}

impl std::fmt::Debug for PluginBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginBackend").field("library", &self.library.path).finish_non_exhaustive()
    }
}

fn dtype_code(dtype: DataType) -> i32 {
    match dtype {
        DataType::Bool => 0,
        DataType::U8 => 1,
        DataType::U16 => 2,
        DataType::U32 => 3,
        DataType::U64 => 4,
        DataType::I8 => 5,
        DataType::I16 => 6,
        DataType::I32 => 7,
        DataType::I64 => 8,
        DataType::F16 => 9,
        DataType::F32 => 10,
        DataType::F64 => 11,
        DataType::Bytes => 12,
    }
}

fn dtype_of(code: i32) -> Option<DataType> {
    Some(match code {
        0 => DataType::Bool,
        1 => DataType::U8,
        2 => DataType::U16,
        3 => DataType::U32,
        4 => DataType::U64,
        5 => DataType::I8,
        6 => DataType::I16,
        7 => DataType::I32,
        8 => DataType::I64,
        9 => DataType::F16,
        10 => DataType::F32,
        11 => DataType::F64,
        12 => DataType::Bytes,
        _ => return None,
    })
}

impl PluginBackend {
    /// Loads `artifact` with `options` (a JSON object) through `library`, and reads its signature.
    pub fn load(
        library: Arc<PluginLibrary>,
        artifact: &Path,
        options: &serde_json::Value,
    ) -> Result<Self, BackendError> {
        let path = &library.path;
        let artifact_c = CString::new(artifact.as_os_str().as_encoded_bytes())
            .map_err(|_| load_error(path, "the artifact path contains a NUL byte"))?;
        let options_c =
            CString::new(options.to_string()).map_err(|_| load_error(path, "options contain a NUL byte"))?;
        let mut model = ptr::null_mut();
        let mut error = ptr::null_mut();
        // SAFETY: both strings are NUL-terminated and outlive the call; the out-pointers point to
        // valid locals, as the header requires.
        let status = unsafe { (library.api.load)(artifact_c.as_ptr(), options_c.as_ptr(), &mut model, &mut error) };
        if status != OK {
            return Err(BackendError::Load(library.failure(status, error, "sluice_plugin_load")));
        }
        let model =
            NonNull::new(model).ok_or_else(|| load_error(path, "sluice_plugin_load succeeded without a model"))?;
        // From here the model is unloaded on every path, by Drop.
        let mut backend =
            PluginBackend { library, model, signature: ModelSignature::default(), input_names: Vec::new() };
        let mut json = ptr::null_mut();
        let mut error = ptr::null_mut();
        // SAFETY: `model` is a live handle from this library; out-pointers are valid locals.
        let status = unsafe { (backend.library.api.signature)(backend.model.as_ptr(), &mut json, &mut error) };
        if status != OK {
            return Err(BackendError::Load(backend.library.failure(status, error, "sluice_plugin_signature")));
        }
        let json = backend
            .library
            .take_string(json)
            .ok_or_else(|| load_error(&backend.library.path, "sluice_plugin_signature returned no JSON"))?;
        backend.signature = serde_json::from_str(&json)
            .map_err(|e| load_error(&backend.library.path, format!("unreadable signature {json}: {e}")))?;
        backend.input_names = backend
            .signature
            .inputs
            .iter()
            .map(|s| CString::new(s.name.as_str()))
            .collect::<Result<_, _>>()
            .map_err(|_| load_error(&backend.library.path, "an input name contains a NUL byte"))?;
        Ok(backend)
    }

    /// Copies the plugin's outputs into Sluice tensors.
    fn read_outputs(&self, raw: &[RawTensor]) -> Result<Vec<Tensor>, BackendError> {
        let bad = |what: String| BackendError::Inference(format!("plugin {}: {what}", self.library.path.display()));
        raw.iter()
            .map(|t| {
                let dtype = dtype_of(t.dtype).ok_or_else(|| bad(format!("unknown output dtype {}", t.dtype)))?;
                if t.name.is_null() || (t.rank > 0 && t.shape.is_null()) || (t.byte_len > 0 && t.data.is_null()) {
                    return Err(bad("an output has a null pointer".into()));
                }
                // SAFETY: non-null (checked); the header says name is NUL-terminated, shape has
                // `rank` entries and data `byte_len` bytes, all valid until freed.
                let (name, shape, bytes) = unsafe {
                    (
                        CStr::from_ptr(t.name).to_string_lossy().into_owned(),
                        if t.rank == 0 { &[][..] } else { std::slice::from_raw_parts(t.shape, t.rank as usize) },
                        if t.byte_len == 0 {
                            &[][..]
                        } else {
                            std::slice::from_raw_parts(t.data.cast::<u8>(), t.byte_len as usize)
                        },
                    )
                };
                let data = TensorData::from_le_bytes(dtype, bytes).map_err(|e| bad(format!("output {name}: {e}")))?;
                Tensor::new(name.clone(), shape.to_vec(), data).map_err(|e| bad(format!("output {name}: {e}")))
            })
            .collect()
    }
}

impl Backend for PluginBackend {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn info(&self) -> BackendInfo {
        BackendInfo { platform: "plugin", device: Device::Cpu }
    }

    fn infer(&mut self, inputs: &[Tensor], outputs: &[usize]) -> Result<Vec<Tensor>, BackendError> {
        // Owned little-endian bytes of each input; the plugin reads them during the call.
        let bytes: Vec<Vec<u8>> = inputs
            .iter()
            .map(|t| {
                let mut out = Vec::new();
                t.data.write_le_bytes(&mut out);
                out
            })
            .collect();
        let raw: Vec<RawTensor> = inputs
            .iter()
            .zip(&bytes)
            .zip(&self.input_names)
            .map(|((t, b), name)| RawTensor {
                name: name.as_ptr(),
                dtype: dtype_code(t.dtype()),
                rank: t.shape.len() as u32,
                shape: t.shape.as_ptr(),
                data: b.as_ptr().cast(),
                byte_len: b.len() as u64,
            })
            .collect();
        let mut out = ptr::null_mut();
        let mut n_out = 0usize;
        let mut error = ptr::null_mut();
        // SAFETY: `raw` and everything it points to (`bytes`, names, shapes) live until the call
        // returns; the handle is live and used by this thread only (`&mut self`).
        let status = unsafe {
            (self.library.api.run)(self.model.as_ptr(), raw.as_ptr(), raw.len(), &mut out, &mut n_out, &mut error)
        };
        if status != OK {
            let message = self.library.failure(status, error, "sluice_plugin_run");
            return Err(if status == INVALID_INPUT {
                BackendError::InvalidInput(message)
            } else {
                BackendError::Inference(message)
            });
        }
        let all = if out.is_null() || n_out == 0 {
            Vec::new()
        } else {
            // SAFETY: on success the plugin returned `n_out` tensors at `out`, valid until freed.
            let slice = unsafe { std::slice::from_raw_parts(out, n_out) };
            let copied = self.read_outputs(slice);
            // SAFETY: `out` came from this plugin's run and is freed exactly once, after copying.
            unsafe { (self.library.api.free_outputs)(out, n_out) };
            copied?
        };
        if all.len() != self.signature.outputs.len() {
            return Err(BackendError::Inference(format!(
                "plugin {} returned {} outputs, its signature has {}",
                self.library.path.display(),
                all.len(),
                self.signature.outputs.len()
            )));
        }
        let mut all: Vec<Option<Tensor>> = all.into_iter().map(Some).collect();
        outputs
            .iter()
            .map(|&i| {
                all.get_mut(i)
                    .and_then(Option::take)
                    .ok_or_else(|| BackendError::Inference(format!("output {i} asked twice")))
            })
            .collect()
    }

    fn health(&self) -> Result<(), BackendError> {
        let mut error = ptr::null_mut();
        // SAFETY: live handle; out-pointer is a valid local.
        let status = unsafe { (self.library.api.health)(self.model.as_ptr(), &mut error) };
        if status == OK {
            Ok(())
        } else {
            Err(BackendError::Inference(self.library.failure(status, error, "sluice_plugin_health")))
        }
    }
}

impl Drop for PluginBackend {
    fn drop(&mut self) {
        // SAFETY: the handle came from this library's load and is unloaded exactly once; the
        // library outlives it through the Arc.
        unsafe { (self.library.api.unload)(self.model.as_ptr()) };
    }
}
