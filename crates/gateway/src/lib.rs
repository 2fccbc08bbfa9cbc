//! The gateway's routing decisions. For now: how an endpoint's traffic is split across its
//! versions (design.md, "Endpoint and version semantics"). Upstream pools, auth and hot reload
//! build on this. By design this crate depends on no model or engine crate.
#![forbid(unsafe_code)]

pub mod split;
