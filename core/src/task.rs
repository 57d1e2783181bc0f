//! Tasks that must not take the worker down with them.

use std::future::Future;

pin_project_lite::pin_project! {
    /// Runs one connection (or HTTP/2 stream); a panic in it (a bug) ends that connection, not
    /// the worker and every other connection on it. A plain wrapper, so the task is no larger than the
    /// connection's own future.
    pub(crate) struct Contained<F> {
        #[pin]
        conn: F,
    }
}

pub(crate) fn contained<F: Future<Output = ()>>(conn: F) -> Contained<F> {
    Contained { conn }
}

impl<F: Future<Output = ()>> Future for Contained<F> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let conn = self.project().conn;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.poll(cx))) {
            Ok(p) => p,
            Err(_) => {
                tracing::error!("a connection task panicked; it is closed, the worker goes on");
                std::task::Poll::Ready(())
            }
        }
    }
}
