//! Scraping: every interval, each meshed pod's proxy `/stats`, concurrently, each
//! bounded by a timeout so that a slow or dead proxy delays nothing else.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_controller::Index;

use crate::stats::Snapshot;
use crate::store::Store;

/// The largest `/stats` body read.
const MAX_STATS: usize = 16 << 20;

/// Scrapes every meshed pod in `index` every `interval`, on `admin_port`, forever.
pub async fn run(index: Arc<Index>, store: Arc<Mutex<Store>>, interval: Duration, admin_port: u16) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(interval.min(Duration::from_secs(2))));
    connector.set_nodelay(true);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (pods, parse) = {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            store.sync(index.pods());
            (store.scrape_list(), Arc::new(store.parser()))
        };
        let timeout = interval.min(Duration::from_secs(2));
        let scrapes = pods.into_iter().filter_map(|pod| {
            let addr = SocketAddr::new(pod.ip?, admin_port);
            let (client, parse) = (client.clone(), parse.clone());
            Some(async move {
                let result = tokio::time::timeout(timeout, fetch(&client, addr, &*parse))
                    .await
                    .unwrap_or_else(|_| Err(format!("{addr}: no answer within {timeout:?}")));
                (pod, Instant::now(), result)
            })
        });
        let results = futures_join_all(scrapes).await;
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        for (pod, at, result) in results {
            if let Err(error) = &result {
                tracing::debug!(pod = %pod.name, namespace = %pod.namespace, %error, "scrape failed");
            }
            store.record(&pod, at, result);
        }
    }
}

async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    parse: &(dyn Fn(&[u8]) -> Result<Snapshot, crate::stats::StatsError> + Send + Sync),
) -> Result<Snapshot, String> {
    let uri: http::Uri = format!("http://{addr}/stats")
        .parse()
        .map_err(|e| format!("{addr}: {e}"))?;
    let rsp = client.get(uri).await.map_err(|e| format!("{addr}: {e}"))?;
    if !rsp.status().is_success() {
        return Err(format!("{addr}: /stats answered {}", rsp.status()));
    }
    let body = Limited::new(rsp.into_body(), MAX_STATS)
        .collect()
        .await
        .map_err(|e| format!("{addr}: {e}"))?
        .to_bytes();
    parse(&body).map_err(|e| format!("{addr}: {e}"))
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
