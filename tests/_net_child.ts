// deno-lint-ignore-file no-console
/**
 * A listener in a child process, for tests that need their own descriptor
 * limit (`tests/net_emfile_test.ts`). Listens on 127.0.0.1 port 0 with the
 * adapter of the runtime running it and prints one JSON line per event on
 * stdout:
 *
 * - `{"event":"listening","port":N}` once;
 * - `{"event":"accepted","open":N}` per connection yielded (N now open);
 * - `{"event":"exhausted"|"recovered",…}` from `onAcceptError`;
 * - `{"event":"tick"}` every 100 ms, so that a test can bound a period by
 *   events of the child's own event loop.
 *
 * Every connection is held open and answers "pong\n" to each "ping\n"; on a
 * TLS port (`--tls CERT KEY`) after its handshake, which starts at once.
 * While out of descriptors the listener answers `--busy LINE` (a newline is
 * added).
 *
 * Usage: `deno run -A tests/_net_child.ts --busy LINE [--tls CERT KEY]` or
 * `bun tests/_net_child.ts …`
 *
 * @module
 */

import * as fs from "node:fs";
import process from "node:process";
import { getNet } from "../lib/net/mod.ts";
import type { Conn } from "../lib/net/types.ts";

// As `moat serve` does at startup. Deno also creates its signal machinery on
// first use, which panics when that first use comes at the descriptor limit.
process.on("SIGTERM", () => process.exit(0));

function emit(event: Record<string, unknown>): void {
  console.log(JSON.stringify(event));
}

const args = process.argv.slice(2);
const busy = `${args[args.indexOf("--busy") + 1] ?? "ERR BUSY"}\n`;
const tlsAt = args.indexOf("--tls");
const tls = tlsAt < 0 ? undefined : {
  cert: fs.readFileSync(args[tlsAt + 1]!, "utf8"),
  key: fs.readFileSync(args[tlsAt + 2]!, "utf8"),
};

const listener = await getNet().listen({
  hostname: "127.0.0.1",
  port: 0,
  ...(tls && { tls }),
  onAcceptError: (event) => emit({ event: event.kind, ...event }),
  busyNotice: new TextEncoder().encode(busy),
});
emit({ event: "listening", port: listener.addr.port });
setInterval(() => emit({ event: "tick" }), 100);

const open = new Set<Conn>();
const PING = "ping\n".charCodeAt(0);
const PONG = new TextEncoder().encode("pong\n");

async function serve(conn: Conn): Promise<void> {
  try {
    await conn.handshake?.();
    const buf = new Uint8Array(64);
    for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
      // One "pong\n" per "ping\n" (each ping is one 5-byte write).
      if (buf[0] === PING) await conn.write(PONG);
    }
  } catch {
    // A failed handshake or a reset: the connection is closed below.
  } finally {
    conn.close();
    open.delete(conn);
  }
}

for await (const conn of listener) {
  open.add(conn);
  emit({ event: "accepted", open: open.size });
  void serve(conn);
}
