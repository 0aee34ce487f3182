//! gRPC scenario client in Rust (tonic). Plays the seeded call plan of scenarios/plan-grpc.md
//! over C channels (one HTTP/2 connection each), a few calls in flight per channel, checks
//! every call's outcome against the plan and writes workload.jsonl. Control protocol:
//! scenarios/README.md.

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use probebench_rust_targets::bench::{payload, Req};
use probebench_rust_targets::pb::bench_client::BenchClient;
use probebench_rust_targets::plan::{self, bidi_share, json_obj, json_str, Call, METADATA_KEYS};
use probebench_rust_targets::{mono_ns, parse_args};
use prost::Message;
use tokio::io::AsyncBufReadExt;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

const MAX_MSG_SIZE: usize = 8 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

struct Conn {
    idx: usize,
    client: BenchClient<Channel>,
    port: Option<u16>,
    seq: AtomicU64,
}

struct Client {
    mode: String,
    host: String,
    port: u16,
    plan: Vec<Call>,
    deadline: Instant,
    next_id: AtomicUsize,
    errors: Mutex<Vec<String>>,
    out: Mutex<std::fs::File>,
}

#[derive(Default)]
struct Tally {
    req_messages: u32,
    req_bytes: u64,
    resp_messages: u32,
    resp_bytes: u64,
}

/// Local ports of this process's established TCP connections to the server port: tonic does
/// not expose a channel's socket, so compare the kernel's table with our own fds.
fn own_tcp_ports(server_port: u16) -> HashSet<u16> {
    let mut inodes = HashSet::new();
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        for fd in fds.flatten() {
            if let Ok(t) = std::fs::read_link(fd.path()) {
                let t = t.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut ports = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port_of = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or(""), 16).ok();
            if f[3] == "01" && port_of(f[2]) == Some(server_port) && inodes.contains(f[9]) {
                if let Some(p) = port_of(f[1]) {
                    ports.insert(p);
                }
            }
        }
    }
    ports
}

impl Client {
    fn remaining(&self) -> Result<Duration, String> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "deadline passed".to_string())
    }

    async fn open(&self, idx: usize) -> Result<Conn, String> {
        let before = own_tcp_ports(self.port);
        let ep = Endpoint::from_shared(format!("http://{}:{}", self.host, self.port))
            .map_err(|e| e.to_string())?
            .connect_timeout(self.remaining()?.min(Duration::from_secs(10)));
        let ch = ep.connect().await.map_err(|e| format!("connection {idx} not ready: {e}"))?;
        let fresh: Vec<u16> = own_tcp_ports(self.port).difference(&before).copied().collect();
        let client = BenchClient::new(ch)
            .max_decoding_message_size(MAX_MSG_SIZE)
            .max_encoding_message_size(MAX_MSG_SIZE);
        // Exactly one new connection is this channel's; anything else is unknown (null).
        let port = if fresh.len() == 1 { Some(fresh[0]) } else { None };
        Ok(Conn { idx, client, port, seq: AtomicU64::new(0) })
    }

    fn request(&self, c: &Call, j: u32) -> Req {
        let resp_count =
            if self.mode == "bidi" { bidi_share(j, c.req_count, c.resp_count) } else { c.resp_count };
        Req {
            id: c.id as u64,
            payload: payload(c.req_size as usize),
            resp_count,
            resp_size: c.resp_size,
            status_code: c.status_code,
            status_message: c.status_message.to_string(),
        }
    }

    fn with_metadata<T>(&self, c: &Call, msg: T) -> Result<tonic::Request<T>, String> {
        let mut r = tonic::Request::new(msg);
        for k in METADATA_KEYS {
            let v = &c.metadata.iter().find(|(n, _)| *n == k).expect("planned key").1;
            let v: MetadataValue<_> = v.parse().map_err(|_| format!("bad metadata {k}"))?;
            r.metadata_mut().insert(k, v);
        }
        r.set_timeout(CALL_TIMEOUT.min(self.remaining()?));
        Ok(r)
    }

    /// Runs one call; returns its final (code, message).
    async fn exchange(&self, conn: &Conn, c: &Call, t: &mut Tally) -> Result<(i32, String), String> {
        let mut client = conn.client.clone();
        let reqs: Vec<Req> = (0..if self.mode == "unary" || self.mode == "server-stream" {
            1
        } else {
            c.req_count
        })
            .map(|j| self.request(c, j))
            .collect();
        t.req_messages = reqs.len() as u32;
        t.req_bytes = reqs.iter().map(|r| r.encoded_len() as u64).sum();
        let status_of = |s: tonic::Status| (s.code() as i32, s.message().to_string());
        let mut first = reqs.into_iter();
        match self.mode.as_str() {
            "unary" => match client.unary(self.with_metadata(c, first.next().unwrap())?).await {
                Ok(resp) => {
                    t.resp_messages += 1;
                    t.resp_bytes += resp.get_ref().encoded_len() as u64;
                    Ok((0, String::new()))
                }
                Err(s) => Ok(status_of(s)),
            },
            "client-stream" => {
                let req = self.with_metadata(c, tokio_stream::iter(first))?;
                match client.client_stream(req).await {
                    Ok(resp) => {
                        t.resp_messages += 1;
                        t.resp_bytes += resp.get_ref().encoded_len() as u64;
                        Ok((0, String::new()))
                    }
                    Err(s) => Ok(status_of(s)),
                }
            }
            mode => {
                let started = if mode == "server-stream" {
                    client.server_stream(self.with_metadata(c, first.next().unwrap())?).await
                } else {
                    client.bidi(self.with_metadata(c, tokio_stream::iter(first))?).await
                };
                let mut stream = match started {
                    Ok(s) => s.into_inner(),
                    Err(s) => return Ok(status_of(s)),
                };
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(resp) => {
                            t.resp_messages += 1;
                            t.resp_bytes += resp.encoded_len() as u64;
                            if t.resp_messages > c.resp_count {
                                return Err(format!("call {}: more than {} responses", c.id, c.resp_count));
                            }
                        }
                        Err(s) => return Ok(status_of(s)),
                    }
                }
                Ok((0, String::new()))
            }
        }
    }

    async fn call(&self, conn: &Conn, id: usize, phase: &str) -> Result<(), String> {
        let c = &self.plan[id];
        let seq = conn.seq.fetch_add(1, Ordering::SeqCst);
        let mut t = Tally::default();
        let t_start = mono_ns();
        let (code, message) = self.exchange(conn, c, &mut t).await?;
        let t_end = mono_ns();
        if code as u32 != c.status_code || message != c.status_message {
            return Err(format!(
                "call {id}: got status {code} {}, planned {} {}",
                json_str(&message),
                c.status_code,
                json_str(c.status_message)
            ));
        }
        if t.req_messages != c.req_count || t.resp_messages != c.expect_resp_messages {
            return Err(format!(
                "call {id}: {}/{} messages sent/received, planned {}/{}",
                t.req_messages, t.resp_messages, c.req_count, c.expect_resp_messages
            ));
        }
        let md = json_obj(c.metadata.iter().map(|(k, v)| (*k, v.as_str())), " ");
        let line = format!(
            "{{\"id\": {}, \"protocol\": \"h2c-grpc\", \"client_ip\": {}, \"client_port\": {}, \
             \"server_ip\": {}, \"server_port\": {}, \"conn_seq\": {}, \"conn\": {}, \
             \"method\": \"POST\", \"path\": {}, \"status\": 200, \"grpc_status\": {}, \
             \"grpc_message\": {}, \"req_bytes\": {}, \"resp_bytes\": {}, \"req_messages\": {}, \
             \"resp_messages\": {}, \"req_headers\": {}, \"t_start_ns\": {}, \"t_end_ns\": {}, \
             \"phase\": {}}}\n",
            c.id,
            json_str(&self.host),
            conn.port.map_or("null".to_string(), |p| p.to_string()),
            json_str(&self.host),
            self.port,
            seq,
            conn.idx,
            json_str(c.method),
            code,
            json_str(&message),
            t.req_bytes,
            t.resp_bytes,
            t.req_messages,
            t.resp_messages,
            md,
            t_start,
            t_end,
            json_str(phase),
        );
        self.out.lock().unwrap().write_all(line.as_bytes()).map_err(|e| e.to_string())
    }

    async fn worker(self: Arc<Self>, conns: Arc<Vec<Conn>>, ci: usize) {
        loop {
            if !self.errors.lock().unwrap().is_empty() {
                return;
            }
            let id = self.next_id.fetch_add(1, Ordering::SeqCst);
            if id >= self.plan.len() {
                return;
            }
            if let Err(e) = self.call(&conns[ci], id, "main").await {
                self.errors.lock().unwrap().push(e);
                return;
            }
        }
    }
}

fn fail(code: i32, message: &str) -> ! {
    eprintln!("grpc_client: {message}");
    std::process::exit(code);
}

async fn run(client: Arc<Client>, connections: usize, warmup: usize, inflight: usize) -> Result<(), String> {
    let mut conns = Vec::with_capacity(connections);
    for i in 0..connections {
        conns.push(client.open(i).await?);
    }
    let warm = (warmup * connections).min(client.plan.len());
    for i in 0..warm {
        client.call(&conns[i % connections], i, "warmup").await?;
    }
    client.next_id.store(warm, Ordering::SeqCst);
    if warmup > 0 {
        client.out.lock().unwrap().flush().map_err(|e| e.to_string())?;
        println!("WARM");
        let mut line = String::new();
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        match tokio::time::timeout(client.remaining()?, stdin.read_line(&mut line)).await {
            Err(_) => return Err("deadline passed waiting for GO".into()),
            Ok(Err(e)) => return Err(format!("reading GO: {e}")),
            Ok(Ok(_)) if line.trim() != "GO" => return Err(format!("expected GO on stdin, got {line:?}")),
            Ok(Ok(_)) => {}
        }
    }
    let conns = Arc::new(conns);
    let mut tasks = Vec::new();
    for ci in 0..connections {
        for _ in 0..inflight {
            tasks.push(tokio::spawn(client.clone().worker(conns.clone(), ci)));
        }
    }
    let all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    tokio::time::timeout(client.remaining()? + Duration::from_secs(1), all)
        .await
        .map_err(|_| "deadline passed with calls in flight".to_string())?;
    if let Some(e) = client.errors.lock().unwrap().first() {
        return Err(e.clone());
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = parse_args(&argv).unwrap_or_else(|e| fail(2, &e));
    let get = |k: &str, d: &str| args.get(k).cloned().unwrap_or_else(|| d.to_string());
    let num = |k: &str, d: &str| get(k, d).parse::<u64>().unwrap_or_else(|_| fail(2, &format!("bad --{k}")));
    let mode = get("mode", "unary");
    if get("proto", "grpc") != "grpc" || plan::method_of(&mode).is_none() {
        fail(2, "only --proto grpc with a known --mode");
    }
    let n = num("exchanges", "100") as usize;
    let plan = plan::make_plan(&mode, n, num("seed", "1")).unwrap_or_else(|e| fail(2, &e));
    if args.contains_key("print-plan") {
        let mut out = std::io::stdout().lock();
        for c in &plan {
            writeln!(out, "{}", c.to_json()).unwrap_or_else(|e| fail(1, &e.to_string()));
        }
        return;
    }
    let port = num("port", "0") as u16;
    let Some(workload) = args.get("workload") else { fail(2, "need --workload, --port") };
    if port == 0 {
        fail(2, "need --workload, --port");
    }
    let deadline_s: f64 = get("deadline", "120").parse().unwrap_or(120.0);
    // Keep a little of --deadline for teardown, so the process as a whole stays within it.
    let slack = (0.1 * deadline_s).min(1.0);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(workload)
        .unwrap_or_else(|e| fail(1, &format!("{workload}: {e}")));
    let client = Arc::new(Client {
        mode,
        host: get("host", "127.0.0.1"),
        port,
        plan,
        deadline: started + Duration::from_secs_f64((deadline_s - slack).max(0.0)),
        next_id: AtomicUsize::new(0),
        errors: Mutex::new(Vec::new()),
        out: Mutex::new(out),
    });
    let conns = num("connections", "2") as usize;
    let result = run(client.clone(), conns.max(1), num("warmup", "0") as usize, num("inflight", "3").max(1) as usize).await;
    let _ = client.out.lock().unwrap().flush();
    match result {
        Ok(()) => {
            println!("DONE {n}");
            std::process::exit(0);
        }
        Err(e) => fail(1, &e),
    }
}
