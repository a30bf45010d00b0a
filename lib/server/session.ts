/**
 * One accepted connection as every handler sees it, the server state the
 * handlers share, and the small helpers they all use.
 *
 * @module
 */

import type { Addr, Conn } from "../net/types.ts";
import type { AuditLog } from "../audit.ts";
import type { AuthThrottle } from "../auth.ts";
import type { ChatHub } from "../chat.ts";
import type { DigestCache } from "../file_sender.ts";
import { encodeFrame } from "../framer.ts";
import { encodeError, encodeText, Kind } from "../protocol.ts";
import { Code, errorLine, toErrorBody } from "../errors.ts";
import type { ResolvedServerOptions } from "./options.ts";
import type { SourceWatch } from "./liveness.ts";
import { SessionConn } from "./session_conn.ts";
import type { SendBudget } from "./send_budget.ts";
import type { RateLimiter } from "./rate.ts";
import type { AppendBudget } from "./append_pipeline.ts";

/** Server-side read buffer: small, because idle connections must stay cheap. */
export const READ_BUFFER = 4096;

/** What every handler shares with the server: one object per server. */
export interface ServerContext {
  /** The options, defaults filled in. */
  readonly options: ResolvedServerOptions;
  /** Where every event is logged: `options.audit`, through {@linkcode sessionAudit}. */
  readonly audit: AuditWriter;
  /** The chat room of framed and plain members. */
  readonly hub: ChatHub;
  /** File digests already computed, shared by every get. */
  readonly cache: DigestCache;
  /** Vault sources that shipped, for `source_silent` and `moat status`. */
  readonly sources: SourceWatch;
  /** Failed token proofs per address, and how long each must wait. */
  readonly authThrottle: AuthThrottle;
  /** The memory every file transfer takes its send buffer from. */
  readonly sendBudget: SendBudget;
  /** Bytes of ship appends in flight, shared by every shipper. */
  readonly appendBudget: AppendBudget;
  /** Chat lines per peer address; undefined when unlimited. */
  readonly chatRate: RateLimiter | undefined;
  /** Sessions not read now because of backpressure. */
  readonly pauses: Pauses;
}

/**
 * What a session is doing, for `moat status`: accepted and not yet told
 * apart ("new"), in its TLS or moat handshake, or serving a mode.
 */
export type SessionMode =
  | "new"
  | "tls"
  | "handshake"
  | "get"
  | "chat"
  | "ship"
  | "witness"
  | "plain"
  | "syslog";

/** What the handlers write audit lines to. */
export type AuditWriter = Pick<AuditLog, "write">;

/**
 * The audit log as the handlers see it: a line whose `name` is that of an
 * open session that proved who it is (a certificate, a token) also carries
 * that `identity`, right after the name, so that every event of an
 * authenticated connection says who it was.
 *
 * @param audit The server's audit log.
 * @param sessions The open sessions, by name.
 * @returns A writer that adds the identity and writes to `audit`.
 */
export function sessionAudit(
  audit: AuditLog,
  sessions: { get(name: string): Session | undefined },
): AuditWriter {
  return {
    write(event, fields = {}) {
      const name = fields.name;
      const identity = typeof name === "string"
        ? sessions.get(name)?.identity
        : undefined;
      if (identity === undefined || "identity" in fields) {
        return audit.write(event, fields);
      }
      const out: Record<string, unknown> = {};
      for (const [key, value] of Object.entries(fields)) {
        out[key] = value;
        if (key === "name") out.identity = identity;
      }
      return audit.write(event, out);
    },
  };
}

/**
 * Counts the sessions whose input is not read now because of backpressure
 * (a peer over its chat rate, a shipper not reading its acks): what
 * `Server.usage()` reports.
 */
export class Pauses {
  #count = 0;

  /** Sessions paused now. */
  get count(): number {
    return this.#count;
  }

  /**
   * Counts one session as paused while `waiting` is pending.
   *
   * @param waiting What the session waits for before it reads again.
   * @returns What `waiting` resolves.
   */
  async during<T>(waiting: Promise<T>): Promise<T> {
    this.#count++;
    try {
      return await waiting;
    } finally {
      this.#count--;
    }
  }
}

/** Who a session is, when it is created. */
export interface SessionInit {
  /** The server's name for it, e.g. "k3f9-c7". */
  name: string;
  /** The socket. */
  conn: Conn;
  /** Who the client proved to be with a certificate, if it had to. */
  identity?: string | undefined;
}

/**
 * One accepted connection: its socket, its activity for the idle timeout,
 * its handshake or linger deadline, and why it ended.
 */
export class Session {
  /** The server it belongs to. */
  readonly server: ServerContext;
  /** The server's name for it, e.g. "k3f9-c7". */
  readonly name: string;
  /** The peer as the audit log shows it, "host:port". */
  readonly peer: string;
  /** The socket: writes one at a time, bytes counted (see `session_conn.ts`). */
  readonly conn: SessionConn;
  /** When it was accepted (the server's clock). */
  readonly since: number;
  /** What it is doing. */
  mode: SessionMode = "new";
  /** Mode "ship": the source name the shipper gave. */
  source: string | undefined = undefined;
  /** When it last read or wrote (the server's clock). */
  lastActive: number;
  /** Close unless the handshake is done by then (ms timestamp). */
  deadline: number | undefined = undefined;
  /** Why it ended, for the `closed` audit line; the first reason set wins. */
  reason: string | undefined = undefined;
  /** Who the client proved to be (`cert:sha256:…`, `token:NAME`), if it had to. */
  identity: string | undefined;
  /** Made on first use: an idle connection should cost little more than its socket. */
  #closing: AbortController | undefined;
  #closed = false;

  /**
   * Starts a session, active from now.
   *
   * @param server The server's shared state.
   * @param init Name, socket and certificate identity.
   */
  constructor(server: ServerContext, init: SessionInit) {
    this.server = server;
    this.name = init.name;
    this.conn = new SessionConn(init.conn);
    this.peer = formatAddr(init.conn.remoteAddr);
    this.identity = init.identity;
    this.since = this.lastActive = server.options.now();
  }

  /**
   * Reads from the socket and records the activity.
   *
   * @param buf Where the bytes go.
   * @returns The byte count, or null at end of input.
   */
  async read(buf: Uint8Array): Promise<number | null> {
    const n = await this.conn.read(buf);
    this.lastActive = this.server.options.now();
    return n;
  }

  /**
   * Aborted once the session is closed: whatever it waits for that is not
   * its socket (a send buffer, its chat rate) stops waiting.
   */
  get closed(): AbortSignal {
    if (this.#closing === undefined) {
      this.#closing = new AbortController();
      if (this.#closed) this.#closing.abort();
    }
    return this.#closing.signal;
  }

  /**
   * Closes the connection and ends every wait of the session.
   *
   * @param reason Why, for the `closed` audit line; the first reason set wins.
   */
  close(reason?: string): void {
    if (reason !== undefined) this.reason ??= reason;
    this.conn.close();
    this.#closed = true;
    this.#closing?.abort();
  }

  /** Records activity that is not a read (a chunk of a file sent). */
  touch(): void {
    this.lastActive = this.server.options.now();
  }

  /**
   * Sends an Error frame with what the peer may be told of `err`
   * (`toErrorBody`: a code that may not reach a peer goes out as
   * `ERR_INTERNAL`, its message left for the audit log). A failed write is
   * ignored (the connection is ending anyway).
   *
   * @param err The error, or a `{ code, message }` body.
   */
  async sendError(err: unknown): Promise<void> {
    await this.conn.write(
      encodeFrame({ type: Kind.Error, payload: encodeError(toErrorBody(err)) }),
    )
      .catch(() => {});
  }

  /**
   * Writes one plain-text error line, `ERR <CODE> <message>` (`errorLine`:
   * the same rule as {@linkcode Session.prototype.sendError}). A failed
   * write is ignored.
   *
   * @param err The error, or a `{ code, message }` body.
   */
  async sendErrorLine(err: unknown): Promise<void> {
    await this.conn.write(encodeText(errorLine(err))).catch(() => {});
  }
}

/**
 * Formats an address as "host:port" ("[v6]:port" for IPv6).
 *
 * @example
 * ```ts
 * import { formatAddr } from "./session.ts";
 * import assert from "node:assert/strict";
 * assert.equal(formatAddr({ hostname: "::1", port: 4320 }), "[::1]:4320");
 * ```
 *
 * @param addr The address.
 * @returns Its text form.
 */
export function formatAddr(addr: Addr): string {
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

/**
 * The address a vault source is keyed by: IPv4-mapped IPv6 shown as IPv4.
 *
 * @param hostname The peer's address as the runtime reports it.
 * @returns The key's peer part.
 */
export function peerIdentity(hostname: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(hostname);
  return m ? m[1]! : hostname.toLowerCase();
}

/**
 * The raw code of an error, for the audit log only: what a peer is told
 * goes through `toErrorBody` ({@linkcode Session.prototype.sendError}).
 *
 * @param err Anything thrown.
 * @returns Its `code` string (a system error's `EMFILE` included), or
 * "ERR_INTERNAL".
 */
export function errorCode(err: unknown): string {
  if (
    err && typeof err === "object" && "code" in err &&
    typeof err.code === "string"
  ) {
    return err.code;
  }
  return Code.ERR_INTERNAL;
}

/**
 * The raw message of an error, for the audit log only (it may name server
 * paths).
 *
 * @param err Anything thrown.
 * @returns Its message, or its text form.
 */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
