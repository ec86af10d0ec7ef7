//! Generates the gRPC echo service used by the tests, without protoc: the messages are
//! written by hand with prost's derive, and tonic-build's manual builder makes the
//! client and server.

fn main() {
    let method = |name: &str, route: &str, client_streaming: bool, server_streaming: bool| {
        let mut m = tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type("crate::grpc::EchoRequest")
            .output_type("crate::grpc::EchoReply")
            .codec_path("tonic_prost::ProstCodec");
        if client_streaming {
            m = m.client_streaming();
        }
        if server_streaming {
            m = m.server_streaming();
        }
        m.build()
    };
    let echo = tonic_build::manual::Service::builder()
        .name("Echo")
        .package("mesh.test")
        .method(method("unary", "Unary", false, false))
        .method(method("server_stream", "ServerStream", false, true))
        .method(method("client_stream", "ClientStream", true, false))
        .method(method("bidi", "Bidi", true, true))
        .build();
    tonic_build::manual::Builder::new().compile(&[echo]);
}
