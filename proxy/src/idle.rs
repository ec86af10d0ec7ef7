//! Idle tracking for the HTTP/2 connections clients open: which streams are open, and
//! a future that resolves once none has been for the idle timeout. hyper's HTTP/2
//! server has no idle timeout of its own, and an idle connection holds a connection
//! slot for as long as its client likes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

/// The streams open on one connection.
#[derive(Debug, Default)]
pub struct Streams {
    open: AtomicUsize,
    changed: Notify,
}

/// One open stream: from its request's arrival until its response body ends or is
/// dropped.
#[derive(Debug)]
pub struct Open(Arc<Streams>);

impl Streams {
    /// Marks a stream open until the returned guard drops.
    pub fn open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        Open(self.clone())
    }

    /// Resolves once no stream has been open for `timeout` without a break.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the count is read, so that no change is missed.
            changed.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                tokio::select! {
                    () = tokio::time::sleep(timeout) => return,
                    () = changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its stream counted as open until it ends.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        open: Option<Open>,
    }
}

impl<B> Tracked<B> {
    /// Wraps `inner`, keeping `open` until the body ends or is dropped.
    pub fn new(inner: B, open: Open) -> Self {
        Self {
            inner,
            open: Some(open),
        }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = frame {
            this.open.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_last_stream_closed_for_the_timeout() {
        let streams = Arc::new(Streams::default());
        let open = streams.open();
        let idle = tokio::spawn({
            let streams = streams.clone();
            async move {
                streams.idle(Duration::from_secs(10)).await;
                tokio::time::Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!idle.is_finished(), "a stream is open");
        let closed_at = tokio::time::Instant::now();
        drop(open);
        let idle_at = idle.await.expect("join");
        assert_eq!(idle_at - closed_at, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_restarts_the_timer() {
        let streams = Arc::new(Streams::default());
        let start = tokio::time::Instant::now();
        let idle = tokio::spawn({
            let streams = streams.clone();
            async move {
                streams.idle(Duration::from_secs(10)).await;
                tokio::time::Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        drop(streams.open());
        assert_eq!(idle.await.expect("join") - start, Duration::from_secs(16));
    }
}
