/**
 * In-memory connections for in-process tests: {@linkcode memoryConnPair}
 * makes two connected `Conn`s, and {@linkcode memoryNet} a `Net` whose
 * listeners are fed by its `connect()`, so that a real `Server` runs in a
 * test with no socket. Runtime-neutral: runs under `deno test` and `bun test`.
 *
 * Each direction is a byte queue: a write is copied in and resolves once the
 * queue holds at most 64 KiB (backpressure); `closeWrite()` ends it (the peer
 * reads what is queued, then EOF); `close()` ends this end's writing (its
 * writes still waiting for room fail), throws away its unread input, and
 * makes the peer's later writes fail with `ConnectionClosedError`, as a reset
 * would.
 *
 * @module
 */

import type {
  Addr,
  Conn,
  ConnectOptions,
  Listener,
  ListenOptions,
  Net,
  TlsInfo,
} from "../lib/net/types.ts";
import {
  AddressInUseError,
  ConnectError,
  ConnectionClosedError,
} from "../lib/errors.ts";

/** A write resolves once the queue holds at most this many bytes. */
const HIGH_WATER = 64 * 1024;
/** Read size of the lazily built `readable`. */
const STREAM_CHUNK = 16 * 1024;

/** One direction of a connection: what one end writes and the other reads. */
class Pipe {
  #chunks: Uint8Array[] = [];
  #size = 0;
  /** The writer is done (closeWrite or close): EOF once the queue is read. */
  #ended = false;
  /** The reader closed: queued bytes are dropped and writes fail. */
  #gone = false;
  /** The writer closed: writes waiting for room fail. */
  #aborted = false;
  #read:
    | { buf: Uint8Array; resolve: (n: number | null) => void }
    | undefined;
  /** Writes waiting for the queue to fall to HIGH_WATER, and drain waiters. */
  #waiters: (() => void)[] = [];

  write(bytes: Uint8Array): Promise<void> {
    if (this.#gone) {
      return Promise.reject(
        new ConnectionClosedError("Connection reset by peer"),
      );
    }
    if (this.#ended) {
      return Promise.reject(
        new ConnectionClosedError("Cannot write: the connection is closed"),
      );
    }
    if (bytes.length === 0) return Promise.resolve();
    this.#chunks.push(bytes.slice());
    this.#size += bytes.length;
    this.#serve();
    if (this.#size <= HIGH_WATER) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.#gone) {
          reject(new ConnectionClosedError("Connection reset by peer"));
        } else if (this.#aborted) {
          reject(
            new ConnectionClosedError("Cannot write: the connection is closed"),
          );
        } else if (this.#size <= HIGH_WATER) resolve();
        else this.#waiters.push(check);
      };
      this.#waiters.push(check);
    });
  }

  read(buf: Uint8Array): Promise<number | null> {
    if (this.#read !== undefined) {
      return Promise.reject(new TypeError("Cannot read: a read is pending"));
    }
    if (this.#gone) return Promise.resolve(null);
    if (this.#size > 0) return Promise.resolve(this.#take(buf));
    if (this.#ended) return Promise.resolve(null);
    if (buf.length === 0) return Promise.resolve(0);
    return new Promise((resolve) => (this.#read = { buf, resolve }));
  }

  /** Resolves once every byte queued so far was read, or the reader left. */
  drained(): Promise<void> {
    return new Promise((resolve) => {
      const check = () => {
        if (this.#size === 0 || this.#gone) resolve();
        else this.#waiters.push(check);
      };
      check();
    });
  }

  /** The writer is done. */
  end(): void {
    this.#ended = true;
    this.#serve();
  }

  /**
   * The writer closed its end: it is done, and its writes still waiting for
   * room fail, as a closed socket's do (their bytes stay queued).
   */
  abort(): void {
    this.#aborted = true;
    this.end();
  }

  /** The reader is gone. */
  leave(): void {
    this.#gone = true;
    this.#chunks = [];
    this.#size = 0;
    this.#serve();
  }

  #serve() {
    const pending = this.#read;
    if (pending !== undefined) {
      if (this.#gone || (this.#size === 0 && this.#ended)) {
        this.#read = undefined;
        pending.resolve(null);
      } else if (this.#size > 0) {
        this.#read = undefined;
        pending.resolve(this.#take(pending.buf));
      }
    }
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  #take(buf: Uint8Array): number {
    let n = 0;
    while (n < buf.length && this.#chunks.length > 0) {
      const chunk = this.#chunks[0]!;
      const k = Math.min(chunk.length, buf.length - n);
      buf.set(chunk.subarray(0, k), n);
      n += k;
      if (k === chunk.length) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(k);
    }
    this.#size -= n;
    if (this.#waiters.length > 0) queueMicrotask(() => this.#serve());
    return n;
  }
}

/** One end of an in-memory connection, with what tests need to watch it. */
export interface MemoryConn extends Conn {
  /** The other end. */
  readonly peer: MemoryConn;
  /** True once `close()` was called on this end. */
  readonly isClosed: boolean;
  /**
   * Waits until the other end has read every byte this end wrote so far
   * (or closed): the event a test waits on before advancing a fake clock.
   */
  drained(): Promise<void>;
}

class MemoryConnImpl implements MemoryConn {
  readonly localAddr: Addr;
  readonly remoteAddr: Addr;
  readonly tls: TlsInfo | undefined;
  peer!: MemoryConn;
  #in: Pipe;
  #out: Pipe;
  #closed = false;
  #readable: ReadableStream<Uint8Array> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;

  constructor(
    pipes: { in: Pipe; out: Pipe },
    addrs: { local: Addr; remote: Addr },
    tls: TlsInfo | undefined,
  ) {
    this.#in = pipes.in;
    this.#out = pipes.out;
    this.localAddr = addrs.local;
    this.remoteAddr = addrs.remote;
    this.tls = tls;
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  read(buf: Uint8Array): Promise<number | null> {
    return this.#in.read(buf);
  }

  write(bytes: Uint8Array): Promise<void> {
    return this.#out.write(bytes);
  }

  closeWrite(): Promise<void> {
    this.#out.end();
    return Promise.resolve();
  }

  drained(): Promise<void> {
    return this.#out.drained();
  }

  get readable(): ReadableStream<Uint8Array> {
    this.#readable ??= new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        const buf = new Uint8Array(STREAM_CHUNK);
        const n = await this.read(buf);
        if (n === null) controller.close();
        else controller.enqueue(buf.subarray(0, n));
      },
    });
    return this.#readable;
  }

  get writable(): WritableStream<Uint8Array> {
    this.#writable ??= new WritableStream<Uint8Array>({
      write: (chunk) => this.write(chunk),
      close: () => this.closeWrite(),
    });
    return this.#writable;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#out.abort();
    this.#in.leave();
  }
}

/** Options for {@linkcode memoryConnPair}. */
export interface MemoryConnPairOptions {
  /** The client end's address (the server sees it as `remoteAddr`). @default {127.0.0.1:50000} */
  clientAddr?: Addr;
  /** The server end's address. @default {127.0.0.1:4320} */
  serverAddr?: Addr;
  /** What the server end reports as the TLS handshake's outcome. */
  tls?: TlsInfo;
}

/**
 * Makes two connected in-memory connections.
 *
 * @example
 * ```ts
 * import { memoryConnPair } from "./_memory_conn.ts";
 * import assert from "node:assert/strict";
 * const [client, server] = memoryConnPair({
 *   clientAddr: { hostname: "10.0.0.5", port: 5000 },
 * });
 * await client.write(new Uint8Array([1, 2]));
 * const buf = new Uint8Array(4);
 * assert.equal(await server.read(buf), 2);
 * assert.equal(server.remoteAddr.hostname, "10.0.0.5");
 * ```
 *
 * @param options Addresses of the two ends.
 * @returns The client end and the server end.
 */
export function memoryConnPair(
  options: MemoryConnPairOptions = {},
): [client: MemoryConn, server: MemoryConn] {
  const clientAddr = options.clientAddr ??
    { hostname: "127.0.0.1", port: 50000 };
  const serverAddr = options.serverAddr ??
    { hostname: "127.0.0.1", port: 4320 };
  const up = new Pipe();
  const down = new Pipe();
  const client = new MemoryConnImpl(
    { in: down, out: up },
    { local: clientAddr, remote: serverAddr },
    undefined,
  );
  const server = new MemoryConnImpl(
    { in: up, out: down },
    { local: serverAddr, remote: clientAddr },
    options.tls,
  );
  client.peer = server;
  server.peer = client;
  return [client, server];
}

/** A listener that yields the connections pushed into it. */
export interface MemoryListener extends Listener {
  /** Hands a connection to whoever iterates the listener. */
  push(conn: Conn): void;
  /** True once `close()` was called. */
  readonly isClosed: boolean;
}

class MemoryListenerImpl implements MemoryListener {
  readonly addr: Addr;
  #queue: Conn[] = [];
  #next: ((r: IteratorResult<Conn>) => void) | undefined;
  #closed = false;
  #onClose: () => void;

  constructor(addr: Addr, onClose: () => void) {
    this.addr = addr;
    this.#onClose = onClose;
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  push(conn: Conn): void {
    if (this.#closed) {
      conn.close();
      return;
    }
    const next = this.#next;
    this.#next = undefined;
    if (next) next({ value: conn, done: false });
    else this.#queue.push(conn);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#onClose();
    for (const conn of this.#queue) conn.close();
    this.#queue = [];
    const next = this.#next;
    this.#next = undefined;
    next?.({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<Conn> {
    return {
      next: () => {
        const conn = this.#queue.shift();
        if (conn !== undefined) {
          return Promise.resolve({ value: conn, done: false });
        }
        if (this.#closed) {
          return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve) => (this.#next = resolve));
      },
      return: () => {
        this.close();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

/** Options of {@linkcode MemoryNet.connect}: where to connect, and from where. */
export interface MemoryConnectOptions extends ConnectOptions {
  /** The client's address, as the server sees it. @default {127.0.0.1 and a new port} */
  from?: Addr;
}

/** A `Net` of in-memory listeners and connections. */
export interface MemoryNet extends Net {
  /** Listeners open now, by "host:port". */
  readonly listeners: ReadonlyMap<string, MemoryListener>;
  /**
   * Connects to the listener on `hostname:port` (or a wildcard host on that
   * port) and returns the client end; the server end is pushed into the
   * listener.
   */
  connect(options: MemoryConnectOptions): Promise<MemoryConn>;
}

/**
 * Makes a `Net` whose `listen()` returns in-memory listeners (port 0 picks
 * the next free port from 40000) and whose `connect()` hands the server end
 * of a {@linkcode memoryConnPair} to the listener and returns the client end.
 *
 * @example
 * ```ts
 * import { memoryNet } from "./_memory_conn.ts";
 * import assert from "node:assert/strict";
 * const net = memoryNet();
 * const listener = await net.listen({ hostname: "127.0.0.1", port: 0 });
 * const client = await net.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * for await (const conn of listener) {
 *   assert.equal(conn.remoteAddr.port, client.localAddr.port);
 *   break;
 * }
 * ```
 *
 * @returns The net.
 */
export function memoryNet(): MemoryNet {
  const listeners = new Map<string, MemoryListener>();
  let nextPort = 40000;
  let nextClientPort = 50000;
  return {
    runtime: "memory",
    runtimeVersion: "0",
    listeners,
    listen(options: ListenOptions): Promise<Listener> {
      const port = options.port === 0 ? nextPort++ : options.port;
      const key = `${options.hostname}:${port}`;
      if (listeners.has(key)) {
        return Promise.reject(
          new AddressInUseError(`Cannot listen on ${key}: address in use`),
        );
      }
      const l = new MemoryListenerImpl(
        { hostname: options.hostname, port },
        () => listeners.delete(key),
      );
      listeners.set(key, l);
      return Promise.resolve(l);
    },
    connect(options: MemoryConnectOptions): Promise<MemoryConn> {
      const l = listeners.get(`${options.hostname}:${options.port}`) ??
        listeners.get(`0.0.0.0:${options.port}`) ??
        listeners.get(`:::${options.port}`);
      if (l === undefined) {
        return Promise.reject(
          new ConnectError(
            `Cannot connect to ${options.hostname}:${options.port}: connection refused`,
          ),
        );
      }
      const [client, server] = memoryConnPair({
        clientAddr: options.from ??
          { hostname: "127.0.0.1", port: nextClientPort++ },
        serverAddr: l.addr,
      });
      l.push(server);
      return Promise.resolve(client);
    },
    // Unix sockets are files: tests of them use the runtime's own Net.
    listenUnix(options: { path: string }): Promise<Listener> {
      return Promise.reject(
        new TypeError(
          `Cannot listen on "${options.path}": memoryNet is TCP only`,
        ),
      );
    },
    connectUnix(options: { path: string }): Promise<Conn> {
      return Promise.reject(
        new ConnectError(
          `Cannot connect to "${options.path}": memoryNet is TCP only`,
        ),
      );
    },
  };
}
