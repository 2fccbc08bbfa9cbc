//! The vocabulary every other Sluice crate speaks: tensor datatypes and buffers, model signatures
//! (names, datatypes and shapes of inputs and outputs), input validation against a signature, and
//! the [`Backend`] trait that an inference engine implements. No async runtime, no HTTP, no engine
//! crates: backends and the server both depend on this crate, never on each other.
#![forbid(unsafe_code)]

mod backend;
mod deploy;
mod dtype;
mod signature;
mod tensor;
pub mod time;

pub use backend::{Backend, BackendError, BackendInfo, Device};
pub use deploy::{
    DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_QUEUED_REQUESTS, DeployConfigError, DeploymentConfig, DeviceFallback,
    NoEffect,
};
pub use dtype::DataType;
pub use signature::{ModelSignature, TensorSpec, ValidationError};
pub use tensor::{Tensor, TensorData, TensorError};
