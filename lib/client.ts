/**
 * The moat client: handshake, `get` and `chat`.
 *
 * @module
 */

import * as fs from "node:fs";
import type { Conn, Net } from "./net/types.ts";
import { DEFAULT_MAX_FRAME_SIZE, encodeFrame, FrameReader } from "./framer.ts";
import {
  decodeChatLine,
  decodeError,
  decodeFileMeta,
  decodeText,
  decodeWelcome,
  encodeJson,
  encodePreamble,
  encodeText,
  isMagicPrefix,
  Kind,
  MAGIC,
  type Mode,
  PREAMBLE_SIZE,
  PROTOCOL_VERSION,
  type Welcome,
} from "./protocol.ts";
import {
  Code,
  ConnectError,
  ConnectionClosedError,
  errorFromFrame,
  errorFromLine,
  MoatError,
  ProtocolError,
} from "./errors.ts";
import { formatChatLine } from "./chat.ts";
import { escapeText } from "./text.ts";
import { type ClientTlsConfig, connectSecure } from "./tls.ts";
import { answerChallenge, type Token } from "./auth.ts";
import { fingerprint } from "./cert.ts";
import {
  partPathOf,
  prepareDownload,
  receiveFile,
  receiveFileData,
  type ReceiveResult,
} from "./file_sender.ts";
import { createDigest, DEFAULT_DIGEST, type DigestName } from "./digest.ts";
import type { FileMeta } from "./protocol.ts";
import { Heartbeat, heartbeatInterval } from "./heartbeat.ts";

/** A server address. */
export interface ServerAddr {
  hostname: string;
  port: number;
}

/** Options shared by every client command. */
export interface ClientOptions {
  net: Net;
  server: ServerAddr;
  /** Connect over TLS and verify the server this way. */
  tls?: ClientTlsConfig;
  /** Answer the server's token challenge with this token. */
  token?: Token;
  /** Sent in the hello, e.g. "0.1.0". */
  version: string;
  /** Largest frame accepted. @default {1_048_576} */
  maxFrameSize?: number;
  /** Read buffer size. @default {1_048_576} */
  bufferSize?: number;
  /**
   * Longest wait for the server, in ms: to connect and finish the handshake,
   * and (get) between two chunks of a transfer.
   * @default {DEFAULT_CLIENT_TIMEOUT_MS}
   */
  timeoutMs?: number;
}

/** Default {@linkcode ClientOptions.timeoutMs}: 60 s. */
export const DEFAULT_CLIENT_TIMEOUT_MS = 60_000;

/**
 * Closes a connection when it has not been {@linkcode Watchdog.touch}ed for
 * `ms`: every pending read and write then ends, so a server that stops
 * answering cannot hold a client forever. `fired` says whether it did.
 */
class Watchdog {
  fired = false;
  #last = performance.now();
  #paused = 0;
  #timer: ReturnType<typeof setInterval>;

  constructor(conn: Conn, ms: number) {
    this.#timer = setInterval(() => {
      if (this.#paused > 0 || performance.now() - this.#last < ms) return;
      this.fired = true;
      this.stop();
      conn.close();
    }, Math.max(10, Math.min(1000, ms / 4)));
  }

  touch() {
    this.#last = performance.now();
  }

  /**
   * Runs `work` with the clock stopped: time spent on this side (a slow
   * reader of stdout) is not the server's silence.
   */
  async paused<T>(work: () => Promise<T>): Promise<T> {
    this.#paused++;
    try {
      return await work();
    } finally {
      this.#paused--;
      this.touch();
    }
  }

  stop() {
    clearInterval(this.#timer);
  }
}

/** The client's timeout in ms, defaulted. */
function timeoutOf(client: ClientOptions): number {
  return client.timeoutMs ?? DEFAULT_CLIENT_TIMEOUT_MS;
}

function timeoutError(client: ClientOptions, what: string): MoatError {
  const { hostname, port } = client.server;
  const secs = timeoutOf(client) / 1000;
  return new MoatError(
    Code.ERR_TIMEOUT,
    `${hostname}:${port} ${what} ${secs} s (see --timeout)`,
  );
}

/** Connects, giving up after the client's timeout (a late connection is closed). */
function connectWithin(options: ClientOptions): Promise<Conn> {
  const connecting = connectSecure(options.net, options.server, options.tls);
  return new Promise<Conn>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(timeoutError(options, "did not accept the connection within"));
      connecting.then((conn) => conn.close(), () => {});
    }, timeoutOf(options));
    connecting.then(resolve, reject).finally(() => clearTimeout(timer));
  });
}

/** A connection past the handshake. */
export interface Session {
  conn: Conn;
  reader: FrameReader;
  welcome: Welcome;
}

/**
 * Parses "HOST:PORT", "[V6]:PORT", "HOST" or "V6" (default port 4320).
 *
 * @param text The address.
 * @returns Host and port.
 * @throws {MoatError} `ERR_USAGE` on a malformed address.
 */
export function parseServerAddr(text: string, defaultPort = 4320): ServerAddr {
  let host = text;
  let port = String(defaultPort);
  const bracket = /^\[([^\]]+)\](?::(.*))?$/.exec(text);
  if (bracket) {
    host = bracket[1]!;
    if (bracket[2] !== undefined) port = bracket[2];
  } else if ((text.match(/:/g) ?? []).length === 1) {
    [host, port] = text.split(":") as [string, string];
  }
  const n = Number(port);
  if (host === "" || !/^\d+$/.test(port) || n < 1 || n > 65535) {
    throw new MoatError(
      Code.ERR_USAGE,
      `Invalid server address "${escapeText(text)}": expected HOST:PORT`,
    );
  }
  return { hostname: host, port: n };
}

/** First bytes of TLS records (alert, handshake): a TLS server answering a plain client. */
const TLS_ALERT = 0x15;
const TLS_HANDSHAKE = 0x16;

/** Longest piece of server-supplied text (a name, an address) kept. */
const MAX_SERVER_TEXT = 256;

/**
 * Makes a piece of server-supplied text safe to show: escaped, one line,
 * capped. Everything a server says passes through here or
 * {@linkcode errorFromFrame}.
 *
 * @param text What the server sent.
 * @returns The text, safe for a terminal.
 */
export function serverText(text: string): string {
  return escapeText(text, { maxLength: MAX_SERVER_TEXT });
}

/** The text of a Welcome, made safe by {@linkcode serverText}. */
function safeWelcome(welcome: Welcome): Welcome {
  return {
    server: serverText(welcome.server),
    name: serverText(welcome.name),
    peer: serverText(welcome.peer),
    maxFrameSize: welcome.maxFrameSize,
    ...(welcome.idleTimeoutMs !== undefined &&
      { idleTimeoutMs: welcome.idleTimeoutMs }),
  };
}

/**
 * Connects, sends the preamble and hello, and reads the welcome.
 *
 * @param options Server and limits.
 * @param mode What this connection is for.
 * @param extra Hello fields for the mode.
 * @param signal Aborting it closes the connection, ending the handshake.
 * @returns The session.
 * @throws {AccessDeniedError} When the server refuses this peer.
 * @throws {ConnectError} When the server cannot be reached.
 * @throws {MoatError} `ERR_TIMEOUT` when the server does not finish the
 * handshake within {@linkcode ClientOptions.timeoutMs}.
 */
export async function openSession(
  options: ClientOptions,
  mode: Mode,
  extra: { source?: string; receipts?: number } = {},
  signal?: AbortSignal,
): Promise<Session> {
  const maxFrameSize = options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE;
  const conn = await connectWithin(options);
  const watchdog = new Watchdog(conn, timeoutOf(options));
  const onAbort = () => conn.close();
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) conn.close();
  try {
    const hello = encodeFrame({
      type: Kind.Hello,
      payload: encodeJson({
        client: `moat/${options.version}`,
        mode,
        maxFrameSize,
        ...extra,
      }),
    });
    const first = new Uint8Array(PREAMBLE_SIZE + hello.length);
    first.set(encodePreamble());
    first.set(hello, PREAMBLE_SIZE);
    // The server may refuse and close before reading; a failed write then
    // still leaves its refusal notice to be read below.
    await conn.write(first).catch(() => {});
    const reader = new FrameReader(conn, {
      maxFrameSize,
      bufferSize: options.bufferSize ?? DEFAULT_MAX_FRAME_SIZE,
    });
    let head: Uint8Array;
    try {
      head = await reader.peek(PREAMBLE_SIZE);
    } catch (err) {
      throw new ConnectionClosedError(
        "Connection closed by server during the handshake",
        { cause: err },
      );
    }
    if (head.length === 0) {
      throw new ConnectionClosedError(
        "Connection closed by server during the handshake",
      );
    }
    if (
      (head[0] === TLS_ALERT || head[0] === TLS_HANDSHAKE) && head[1] === 3 &&
      options.tls === undefined
    ) {
      throw new ConnectError(
        `Cannot talk to ${options.server.hostname}:${options.server.port}: the server speaks TLS on this port; connect with --tls`,
      );
    }
    if (head[0] !== MAGIC[0]) throw await textRefusal(reader);
    const pre = await reader.readExact(PREAMBLE_SIZE);
    if (
      !isMagicPrefix(pre.subarray(0, MAGIC.length)) ||
      pre[MAGIC.length] !== PROTOCOL_VERSION
    ) {
      throw new ProtocolError(
        "Server did not answer with a moat preamble of version 1",
      );
    }
    let frame = await reader.readFrame();
    if (frame !== null && frame.type === Kind.Challenge) {
      const der = conn.tls?.peerCertificate;
      const payload = answerChallenge(frame.payload, {
        token: options.token,
        mode,
        binding: der === undefined ? "" : fingerprint(der),
      });
      await conn.write(encodeFrame({ type: Kind.Auth, payload }));
      frame = await reader.readFrame();
    }
    if (frame === null) {
      throw new ConnectionClosedError(
        "Connection closed by server during the handshake",
      );
    }
    if (frame.type === Kind.Error) {
      throw errorFromFrame(decodeError(frame.payload));
    }
    if (frame.type !== Kind.Welcome) {
      throw new ProtocolError(
        `Expected a welcome frame, got type 0x${frame.type.toString(16)}`,
      );
    }
    return {
      conn,
      reader,
      welcome: safeWelcome(decodeWelcome(frame.payload)),
    };
  } catch (err) {
    conn.close();
    if (watchdog.fired) {
      throw timeoutError(options, "did not finish the handshake within");
    }
    throw err;
  } finally {
    watchdog.stop();
    signal?.removeEventListener("abort", onAbort);
  }
}

/** Reads an "ERR CODE message" line and maps it to an error. */
async function textRefusal(reader: FrameReader): Promise<MoatError> {
  const bytes = await reader.peek(512);
  const line = decodeText(bytes).split("\n")[0]!.replace(/\r$/, "");
  return errorFromLine(line) ??
    new ProtocolError("Server did not answer with a moat preamble");
}

/** Options for {@linkcode get}. */
export interface GetOptions {
  /** Path relative to the server's root. */
  path: string;
  /** Where to save. */
  out: string;
  /** Replace an existing target, and discard a part file left by an interrupted get. */
  force?: boolean;
  /** Continue from the part file an interrupted get left. */
  resume?: boolean;
  /** The whole-file check. @default {"crc32"} */
  digest?: DigestName;
  /** Progress: bytes received in this run, bytes expected in this run. */
  onProgress?: (received: number, expected: number) => void;
  /** Called once the size is known. */
  onStart?: (size: number, offset: number) => void;
  /**
   * Aborting it stops the get at once (the connection is closed); a part
   * file with bytes in it stays for `--resume`.
   */
  signal?: AbortSignal;
}

/**
 * Fetches one file into `out`, verified and renamed atomically. The part
 * file is removed on every failure except a cut connection, a timeout or an
 * abort with bytes in it, which stays for `--resume`. Without `resume` or
 * `force`, a part file that holds bytes is not discarded: the get is refused.
 *
 * @param client Connection options.
 * @param options Path, output and flags.
 * @returns What arrived.
 * @throws {PathError} When the server refuses the path.
 * @throws {IntegrityError} When the file arrives damaged.
 * @throws {ConnectionClosedError} When the transfer is cut; the part file stays for `--resume`.
 * @throws {MoatError} `ERR_EXISTS` when `out` exists (without `force`), or
 * its part file holds bytes (without `resume` or `force`); `ERR_FILE_CHANGED`
 * when the file changed on the server while it was sent (nothing is kept).
 * @throws {unknown} The signal's reason, when it is aborted.
 */
export async function get(
  client: ClientOptions,
  options: GetOptions,
): Promise<ReceiveResult & { offset: number }> {
  const { signal } = options;
  signal?.throwIfAborted();
  refuseToDiscardPart(options);
  await using download = prepareDownload(options.out, {
    ...(options.force !== undefined && { force: options.force }),
    ...(options.resume !== undefined && { resume: options.resume }),
    ...(options.digest !== undefined && { digest: options.digest }),
  });
  let session: Session;
  try {
    session = await openSession(client, "get", {}, signal);
  } catch (err) {
    // Nothing arrived: a resumed part stays for the next try.
    if (download.offset > 0) download.keep();
    signal?.throwIfAborted();
    throw err;
  }
  const { conn, reader } = session;
  // A server that stalls mid-transfer must not hold the client forever; the
  // part file stays for --resume, as after any cut.
  const watchdog = new Watchdog(conn, timeoutOf(client));
  const onAbort = () => conn.close();
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) conn.close();
  try {
    const meta = await requestFile(session, {
      path: options.path,
      offset: download.offset,
      digest: download.digest.name,
    });
    options.onStart?.(meta.size, meta.offset);
    const onProgress = options.onProgress;
    // receiveFile keeps or removes the part itself once the file has begun.
    const result = await receiveFile(reader, download, meta, {
      onProgress: (received, expected) => {
        watchdog.touch();
        onProgress?.(received, expected);
      },
    });
    return { ...result, offset: meta.offset };
  } catch (err) {
    if (signal?.aborted) {
      // An empty part is nothing to resume; one with bytes is.
      download.close();
      if (sizeOf(download.partPath) > 0) download.keep();
      else download.discard();
      signal.throwIfAborted();
    }
    // Cut before the file began: only a resumed part holds anything.
    const cut = watchdog.fired || err instanceof ConnectionClosedError;
    if (cut && download.offset > 0) download.keep();
    if (watchdog.fired) {
      throw timeoutError(client, "sent nothing for");
    }
    throw err;
  } finally {
    signal?.removeEventListener("abort", onAbort);
    watchdog.stop();
    conn.close();
  }
}

/** A file's size, or 0 when it cannot be read. */
function sizeOf(file: string): number {
  try {
    return fs.lstatSync(file).size;
  } catch {
    return 0;
  }
}

/**
 * Refuses a fresh get (no `resume`, no `force`) over a part file with bytes
 * in it: an interrupted get of a large file may have left gigabytes there,
 * and starting again would silently throw them away. A target that exists
 * is left for `prepareDownload` to refuse.
 */
function refuseToDiscardPart(options: GetOptions): void {
  if (options.resume || options.force) return;
  try {
    fs.lstatSync(options.out);
    return;
  } catch {
    // No target: look at the part.
  }
  const part = partPathOf(options.out);
  const size = sizeOf(part);
  if (size === 0) return;
  throw new MoatError(
    Code.ERR_EXISTS,
    `Refusing to discard "${
      escapeText(part)
    }": it holds ${size} bytes of an interrupted get (use --resume to continue it, or --force to start again)`,
  );
}

/**
 * Sends a Get and reads the FileMeta that answers it.
 *
 * @throws {MoatError} The server's refusal.
 * @throws {ProtocolError} When the answer is neither.
 */
async function requestFile(
  session: Session,
  request: { path: string; offset: number; digest: DigestName },
): Promise<FileMeta> {
  await session.conn.write(encodeFrame({
    type: Kind.Get,
    payload: encodeJson(request),
  }));
  const frame = await readFrameOrClosed(session.reader);
  if (frame.type === Kind.Error) {
    throw errorFromFrame(decodeError(frame.payload));
  }
  if (frame.type !== Kind.FileMeta) {
    throw new ProtocolError(
      `Expected file metadata, got frame type 0x${frame.type.toString(16)}`,
    );
  }
  return decodeFileMeta(frame.payload);
}

async function readFrameOrClosed(reader: FrameReader) {
  const frame = await reader.readFrame();
  if (frame === null) {
    throw new ConnectionClosedError("Connection closed by server");
  }
  return frame;
}

/** Options for {@linkcode getStream}. */
export interface GetStreamOptions {
  /** Path relative to the server's root. */
  path: string;
  /**
   * Takes each piece of the file in order; the piece is only valid until the
   * promise settles. Time spent here does not count towards the timeout.
   */
  write: (bytes: Uint8Array) => Promise<void>;
  /** The whole-file check. @default {"crc32"} */
  digest?: DigestName;
  /** Progress: bytes received, bytes expected. */
  onProgress?: (received: number, expected: number) => void;
  /** Called once the size is known. */
  onStart?: (size: number, offset: number) => void;
  /** Aborting it stops the get at once (the connection is closed). */
  signal?: AbortSignal;
}

/**
 * Fetches one file into a sink that cannot be renamed, such as stdout: the
 * bytes are passed on as they arrive, and the size and digest are checked at
 * the end. Unlike {@linkcode get}, a failure comes after bytes were passed
 * on: whoever reads the sink must treat them as damaged unless this resolves.
 *
 * @param client Connection options.
 * @param options Path, sink and digest.
 * @returns What arrived (`bytes` equals `size`).
 * @throws {PathError} When the server refuses the path.
 * @throws {IntegrityError} On a size or digest mismatch: what was passed on
 * is not the file.
 * @throws {ConnectionClosedError} When the transfer is cut.
 * @throws {MoatError} The server's error, e.g. `ERR_FILE_CHANGED`;
 * `ERR_TIMEOUT` when the server sends nothing for the client's timeout.
 * @throws {unknown} What `write` throws, or the signal's reason.
 */
export async function getStream(
  client: ClientOptions,
  options: GetStreamOptions,
): Promise<ReceiveResult> {
  const { signal } = options;
  signal?.throwIfAborted();
  const hash = createDigest(options.digest ?? DEFAULT_DIGEST);
  const session = await openSession(client, "get", {}, signal).catch(
    (err: unknown) => {
      signal?.throwIfAborted();
      throw err;
    },
  );
  const { conn, reader } = session;
  const watchdog = new Watchdog(conn, timeoutOf(client));
  const onAbort = () => conn.close();
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) conn.close();
  try {
    const meta = await requestFile(session, {
      path: options.path,
      offset: 0,
      digest: hash.name,
    });
    if (meta.offset !== 0) {
      throw new ProtocolError(`Server started at byte ${meta.offset}, not 0`);
    }
    if (meta.digest !== hash.name) {
      throw new ProtocolError(
        `Server announced a ${meta.digest} digest, ${hash.name} was asked for`,
      );
    }
    options.onStart?.(meta.size, 0);
    const { bytes, digest } = await receiveFileData(reader, meta, hash, {
      write: (frag) => watchdog.paused(() => options.write(frag)),
      onFrame: () => watchdog.touch(),
      onProgress: options.onProgress,
    });
    return { bytes, size: meta.size, digestName: hash.name, digest };
  } catch (err) {
    signal?.throwIfAborted();
    if (watchdog.fired) throw timeoutError(client, "sent nothing for");
    throw err;
  } finally {
    signal?.removeEventListener("abort", onAbort);
    watchdog.stop();
    conn.close();
  }
}

/** Options for {@linkcode chat}. */
export interface ChatOptions {
  /** Lines typed by the user; the chat ends when it ends. */
  input: AsyncIterable<string>;
  /** Shows one received line. */
  output: (line: string) => void;
  /** Called once connected. */
  onWelcome?: (welcome: Welcome) => void;
  /**
   * After the input ends, how long to wait for another line before leaving,
   * in ms. @default {DEFAULT_CHAT_QUIET_MS}
   */
  quietMs?: number;
}

/** Default {@linkcode ChatOptions.quietMs}: 2 s. */
export const DEFAULT_CHAT_QUIET_MS = 2_000;

/**
 * Chats: sends each input line, prints each line received, until the input
 * ends (then it returns) or the server closes (then it throws).
 *
 * When the input ends, the chat closes its sending side and, like `nc -N`,
 * goes on printing what the server sends (a `--reply` to the last line, say)
 * until the server closes, `quietMs` pass without a line, or the client's
 * timeout passes, whichever comes first.
 *
 * @param client Connection options.
 * @param options Input, output.
 * @throws {ConnectionClosedError} When the server closes the connection
 * before the input ends.
 * @throws {MoatError} The server's error (an Error frame), even after the
 * input ended.
 */
export async function chat(
  client: ClientOptions,
  options: ChatOptions,
): Promise<void> {
  const { conn, reader, welcome } = await openSession(client, "chat");
  options.onWelcome?.(welcome);
  // A quiet listener pings, so the server does not drop it as idle.
  const heartbeat = new Heartbeat(conn, heartbeatInterval(welcome));
  let inputDone = false;
  // Set once the wait after the input is over and this side closed the
  // connection: a read failing then is that close, not the server's doing.
  let leaving = false;
  let quiet: Watchdog | undefined;
  const receiving = (async () => {
    for (;;) {
      let frame;
      try {
        frame = await reader.readFrame();
      } catch (err) {
        if (leaving || quiet?.fired) return;
        throw err;
      }
      if (frame === null) {
        if (inputDone) return;
        throw new ConnectionClosedError("Connection closed by server");
      }
      quiet?.touch();
      if (frame.type === Kind.Pong) continue;
      if (frame.type === Kind.Chat) {
        options.output(formatChatLine(decodeChatLine(frame.payload)));
      } else if (frame.type === Kind.Error) {
        throw errorFromFrame(decodeError(frame.payload));
      } else {
        throw new ProtocolError(
          `Unexpected frame type 0x${frame.type.toString(16)} in chat`,
        );
      }
    }
  })();
  const sending = (async () => {
    for await (const line of options.input) {
      await heartbeat.write(
        encodeFrame({ type: Kind.Chat, payload: encodeText(line) }),
      );
    }
    inputDone = true;
  })();
  // Whichever loses the race below may fail later, with nobody listening.
  sending.catch(() => {});
  receiving.catch(() => {});
  try {
    // The server left first: the race rejects (or, after an end of input
    // that raced it, resolves). Input ended first: say so, and listen on.
    await Promise.race([sending, receiving]);
    if (!inputDone) return;
    await heartbeat.stop();
    await conn.closeWrite().catch(() => {});
    quiet = new Watchdog(conn, options.quietMs ?? DEFAULT_CHAT_QUIET_MS);
    const limit = setTimeout(() => {
      leaving = true;
      conn.close();
    }, timeoutOf(client));
    try {
      await receiving;
    } finally {
      quiet.stop();
      clearTimeout(limit);
    }
  } finally {
    void heartbeat.stop();
    conn.close();
  }
}
