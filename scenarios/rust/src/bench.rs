//! probebench.Req and probebench.Resp of scenarios/proto/bench.proto, with prost's derive.

/// What the client asks of one request message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Req {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub resp_count: u32,
    #[prost(uint32, tag = "4")]
    pub resp_size: u32,
    #[prost(uint32, tag = "5")]
    pub status_code: u32,
    #[prost(string, tag = "6")]
    pub status_message: String,
}

/// One response message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resp {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint32, tag = "2")]
    pub seq: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
}

/// n bytes of the filler pattern every target sends ("abc...z" repeated).
pub fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}
