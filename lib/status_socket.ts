/**
 * The local status socket of `moat serve`, and its client `moat status`.
 *
 * A Unix stream socket, mode 0600, in a directory that only its owner (or
 * root) can write: only the server's own user (and root) can connect. One
 * request line, one answer line, then the server closes:
 *
 * ```
 * → {"request":"status"}
 * ← {"ok":true,"status":{…}}          (lib/server/status.ts StatusReport)
 * ← {"ok":false,"error":{"code":"ERR_PROTOCOL","message":"…"}}
 * ```
 *
 * Where it lives: see {@linkcode defaultSocketPath} and docs/PROTOCOL.md.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import type { Conn, Listener, Net } from "./net/types.ts";
import {
  AddressInUseError,
  Code,
  ConnectError,
  MoatError,
  ProtocolError,
} from "./errors.ts";
import { decodeText, encodeText } from "./protocol.ts";
import { escapeText } from "./text.ts";
import { os } from "./builtins.ts";

/** The socket's name inside a vault directory. */
export const VAULT_SOCKET_NAME = "moat.sock";
/** Longest path a Unix socket address holds (108 bytes with the NUL). */
export const MAX_SOCKET_PATH_BYTES = 107;
/** Largest request line the server reads. */
const MAX_REQUEST_BYTES = 4096;
/** Largest answer the client reads. */
const MAX_ANSWER_BYTES = 64 * 1024 * 1024;
/** A client must send its request this soon. */
const REQUEST_TIMEOUT_MS = 5_000;
/** Most bytes read after the request line before the close. */
const MAX_DRAIN_BYTES = 65_536;
/** Status requests served at once; more are closed unanswered. */
const MAX_CLIENTS = 8;
/** Default time `requestStatus` waits for the whole answer. */
export const DEFAULT_STATUS_TIMEOUT_MS = 10_000;

/** Where a server's socket is by default. */
export interface SocketPathOptions {
  /** The server's `--vault`: the socket is `DIR/moat.sock`. */
  vault?: string | undefined;
  /** The server's port, in the name of a socket outside a vault. */
  port: number;
  /** The environment, for `XDG_RUNTIME_DIR`. */
  env: Record<string, string | undefined>;
  /** The user. @default {process.getuid()} */
  uid?: number;
  /** The temporary folder. @default {os.tmpdir()} */
  tmpdir?: string;
}

/**
 * The default socket path of a server: next to its vault (`DIR/moat.sock`);
 * without one, `$XDG_RUNTIME_DIR/moat/moat-PORT.sock`, else (root)
 * `/run/moat/moat-PORT.sock`, else `TMPDIR/moat-UID/moat-PORT.sock`. The
 * folder below the runtime or temporary folder is made (mode 0700) by the
 * server, see {@linkcode StatusSocket.open}.
 *
 * @example
 * ```ts
 * import { defaultSocketPath } from "./status_socket.ts";
 * import assert from "node:assert/strict";
 * assert.equal(defaultSocketPath({ vault: "/srv/vault", port: 4320, env: {} }), "/srv/vault/moat.sock");
 * assert.equal(
 *   defaultSocketPath({ port: 4320, env: { XDG_RUNTIME_DIR: "/run/user/1000" } }),
 *   "/run/user/1000/moat/moat-4320.sock",
 * );
 * assert.equal(defaultSocketPath({ port: 4320, env: {}, uid: 0 }), "/run/moat/moat-4320.sock");
 * assert.equal(
 *   defaultSocketPath({ port: 4320, env: {}, uid: 1000, tmpdir: "/tmp" }),
 *   "/tmp/moat-1000/moat-4320.sock",
 * );
 * ```
 *
 * @param options The server's vault and port, the environment.
 * @returns An absolute path.
 */
export function defaultSocketPath(options: SocketPathOptions): string {
  if (options.vault !== undefined) {
    return path.join(path.resolve(options.vault), VAULT_SOCKET_NAME);
  }
  const name = `moat-${options.port}.sock`;
  const runtime = readable(() => options.env.XDG_RUNTIME_DIR);
  // The XDG spec: a relative value is invalid and must be ignored.
  if (runtime !== undefined && path.isAbsolute(runtime)) {
    return path.join(runtime, "moat", name);
  }
  const uid = options.uid ?? currentUid();
  if (uid === 0) return path.join("/run/moat", name);
  return path.join(
    options.tmpdir ?? readable(() => os().tmpdir()) ?? "/tmp",
    `moat-${uid}`,
    name,
  );
}

/**
 * A value read from the environment, or undefined where reading it is not
 * permitted (Deno run with narrowed --allow-env, as its systemd unit and
 * `deno task serve` are): the default path then falls back instead of
 * stopping the server.
 */
function readable(read: () => string | undefined): string | undefined {
  try {
    return read();
  } catch {
    return undefined;
  }
}

/** The user running this process (0 where the platform has no uids). */
function currentUid(): number {
  try {
    return process.getuid?.() ?? 0;
  } catch {
    // Not permitted (Deno without --allow-sys): the socket's folder is then
    // checked, and refused if unsafe, when it is made.
    return 0;
  }
}

/** Options for {@linkcode StatusSocket.open}. */
export interface StatusSocketOptions {
  /** The socket file. */
  path: string;
  /**
   * Make the socket's folder (mode 0700) if it is missing: for the default
   * paths outside a vault. @default {false}
   */
  createDir?: boolean;
  /** What to answer a status request with; must be JSON-serialisable. */
  report: () => unknown;
}

/**
 * The server side: a Unix socket that answers status requests.
 *
 * @example Serve a report, then ask for it
 * ```ts ignore
 * const socket = await StatusSocket.open(getNet(), {
 *   path: "/run/moat/moat-4320.sock", createDir: true,
 *   report: () => server.status(),
 * });
 * const status = await requestStatus(getNet(), socket.path);
 * await socket.close();
 * ```
 */
export class StatusSocket {
  /** The socket file. */
  readonly path: string;
  #listener: Listener;
  #report: () => unknown;
  /** The file's identity, so that close removes only our own socket. */
  #ino: number;
  #dev: number;
  #clients = new Set<Conn>();
  #loop: Promise<void>;

  private constructor(
    listener: Listener,
    options: StatusSocketOptions,
    stat: fs.Stats,
  ) {
    this.path = options.path;
    this.#listener = listener;
    this.#report = options.report;
    this.#ino = stat.ino;
    this.#dev = stat.dev;
    this.#loop = this.#accept();
  }

  /**
   * Makes the socket at `options.path` and starts answering. The folder must
   * be a real directory (not a symbolic link) owned by this user or root and
   * not writable by every user (unless sticky); the socket is made in a
   * fresh private folder inside it, set to mode 0600 and only then renamed
   * into place, so it is never reachable with a wider mode. A socket file
   * left by a server that died is replaced; one that answers is not.
   *
   * @param net The runtime's sockets.
   * @param options Path, whether to make its folder, the report.
   * @returns The open socket.
   * @throws {AddressInUseError} When another server answers on the path.
   * @throws {MoatError} `ERR_LISTEN` naming the path and what is wrong:
   * the path is too long, the folder is missing, insecure or not writable,
   * something that is not a socket is in the way.
   */
  static async open(
    net: Net,
    options: StatusSocketOptions,
  ): Promise<StatusSocket> {
    const file = path.resolve(options.path);
    const dir = path.dirname(file);
    checkPathLength(file);
    if (options.createDir) makePrivateDir(dir);
    checkDir(dir, file);
    await checkNotInUse(net, file);
    let temp: string;
    try {
      temp = fs.mkdtempSync(path.join(dir, ".moat-"));
    } catch (err) {
      throw listenError(file, fsReason(err), err);
    }
    const bound = path.join(temp, "s");
    let listener: Listener | undefined;
    try {
      checkPathLength(bound, file);
      try {
        listener = await net.listenUnix({ path: bound });
      } catch (err) {
        // The adapter's message names the private folder; keep its reason.
        const text = err instanceof Error ? err.message : String(err);
        throw listenError(file, text.slice(text.lastIndexOf(": ") + 2), err);
      }
      fs.chmodSync(bound, 0o600);
      const made = fs.lstatSync(bound);
      if ((made.mode & 0o777) !== 0o600 || made.uid !== currentUid()) {
        throw listenError(file, "the socket did not get mode 0600");
      }
      fs.renameSync(bound, file);
      const stat = fs.lstatSync(file);
      return new StatusSocket(listener, { ...options, path: file }, stat);
    } catch (err) {
      listener?.close();
      if (err instanceof MoatError) throw err;
      throw listenError(file, fsReason(err), err);
    } finally {
      fs.rmSync(temp, { recursive: true, force: true });
    }
  }

  /**
   * Stops answering, closes the connections being answered, and removes
   * the socket file if it is still this one.
   *
   * @returns When the accept loop has ended.
   */
  async close(): Promise<void> {
    this.#listener.close();
    try {
      const now = fs.lstatSync(this.path);
      if (now.ino === this.#ino && now.dev === this.#dev) {
        fs.unlinkSync(this.path);
      }
    } catch {
      // Already gone.
    }
    for (const conn of this.#clients) conn.close();
    await this.#loop;
  }

  async #accept(): Promise<void> {
    try {
      for await (const conn of this.#listener) {
        if (this.#clients.size >= MAX_CLIENTS) {
          conn.close();
          continue;
        }
        this.#clients.add(conn);
        void this.#answer(conn).finally(() => this.#clients.delete(conn));
      }
    } catch {
      // The listener failed: status is gone, the server serves on.
    }
  }

  /** Reads one request line and writes one answer line. Never rejects. */
  async #answer(conn: Conn): Promise<void> {
    const timer = setTimeout(() => conn.close(), REQUEST_TIMEOUT_MS);
    try {
      let answer: unknown;
      try {
        const request = await readRequest(conn);
        answer = { ok: true, status: this.#respond(request) };
      } catch (err) {
        answer = {
          ok: false,
          error: {
            code: err instanceof MoatError ? err.code : Code.ERR_INTERNAL,
            message: err instanceof Error ? err.message : String(err),
          },
        };
      }
      await conn.write(encodeText(JSON.stringify(answer) + "\n"));
      await conn.closeWrite();
      // Closing over unread input would reset the connection and lose the
      // answer: drain what an over-long request still holds (bounded, and
      // by the timer).
      const sink = new Uint8Array(4096);
      for (let drained = 0; drained < MAX_DRAIN_BYTES;) {
        const n = await conn.read(sink);
        if (n === null) break;
        drained += n;
      }
    } catch {
      // The client went away.
    } finally {
      clearTimeout(timer);
      conn.close();
    }
  }

  /** The report, for a request that asks for it. */
  #respond(request: Record<string, unknown>): unknown {
    if (request.request !== "status") {
      throw new ProtocolError(
        `Unknown request ${
          JSON.stringify(request.request) ?? "(none)"
        }: this server answers "status"`,
      );
    }
    return this.#report();
  }
}

/** Reads the request line: one JSON object, at most 4 KiB. */
async function readRequest(conn: Conn): Promise<Record<string, unknown>> {
  const buf = new Uint8Array(MAX_REQUEST_BYTES + 1);
  let n = 0;
  while (n < buf.length) {
    const got = await conn.read(buf.subarray(n));
    if (got === null) break;
    n += got;
    if (buf.subarray(n - got, n).includes(0x0a)) break;
  }
  const end = buf.subarray(0, n).indexOf(0x0a);
  if (end < 0 && n > MAX_REQUEST_BYTES) {
    throw new ProtocolError(
      `Request longer than ${MAX_REQUEST_BYTES} bytes`,
    );
  }
  const text = decodeText(buf.subarray(0, end < 0 ? n : end));
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ProtocolError("Request is not one line of JSON");
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ProtocolError("Request is not a JSON object");
  }
  return value as Record<string, unknown>;
}

/** Options for {@linkcode requestStatus}. */
export interface RequestStatusOptions {
  /** Longest wait for the whole answer. @default {10_000} */
  timeoutMs?: number;
}

/**
 * Asks the server at `socketPath` for its status. Refuses, before
 * connecting, a path that is not a socket or belongs to another user
 * (unless this process is root): its answer could not be trusted.
 *
 * @param net The runtime's sockets.
 * @param socketPath The socket file.
 * @param options Timeout.
 * @returns The `status` object of the answer, not yet checked (see
 * `decodeStatusReport` in lib/server/status.ts).
 * @throws {ConnectError} No socket there, not a socket, another user's,
 * nobody listening.
 * @throws {MoatError} `ERR_TIMEOUT` when no whole answer came in time;
 * `ERR_PROTOCOL` for an answer that is not one JSON object, or the
 * server's refusal.
 */
export async function requestStatus(
  net: Net,
  socketPath: string,
  options: RequestStatusOptions = {},
): Promise<unknown> {
  const file = path.resolve(socketPath);
  checkSocketFile(file);
  const timeoutMs = options.timeoutMs ?? DEFAULT_STATUS_TIMEOUT_MS;
  let timedOut = false;
  let conn: Conn | undefined;
  const timer = setTimeout(() => {
    timedOut = true;
    conn?.close();
  }, timeoutMs);
  try {
    conn = await net.connectUnix({ path: file });
    if (timedOut) conn.close();
    await conn.write(encodeText(`${JSON.stringify({ request: "status" })}\n`));
    const text = decodeText(await readAnswer(conn));
    if (timedOut) throw new Error("timed out");
    return decodeAnswer(text, file);
  } catch (err) {
    if (timedOut) {
      throw new MoatError(
        Code.ERR_TIMEOUT,
        `The server at "${
          escapeText(file)
        }" did not answer within ${timeoutMs} ms`,
      );
    }
    throw err;
  } finally {
    clearTimeout(timer);
    conn?.close();
  }
}

/** Reads until the server closes, at most 64 MiB. */
async function readAnswer(conn: Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const buf = new Uint8Array(64 * 1024);
    const n = await conn.read(buf);
    if (n === null) break;
    size += n;
    if (size > MAX_ANSWER_BYTES) {
      throw new ProtocolError(
        `Status answer longer than ${MAX_ANSWER_BYTES} bytes`,
      );
    }
    parts.push(buf.subarray(0, n));
  }
  return Buffer.concat(parts, size);
}

function decodeAnswer(text: string, file: string): unknown {
  const where = `"${escapeText(file)}"`;
  let answer: unknown;
  try {
    answer = JSON.parse(text);
  } catch {
    throw new ProtocolError(
      text === ""
        ? `The server at ${where} closed without answering`
        : `The server at ${where} did not answer with JSON`,
    );
  }
  if (answer === null || typeof answer !== "object") {
    throw new ProtocolError(`The server at ${where} answered no object`);
  }
  const a = answer as Record<string, unknown>;
  if (a.ok === true && "status" in a) return a.status;
  const error = a.error as Record<string, unknown> | undefined;
  const message = typeof error?.message === "string"
    ? escapeText(error.message, { maxLength: 512 })
    : "no reason given";
  throw new ProtocolError(`The server at ${where} refused: ${message}`);
}

/** Refuses a path too long for a socket address. */
function checkPathLength(file: string, shown = file): void {
  const bytes = new TextEncoder().encode(file).length;
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw listenError(
      shown,
      `a socket path holds at most ${MAX_SOCKET_PATH_BYTES} bytes and "${
        escapeText(file)
      }" has ${bytes}; choose a shorter --socket`,
    );
  }
}

/** Makes the last folder of a default path, mode 0700, if it is missing. */
function makePrivateDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as { code?: unknown }).code === "EEXIST") return;
    throw listenError(path.join(dir, "…"), fsReason(err), err);
  }
}

/**
 * Checks the socket's folder: a directory (not a symbolic link), owned by
 * this user or root, not writable by everyone unless sticky. Anyone who can
 * replace the socket there could answer `moat status` in the server's name.
 */
function checkDir(dir: string, file: string): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(dir);
  } catch (err) {
    throw listenError(file, `its folder: ${fsReason(err)}`, err);
  }
  const shown = `"${escapeText(dir)}"`;
  if (st.isSymbolicLink()) {
    throw listenError(file, `its folder ${shown} is a symbolic link`);
  }
  if (!st.isDirectory()) {
    throw listenError(file, `${shown} is not a directory`);
  }
  const uid = currentUid();
  if (st.uid !== uid && st.uid !== 0) {
    throw listenError(
      file,
      `its folder ${shown} belongs to uid ${st.uid}, not to this user (uid ${uid}) or root`,
    );
  }
  if ((st.mode & 0o002) !== 0 && (st.mode & 0o1000) === 0) {
    throw listenError(
      file,
      `its folder ${shown} is writable by every user (mode ${
        (st.mode & 0o7777).toString(8).padStart(4, "0")
      }); anyone could replace the socket`,
    );
  }
}

/**
 * Refuses a path where a server answers, or where something that is not a
 * socket is; a socket nobody answers on is stale and will be replaced.
 */
async function checkNotInUse(net: Net, file: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch (err) {
    if ((err as { code?: unknown }).code === "ENOENT") return;
    throw listenError(file, fsReason(err), err);
  }
  if (!st.isSocket()) {
    throw listenError(
      file,
      "something that is not a socket is there; remove it or choose another --socket",
    );
  }
  let conn: Conn;
  try {
    conn = await net.connectUnix({ path: file });
  } catch (err) {
    const message = err instanceof Error ? err.message : "";
    // Refused: a socket file nobody listens on, left by a server that died.
    if (
      message.endsWith(": connection refused") ||
      message.endsWith(": no such socket")
    ) {
      return;
    }
    throw listenError(
      file,
      `cannot tell whether a server uses it (${message})`,
      err,
    );
  }
  conn.close();
  throw new AddressInUseError(
    `Cannot serve status on "${
      escapeText(file)
    }": another moat serve is using it (stop it, or give this one another --socket)`,
  );
}

/** Checks, on the client, that the path is a socket of this user's. */
function checkSocketFile(file: string): void {
  const shown = `"${escapeText(file)}"`;
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch (err) {
    if ((err as { code?: unknown }).code === "ENOENT") {
      throw new ConnectError(
        `No status socket at ${shown}: is moat serve running? (give its --socket, or --vault DIR or --port N to find it)`,
      );
    }
    throw new ConnectError(`Cannot use ${shown}: ${fsReason(err)}`);
  }
  if (!st.isSocket()) throw new ConnectError(`${shown} is not a socket`);
  const uid = currentUid();
  if (st.uid !== uid && uid !== 0) {
    throw new ConnectError(
      `Refusing ${shown}: it belongs to uid ${st.uid}, not to this user (uid ${uid})`,
    );
  }
}

function listenError(file: string, reason: string, cause?: unknown) {
  return new MoatError(
    Code.ERR_LISTEN,
    `Cannot serve status on "${escapeText(file)}": ${reason}`,
    undefined,
    cause === undefined ? undefined : { cause },
  );
}

/** A file-system error as words. */
function fsReason(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === "ENOENT") return "no such file or directory";
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  if (code === "EROFS") return "read-only file system";
  if (code === "ENOTDIR") return "a part of the path is not a directory";
  if (err instanceof MoatError) return err.message;
  return err instanceof Error ? err.message : String(err);
}
