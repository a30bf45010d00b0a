/**
 * The runtime-neutral socket surface. `lib/net/deno.ts` and `lib/net/bun.ts`
 * implement it; everything else in `lib/` depends only on these types.
 *
 * @module
 */

/**
 * The address of one end of a connection. On a Unix socket, `hostname` is
 * the socket's path ("" for an unnamed end, such as a connecting client)
 * and `port` is 0.
 */
export interface Addr {
  /** IP address as the runtime reports it (IPv6 without brackets). */
  readonly hostname: string;
  readonly port: number;
}

/** A connected TCP stream. */
export interface Conn {
  /**
   * Fast path: fill `buf` with up to `buf.length` bytes.
   * Resolves the byte count (> 0), or null at EOF. After `close()`, resolves null.
   * Throws {@linkcode ConnectionClosedError} when the peer reset the connection.
   */
  read(buf: Uint8Array): Promise<number | null>;
  /**
   * Fast path: resolves once every byte of `bytes` was handed to the kernel or
   * queued under the runtime's own bounded buffer (backpressure). The caller may
   * reuse `bytes` as soon as the promise resolves.
   * Throws {@linkcode ConnectionClosedError} when the connection is gone;
   * once a write found it gone, later writes reject at once with that same
   * error (a relay may queue thousands of writes to a dead peer).
   */
  write(bytes: Uint8Array): Promise<void>;
  /** Half-close: no more writes; the peer reads EOF. Resolves when flushed. */
  closeWrite(): Promise<void>;
  /** Web stream view of the read side, built lazily. Do not mix with `read()`. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Web stream view of the write side, built lazily. Do not mix with `write()`. */
  readonly writable: WritableStream<Uint8Array>;
  readonly localAddr: Addr;
  readonly remoteAddr: Addr;
  /**
   * What the TLS handshake established; undefined on a plain TCP connection
   * and, on a connection from a TLS listener, until `handshake()` resolved.
   */
  readonly tls?: TlsInfo | undefined;
  /**
   * Present only on a connection accepted by a TLS listener, which yields it
   * before a single TLS byte was read or written. Until this is called the
   * connection is plain TCP: a refusal written with `write` reaches the peer
   * as plain text, and the peer sees no ServerHello nor certificate.
   *
   * Starts the TLS handshake; resolves once it succeeded (then `tls` is set
   * and `read`/`write` carry decrypted bytes). Call it before any `read`; a
   * second call returns the same promise. Closing the connection (e.g. on a
   * handshake timeout) settles it.
   *
   * Rejects with a {@linkcode MoatError} of code `ERR_TLS_HANDSHAKE` whose
   * message says why (e.g. "TLS handshake failed: the peer does not speak
   * TLS"); the connection is then closed.
   */
  handshake?(): Promise<void>;
  /** Closes both directions at once. Idempotent; never throws. */
  close(): void;
}

/**
 * The outcome of a finished TLS handshake. The adapters never reject a peer's
 * certificate themselves (except for the protocol version): they report what
 * they saw, and `lib/tls.ts` decides, so that every refusal has one clear
 * message on both runtimes.
 */
export interface TlsInfo {
  /** Negotiated protocol, e.g. "TLSv1.3" (empty when the runtime does not say). */
  readonly protocol: string;
  /** The peer's end-entity certificate, DER; undefined when it sent none. */
  readonly peerCertificate: Uint8Array | undefined;
  /**
   * True when the peer's chain verified against the configured CA bundle
   * (`ca` on a client, `clientCa` on a server). Meaningless without one.
   */
  readonly authorized: boolean;
  /** The TLS library's reason when `authorized` is false, e.g. "CERT_HAS_EXPIRED". */
  readonly authorizationError: string | undefined;
}

/** Server-side TLS: TLS 1.3 only. */
export interface ServerTlsOptions {
  /** PEM certificate chain, end-entity first. */
  cert: string;
  /** PEM private key. */
  key: string;
  /** Ask every client for a certificate. */
  requestCert?: boolean;
  /** PEM CA bundle that client certificates are verified against. */
  clientCa?: string;
}

/** Client-side TLS: TLS 1.3 only. */
export interface ClientTlsOptions {
  /** PEM CA bundle that the server's chain is verified against. */
  ca?: string;
  /** Sent as SNI when it is a DNS name. */
  serverName?: string;
  /** PEM client certificate, presented when the server asks. */
  cert?: string;
  /** PEM private key of `cert`. */
  key?: string;
}

/** A listening TCP socket. Iterate it to accept connections. */
export interface Listener extends AsyncIterable<Conn> {
  readonly addr: Addr;
  /** Stops accepting; ends the iteration. Idempotent; never throws. */
  close(): void;
  /**
   * On a TLS listener: the certificate, key and client CA of connections
   * accepted from now on (those already accepted keep theirs).
   *
   * @throws {MoatError} `ERR_TLS_CONFIG` when they make no usable TLS
   * context; the listener then keeps the one it had. A `TypeError` on a
   * plain TCP listener.
   */
  setTls?(tls: ServerTlsOptions): void;
}

/**
 * A change in a listener's ability to accept, reported once per episode
 * (not once per failed attempt) through {@linkcode ListenOptions.onAcceptError}.
 */
export type AcceptErrorEvent =
  /**
   * Accepting fails, typically because the process ran out of file
   * descriptors (EMFILE/ENFILE). The listener keeps its port, retries with
   * exponential backoff (1 ms up to 1 s), and answers connections it can
   * still take with `busyNotice` and a close.
   */
  | { kind: "exhausted"; message: string }
  /** Accepting works again; `busy` connections were turned away meanwhile. */
  | { kind: "recovered"; message: string; busy: number };

/** Options for {@linkcode Net.listen}. */
export interface ListenOptions {
  hostname: string;
  port: number;
  /**
   * Speak TLS 1.3 only. Connections are yielded as soon as they are accepted,
   * before any TLS byte, with a `handshake()` method (see {@linkcode Conn}).
   */
  tls?: ServerTlsOptions;
  /** Told when accepting starts failing and when it works again. */
  onAcceptError?: (event: AcceptErrorEvent) => void;
  /**
   * Written (plain, even on a TLS listener) to each connection that arrives
   * while file descriptors are exhausted, before it is closed; such
   * connections are never yielded. Nothing is written when omitted.
   */
  busyNotice?: Uint8Array;
}

/** Options for {@linkcode Net.connect}. */
export interface ConnectOptions {
  hostname: string;
  port: number;
  /** Speak TLS 1.3; resolves after the handshake (the caller verifies the peer). */
  tls?: ClientTlsOptions;
}

/** Options for {@linkcode Net.listenUnix}. */
export interface UnixListenOptions {
  /** Where the socket file is made; nothing may exist there yet. */
  path: string;
}

/** Options for {@linkcode Net.connectUnix}. */
export interface UnixConnectOptions {
  /** The socket file. */
  path: string;
}

/** What a runtime adapter provides. */
export interface Net {
  /** "deno" or "bun". */
  readonly runtime: string;
  /** Version string of the runtime. */
  readonly runtimeVersion: string;
  /** Throws AddressInUseError / Error with a one-line message on failure. */
  listen(options: ListenOptions): Promise<Listener>;
  /** Throws ConnectError when the server cannot be reached. */
  connect(options: ConnectOptions): Promise<Conn>;
  /**
   * Listens on a Unix stream socket: the file is made at `path` with the
   * process's umask (the caller sets its mode), and `close()` removes it.
   * The listener's `addr` is `{ hostname: path, port: 0 }`.
   * Throws AddressInUseError when something exists at `path`, and a
   * MoatError `ERR_LISTEN` with a one-line reason otherwise.
   */
  listenUnix(options: UnixListenOptions): Promise<Listener>;
  /**
   * Connects to a Unix stream socket. Throws ConnectError naming the path
   * and the reason: "no such socket", "connection refused" (a socket file
   * nobody listens on), "permission denied".
   */
  connectUnix(options: UnixConnectOptions): Promise<Conn>;
}
