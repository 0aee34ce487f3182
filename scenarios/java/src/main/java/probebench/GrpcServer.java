package probebench;

import io.grpc.Server;
import io.grpc.ServerServiceDefinition;
import io.grpc.Status;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.ServerCalls;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.util.concurrent.TimeUnit;

/**
 * gRPC scenario server in Java (grpc-java on Netty). Serves probebench.Bench: every request
 * says how many responses of what size to send and which status to end with. Control
 * protocol: scenarios/README.md (READY port; exit 3 when the port cannot be bound; runs until
 * stdin closes or SIGTERM, then exits 0).
 */
public final class GrpcServer {
  private static final long STOP_GRACE_MS = 2000;

  private static void fail(int code, String message) {
    System.err.println("GrpcServer: " + message);
    System.err.flush();
    Runtime.getRuntime().halt(code);
  }

  private static void end(StreamObserver<Bench.Resp> out, Bench.Req req) {
    if (req != null && req.statusCode != 0) {
      out.onError(Status.fromCodeValue(req.statusCode).withDescription(req.statusMessage)
          .asRuntimeException());
    } else {
      out.onCompleted();
    }
  }

  static ServerServiceDefinition service() {
    return ServerServiceDefinition.builder(Bench.SERVICE)
        .addMethod(Bench.UNARY, ServerCalls.asyncUnaryCall((req, out) -> {
          if (req.statusCode != 0) {
            end(out, req);
            return;
          }
          out.onNext(Bench.resp(req.id, 0, req.respSize));
          out.onCompleted();
        }))
        .addMethod(Bench.SERVER_STREAM, ServerCalls.asyncServerStreamingCall((req, out) -> {
          for (int seq = 0; seq < req.respCount; seq++) out.onNext(Bench.resp(req.id, seq, req.respSize));
          end(out, req);
        }))
        .addMethod(Bench.CLIENT_STREAM, ServerCalls.asyncClientStreamingCall(out ->
            new StreamObserver<Bench.Req>() {
              Bench.Req first;

              @Override
              public void onNext(Bench.Req req) {
                if (first == null) first = req;
              }

              @Override
              public void onError(Throwable t) {}

              @Override
              public void onCompleted() {
                if (first != null && first.statusCode != 0) {
                  end(out, first);
                  return;
                }
                out.onNext(first == null ? Bench.resp(0, 0, 0)
                    : Bench.resp(first.id, 0, first.respSize));
                out.onCompleted();
              }
            }))
        .addMethod(Bench.BIDI, ServerCalls.asyncBidiStreamingCall(out ->
            new StreamObserver<Bench.Req>() {
              Bench.Req first;
              int seq;

              @Override
              public void onNext(Bench.Req req) {
                if (first == null) first = req;
                for (int k = 0; k < req.respCount; k++) out.onNext(Bench.resp(req.id, seq++, req.respSize));
              }

              @Override
              public void onError(Throwable t) {}

              @Override
              public void onCompleted() {
                end(out, first);
              }
            }))
        .build();
  }

  public static void main(String[] argv) throws Exception {
    Args a = Args.parse(argv);
    if (!a.get("proto", "grpc").equals("grpc")) fail(2, "only --proto grpc is served by the Java targets");
    String host = a.get("host", "127.0.0.1");
    int port = Integer.parseInt(a.get("port", "-1"));
    if (port < 0) fail(2, "need --port");
    double maxLifetime = Double.parseDouble(a.get("max-lifetime", "3600"));
    Server server = NettyServerBuilder.forAddress(new InetSocketAddress(host, port))
        .addService(service())
        .maxInboundMessageSize(8 << 20)
        .build();
    try {
      server.start();
    } catch (IOException e) {
      Throwable root = e;
      while (root.getCause() != null) root = root.getCause();
      fail(3, "cannot bind " + host + ":" + port + ": " + root.getMessage());
    }
    Thread stopper = new Thread(() -> {
      server.shutdown();
      try {
        if (!server.awaitTermination(STOP_GRACE_MS, TimeUnit.MILLISECONDS)) server.shutdownNow();
      } catch (InterruptedException e) {
        server.shutdownNow();
      }
    });
    Runtime.getRuntime().addShutdownHook(stopper);
    // The contract's exit 0 on SIGTERM (the JVM's own handler would exit 143).
    for (String sig : new String[] {"TERM", "INT"}) {
      sun.misc.Signal.handle(new sun.misc.Signal(sig), s -> Runtime.getRuntime().exit(0));
    }
    System.out.println("READY " + server.getPort());
    System.out.flush();
    Thread watch = new Thread(() -> {
      try {
        InputStream in = System.in;
        byte[] buf = new byte[256];
        while (in.read(buf) >= 0) {
          // drain until EOF: the runner closed our stdin
        }
      } catch (IOException ignored) {
        // a broken stdin means the same as EOF
      }
      Runtime.getRuntime().exit(0);
    });
    watch.setDaemon(true);
    watch.start();
    if (!server.awaitTermination((long) (maxLifetime * 1000), TimeUnit.MILLISECONDS)) {
      System.err.println("GrpcServer: --max-lifetime reached, exiting");
    }
    Runtime.getRuntime().exit(0);
  }

  private GrpcServer() {}
}
