//! What the control thread shares with the threads that talk to it (the admin API, the agent
//! fed by a control plane): the messages it takes, and the counters it keeps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Counters the control thread keeps and the admin API reads.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub version: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_error: AtomicU64,
    pub applied_at_unix_ms: AtomicU64,
    pub ready: AtomicBool,
    pub workers: AtomicU64,
    /// Fed by a control plane.
    pub control_mode: AtomicBool,
    /// Version of the control plane's snapshot in force.
    pub control_version: AtomicU64,
    /// Whether the last exchange with the control plane worked.
    pub control_connected: AtomicBool,
    /// When the control plane last answered.
    pub control_contact_unix_ms: AtomicU64,
    /// Whether the kernel shortcut is in force, for sidecars.
    pub shortcut: crate::accelerate::probe::Tracker,
}

/// What the control thread is asked.
pub(crate) enum ControlMsg {
    /// Reload the config file (or re-apply the text); answer with the new version or errors.
    Reload(Option<flume::Sender<Result<u64, Vec<String>>>>),
    /// Apply this config text (a control plane's snapshot).
    Apply {
        text: String,
        reply: flume::Sender<Result<u64, Vec<String>>>,
    },
    /// The config in force.
    Current(flume::Sender<Current>),
    /// Drain every worker, then stop.
    Drain(flume::Sender<bool>),
}

/// The config in force, as the admin API shows it.
#[derive(Debug, Clone)]
pub struct Current {
    /// Its version.
    pub version: u64,
    /// The config as JSON.
    pub json: Arc<str>,
    /// Where each listener is bound, by name.
    pub listeners: Vec<(String, SocketAddr)>,
}
