//! The destination gRPC service over the index: `Get` streams endpoint changes for an
//! authority, the current state first and then every change, until the client goes
//! away. (What proxies do with a service's requests is the policy API's: [`crate::policy`].)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use mesh_api::destination as pb;
use mesh_api::destination::destination_server::{Destination, DestinationServer};
use tonic::{Request, Response, Status};

use crate::index::{EndpointView, Index, PROXY_INBOUND_PORT, Resolution, Watch};

/// A stream of messages for one client.
pub type Updates<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The service; cheap to clone.
#[derive(Clone, Debug)]
pub struct Service {
    index: Arc<Index>,
}

impl Service {
    /// Serves `index`.
    pub fn new(index: Arc<Index>) -> DestinationServer<Self> {
        DestinationServer::new(Self { index })
    }
}

/// Refuses what is not an authority (`host[:port]`).
pub fn check_authority(authority: &str) -> Result<(), Status> {
    if authority.parse::<http::uri::Authority>().is_err() {
        return Err(Status::invalid_argument(format!(
            "invalid authority {authority:?}"
        )));
    }
    Ok(())
}

/// What a `Get` stream has told its client so far.
#[derive(Default)]
struct Sent {
    known: Option<bool>,
    endpoints: BTreeMap<SocketAddr, EndpointView>,
}

impl Sent {
    /// The updates that take the client from what it was told to `now`.
    fn diff(&mut self, now: Resolution) -> Vec<pb::Update> {
        use pb::update::Update as U;
        let (known, endpoints, labels) = match now {
            Resolution::Unknown => (false, BTreeMap::new(), Default::default()),
            Resolution::Pod {
                namespace,
                endpoint,
            } => (
                true,
                BTreeMap::from([(endpoint.addr, endpoint)]),
                [("namespace".to_string(), namespace)].into(),
            ),
            Resolution::Service {
                namespace,
                name,
                endpoints,
                ..
            } => {
                let labels = [
                    ("namespace".to_string(), namespace),
                    ("service".to_string(), name),
                ]
                .into();
                (true, endpoints, labels)
            }
        };
        let mut out = Vec::new();
        let removed: Vec<_> = self
            .endpoints
            .keys()
            .filter(|a| !endpoints.contains_key(a))
            .copied()
            .collect();
        let added: Vec<_> = endpoints
            .values()
            .filter(|e| self.endpoints.get(&e.addr) != Some(e))
            .cloned()
            .collect();
        if endpoints.is_empty() {
            if self.known != Some(known) || !self.endpoints.is_empty() {
                out.push(pb::Update {
                    update: Some(U::NoEndpoints(pb::NoEndpoints { exists: known })),
                });
            }
        } else {
            // Additions first: a client never sees an empty set while one set of
            // endpoints replaces another.
            if !added.is_empty() {
                let endpoints = added.iter().map(endpoint).collect();
                out.push(pb::Update {
                    update: Some(U::Add(pb::AddSet {
                        endpoints,
                        metric_labels: labels,
                    })),
                });
            }
            if !removed.is_empty() {
                let addrs = removed
                    .iter()
                    .map(|a| pb::SocketAddr {
                        ip: a.ip().to_string(),
                        port: a.port().into(),
                    })
                    .collect();
                out.push(pb::Update {
                    update: Some(U::Remove(pb::RemoveSet { addrs })),
                });
            }
        }
        self.known = Some(known);
        self.endpoints = endpoints;
        out
    }
}

fn endpoint(e: &EndpointView) -> pb::Endpoint {
    pb::Endpoint {
        addr: Some(pb::SocketAddr {
            ip: e.addr.ip().to_string(),
            port: e.addr.port().into(),
        }),
        weight: 10_000,
        metric_labels: e.labels.clone().into_iter().collect(),
        tls_identity: e.identity.clone().unwrap_or_default(),
        // A meshed endpoint's proxy takes peers on its inbound port, over HTTP/2 (or,
        // for an opaque port, over mTLS with a transport header).
        protocol_hint: match &e.identity {
            Some(_) => Some(pb::ProtocolHint {
                h2: true,
                inbound_port: PROXY_INBOUND_PORT.into(),
                opaque: e.opaque,
            }),
            None => e.opaque.then_some(pb::ProtocolHint {
                h2: false,
                inbound_port: 0,
                opaque: true,
            }),
        },
    }
}

/// Runs `next` now and again each time what its last answer read has changed (its
/// [`Watch`]), yielding what it gives, until the client hangs up. The stream is the
/// whole follower: no task and no channel per stream, and dropping it (tonic does
/// when the client goes away) stops the listening.
pub fn follow<T, F>(index: Arc<Index>, next: F) -> Updates<T>
where
    T: Send + 'static,
    F: FnMut(&Index, &mut Watch) -> Vec<T> + Send + 'static,
{
    struct Follower<T, F> {
        index: Arc<Index>,
        watch: Watch,
        next: F,
        queued: std::collections::VecDeque<T>,
        first: bool,
    }
    let state = Follower {
        watch: index.watch(),
        index,
        next,
        queued: Default::default(),
        first: true,
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(item) = s.queued.pop_front() {
                return Some((Ok(item), s));
            }
            if !std::mem::take(&mut s.first) {
                s.watch.changed().await;
            }
            let items = (s.next)(&s.index, &mut s.watch);
            s.queued.extend(items);
        }
    }))
}

#[tonic::async_trait]
impl Destination for Service {
    type GetStream = Updates<pb::Update>;

    async fn get(
        &self,
        req: Request<pb::GetDestination>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let next = endpoints(req.into_inner())?;
        Ok(Response::new(follow(self.index.clone(), next)))
    }
}

/// Follows the endpoints `req` asks for: each call gives what changed since the last
/// one (the whole set first), and listens to what the answer read.
pub fn endpoints(
    req: pb::GetDestination,
) -> Result<impl FnMut(&Index, &mut Watch) -> Vec<pb::Update> + Send + 'static, Status> {
    check_authority(&req.authority)?;
    let mut sent = Sent::default();
    let labels: std::collections::BTreeMap<String, String> =
        req.labels.clone().into_iter().collect();
    Ok(move |index: &Index, watch: &mut Watch| {
        sent.diff(index.resolve_selected(&req.authority, &req.namespace, &labels, Some(watch)))
    })
}
