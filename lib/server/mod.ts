/**
 * The moat server: accepts allowlisted peers, then serves framed clients
 * (get, chat, ship) and plain-text clients (chat lines, `FILE:<path>`) on
 * one port, and syslog over TCP on another.
 *
 * One module per concern: `listener.ts` (binding, accept loops, the guard,
 * refusals, the sweep), `sniff.ts` (framed or plain), `handshake.ts`,
 * `get.ts`, `ship.ts`, `chat.ts`, `plain.ts`, `syslog.ts`, and the shared
 * `session.ts`, `outbox.ts` and `append_pipeline.ts`.
 *
 * @module
 */

import type { AcceptErrorEvent, Addr, Conn, Listener } from "../net/types.ts";
import { AuthThrottle } from "../auth.ts";
import { ChatHub } from "../chat.ts";
import { DigestCache } from "../file_sender.ts";
import { ConnectionClosedError } from "../errors.ts";
import {
  acceptAll,
  bindAll,
  checkCertificate,
  guard,
  PeerSlots,
  type Port,
  type Refusal,
  Refusals,
  sweepInterval,
  sweepSessions,
} from "./listener.ts";
import {
  type ResolvedServerOptions,
  resolveServerOptions,
  type ServerOptions,
} from "./options.ts";
import {
  errorCode,
  errorMessage,
  formatAddr,
  Pauses,
  type ServerContext,
  Session,
  sessionAudit,
} from "./session.ts";
import {
  checkReload,
  diffReload,
  type ReloadResult,
  revokedBy,
  type ServerReload,
} from "./reload.ts";
import { RateLimiter } from "./rate.ts";
import { AppendBudget, DEFAULT_APPEND_BUDGET } from "./append_pipeline.ts";
import { SendBudget } from "./send_budget.ts";
import { serveConnection } from "./sniff.ts";
import { SyslogPort } from "./syslog.ts";
import { SourceWatch } from "./liveness.ts";
import {
  connectionStatus,
  RecentCount,
  type ServerStatus,
  sourceStatuses,
} from "./status.ts";

export type { ServerAuth, ServerOptions, ServerSyslog } from "./options.ts";
export type { ReloadResult, ServerReload } from "./reload.ts";

/** Options for {@linkcode Server.prototype.close}. */
export interface CloseOptions {
  /**
   * Runs once every connection has ended, before the `shutdown` line: the
   * vault's last seal, so that its audit line comes first.
   */
  beforeShutdown?: () => Promise<void>;
}

/** What a peer taken from the descriptor reserve reads before the close. */
const BUSY_NOTICE = new TextEncoder().encode(
  "ERR BUSY server busy: out of file descriptors\n",
);

/** What a {@linkcode Server} holds now, for its budgets and their tests. */
export interface ServerUsage {
  /** Connections open. */
  connections: number;
  /** The send-buffer budget: bytes granted, the total, grants held, takers waiting. */
  sendBuffers: {
    used: number;
    total: number;
    holders: number;
    waiting: number;
  };
  /** Bytes of ship appends in flight, the total, and batches waiting to fit. */
  appends: { used: number; total: number; waiting: number };
  /**
   * Connections not read now because of backpressure: over their chat rate,
   * or not reading their ship acks.
   */
  pausedReads: number;
}
export { formatAddr } from "./session.ts";

const RESOLVED: Promise<void> = Promise.resolve();

/**
 * An allowlisted moat server.
 *
 * @example Serve the current folder to loopback
 * ```ts ignore
 * const server = new Server({ net: getNet(), hosts: ["127.0.0.1"], port: 0,
 *   allowlist: compileAllowlist({}), jail: await createJail("."),
 *   audit: new AuditLog(console.error), version: "0.1.0" });
 * const [addr] = await server.listen();
 * ```
 */
export class Server {
  #o: ResolvedServerOptions;
  #ctx: ServerContext;
  #listeners: Listener[] = [];
  #syslogListeners: Listener[] = [];
  /** Sessions of the main port; the syslog port keeps its own. */
  #sessions = new Set<Session>();
  /** Connections per peer address on the main port and the syslog port. */
  #slots = new PeerSlots();
  #syslogSlots = new PeerSlots();
  #syslog: SyslogPort | undefined;
  #refusals: Refusals;
  #nextId = 1;
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #closing = false;
  #acceptLoops: Promise<void>[] = [];
  #handlers = new Map<Conn, Promise<void>>();
  /** Refused connections of the last hour, for {@linkcode Server.prototype.status}. */
  #refused = new RecentCount();
  #addrs: Addr[] = [];
  #startedAt = 0;

  /**
   * Makes a server; nothing is bound until {@linkcode Server.prototype.listen}.
   *
   * @param options Listening addresses, guard, jail, audit log and limits.
   * @throws {TypeError} When `syslog` is given without a `vault`, or for a
   * negative `chatRate`.
   * @throws {RangeError} For a `sendBufferBytes` below 16 KiB.
   */
  constructor(options: ServerOptions) {
    const o = resolveServerOptions(options);
    this.#o = o;
    this.#ctx = {
      options: o,
      audit: sessionAudit(o.audit, { get: (name) => this.#sessionNamed(name) }),
      hub: new ChatHub((line) => o.onChat?.(line)),
      cache: new DigestCache(),
      sources: new SourceWatch({
        audit: o.audit,
        silentAfterMs: o.silentAfterMs,
        now: o.now,
      }),
      authThrottle: new AuthThrottle({ now: o.now }),
      sendBudget: new SendBudget(o.sendBufferBytes, { reserveFor: o.maxConns }),
      appendBudget: new AppendBudget(DEFAULT_APPEND_BUDGET),
      chatRate: o.chatRate === 0 ? undefined : new RateLimiter({
        perSecond: o.chatRate,
        burst: 2 * o.chatRate,
        globalPerSecond: 20 * o.chatRate,
        globalBurst: 40 * o.chatRate,
        now: o.now,
      }),
      pauses: new Pauses(),
    };
    this.#refusals = new Refusals(o.audit, o.now);
    if (o.syslog !== undefined) {
      this.#syslog = new SyslogPort(o, this.#ctx.appendBudget);
    }
  }

  /** Connections currently open, on both ports. */
  get connections(): number {
    return this.#sessions.size + (this.#syslog?.sessions.size ?? 0);
  }

  /** The syslog port's addresses once listening; empty without one. */
  get syslogAddrs(): Addr[] {
    return this.#syslogListeners.map((l) => l.addr);
  }

  /**
   * What the server holds now against its budgets.
   *
   * @returns Connections, send buffers and paused reads.
   */
  usage(): ServerUsage {
    const b = this.#ctx.sendBudget;
    return {
      connections: this.#sessions.size,
      sendBuffers: {
        used: b.used,
        total: b.total,
        holders: b.holders,
        waiting: b.waiting,
      },
      appends: {
        used: this.#ctx.appendBudget.used,
        total: this.#ctx.appendBudget.total,
        waiting: this.#ctx.appendBudget.waiting,
      },
      pausedReads: this.#ctx.pauses.count,
    };
  }

  /**
   * Binds every host and starts accepting.
   *
   * @returns The bound addresses.
   * @throws {AddressInUseError} When a port is taken.
   */
  async listen(): Promise<Addr[]> {
    const o = this.#o;
    const tls = o.tls && {
      ...o.tls,
      ...(o.auth?.certs && { requestCert: true }),
    };
    // Out of descriptors: one audit line when it starts and one when it is
    // over, never one per attempt; the listener keeps a reserve descriptor
    // so that waiting peers get this line instead of a hang.
    const accepting = (port: Port) => ({
      onAcceptError: (e: AcceptErrorEvent) =>
        o.audit.write(
          e.kind === "exhausted" ? "accept_exhausted" : "accept_recovered",
          {
            message: e.message,
            ...(e.kind === "recovered" && { busy: e.busy }),
            ...(port === "syslog" && { listener: port }),
          },
        ),
      busyNotice: BUSY_NOTICE,
    });
    this.#listeners = await bindAll(o.net, {
      hosts: o.hosts,
      port: o.port,
      tls,
      ...accepting("main"),
    });
    const addrs = this.#listeners.map((l) => l.addr);
    if (o.syslog !== undefined) {
      try {
        this.#syslogListeners = await bindAll(o.net, {
          hosts: o.hosts,
          port: o.syslog.port,
          // RFC 5425: syslog over TLS, with the main port's certificate and
          // client certificate request.
          tls: o.syslog.tls ? tls : undefined,
          ...accepting("syslog"),
        });
      } catch (err) {
        for (const l of this.#listeners) l.close();
        this.#listeners = [];
        throw err;
      }
    }
    o.audit.write("listening", {
      addrs: addrs.map(formatAddr),
      ...(o.namePrefix !== "" && { namePrefix: o.namePrefix }),
      ...(this.#syslog && {
        syslog: this.#syslogListeners.map((l) => formatAddr(l.addr)),
        syslogMaxConns: this.#syslog.guardOptions.maxConns,
        syslogTls: o.syslog?.tls === true,
      }),
      allow: o.allowlist.describe(),
      ...(o.jail && { root: o.jail.root }),
      ...(o.witness && {
        witness: o.witness.verifier,
        origins: o.witness.origins,
      }),
      maxConns: o.maxConns,
      maxConnsPerPeer: o.maxConnsPerPeer,
      plain: o.plain,
      tls: o.tls !== undefined,
      clientAuth: [
        ...(o.auth?.certs ? ["certificate"] : []),
        ...(o.auth?.tokens ? ["token"] : []),
      ],
    });
    this.#addrs = addrs;
    this.#startedAt = o.now();
    for (const l of this.#listeners) this.#acceptOn(l, "main");
    for (const l of this.#syslogListeners) this.#acceptOn(l, "syslog");
    this.#sweeper = setInterval(() => this.sweep(), sweepInterval(o));
    return addrs;
  }

  /**
   * Sends an operator line to every chat client; a chat command (`/who`) is
   * answered to the operator alone, through `onChat`.
   *
   * @param text The line.
   */
  say(text: string): void {
    if (this.#ctx.hub.command(text)) return;
    this.#ctx.hub.announce("operator", text);
  }

  /**
   * Closes every connection past a deadline: a handshake not finished in
   * time, an idle connection, a refusal or an ending plain connection that
   * lingered too long. The server runs this on a timer; tests with a fake
   * `now` call it directly.
   */
  sweep(): void {
    const now = this.#o.now();
    this.#refusals.sweep(now);
    sweepSessions(this.#sessions, {
      now,
      idleTimeoutMs: this.#o.idleTimeoutMs,
    });
    this.#ctx.sources.sweep(now);
    this.#syslog?.sweep(now);
    // Readers paused by the chat rate whose tokens are due (the rate's own
    // timer does this too; a fake clock moves only here).
    this.#ctx.chatRate?.poke();
    // Summaries of audit lines the rate limit held back, once their peer
    // has gone quiet: nothing held back stays unaccounted for long.
    this.#o.audit.flush();
  }

  /**
   * What the server is doing now, for `moat status`: its connections, its
   * vault's sources and when each was last heard from, and the refusals of
   * the last minute and hour.
   *
   * @returns A snapshot; every field is JSON.
   */
  status(): ServerStatus {
    const o = this.#o;
    const now = o.now();
    return {
      server: `moat/${o.version}`,
      startedAt: new Date(this.#startedAt).toISOString(),
      now: new Date(now).toISOString(),
      listening: this.#addrs.map(formatAddr),
      idleTimeoutMs: o.idleTimeoutMs,
      silentAfterMs: o.silentAfterMs,
      connections: [...this.#sessions].map(connectionStatus),
      vault: o.vault?.dir ?? null,
      sources: o.vault === undefined
        ? []
        : sourceStatuses(o.vault, { watch: this.#ctx.sources, now }),
      refusals: {
        lastMinute: this.#refused.count(now, 60),
        lastHour: this.#refused.count(now, 3600),
      },
    };
  }

  /**
   * Applies new settings to the connections accepted from now on, and
   * closes the open ones they refuse (an address no longer allowed, a token
   * revoked, a certificate under changed rules), each with a `closed` line.
   * Nothing changes when it throws.
   *
   * @param next The allowlist, TLS settings and client authentication, whole.
   * @returns What changed and how many connections were closed.
   * @throws {TypeError} When it would turn TLS, client certificates or
   * tokens on or off (a restart does that).
   * @throws {MoatError} `ERR_TLS_CONFIG` when the certificate or key cannot
   * be used.
   */
  reload(next: ServerReload): ReloadResult {
    const o = this.#o;
    const before = { allowlist: o.allowlist, tls: o.tls, auth: o.auth };
    checkReload(before, next);
    const changed = diffReload(before, next);
    const tlsChanged = changed.includes("certificate") ||
      changed.includes("client-ca");
    if (next.tls !== undefined && tlsChanged) {
      const tls = {
        ...next.tls,
        ...(next.auth?.certs && { requestCert: true }),
      };
      // One listener checks the new context; only then do the others take
      // it, so a bad certificate leaves every listener as it was.
      for (const l of this.#listeners) {
        if (l.setTls === undefined) {
          throw new TypeError("Cannot reload TLS on this listener");
        }
        l.setTls(tls);
      }
    }
    o.allowlist = next.allowlist;
    // checkReload made sure neither appears nor disappears.
    if (next.tls !== undefined) o.tls = next.tls;
    if (next.auth !== undefined) o.auth = next.auth;
    let closed = 0;
    for (const s of [...this.#sessions, ...(this.#syslog?.sessions ?? [])]) {
      const reason = revokedBy(s, { before, after: next, changed });
      if (reason === undefined) continue;
      s.reason ??= reason;
      s.conn.close();
      closed++;
    }
    return { changed, closed };
  }

  /**
   * Stops listening, closes every connection, waits for handlers to end,
   * and writes the `shutdown` line, last.
   *
   * @param options What runs before the `shutdown` line.
   */
  async close(options: CloseOptions = {}): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    clearInterval(this.#sweeper);
    for (const l of this.#listeners) l.close();
    for (const l of this.#syslogListeners) l.close();
    this.#refusals.close();
    this.#ctx.hub.close();
    this.#ctx.chatRate?.close();
    for (const s of [...this.#sessions, ...(this.#syslog?.sessions ?? [])]) {
      s.close("server shutting down");
    }
    await Promise.allSettled(this.#acceptLoops);
    await Promise.allSettled([...this.#handlers.values()]);
    try {
      await options.beforeShutdown?.();
    } finally {
      this.#o.audit.flush(true);
      this.#o.audit.write("shutdown", {});
    }
  }

  #acceptOn(listener: Listener, port: Port) {
    this.#acceptLoops.push(acceptAll(listener, {
      accept: (conn) => {
        // #handle removes its entry when done, which for a refusal is before
        // it even returns.
        this.#handlers.set(conn, RESOLVED);
        const handled = this.#handle(conn, port);
        if (this.#handlers.has(conn)) this.#handlers.set(conn, handled);
      },
      closing: () => this.#closing,
      audit: this.#o.audit,
    }));
  }

  /** Serves one accepted connection. Never rejects; forgets itself when done. */
  async #handle(conn: Conn, port: Port) {
    let giveSlot: (() => void) | undefined;
    try {
      // Syslog connections are marked in every audit line about them.
      const tag = port === "syslog" ? { listener: port } : undefined;
      // Each port counts against its own limit.
      const syslog = tag && this.#syslog;
      const sessions = syslog ? syslog.sessions : this.#sessions;
      const slots = syslog ? this.#syslogSlots : this.#slots;
      const peer = conn.remoteAddr.hostname;
      const refusal = guard(conn, syslog ? syslog.guardOptions : this.#o, {
        sessions: sessions.size,
        peerSessions: slots.count(peer),
        port,
      });
      if (refusal !== undefined) {
        this.#refuse(conn, refusal, tag);
        return;
      }
      giveSlot = slots.take(peer);
      if (
        conn.handshake !== undefined &&
        !await this.#handshakeTls(conn, sessions, tag)
      ) {
        return;
      }
      const verdict = checkCertificate(conn, this.#o, port);
      if ("code" in verdict) {
        this.#refuse(conn, verdict, tag);
        return;
      }
      const s = new Session(this.#ctx, {
        name: this.#newName(),
        conn,
        identity: verdict.identity,
      });
      sessions.add(s);
      this.#o.audit.write("accepted", {
        peer: s.peer,
        name: s.name,
        ...(s.identity && { identity: s.identity }),
        ...tag,
      });
      const started = Date.now();
      try {
        if (syslog) s.mode = "syslog";
        await (syslog ? syslog.serve(s) : serveConnection(s));
      } catch (err) {
        if (!(err instanceof ConnectionClosedError) || s.reason === undefined) {
          s.reason ??= errorMessage(err);
          if (!(err instanceof ConnectionClosedError)) {
            this.#o.audit.write("error", {
              peer: s.peer,
              name: s.name,
              code: errorCode(err),
              message: errorMessage(err),
            });
          }
        }
      } finally {
        sessions.delete(s);
        s.close();
        this.#o.audit.write("closed", {
          peer: s.peer,
          name: s.name,
          ...(s.identity && { identity: s.identity }),
          reason: s.reason ?? "peer closed",
          durationMs: Date.now() - started,
          ...tag,
        });
      }
    } catch (err) {
      // Expected failures are audited where they happen: this is a bug (a
      // guard that threw), and still no socket is left open unserved.
      conn.close();
      this.#o.audit.write("error", {
        peer: formatAddr(conn.remoteAddr),
        code: errorCode(err),
        message: errorMessage(err),
      });
    } finally {
      giveSlot?.();
      this.#handlers.delete(conn);
    }
  }

  /** Refuses a connection (see `Refusals`) and counts it. */
  #refuse(
    conn: Conn,
    refusal: Refusal,
    tag: { listener: string } | undefined,
  ) {
    this.#refused.add(this.#o.now());
    this.#refusals.refuse(conn, refusal, tag);
  }

  /**
   * Runs the TLS handshake of an allowed connection as a session of its
   * own: it counts against its port's `maxConns` and the sweep ends it at
   * the handshake deadline, so silent TLS peers cannot pile up unseen.
   *
   * @param conn The connection.
   * @param sessions Its port's sessions.
   * @param tag Extra audit fields (the syslog port's `{ listener: "syslog" }`).
   * @returns Whether the handshake is done; if not, it is audited.
   */
  async #handshakeTls(
    conn: Conn,
    sessions: Set<Session>,
    tag: { listener: string } | undefined,
  ): Promise<boolean> {
    const pending = new Session(this.#ctx, {
      name: this.#newName(),
      conn,
    });
    pending.mode = "tls";
    pending.deadline = this.#o.now() + this.#o.handshakeTimeoutMs;
    sessions.add(pending);
    try {
      await conn.handshake!();
      return true;
    } catch (err) {
      this.#refused.add(this.#o.now());
      this.#o.audit.write("refused", {
        peer: pending.peer,
        code: "TLS_HANDSHAKE",
        reason: pending.reason === "handshake timeout"
          ? "TLS handshake timeout"
          : errorMessage(err),
        ...tag,
      });
      conn.close();
      return false;
    } finally {
      sessions.delete(pending);
    }
  }

  /** The open session named `name`, on either port (for audit identities). */
  #sessionNamed(name: string): Session | undefined {
    for (const s of this.#sessions) if (s.name === name) return s;
    for (const s of this.#syslog?.sessions ?? []) if (s.name === name) return s;
    return undefined;
  }

  /** The next connection name: the prefix, then `c1`, `c2`… */
  #newName(): string {
    return `${this.#o.namePrefix}c${this.#nextId++}`;
  }
}
