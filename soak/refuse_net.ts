// deno-lint-ignore-file no-console
/**
 * The refused-flood row's middle measure: moat's own socket layer
 * (`lib/net/`, on the runtime running this) refusing every connection the
 * way the server's `Refusals` do — write the refusal line, half-close,
 * drain what the peer sent, close — with no guard, audit log or server
 * around it. Between `soak/refuse.c` and `moat serve` under the same flood,
 * it splits moat's CPU per refusal into what the runtime and the adapter
 * cost and what the server adds.
 *
 * Usage: `deno run -A soak/refuse_net.ts` or `bun soak/refuse_net.ts`;
 * listens on a free port of 127.0.0.1, prints it, runs until killed.
 *
 * @module
 */

import { getNet } from "../lib/net/mod.ts";

const NOTICE = new TextEncoder().encode(
  "ERR ACCESS_DENIED access refused by server\n",
);
const DISCARD = new Uint8Array(4096);

const listener = await getNet().listen({ hostname: "127.0.0.1", port: 0 });
console.log(listener.addr.port);
for await (const conn of listener) {
  (async () => {
    try {
      await conn.write(NOTICE);
      await conn.closeWrite();
      while ((await conn.read(DISCARD)) !== null) {
        // What a refused peer sent is never looked at.
      }
    } catch {
      // A reset peer: nothing to do but close.
    }
    conn.close();
  })();
}
