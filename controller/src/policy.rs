//! The policy gRPC services over the index: `OutboundPolicies.Watch` streams a
//! service's client policy, `InboundPolicies.Watch` a workload port's server policy.
//! Each sends the whole policy first and again whenever it changes, until the client
//! goes away.

use std::sync::Arc;

use mesh_api::policy as pb;
use mesh_api::policy::inbound_policies_server::{InboundPolicies, InboundPoliciesServer};
use mesh_api::policy::outbound_policies_server::{OutboundPolicies, OutboundPoliciesServer};
use tonic::{Request, Response, Status};

use crate::destination::{Updates, follow};
use crate::index::{Index, Watch};

/// Both services; cheap to clone.
#[derive(Clone, Debug)]
pub struct Service {
    index: Arc<Index>,
}

impl Service {
    /// Serves `index`'s outbound policies.
    pub fn outbound(index: Arc<Index>) -> OutboundPoliciesServer<Self> {
        OutboundPoliciesServer::new(Self { index })
    }

    /// Serves `index`'s inbound policies.
    pub fn inbound(index: Arc<Index>) -> InboundPoliciesServer<Self> {
        InboundPoliciesServer::new(Self { index })
    }
}

/// Gives what `now` yields on the first call, then again each time it differs from
/// what was given.
fn changes<T, F>(mut now: F) -> impl FnMut(&Index, &mut Watch) -> Vec<T> + Send + 'static
where
    T: PartialEq + Clone + Send + 'static,
    F: FnMut(&Index, &mut Watch) -> T + Send + 'static,
{
    let mut last: Option<T> = None;
    move |index, watch| {
        let policy = now(index, watch);
        if last.as_ref() == Some(&policy) {
            return vec![];
        }
        last = Some(policy.clone());
        vec![policy]
    }
}

/// Follows the client policy `req` asks for: the whole policy first, then again each
/// time it changes.
pub fn outbound(
    req: pb::OutboundPolicyRequest,
) -> Result<impl FnMut(&Index, &mut Watch) -> Vec<pb::OutboundPolicy> + Send + 'static, Status> {
    crate::destination::check_authority(&req.authority)?;
    Ok(changes(move |index, watch| {
        index.outbound_policy(&req.authority, &req.namespace, Some(watch))
    }))
}

/// Follows the server policy `req` asks for: the whole policy first, then again each
/// time it changes.
pub fn inbound(
    req: pb::InboundPolicyRequest,
) -> Result<impl FnMut(&Index, &mut Watch) -> Vec<pb::InboundPolicy> + Send + 'static, Status> {
    let port = u16::try_from(req.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Status::invalid_argument(format!("invalid port {}", req.port)))?;
    if req.workload.is_empty() || req.namespace.is_empty() {
        return Err(Status::invalid_argument(
            "a workload and its namespace are needed",
        ));
    }
    Ok(changes(move |index, watch| {
        index.inbound_policy(&req.workload, &req.namespace, port, Some(watch))
    }))
}

#[tonic::async_trait]
impl OutboundPolicies for Service {
    type WatchStream = Updates<pb::OutboundPolicy>;

    async fn watch(
        &self,
        req: Request<pb::OutboundPolicyRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let next = outbound(req.into_inner())?;
        Ok(Response::new(follow(self.index.clone(), next)))
    }
}

#[tonic::async_trait]
impl InboundPolicies for Service {
    type WatchStream = Updates<pb::InboundPolicy>;

    async fn watch(
        &self,
        req: Request<pb::InboundPolicyRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let next = inbound(req.into_inner())?;
        Ok(Response::new(follow(self.index.clone(), next)))
    }
}
