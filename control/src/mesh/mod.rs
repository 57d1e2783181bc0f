//! The control plane (`ringmesh control`, docs/control.md) and the proxy's side of it.
//!
//! - [`model`]: the mesh file as desired state, its checks, and each node's rendered config;
//! - [`server`]: the API, discovery (static, DNS, registrations with a TTL) and the watches;
//! - [`etcd`]: the etcd client through which replicas share the state;
//! - [`agent`]: the proxy's watcher, which applies snapshots through the same path as a file
//!   reload, reports back, and keeps a cache on disk; [`client`] is how it reaches the control
//!   plane (TLS, verified), [`keep`] where it keeps its identity; [`link`] reports the node's
//!   traffic and endpoints and relays taps asked through the control plane;
//! - [`ca`]: the mesh CA.

pub mod agent;
pub mod ca;
pub mod client;
pub mod etcd;
pub mod keep;
pub mod link;
pub mod model;
pub mod server;

pub use server::{ApiTls, ControlOptions, ControlPlane, MeshSource, StoreOptions};
