package probebench;

import java.util.HashMap;
import java.util.Map;

/** `--name value` and `--flag` arguments, as the other targets take them. */
final class Args {
  private final Map<String, String> values = new HashMap<>();

  static Args parse(String[] argv) {
    Args a = new Args();
    for (int i = 0; i < argv.length; i++) {
      String k = argv[i];
      if (!k.startsWith("--")) throw new IllegalArgumentException("unexpected argument " + k);
      k = k.substring(2);
      int eq = k.indexOf('=');
      if (eq >= 0) {
        a.values.put(k.substring(0, eq), k.substring(eq + 1));
      } else if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) {
        a.values.put(k, argv[++i]);
      } else {
        a.values.put(k, "true");
      }
    }
    return a;
  }

  String get(String name, String dflt) {
    return values.getOrDefault(name, dflt);
  }

  boolean flag(String name) {
    return values.containsKey(name);
  }
}
