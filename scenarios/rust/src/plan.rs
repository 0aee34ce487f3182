//! The seeded gRPC call plan of scenarios/plan-grpc.md. Keep identical to
//! scenarios/py/grpc_client.py (make_plan): `--print-plan` output is compared byte for byte.

use std::collections::BTreeMap;

pub const MODES: [(&str, &str); 4] = [
    ("unary", "/probebench.Bench/Unary"),
    ("server-stream", "/probebench.Bench/ServerStream"),
    ("client-stream", "/probebench.Bench/ClientStream"),
    ("bidi", "/probebench.Bench/Bidi"),
];
/// Codes a client library may synthesise itself (CANCELLED, DEADLINE_EXCEEDED) are left out.
const ERR_CODES: [u32; 6] = [3, 5, 7, 9, 13, 14];
const ERR_MESSAGES: [&str; 5] = [
    "quota exceeded for tenant acme (100% used)",
    "ressource introuvable : élément demandé",
    "ungültige Anfrage \u{2013} bitte erneut versuchen",
    "権限がありません",
    "server busy; retry later ☕",
];
const TRACE_EVERY: usize = 16;
const BIG_SIZE: u32 = 1 << 20;
const CLIENT_VERSION: &str = "probebench-grpc/0.1";
pub const METADATA_KEYS: [&str; 5] =
    ["x-probebench-id", "x-tenant", "x-client-version", "x-trace-context", "x-request-nonce"];

/// One planned call.
#[derive(Clone, Debug)]
pub struct Call {
    pub id: usize,
    pub method: &'static str,
    pub req_count: u32,
    pub resp_count: u32,
    pub req_size: u32,
    pub resp_size: u32,
    pub status_code: u32,
    pub status_message: &'static str,
    pub expect_resp_messages: u32,
    /// In the order the metadata is sent (METADATA_KEYS).
    pub metadata: Vec<(&'static str, String)>,
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn count(d: u64, allow_zero: bool) -> u32 {
    let b = d % 100;
    if b < 10 {
        return 100 + ((d >> 8) % 41) as u32;
    }
    if allow_zero && b < 13 {
        return 0;
    }
    1 + ((d >> 8) % 8) as u32
}

fn size(d: u64, n: u32) -> u32 {
    let b = d % 100;
    if n <= 4 && b < 5 {
        return BIG_SIZE + ((d >> 8) % 65536) as u32;
    }
    if b < 15 {
        return 0;
    }
    ((d >> 8) % 2048) as u32
}

fn trace_context(t1: u64, t2: u64, t3: u64) -> String {
    let parts: Vec<String> = (0..7u64)
        .map(|j| format!("k{j}={:016x}", t1.wrapping_add(j.wrapping_mul(t3))))
        .collect();
    format!("00-{t1:016x}{t2:016x}-{t3:016x}-01;{}", parts.join(","))
}

pub fn method_of(mode: &str) -> Option<&'static str> {
    MODES.iter().find(|(m, _)| *m == mode).map(|(_, p)| *p)
}

/// The n calls of one run (draw order and rules: scenarios/plan-grpc.md).
pub fn make_plan(mode: &str, n: usize, seed: u64) -> Result<Vec<Call>, String> {
    let method = method_of(mode).ok_or(format!("unknown mode {mode:?}"))?;
    let mut rng = SplitMix64(seed);
    let mut plan = Vec::with_capacity(n);
    let mut trace = String::new();
    for i in 0..n {
        if i % TRACE_EVERY == 0 {
            let (t1, t2, t3) = (rng.next(), rng.next(), rng.next());
            trace = trace_context(t1, t2, t3);
        }
        let d: Vec<u64> = (0..7).map(|_| rng.next()).collect();
        let (mut code, mut message) = (0, "");
        if d[0] % 100 < 10 {
            code = ERR_CODES[(d[1] % ERR_CODES.len() as u64) as usize];
            message = ERR_MESSAGES[((d[1] >> 32) % ERR_MESSAGES.len() as u64) as usize];
        }
        let req_count = if mode == "client-stream" || mode == "bidi" { count(d[2], false) } else { 1 };
        let resp_count = if mode == "server-stream" || mode == "bidi" { count(d[3], true) } else { 1 };
        let expect = if code != 0 && (mode == "unary" || mode == "client-stream") { 0 } else { resp_count };
        plan.push(Call {
            id: i,
            method,
            req_count,
            resp_count,
            req_size: size(d[4], req_count),
            resp_size: size(d[5], resp_count),
            status_code: code,
            status_message: message,
            expect_resp_messages: expect,
            metadata: vec![
                ("x-probebench-id", i.to_string()),
                ("x-tenant", "acme".to_string()),
                ("x-client-version", CLIENT_VERSION.to_string()),
                ("x-trace-context", trace.clone()),
                ("x-request-nonce", format!("{:016x}", d[6])),
            ],
        });
    }
    Ok(plan)
}

/// Responses answering request j of q when r are wanted in all.
pub fn bidi_share(j: u32, q: u32, r: u32) -> u32 {
    ((j as u64 + 1) * r as u64 / q as u64 - j as u64 * r as u64 / q as u64) as u32
}

/// A JSON string as Python's json.dumps(ensure_ascii=False) writes it.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON object of strings, in the given order, with the separators given.
pub fn json_obj<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>, sep: &str) -> String {
    let items: Vec<String> =
        pairs.map(|(k, v)| format!("{}:{}{}", json_str(k), sep, json_str(v))).collect();
    format!("{{{}}}", items.join(&format!(",{sep}")))
}

impl Call {
    /// The line Python's Call.to_json prints: compact, metadata keys sorted.
    pub fn to_json(&self) -> String {
        let sorted: BTreeMap<&str, &str> =
            self.metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
        format!(
            "{{\"id\":{},\"method\":{},\"req_count\":{},\"resp_count\":{},\"req_size\":{},\
             \"resp_size\":{},\"status_code\":{},\"status_message\":{},\
             \"expect_resp_messages\":{},\"metadata\":{}}}",
            self.id,
            json_str(self.method),
            self.req_count,
            self.resp_count,
            self.req_size,
            self.resp_size,
            self.status_code,
            json_str(self.status_message),
            self.expect_resp_messages,
            json_obj(sorted.into_iter(), ""),
        )
    }
}
