/**
 * TLS 1.3 over `node:tls`, behind the same {@linkcode Conn} and
 * {@linkcode Listener} interfaces as the plain adapters. The Deno adapter
 * uses it for every TLS connection: `Deno.listenTls` can neither ask for nor
 * verify client certificates, cannot be limited to TLS 1.3, and
 * `Deno.connectTls` does not expose the server's certificate, which pinning
 * and trust on first use need (measured on Deno 2.9.6, see PERF.md).
 *
 * The adapter never rejects a certificate itself: it asks for one
 * (`rejectUnauthorized: false`) and reports it in {@linkcode TlsInfo};
 * `lib/tls.ts` decides. Only the protocol version is enforced here.
 *
 * Reading works like the Bun adapter: received chunks are queued and copied
 * into the caller's buffer, and the socket is paused while more than 2 MiB
 * sits unread. `write` hands node a copy, so the caller may reuse its buffer
 * at once, and waits for `drain` when node's buffer is full.
 *
 * @module
 */

import * as tls from "node:tls";
import { ConnectError, ConnectionClosedError, MoatError } from "../errors.ts";
import { readableFrom, writableFrom } from "./streams.ts";
import { AcceptQueue } from "./_accept_queue.ts";
import {
  connectReason,
  describe,
  errorCode,
  formatAddr,
  toClosedError,
  toListenError,
} from "./_errors.ts";
import type {
  Addr,
  ClientTlsOptions,
  Conn,
  ConnectOptions,
  Listener,
  ListenOptions,
  ServerTlsOptions,
  TlsInfo,
} from "./types.ts";

/** Pause the socket when more than this many received bytes are unread. */
const PAUSE_ABOVE = 2 * 1024 * 1024;
/** Resume a paused socket when the unread bytes fall to this many. */
const RESUME_BELOW = 512 * 1024;

/**
 * Listens for TLS 1.3 connections with `node:tls`.
 *
 * @param options Address and `tls` settings (`tls` is required).
 * @returns A listener yielding connections whose handshake succeeded.
 * @throws {AddressInUseError} When the port is taken.
 * @throws {MoatError} `ERR_LISTEN` on any other failure, `ERR_TLS_CONFIG` on a bad certificate or key.
 */
export async function listenNodeTls(options: ListenOptions): Promise<Listener> {
  const config = options.tls;
  if (config === undefined) {
    throw new TypeError("listenNodeTls needs tls options");
  }
  let server: tls.Server;
  try {
    server = tls.createServer({
      ...serverContext(config),
      allowHalfOpen: true,
      // Without this node may reject a handshake before we can refuse with a message.
      rejectUnauthorized: false,
    });
  } catch (error) {
    throw new MoatError(
      "ERR_TLS_CONFIG",
      `Cannot use the TLS certificate or key: ${describe(error)}`,
      undefined,
      {
        cause: error,
      },
    );
  }
  const listener = new NodeTlsListener(server, config);
  await new Promise<void>((resolve, reject) => {
    const onError = (error: Error) => reject(toListenError(error, options));
    server.once("error", onError);
    server.listen({ host: options.hostname, port: options.port }, () => {
      server.off("error", onError);
      resolve();
    });
  });
  listener.bound();
  return listener;
}

/**
 * Connects with TLS 1.3 over `node:tls`; resolves after the handshake.
 *
 * @param options Address and `tls` settings (`tls` is required).
 * @returns The connection, with {@linkcode TlsInfo} filled in.
 * @throws {ConnectError} When the server cannot be reached or the handshake fails.
 */
export function connectNodeTls(options: ConnectOptions): Promise<Conn> {
  const config = options.tls ?? {};
  return new Promise((resolve, reject) => {
    let socket: tls.TLSSocket;
    try {
      // allowHalfOpen reaches the socket at run time; node's types omit it.
      const connectOptions: tls.ConnectionOptions & { allowHalfOpen: boolean } =
        {
          host: options.hostname,
          port: options.port,
          ...clientContext(config, options.hostname),
          rejectUnauthorized: false,
          allowHalfOpen: true,
        };
      socket = tls.connect(connectOptions);
    } catch (error) {
      reject(
        new MoatError(
          "ERR_TLS_CONFIG",
          `Cannot use the TLS client certificate or key: ${describe(error)}`,
          undefined,
          {
            cause: error,
          },
        ),
      );
      return;
    }
    const onError = (error: Error) => {
      socket.destroy();
      reject(toConnectError(error, options));
    };
    const onClose = () => reject(toConnectError(undefined, options));
    socket.once("error", onError);
    socket.once("close", onClose);
    socket.once("secureConnect", () => {
      socket.off("error", onError);
      socket.off("close", onClose);
      resolve(new NodeTlsConn(socket));
    });
  });
}

/** The `node:tls` server options for a {@linkcode ServerTlsOptions}. */
function serverContext(config: ServerTlsOptions): tls.TlsOptions {
  return {
    cert: config.cert,
    key: config.key,
    minVersion: "TLSv1.3",
    maxVersion: "TLSv1.3",
    requestCert: config.requestCert === true || config.clientCa !== undefined,
    ...(config.clientCa !== undefined && { ca: config.clientCa }),
  };
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

/** A TLS listening socket; iterating it accepts connections until `close()`. */
class NodeTlsListener implements Listener {
  addr: Addr = { hostname: "", port: 0 };
  #server: tls.Server;
  #queue = new AcceptQueue();

  constructor(server: tls.Server, config: ServerTlsOptions) {
    this.#server = server;
    server.on("secureConnection", (socket: tls.TLSSocket) => {
      this.#queue.push(new NodeTlsConn(socket));
    });
    server.on("tlsClientError", (error: Error, socket: tls.TLSSocket) => {
      const peer = {
        hostname: socket.remoteAddress ?? "",
        port: socket.remotePort ?? 0,
      };
      socket.destroy();
      config.onHandshakeError?.(peer, handshakeReason(error));
    });
    // Errors after listening (rare) must not crash the process.
    server.on("error", () => {});
  }

  /** Records the bound address; called once listening. */
  bound(): void {
    const address = this.#server.address();
    if (address !== null && typeof address === "object") {
      this.addr = { hostname: address.address, port: address.port };
    }
  }

  [Symbol.asyncIterator](): AsyncGenerator<Conn, void, undefined> {
    return this.#queue[Symbol.asyncIterator]();
  }

  close(): void {
    if (!this.#queue.close()) return;
    try {
      this.#server.close();
    } catch {
      // close() never throws.
    }
  }
}

/** A connection over a `node:tls` socket whose handshake is done. */
class NodeTlsConn implements Conn {
  readonly localAddr: Addr;
  readonly remoteAddr: Addr;
  readonly tls: TlsInfo;
  #socket: tls.TLSSocket;
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

  constructor(socket: tls.TLSSocket) {
    this.#socket = socket;
    this.localAddr = {
      hostname: socket.localAddress ?? "",
      port: socket.localPort ?? 0,
    };
    this.remoteAddr = {
      hostname: socket.remoteAddress ?? "",
      port: socket.remotePort ?? 0,
    };
    const peer = socket.getPeerCertificate();
    const raw = peer !== null && typeof peer === "object" && "raw" in peer
      ? peer.raw
      : undefined;
    const error = socket.authorizationError as unknown;
    this.tls = {
      protocol: socket.getProtocol() ?? "",
      peerCertificate: raw instanceof Uint8Array && raw.length > 0
        ? new Uint8Array(raw)
        : undefined,
      authorized: socket.authorized === true,
      authorizationError: error === undefined || error === null
        ? undefined
        : error instanceof Error
        ? ((error as NodeJS.ErrnoException).code ?? error.message)
        : String(error),
    };
    try {
      socket.setNoDelay(true);
    } catch {
      // The next read or write reports a dead socket.
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
      this.#socket.pause();
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
        this.#head++;
        this.#offset = 0;
      }
    }
    this.#queued -= n;
    if (this.#head === this.#chunks.length) {
      this.#chunks = [];
      this.#head = 0;
    }
    if (this.#paused && this.#queued <= RESUME_BELOW) {
      this.#paused = false;
      this.#socket.resume();
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

/**
 * A one-line reason for a failed handshake. The OpenSSL codes that mean
 * "the other side is not speaking TLS" get a plain explanation.
 *
 * @param error The error node reported, if any.
 * @returns e.g. "the peer does not speak TLS".
 */
export function handshakeReason(error: unknown): string {
  const code = errorCode(error) ?? "";
  const text = error instanceof Error ? error.message : String(error ?? "");
  if (
    /WRONG_VERSION_NUMBER|PACKET_LENGTH_TOO_LONG|HTTP_REQUEST|RECORD_LAYER_FAILURE/i
      .test(code + " " + text)
  ) {
    return "the peer does not speak TLS";
  }
  if (
    /UNSUPPORTED_PROTOCOL|PROTOCOL_VERSION|VERSION_TOO_LOW|NO_PROTOCOLS_AVAILABLE/i
      .test(code + " " + text)
  ) {
    return "the peer does not support TLS 1.3";
  }
  if (/CERTIFICATE_REQUIRED/i.test(code + " " + text)) {
    return "a client certificate is required";
  }
  if (code === "ECONNRESET") return "connection reset during the TLS handshake";
  return describe(error);
}

function toConnectError(error: unknown, options: ConnectOptions): ConnectError {
  const where = formatAddr(options.hostname, options.port);
  const code = errorCode(error);
  const reason = error === undefined
    ? "connection closed during the TLS handshake"
    : connectReason(code) ?? `TLS handshake failed: ${handshakeReason(error)}`;
  return new ConnectError(`Cannot connect to ${where}: ${reason}`, {
    cause: error,
  });
}
