/**
 * TLS 1.3 over `node:tls`, behind the same {@linkcode Conn} and
 * {@linkcode Listener} interfaces as the plain adapters. The Deno adapter
 * uses it for every TLS connection: `Deno.listenTls` can neither ask for nor
 * verify client certificates, cannot be limited to TLS 1.3, and
 * `Deno.connectTls` does not expose the server's certificate, which pinning
 * and trust on first use need (measured on Deno 2.9.6, see PERF.md).
 *
 * On a server, TLS starts only when the server calls `handshake()` on an
 * accepted connection ({@linkcode DeferredTlsConn}): until then it is plain
 * TCP, so a refused peer gets a plain line or a close, never a ServerHello
 * nor the certificate. The Deno listener accepts with `Deno.listen`, whose
 * accept reports EMFILE, and the handshake runs in a `tls.TLSSocket` over a
 * `Duplex` view of the plain connection. (Deno's `node:net` server, which
 * `tls.Server` is built on, stops accepting for good after EMFILE: measured
 * on Deno 2.9.6, it leaks the sockets accepted at the limit and accepts
 * nothing after descriptors free up. The `Duplex` costs throughput, for a
 * port that never goes deaf: a server sending 256 MiB over loopback made
 * 290-375 MiB/s against 405-495 MiB/s through `tls.Server`, same machine.)
 *
 * The adapter never rejects a certificate itself: it asks for one
 * (`rejectUnauthorized: false`) and reports it in {@linkcode TlsInfo};
 * `lib/tls.ts` decides. Only the protocol version is enforced here.
 *
 * Both sides run TLS over a `Duplex` view of the plain connection (a client
 * too: over Deno's own socket, Deno 2.9.6's TLS read on regardless of
 * `pause()`). Reading works like the Bun adapter: received chunks are queued
 * and copied into the caller's buffer, and the `Duplex` stops reading the
 * plain connection while more than 2 MiB sits unread. `write` hands node a copy, so the caller may reuse its buffer
 * at once, and waits for `drain` when node's buffer is full.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createPrivateKey, X509Certificate } from "node:crypto";
import type { Duplex } from "node:stream";
import type * as tls from "node:tls";
import { ConnectionClosedError, ExitCode, MoatError } from "../errors.ts";
import { stream, tls as nodeTls } from "../builtins.ts";
import { readableFrom, writableFrom } from "./streams.ts";
import {
  handshakeReason,
  tlsConfigError,
  toClosedError,
  toTlsConnectError,
} from "./_errors.ts";
import type {
  Addr,
  ClientTlsOptions,
  Conn,
  ConnectOptions,
  ServerTlsOptions,
  TlsInfo,
} from "./types.ts";

/** Pause the socket when more than this many received bytes are unread. */
const PAUSE_ABOVE = 2 * 1024 * 1024;
/** Resume a paused socket when the unread bytes fall to this many. */
const RESUME_BELOW = 512 * 1024;

/** What a consumed slot of the read queue holds. */
const EMPTY_CHUNK = new Uint8Array(0);

/**
 * Checks that the key is the certificate's, which not every runtime's TLS
 * context does when it is made (Deno 2.9.6 would fail every handshake
 * instead).
 *
 * @param config The listener's `tls` options.
 * @throws {MoatError} `ERR_TLS_CONFIG` when the certificate or key does not
 * parse, or the key is another one's.
 */
export function checkServerKey(config: ServerTlsOptions): void {
  let matches: boolean;
  try {
    matches = new X509Certificate(config.cert).checkPrivateKey(
      createPrivateKey(config.key),
    );
  } catch (error) {
    throw tlsConfigError(error);
  }
  if (!matches) {
    throw new MoatError(
      "ERR_TLS_CONFIG",
      "Cannot use the TLS certificate or key: the key is not the certificate's",
    );
  }
}

/** A server's TLS settings, checked once at listen. */
export interface ServerTlsContext {
  secureContext: tls.SecureContext;
  requestCert: boolean;
}

/**
 * Checks a server's certificate and key and builds the context every
 * handshake uses.
 *
 * @param config The listener's `tls` options.
 * @returns The context for {@linkcode DeferredTlsConn}.
 * @throws {MoatError} `ERR_TLS_CONFIG` on a bad certificate, key or CA.
 */
export function serverTlsContext(config: ServerTlsOptions): ServerTlsContext {
  checkServerKey(config);
  try {
    return {
      secureContext: nodeTls().createSecureContext({
        cert: config.cert,
        key: config.key,
        minVersion: "TLSv1.3",
        maxVersion: "TLSv1.3",
        ...(config.clientCa !== undefined && { ca: config.clientCa }),
      }),
      requestCert: config.requestCert === true || config.clientCa !== undefined,
    };
  } catch (error) {
    throw tlsConfigError(error);
  }
}

/**
 * Runs a TLS 1.3 client over `node:tls` on a connected plain `Conn` (a
 * `Duplex` view of it, as the server side does); resolves after the
 * handshake. Over Deno's own TCP socket instead (`tls.connect` with a host
 * and port), Deno 2.9.6's TLS kept reading whatever `pause()` said: a 256 MiB
 * get peaked at 280 MiB and ran at a fifth of socat's speed; here the
 * reading is held when 2 MiB sit unread.
 *
 * @param plain The TCP connection to the server; closed on failure.
 * @param options Address (for messages) and `tls` settings (`tls` is required).
 * @returns The connection, with {@linkcode TlsInfo} filled in.
 * @throws {ConnectError} When the handshake fails.
 */
export function connectNodeTls(
  plain: Conn,
  options: ConnectOptions,
): Promise<Conn> {
  const config = options.tls ?? {};
  let secure = false;
  // Once the handshake is done, TLS closing its stream closes the plain
  // connection (after its last write); until then this function does.
  const over = duplexOver(plain, (written) => {
    if (secure) void written.finally(() => plain.close());
  });
  return new Promise((resolve, reject) => {
    let socket: tls.TLSSocket;
    try {
      // allowHalfOpen reaches the socket at run time; node's types omit it.
      const connectOptions: tls.ConnectionOptions & { allowHalfOpen: boolean } =
        {
          socket: over.duplex,
          ...clientContext(config, options.hostname),
          rejectUnauthorized: false,
          allowHalfOpen: true,
        };
      socket = nodeTls().connect(connectOptions);
    } catch (error) {
      plain.close();
      reject(tlsConfigError(error, "TLS client certificate or key"));
      return;
    }
    const onError = (error: Error) => {
      socket.destroy();
      plain.close();
      reject(toTlsConnectError(error, options));
    };
    const onClose = () => {
      plain.close();
      reject(toTlsConnectError(undefined, options));
    };
    socket.once("error", onError);
    socket.once("close", onClose);
    socket.once("secureConnect", () => {
      socket.off("error", onError);
      socket.off("close", onClose);
      secure = true;
      resolve(new NodeTlsConn(socket, { flow: over.flow, plain }));
    });
  });
}

/** The `node:tls` client options for a {@linkcode ClientTlsOptions}. */
function clientContext(
  config: ClientTlsOptions,
  hostname: string,
): tls.ConnectionOptions {
  const name = config.serverName ?? hostname;
  return {
    minVersion: "TLSv1.3",
    maxVersion: "TLSv1.3",
    // SNI carries DNS names only.
    ...(!isIpLiteral(name) && { servername: name }),
    ...(config.ca !== undefined && { ca: config.ca }),
    ...(config.cert !== undefined && { cert: config.cert }),
    ...(config.key !== undefined && { key: config.key }),
    // Host names are checked by lib/tls.ts, the same way on every runtime.
    checkServerIdentity: () => undefined,
  };
}

function isIpLiteral(name: string): boolean {
  return name.includes(":") || /^\d+\.\d+\.\d+\.\d+$/.test(name);
}

/** Bytes a {@linkcode duplexOver} read asks the plain connection for. */
const DUPLEX_READ_SIZE = 65_536;

/**
 * A server's connection from a TLS listener: plain TCP (the accepted
 * {@linkcode Conn} itself) until `handshake()`, then TLS over it.
 */
export class DeferredTlsConn implements Conn {
  #plain: Conn;
  #context: ServerTlsContext | undefined;
  #secure: NodeTlsConn | undefined;
  #handshaking: Promise<void> | undefined;
  #used = false;
  #closed = false;

  /**
   * @param plain The accepted connection.
   * @param context What the handshake uses.
   */
  constructor(plain: Conn, context: ServerTlsContext) {
    this.#plain = plain;
    this.#context = context;
  }

  get localAddr(): Addr {
    return this.#plain.localAddr;
  }

  get remoteAddr(): Addr {
    return this.#plain.remoteAddr;
  }

  get tls(): TlsInfo | undefined {
    return this.#secure?.tls;
  }

  /** See {@linkcode Conn.handshake}. */
  handshake(): Promise<void> {
    if (this.#handshaking === undefined && this.#used) {
      return Promise.reject(
        new TypeError(
          "Cannot start TLS: plain bytes were already read or written",
        ),
      );
    }
    return this.#handshaking ??= this.#startTls();
  }

  async #startTls(): Promise<void> {
    const context = this.#context;
    this.#context = undefined;
    let socket: tls.TLSSocket | undefined;
    let over: ReturnType<typeof duplexOver> | undefined;
    try {
      if (context === undefined) {
        throw new Error("connection closed before the TLS handshake");
      }
      // Once the handshake is done, TLS closing its stream closes the plain
      // connection (after its last write); until then this method does.
      over = duplexOver(this.#plain, (written) => {
        if (this.#secure !== undefined) {
          void written.finally(() => this.#plain.close());
        }
      });
      const secure = socket = new (nodeTls().TLSSocket)(over.duplex, {
        isServer: true,
        secureContext: context.secureContext,
        requestCert: context.requestCert,
        // Without this node may reject a handshake before we can refuse with a message.
        rejectUnauthorized: false,
      });
      await new Promise<void>((resolve, reject) => {
        const onClose = () =>
          reject(new Error("connection closed during the TLS handshake"));
        // With half-open allowed, a peer that leaves mid-handshake ends
        // the stream without closing it.
        secure.once("error", reject);
        secure.once("end", onClose);
        secure.once("close", onClose);
        secure.once("secure", () => {
          secure.off("error", reject);
          secure.off("end", onClose);
          secure.off("close", onClose);
          resolve();
        });
      });
      this.#secure = new NodeTlsConn(socket, {
        server: true,
        flow: over.flow,
      });
    } catch (error) {
      // Node's TLS answers a failed handshake with an alert, which tells a
      // plain client (or an old TLS one) what it reached; over a Duplex,
      // Deno 2.9.6 writes none, so the adapter sends it.
      if (over !== undefined && !this.#closed) {
        if (over.wrote()) await over.flushed();
        else await this.#plain.write(handshakeAlert(error)).catch(() => {});
      }
      socket?.destroy();
      this.#plain.close();
      throw new MoatError(
        "ERR_TLS_HANDSHAKE",
        `TLS handshake failed: ${handshakeReason(error)}`,
        ExitCode.Connection,
        { cause: error },
      );
    }
  }

  /** Before the handshake: the plain connection, after which TLS cannot start. */
  #current(): Conn {
    if (this.#secure !== undefined) return this.#secure;
    if (this.#handshaking === undefined) this.#used = true;
    return this.#plain;
  }

  read(buf: Uint8Array): Promise<number | null> {
    return this.#current().read(buf);
  }

  write(bytes: Uint8Array): Promise<void> {
    return this.#current().write(bytes);
  }

  closeWrite(): Promise<void> {
    return this.#current().closeWrite();
  }

  get readable(): ReadableStream<Uint8Array> {
    return this.#current().readable;
  }

  get writable(): WritableStream<Uint8Array> {
    return this.#current().writable;
  }

  close(): void {
    this.#closed = true;
    this.#context = undefined;
    // The secure socket's Duplex closes the plain connection too; closing
    // the plain one also ends a handshake in progress.
    this.#secure?.close();
    this.#plain.close();
  }
}

/**
 * A `Duplex` over a {@linkcode Conn}, for `tls.TLSSocket` to run on. Each read
 * gets a buffer of its own (TLS keeps what it was handed); writes resolve
 * once the connection accepted the bytes.
 *
 * @param conn The plain connection.
 * @param onDestroy Told when TLS destroys the stream, with the write in
 * flight (if any) settling.
 * @returns The stream, whether anything was written through it, and the
 * settling of the write in flight.
 */
function duplexOver(
  conn: Conn,
  onDestroy: (written: Promise<void>) => void,
): {
  duplex: Duplex;
  wrote: () => boolean;
  flushed: () => Promise<void>;
  flow: Flow;
} {
  // The write in flight, if any: a destroy waits for it, so that whatever
  // TLS wrote last reaches the peer.
  let writing: Promise<void> | undefined;
  const write = (bytes: Uint8Array, callback: (error?: Error) => void) => {
    writing = conn.write(bytes);
    writing.then(() => callback(), callback);
  };
  // Deno's TLS (2.9.6) reads its transport whatever the TLS socket's
  // pause(): the hold is here, where the ciphertext comes in.
  let held: { promise: Promise<void>; release: () => void } | undefined;
  const flow: Flow = {
    pause() {
      if (held !== undefined) return;
      let release!: () => void;
      const promise = new Promise<void>((resolve) => (release = resolve));
      held = { promise, release };
    },
    resume() {
      held?.release();
      held = undefined;
    },
  };
  const duplex = new (stream().Duplex)({
    read() {
      const pull = () => {
        const buf = new Uint8Array(DUPLEX_READ_SIZE);
        conn.read(buf).then(
          (n) => this.push(n === null ? null : buf.subarray(0, n)),
          (error: unknown) => this.destroy(error as Error),
        );
      };
      if (held === undefined) pull();
      else void held.promise.then(pull);
    },
    write(chunk: Uint8Array, _encoding, callback) {
      write(chunk, callback);
    },
    writev(chunks, callback) {
      const parts = chunks.map(({ chunk }) => chunk as Uint8Array);
      write(parts.length === 1 ? parts[0]! : Buffer.concat(parts), callback);
    },
    final(callback) {
      conn.closeWrite().then(() => callback(), callback);
    },
    destroy(error, callback) {
      onDestroy(flushed());
      callback(error);
    },
  });
  const flushed = () => (writing ?? Promise.resolve()).catch(() => {});
  return { duplex, wrote: () => writing !== undefined, flushed, flow };
}

/** Stops and restarts the reading of a TLS socket's transport. */
interface Flow {
  pause(): void;
  resume(): void;
}

/**
 * The fatal alert record a TLS 1.3 server sends when a handshake fails
 * (RFC 8446 6.2): protocol_version (70) for a peer that does not speak TLS
 * 1.3, as node's TLS does, handshake_failure (40) otherwise.
 */
function handshakeAlert(error: unknown): Uint8Array {
  const reason = handshakeReason(error);
  const version = reason === "the peer does not speak TLS" ||
    reason === "the peer does not support TLS 1.3";
  return new Uint8Array([
    0x15,
    0x03,
    0x03,
    0x00,
    0x02,
    0x02,
    version ? 70 : 40,
  ]);
}

/** A connection over a `node:tls` socket whose handshake is done. */
class NodeTlsConn implements Conn {
  readonly localAddr: Addr;
  readonly remoteAddr: Addr;
  readonly tls: TlsInfo;
  #socket: tls.TLSSocket;
  #flow: Flow;
  #closed = false;
  #gone = false;
  #eof = false;
  #writeClosed = false;
  #failure: ConnectionClosedError | null = null;
  #chunks: Uint8Array[] = [];
  #head = 0;
  #offset = 0;
  #queued = 0;
  #paused = false;
  #pending: {
    buf: Uint8Array;
    resolve: (n: number | null) => void;
    reject: (e: unknown) => void;
  } | null = null;
  #readable: ReadableStream<Uint8Array> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;
  /** Rejecters of writes and ends whose callback has not come yet. */
  #unsettled = new Set<(error: unknown) => void>();

  /**
   * @param socket The socket, its handshake done.
   * @param options `server`: true on the server's side (`authorized` is
   * then read from the handle, see {@linkcode serverVerdict}). `flow`: how
   * to hold the transport when too much sits unread (the socket's own
   * pause() otherwise). `plain`: the connection TLS runs over, whose
   * addresses are reported.
   */
  constructor(
    socket: tls.TLSSocket,
    options: { server?: boolean; flow?: Flow; plain?: Conn } = {},
  ) {
    this.#socket = socket;
    this.#flow = options.flow ?? socket;
    this.localAddr = options.plain?.localAddr ?? {
      hostname: socket.localAddress ?? "",
      port: socket.localPort ?? 0,
    };
    this.remoteAddr = options.plain?.remoteAddr ?? {
      hostname: socket.remoteAddress ?? "",
      port: socket.remotePort ?? 0,
    };
    this.tls = tlsInfo(socket, options.server === true);
    try {
      socket.setNoDelay(true);
    } catch {
      // The next read or write reports a dead socket (or, over a Duplex, there is no delay to set).
    }
    socket.on("data", (data: Uint8Array) => this.#onData(data));
    socket.on("end", () => {
      this.#eof = true;
      if (this.#queued === 0) this.#settle(null);
    });
    socket.on("error", (error: Error) => {
      if (!this.#eof && !this.#closed) this.#failure ??= toClosedError(error);
    });
    socket.on("close", () => {
      this.#gone = true;
      this.#eof = true;
      if (this.#queued === 0) this.#settle(this.#failure ?? null);
      this.#failPending(this.#failure ?? new ConnectionClosedError());
    });
  }

  read(buf: Uint8Array): Promise<number | null> {
    if (this.#closed) return Promise.resolve(null);
    if (this.#queued > 0) return Promise.resolve(this.#take(buf));
    if (this.#failure !== null) return Promise.reject(this.#failure);
    if (this.#eof) return Promise.resolve(null);
    if (buf.length === 0) return Promise.resolve(0);
    if (this.#pending !== null) {
      return Promise.reject(
        new TypeError("Cannot read: another read is already pending"),
      );
    }
    return new Promise((resolve, reject) => {
      this.#pending = { buf, resolve, reject };
    });
  }

  write(bytes: Uint8Array): Promise<void> {
    if (this.#closed) {
      return Promise.reject(
        new ConnectionClosedError("Cannot write: the connection is closed"),
      );
    }
    if (this.#writeClosed || this.#gone) {
      return Promise.reject(
        this.#failure ??
          new ConnectionClosedError("Cannot write: the write side is closed"),
      );
    }
    // A copy: node keeps a reference until the bytes are flushed, and the
    // caller may reuse its buffer once this resolves. (Waiting for node's
    // write callback instead is not reliable: on Deno 2.9.6 it sometimes never
    // comes when the peer closes meanwhile, and the process then exits with a
    // pending promise.)
    if (this.#socket.write(bytes.slice())) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const fail = (error: unknown) => {
        this.#socket.off("drain", done);
        reject(error);
      };
      const done = () => {
        this.#unsettled.delete(fail);
        resolve();
      };
      this.#unsettled.add(fail);
      this.#socket.once("drain", done);
    });
  }

  closeWrite(): Promise<void> {
    if (this.#closed) {
      return Promise.reject(
        new ConnectionClosedError(
          "Cannot close the write side: the connection is closed",
        ),
      );
    }
    if (this.#writeClosed) return Promise.resolve();
    this.#writeClosed = true;
    return new Promise((resolve, reject) => {
      if (this.#gone) {
        reject(this.#failure ?? new ConnectionClosedError());
        return;
      }
      // Resolves once queued: see `write` for why node's callback is not awaited.
      this.#socket.end();
      resolve();
    });
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
    this.#chunks = [];
    this.#head = this.#offset = this.#queued = 0;
    this.#settle(null);
    this.#failPending(
      new ConnectionClosedError("Cannot write: the connection is closed"),
    );
    try {
      this.#socket.destroy();
    } catch {
      // close() never throws.
    }
  }

  #onData(data: Uint8Array): void {
    if (this.#closed || data.length === 0) return;
    this.#chunks.push(data);
    this.#queued += data.length;
    const pending = this.#pending;
    if (pending !== null) {
      this.#pending = null;
      pending.resolve(this.#take(pending.buf));
    }
    if (this.#queued > PAUSE_ABOVE && !this.#paused) {
      this.#paused = true;
      this.#flow.pause();
    }
  }

  /** Copies queued bytes into `buf`, as many as fit; the queue is non-empty. */
  #take(buf: Uint8Array): number {
    let n = 0;
    while (n < buf.length && this.#head < this.#chunks.length) {
      const chunk = this.#chunks[this.#head];
      if (chunk === undefined) break;
      const count = Math.min(chunk.length - this.#offset, buf.length - n);
      buf.set(chunk.subarray(this.#offset, this.#offset + count), n);
      n += count;
      this.#offset += count;
      if (this.#offset === chunk.length) {
        // Let the collector have it: the queue may never drain completely
        // while bytes keep coming, and each chunk is node's own copy.
        this.#chunks[this.#head++] = EMPTY_CHUNK;
        this.#offset = 0;
      }
    }
    this.#queued -= n;
    if (this.#head === this.#chunks.length) {
      this.#chunks = [];
      this.#head = 0;
    } else if (this.#head >= 64 && this.#head * 2 >= this.#chunks.length) {
      this.#chunks = this.#chunks.slice(this.#head);
      this.#head = 0;
    }
    if (this.#paused && this.#queued <= RESUME_BELOW) {
      this.#paused = false;
      this.#flow.resume();
    }
    return n;
  }

  #failPending(error: ConnectionClosedError): void {
    const pending = [...this.#unsettled];
    this.#unsettled.clear();
    for (const reject of pending) reject(error);
  }

  #settle(result: number | null | ConnectionClosedError): void {
    const pending = this.#pending;
    if (pending === null) return;
    this.#pending = null;
    if (result instanceof ConnectionClosedError) pending.reject(result);
    else pending.resolve(result);
  }
}

/** What a finished handshake showed, in the adapters' terms. */
function tlsInfo(socket: tls.TLSSocket, server: boolean): TlsInfo {
  const peer = socket.getPeerCertificate();
  const raw = peer !== null && typeof peer === "object" && "raw" in peer
    ? peer.raw
    : undefined;
  const peerCertificate = raw instanceof Uint8Array && raw.length > 0
    ? new Uint8Array(raw)
    : undefined;
  const { authorized, error } = server
    ? serverVerdict(socket, peerCertificate !== undefined)
    : {
      authorized: socket.authorized === true,
      error: socket.authorizationError as unknown,
    };
  return {
    protocol: socket.getProtocol() ?? "",
    peerCertificate,
    authorized,
    authorizationError: authorized || error === undefined || error === null ||
        error === ""
      ? undefined
      : error instanceof Error
      ? ((error as NodeJS.ErrnoException).code ?? error.message)
      : String(error),
  };
}

/**
 * Whether a client's chain verified against the client CA. A bare server
 * `TLSSocket` (not made by `tls.Server`) leaves `authorized` false whatever
 * the chain: `tls.Server` sets it from the TLS handle's `verifyError()`, so
 * this asks the handle the same way (Node returns an Error or null, Deno
 * 2.9.6 a code or ""). Without that method, fail closed: not authorized.
 */
function serverVerdict(
  socket: tls.TLSSocket,
  hasCertificate: boolean,
): { authorized: boolean; error: unknown } {
  const handle = (socket as unknown as {
    _handle?: { verifyError?: () => unknown } | null;
  })._handle;
  if (typeof handle?.verifyError !== "function") {
    return { authorized: false, error: "verification result unavailable" };
  }
  let error: unknown;
  try {
    error = handle.verifyError();
  } catch (cause) {
    return { authorized: false, error: cause };
  }
  const failed = error !== undefined && error !== null && error !== "";
  return { authorized: hasCertificate && !failed, error };
}
