/**
 * Client heartbeats: a framed client whose server announced its idle timeout
 * (the Welcome's `idleTimeoutMs`) sends a Ping whenever it has sent nothing
 * for a third of it, so a quiet shipper or chat listener is never dropped as
 * idle. A server that announced nothing predates Ping and gets none.
 *
 * @module
 */

import { clearInterval, setInterval } from "node:timers";
import type { Conn } from "./net/types.ts";
import { encodeFrame } from "./framer.ts";
import { Kind, type Welcome } from "./protocol.ts";

/** Shortest interval between Pings, whatever idle timeout a server announces. */
export const MIN_HEARTBEAT_MS = 250;

const PING: Uint8Array = encodeFrame({
  type: Kind.Ping,
  payload: new Uint8Array(0),
});
const RESOLVED: Promise<void> = Promise.resolve();

/**
 * How long a client may stay silent before it pings: a third of the
 * server's idle timeout, at least {@linkcode MIN_HEARTBEAT_MS}.
 *
 * @example
 * ```ts
 * import { heartbeatInterval } from "./heartbeat.ts";
 * import assert from "node:assert/strict";
 * const welcome = { server: "moat/1", name: "c1", peer: "", maxFrameSize: 1024 };
 * assert.equal(heartbeatInterval({ ...welcome, idleTimeoutMs: 300_000 }), 100_000);
 * assert.equal(heartbeatInterval(welcome), undefined);
 * ```
 *
 * @param welcome The server's Welcome.
 * @returns The interval in ms, or undefined when the server takes no Ping.
 */
export function heartbeatInterval(welcome: Welcome): number | undefined {
  if (welcome.idleTimeoutMs === undefined) return undefined;
  return Math.max(MIN_HEARTBEAT_MS, Math.floor(welcome.idleTimeoutMs / 3));
}

/**
 * The one writer of a client's connection after the handshake: writes go
 * out one at a time in call order, and a Ping is slipped in when nothing
 * was written for `intervalMs` (checked every half interval, so the longest
 * silence is one and a half intervals, half the server's idle timeout).
 *
 * @example Chat lines and heartbeats on one connection
 * ```ts ignore
 * const { conn, welcome } = await openSession(client, "chat");
 * const heartbeat = new Heartbeat(conn, heartbeatInterval(welcome));
 * await heartbeat.write(encodeFrame({ type: Kind.Chat, payload }));
 * await heartbeat.stop();
 * await conn.closeWrite();
 * ```
 */
export class Heartbeat {
  #conn: Conn;
  #chain: Promise<void> = RESOLVED;
  #last = performance.now();
  #timer: ReturnType<typeof setInterval> | undefined;

  /**
   * Starts the heartbeat.
   *
   * @param conn The connection, past its handshake.
   * @param intervalMs Ping after this much silence; undefined sends none.
   */
  constructor(conn: Conn, intervalMs: number | undefined) {
    this.#conn = conn;
    if (intervalMs === undefined) return;
    this.#timer = setInterval(() => {
      if (performance.now() - this.#last >= intervalMs) {
        // A failed Ping is the connection failing; the reader reports it.
        this.write(PING).catch(() => {});
      }
    }, Math.max(MIN_HEARTBEAT_MS / 2, intervalMs / 2));
    // Stopped by its owner; it must never keep a finished process alive.
    this.#timer.unref();
  }

  /**
   * Writes `bytes` after everything written before, and counts as activity.
   *
   * @param bytes Whole frames; must not change until written.
   * @returns When written.
   * @throws {ConnectionClosedError} (as a rejection) When the connection is gone.
   */
  write(bytes: Uint8Array): Promise<void> {
    this.#last = performance.now();
    const written = this.#chain.then(() => this.#conn.write(bytes));
    this.#chain = written.catch(() => {});
    return written;
  }

  /**
   * Stops pinging.
   *
   * @returns When every write already queued has settled, so that the
   * caller may half-close the connection.
   */
  stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    return this.#chain;
  }
}
