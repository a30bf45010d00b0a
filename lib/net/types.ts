/**
 * The runtime-neutral socket surface. `lib/net/deno.ts` and `lib/net/bun.ts`
 * implement it; everything else in `lib/` depends only on these types.
 *
 * @module
 */

/** The address of one end of a connection. */
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
   * Throws {@linkcode ConnectionClosedError} when the connection is gone.
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
  /** Closes both directions at once. Idempotent; never throws. */
  close(): void;
}

/** A listening TCP socket. Iterate it to accept connections. */
export interface Listener extends AsyncIterable<Conn> {
  readonly addr: Addr;
  /** Stops accepting; ends the iteration. Idempotent; never throws. */
  close(): void;
}

/** Options for {@linkcode Net.listen}. */
export interface ListenOptions {
  hostname: string;
  port: number;
}

/** Options for {@linkcode Net.connect}. */
export interface ConnectOptions {
  hostname: string;
  port: number;
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
}
