// The Bench service's client and server stubs, generated without protoc: the two messages
// are written by hand with prost's derive (src/bench.rs), tonic-build only makes the stubs.
fn main() {
    let method = |name: &str, route: &str, cs: bool, ss: bool| {
        let mut m = tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type("crate::bench::Req")
            .output_type("crate::bench::Resp")
            .codec_path("tonic_prost::ProstCodec");
        if cs {
            m = m.client_streaming();
        }
        if ss {
            m = m.server_streaming();
        }
        m.build()
    };
    let service = tonic_build::manual::Service::builder()
        .name("Bench")
        .package("probebench")
        .method(method("unary", "Unary", false, false))
        .method(method("server_stream", "ServerStream", false, true))
        .method(method("client_stream", "ClientStream", true, false))
        .method(method("bidi", "Bidi", true, true))
        .build();
    tonic_build::manual::Builder::new().compile(&[service]);
    println!("cargo:rerun-if-changed=build.rs");
}
