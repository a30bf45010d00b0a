/**
 * The Bun adapter: {@linkcode Net} over `Bun.listen` and `Bun.connect`
 * (TCP, and Unix sockets with `unix`).
 *
 * Bun delivers bytes through callbacks; this module turns them into the pull
 * API of {@linkcode Conn}:
 *
 * - On a plain connection (not TLS) `read` first takes what the kernel holds
 *   with a non-blocking `recv(2)` straight into the caller's buffer
 *   (`./_bun_recv.ts`, through `bun:ffi`), and Bun's own reading stays paused
 *   meanwhile. Only a read that finds nothing waits on Bun's `data` callback;
 *   a client in the middle of a bulk transfer first looks again a few times,
 *   a millisecond apart. Where `bun:ffi` or libc is not there, or on TLS,
 *   every read goes through the callbacks, as below.
 * - Received chunks are queued and copied into the caller's buffer by `read`.
 *   Bun hands every `data` callback a freshly allocated array (measured on Bun
 *   1.4.5: each chunk owns its own `ArrayBuffer`), so chunks are queued without
 *   a copy. When more unread bytes sit in the queue than twice the largest
 *   buffer a read asked for (at least 256 KiB, at most 2 MiB) the socket is
 *   paused (`socket.pause()`), and resumed once the queue falls to a quarter
 *   of that, so a slow reader pushes back on the sender through TCP: a
 *   server reading 4 KiB at a time holds 256 KiB per connection, a client
 *   reading 1 MiB frames keeps 2 MiB ahead of it.
 * - Bun delivers bytes to a paused socket only when the connection breaks
 *   (the peer reset it while we were writing to it): it then reads the
 *   whole kernel receive buffer at once, MiBs per connection (measured on
 *   Bun 1.4.5; pausing held on healthy plain and TLS connections). Those
 *   bytes are not kept, the socket is closed at the first of them, and reads
 *   end with a `ConnectionClosedError` once the bytes queued before are read.
 * - `socket.write` is unbuffered and returns how many bytes it took; the rest
 *   of the caller's array is kept (not copied) and written on `drain`. `write`
 *   resolves only once every byte was accepted.
 * - Half-close uses `socket.shutdown()` with no argument (SHUT_WR). On Bun
 *   1.4.5 `shutdown(true)` shuts the read side instead, contrary to its docs.
 * - Sockets are opened with `allowHalfOpen: true`, so a peer's FIN ends our
 *   reads but not our writes.
 *
 * An idle connection holds only the socket and one small object: no buffers
 * are allocated until data arrives (measured on Bun 1.4.5: about 0.6 KiB of
 * JS heap and 2 KiB of RSS per idle accepted connection).
 *
 * This module touches `Bun` only inside functions, so importing it under Deno
 * is harmless.
 *
 * @module
 */

import { setImmediate } from "node:timers";
import {
  AddressInUseError,
  ConnectError,
  ConnectionClosedError,
  ExitCode,
  MoatError,
} from "../errors.ts";
import type {
  Addr,
  ClientTlsOptions,
  Conn,
  ConnectOptions,
  Listener,
  ListenOptions,
  Net,
  ServerTlsOptions,
  TlsInfo,
  UnixConnectOptions,
  UnixListenOptions,
} from "./types.ts";
import { DescriptorReserve } from "./_fd_reserve.ts";
import { checkServerKey } from "./node_tls.ts";
import { tls as nodeTls } from "../builtins.ts";
import { AcceptQueue } from "./_accept_queue.ts";
import { directRecv, type Recv } from "./_bun_recv.ts";
import { pullByob, writableFrom } from "./streams.ts";
import {
  connectReason,
  describe,
  errorCode,
  formatAddr,
  handshakeReason,
  isCertificateCode,
  toClosedError,
  toListenError,
  toTlsConnectError,
} from "./_errors.ts";

/** The subset of Bun's TCP socket used here. */
interface BunSocket {
  data: BunConn | undefined;
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localAddress: string;
  readonly localPort: number;
  /** The descriptor; -1 once Bun closed the socket. */
  readonly fd: number;
  write(data: Uint8Array, byteOffset?: number, byteLength?: number): number;
  shutdown(halfClose?: boolean): void;
  end(): void;
  /** Closes at once, without flushing. */
  terminate(): void;
  pause(): void;
  resume(): void;
  setNoDelay(noDelay?: boolean): boolean;
  /** TLS sockets only. */
  readonly authorized?: boolean;
  /** TLS sockets only: the peer's certificate, node-style (`raw` is DER). */
  getPeerCertificate?(): { raw?: Uint8Array } | null | undefined;
  /**
   * Starts TLS on this socket. Returns the raw socket (which keeps receiving
   * the encrypted bytes through its own handler) and the TLS socket.
   */
  upgradeTLS(options: BunUpgradeOptions): [BunSocket, BunSocket];
}

/** Bun's `upgradeTLS` options (server side: `isServer`). */
interface BunUpgradeOptions {
  isServer: boolean;
  data: BunConn;
  tls: BunTlsOptions;
  socket: BunSocketHandler;
  /** Bytes already read off the raw socket: the start of the ClientHello. */
  initialData?: Uint8Array;
}

/** Socket callbacks; Bun shares one set among all sockets of a server. */
interface BunSocketHandler {
  binaryType: "uint8array";
  open(socket: BunSocket): void;
  data(socket: BunSocket, data: Uint8Array): void;
  drain(socket: BunSocket): void;
  end(socket: BunSocket): void;
  close(socket: BunSocket, error?: Error): void;
  error(socket: BunSocket, error: Error): void;
  /** TLS only: the handshake finished (`success` false: it failed). */
  handshake?(
    socket: BunSocket,
    success: boolean,
    authorizationError: Error | null,
  ): void;
}

/** Bun's `tls` option; `minVersion` is a number there (0x0304 is TLS 1.3). */
interface BunTlsOptions {
  cert?: string;
  key?: string;
  ca?: string;
  requestCert?: boolean;
  rejectUnauthorized: boolean;
  serverName?: string;
  minVersion: number;
}

interface BunSocketOptions {
  hostname: string;
  port: number;
  allowHalfOpen: boolean;
  socket: BunSocketHandler;
  tls?: BunTlsOptions;
}

/** A Unix socket instead of a host and port. */
interface BunUnixSocketOptions {
  unix: string;
  allowHalfOpen: boolean;
  socket: BunSocketHandler;
}

/** The subset of Bun's TCP server used here. */
interface BunServer {
  readonly hostname: string;
  readonly port: number;
  stop(closeActiveConnections?: boolean): void;
  /** Fills `out` with the bound address (Node-style; not in Bun's typings). */
  getsockname?(out: { address?: string; port?: number }): void;
}

/** Only what this module uses; Deno type-checks this file without Bun's types. */
declare const Bun: {
  readonly version: string;
  listen(options: BunSocketOptions | BunUnixSocketOptions): BunServer;
  connect(options: BunSocketOptions | BunUnixSocketOptions): Promise<BunSocket>;
};

/**
 * Unread received bytes above which a socket is paused, until a read asks
 * for more (see {@linkcode PAUSE_ABOVE_MAX}): a server reads 4 KiB at a
 * time, and 60 shippers it was not reading held 2 MiB each with a fixed
 * threshold (Bun's peak RSS in the soak's flood of empty records).
 */
const PAUSE_ABOVE_MIN = 256 * 1024;
/**
 * The most unread received bytes before a pause: twice the largest read
 * buffer, up to this, so a client reading 1 MiB frames keeps its pace.
 */
const PAUSE_ABOVE_MAX = 2 * 1024 * 1024;

/**
 * Direct reads in a row before one waits for a macrotask: a reader that
 * always finds bytes waiting would otherwise run in microtasks only and
 * starve timers (the client's stall timeout) and signal handlers.
 */
const DIRECT_READS_PER_TURN = 64;

/**
 * A client's bulk read that finds the kernel queue empty looks again after
 * this many ms, up to POLL_TRIES times, before it waits on Bun; see
 * BunConn's #poll.
 */
const POLL_MS = 1;
const POLL_TRIES = 4;
/** Bytes a connection reads without a pause before it counts as a bulk transfer. */
const BULK_BYTES = 1_048_576;

/** Buffer a default stream reader waits with when no data is queued. */
const STREAM_WAIT_SIZE = 16_384;

const RESOLVED: Promise<void> = Promise.resolve();
const EMPTY_CHUNK = new Uint8Array(0);
const EOF: Promise<number | null> = Promise.resolve(null);
/** TLS1_3_VERSION, as Bun wants `minVersion`. */
const TLS_1_3 = 0x0304;

/**
 * Returns the Bun implementation of {@linkcode Net}.
 *
 * Must only be called when running under Bun.
 *
 * @example Echo one message over loopback
 * ```ts ignore
 * import { bunNet } from "./bun.ts";
 * import assert from "node:assert/strict";
 *
 * const net = bunNet();
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
 * @returns The adapter, with `runtime` set to `"bun"`.
 */
export function bunNet(): Net {
  const clientHandler = BunConn.handler(null);
  const tlsClientHandler = BunConn.handler(null, { tls: true });
  return {
    runtime: "bun",
    runtimeVersion: Bun.version,
    listen(options: ListenOptions): Promise<Listener> {
      try {
        return Promise.resolve(new BunListener(options));
      } catch (error) {
        if (error instanceof MoatError) return Promise.reject(error);
        return Promise.reject(toListenError(error, options));
      }
    },
    async connect(options: ConnectOptions): Promise<Conn> {
      let socket: BunSocket;
      try {
        socket = await Bun.connect({
          hostname: options.hostname,
          port: options.port,
          allowHalfOpen: true,
          socket: options.tls ? tlsClientHandler : clientHandler,
          ...(options.tls && {
            tls: clientTls(options.tls, options.hostname),
          }),
        });
      } catch (error) {
        throw toConnectError(error, options);
      }
      const conn = socket.data;
      if (conn === undefined) {
        socket.end();
        throw new ConnectError(
          `Cannot connect to ${
            formatAddr(options.hostname, options.port)
          }: socket did not open`,
        );
      }
      if (options.tls) {
        try {
          await conn.handshaken;
        } catch (error) {
          conn.close();
          throw toTlsConnectError(error, options);
        }
      }
      return conn;
    },
    listenUnix(options: UnixListenOptions): Promise<Listener> {
      try {
        return Promise.resolve(new BunUnixListener(options.path));
      } catch (error) {
        return Promise.reject(toUnixListenError(error, options.path));
      }
    },
    async connectUnix(options: UnixConnectOptions): Promise<Conn> {
      let socket: BunSocket;
      try {
        socket = await Bun.connect({
          unix: options.path,
          allowHalfOpen: true,
          socket: clientHandler,
        });
      } catch (error) {
        const code = errorCode(error);
        const reason = code === "ENOENT"
          ? "no such socket"
          : code === "ECONNREFUSED"
          ? "connection refused"
          : code === "EACCES" || code === "EPERM"
          ? "permission denied"
          : describe(error);
        throw new ConnectError(
          `Cannot connect to "${options.path}": ${reason}`,
          { cause: error },
        );
      }
      const conn = socket.data;
      if (conn === undefined) {
        socket.end();
        throw new ConnectError(
          `Cannot connect to "${options.path}": socket did not open`,
        );
      }
      return conn;
    },
  };
}

/** Wraps a failure to listen on a Unix socket. */
function toUnixListenError(error: unknown, path: string): unknown {
  const code = errorCode(error);
  if (code === "EADDRINUSE") {
    return new AddressInUseError(
      `Cannot listen on "${path}": something exists there already`,
      { cause: error },
    );
  }
  const reason = code === "ENOENT"
    ? "no such directory"
    : code === "EACCES" || code === "EPERM"
    ? "permission denied"
    : describe(error);
  return new MoatError(
    "ERR_LISTEN",
    `Cannot listen on "${path}": ${reason}`,
    undefined,
    { cause: error },
  );
}

/**
 * A listening Unix socket; iterating it yields accepted connections until
 * `close()`, which removes the socket file (Bun's `stop` does).
 */
class BunUnixListener implements Listener {
  readonly addr: Addr;
  #server: BunServer;
  #queue = new AcceptQueue();

  constructor(path: string) {
    const queue = this.#queue;
    this.#server = Bun.listen({
      unix: path,
      allowHalfOpen: true,
      socket: BunConn.handler((conn) => queue.push(conn)),
    });
    this.addr = { hostname: path, port: 0 };
  }

  [Symbol.asyncIterator](): AsyncGenerator<Conn, void, undefined> {
    return this.#queue[Symbol.asyncIterator]();
  }

  close(): void {
    if (!this.#queue.close()) return;
    try {
      this.#server.stop(false);
    } catch {
      // close() never throws.
    }
  }
}

/** Bun's client `tls` option: TLS 1.3; the caller verifies the peer. */
function clientTls(config: ClientTlsOptions, hostname: string): BunTlsOptions {
  const name = config.serverName ?? hostname;
  const ip = name.includes(":") || /^\d+\.\d+\.\d+\.\d+$/.test(name);
  return {
    rejectUnauthorized: false,
    minVersion: TLS_1_3,
    ...(!ip && { serverName: name }),
    ...(config.ca !== undefined && { ca: config.ca }),
    ...(config.cert !== undefined && { cert: config.cert }),
    ...(config.key !== undefined && { key: config.key }),
  };
}

/**
 * Bun's server `tls` option for {@linkcode BunUpgradeOptions}, checked once
 * here so that a bad certificate or key fails `listen`, not every handshake.
 */
function serverTls(config: ServerTlsOptions): BunTlsOptions {
  const tls: BunTlsOptions = {
    cert: config.cert,
    key: config.key,
    requestCert: config.requestCert === true || config.clientCa !== undefined,
    rejectUnauthorized: false,
    minVersion: TLS_1_3,
    ...(config.clientCa !== undefined && { ca: config.clientCa }),
  };
  checkServerKey(config);
  try {
    nodeTls().createSecureContext({
      cert: config.cert,
      key: config.key,
      ...(config.clientCa !== undefined && { ca: config.clientCa }),
    });
  } catch (error) {
    throw new MoatError(
      "ERR_TLS_CONFIG",
      `Cannot use the TLS certificate or key: ${describe(error)}`,
      ExitCode.Failure,
      { cause: error },
    );
  }
  return tls;
}

/**
 * A listening socket; iterating it yields accepted connections until `close()`.
 *
 * A TLS port listens in plain TCP too: each connection is yielded at once,
 * paused, and starts TLS only when `handshake()` upgrades it in place
 * (`socket.upgradeTLS` with `isServer`), so that a refused peer never gets a
 * TLS byte.
 *
 * Bun accepts in native code that spins on EMFILE without telling JavaScript
 * (see `./_fd_reserve.ts`): the reserve watches for exhaustion and, during
 * an episode, every connection Bun accepts is answered BUSY and closed.
 */
class BunListener implements Listener {
  readonly addr: Addr;
  #server: BunServer;
  #queue = new AcceptQueue();
  #reserve: DescriptorReserve;
  /** What connections accepted from now on upgrade with; see setTls. */
  #tls: { current: BunTlsOptions } | undefined;

  constructor(options: ListenOptions) {
    const tls = this.#tls = options.tls &&
      { current: serverTls(options.tls) };
    const queue = this.#queue;
    // Made once the address is known; nothing is accepted before.
    let reserve: DescriptorReserve | undefined;
    this.#server = Bun.listen({
      hostname: options.hostname,
      port: options.port,
      allowHalfOpen: true,
      socket: BunConn.handler((conn) => {
        if (reserve?.exhausted) void reserve.refuse(conn);
        else queue.push(conn);
      }, { ...(tls && { serverTls: tls }) }),
    });
    // `hostname` echoes the option ("localhost"); getsockname has the bound IP.
    const bound: { address?: string; port?: number } = {};
    this.#server.getsockname?.(bound);
    this.addr = {
      hostname: bound.address ?? this.#server.hostname,
      port: this.#server.port,
    };
    this.#reserve = reserve = new DescriptorReserve({
      where: formatAddr(this.addr.hostname, this.addr.port),
      onAcceptError: options.onAcceptError,
      busyNotice: options.busyNotice,
      watch: true,
    });
  }

  [Symbol.asyncIterator](): AsyncGenerator<Conn, void, undefined> {
    return this.#queue[Symbol.asyncIterator]();
  }

  setTls(tls: ServerTlsOptions): void {
    if (this.#tls === undefined) {
      throw new TypeError("Cannot set TLS on a plain TCP listener");
    }
    this.#tls.current = serverTls(tls);
  }

  close(): void {
    if (!this.#queue.close()) return;
    this.#reserve.close();
    try {
      // Stop listening only; connections already handed out stay open, as on Deno.
      this.#server.stop(false);
    } catch {
      // close() never throws.
    }
  }
}

/**
 * The empty queues every connection starts with, shared and never written
 * (replaced by a new array on the first push): an idle connection allocates
 * no arrays of its own.
 */
const NO_CHUNKS: Uint8Array[] = Object.freeze([]) as unknown as Uint8Array[];
const NO_WRITES: PendingWrite[] = Object.freeze(
  [],
) as unknown as PendingWrite[];

/** One write waiting for `drain`: the caller's bytes, not a copy. */
interface PendingWrite {
  bytes: Uint8Array;
  offset: number;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/**
 * Bytes a connection of this adapter has received and not yet handed to a
 * read, for tests of its read limit.
 *
 * @internal
 * @param conn A connection from {@linkcode bunNet}.
 * @returns The unread bytes (0 for any other connection).
 */
export function _unreadBytes(conn: Conn): number {
  return conn instanceof BunConn ? BunConn.unread(conn) : 0;
}

/** A connected TCP stream over a Bun socket. */
class BunConn implements Conn {
  readonly remoteAddr: Addr;
  /** Set on a connection from a TLS listener until it is used; see `Conn`. */
  handshake?: () => Promise<void>;
  #localAddr: Addr | undefined;
  /** Writes so far, up to 2: Nagle's algorithm is turned off before the second. */
  #writeCount = 0;
  /** The socket bytes go through: the TLS socket once upgraded. */
  #socket: BunSocket;
  /** Server TLS settings while the handshake has not started. */
  #serverTls: BunTlsOptions | undefined;
  /** What `handshake()` returns once called (the outcome, as a MoatError). */
  #handshaking: Promise<void> = RESOLVED;
  /** Set once close() was called, or Bun reported the socket closed. */
  #closed = false;
  #socketGone = false;
  /** True once `read` was called: TLS can no longer start. */
  #readStarted = false;
  // Read side: unread chunks from #head on; #offset bytes of the first are consumed.
  #chunks: Uint8Array[] = NO_CHUNKS;
  #head = 0;
  #offset = 0;
  #queued = 0;
  /** Pause above this many unread bytes; resume at a quarter of it. */
  #pauseAbove = PAUSE_ABOVE_MIN;
  #paused = false;
  #eof = false;
  #failure: ConnectionClosedError | null = null;
  /** What a write that cannot go out rejects with: the first such error, again. */
  #writeFailure: unknown;
  #readBuf: Uint8Array | null = null;
  #readResolve: ((n: number | null) => void) | null = null;
  #readReject: ((error: unknown) => void) | null = null;
  /**
   * `recv` straight into the caller's buffer (see `./_bun_recv.ts`), set at
   * the first read of a plain connection; null for TLS, and where the
   * fallback (Bun's callbacks) is used.
   */
  #recv: Recv | null = null;
  /** Direct reads since the last wait; see DIRECT_READS_PER_TURN. */
  #directStreak = 0;
  /**
   * With direct reads, Bun's own reading is paused except while a read
   * waits: otherwise, whenever the event loop turns, Bun reads what the
   * kernel holds into a new array (34 MiB of them on a 1 GiB get, which
   * the collector frees late) that a direct read would have taken.
   */
  #held = false;
  /** A client connection; see #poll. */
  #patient = false;
  /** Bytes read since the connection was last quiet; see #poll. */
  #streamed = 0;
  /** A read is looking again after a pause; see #poll. */
  #polling = false;

  // Write side.
  #writes: PendingWrite[] = NO_WRITES;
  #writeClosed = false;
  #closing: Promise<void> | null = null;
  #flushed: { resolve: () => void; reject: (e: unknown) => void } | null = null;
  #readable: ReadableStream<Uint8Array> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;
  #tls: TlsInfo | undefined;
  #handshake:
    | {
      promise: Promise<void>;
      resolve: () => void;
      /** Gets the runtime's error (its `code` tells a refused certificate). */
      reject: (e: unknown) => void;
    }
    | null = null;

  constructor(socket: BunSocket) {
    this.#socket = socket;
    // Read now: Bun's getters return nothing useful once the socket closed.
    // The local address (a syscall; the server never asks) is read on demand.
    // A Unix socket has neither (Bun reports undefined).
    this.remoteAddr = {
      hostname: socket.remoteAddress ?? "",
      port: socket.remotePort ?? 0,
    };
  }

  /** See {@linkcode _unreadBytes}. */
  static unread(conn: BunConn): number {
    return conn.#queued;
  }

  /** Read on first use, which must come before the socket closes. */
  get localAddr(): Addr {
    return this.#localAddr ??= {
      hostname: this.#socket.localAddress,
      port: this.#socket.localPort,
    };
  }

  /**
   * Builds the callbacks for a server (`onOpen` gets each accepted
   * connection) or for client sockets (`onOpen` null). With `tls` the
   * sockets speak TLS from the start (clients); with `serverTls` they are
   * plain until `handshake()` upgrades them, with the settings current when
   * they were accepted.
   */
  static handler(
    onOpen: ((conn: BunConn) => void) | null,
    options: { tls?: boolean; serverTls?: { current: BunTlsOptions } } = {},
  ): BunSocketHandler {
    const tls = options.tls === true;
    const serverTls = options.serverTls;
    return {
      binaryType: "uint8array",
      open(socket) {
        // An upgraded socket arrives here with its connection already set.
        if (socket.data !== undefined) return;
        const conn = new BunConn(socket);
        socket.data = conn;
        if (serverTls !== undefined) {
          // Not a byte is read before handshake() or read(): a refused peer's
          // ClientHello is never looked at, and none is answered.
          socket.pause();
          conn.#serverTls = serverTls.current;
          conn.handshake = () => conn.#startTls();
        }
        // Client sockets (no onOpen) are made by connect().
        conn.#patient = onOpen === null;
        // A client's TLS connection is handed out once its handshake is done.
        if (tls) conn.#expectHandshake();
        else onOpen?.(conn);
      },
      handshake(socket, success, authorizationError) {
        const conn = socket.data;
        if (conn === undefined || !tls) return;
        conn.#onHandshake(socket, success, authorizationError);
      },
      data(socket, data) {
        const conn = socket.data;
        // After an upgrade the raw socket still sees the encrypted bytes.
        if (conn !== undefined && conn.#socket === socket) conn.#onData(data);
      },
      drain(socket) {
        const conn = socket.data;
        if (conn !== undefined && conn.#socket === socket) conn.#onDrain();
      },
      end(socket) {
        const conn = socket.data;
        if (conn !== undefined && conn.#socket === socket) conn.#onEnd();
      },
      close(socket, error) {
        const conn = socket.data;
        if (conn !== undefined) conn.#onClose(error);
      },
      error(socket, error) {
        const conn = socket.data;
        if (conn !== undefined) conn.#onError(error);
      },
    };
  }

  /** What the TLS handshake established; undefined on plain TCP. */
  get tls(): TlsInfo | undefined {
    return this.#tls;
  }

  /** Resolves once the TLS handshake succeeded; rejects if it failed. */
  get handshaken(): Promise<void> {
    return this.#handshake?.promise ?? RESOLVED;
  }

  #expectHandshake(): void {
    let resolve!: () => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {});
    this.#handshake = { promise, resolve, reject };
  }

  /**
   * Bun calls a handshake unsuccessful when the peer's certificate does not
   * verify or, on a client, does not name the host, even with
   * `rejectUnauthorized` false, and the connection then works all the same
   * (measured on Bun 1.4.5). Those are decisions for `lib/tls.ts` (this is
   * how a pinned certificate from a private CA failed on Bun), so the
   * handshake failed only when no certificate was involved: a peer that does
   * not speak TLS, or not TLS 1.3.
   */
  #onHandshake(
    socket: BunSocket,
    success: boolean,
    authorizationError: Error | null,
  ): void {
    const info = tlsInfo(socket, authorizationError);
    if (
      !success && info.peerCertificate === undefined &&
      !isCertificateCode(errorCode(authorizationError))
    ) {
      this.#handshake?.reject(
        authorizationError ?? new Error("TLS handshake failed"),
      );
      this.close();
      return;
    }
    this.#tls = info;
    this.#handshake?.resolve();
  }

  /** Upgrades a connection from a TLS listener in place and waits for the handshake. */
  #startTls(): Promise<void> {
    if (this.#handshake !== null) return this.#handshaking;
    if (this.#readStarted || this.#writeCount > 0) {
      return Promise.reject(
        new TypeError(
          "Cannot start TLS: plain bytes were already read or written",
        ),
      );
    }
    this.#expectHandshake();
    const handshake = this.#handshake!;
    const config = this.#serverTls;
    this.#serverTls = undefined;
    if (this.#closed || this.#socketGone || config === undefined) {
      handshake.reject(
        new Error("connection closed before the TLS handshake"),
      );
    } else {
      try {
        const [, upgraded] = this.#socket.upgradeTLS({
          isServer: true,
          data: this,
          tls: config,
          socket: UPGRADED_HANDLER,
        });
        this.#socket = upgraded;
        // The raw socket was paused at accept; reading resumes through TLS.
        upgraded.resume();
      } catch (error) {
        handshake.reject(error);
      }
    }
    return this.#handshaking = handshake.promise.catch((error: unknown) => {
      this.close();
      throw new MoatError(
        "ERR_TLS_HANDSHAKE",
        `TLS handshake failed: ${handshakeReason(error)}`,
        ExitCode.Connection,
        { cause: error },
      );
    });
  }

  read(buf: Uint8Array): Promise<number | null> {
    if (!this.#readStarted) this.#startReading();
    if (buf.length * 2 > this.#pauseAbove) {
      this.#pauseAbove = Math.min(PAUSE_ABOVE_MAX, buf.length * 2);
    }
    if (this.#closed) return EOF;
    if (this.#queued > 0) return Promise.resolve(this.#take(buf));
    if (this.#failure !== null) return Promise.reject(this.#failure);
    if (this.#eof) return EOF;
    if (buf.length === 0) return Promise.resolve(0);
    if (this.#readResolve !== null || this.#polling) {
      return Promise.reject(
        new TypeError("Cannot read: another read is already pending"),
      );
    }
    if (this.#recv !== null) {
      const n = this.#readDirect(buf);
      if (n !== -1) return n === 0 ? EOF : this.#direct(n);
      if (this.#patient && this.#streamed >= BULK_BYTES) return this.#poll(buf);
    }
    return this.#wait(buf);
  }

  /**
   * A bulk transfer ran dry for a moment (the sender is between writes or
   * off the CPU): look again after POLL_MS, Bun's reading still paused, up
   * to POLL_TRIES times, before waiting on Bun, whose callback would bring
   * the next bytes in a new array (on a 1 GiB get, 5–10 MiB of them that
   * the collector frees late; more on a slower link, where every read would
   * wait). Only on client connections: the one transfer a `moat get` makes
   * loses nothing by a millisecond's delay, while a server's connections
   * keep reacting to the event loop.
   */
  async #poll(buf: Uint8Array): Promise<number | null> {
    this.#polling = true;
    try {
      for (let i = 0; i < POLL_TRIES; i++) {
        await new Promise<void>((resolve) => setTimeout(resolve, POLL_MS));
        if (this.#closed) return null;
        if (this.#failure !== null) throw this.#failure;
        if (this.#eof) return null;
        const n = this.#readDirect(buf);
        if (n === 0) return null;
        if (n > 0) {
          this.#streamed += n;
          return n;
        }
      }
    } finally {
      this.#polling = false;
    }
    // Quiet for POLL_TRIES × POLL_MS: whatever comes next starts afresh.
    this.#streamed = 0;
    return await this.#wait(buf);
  }

  /** Waits for Bun's `data` callback to fill `buf`. */
  #wait(buf: Uint8Array): Promise<number | null> {
    this.#directStreak = 0;
    if (this.#held) {
      // Nothing waiting: Bun watches the socket and hands over what comes.
      this.#held = false;
      if (!this.#paused && !this.#socketGone) this.#socket.resume();
    }
    return new Promise((resolve, reject) => {
      this.#readBuf = buf;
      this.#readResolve = resolve;
      this.#readReject = reject;
    });
  }

  /** The first read: a connection paused for its TLS handshake stays plain. */
  #startReading(): void {
    this.#readStarted = true;
    const pausedForTls = this.#serverTls !== undefined;
    this.#serverTls = undefined;
    // Never on TLS: the socket's bytes are ciphertext.
    if (this.#handshake === null) this.#recv = directRecv() ?? null;
    if (this.#recv !== null) {
      if (!pausedForTls) this.#hold();
      else this.#held = true;
    } else if (pausedForTls && !this.#socketGone && !this.#paused) {
      this.#socket.resume();
    }
  }

  /** Pauses Bun's reading until the next read that has to wait. */
  #hold(): void {
    if (this.#held) return;
    this.#held = true;
    if (!this.#paused && !this.#socketGone) this.#socket.pause();
  }

  /**
   * Reads what the kernel holds into `buf`, bypassing Bun's callback; the
   * queue is empty, so no byte Bun delivered is skipped. Bun only reads in
   * its event loop and hands what it read to `data` at once, so the two
   * never split the stream. Returns the count, 0 at the peer's FIN, or -1:
   * nothing waiting or an error, which Bun's own path then waits for and
   * reports.
   */
  #readDirect(buf: Uint8Array): number {
    // -1 once Bun closed the socket, so a reused descriptor is never read.
    const fd = this.#socketGone ? -1 : this.#socket.fd;
    if (fd < 0) return -1;
    const n = this.#recv!(fd, buf);
    if (n === 0) this.#eof = true;
    return n < 0 ? -1 : n;
  }

  /** Resolves a direct read, on a new macrotask every DIRECT_READS_PER_TURN reads. */
  #direct(n: number): Promise<number> {
    this.#streamed += n;
    if (++this.#directStreak < DIRECT_READS_PER_TURN) return Promise.resolve(n);
    this.#directStreak = 0;
    return new Promise((resolve) => setImmediate(() => resolve(n)));
  }

  write(bytes: Uint8Array): Promise<void> {
    if (this.#closed || this.#writeClosed) {
      return Promise.reject(
        this.#writeFailure ??= this.#failure ?? this.#writeClosedError(),
      );
    }
    // Nagle only holds back a segment while earlier data is unacknowledged,
    // so the first write goes out at once anyway; setting TCP_NODELAY before
    // the second saves a syscall on connections that write once (a refusal).
    if (this.#writeCount < 2 && ++this.#writeCount === 2) {
      this.#socket.setNoDelay(true);
    }
    let offset = 0;
    if (this.#writes.length === 0) {
      offset = this.#socket.write(bytes);
      if (offset === bytes.length) return RESOLVED;
      if (offset < 0) {
        return Promise.reject(
          this.#writeFailure ??= this.#failure ?? new ConnectionClosedError(),
        );
      }
    }
    return new Promise((resolve, reject) => {
      if (this.#writes === NO_WRITES) this.#writes = [];
      this.#writes.push({ bytes, offset, resolve, reject });
    });
  }

  closeWrite(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  get readable(): ReadableStream<Uint8Array> {
    return this.#readable ??= this.#toReadable();
  }

  get writable(): WritableStream<Uint8Array> {
    return this.#writable ??= writableFrom(this);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#tls === undefined) {
      this.#handshake?.reject(
        new Error("connection closed during the TLS handshake"),
      );
    }
    this.#chunks = NO_CHUNKS;
    this.#head = this.#offset = this.#queued = 0;
    this.#settleRead(null);
    this.#failWrites(() =>
      new ConnectionClosedError("Cannot write: the connection is closed")
    );
    if (this.#socketGone) return;
    try {
      this.#socket.end();
    } catch {
      // close() never throws.
    }
  }

  #writeClosedError(): ConnectionClosedError {
    if (this.#closed) {
      return new ConnectionClosedError(
        "Cannot write: the connection is closed",
      );
    }
    if (this.#socketGone) return new ConnectionClosedError();
    return new ConnectionClosedError("Cannot write: the write side is closed");
  }

  async #shutdown(): Promise<void> {
    if (this.#closed || this.#writeClosed) {
      throw this.#failure ?? new ConnectionClosedError(
        "Cannot close the write side: the connection is closed",
      );
    }
    this.#writeClosed = true;
    if (this.#writes.length > 0) {
      await new Promise<void>((resolve, reject) => {
        this.#flushed = { resolve, reject };
      });
    }
    if (!this.#socketGone) this.#socket.shutdown();
  }

  /** Copies queued bytes into `buf`, as many as fit; the queue is non-empty. */
  #take(buf: Uint8Array): number {
    let n = 0;
    while (n < buf.length && this.#head < this.#chunks.length) {
      const chunk = this.#chunks[this.#head];
      if (chunk === undefined) break;
      const count = Math.min(chunk.length - this.#offset, buf.length - n);
      buf.set(
        count === chunk.length
          ? chunk
          : chunk.subarray(this.#offset, this.#offset + count),
        n,
      );
      n += count;
      this.#offset += count;
      if (this.#offset === chunk.length) {
        this.#chunks[this.#head++] = EMPTY_CHUNK;
        this.#offset = 0;
      }
    }
    this.#consumed(n);
    return n;
  }

  /** Removes and returns the next queued chunk (or its unread rest), no copy. */
  #takeChunk(): Uint8Array | null {
    const chunk = this.#chunks[this.#head];
    if (chunk === undefined) return null;
    const rest = this.#offset === 0 ? chunk : chunk.subarray(this.#offset);
    this.#chunks[this.#head++] = EMPTY_CHUNK;
    this.#offset = 0;
    this.#consumed(rest.length);
    return rest;
  }

  #consumed(n: number): void {
    this.#queued -= n;
    if (this.#head === this.#chunks.length) {
      this.#chunks = NO_CHUNKS;
      this.#head = 0;
    } else if (this.#head >= 64 && this.#head * 2 >= this.#chunks.length) {
      this.#chunks = this.#chunks.slice(this.#head);
      this.#head = 0;
    }
    if (
      this.#paused && this.#queued <= this.#pauseAbove / 4 && !this.#socketGone
    ) {
      this.#paused = false;
      if (!this.#held) this.#socket.resume();
    }
  }

  #pushChunk(data: Uint8Array): void {
    if (this.#chunks === NO_CHUNKS) this.#chunks = [];
    this.#chunks.push(data);
  }

  #onData(data: Uint8Array): void {
    if (this.#closed || data.length === 0) return;
    if (this.#paused) {
      // Only a breaking connection gets here (see the module doc): its
      // receive buffer is not added to the server's memory, and closing it
      // now stops Bun reading the rest (half a MiB at a time).
      this.#failure ??= new ConnectionClosedError(
        "Connection reset: data arrived past the read limit",
      );
      if (this.#queued === 0) this.#settleRead(this.#failure);
      if (!this.#socketGone) this.#socket.terminate();
      return;
    }
    const buf = this.#readBuf;
    if (buf !== null) {
      // A read is waiting, so the queue is empty: fill it directly.
      const count = Math.min(data.length, buf.length);
      buf.set(count === data.length ? data : data.subarray(0, count));
      if (count < data.length) {
        this.#pushChunk(data);
        this.#offset = count;
        this.#queued = data.length - count;
      }
      this.#settleRead(count);
      // The wait is over: direct reads take it from here.
      if (this.#recv !== null) {
        this.#hold();
        this.#streamed += count;
      }
    } else {
      this.#pushChunk(data);
      this.#queued += data.length;
    }
    if (this.#queued > this.#pauseAbove && !this.#socketGone) {
      this.#paused = true;
      if (!this.#held) this.#socket.pause();
    }
  }

  #onDrain(): void {
    while (this.#writes.length > 0) {
      const pending = this.#writes[0];
      if (pending === undefined) break;
      const remaining = pending.bytes.length - pending.offset;
      const n = this.#socket.write(pending.bytes, pending.offset, remaining);
      if (n < 0) {
        this.#failWrites(() => this.#failure ?? new ConnectionClosedError());
        return;
      }
      pending.offset += n;
      if (n < remaining) return;
      this.#writes.shift();
      if (this.#writes.length === 0) this.#writes = NO_WRITES;
      pending.resolve();
    }
    const flushed = this.#flushed;
    this.#flushed = null;
    flushed?.resolve();
  }

  #onEnd(): void {
    this.#eof = true;
    if (this.#queued === 0) this.#settleRead(null);
  }

  #onError(error: Error): void {
    if (!this.#eof && !this.#closed) this.#failure ??= toClosedError(error);
  }

  #onClose(error: Error | undefined): void {
    if (this.#socketGone) return;
    this.#socketGone = true;
    if (this.#tls === undefined) {
      this.#handshake?.reject(
        error ?? new Error("connection closed during the TLS handshake"),
      );
    }
    if (error !== undefined) this.#onError(error);
    this.#eof = true;
    if (this.#queued === 0) {
      if (this.#failure !== null) this.#settleRead(this.#failure);
      else this.#settleRead(null);
    }
    this.#failWrites(() => this.#failure ?? new ConnectionClosedError());
    this.#writeClosed = true;
  }

  /** Resolves (count or null) or rejects (error) the pending read, if any. */
  #settleRead(result: number | null | ConnectionClosedError): void {
    const resolve = this.#readResolve;
    const reject = this.#readReject;
    this.#readBuf = null;
    this.#readResolve = null;
    this.#readReject = null;
    if (resolve === null || reject === null) return;
    if (result instanceof ConnectionClosedError) reject(result);
    else resolve(result);
  }

  /**
   * Rejects pending writes. The error is made only if one is pending: an
   * Error captures a stack, and every connection's close passes through here.
   */
  #failWrites(makeError: () => unknown): void {
    const writes = this.#writes;
    const flushed = this.#flushed;
    if (writes.length === 0 && flushed === null) return;
    const error = makeError();
    if (writes.length > 0) this.#writes = NO_WRITES;
    for (const pending of writes) pending.reject(error);
    this.#flushed = null;
    flushed?.reject(error);
  }

  /** A byte stream: BYOB reads copy into the reader's buffer, others get chunks as received. */
  #toReadable(): ReadableStream<Uint8Array> {
    return new ReadableStream({
      type: "bytes",
      pull: async (controller) => {
        if (await pullByob(this, controller)) return;
        let chunk = this.#closed ? null : this.#takeChunk();
        if (chunk === null) {
          // Wait for data by reading into a small buffer, then add what else queued.
          const first = new Uint8Array(STREAM_WAIT_SIZE);
          const n = await this.read(first);
          if (n === null) {
            controller.close();
            return;
          }
          controller.enqueue(first.subarray(0, n));
          chunk = this.#closed ? null : this.#takeChunk();
          if (chunk === null) return;
        }
        controller.enqueue(chunk);
      },
      cancel: () => this.close(),
    });
  }
}

/** Callbacks of sockets that `handshake()` upgraded to TLS. */
const UPGRADED_HANDLER = BunConn.handler(null, { tls: true });

/**
 * Reads the handshake's outcome off a Bun TLS socket. `authorized` is about
 * the chain only, as on `node:tls`: Bun also fails it for a certificate that
 * does not name the host, which `lib/tls.ts` checks itself (and words the
 * same on both runtimes).
 */
function tlsInfo(socket: BunSocket, authorizationError: Error | null): TlsInfo {
  let raw: Uint8Array | undefined;
  try {
    const peer = socket.getPeerCertificate?.();
    if (peer?.raw instanceof Uint8Array && peer.raw.length > 0) {
      raw = new Uint8Array(peer.raw);
    }
  } catch {
    // No certificate.
  }
  const code = authorizationError === null
    ? undefined
    : errorCode(authorizationError) ?? authorizationError.message;
  const authorized = code === undefined ||
    code === "ERR_TLS_CERT_ALTNAME_INVALID";
  return {
    // Bun does not report the version; the context allows TLS 1.3 only.
    protocol: "TLSv1.3",
    peerCertificate: raw,
    authorized,
    authorizationError: authorized ? undefined : code,
  };
}

function toConnectError(error: unknown, options: ConnectOptions): unknown {
  const where = formatAddr(options.hostname, options.port);
  const code = errorCode(error);
  const reason = connectReason(code) ?? describe(error);
  return new ConnectError(`Cannot connect to ${where}: ${reason}`, {
    cause: error,
  });
}
