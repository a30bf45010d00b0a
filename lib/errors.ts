/**
 * Every error moat throws on purpose, and the one table of their codes.
 *
 * Each code has an exit status (what `moat` exits with when it stops on it),
 * whether it may reach a peer (be sent in an Error frame or an `ERR` line with
 * its own message), and a one-line meaning (docs/PROTOCOL.md, "Error codes").
 * The functions below are the only way between an error and the wire:
 * {@linkcode toErrorBody} and {@linkcode errorLine} on the way out,
 * {@linkcode errorFromFrame} and {@linkcode errorFromLine} on the way in.
 *
 * @module
 */

import { escapeControls, escapeText, truncateText } from "./text.ts";

/** The body of an Error frame, and of a plain `ERR <code> <message>` line. */
export interface ErrorBody {
  code: string;
  message: string;
}

/** Exit statuses used by `main.ts`. */
export const ExitCode = {
  Ok: 0,
  Failure: 1,
  Usage: 2,
  AccessDenied: 3,
  NotFound: 4,
  Integrity: 5,
  Connection: 6,
  Exists: 7,
  /** Stopped by Ctrl-C (SIGINT), as a shell reports a process it killed (128 + 2). */
  Interrupted: 130,
  /** Standard output's reader went away (as a process killed by SIGPIPE). */
  StdoutClosed: 141,
} as const;
export type ExitCode = typeof ExitCode[keyof typeof ExitCode];

/** One row of {@linkcode CODES}. */
export interface CodeInfo {
  /** What `moat` exits with when it stops on this error. */
  readonly exit: ExitCode;
  /**
   * Whether the code may reach a peer with its own message. A code that may
   * not is sent as `ERR_INTERNAL` with a fixed message, and is not believed
   * when a peer sends it.
   */
  readonly peer: boolean;
  /** One line: what it means. */
  readonly meaning: string;
}

const {
  Failure,
  Usage,
  AccessDenied,
  NotFound,
  Integrity,
  Connection,
  Exists,
  StdoutClosed,
} = ExitCode;

/**
 * Every error code moat uses, by name. The text-line refusals (`ERR BUSY …`)
 * are the same codes without the `ERR_` prefix.
 */
export const CODES = {
  ERR_ACCESS_DENIED: {
    exit: AccessDenied,
    peer: true,
    meaning: "the server refused this peer (allowlist or deny rule)",
  },
  ERR_ADDR_IN_USE: {
    exit: Failure,
    peer: false,
    meaning: "the listening address is taken",
  },
  ERR_AUTH: {
    exit: AccessDenied,
    peer: true,
    meaning: "token authentication failed (wrong token, or a replayed Auth)",
  },
  ERR_AUTH_THROTTLED: {
    exit: AccessDenied,
    peer: true,
    meaning:
      "too many failed token proofs from this address: wait the seconds the message names",
  },
  ERR_BAD_OFFSET: {
    exit: Failure,
    peer: true,
    meaning: "resume offset past the end of the file",
  },
  ERR_BAD_PATH: {
    exit: NotFound,
    peer: true,
    meaning:
      "malformed path: NUL, backslash, drive letter, absolute, control characters, dot segments, too long",
  },
  ERR_BUSY: {
    exit: Connection,
    peer: true,
    meaning:
      "the server is at `--max-conns`, or at `--max-conns-per-peer` for this address",
  },
  ERR_CERT_REJECTED: {
    exit: AccessDenied,
    peer: true,
    meaning: "the server does not accept this client certificate",
  },
  ERR_CERT_REQUIRED: {
    exit: AccessDenied,
    peer: true,
    meaning: "the server requires a client certificate",
  },
  ERR_CHECKPOINT: {
    exit: Integrity,
    peer: false,
    meaning:
      "a signed checkpoint, key or proof is malformed, unsigned, or does not verify",
  },
  ERR_CLOSED: {
    exit: Failure,
    peer: false,
    meaning: "a vault, log or spool used after it was closed",
  },
  ERR_CONNECT: {
    exit: Connection,
    peer: false,
    meaning: "the server cannot be reached",
  },
  ERR_CONNECTION_CLOSED: {
    exit: Connection,
    peer: false,
    meaning: "the connection was cut; a part file is kept for `--resume`",
  },
  ERR_CORRUPT: {
    exit: Integrity,
    peer: false,
    meaning: "damaged vault, spool or ship state",
  },
  ERR_EXISTS: {
    exit: Exists,
    peer: false,
    meaning:
      "the target exists and `--force` was not given, or the vault is sealed already",
  },
  ERR_FILE_CHANGED: {
    exit: Failure,
    peer: true,
    meaning:
      "the file changed or shrank while being sent; the client keeps nothing",
  },
  ERR_FRAME_TOO_LARGE: {
    exit: Failure,
    peer: true,
    meaning: "a frame length above the receiver's limit",
  },
  ERR_INTEGRITY: {
    exit: Integrity,
    peer: false,
    meaning: "size or digest mismatch; the part file is removed",
  },
  ERR_INTERNAL: {
    exit: Failure,
    peer: true,
    meaning:
      "an unexpected error on the peer; the detail stays in the peer's log",
  },
  ERR_IO: {
    exit: Failure,
    peer: false,
    meaning: "an unexpected file-system error",
  },
  ERR_KNOWN_HOSTS: {
    exit: Failure,
    peer: false,
    meaning: "the known_hosts file cannot be read or written",
  },
  ERR_LINE_TOO_LONG: {
    exit: Failure,
    peer: true,
    meaning: "a chat line above `--max-line`",
  },
  ERR_LISTEN: {
    exit: Failure,
    peer: false,
    meaning: "cannot listen on the address",
  },
  ERR_LOCKED: {
    exit: Failure,
    peer: false,
    meaning: "the vault or spool is in use by another process",
  },
  ERR_NO_VAULT: {
    exit: Failure,
    peer: true,
    meaning: "ship to a server without `--vault`",
  },
  ERR_NO_SOURCE: {
    exit: NotFound,
    peer: false,
    meaning: "no vault source matches `--source`",
  },
  ERR_NOT_FILE: {
    exit: NotFound,
    peer: true,
    meaning: "a directory, FIFO, socket or device",
  },
  ERR_NOT_FOUND: { exit: NotFound, peer: true, meaning: "no such file" },
  ERR_NOT_SEALED: {
    exit: Failure,
    peer: false,
    meaning: "the vault has no sealing key",
  },
  ERR_NOT_VAULT: {
    exit: Usage,
    peer: false,
    meaning: "the directory is not a moat vault",
  },
  ERR_NOT_WITNESS: {
    exit: Failure,
    peer: true,
    meaning:
      "a witness request to a server that is not a witness, or another request to a witness (`moat witness`)",
  },
  ERR_OUTSIDE_ROOT: {
    exit: NotFound,
    peer: true,
    meaning:
      "the path escapes the root (`..`, symlink), or changed while being opened",
  },
  ERR_PERMISSION: {
    exit: NotFound,
    peer: true,
    meaning: "the server may not read the file",
  },
  ERR_PLAIN_DISABLED: {
    exit: Failure,
    peer: true,
    meaning: "plain-text mode is off on this port",
  },
  ERR_PROTOCOL: {
    exit: Failure,
    peer: true,
    meaning: "malformed frame, JSON or sequence",
  },
  ERR_ROLLBACK: {
    exit: Integrity,
    peer: false,
    meaning:
      "the vault showed a checkpoint that does not extend the one the shipper holds (rollback, cut tail, fork, other key, unsigned), or failed an audit",
  },
  ERR_SEAL_KEY: {
    exit: Failure,
    peer: false,
    meaning: "the vault's sealing key is missing, malformed or not its own",
  },
  ERR_SEQ_AHEAD: {
    exit: Failure,
    peer: false,
    meaning: "a spool read from beyond its last record",
  },
  ERR_SEQ_GAP: {
    exit: Failure,
    peer: true,
    meaning: "shipped records skip a sequence number",
  },
  ERR_SEQUENCE: {
    exit: Failure,
    peer: true,
    meaning: "shipped records out of order",
  },
  ERR_SOURCE_NAME: {
    exit: Usage,
    peer: true,
    meaning:
      "a source name the vault refuses (it contains `/` or a control character)",
  },
  ERR_STATE_LOST: {
    exit: Failure,
    peer: false,
    meaning:
      "the server holds more records than the shipper's state: the state was lost, or two shippers share a `--source`",
  },
  ERR_STATE_MISMATCH: {
    exit: Usage,
    peer: false,
    meaning: "the ship state file belongs to another source",
  },
  ERR_STDOUT_CLOSED: {
    exit: StdoutClosed,
    peer: false,
    meaning:
      "standard output's reader went away (`moat vault cat | head`): moat stops quietly",
  },
  ERR_SYSLOG_TOO_LARGE: {
    exit: Failure,
    peer: false,
    meaning: "a syslog message above the limit (the connection is closed)",
  },
  ERR_TIMEOUT: {
    exit: Connection,
    peer: false,
    meaning: "the server did not answer within `--timeout`",
  },
  ERR_TLS_CONFIG: {
    exit: Failure,
    peer: false,
    meaning: "a TLS certificate or key that cannot be used",
  },
  ERR_TLS_HANDSHAKE: {
    exit: Connection,
    peer: false,
    meaning:
      "the TLS handshake failed (a peer that does not speak TLS, or a refused certificate)",
  },
  ERR_TLS_NOT_ENABLED: {
    exit: Connection,
    peer: true,
    meaning: "a TLS client on a plain port",
  },
  ERR_TLS_VERIFY: {
    exit: AccessDenied,
    peer: false,
    meaning:
      "the server's certificate is not trusted: wrong pin, changed fingerprint, not from `--ca`, wrong name, expired, CA:TRUE",
  },
  ERR_TOO_MANY_ORIGINS: {
    exit: Failure,
    peer: true,
    meaning:
      "a peer asked a witness to hold more origins than `--max-origins-per-peer`",
  },
  ERR_TOO_MANY_RECORDS: {
    exit: Failure,
    peer: true,
    meaning: "a ship batch with more records than the vault takes at once",
  },
  ERR_TOO_MANY_SOURCES: {
    exit: Failure,
    peer: true,
    meaning: "a peer asked for more vault sources than `maxSourcesPerPeer`",
  },
  ERR_TRIMMED: {
    exit: Failure,
    peer: false,
    meaning: "a spool read from records already acknowledged and removed",
  },
  ERR_UNKNOWN: {
    exit: Failure,
    peer: false,
    meaning:
      "the peer sent a code this version does not know, or one a peer may not send",
  },
  ERR_UNSUPPORTED_RUNTIME: {
    exit: Failure,
    peer: false,
    meaning: "not running on Deno or Bun",
  },
  ERR_USAGE: {
    exit: Usage,
    peer: false,
    meaning: "a bad command line or configuration rule",
  },
  ERR_VAULT_LOST: {
    exit: Failure,
    peer: false,
    meaning: "the server holds fewer records than it acknowledged",
  },
  ERR_VERSION: {
    exit: Failure,
    peer: true,
    meaning: "unsupported protocol version",
  },
  ERR_WITNESS_REFUSED: {
    exit: Failure,
    peer: true,
    meaning:
      "a witness refused a checkpoint that does not extend the one it holds (rollback, fork, failed proof, other key) or whose signature does not verify",
  },
} as const satisfies Record<`ERR_${string}`, CodeInfo>;

/** An error code: a key of {@linkcode CODES}. */
export type Code = keyof typeof CODES;

/**
 * The codes as constants, `Code.ERR_NOT_FOUND === "ERR_NOT_FOUND"`: compare
 * with these, so that a misspelt code does not compile.
 */
export const Code: { readonly [C in Code]: C } = Object.freeze(
  Object.fromEntries(Object.keys(CODES).map((c) => [c, c])),
) as { readonly [C in Code]: C };

/**
 * @param code Any string, e.g. from the wire.
 * @returns Whether it is a key of {@linkcode CODES} (own keys only: never `"constructor"`).
 */
export function isCode(code: string): code is Code {
  return Object.hasOwn(CODES, code);
}

/** Base class: a moat error with a stable code and an exit status. */
export class MoatError extends Error {
  readonly code: Code;
  readonly exitCode: ExitCode;
  /**
   * @param code Its row in {@linkcode CODES}.
   * @param message One line, sentence case, no final period.
   * @param exitCode What `moat` exits with. @default {CODES[code].exit}
   * @param options `cause`.
   */
  constructor(
    code: Code,
    message: string,
    exitCode: ExitCode = CODES[code].exit,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "MoatError";
    this.code = code;
    this.exitCode = exitCode;
  }
}

/** A frame's declared length exceeds the configured limit. */
export class FrameTooLargeError extends RangeError {
  readonly code = Code.ERR_FRAME_TOO_LARGE;
  readonly exitCode: ExitCode = CODES.ERR_FRAME_TOO_LARGE.exit;
  constructor(
    readonly size: number,
    readonly limit: number,
    options?: ErrorOptions,
  ) {
    super(
      `Cannot decode frame: length ${size} exceeds maxFrameSize ${limit}`,
      options,
    );
    this.name = "FrameTooLargeError";
  }
}

/** The peer broke the protocol: bad magic, unknown frame type, bad payload, truncated frame. */
export class ProtocolError extends MoatError {
  constructor(message: string, options?: ErrorOptions) {
    super(Code.ERR_PROTOCOL, message, undefined, options);
    this.name = "ProtocolError";
  }
}

/** The connection ended (EOF or reset) where more was expected, or a write found it gone. */
export class ConnectionClosedError extends MoatError {
  constructor(message = "Connection closed by peer", options?: ErrorOptions) {
    super(Code.ERR_CONNECTION_CLOSED, message, undefined, options);
    this.name = "ConnectionClosedError";
  }
}

/** Could not reach the server at all. */
export class ConnectError extends MoatError {
  constructor(message: string, options?: ErrorOptions) {
    super(Code.ERR_CONNECT, message, undefined, options);
    this.name = "ConnectError";
  }
}

/** The listening address is taken. */
export class AddressInUseError extends MoatError {
  constructor(message: string, options?: ErrorOptions) {
    super(Code.ERR_ADDR_IN_USE, message, undefined, options);
    this.name = "AddressInUseError";
  }
}

/** The server refused this peer (allowlist, deny rule, or connection limit). */
export class AccessDeniedError extends MoatError {
  constructor(message = "Access refused by server", options?: ErrorOptions) {
    super(Code.ERR_ACCESS_DENIED, message, undefined, options);
    this.name = "AccessDeniedError";
  }
}

/** The codes of a {@linkcode PathError}. */
export type PathCode =
  | typeof Code.ERR_BAD_PATH
  | typeof Code.ERR_OUTSIDE_ROOT
  | typeof Code.ERR_NOT_FOUND
  | typeof Code.ERR_NOT_FILE
  | typeof Code.ERR_PERMISSION;

const PATH_CODES: ReadonlySet<Code> = new Set<PathCode>([
  Code.ERR_BAD_PATH,
  Code.ERR_OUTSIDE_ROOT,
  Code.ERR_NOT_FOUND,
  Code.ERR_NOT_FILE,
  Code.ERR_PERMISSION,
]);

/** A requested path is outside the root, malformed, missing, or not a regular file. */
export class PathError extends MoatError {
  constructor(code: PathCode, message: string, options?: ErrorOptions) {
    super(code, message, undefined, options);
    this.name = "PathError";
  }
}

/** A transfer's size or SHA-256 did not match. */
export class IntegrityError extends MoatError {
  constructor(message: string, options?: ErrorOptions) {
    super(Code.ERR_INTEGRITY, message, undefined, options);
    this.name = "IntegrityError";
  }
}

/** A bad command-line value or configuration rule; stops start-up. */
export class UsageError extends MoatError {
  constructor(message: string, options?: ErrorOptions) {
    super(Code.ERR_USAGE, message, undefined, options);
    this.name = "UsageError";
  }
}

/**
 * A vault source the vault will not create: its name contains `/` (the
 * separator of the `peer/name` label) or a control character. The message
 * names no server path, so it may go to the peer.
 */
export class SourceNameError extends TypeError {
  readonly code = "ERR_SOURCE_NAME";
  readonly exitCode: ExitCode = ExitCode.Usage;
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SourceNameError";
  }
}

/**
 * A peer asked the vault for a new source beyond `maxSourcesPerPeer`. The
 * message names no server path, so it may go to the peer.
 */
export class TooManySourcesError extends MoatError {
  constructor(
    readonly peer: string,
    readonly limit: number,
    options?: ErrorOptions,
  ) {
    super(
      "ERR_TOO_MANY_SOURCES",
      `Cannot create another source for peer "${peer}": it has ${limit} (maxSourcesPerPeer)`,
      ExitCode.Failure,
      options,
    );
    this.name = "TooManySourcesError";
  }
}

/**
 * One vault append (one ship batch) carried more records than the vault
 * takes at once. The message names no server path, so it may go to the peer.
 */
export class TooManyRecordsError extends RangeError {
  readonly code = "ERR_TOO_MANY_RECORDS";
  readonly exitCode: ExitCode = ExitCode.Failure;
  constructor(
    readonly count: number,
    readonly limit: number,
    options?: ErrorOptions,
  ) {
    super(
      `Cannot append ${count} records at once: a batch holds at most ${limit} (maxRecordsPerAppend)`,
      options,
    );
    this.name = "TooManyRecordsError";
  }
}

/** A checkpoint as named in a {@linkcode WitnessRefusedError}. */
export interface CheckpointRef {
  /** The tree size. */
  size: number;
  /** The root hash, base64. */
  root: string;
}

/**
 * A witness refused a checkpoint: it does not extend the one the witness
 * holds for its origin, or its key or signature is not the pinned one. The
 * message names the origin and both checkpoints and no server path, so it
 * may go to the peer.
 */
export class WitnessRefusedError extends MoatError {
  /**
   * @param reason What is wrong, in a few words ("smaller tree: a rollback").
   * @param detail The origin, the checkpoint the witness holds (if any) and
   * the one offered (if it could be read).
   * @param options `cause`.
   */
  constructor(
    readonly reason: string,
    readonly detail: {
      origin: string;
      held?: CheckpointRef | undefined;
      offered?: CheckpointRef | undefined;
    },
    options?: ErrorOptions,
  ) {
    const { origin, held, offered } = detail;
    const name = (c: CheckpointRef) => `size ${c.size} root ${c.root}`;
    super(
      Code.ERR_WITNESS_REFUSED,
      `Witness refused the checkpoint${
        origin === "" ? "" : ` of ${JSON.stringify(origin)}`
      }${offered ? ` (${name(offered)})` : ""}: ${reason}${
        held ? `; it holds ${name(held)}` : ""
      }`,
      undefined,
      options,
    );
    this.name = "WitnessRefusedError";
  }
}

/**
 * Longest message that crosses the wire, in UTF-16 code units: what
 * {@linkcode toErrorBody} and {@linkcode errorLine} send, and what
 * {@linkcode errorFromFrame} shows of a peer's message.
 */
export const MAX_ERROR_MESSAGE = 512;

/** Longest unknown code from a peer that is shown. */
const MAX_SHOWN_CODE = 64;

/** What a peer is told instead of the message of a code that may not reach it. */
export const INTERNAL_MESSAGE = "Internal error (see the server's audit log)";

/** The `code` of any error-like value, if it has a string one. */
function codeOf(err: unknown): string | undefined {
  if (err !== null && typeof err === "object" && "code" in err) {
    return typeof err.code === "string" ? err.code : undefined;
  }
  return undefined;
}

function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (err !== null && typeof err === "object" && "message" in err) {
    return String(err.message);
  }
  return String(err);
}

/**
 * Turns an error into what a peer may be told. Only a code whose row says
 * `peer: true` keeps its message (cut to {@linkcode MAX_ERROR_MESSAGE});
 * everything else (system errors, vault and file-system errors that name
 * server paths, anything without a known code) becomes `ERR_INTERNAL` with
 * {@linkcode INTERNAL_MESSAGE}, and so does `ERR_INTERNAL` itself. The full
 * error belongs in the sender's own log.
 *
 * @param err Anything thrown, or an `{ code, message }` body.
 * @returns The Error frame's body.
 *
 * @example A path refusal keeps its message; a system error does not
 * ```ts
 * import { Code, PathError, toErrorBody } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * const refusal = new PathError(Code.ERR_NOT_FOUND, 'Not found: "a.txt"');
 * assert.deepEqual(toErrorBody(refusal), {
 *   code: "ERR_NOT_FOUND",
 *   message: 'Not found: "a.txt"',
 * });
 * const system = Object.assign(new Error("ENOSPC: no space, write '/srv/v/x'"), {
 *   code: "ENOSPC",
 * });
 * assert.equal(toErrorBody(system).code, "ERR_INTERNAL");
 * assert.doesNotMatch(toErrorBody(system).message, /srv/);
 * ```
 */
export function toErrorBody(err: unknown): ErrorBody & { code: Code } {
  const code = codeOf(err);
  if (
    code !== undefined && isCode(code) && CODES[code].peer &&
    code !== Code.ERR_INTERNAL
  ) {
    return { code, message: truncateText(messageOf(err), MAX_ERROR_MESSAGE) };
  }
  return { code: Code.ERR_INTERNAL, message: INTERNAL_MESSAGE };
}

/**
 * Turns an error into one plain-text line, `ERR <CODE> <message>\n`, the
 * code without its `ERR_` prefix (`ERR NOT_FOUND …`), as
 * {@linkcode toErrorBody} would send it, with controls, separators and bidi
 * marks escaped so that it stays one line.
 *
 * @param err Anything thrown, or an `{ code, message }` body.
 * @returns The line, ending in `\n`.
 *
 * @example A refusal line
 * ```ts
 * import { AccessDeniedError, errorLine } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(
 *   errorLine(new AccessDeniedError("access refused by server")),
 *   "ERR ACCESS_DENIED access refused by server\n",
 * );
 * ```
 */
export function errorLine(err: unknown): string {
  const body = toErrorBody(err);
  return `ERR ${body.code.slice("ERR_".length)} ${
    escapeControls(body.message)
  }\n`;
}

/** Options for {@linkcode errorFromFrame}. */
export interface ErrorFromFrameOptions {
  /** The server refused before the protocol began (an `ERR` line). @default {false} */
  refused?: boolean;
}

/**
 * Turns what a peer sent as an error into a {@linkcode MoatError}: the one
 * place a peer's error text is decoded. The message is escaped (no escape
 * sequences, BEL, CR, LF, bidi marks) and cut to
 * {@linkcode MAX_ERROR_MESSAGE}; a code this version does not know, or one a
 * peer may not send (`ERR_INTEGRITY`, `ERR_USAGE`…), becomes `ERR_UNKNOWN`
 * (exit 1) with the code, escaped, in the message. Path refusals come back
 * as {@linkcode PathError}, `ERR_ACCESS_DENIED` as
 * {@linkcode AccessDeniedError}.
 *
 * @param body The decoded Error frame payload.
 * @param options Whether it was a refusal line.
 * @returns The error to throw.
 *
 * @example A hostile message is shown escaped
 * ```ts
 * import { errorFromFrame } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * const err = errorFromFrame({ code: "ERR_NOT_FOUND", message: "x\x1b[2J\r" });
 * assert.equal(err.code, "ERR_NOT_FOUND");
 * assert.equal(err.exitCode, 4);
 * assert.equal(err.message, "x\\e[2J\\r");
 * assert.equal(errorFromFrame({ code: "NO_SUCH", message: "m" }).code, "ERR_UNKNOWN");
 * ```
 */
export function errorFromFrame(
  body: ErrorBody,
  options: ErrorFromFrameOptions = {},
): MoatError {
  const message = escapeText(body.message, { maxLength: MAX_ERROR_MESSAGE });
  const code = body.code;
  if (!isCode(code) || !CODES[code].peer) {
    const shown = escapeText(code, { maxLength: MAX_SHOWN_CODE });
    return new MoatError(Code.ERR_UNKNOWN, `Server error ${shown}: ${message}`);
  }
  if (PATH_CODES.has(code)) return new PathError(code as PathCode, message);
  if (code === Code.ERR_ACCESS_DENIED) return new AccessDeniedError();
  const refused = options.refused || CODES[code].exit === AccessDenied;
  return new MoatError(
    code,
    `${refused ? "Server refused" : "Server error"}: ${message}`,
  );
}

/**
 * Turns a plain-text refusal line, `ERR <CODE> <message>`, into a
 * {@linkcode MoatError} through {@linkcode errorFromFrame}.
 *
 * @param line One line, without its line end.
 * @returns The error, or undefined when the line is not an `ERR` line.
 *
 * @example A busy server
 * ```ts
 * import { errorFromLine } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * const err = errorFromLine("ERR BUSY server busy: too many connections");
 * assert.equal(err?.code, "ERR_BUSY");
 * assert.equal(err?.exitCode, 6);
 * assert.equal(errorFromLine("hello"), undefined);
 * ```
 */
export function errorFromLine(line: string): MoatError | undefined {
  const m = /^ERR (\S+) ?(.*)$/s.exec(line);
  if (!m) return undefined;
  return errorFromFrame({ code: `ERR_${m[1]}`, message: m[2]! }, {
    refused: true,
  });
}

/**
 * The exit status for an error: its row's, or 1 for anything without a
 * known code.
 *
 * @param err Anything thrown.
 * @returns The exit status.
 *
 * @example
 * ```ts
 * import { exitStatusOf, IntegrityError } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(exitStatusOf(new IntegrityError("crc32 mismatch")), 5);
 * assert.equal(exitStatusOf(new TypeError("x")), 1);
 * ```
 */
export function exitStatusOf(err: unknown): ExitCode {
  if (err instanceof MoatError) return err.exitCode;
  const code = codeOf(err);
  return code !== undefined && isCode(code) ? CODES[code].exit : Failure;
}
