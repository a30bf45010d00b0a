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

import type { Addr, Conn, Listener } from "../net/types.ts";
import { AuthThrottle } from "../auth.ts";
import { ChatHub } from "../chat.ts";
import { DigestCache } from "../file_sender.ts";
import { ConnectionClosedError } from "../errors.ts";
import {
  acceptAll,
  bindAll,
  guard,
  type Port,
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
  peerIdentity,
  type ServerContext,
  Session,
} from "./session.ts";
import { RateLimiter } from "./rate.ts";
import { AppendBudget, DEFAULT_APPEND_BUDGET } from "./append_pipeline.ts";
import { SendBudget } from "./send_budget.ts";
import { serveConnection } from "./sniff.ts";
import { serveSyslog } from "./syslog.ts";

export type { ServerAuth, ServerOptions, ServerSyslog } from "./options.ts";

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
  #sessions = new Set<Session>();
  #refusals: Refusals;
  #nextId = 1;
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #closing = false;
  #acceptLoops: Promise<void>[] = [];
  #handlers = new Map<Conn, Promise<void>>();

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
      audit: o.audit,
      hub: new ChatHub((line) => o.onChat?.(line)),
      cache: new DigestCache(),
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
  }

  /** Connections currently open. */
  get connections(): number {
    return this.#sessions.size;
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
      onHandshakeError: (peer: Addr, message: string) =>
        o.audit.write("refused", {
          peer: formatAddr(peer),
          reason: `TLS handshake failed: ${message}`,
        }),
    };
    this.#listeners = await bindAll(o.net, {
      hosts: o.hosts,
      port: o.port,
      tls,
    });
    const addrs = this.#listeners.map((l) => l.addr);
    if (o.syslog !== undefined) {
      try {
        this.#syslogListeners = await bindAll(o.net, {
          hosts: o.hosts,
          port: o.syslog.port,
        });
      } catch (err) {
        for (const l of this.#listeners) l.close();
        this.#listeners = [];
        throw err;
      }
    }
    o.audit.write("listening", {
      addrs: addrs.map(formatAddr),
      ...(o.syslog &&
        { syslog: this.#syslogListeners.map((l) => formatAddr(l.addr)) }),
      allow: o.allowlist.describe(),
      root: o.jail.root,
      maxConns: o.maxConns,
      plain: o.plain,
      tls: o.tls !== undefined,
      clientAuth: [
        ...(o.auth?.certs ? ["certificate"] : []),
        ...(o.auth?.tokens ? ["token"] : []),
      ],
    });
    for (const l of this.#listeners) this.#acceptOn(l, "main");
    for (const l of this.#syslogListeners) this.#acceptOn(l, "syslog");
    this.#sweeper = setInterval(() => this.sweep(), sweepInterval(o));
    return addrs;
  }

  /**
   * Sends an operator line to every chat client.
   *
   * @param text The line.
   */
  say(text: string): void {
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
    // Readers paused by the chat rate whose tokens are due (the rate's own
    // timer does this too; a fake clock moves only here).
    this.#ctx.chatRate?.poke();
    // Summaries of audit lines the rate limit held back, once their peer
    // has gone quiet: nothing held back stays unaccounted for long.
    this.#o.audit.flush();
  }

  /**
   * Stops listening, closes every connection, and waits for handlers to end.
   */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    clearInterval(this.#sweeper);
    for (const l of this.#listeners) l.close();
    for (const l of this.#syslogListeners) l.close();
    this.#refusals.close();
    this.#ctx.chatRate?.close();
    for (const s of this.#sessions) s.close("server shutting down");
    await Promise.allSettled(this.#acceptLoops);
    await Promise.allSettled([...this.#handlers.values()]);
    this.#o.audit.flush(true);
    this.#o.audit.write("shutdown", {});
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
    try {
      // Syslog connections are marked in every audit line about them.
      const tag = port === "syslog" ? { port } : undefined;
      const verdict = guard(conn, this.#o, {
        sessions: this.#sessions.size,
        port,
      });
      if ("code" in verdict) {
        this.#refusals.refuse(conn, verdict, tag);
        return;
      }
      const s = new Session(this.#ctx, {
        name: `c${this.#nextId++}`,
        conn,
        identity: verdict.identity,
      });
      this.#sessions.add(s);
      this.#o.audit.write("accepted", {
        peer: s.peer,
        name: s.name,
        ...(s.identity && { identity: s.identity }),
        ...tag,
      });
      const started = Date.now();
      try {
        await (tag ? this.#syslog(s) : serveConnection(s));
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
        this.#sessions.delete(s);
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
    } catch {
      // Audited where it happened; a handler never rejects.
    } finally {
      this.#handlers.delete(conn);
    }
  }

  /** Serves a connection on the syslog port (see `syslog.ts`). */
  async #syslog(s: Session) {
    const reason = await serveSyslog({
      conn: s.conn,
      peer: s.peer,
      name: s.name,
      read: (buf) => s.read(buf),
    }, {
      vault: this.#o.vault!,
      audit: this.#o.audit,
      peerKey: peerIdentity(s.conn.remoteAddr.hostname),
      ...(this.#o.syslog?.maxMessage !== undefined &&
        { maxMessage: this.#o.syslog.maxMessage }),
    });
    s.reason ??= reason;
  }
}
