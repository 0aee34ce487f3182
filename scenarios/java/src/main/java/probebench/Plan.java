package probebench;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The seeded gRPC call plan of scenarios/plan-grpc.md. Keep identical to
 * scenarios/py/grpc_client.py (make_plan): `--print-plan` output is compared byte for byte.
 * All draws are unsigned 64-bit values held in Java longs (wrapping arithmetic, unsigned
 * remainders and shifts).
 */
final class Plan {
  static final Map<String, String> MODES = new LinkedHashMap<>();

  static {
    MODES.put("unary", "/probebench.Bench/Unary");
    MODES.put("server-stream", "/probebench.Bench/ServerStream");
    MODES.put("client-stream", "/probebench.Bench/ClientStream");
    MODES.put("bidi", "/probebench.Bench/Bidi");
  }

  // Codes a client library may synthesise itself (CANCELLED, DEADLINE_EXCEEDED) are left out.
  static final int[] ERR_CODES = {3, 5, 7, 9, 13, 14};
  static final String[] ERR_MESSAGES = {
    "quota exceeded for tenant acme (100% used)",
    "ressource introuvable : élément demandé",
    "ungültige Anfrage \u2013 bitte erneut versuchen",
    "権限がありません",
    "server busy; retry later ☕",
  };
  static final int TRACE_EVERY = 16;
  static final int BIG_SIZE = 1 << 20;
  static final String CLIENT_VERSION = "probebench-grpc/0.1";
  static final String[] METADATA_KEYS = {
    "x-probebench-id", "x-tenant", "x-client-version", "x-trace-context", "x-request-nonce",
  };

  /** One planned call. */
  static final class Call {
    int id;
    String method;
    int reqCount;
    int respCount;
    int reqSize;
    int respSize;
    int statusCode;
    String statusMessage;
    int expectRespMessages;
    Map<String, String> metadata = new LinkedHashMap<>();

    /** The line Python's Call.to_json prints: compact, metadata keys sorted. */
    String toJson() {
      StringBuilder b = new StringBuilder();
      b.append("{\"id\":").append(id)
          .append(",\"method\":").append(Json.str(method))
          .append(",\"req_count\":").append(reqCount)
          .append(",\"resp_count\":").append(respCount)
          .append(",\"req_size\":").append(reqSize)
          .append(",\"resp_size\":").append(respSize)
          .append(",\"status_code\":").append(statusCode)
          .append(",\"status_message\":").append(Json.str(statusMessage))
          .append(",\"expect_resp_messages\":").append(expectRespMessages)
          .append(",\"metadata\":").append(Json.obj(new TreeMap<>(metadata)))
          .append('}');
      return b.toString();
    }
  }

  /** splitmix64, as scenarios/py/workload.py's SplitMix64. */
  static final class SplitMix64 {
    private long state;

    SplitMix64(long seed) {
      state = seed;
    }

    long next() {
      state += 0x9E3779B97F4A7C15L;
      long z = state;
      z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
      z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
      return z ^ (z >>> 31);
    }
  }

  private static int mod(long d, long m) {
    return (int) Long.remainderUnsigned(d, m);
  }

  static int count(long d, boolean allowZero) {
    int b = mod(d, 100);
    if (b < 10) return 100 + mod(d >>> 8, 41);
    if (allowZero && b < 13) return 0;
    return 1 + mod(d >>> 8, 8);
  }

  static int size(long d, int n) {
    int b = mod(d, 100);
    if (n <= 4 && b < 5) return BIG_SIZE + mod(d >>> 8, 65536);
    if (b < 15) return 0;
    return mod(d >>> 8, 2048);
  }

  static String hex16(long v) {
    String h = Long.toHexString(v);
    return "0".repeat(16 - h.length()) + h;
  }

  static String traceContext(long t1, long t2, long t3) {
    StringBuilder parts = new StringBuilder();
    for (int j = 0; j < 7; j++) {
      if (j > 0) parts.append(',');
      parts.append('k').append(j).append('=').append(hex16(t1 + j * t3));
    }
    return "00-" + hex16(t1) + hex16(t2) + "-" + hex16(t3) + "-01;" + parts;
  }

  /** The n calls of one run (draw order and rules: scenarios/plan-grpc.md). */
  static List<Call> make(String mode, int n, long seed) {
    if (!MODES.containsKey(mode)) throw new IllegalArgumentException("unknown mode " + mode);
    SplitMix64 rng = new SplitMix64(seed);
    List<Call> plan = new ArrayList<>(n);
    String trace = "";
    for (int i = 0; i < n; i++) {
      if (i % TRACE_EVERY == 0) trace = traceContext(rng.next(), rng.next(), rng.next());
      long[] d = new long[7];
      for (int k = 0; k < 7; k++) d[k] = rng.next();
      Call c = new Call();
      c.id = i;
      c.method = MODES.get(mode);
      c.statusMessage = "";
      if (mod(d[0], 100) < 10) {
        c.statusCode = ERR_CODES[mod(d[1], ERR_CODES.length)];
        c.statusMessage = ERR_MESSAGES[mod(d[1] >>> 32, ERR_MESSAGES.length)];
      }
      boolean streamsReq = mode.equals("client-stream") || mode.equals("bidi");
      boolean streamsResp = mode.equals("server-stream") || mode.equals("bidi");
      c.reqCount = streamsReq ? count(d[2], false) : 1;
      c.respCount = streamsResp ? count(d[3], true) : 1;
      c.expectRespMessages = c.respCount;
      if (c.statusCode != 0 && (mode.equals("unary") || mode.equals("client-stream"))) {
        c.expectRespMessages = 0;
      }
      c.reqSize = size(d[4], c.reqCount);
      c.respSize = size(d[5], c.respCount);
      c.metadata.put("x-probebench-id", Integer.toString(i));
      c.metadata.put("x-tenant", "acme");
      c.metadata.put("x-client-version", CLIENT_VERSION);
      c.metadata.put("x-trace-context", trace);
      c.metadata.put("x-request-nonce", hex16(d[6]));
      plan.add(c);
    }
    return plan;
  }

  /** Responses answering request j of q when r are wanted in all. */
  static int bidiShare(int j, int q, int r) {
    return (int) ((long) (j + 1) * r / q - (long) j * r / q);
  }

  /** Just enough JSON for the plan and workload lines (as Python's json.dumps, no ASCII escaping). */
  static final class Json {
    static String str(String s) {
      StringBuilder b = new StringBuilder("\"");
      for (int i = 0; i < s.length(); i++) {
        char ch = s.charAt(i);
        switch (ch) {
          case '"' -> b.append("\\\"");
          case '\\' -> b.append("\\\\");
          case '\n' -> b.append("\\n");
          case '\r' -> b.append("\\r");
          case '\t' -> b.append("\\t");
          case '\b' -> b.append("\\b");
          case '\f' -> b.append("\\f");
          default -> {
            if (ch < 0x20) b.append(String.format("\\u%04x", (int) ch));
            else b.append(ch);
          }
        }
      }
      return b.append('"').toString();
    }

    static String obj(Map<String, String> m) {
      StringBuilder b = new StringBuilder("{");
      boolean first = true;
      for (Map.Entry<String, String> e : m.entrySet()) {
        if (!first) b.append(',');
        first = false;
        b.append(str(e.getKey())).append(':').append(str(e.getValue()));
      }
      return b.append('}').toString();
    }
  }

  static byte[] utf8(String s) {
    return s.getBytes(StandardCharsets.UTF_8);
  }

  private Plan() {}
}
