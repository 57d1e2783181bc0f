//! Giving the allocator's free memory back to the system, off the workers.
//!
//! After a burst, glibc keeps what the burst freed in its arenas; `malloc_trim` returns it, but
//! walks every arena and takes a millisecond or two on a heap of a few tens of MiB (measured:
//! 0.5-1.6 ms at 20-25 MiB). A worker does not stall its connections for that: it asks this
//! thread, which trims while the worker goes on (workers allocate next to nothing per
//! request, so they seldom wait for an arena the trim holds).

use std::sync::OnceLock;

static TRIMMER: OnceLock<Option<flume::Sender<()>>> = OnceLock::new();

/// Starts the trimming thread, once per process.
pub fn start() {
    TRIMMER.get_or_init(|| {
        // One request waiting is enough: a trim returns everything free at the time it runs.
        let (tx, rx) = flume::bounded::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("ringmesh-trim".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    crate::sys::release_free_memory();
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "no memory-trimming thread: trims run on the workers");
                None
            }
        }
    });
}

/// Asks for the allocator's free memory to be given back: by the trimming thread when it runs
/// (never blocking, a request already waiting covers this one), else here.
pub fn request() {
    match TRIMMER.get() {
        Some(Some(tx)) => {
            let _ = tx.try_send(());
        }
        _ => crate::sys::release_free_memory(),
    }
}
