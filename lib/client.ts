/**
 * The moat client: handshake, `get` and `chat`.
 *
 * @module
 */

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
  prepareDownload,
  receiveFile,
  type ReceiveResult,
} from "./file_sender.ts";
import type { DigestName } from "./digest.ts";

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
  #timer: ReturnType<typeof setInterval>;

  constructor(conn: Conn, ms: number) {
    this.#timer = setInterval(() => {
      if (performance.now() - this.#last < ms) return;
      this.fired = true;
      this.stop();
      conn.close();
    }, Math.max(10, Math.min(1000, ms / 4)));
  }

  touch() {
    this.#last = performance.now();
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
  extra: { source?: string } = {},
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
  force?: boolean;
  resume?: boolean;
  /** The whole-file check. @default {"crc32"} */
  digest?: DigestName;
  /** Progress: bytes received in this run, bytes expected in this run. */
  onProgress?: (received: number, expected: number) => void;
  /** Called once the size is known. */
  onStart?: (size: number, offset: number) => void;
}

/**
 * Fetches one file into `out`, verified and renamed atomically. The part
 * file is removed on every failure except a cut connection (or timeout) with
 * bytes in it, which stays for `--resume`.
 *
 * @param client Connection options.
 * @param options Path, output and flags.
 * @returns What arrived.
 * @throws {PathError} When the server refuses the path.
 * @throws {IntegrityError} When the file arrives damaged.
 * @throws {ConnectionClosedError} When the transfer is cut; the part file stays for `--resume`.
 * @throws {MoatError} `ERR_FILE_CHANGED` when the file changed on the server
 * while it was sent; nothing is kept.
 */
export async function get(
  client: ClientOptions,
  options: GetOptions,
): Promise<ReceiveResult & { offset: number }> {
  await using download = prepareDownload(options.out, {
    ...(options.force !== undefined && { force: options.force }),
    ...(options.resume !== undefined && { resume: options.resume }),
    ...(options.digest !== undefined && { digest: options.digest }),
  });
  let session: Session;
  try {
    session = await openSession(client, "get");
  } catch (err) {
    // Nothing arrived: a resumed part stays for the next try.
    if (download.offset > 0) download.keep();
    throw err;
  }
  const { conn, reader } = session;
  // A server that stalls mid-transfer must not hold the client forever; the
  // part file stays for --resume, as after any cut.
  const watchdog = new Watchdog(conn, timeoutOf(client));
  try {
    await conn.write(encodeFrame({
      type: Kind.Get,
      payload: encodeJson({
        path: options.path,
        offset: download.offset,
        digest: download.digest.name,
      }),
    }));
    const frame = await readFrameOrClosed(reader);
    if (frame.type === Kind.Error) {
      throw errorFromFrame(decodeError(frame.payload));
    }
    if (frame.type !== Kind.FileMeta) {
      throw new ProtocolError(
        `Expected file metadata, got frame type 0x${frame.type.toString(16)}`,
      );
    }
    const meta = decodeFileMeta(frame.payload);
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
    // Cut before the file began: only a resumed part holds anything.
    const cut = watchdog.fired || err instanceof ConnectionClosedError;
    if (cut && download.offset > 0) download.keep();
    if (watchdog.fired) {
      throw timeoutError(client, "sent nothing for");
    }
    throw err;
  } finally {
    watchdog.stop();
    conn.close();
  }
}

async function readFrameOrClosed(reader: FrameReader) {
  const frame = await reader.readFrame();
  if (frame === null) {
    throw new ConnectionClosedError("Connection closed by server");
  }
  return frame;
}

/** Options for {@linkcode chat}. */
export interface ChatOptions {
  /** Lines typed by the user; the chat ends when it ends. */
  input: AsyncIterable<string>;
  /** Shows one received line. */
  output: (line: string) => void;
  /** Called once connected. */
  onWelcome?: (welcome: Welcome) => void;
}

/**
 * Chats: sends each input line, prints each line received, until the input
 * ends (then it returns) or the server closes (then it throws).
 *
 * @param client Connection options.
 * @param options Input, output.
 * @throws {ConnectionClosedError} When the server closes the connection.
 */
export async function chat(
  client: ClientOptions,
  options: ChatOptions,
): Promise<void> {
  const { conn, reader, welcome } = await openSession(client, "chat");
  options.onWelcome?.(welcome);
  let inputDone = false;
  const receiving = (async () => {
    for (;;) {
      const frame = await reader.readFrame();
      if (frame === null) {
        if (inputDone) return;
        throw new ConnectionClosedError("Connection closed by server");
      }
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
      await conn.write(
        encodeFrame({ type: Kind.Chat, payload: encodeText(line) }),
      );
    }
    inputDone = true;
  })();
  try {
    // Input ended first: leave. The server left first: the race rejects.
    await Promise.race([sending, receiving]);
    await conn.closeWrite().catch(() => {});
  } finally {
    conn.close();
  }
}
