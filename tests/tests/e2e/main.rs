//! End-to-end tests of the scoring server: real HTTP on 127.0.0.1:0, real ONNX Runtime sessions,
//! the bundled models. One test binary, one module per area.

mod batching;
mod binary;
mod collect;
mod errors;
mod limits;
mod oip;
mod openapi;
mod score;
mod strings;
