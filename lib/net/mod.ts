/**
 * The socket layer for the running runtime. Everything outside `lib/net/`
 * gets its sockets from {@linkcode getNet} and sees only the types of
 * `./types.ts`.
 *
 * The adapter is picked from `navigator.userAgent`, the way hono's
 * `getRuntimeKey()` does: `"Deno/…"` selects `./deno.ts`, `"Bun/…"` selects
 * `./bun.ts`. Both adapters are imported statically; neither touches its
 * runtime's global until it is called.
 *
 * @example Connect to a local server
 * ```ts ignore
 * import { getNet } from "./mod.ts";
 *
 * const net = getNet();
 * const conn = await net.connect({ hostname: "127.0.0.1", port: 4320 });
 * await conn.write(new TextEncoder().encode("hello"));
 * conn.close();
 * ```
 *
 * @module
 */

import { MoatError } from "../errors.ts";
import { bunNet } from "./bun.ts";
import { denoNet } from "./deno.ts";
import type { Net } from "./types.ts";

export type {
  Addr,
  Conn,
  ConnectOptions,
  Listener,
  ListenOptions,
  Net,
} from "./types.ts";

let current: Net | undefined;

/**
 * Returns the socket adapter for the running runtime, created on first use.
 *
 * @example Check which runtime is running
 * ```ts ignore
 * import { getNet } from "./mod.ts";
 * import assert from "node:assert/strict";
 *
 * assert.ok(["deno", "bun"].includes(getNet().runtime));
 * ```
 *
 * @returns The Deno or Bun implementation of {@linkcode Net}.
 * @throws {MoatError} With code `ERR_UNSUPPORTED_RUNTIME` when the runtime is
 * neither Deno nor Bun.
 */
export function getNet(): Net {
  if (current !== undefined) return current;
  const userAgent = globalThis.navigator?.userAgent ?? "";
  if (userAgent.startsWith("Deno")) current = denoNet();
  else if (userAgent.startsWith("Bun")) current = bunNet();
  else {
    throw new MoatError(
      "ERR_UNSUPPORTED_RUNTIME",
      `Cannot open sockets: unsupported runtime "${
        userAgent || "unknown"
      }", moat runs on Deno and Bun`,
    );
  }
  return current;
}

/**
 * Names the running runtime and its version, e.g. for `--version` output.
 *
 * @example Print the runtime
 * ```ts ignore
 * import { runtimeInfo } from "./mod.ts";
 * import assert from "node:assert/strict";
 *
 * const { runtime, version } = runtimeInfo();
 * assert.match(`${runtime} ${version}`, /^(deno|bun) \d+\.\d+\.\d+/);
 * ```
 *
 * @returns `runtime` ("deno" or "bun") and its `version` (e.g. "2.9.6").
 * @throws {MoatError} With code `ERR_UNSUPPORTED_RUNTIME` when the runtime is
 * neither Deno nor Bun.
 */
export function runtimeInfo(): { runtime: string; version: string } {
  const net = getNet();
  return { runtime: net.runtime, version: net.runtimeVersion };
}
