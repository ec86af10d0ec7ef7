//! The words every part of the proxy shares: which way traffic flows, whether a peer is
//! authenticated and as whom, what discovery says an endpoint belongs to, and whether
//! a response is a success. Imports nothing from the rest of the crate.

use std::sync::Arc;

/// Which side of the pod a request or connection came in on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// From a peer to the local application.
    Inbound,
    /// From the local application to a peer.
    Outbound,
}

impl Direction {
    /// The `direction` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Whether a response counts as a success.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// A success.
    Success,
    /// A failure: a 5xx, a non-zero `grpc-status`, or a stream that ended in error.
    Failure,
}

impl Class {
    /// The `classification` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// Whether traffic was mutually authenticated, and if not, why.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tls {
    /// This proxy has no identity: mTLS is off.
    Disabled,
    /// Plaintext: the peer is not meshed or presented no identity.
    NoIdentity,
    /// mTLS with a verified peer identity.
    Secured,
}

impl Tls {
    /// The `tls` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::NoIdentity => "no_identity",
            Self::Secured => "true",
        }
    }
}

/// What discovery says an outbound endpoint belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DstLabels {
    /// `dst_namespace`.
    pub namespace: Arc<str>,
    /// `dst_deployment`: the endpoint's workload.
    pub workload: Arc<str>,
    /// `dst_service`.
    pub service: Arc<str>,
}

/// The TLS state of a request's peer (inbound: the client; outbound: the server) and
/// its verified identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    /// mTLS or not.
    pub tls: Tls,
    /// The verified identity, with mTLS.
    pub id: Option<Arc<str>>,
    /// Outbound: the endpoint's workload, from discovery.
    pub dst: Option<Arc<DstLabels>>,
}

impl Peer {
    /// A plaintext peer; `mtls_enabled` tells whether this proxy has an identity.
    pub fn plaintext(mtls_enabled: bool) -> Self {
        Self {
            tls: if mtls_enabled {
                Tls::NoIdentity
            } else {
                Tls::Disabled
            },
            id: None,
            dst: None,
        }
    }

    /// A peer authenticated by mTLS as `id`.
    pub fn secured(id: &str) -> Self {
        Self {
            tls: Tls::Secured,
            id: Some(Arc::from(id)),
            dst: None,
        }
    }

    /// The same peer with discovery's labels for it.
    pub fn with_dst(mut self, dst: Option<Arc<DstLabels>>) -> Self {
        self.dst = dst;
        self
    }
}

/// Pod labels a subset's endpoints all carry (a DestinationRule's subset).
pub type Labels = std::collections::BTreeMap<String, String>;
