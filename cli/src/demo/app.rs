//! The demo application's workloads, run as `mesh demo-app ROLE`: a web front end that
//! calls `books` (HTTP/1) and `authors` (gRPC) through its proxy, the two `books`
//! versions with a flaky and a slow route, `authors`, and a traffic generator.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod pb {
    tonic::include_proto!("mesh.demo");
}

/// The service names the workloads call, in the demo's namespace.
pub const BOOKS: &str = "books.demo.svc.cluster.local";
/// The books replicas behind the Gateway API route, as web calls them.
pub const BOOKS_API: &str = "books-api.demo.svc.cluster.local";
/// The authors service.
pub const AUTHORS: &str = "authors.demo.svc.cluster.local";
/// The front end.
pub const WEB: &str = "web.demo.svc.cluster.local";

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp
}

/// Serves `handler` over HTTP/1 on `addr` forever.
async fn serve<F, Fut>(addr: SocketAddr, handler: F) -> anyhow::Result<()>
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `books`: `/books` answers, `/books/flaky` fails 30% of the time, `/books/slow`
/// takes 50–350 ms. With `fail_cycle`, every request fails (500) during the last third
/// of each cycle: a replica that keeps going bad and recovering.
pub async fn books(
    addr: SocketAddr,
    version: String,
    fail_cycle: Option<Duration>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    serve(addr, move |req: Request<hyper::body::Incoming>| {
        let version = version.clone();
        let failing = fail_cycle.is_some_and(|cycle| {
            let cycle = cycle.as_millis().max(3);
            started.elapsed().as_millis() % cycle >= cycle * 2 / 3
        });
        async move {
            if failing {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "replica failing\n");
            }
            match req.uri().path() {
                "/books" => text(StatusCode::OK, format!("books {version}: Dune, Solaris\n")),
                "/books/flaky" if fastrand::u8(0..10) < 3 => {
                    text(StatusCode::INTERNAL_SERVER_ERROR, "flaky: failed\n")
                }
                "/books/flaky" => text(StatusCode::OK, format!("books {version}: flaky ok\n")),
                "/books/slow" => {
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(50..350))).await;
                    text(StatusCode::OK, format!("books {version}: slow ok\n"))
                }
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            }
        }
    })
    .await
}

#[derive(Clone, Copy, Default)]
struct Authors;

#[tonic::async_trait]
impl pb::authors_server::Authors for Authors {
    async fn get(
        &self,
        req: tonic::Request<pb::AuthorRequest>,
    ) -> Result<tonic::Response<pb::AuthorReply>, tonic::Status> {
        let name = match req.into_inner().book.as_str() {
            "Dune" => "Frank Herbert",
            "Solaris" => "Stanisław Lem",
            _ => "unknown",
        };
        Ok(tonic::Response::new(pb::AuthorReply { name: name.into() }))
    }
}

/// `authors`: a gRPC service.
pub async fn authors(addr: SocketAddr) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(pb::authors_server::AuthorsServer::new(Authors))
        .serve(addr)
        .await
        .context("authors server failed")
}

type ProxyClient = Client<ProxyConnector, Empty<Bytes>>;

/// A client that sends every request to the app's proxy (as apps in a pod do after
/// iptables; here the proxy routes by the `Host` header).
fn client(proxy: SocketAddr) -> ProxyClient {
    let mut inner = HttpConnector::new();
    inner.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(ProxyConnector { proxy, inner })
}

/// GET `path` from `authority` through the app's proxy, with `headers`: the status.
async fn get(
    client: &ProxyClient,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> StatusCode {
    let Ok(uri) = format!("http://{authority}{path}").parse::<http::Uri>() else {
        return StatusCode::BAD_REQUEST;
    };
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri;
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) else {
            return StatusCode::BAD_REQUEST;
        };
        req.headers_mut().insert(name, value);
    }
    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(rsp)) => {
            let status = rsp.status();
            let _ = rsp.into_body().collect().await;
            status
        }
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// The headers an instrumented app passes from the request it serves to the requests
/// it makes, so that the proxies' spans join one trace.
const TRACE_HEADERS: [&str; 9] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-request-id",
];

/// `web`: `/` calls books and authors, `/flaky` and `/slow` call those books routes;
/// `/api` calls books-api, `/canary` too with `x-canary: true`. It passes the trace
/// context on, as instrumented apps do.
pub async fn web(addr: SocketAddr, proxy: SocketAddr) -> anyhow::Result<()> {
    let http = client(proxy);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))?
        .origin(format!("http://{AUTHORS}:80").parse()?)
        .connect_lazy();
    let authors = pb::authors_client::AuthorsClient::new(channel);
    serve(addr, move |req: Request<hyper::body::Incoming>| {
        let (http, mut authors) = (http.clone(), authors.clone());
        async move {
            let context: Vec<(&str, String)> = TRACE_HEADERS
                .iter()
                .filter_map(|h| Some((*h, req.headers().get(*h)?.to_str().ok()?.to_owned())))
                .collect();
            let (service, path, extra): (&str, &str, &[(&str, &str)]) = match req.uri().path() {
                "/" => (BOOKS, "/books", &[]),
                "/flaky" => (BOOKS, "/books/flaky", &[]),
                "/slow" => (BOOKS, "/books/slow", &[]),
                "/api" => (BOOKS_API, "/books", &[]),
                "/canary" => (BOOKS_API, "/books", &[("x-canary", "true")]),
                _ => return text(StatusCode::NOT_FOUND, "not found\n"),
            };
            let headers: Vec<(&str, &str)> = extra
                .iter()
                .copied()
                .chain(context.iter().map(|(k, v)| (*k, v.as_str())))
                .collect();
            let books = get(&http, &format!("{service}:80"), path, &headers).await;
            if !books.is_success() {
                return text(StatusCode::BAD_GATEWAY, format!("books answered {books}\n"));
            }
            if path != "/books" || service != BOOKS {
                return text(StatusCode::OK, "ok\n");
            }
            let mut call = tonic::Request::new(pb::AuthorRequest {
                book: "Dune".into(),
            });
            for (k, v) in &context {
                if let Ok(v) = v.parse() {
                    call.metadata_mut().insert(*k, v);
                }
            }
            match authors.get(call).await {
                Ok(a) => text(StatusCode::OK, format!("Dune by {}\n", a.into_inner().name)),
                Err(status) => text(
                    StatusCode::BAD_GATEWAY,
                    format!("authors failed: {}\n", status.message()),
                ),
            }
        }
    })
    .await
}

/// `traffic`: calls web at about `rps` requests a second, mostly `/`, some `/flaky` and
/// `/slow`, forever.
pub async fn traffic(proxy: SocketAddr, rps: u32) -> anyhow::Result<()> {
    let http = client(proxy);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rps.max(1));
    loop {
        tick.tick().await;
        let path = match fastrand::u8(0..40) {
            0..24 => "/",
            24..34 => "/flaky",
            34..38 => "/slow",
            38 => "/api",
            _ => "/canary",
        };
        let http = http.clone();
        tokio::spawn(async move {
            let _ = get(&http, &format!("{WEB}:80"), path, &[]).await;
        });
    }
}

/// `caller`: calls `authority` at each of `paths` in turn, with `headers`, about
/// `rps` times a second, forever (the demo's `intruder`, which books' policy denies;
/// `scraper`, which its rate limit cuts down; `reader` and `jason`, who read reviews
/// through Istio's VirtualService).
pub async fn caller(
    proxy: SocketAddr,
    authority: String,
    paths: Vec<String>,
    headers: Vec<(String, String)>,
    rps: u32,
) -> anyhow::Result<()> {
    let http = client(proxy);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rps.max(1));
    let authority = std::sync::Arc::new(authority);
    let headers = std::sync::Arc::new(headers);
    let paths = if paths.is_empty() {
        vec!["/".to_string()]
    } else {
        paths
    };
    for path in paths.iter().cycle() {
        tick.tick().await;
        let (http, authority, path, headers) = (
            http.clone(),
            authority.clone(),
            path.clone(),
            headers.clone(),
        );
        tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let _ = get(&http, &authority, &path, &headers).await;
        });
    }
    Ok(())
}

/// Connects every request to the app's proxy, whatever its authority: the proxy routes
/// by the request's `Host`.
#[derive(Clone)]
struct ProxyConnector {
    proxy: SocketAddr,
    inner: HttpConnector,
}

impl tower::Service<http::Uri> for ProxyConnector {
    type Response = <HttpConnector as tower::Service<http::Uri>>::Response;
    type Error = <HttpConnector as tower::Service<http::Uri>>::Error;
    type Future = <HttpConnector as tower::Service<http::Uri>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let uri = format!("http://{}", self.proxy)
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("http://127.0.0.1:4140"));
        self.inner.call(uri)
    }
}
