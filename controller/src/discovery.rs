//! The discovery gRPC service: `Discovery.Watch` carries all of a proxy's
//! subscriptions (endpoints, client policies, server policies) on one stream. Each
//! subscription is followed by the same code as its single-target call
//! ([`crate::destination::endpoints`], [`crate::policy::outbound`],
//! [`crate::policy::inbound`]); the stream's watches share one set of wake-ups, so a
//! change costs what the subscriptions it touches cost, however many the stream holds.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use mesh_api::discovery as pb;
use mesh_api::discovery::discovery_server::{Discovery, DiscoveryServer};
use tonic::{Request, Response, Status, Streaming};

use crate::destination::Updates;
use crate::index::{Index, Wakes, Watch};

/// Subscriptions answered before the stream looks at its client again, so that a
/// burst of changes or of subscriptions cannot hold the runtime for long.
const BATCH: usize = 256;

/// The service; cheap to clone.
#[derive(Clone, Debug)]
pub struct Service {
    index: Arc<Index>,
    /// Subscriptions held per connection, across all its streams.
    held: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    limit: usize,
}

impl Service {
    /// Serves `index`; a connection holds at most [`mesh_api::MAX_SUBSCRIPTIONS`]
    /// subscriptions, however many streams it opens.
    pub fn new(index: Arc<Index>) -> DiscoveryServer<Self> {
        Self::with_limit(index, mesh_api::MAX_SUBSCRIPTIONS)
    }

    /// Serves `index` with at most `limit` subscriptions per connection.
    pub fn with_limit(index: Arc<Index>, limit: usize) -> DiscoveryServer<Self> {
        DiscoveryServer::new(Self {
            index,
            held: Arc::default(),
            limit,
        })
    }
}

/// One stream's share of its connection's subscriptions; given back when dropped.
struct Budget {
    peer: Option<SocketAddr>,
    held: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    limit: usize,
    /// This stream's subscriptions (its count when the peer is unknown).
    mine: usize,
}

impl Budget {
    /// Takes one subscription's room; false past the connection's limit.
    fn take(&mut self) -> bool {
        let Some(peer) = self.peer else {
            if self.mine >= self.limit {
                return false;
            }
            self.mine += 1;
            return true;
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(peer).or_default();
        if *n >= self.limit {
            return false;
        }
        *n += 1;
        self.mine += 1;
        true
    }

    /// Gives back `n` subscriptions' room.
    fn give(&mut self, n: usize) {
        let n = n.min(self.mine);
        self.mine -= n;
        let Some(peer) = self.peer else { return };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = held.get_mut(&peer) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                held.remove(&peer);
            }
        }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.give(self.mine);
    }
}

#[tonic::async_trait]
impl Discovery for Service {
    type WatchStream = Updates<pb::Notice>;

    async fn watch(
        &self,
        req: Request<Streaming<pb::Subscription>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let budget = Budget {
            peer: req.remote_addr(),
            held: self.held.clone(),
            limit: self.limit,
            mine: 0,
        };
        Ok(Response::new(mux(
            self.index.clone(),
            req.into_inner(),
            budget,
        )))
    }
}

/// What one subscription gives each time its watch wakes.
type Next = Box<dyn FnMut(&Index, &mut Watch) -> Vec<pb::Notice> + Send>;

struct Subscribed {
    watch: Watch,
    next: Next,
}

/// The state of one `Discovery.Watch` stream.
struct Mux<S> {
    index: Arc<Index>,
    wakes: Arc<Wakes>,
    subscribed: HashMap<u64, Subscribed>,
    incoming: S,
    /// The client will subscribe to nothing more.
    closed: bool,
    budget: Budget,
    queued: VecDeque<pb::Notice>,
}

/// Follows the subscriptions `incoming` makes, as one stream of notices; it ends when
/// the client stops sending and has nothing left subscribed, or sends garbage.
fn mux<S>(index: Arc<Index>, incoming: S, budget: Budget) -> Updates<pb::Notice>
where
    S: Stream<Item = Result<pb::Subscription, Status>> + Send + Unpin + 'static,
{
    let state = Mux {
        index,
        wakes: Wakes::new(),
        subscribed: HashMap::new(),
        incoming,
        closed: false,
        budget,
        queued: VecDeque::new(),
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(notice) = s.queued.pop_front() {
                return Some((Ok(notice), s));
            }
            let woken = s.wakes.take(BATCH);
            if !woken.is_empty() {
                s.answer(&woken);
                // Others' turn, then the client's: a flood of changes must neither hold
                // the worker nor keep new subscriptions waiting.
                tokio::task::yield_now().await;
                if !s.closed
                    && let Some(next) = futures_util::FutureExt::now_or_never(s.incoming.next())
                    && !s.receive(next)
                {
                    return None;
                }
                continue;
            }
            if s.closed && s.subscribed.is_empty() {
                return None;
            }
            tokio::select! {
                biased;
                next = s.incoming.next(), if !s.closed => if !s.receive(next) {
                    return None;
                },
                () = s.wakes.woken() => {}
            }
        }
    }))
}

impl<S> Mux<S> {
    /// Takes what the client sent next; false when the stream must end (the client
    /// sent garbage or broke off).
    fn receive(&mut self, next: Option<Result<pb::Subscription, Status>>) -> bool {
        match next {
            Some(Ok(sub)) => self.subscribe(sub),
            None => self.closed = true,
            Some(Err(status)) => {
                tracing::debug!(%status, "discovery stream ended");
                return false;
            }
        }
        true
    }

    /// Queues what the subscriptions `ids` have to say since they last spoke.
    fn answer(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(sub) = self.subscribed.get_mut(id) {
                let notices = (sub.next)(&self.index, &mut sub.watch);
                self.queued.extend(notices);
            }
        }
    }

    fn refuse(&mut self, id: u64, status: &Status) {
        self.queued.push_back(pb::Notice {
            id,
            notice: Some(pb::notice::Notice::Refused(pb::Refusal {
                code: status.code() as i32,
                message: status.message().to_string(),
            })),
        });
    }

    /// Starts (or replaces, or ends) subscription `sub.id`, queueing its first answer.
    fn subscribe(&mut self, sub: pb::Subscription) {
        use pb::notice::Notice as N;
        use pb::subscription::Target;
        let id = sub.id;
        // What was followed under this id is over either way.
        if self.subscribed.remove(&id).is_some() {
            self.budget.give(1);
        }
        let next: Result<Next, Status> = match sub.target {
            Some(Target::Unsubscribe(_)) => return,
            None => Err(Status::invalid_argument("a subscription needs a target")),
            Some(_) if !self.budget.take() => Err(Status::resource_exhausted(format!(
                "a connection holds at most {} subscriptions",
                self.budget.limit
            ))),
            Some(Target::Endpoints(req)) => {
                crate::destination::endpoints(req).map(|f| tag(id, f, N::Endpoints))
            }
            Some(Target::Outbound(req)) => {
                crate::policy::outbound(req).map(|f| tag(id, f, N::Outbound))
            }
            Some(Target::Inbound(req)) => {
                crate::policy::inbound(req).map(|f| tag(id, f, N::Inbound))
            }
        };
        match next {
            Ok(next) => {
                let watch = self.index.watch_in(&self.wakes, id);
                self.subscribed.insert(id, Subscribed { watch, next });
                self.answer(&[id]);
            }
            Err(status) => {
                // A refused target holds no room (what the guard took is given back).
                if status.code() != tonic::Code::ResourceExhausted {
                    self.budget.give(1);
                }
                self.refuse(id, &status)
            }
        }
    }
}

/// `f`'s messages as notices of subscription `id`.
fn tag<T: 'static>(
    id: u64,
    mut f: impl FnMut(&Index, &mut Watch) -> Vec<T> + Send + 'static,
    wrap: fn(T) -> pb::notice::Notice,
) -> Next {
    Box::new(move |index, watch| {
        f(index, watch)
            .into_iter()
            .map(|m| pb::Notice {
                id,
                notice: Some(wrap(m)),
            })
            .collect()
    })
}
