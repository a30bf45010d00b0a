/**
 * The syslog port of `moat serve --syslog-port`: takes RFC 6587 syslog over
 * TCP (octet counting or newline framing, detected per connection) from an
 * allowlisted peer and appends each message to the vault.
 *
 * Every message of one peer goes to one source, `{ peer, name: "syslog" }`,
 * with sequence numbers the server assigns (the source's last + 1, …), so
 * several connections from one host interleave safely. A record's `ts` is
 * the message's own timestamp when it parses, else the receive time; the
 * stored line is the message as sent, less its framing and one trailing
 * newline.
 *
 * The port has limits of its own, apart from the main port's:
 * {@linkcode SyslogPort} counts its connections against `maxConns`, closes
 * senders that stay silent, and holds every connection to one budget of
 * bytes on their way into the vault ({@linkcode SyslogBudget}): a connection
 * whose records would pass it is not read until earlier ones are durable, so
 * a fast sender waits in its TCP window, not in the server's memory. The
 * same records also count against the server's append budget, which ship
 * connections share ({@linkcode AppendBudget}): while it is spent, or ship
 * batches wait for it, syslog connections are not read either.
 *
 * The `Server` accepts the connection, applies the allowlist and the
 * connection limit, and writes the `accepted`/`refused`/`closed` audit
 * lines; this module reads, frames, stores, times out, and reports.
 *
 * @module
 */

import type { Conn } from "../net/types.ts";
import type { AuditLog } from "../audit.ts";
import {
  type AppendBatch,
  type AppendOptions,
  type AppendRecord,
  type SourceKey,
  sourceKey,
  type Vault,
  type VaultSource,
} from "../vault/store.ts";
import { DEFAULT_SYSLOG_MAX, SYSLOG_SOURCE, SyslogFramer } from "../syslog.ts";
import { SyslogBatch } from "./syslog_batch.ts";

export { SYSLOG_SOURCE };
import { ConnectionClosedError } from "../errors.ts";
import {
  APPEND_FAILED,
  AppendBudget,
  AppendPipeline,
  encodedCost,
} from "./append_pipeline.ts";
import type { ResolvedServerOptions } from "./options.ts";
import { sweepSessions } from "./listener.ts";
import {
  errorCode,
  errorMessage,
  peerIdentity,
  type Session,
} from "./session.ts";

/**
 * Most connections at once on the syslog port; more get a `BUSY` refusal.
 * One per forwarding host and action is the usual (rsyslog `omfwd`,
 * syslog-ng), so 256 serve a large fleet, and with the main port's 512 and
 * the vault's 128 open segments they stay inside the usual 1024 descriptors.
 */
export const DEFAULT_SYSLOG_MAX_CONNS = 256;
/**
 * A syslog connection that has not sent a whole message this long after it
 * was accepted is closed, in milliseconds: a sender connects because it has
 * something to send and sends it at once, so a silent socket only holds a
 * slot.
 */
export const DEFAULT_SYSLOG_IDLE_TIMEOUT_MS = 60_000;
/**
 * A syslog connection that has sent messages, then none for this long, is
 * closed, in milliseconds. rsyslog and syslog-ng keep a forwarding
 * connection open between bursts, and a quiet host may log nothing for many
 * minutes; closing it costs a reconnect (syslog-ng waits `time-reopen`, 60 s
 * by default, before it) and risks the message written into the closed
 * socket, so only a sender gone for an hour is let go.
 */
export const DEFAULT_SYSLOG_QUIET_TIMEOUT_MS = 3_600_000;
/**
 * Bytes of syslog records on their way into the vault, all connections
 * together, before reading stops. The vault commits in groups, so a few MiB
 * keep it busy: 200 appenders stored as many records per second with 4 MiB
 * as with 16 MiB, and Bun's peak RSS fell from 255 to 101 MiB.
 */
export const DEFAULT_SYSLOG_BYTES_IN_FLIGHT: number = 4 * 1024 * 1024;
/**
 * What one record costs the budget beyond its line: its header and chain
 * link in the vault (68 bytes), and a share of the append's bookkeeping.
 */
export const SYSLOG_RECORD_COST = 96;

/**
 * The batch every connection frames its reads into: framing and appending
 * one read is one synchronous stretch, so they never share it at once.
 */
const BATCH = new SyslogBatch();

/** First read buffer: small, because idle connections must stay cheap. */
const FIRST_READ = 4096;
/**
 * Read buffer once a read filled the small one: a busy sender. Small
 * enough that one read's messages (at most 8,192, of 2 bytes each) make at
 * most two vault appends, which is all a connection may add past the budget.
 */
const BUSY_READ = 16 * 1024;

/**
 * One budget of bytes in flight, shared by every syslog connection. A
 * connection takes its turn with {@linkcode SyslogBudget.prototype.enter}
 * before it frames what it read, charges its records while appending them,
 * and {@linkcode SyslogBudget.prototype.leave}s; the vault's commits give
 * the bytes back. Once the budget is spent, connections wait in arrival
 * order and are let in one at a time while it has room, so the total passes
 * the limit by at most one connection's read. With a `shared`
 * {@linkcode AppendBudget}, the records are charged to it too, and
 * connections also wait while it is not open (spent, or batches waiting
 * for it).
 *
 * @example
 * ```ts
 * import { SyslogBudget } from "./syslog.ts";
 * import assert from "node:assert/strict";
 * const budget = new SyslogBudget(100);
 * assert.equal(budget.enter(), undefined); // room: go on at once
 * budget.take(150);
 * budget.leave();
 * const waiting = budget.enter(); // spent: wait for a give
 * assert.ok(waiting instanceof Promise);
 * budget.give(150);
 * await waiting;
 * budget.leave();
 * ```
 */
export class SyslogBudget {
  #limit: number;
  #used = 0;
  #shared: AppendBudget | undefined;
  #waiters: (() => void)[] = [];
  /** A woken waiter has not left yet: nobody else may enter. */
  #turn = false;

  /**
   * @param limit Bytes in flight above which connections wait.
   * @param options The server's append budget, charged too.
   * @throws {RangeError} For a limit that is not a positive integer.
   */
  constructor(limit: number, options: { shared?: AppendBudget } = {}) {
    if (!Number.isSafeInteger(limit) || limit < 1) {
      throw new RangeError(`Invalid syslog budget: ${limit} is not positive`);
    }
    this.#limit = limit;
    this.#shared = options.shared;
    this.#shared?.onGive(() => this.#wake());
  }

  /** Bytes charged and not yet given back. */
  get used(): number {
    return this.#used;
  }

  /** Connections waiting for their turn. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /**
   * Asks for a turn. Call {@linkcode SyslogBudget.prototype.leave} once done,
   * without an await in between when this returned undefined.
   *
   * @returns Undefined to go on at once, or a promise of the turn.
   */
  enter(): Promise<void> | undefined {
    if (!this.#turn && this.#waiters.length === 0 && this.#room()) {
      return undefined;
    }
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Ends a turn; lets the next waiter in if there is room. */
  leave(): void {
    this.#turn = false;
    this.#wake();
  }

  /**
   * Charges bytes now in flight.
   *
   * @param cost Bytes.
   * @param shared What the records cost the shared budget (its own measure,
   * see `appendCost`). @default {cost}
   */
  take(cost: number, shared: number = cost): void {
    this.#used += cost;
    this.#shared?.charge(shared);
  }

  /**
   * Gives back bytes no longer in flight.
   *
   * @param cost Bytes, as taken.
   * @param shared As taken. @default {cost}
   */
  give(cost: number, shared: number = cost): void {
    this.#used -= cost;
    // Its waiters first, then ours (through onGive).
    if (this.#shared !== undefined) this.#shared.give(shared);
    else this.#wake();
  }

  #room(): boolean {
    return this.#used < this.#limit && (this.#shared?.open ?? true);
  }

  #wake() {
    if (this.#turn || !this.#room()) return;
    const next = this.#waiters.shift();
    if (next === undefined) return;
    this.#turn = true;
    next();
  }
}

/** One accepted syslog connection, as the server hands it over. */
export interface SyslogConnection {
  /** The socket. */
  readonly conn: Conn;
  /** The peer as the audit log shows it, "host:port". */
  readonly peer: string;
  /** The server's name for the connection, e.g. "c7". */
  readonly name: string;
  /** Reads from the socket. */
  read(buf: Uint8Array): Promise<number | null>;
}

/** Options for {@linkcode serveSyslog}. */
export interface ServeSyslogOptions {
  /** The vault the messages go to. */
  vault: Vault;
  /** Where refusals, errors and the per-connection summary are logged. */
  audit: AuditLog;
  /**
   * The source the messages go to, built by the server: the peer's address
   * and identity (`sourceKey` in `lib/vault/store.ts`), name `syslog`.
   */
  key: SourceKey;
  /** Longest message accepted, in bytes. @default {65536} */
  maxMessage?: number;
  /** The budget shared with the other connections. @default {a budget of its own, 4 MiB} */
  budget?: SyslogBudget;
  /** Told when messages were taken, and when the connection starts and stops waiting for the budget. */
  onActivity?: (what: "messages" | "waiting" | "reading") => void;
}

/**
 * Serves one syslog connection until the peer closes, it breaks the framing,
 * it sends an oversize message (refused with an audit line), or the vault
 * fails (audited at once, even while the connection waits for its next
 * message; the server then closes it). Each read's messages are appended at once, in batches the vault
 * accepts; appends are pipelined, at most 8 at once, and all are durable (or
 * failed) when this resolves. While the budget is spent, the connection is
 * not read.
 *
 * @example
 * ```ts ignore
 * const reason = await serveSyslog(
 *   { conn, peer: "10.0.0.5:51234", name: "c1", read: (b) => conn.read(b) },
 *   { vault, audit, key: { peer: "10.0.0.5", name: SYSLOG_SOURCE } },
 * );
 * ```
 *
 * @param c The connection.
 * @param options Vault, audit log, source peer, size limit and budget.
 * @returns Why the connection ended, for the `closed` audit line. Never
 * rejects.
 */
export async function serveSyslog(
  c: SyslogConnection,
  options: ServeSyslogOptions,
): Promise<string> {
  const { vault, audit, onActivity } = options;
  const budget = options.budget ??
    new SyslogBudget(DEFAULT_SYSLOG_BYTES_IN_FLIGHT);
  const framer = new SyslogFramer({
    maxMessage: options.maxMessage ?? DEFAULT_SYSLOG_MAX,
  });
  const { key } = options;
  const where = { peer: c.peer, name: c.name, listener: "syslog" };
  let reason = "peer closed";
  let buf = new Uint8Array(FIRST_READ);
  let source: VaultSource;
  try {
    // A shared vault: number on after what other front doors stored.
    await vault.catchUp?.(key);
    source = budgeted(vault.source(key), budget);
  } catch (err) {
    audit.write("error", {
      ...where,
      code: errorCode(err),
      message: errorMessage(err),
      during: "syslog",
    });
    return `vault refused the source: ${errorMessage(err)}`;
  }
  const appends = new AppendPipeline(source);

  try {
    for (;;) {
      // A failed append ends the connection at once, not at the next read: a
      // quiet sender would otherwise hold it, unaware, until its quiet
      // timeout. (The read ends with the connection's close.)
      const n = await appends.orFailure(c.read(buf));
      if (n === APPEND_FAILED) throw appends.failure;
      const turn = budget.enter();
      if (turn !== undefined) {
        onActivity?.("waiting");
        await turn;
        onActivity?.("reading");
      }
      let framing: unknown;
      let stored: Promise<unknown> | undefined;
      try {
        const batches = BATCH.start(appends, source, Date.now());
        try {
          if (n === null) framer.finish(BATCH);
          else framer.scan(n === buf.length ? buf : buf.subarray(0, n), BATCH);
        } catch (err) {
          framing = err;
        }
        // Messages before a framing error are kept.
        stored = BATCH.end();
        if (batches.length > 0) onActivity?.("messages");
      } finally {
        budget.leave();
      }
      await stored;
      if (framing !== undefined) throw framing;
      if (n === null) break;
      // A full read means a busy sender; a short one that the burst is over.
      if (n === buf.length && buf.length < BUSY_READ) {
        buf = new Uint8Array(BUSY_READ);
      } else if (n < FIRST_READ && buf.length > FIRST_READ) {
        buf = new Uint8Array(FIRST_READ);
      }
      if (appends.failed) throw appends.failure;
    }
    await appends.finish();
  } catch (err) {
    await appends.settle();
    const code = errorCode(err);
    if (code === "ERR_SYSLOG_TOO_LARGE") {
      audit.write("refused", { ...where, reason: errorMessage(err) });
      reason = "syslog message too large";
    } else if (err instanceof ConnectionClosedError) {
      reason = errorMessage(err);
    } else {
      audit.write("error", {
        ...where,
        code,
        message: errorMessage(err),
        during: "syslog",
      });
      reason = `syslog ended: ${errorMessage(err)}`;
    }
  }
  audit.write("syslog_finished", {
    ...where,
    source: SYSLOG_SOURCE,
    framing: framer.framing ?? "none",
    records: appends.stored,
    lastSeq: source.lastSeq,
  });
  return reason;
}

/** A source whose appends are charged to `budget` until they settle. */
function budgeted(source: VaultSource, budget: SyslogBudget): VaultSource {
  return {
    key: source.key,
    id: source.id,
    get lastSeq() {
      return source.lastSeq;
    },
    get acceptedSeq() {
      return source.acceptedSeq;
    },
    append(
      records: readonly AppendRecord[] | AppendBatch,
      options?: AppendOptions,
    ) {
      let bytes = 0;
      if (Array.isArray(records)) {
        for (const r of records) bytes += r.line.length;
      } else {
        const batch = records as AppendBatch;
        for (let i = 0; i < batch.length; i++) bytes += batch.lineLength(i);
      }
      const cost = bytes + records.length * SYSLOG_RECORD_COST;
      const shared = encodedCost(bytes, records.length);
      budget.take(cost, shared);
      let done: Promise<number>;
      try {
        done = source.append(records, options);
      } catch (err) {
        done = Promise.reject(err);
      }
      const settled = () => budget.give(cost, shared);
      done.then(settled, settled);
      return done;
    },
  };
}

/** Limits of the syslog port (see `ServerSyslog` in `options.ts`). */
interface SyslogLimits {
  maxMessage: number;
  idleTimeoutMs: number;
  quietTimeoutMs: number;
}

/** When a syslog connection is closed unless it sends, and what the audit line says then. */
interface Deadline {
  /** Undefined while the connection waits for the budget: that is the server's delay, not the sender's. */
  at: number | undefined;
  reason: string;
}

/**
 * The server's side of the syslog port: its own sessions (counted against
 * its own `maxConns`, never the main port's), their deadlines, and the
 * budget they share.
 */
export class SyslogPort {
  /** The port's open sessions; the server adds and removes them. */
  readonly sessions: Set<Session> = new Set();
  /** The server's options with the port's own connection limit, for `guard`. */
  readonly guardOptions: ResolvedServerOptions;
  #o: ResolvedServerOptions;
  #limits: SyslogLimits;
  #budget: SyslogBudget;
  #deadlines = new Map<Session, Deadline>();

  /**
   * @param o The server's options, with `vault` and `syslog` set.
   * @param appendBudget The server's append budget, shared with ship
   * connections.
   * @throws {TypeError} Without them.
   */
  constructor(o: ResolvedServerOptions, appendBudget?: AppendBudget) {
    const syslog = o.syslog;
    if (syslog === undefined || o.vault === undefined) {
      throw new TypeError("Invalid server options: syslog needs a vault");
    }
    this.#o = o;
    this.#limits = {
      maxMessage: syslog.maxMessage ?? DEFAULT_SYSLOG_MAX,
      idleTimeoutMs: syslog.idleTimeoutMs ?? DEFAULT_SYSLOG_IDLE_TIMEOUT_MS,
      quietTimeoutMs: syslog.quietTimeoutMs ?? DEFAULT_SYSLOG_QUIET_TIMEOUT_MS,
    };
    this.guardOptions = {
      ...o,
      maxConns: syslog.maxConns ?? DEFAULT_SYSLOG_MAX_CONNS,
    };
    this.#budget = new SyslogBudget(
      syslog.maxBytesInFlight ?? DEFAULT_SYSLOG_BYTES_IN_FLIGHT,
      { ...(appendBudget !== undefined && { shared: appendBudget }) },
    );
  }

  /** The budget every connection of the port shares. */
  get budget(): SyslogBudget {
    return this.#budget;
  }

  /**
   * Serves one accepted session (see {@linkcode serveSyslog}) and sets its
   * reason.
   *
   * @param s The session, already in {@linkcode SyslogPort.prototype.sessions}.
   * @returns When it ended. Never rejects.
   */
  async serve(s: Session): Promise<void> {
    const { idleTimeoutMs, quietTimeoutMs } = this.#limits;
    const now = this.#o.now;
    const deadline: Deadline = {
      at: now() + idleTimeoutMs,
      reason: `syslog idle timeout: no message in ${
        seconds(idleTimeoutMs)
      } after connecting`,
    };
    const quiet = `syslog quiet timeout: no message in ${
      seconds(quietTimeoutMs)
    }`;
    let sent = false;
    this.#deadlines.set(s, deadline);
    try {
      const reason = await serveSyslog({
        conn: s.conn,
        peer: s.peer,
        name: s.name,
        read: (buf) => s.read(buf),
      }, {
        vault: this.#o.vault!,
        audit: this.#o.audit,
        // Keyed like a shipped source: address, plus the certificate
        // identity when the port requires one, so hosts sharing a
        // certificate still never share a source.
        key: sourceKey({
          address: peerIdentity(s.conn.remoteAddr.hostname),
          identity: s.identity,
        }, SYSLOG_SOURCE),
        maxMessage: this.#limits.maxMessage,
        budget: this.#budget,
        onActivity: (what) => {
          if (what === "waiting") {
            deadline.at = undefined;
            return;
          }
          if (what === "messages" && !sent) {
            sent = true;
            deadline.reason = quiet;
          }
          if (what === "messages" || deadline.at === undefined) {
            deadline.at = now() + (sent ? quietTimeoutMs : idleTimeoutMs);
          }
        },
      });
      s.reason ??= reason;
    } finally {
      this.#deadlines.delete(s);
    }
  }

  /**
   * Closes every session past its deadline, with its reason: those being
   * served, and TLS handshakes in progress (sessions of the port too, with
   * the handshake deadline the server set).
   *
   * @param now The current time.
   */
  sweep(now: number): void {
    for (const [s, deadline] of this.#deadlines) {
      if (deadline.at !== undefined && now > deadline.at) {
        s.reason ??= deadline.reason;
        s.conn.close();
      }
    }
    sweepSessions(this.sessions, { now, idleTimeoutMs: Infinity });
  }
}

function seconds(ms: number): string {
  return `${ms / 1000} s`;
}
