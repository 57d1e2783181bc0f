//! ringmesh control side: the config model and its compiler, the runtime that feeds workers new
//! snapshots, and the admin API. The `ringmesh` binary (src/main.rs) is a thin layer over
//! [`runtime::Proxy`].

pub mod accelerate;
pub mod admin;
pub mod api_guard;
pub mod compile;
mod compile_sidecar;
pub mod config;
pub mod ctl;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub mod http;
pub mod init;
pub mod mesh;
pub mod runtime;
pub(crate) mod shared;

pub use runtime::{ConfigSource, Proxy, ProxyOptions};
