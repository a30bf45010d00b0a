/**
 * The Deno adapter: {@linkcode Net} over `Deno.listen` and `Deno.connect`
 * (TCP, and Unix sockets with `transport: "unix"`).
 *
 * `read` and `write` go straight to the `Deno.TcpConn` (no per-read
 * allocation); Deno's errors are wrapped in moat's error classes here, at the
 * adapter boundary. `readable`/`writable` are built over `read`/`write` rather
 * than passed through, because Deno's own `conn.readable` closes the whole
 * resource at EOF and `conn.writable`'s close closes both directions, which
 * would break half-close (read EOF, then reply).
 *
 * This module touches `Deno` only inside functions, so importing it under Bun
 * is harmless.
 *
 * @module
 */

import { setTimeout as sleep } from "node:timers/promises";
import { ConnectionClosedError } from "../errors.ts";
import type {
  Addr,
  Conn,
  ConnectOptions,
  Listener,
  ListenOptions,
  Net,
  ServerTlsOptions,
  UnixConnectOptions,
  UnixListenOptions,
} from "./types.ts";
import { readableFrom, writableFrom } from "./streams.ts";
import {
  connectNodeTls,
  DeferredTlsConn,
  type ServerTlsContext,
  serverTlsContext,
} from "./node_tls.ts";
import {
  describe,
  formatAddr,
  toConnectError,
  toListenError,
  toUnixConnectError,
  toUnixListenError,
} from "./_errors.ts";
import { DescriptorReserve, isOutOfDescriptors } from "./_fd_reserve.ts";

/** Pause before a Unix listener retries a failed accept. */
const ACCEPT_RETRY_MS = 100;

/**
 * Returns the Deno implementation of {@linkcode Net}.
 *
 * Must only be called when running under Deno.
 *
 * @example Echo one message over loopback
 * ```ts ignore
 * import { denoNet } from "./deno.ts";
 * import assert from "node:assert/strict";
 *
 * const net = denoNet();
 * const listener = await net.listen({ hostname: "127.0.0.1", port: 0 });
 * const client = await net.connect(listener.addr);
 * const accepted = await listener[Symbol.asyncIterator]().next();
 * await client.write(new TextEncoder().encode("hi"));
 * const buf = new Uint8Array(2);
 * assert.equal(await accepted.value!.read(buf), 2);
 * client.close();
 * accepted.value!.close();
 * listener.close();
 * ```
 *
 * @returns The adapter, with `runtime` set to `"deno"`.
 */
export function denoNet(): Net {
  return {
    runtime: "deno",
    runtimeVersion: Deno.version.deno,
    listen: listenDeno,
    connect: connectDeno,
    listenUnix: listenUnixDeno,
    connectUnix: connectUnixDeno,
  };
}

function listenDeno(options: ListenOptions): Promise<Listener> {
  // Deno.listenTls cannot verify client certificates nor insist on TLS 1.3,
  // nor leave a refused peer without a TLS byte: TLS runs over node:tls.
  let tls: ServerTlsContext | undefined;
  try {
    tls = options.tls && serverTlsContext(options.tls);
  } catch (error) {
    return Promise.reject(error);
  }
  try {
    const listener = Deno.listen({
      hostname: options.hostname,
      port: options.port,
      transport: "tcp",
    });
    return Promise.resolve(new DenoListener(listener, options, tls));
  } catch (error) {
    return Promise.reject(toListenError(error, options));
  }
}

async function connectDeno(options: ConnectOptions): Promise<Conn> {
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({
      hostname: options.hostname,
      port: options.port,
      transport: "tcp",
    });
  } catch (error) {
    throw toConnectError(error, options);
  }
  // Deno.connectTls does not expose the server's certificate (pinning needs it).
  if (options.tls !== undefined) {
    return await connectNodeTls(new DenoConn(conn), options);
  }
  return new DenoConn(conn);
}

function listenUnixDeno(options: UnixListenOptions): Promise<Listener> {
  try {
    const listener = Deno.listen({ path: options.path, transport: "unix" });
    return Promise.resolve(new DenoUnixListener(listener, options.path));
  } catch (error) {
    return Promise.reject(toUnixListenError(error, options.path));
  }
}

async function connectUnixDeno(options: UnixConnectOptions): Promise<Conn> {
  let conn: Deno.UnixConn;
  try {
    conn = await Deno.connect({ path: options.path, transport: "unix" });
  } catch (error) {
    throw toUnixConnectError(error, options.path);
  }
  return new DenoConn(conn);
}

/**
 * A listening Unix socket; iterating it accepts connections until
 * `close()`, which also removes the socket file (as Bun's does). A failed
 * accept (out of descriptors) is retried after a pause, never in a spin.
 */
class DenoUnixListener implements Listener {
  readonly addr: Addr;
  #listener: Deno.UnixListener;
  #closed = false;

  constructor(listener: Deno.UnixListener, path: string) {
    this.#listener = listener;
    this.addr = { hostname: path, port: 0 };
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Conn, void, undefined> {
    while (!this.#closed) {
      let conn: Deno.UnixConn;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (
          this.#closed || error instanceof Deno.errors.BadResource ||
          error instanceof Deno.errors.Interrupted
        ) {
          return;
        }
        if (!(error instanceof Deno.errors.ConnectionAborted)) {
          await sleep(ACCEPT_RETRY_MS);
        }
        continue;
      }
      if (this.#closed) {
        conn.close();
        return;
      }
      yield new DenoConn(conn);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch {
      // Already closed by the runtime; close() never throws.
    }
    try {
      Deno.removeSync(this.addr.hostname);
    } catch {
      // Already gone (Deno removes it itself in some cases).
    }
  }
}

/**
 * A listening socket; iterating it accepts connections until `close()`.
 *
 * On a TLS port each connection is yielded at once and plain, and starts TLS
 * when the server calls its `handshake()` (see `./node_tls.ts`).
 *
 * A failed accept never ends the iteration: Deno reports EMFILE as a
 * rejected `accept()`, and the listener then answers with its descriptor
 * reserve (see `./_fd_reserve.ts`) and retries with backoff.
 */
class DenoListener implements Listener {
  readonly addr: Addr;
  #listener: Deno.TcpListener;
  #reserve: DescriptorReserve;
  #tls: ServerTlsContext | undefined;
  #closed = false;

  constructor(
    listener: Deno.TcpListener,
    options: ListenOptions,
    tls: ServerTlsContext | undefined,
  ) {
    this.#listener = listener;
    this.#tls = tls;
    this.addr = toAddr(listener.addr);
    this.#reserve = new DescriptorReserve({
      where: formatAddr(this.addr.hostname, this.addr.port),
      onAcceptError: options.onAcceptError,
      busyNotice: options.busyNotice,
      watch: false,
    });
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Conn, void, undefined> {
    const reserve = this.#reserve;
    while (!this.#closed) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (
          this.#closed || error instanceof Deno.errors.BadResource ||
          error instanceof Deno.errors.Interrupted
        ) {
          return;
        }
        // A peer that gave up between SYN and accept is not our failure.
        if (
          error instanceof Deno.errors.ConnectionAborted ||
          error instanceof Deno.errors.ConnectionReset
        ) {
          continue;
        }
        const released = reserve.exhaust(
          `Cannot accept on ${
            formatAddr(this.addr.hostname, this.addr.port)
          }: ${describe(error)}`,
          isOutOfDescriptors(error),
        );
        // With the spare just closed the retry can take one connection now.
        if (!released) await reserve.backoff();
        continue;
      }
      if (this.#closed) {
        conn.close();
        return;
      }
      reserve.accepted();
      if (reserve.exhausted) {
        // Awaited: its descriptor must be free before the next accept, or
        // that accept fails with EMFILE and backs off, capping refusals near
        // 1,000/s while the listen queue overflows (measured by the soak's
        // refused-flood row). A short line to a fresh socket fits its send
        // buffer, so a peer that reads nothing does not hold this up.
        await reserve.refuse(new DenoConn(conn));
        continue;
      }
      // On a TLS port the connection stays plain until handshake().
      yield this.#tls === undefined
        ? new DenoConn(conn)
        : new DeferredTlsConn(new DenoConn(conn), this.#tls);
    }
  }

  setTls(tls: ServerTlsOptions): void {
    if (this.#tls === undefined) {
      throw new TypeError("Cannot set TLS on a plain TCP listener");
    }
    this.#tls = serverTlsContext(tls);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#reserve.close();
    try {
      this.#listener.close();
    } catch {
      // Already closed by the runtime; close() never throws.
    }
  }
}

/** A connected stream over a `Deno.TcpConn` or a `Deno.UnixConn`. */
class DenoConn implements Conn {
  readonly localAddr: Addr;
  readonly remoteAddr: Addr;
  #conn: Deno.TcpConn | Deno.UnixConn;
  #closed = false;
  #writeClosed = false;
  /**
   * Why writing is over: set by the first write that found the connection
   * broken, or by close(). Later writes reject with it at once: each failed
   * op costs Deno a new error with a stack (45 µs each, measured on a busy
   * 2-core machine, against 1.8 µs given again), and a chat server relaying
   * to a member whose peer is gone may queue thousands of writes to it (N
   * members leaving at once make N² of them).
   */
  #writeError: unknown;
  /** Writes so far, up to 2: Nagle's algorithm is turned off before the second. */
  #writeCount = 0;
  #readable: ReadableStream<Uint8Array> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;

  constructor(conn: Deno.TcpConn | Deno.UnixConn) {
    this.#conn = conn;
    this.localAddr = toAddr(conn.localAddr);
    this.remoteAddr = toAddr(conn.remoteAddr);
  }

  async read(buf: Uint8Array): Promise<number | null> {
    if (this.#closed) return null;
    try {
      return await this.#conn.read(buf);
    } catch (error) {
      if (this.#closed) return null;
      throw toClosedError(error);
    }
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (this.#writeError !== undefined) throw this.#writeError;
    if (this.#closed || this.#writeClosed) throw closedLocally();
    // Nagle only holds back a segment while earlier data is unacknowledged,
    // so the first write goes out at once anyway; setting TCP_NODELAY before
    // the second saves an op on connections that write once (a refusal).
    if (
      this.#writeCount < 2 && ++this.#writeCount === 2 &&
      "setNoDelay" in this.#conn
    ) {
      try {
        this.#conn.setNoDelay(true);
      } catch {
        // The peer may be gone; the write below reports it.
      }
    }
    try {
      let written = await this.#conn.write(bytes);
      while (written < bytes.length) {
        const n = await this.#conn.write(bytes.subarray(written));
        if (n <= 0) {
          throw new ConnectionClosedError("Cannot write: no progress");
        }
        written += n;
      }
    } catch (error) {
      const failure = this.#closed ? closedLocally() : toClosedError(error);
      // Only a broken connection stays broken (not, say, a bad argument).
      if (!(failure instanceof ConnectionClosedError)) throw failure;
      throw this.#writeError ??= failure;
    }
  }

  async closeWrite(): Promise<void> {
    if (this.#closed) throw closedLocally();
    if (this.#writeClosed) return;
    this.#writeClosed = true;
    try {
      await this.#conn.closeWrite();
    } catch (error) {
      throw toClosedError(error);
    }
  }

  get readable(): ReadableStream<Uint8Array> {
    return this.#readable ??= readableFrom(this);
  }

  get writable(): WritableStream<Uint8Array> {
    return this.#writable ??= writableFrom(this);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#writeError ??= closedLocally();
    try {
      this.#conn.close();
    } catch {
      // Already closed by the runtime; close() never throws.
    }
  }
}

function toAddr(addr: Deno.NetAddr | Deno.UnixAddr): Addr {
  if ("path" in addr) return { hostname: addr.path ?? "", port: 0 };
  return { hostname: addr.hostname, port: addr.port };
}

function closedLocally(): ConnectionClosedError {
  return new ConnectionClosedError("Cannot write: the connection is closed");
}

/** Maps Deno's I/O errors on an open connection to ConnectionClosedError. */
function toClosedError(error: unknown): unknown {
  if (error instanceof Deno.errors.ConnectionReset) {
    return new ConnectionClosedError("Connection reset by peer", {
      cause: error,
    });
  }
  if (error instanceof Deno.errors.TimedOut) {
    return new ConnectionClosedError("Connection timed out", { cause: error });
  }
  if (
    error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.ConnectionAborted ||
    error instanceof Deno.errors.NotConnected ||
    error instanceof Deno.errors.UnexpectedEof ||
    error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.Interrupted
  ) {
    return new ConnectionClosedError(undefined, { cause: error });
  }
  return error;
}
