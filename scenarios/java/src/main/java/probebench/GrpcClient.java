package probebench;

import io.grpc.CallOptions;
import io.grpc.ClientCall;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.MetadataUtils;
import io.grpc.stub.StreamObserver;
import java.io.BufferedReader;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * gRPC scenario client in Java (grpc-java on Netty). Plays the seeded call plan of
 * scenarios/plan-grpc.md over C channels (one HTTP/2 connection each), a few calls in flight
 * per channel, checks every call's outcome against the plan and writes workload.jsonl.
 * Control protocol: scenarios/README.md.
 */
public final class GrpcClient {
  static final long STARTED = System.nanoTime();
  static final long CALL_TIMEOUT_MS = 30_000;
  static final int MAX_MSG_SIZE = 8 << 20;

  static final class CallFailed extends Exception {
    CallFailed(String m) {
      super(m);
    }
  }

  /** One channel: one HTTP/2 connection. */
  static final class Conn {
    final int idx;
    final ManagedChannel channel;
    final Integer port;
    final AtomicInteger seq = new AtomicInteger();

    Conn(int idx, ManagedChannel channel, Integer port) {
      this.idx = idx;
      this.channel = channel;
      this.port = port;
    }
  }

  /** Messages and wire bytes of one call. */
  static final class Tally {
    int reqMessages;
    long reqBytes;
    int respMessages;
    long respBytes;

    synchronized void sent(Bench.Req r) {
      reqMessages++;
      reqBytes += Bench.encode(r).length;
    }

    synchronized void received(Bench.Resp r) {
      respMessages++;
      respBytes += r.wireSize;
    }
  }

  final String mode;
  final String host;
  final int port;
  final List<Plan.Call> plan;
  final int connections;
  final int warmup;
  final int inflight;
  final long deadlineNs;
  final List<Conn> conns = new ArrayList<>();
  final List<String> errors = new ArrayList<>();
  final AtomicInteger nextId = new AtomicInteger();
  Writer out;

  GrpcClient(Args a, List<Plan.Call> plan) {
    this.mode = a.get("mode", "unary");
    this.host = a.get("host", "127.0.0.1");
    this.port = Integer.parseInt(a.get("port", "0"));
    this.plan = plan;
    this.connections = Integer.parseInt(a.get("connections", "2"));
    this.warmup = Integer.parseInt(a.get("warmup", "0"));
    this.inflight = Integer.parseInt(a.get("inflight", "3"));
    double deadline = Double.parseDouble(a.get("deadline", "120"));
    // Keep a little of --deadline for teardown, so the process as a whole stays within it.
    this.deadlineNs = STARTED + (long) ((deadline - Math.min(1.0, 0.1 * deadline)) * 1e9);
  }

  long remainingMs() throws CallFailed {
    long left = (deadlineNs - System.nanoTime()) / 1_000_000;
    if (left <= 0) throw new CallFailed("deadline passed");
    return left;
  }

  /** Local ports of this process's established TCP connections to the server port: the
   * channel's socket is not exposed, so compare the kernel's table with our own fds. */
  Set<Integer> ownTcpPorts() {
    Set<String> inodes = new HashSet<>();
    try (DirectoryStream<Path> fds = Files.newDirectoryStream(Path.of("/proc/self/fd"))) {
      for (Path fd : fds) {
        try {
          String t = Files.readSymbolicLink(fd).toString();
          if (t.startsWith("socket:[")) inodes.add(t.substring(8, t.length() - 1));
        } catch (IOException ignored) {
          // closed since the listing
        }
      }
    } catch (IOException e) {
      return Set.of();
    }
    Set<Integer> ports = new HashSet<>();
    for (String table : new String[] {"/proc/self/net/tcp", "/proc/self/net/tcp6"}) {
      List<String> lines;
      try {
        lines = Files.readAllLines(Path.of(table));
      } catch (IOException e) {
        continue;
      }
      for (String line : lines.subList(1, lines.size())) {
        String[] f = line.trim().split("\\s+");
        if (f.length < 10) continue;
        String local = f[1];
        String remote = f[2];
        int remotePort = Integer.parseInt(remote.substring(remote.lastIndexOf(':') + 1), 16);
        if (f[3].equals("01") && remotePort == port && inodes.contains(f[9])) {
          ports.add(Integer.parseInt(local.substring(local.lastIndexOf(':') + 1), 16));
        }
      }
    }
    return ports;
  }

  Conn open(int idx) throws CallFailed {
    Set<Integer> before = ownTcpPorts();
    ManagedChannel ch = NettyChannelBuilder.forAddress(host, port)
        .usePlaintext()
        .maxInboundMessageSize(MAX_MSG_SIZE)
        .proxyDetector(addr -> null) // loopback only: never a proxy from the environment
        .build();
    ch.getState(true); // connect now
    long until = System.nanoTime() + Math.min(10_000, remainingMs()) * 1_000_000;
    while (ch.getState(false) != io.grpc.ConnectivityState.READY) {
      if (System.nanoTime() > until) throw new CallFailed("connection " + idx + " not ready");
      try {
        Thread.sleep(5);
      } catch (InterruptedException e) {
        throw new CallFailed("interrupted");
      }
    }
    Set<Integer> fresh = ownTcpPorts();
    fresh.removeAll(before);
    // Exactly one new connection is this channel's; anything else is unknown (null).
    return new Conn(idx, ch, fresh.size() == 1 ? fresh.iterator().next() : null);
  }

  Bench.Req request(Plan.Call c, int j) {
    Bench.Req r = new Bench.Req();
    r.id = c.id;
    r.payloadLen = c.reqSize;
    r.respCount = mode.equals("bidi") ? Plan.bidiShare(j, c.reqCount, c.respCount) : c.respCount;
    r.respSize = c.respSize;
    r.statusCode = c.statusCode;
    r.statusMessage = c.statusMessage;
    return r;
  }

  /** Runs one call; returns its final status. */
  Status exchange(Conn conn, Plan.Call c, Tally tally) throws CallFailed {
    Metadata md = new Metadata();
    for (String k : Plan.METADATA_KEYS) {
      md.put(Metadata.Key.of(k, Metadata.ASCII_STRING_MARSHALLER), c.metadata.get(k));
    }
    long timeout = Math.min(CALL_TIMEOUT_MS, remainingMs());
    CallOptions opts = CallOptions.DEFAULT.withDeadlineAfter(timeout, TimeUnit.MILLISECONDS)
        .withMaxInboundMessageSize(MAX_MSG_SIZE);
    io.grpc.Channel ch = io.grpc.ClientInterceptors.intercept(conn.channel,
        MetadataUtils.newAttachHeadersInterceptor(md));
    MethodDescriptor<Bench.Req, Bench.Resp> method = switch (mode) {
      case "unary" -> Bench.UNARY;
      case "server-stream" -> Bench.SERVER_STREAM;
      case "client-stream" -> Bench.CLIENT_STREAM;
      default -> Bench.BIDI;
    };
    ClientCall<Bench.Req, Bench.Resp> call = ch.newCall(method, opts);
    CompletableFuture<Status> done = new CompletableFuture<>();
    StreamObserver<Bench.Resp> responses = new StreamObserver<>() {
      @Override
      public void onNext(Bench.Resp r) {
        tally.received(r);
        if (tally.respMessages > c.respCount) call.cancel("more responses than planned", null);
      }

      @Override
      public void onError(Throwable t) {
        done.complete(Status.fromThrowable(t));
      }

      @Override
      public void onCompleted() {
        done.complete(Status.OK);
      }
    };
    if (mode.equals("unary") || mode.equals("server-stream")) {
      Bench.Req req = request(c, 0);
      tally.sent(req);
      if (mode.equals("unary")) ClientCalls.asyncUnaryCall(call, req, responses);
      else ClientCalls.asyncServerStreamingCall(call, req, responses);
    } else {
      StreamObserver<Bench.Req> requests = mode.equals("client-stream")
          ? ClientCalls.asyncClientStreamingCall(call, responses)
          : ClientCalls.asyncBidiStreamingCall(call, responses);
      for (int j = 0; j < c.reqCount; j++) {
        Bench.Req req = request(c, j);
        tally.sent(req);
        requests.onNext(req);
      }
      requests.onCompleted();
    }
    try {
      return done.get(timeout + 5_000, TimeUnit.MILLISECONDS);
    } catch (InterruptedException | ExecutionException | TimeoutException e) {
      call.cancel("client gave up", e);
      throw new CallFailed("call " + c.id + ": no outcome (" + e + ")");
    }
  }

  void call(Conn conn, int callId, String phase) throws CallFailed, IOException {
    Plan.Call c = plan.get(callId);
    int seq = conn.seq.getAndIncrement();
    Tally tally = new Tally();
    long tStart = System.nanoTime();
    Status st = exchange(conn, c, tally);
    long tEnd = System.nanoTime();
    int code = st.getCode().value();
    String message = st.getDescription() == null ? "" : st.getDescription();
    if (code != c.statusCode || !message.equals(c.statusMessage)) {
      throw new CallFailed("call " + callId + ": got status " + code + " " + Plan.Json.str(message)
          + ", planned " + c.statusCode + " " + Plan.Json.str(c.statusMessage));
    }
    if (tally.reqMessages != c.reqCount || tally.respMessages != c.expectRespMessages) {
      throw new CallFailed("call " + callId + ": " + tally.reqMessages + "/" + tally.respMessages
          + " messages sent/received, planned " + c.reqCount + "/" + c.expectRespMessages);
    }
    // System.nanoTime is CLOCK_MONOTONIC on Linux: the clock of the BPF programs.
    String line = "{\"id\": " + c.id
        + ", \"protocol\": \"h2c-grpc\""
        + ", \"client_ip\": " + Plan.Json.str(host)
        + ", \"client_port\": " + (conn.port == null ? "null" : conn.port.toString())
        + ", \"server_ip\": " + Plan.Json.str(host)
        + ", \"server_port\": " + port
        + ", \"conn_seq\": " + seq
        + ", \"conn\": " + conn.idx
        + ", \"method\": \"POST\""
        + ", \"path\": " + Plan.Json.str(c.method)
        + ", \"status\": 200"
        + ", \"grpc_status\": " + code
        + ", \"grpc_message\": " + Plan.Json.str(message)
        + ", \"req_bytes\": " + tally.reqBytes
        + ", \"resp_bytes\": " + tally.respBytes
        + ", \"req_messages\": " + tally.reqMessages
        + ", \"resp_messages\": " + tally.respMessages
        + ", \"req_headers\": " + Plan.Json.obj(c.metadata)
        + ", \"t_start_ns\": " + tStart
        + ", \"t_end_ns\": " + tEnd
        + ", \"phase\": " + Plan.Json.str(phase) + "}\n";
    synchronized (this) {
      out.write(line);
    }
  }

  void worker(Conn conn) {
    while (true) {
      synchronized (this) {
        if (!errors.isEmpty()) return;
      }
      int id = nextId.getAndIncrement();
      if (id >= plan.size()) return;
      try {
        call(conn, id, "main");
      } catch (Exception e) {
        synchronized (this) {
          errors.add(e.getMessage() == null ? e.toString() : e.getMessage());
        }
        return;
      }
    }
  }

  void waitGo(BufferedReader stdin) throws CallFailed, IOException {
    long until = System.nanoTime() + remainingMs() * 1_000_000;
    while (!stdin.ready()) {
      if (System.nanoTime() > until) throw new CallFailed("deadline passed waiting for GO");
      try {
        Thread.sleep(2);
      } catch (InterruptedException e) {
        throw new CallFailed("interrupted");
      }
    }
    String line = stdin.readLine();
    if (line == null || !line.trim().equals("GO")) {
      throw new CallFailed("expected GO on stdin, got " + line);
    }
  }

  void run(String workload) throws Exception {
    try (Writer w = new OutputStreamWriter(new FileOutputStream(workload, true),
        StandardCharsets.UTF_8)) {
      out = w;
      try {
        for (int i = 0; i < connections; i++) conns.add(open(i));
        int warm = Math.min(warmup * connections, plan.size());
        for (int i = 0; i < warm; i++) call(conns.get(i % connections), i, "warmup");
        nextId.set(warm);
        if (warmup > 0) {
          w.flush();
          System.out.println("WARM");
          System.out.flush();
          waitGo(new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8)));
        }
        List<Thread> threads = new ArrayList<>();
        for (Conn c : conns) {
          for (int k = 0; k < inflight; k++) {
            Thread t = new Thread(() -> worker(c));
            t.setDaemon(true);
            threads.add(t);
            t.start();
          }
        }
        for (Thread t : threads) t.join(Math.max(0, remainingMs()) + 1000);
        for (Thread t : threads) {
          if (t.isAlive()) throw new CallFailed("deadline passed with calls in flight");
        }
        synchronized (this) {
          if (!errors.isEmpty()) throw new CallFailed(errors.get(0));
        }
      } finally {
        for (Conn c : conns) c.channel.shutdownNow();
      }
    }
  }

  public static void main(String[] argv) {
    Args a;
    try {
      a = Args.parse(argv);
    } catch (IllegalArgumentException e) {
      System.err.println("GrpcClient: " + e.getMessage());
      System.exit(2);
      return;
    }
    String mode = a.get("mode", "unary");
    if (!a.get("proto", "grpc").equals("grpc") || !Plan.MODES.containsKey(mode)) {
      System.err.println("GrpcClient: only --proto grpc with a known --mode");
      System.exit(2);
    }
    int n = Integer.parseInt(a.get("exchanges", "100"));
    long seed = Long.parseUnsignedLong(a.get("seed", "1"));
    List<Plan.Call> plan = Plan.make(mode, n, seed);
    if (a.flag("print-plan")) {
      StringBuilder b = new StringBuilder();
      for (Plan.Call c : plan) b.append(c.toJson()).append('\n');
      System.out.write(Plan.utf8(b.toString()), 0, Plan.utf8(b.toString()).length);
      System.out.flush();
      System.exit(0);
    }
    String workload = a.get("workload", null);
    if (workload == null || Integer.parseInt(a.get("port", "0")) <= 0) {
      System.err.println("GrpcClient: need --workload, --port");
      System.exit(2);
    }
    try {
      new GrpcClient(a, plan).run(workload);
    } catch (Exception e) {
      System.err.println("GrpcClient: " + (e.getMessage() == null ? e.toString() : e.getMessage()));
      System.err.flush();
      Runtime.getRuntime().halt(1);
    }
    System.out.println("DONE " + n);
    System.out.flush();
    Runtime.getRuntime().halt(0); // grpc-java's executor threads would keep the JVM a moment
  }
}
