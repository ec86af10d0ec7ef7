//! A gRPC echo service (unary and streaming in both directions) for the tests.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// A message to echo.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// The text to echo.
    #[prost(string, tag = "1")]
    pub message: String,
    /// For server streaming: how many replies to send.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// When non-zero, the call fails with this gRPC status code.
    #[prost(int32, tag = "3")]
    pub fail_with: i32,
}

/// An echoed message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The echoed text.
    #[prost(string, tag = "1")]
    pub message: String,
}

#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/mesh.test.Echo.rs"));
}
pub use generated::echo_client::EchoClient;
pub use generated::echo_server::{Echo, EchoServer};

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

/// The echo service's behaviour.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoService;

fn check(req: &EchoRequest) -> Result<(), Status> {
    if req.fail_with == 0 {
        return Ok(());
    }
    let mut status = Status::new(tonic::Code::from_i32(req.fail_with), "failed on request");
    status
        .metadata_mut()
        .insert("x-echo-detail", "custom-trailer".parse().expect("ascii"));
    Err(status)
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let req = req.into_inner();
        check(&req)?;
        Ok(Response::new(EchoReply {
            message: req.message,
        }))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let req = req.into_inner();
        check(&req)?;
        let replies = (0..req.count).map(move |i| {
            Ok(EchoReply {
                message: format!("{}-{i}", req.message),
            })
        });
        Ok(Response::new(Box::pin(futures_util::stream::iter(replies))))
    }

    async fn client_stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let mut stream = req.into_inner();
        let mut all = Vec::new();
        while let Some(msg) = stream.next().await {
            all.push(msg?.message);
        }
        Ok(Response::new(EchoReply {
            message: all.join(","),
        }))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let stream = req.into_inner();
        let out = stream.map(|m| {
            m.map(|m| EchoReply {
                message: m.message.to_uppercase(),
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// Serves the echo service on an ephemeral loopback port; returns its address.
pub async fn serve() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind grpc");
    let addr = listener.local_addr().expect("addr");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoService))
            .serve_with_incoming(incoming)
            .await
            .expect("grpc server");
    });
    addr
}
