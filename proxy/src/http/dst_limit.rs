//! Caps the requests in flight to one destination, so that a hung backend gets 503s of
//! its own instead of holding every slot of its direction.

use crate::fasthash::SeededMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::body::BoxBody;
use crate::error::{BoxError, ProxyError};

/// What a request counts against: its destination, as each direction names it.
pub trait DstKey {
    /// The destination `req` is for.
    fn key<B>(&self, req: &Request<B>) -> Box<str>;
}

/// Requests in flight per destination; a destination with none has no entry, so the
/// map is never larger than the number of requests in flight.
type InFlight = Arc<Mutex<SeededMap<Box<str>, usize>>>;

/// Makes [`DstLimit`] services that share one count.
#[derive(Clone, Debug)]
pub struct DstLimitLayer<K> {
    max: usize,
    key: K,
    in_flight: InFlight,
}

impl<K> DstLimitLayer<K> {
    /// At most `max` requests in flight to each destination, as `key` names them.
    pub fn new(max: usize, key: K) -> Self {
        Self {
            max,
            key,
            in_flight: InFlight::default(),
        }
    }
}

impl<S, K: Clone> Layer<S> for DstLimitLayer<K> {
    type Service = DstLimit<S, K>;

    fn layer(&self, inner: S) -> DstLimit<S, K> {
        DstLimit {
            inner,
            max: self.max,
            key: self.key.clone(),
            in_flight: self.in_flight.clone(),
        }
    }
}

/// Refuses a request whose destination already has its share in flight.
#[derive(Clone, Debug)]
pub struct DstLimit<S, K> {
    inner: S,
    max: usize,
    key: K,
    in_flight: InFlight,
}

/// A request's slot in its destination's share; given back when dropped.
struct DstSlot {
    in_flight: InFlight,
    key: Box<str>,
}

impl Drop for DstSlot {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl<S, K, B> Service<Request<B>> for DstLimit<S, K>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    K: DstKey,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<Response<BoxBody>, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let key = self.key.key(&req);
        {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match map.get_mut(&key) {
                Some(n) if *n >= self.max => {
                    let e = ProxyError::DestinationOverloaded(key.into());
                    return Box::pin(std::future::ready(Err(e.into())));
                }
                Some(n) => *n += 1,
                None => {
                    map.insert(key.clone(), 1);
                }
            }
        }
        let slot = DstSlot {
            in_flight: self.in_flight.clone(),
            key,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await.map_err(Into::into);
            drop(slot);
            rsp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use http::header;
    use tower::ServiceExt;

    /// Destinations by `Host`, case-insensitively.
    #[derive(Clone)]
    struct ByHost;

    impl DstKey for ByHost {
        fn key<B>(&self, req: &Request<B>) -> Box<str> {
            crate::http::request_authority(req)
                .unwrap_or_default()
                .to_ascii_lowercase()
                .into()
        }
    }

    #[tokio::test]
    async fn one_destination_holds_at_most_its_share() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<BoxBody>>();
        let mut limit = DstLimitLayer::new(2, ByHost).layer(mock);
        let req = |host: &str| {
            Request::get("/")
                .header("host", host)
                .body(())
                .expect("req")
        };
        handle.allow(10);
        let first = limit.ready().await.expect("ready").call(req("hung:80"));
        let second = limit.ready().await.expect("ready").call(req("HUNG:80"));
        let third = limit.ready().await.expect("ready").call(req("hung:80"));
        let e = third.await.expect_err("over the share");
        assert_eq!(e.to_string(), "too many requests in flight to hung:80");
        // Another destination is not affected.
        let other = tokio::spawn(limit.ready().await.expect("ready").call(req("other:80")));
        for _ in 0..3 {
            let (r, send) = handle.next_request().await.expect("request");
            let status = if r.headers()[header::HOST] == "other:80" {
                200
            } else {
                504
            };
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(body::empty())
                    .expect("rsp"),
            );
        }
        assert_eq!(other.await.expect("join").expect("other").status(), 200);
        assert_eq!(first.await.expect("first").status(), 504);
        drop(second);
        // Both slots are back once the requests ended (or were dropped).
        assert!(limit.in_flight.lock().expect("lock").is_empty());
        let again = tokio::spawn(limit.ready().await.expect("ready").call(req("hung:80")));
        let (_, send) = handle.next_request().await.expect("request");
        send.send_response(Response::new(body::empty()));
        assert_eq!(again.await.expect("join").expect("again").status(), 200);
    }
}
