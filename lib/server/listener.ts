/**
 * The edge of the server: binding every host, the accept loops, the guard
 * each connection passes before a byte of it is read (allowlist, connection
 * limit, client certificate), refusals that drain without a timer each, and
 * the sweep that enforces every deadline.
 *
 * @module
 */

import type {
  AcceptErrorEvent,
  Conn,
  Listener,
  Net,
  ServerTlsOptions,
} from "../net/types.ts";
import type { AuditLog } from "../audit.ts";
import { checkClientCertificate } from "../tls.ts";
import { encodeText } from "../protocol.ts";
import { Code, errorLine, isCode } from "../errors.ts";
import type { ResolvedServerOptions } from "./options.ts";
import {
  errorMessage,
  formatAddr,
  peerIdentity,
  type Session,
} from "./session.ts";

/**
 * A refused connection's notice is followed by a drain of what the peer sent
 * (closing with unread input resets the connection, and `nc` then drops the
 * line unread), for at most this long (plus one sweep tick).
 */
const REFUSAL_LINGER_MS = 1000;
/** Most bytes drained from a refused connection. */
const REFUSAL_DRAIN_MAX = 65_536;
/** The one buffer every refused connection's input is drained into. */
const DISCARD = new Uint8Array(4096);
/** Distinct refusal lines kept encoded. */
const NOTICE_CACHE_MAX = 16;

/** Which port a connection came in on. */
export type Port = "main" | "syslog";

/** Options for {@linkcode bindAll}. */
export interface BindOptions {
  /** Addresses, bound in order. */
  hosts: readonly string[];
  /** Port; with 0, every host shares the port the first one got. */
  port: number;
  /** Speak TLS 1.3 only. */
  tls?: ServerTlsOptions | undefined;
  /** Told once when descriptors run out and once when they are back. */
  onAcceptError?: (event: AcceptErrorEvent) => void;
  /** What a peer accepted from the descriptor reserve reads before the close. */
  busyNotice?: Uint8Array;
}

/**
 * Binds every host on one port.
 *
 * @param net The runtime's sockets.
 * @param options Hosts, port, TLS.
 * @returns One listener per host, in order.
 * @throws {AddressInUseError} When a port is taken (after closing the
 * listeners already bound).
 */
export async function bindAll(
  net: Net,
  options: BindOptions,
): Promise<Listener[]> {
  const listeners: Listener[] = [];
  let port = options.port;
  try {
    for (const hostname of options.hosts) {
      const l = await net.listen({
        hostname,
        port,
        ...(options.tls && { tls: options.tls }),
        ...(options.onAcceptError && { onAcceptError: options.onAcceptError }),
        ...(options.busyNotice && { busyNotice: options.busyNotice }),
      });
      // With port 0, later hosts share the port the first one got.
      if (port === 0) port = l.addr.port;
      listeners.push(l);
    }
  } catch (err) {
    for (const l of listeners) l.close();
    throw err;
  }
  return listeners;
}

/** Options for {@linkcode acceptAll}. */
export interface AcceptOptions {
  /** Takes each accepted connection; must not throw. */
  accept: (conn: Conn) => void;
  /** True once the server is closing: connections are then closed at once. */
  closing: () => boolean;
  /** Where a failing listener is reported (unless the server is closing). */
  audit: AuditLog;
}

/**
 * Accepts connections until the listener is closed.
 *
 * @param listener The listener.
 * @param options Where connections go.
 * @returns When the listener is closed or fails. Never rejects.
 */
export async function acceptAll(
  listener: Listener,
  options: AcceptOptions,
): Promise<void> {
  try {
    for await (const conn of listener) {
      if (options.closing()) {
        conn.close();
        continue;
      }
      options.accept(conn);
    }
  } catch (err) {
    if (!options.closing()) {
      options.audit.write("error", { message: errorMessage(err) });
    }
  }
}

/** Why the guard refused a connection: the ERR line's code and reason. */
export interface Refusal {
  /** e.g. `ERR_ACCESS_DENIED`, sent as `ERR ACCESS_DENIED …`. */
  readonly code: Code;
  /** One line for the peer and the audit log. */
  readonly reason: string;
}

/** Options for {@linkcode guard}. */
export interface GuardOptions {
  /** Connections open now. */
  sessions: number;
  /** Connections open now from this peer's address (see {@linkcode PeerSlots}). */
  peerSessions: number;
  /** The port it came in on. */
  port: Port;
}

/**
 * Decides whether a connection may be served, at TCP accept and before a
 * byte of it is read or written (on a TLS port: before any TLS byte, so a
 * refused peer never sees a ServerHello): the allowlist (and deny list),
 * then the connection limit.
 *
 * @param conn The accepted connection.
 * @param o The server's options.
 * @param options Sessions open now and the port.
 * @returns The refusal, or undefined to go on.
 */
export function guard(
  conn: Conn,
  o: ResolvedServerOptions,
  options: GuardOptions,
): Refusal | undefined {
  if (!o.allowlist.check(conn.remoteAddr.hostname)) {
    return {
      code: Code.ERR_ACCESS_DENIED,
      reason: "access refused by server",
    };
  }
  if (options.sessions >= o.maxConns) {
    return { code: Code.ERR_BUSY, reason: "server busy: too many connections" };
  }
  if (options.peerSessions >= o.maxConnsPerPeer) {
    return {
      code: Code.ERR_BUSY,
      reason: "server busy: too many connections from this address",
    };
  }
  return undefined;
}

/**
 * Connections open per peer address on one port (`maxConnsPerPeer`),
 * from the guard's yes until the connection is closed, its TLS handshake
 * included. Keyed like the chat rate: an IPv4-mapped address counts as its
 * IPv4 address.
 */
export class PeerSlots {
  #open = new Map<string, number>();

  /**
   * Connections open from an address.
   *
   * @param hostname The peer's address.
   * @returns How many.
   */
  count(hostname: string): number {
    return this.#open.get(peerIdentity(hostname)) ?? 0;
  }

  /**
   * Counts a connection from an address, until the function it returns
   * is called (once).
   *
   * @param hostname The peer's address.
   * @returns Gives the slot back.
   */
  take(hostname: string): () => void {
    const key = peerIdentity(hostname);
    this.#open.set(key, (this.#open.get(key) ?? 0) + 1);
    let given = false;
    return () => {
      if (given) return;
      given = true;
      const n = this.#open.get(key)! - 1;
      if (n === 0) this.#open.delete(key);
      else this.#open.set(key, n);
    };
  }
}

/**
 * After the TLS handshake, on a server that requires one: the client
 * certificate. The main port requires it; so does the syslog port when it
 * speaks TLS (RFC 5425's mutual authentication).
 *
 * @param conn The connection, its handshake done.
 * @param o The server's options.
 * @param port The port it came in on.
 * @returns The refusal, or who the certificate says the client is.
 */
export function checkCertificate(
  conn: Conn,
  o: ResolvedServerOptions,
  port: Port,
): Refusal | { identity: string | undefined } {
  // A plain-TCP syslog port has the allowlist as its only guard.
  if (o.auth?.certs && (port === "main" || o.syslog?.tls)) {
    const verdict = checkClientCertificate(conn.tls, o.auth.certs);
    if ("code" in verdict) {
      // lib/tls.ts names its refusals as text lines spell them.
      const code = `ERR_${verdict.code}`;
      return {
        code: isCode(code) ? code : Code.ERR_CERT_REJECTED,
        reason: verdict.reason,
      };
    }
    return { identity: verdict.identity };
  }
  return { identity: undefined };
}

/**
 * Refused connections: each gets one short text line, then whatever the peer
 * already sent is drained (at most 64 KiB, for at most a second) before the
 * close. Nothing the peer sent is ever interpreted. Floods are made of these,
 * so there is no timer, buffer or notice per connection: the sweep closes
 * whatever is still draining after its deadline.
 */
export class Refusals {
  #audit: AuditLog;
  #now: () => number;
  /** Connections still draining, with the time they are closed regardless. */
  #draining = new Map<Conn, number>();
  /** Refusal lines by code and reason, encoded once. */
  #notices = new Map<string, Uint8Array>();

  /**
   * Makes an empty set of refusals.
   *
   * @param audit Where each refusal is logged.
   * @param now The clock of the drain deadlines.
   */
  constructor(audit: AuditLog, now: () => number) {
    this.#audit = audit;
    this.#now = now;
  }

  /**
   * Logs the refusal, writes `ERR <CODE> <reason>` (`errorLine`),
   * half-closes, and drains.
   *
   * @param conn The refused connection.
   * @param refusal Code and reason.
   * @param tag Extra audit fields (the syslog port's `{ listener: "syslog" }`).
   */
  refuse(conn: Conn, refusal: Refusal, tag?: { listener: string }): void {
    const { code, reason } = refusal;
    this.#audit.write("refused", {
      peer: formatAddr(conn.remoteAddr),
      code,
      reason,
      ...tag,
    });
    this.#draining.set(conn, this.#now() + REFUSAL_LINGER_MS);
    const key = `${code} ${reason}`;
    let notice = this.#notices.get(key);
    if (notice === undefined) {
      notice = encodeText(errorLine({ code, message: reason }));
      // A few fixed lines repeat; certificate problems name dates and may
      // not, so the cache stays small whatever the peers send.
      if (this.#notices.size < NOTICE_CACHE_MAX) this.#notices.set(key, notice);
    }
    drain(conn, notice).catch(() => {}).finally(() => {
      this.#draining.delete(conn);
      conn.close();
    });
  }

  /**
   * Closes every refused connection past its drain deadline.
   *
   * @param now The current time.
   */
  sweep(now: number): void {
    for (const [conn, deadline] of this.#draining) {
      // Insertion order is deadline order: stop at the first still due later.
      if (deadline > now) break;
      this.#draining.delete(conn);
      conn.close();
    }
  }

  /** Closes every refused connection at once. */
  close(): void {
    for (const conn of this.#draining.keys()) conn.close();
  }
}

async function drain(conn: Conn, notice: Uint8Array) {
  await conn.write(notice);
  await conn.closeWrite();
  for (let drained = 0; drained < REFUSAL_DRAIN_MAX;) {
    // What a refused peer sent is never looked at, so every drain can share one buffer.
    const n = await conn.read(DISCARD);
    if (n === null) break;
    drained += n;
  }
}

/**
 * Closes every session past its handshake (or linger) deadline, or idle
 * longer than `idleTimeoutMs`, with that reason.
 *
 * @param sessions The open sessions.
 * @param options The current time and the idle limit.
 */
export function sweepSessions(
  sessions: Iterable<Session>,
  options: { now: number; idleTimeoutMs: number },
): void {
  const { now, idleTimeoutMs } = options;
  for (const s of sessions) {
    if (s.deadline !== undefined && now > s.deadline) {
      s.close("handshake timeout");
    } else if (now - s.lastActive > idleTimeoutMs) {
      s.close("idle timeout");
    }
  }
}

/**
 * How often the sweep runs: a quarter of the shorter timeout, from 50 ms
 * to 1 s.
 *
 * @param o The server's options.
 * @returns The interval, in milliseconds.
 */
export function sweepInterval(o: ResolvedServerOptions): number {
  return Math.max(
    50,
    Math.min(1000, o.handshakeTimeoutMs / 4, o.idleTimeoutMs / 4),
  );
}
