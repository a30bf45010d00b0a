/**
 * A session's connection as its handlers use it.
 *
 * @module
 */

import type { Addr, Conn, TlsInfo } from "../net/types.ts";
import { readableFrom, writableFrom } from "../net/streams.ts";

const RESOLVED: Promise<void> = Promise.resolve();

/**
 * Wraps an accepted connection for one session: writes go out one at a time
 * in call order, whoever makes them (a Pong may be sent while an ack or a
 * chat line is being written: two writes must never interleave, and on Deno
 * a large write may go out in pieces), and the bytes read and written are
 * counted for `moat status`.
 *
 * @example Count what a session wrote
 * ```ts ignore
 * const conn = new SessionConn(accepted);
 * await conn.write(frame);
 * assert.equal(conn.bytesOut, frame.length);
 * ```
 */
export class SessionConn implements Conn {
  /** Bytes read so far. */
  bytesIn = 0;
  /** Bytes written so far (those of writes that succeeded). */
  bytesOut = 0;
  #conn: Conn;
  #chain: Promise<void> = RESOLVED;
  #pending = 0;
  #readable: ReadableStream<Uint8Array> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;

  /**
   * Wraps `conn`; use only the wrapper from now on.
   *
   * @param conn The accepted connection.
   */
  constructor(conn: Conn) {
    this.#conn = conn;
  }

  get localAddr(): Addr {
    return this.#conn.localAddr;
  }

  get remoteAddr(): Addr {
    return this.#conn.remoteAddr;
  }

  get tls(): TlsInfo | undefined {
    return this.#conn.tls;
  }

  async read(buf: Uint8Array): Promise<number | null> {
    const n = await this.#conn.read(buf);
    if (n !== null) this.bytesIn += n;
    return n;
  }

  write(bytes: Uint8Array): Promise<void> {
    // Nothing queued: write now rather than a microtask later (chat latency).
    const idle = this.#pending === 0;
    this.#pending++;
    const written =
      (idle
        ? this.#conn.write(bytes)
        : this.#chain.then(() => this.#conn.write(bytes)))
        .then(() => {
          this.bytesOut += bytes.length;
        })
        .finally(() => this.#pending--);
    this.#chain = written.catch(() => {});
    return written;
  }

  /** Half-closes once every write queued before it is done. */
  closeWrite(): Promise<void> {
    return this.#chain.then(() => this.#conn.closeWrite());
  }

  get readable(): ReadableStream<Uint8Array> {
    return this.#readable ??= readableFrom(this);
  }

  get writable(): WritableStream<Uint8Array> {
    return this.#writable ??= writableFrom(this);
  }

  close(): void {
    this.#conn.close();
  }
}
