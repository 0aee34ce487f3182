//! gRPC scenario server in Rust (tonic on hyper and tokio). Serves probebench.Bench: every
//! request says how many responses of what size to send and which status to end with.
//! Control protocol: scenarios/README.md (READY port; exit 3 when the port cannot be bound;
//! runs until stdin closes or SIGTERM, then exits 0).

use std::pin::Pin;
use std::time::Duration;

use probebench_rust_targets::bench::{payload, Req, Resp};
use probebench_rust_targets::parse_args;
use probebench_rust_targets::pb::bench_server::{Bench, BenchServer};
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

const MAX_MSG_SIZE: usize = 8 << 20;

type RespStream = Pin<Box<dyn Stream<Item = Result<Resp, Status>> + Send>>;

fn resp(id: u64, seq: u32, size: u32) -> Resp {
    Resp { id, seq, payload: payload(size as usize) }
}

fn status_of(req: Option<&Req>) -> Option<Status> {
    match req {
        Some(r) if r.status_code != 0 => {
            Some(Status::new(Code::from(r.status_code as i32), r.status_message.clone()))
        }
        _ => None,
    }
}

struct Svc;

#[tonic::async_trait]
impl Bench for Svc {
    async fn unary(&self, req: Request<Req>) -> Result<Response<Resp>, Status> {
        let r = req.into_inner();
        if let Some(st) = status_of(Some(&r)) {
            return Err(st);
        }
        Ok(Response::new(resp(r.id, 0, r.resp_size)))
    }

    type ServerStreamStream = RespStream;

    async fn server_stream(&self, req: Request<Req>) -> Result<Response<RespStream>, Status> {
        let r = req.into_inner();
        let mut items: Vec<Result<Resp, Status>> =
            (0..r.resp_count).map(|seq| Ok(resp(r.id, seq, r.resp_size))).collect();
        if let Some(st) = status_of(Some(&r)) {
            items.push(Err(st)); // the stream ends with the planned status
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn client_stream(&self, req: Request<Streaming<Req>>) -> Result<Response<Resp>, Status> {
        let mut stream = req.into_inner();
        let mut first: Option<Req> = None;
        while let Some(r) = stream.next().await {
            let r = r?;
            if first.is_none() {
                first = Some(r);
            }
        }
        if let Some(st) = status_of(first.as_ref()) {
            return Err(st);
        }
        Ok(Response::new(match first {
            Some(f) => resp(f.id, 0, f.resp_size),
            None => resp(0, 0, 0),
        }))
    }

    type BidiStream = RespStream;

    async fn bidi(&self, req: Request<Streaming<Req>>) -> Result<Response<RespStream>, Status> {
        let mut input = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Resp, Status>>(64);
        // Answer each request as it arrives, so requests and responses interleave on the wire.
        tokio::spawn(async move {
            let mut first: Option<Req> = None;
            let mut seq = 0u32;
            while let Some(r) = input.next().await {
                let r = match r {
                    Ok(r) => r,
                    Err(_) => return, // the client went away
                };
                for _ in 0..r.resp_count {
                    if tx.send(Ok(resp(r.id, seq, r.resp_size))).await.is_err() {
                        return;
                    }
                    seq += 1;
                }
                if first.is_none() {
                    first = Some(r);
                }
            }
            if let Some(st) = status_of(first.as_ref()) {
                let _ = tx.send(Err(st)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

fn fail(code: i32, message: &str) -> ! {
    eprintln!("grpc_server: {message}");
    std::process::exit(code);
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = parse_args(&argv).unwrap_or_else(|e| fail(2, &e));
    if args.get("proto").map_or("grpc", |s| s.as_str()) != "grpc" {
        fail(2, "only --proto grpc is served by the Rust targets");
    }
    let host = args.get("host").cloned().unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = args.get("port").and_then(|p| p.parse().ok()).unwrap_or_else(|| fail(2, "need --port"));
    let lifetime: f64 = args.get("max-lifetime").and_then(|p| p.parse().ok()).unwrap_or(3600.0);
    let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => fail(3, &format!("cannot bind {addr}: {e}")),
    };
    let bound = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    // Before READY: a runner may send SIGTERM as soon as it reads that line.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| fail(1, &format!("SIGTERM handler: {e}")));
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .unwrap_or_else(|e| fail(1, &format!("SIGINT handler: {e}")));
    println!("READY {bound}");
    let stop = async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        let eof = async {
            // drain until EOF: the runner closed our stdin
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            _ = eof => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs_f64(lifetime)) => {
                eprintln!("grpc_server: --max-lifetime reached, exiting");
            }
        }
    };
    let svc = BenchServer::new(Svc)
        .max_decoding_message_size(MAX_MSG_SIZE)
        .max_encoding_message_size(MAX_MSG_SIZE);
    let server = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop);
    if let Err(e) = server.await {
        fail(1, &format!("server failed: {e}"));
    }
    std::process::exit(0);
}
