/**
 * The audit log: one JSON object per line, appended to a sink.
 *
 * @module
 */

import { stringifySafe } from "./text.ts";

/** Audit events. */
export type AuditEvent =
  | "listening"
  | "accepted"
  | "refused"
  | "get_started"
  | "get_finished"
  | "chat"
  | "error"
  | "closed"
  | "shutdown"
  | string;

/** Receives each finished log line (without the newline). */
export type AuditSink = (line: string) => void;

/** How many lines of one event kind one peer address may write. */
export interface AuditLimit {
  /** Lines a key may write at once before it is limited. @default {100} */
  burst?: number;
  /** Lines a key earns back per second. @default {10} */
  perSecond?: number;
  /** Lines of one event kind, all peers together, per second. @default {200} */
  globalPerSecond?: number;
  /** Peer keys remembered; the least recently used is summarised and forgotten. @default {4096} */
  maxKeys?: number;
}

/**
 * The limit of `moat serve --audit-rate N`: `N` lines per second per peer
 * address and event kind, a burst of ten seconds' worth, and `20 × N` for
 * all peers together.
 *
 * @example
 * ```ts
 * import { auditRateLimit } from "./audit.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(auditRateLimit(10), {
 *   perSecond: 10,
 *   burst: 100,
 *   globalPerSecond: 200,
 * });
 * assert.equal(auditRateLimit(0), false);
 * ```
 *
 * @param perSecond Lines per second per peer and event kind; 0 for no limit.
 * @returns The `limit` option of {@linkcode AuditLog}.
 */
export function auditRateLimit(perSecond: number): AuditLimit | false {
  if (perSecond === 0) return false;
  return {
    perSecond,
    burst: 10 * perSecond,
    globalPerSecond: 20 * perSecond,
  };
}

/** Options for {@linkcode AuditLog}. */
export interface AuditLogOptions {
  /** Rate limit for events about a peer; `false` writes every line. @default {{}} */
  limit?: AuditLimit | false;
  /** The clock, in milliseconds. @default {Date.now} */
  now?: () => number;
}

/** One token bucket, and what it held back since its last line. */
interface Bucket {
  tokens: number;
  at: number;
  suppressed: number;
  since: number;
}

/**
 * The address part of a peer field: `"10.0.0.5:4000"` → `"10.0.0.5"`,
 * `"[::1]:4000"` → `"::1"`. Anything else is used whole.
 */
function peerAddress(peer: unknown): string | undefined {
  if (typeof peer !== "string") return undefined;
  const bracketed = /^\[([^\]]*)\]:\d+$/.exec(peer);
  if (bracketed) return bracketed[1];
  const v4 = /^([^:]*):\d+$/.exec(peer);
  return v4 ? v4[1] : peer;
}

/** "host:port" or "[v6]:port", as `formatAddr` writes a peer. */
const PEER_WITH_PORT = /^(?:\[([^\]]*)\]|([^:[\]]*)):(\d{1,5})$/;
/** An IPv4-mapped IPv6 address, `::ffff:a.b.c.d`. */
const V4_MAPPED = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i;

/**
 * A peer's address as the `ip` field shows it: IPv4-mapped IPv6 as IPv4,
 * IPv6 in lower case.
 */
function ipOf(address: string): string {
  return V4_MAPPED.exec(address)?.[1] ?? address.toLowerCase();
}

/**
 * `fields` with `ip` and `port` put right after a `peer` of the form
 * "host:port" or "[v6]:port", so that tools can match the address alone
 * (fail2ban's `<HOST>`, `jq 'select(.ip == …)'`). Fields the caller set
 * itself win; anything else is returned as it is.
 */
function withAddress(fields: Record<string, unknown>): Record<string, unknown> {
  const peer = fields.peer;
  if (typeof peer !== "string" || "ip" in fields || "port" in fields) {
    return fields;
  }
  const m = PEER_WITH_PORT.exec(peer);
  if (!m) return fields;
  return { peer, ip: ipOf(m[1] ?? m[2]!), port: Number(m[3]), ...fields };
}

/**
 * Writes audit records as JSON lines. `JSON.stringify` escapes every control
 * character, so no field value can break a line or forge another record.
 *
 * A `peer` field of the form "host:port" is followed by `ip` and `port`
 * (IPv4-mapped addresses shown as IPv4). Events about a peer (those with a
 * `peer` field) are rate-limited per event kind and peer address, and per
 * event kind overall, so that a flood of refused connections or chat lines
 * cannot fill the log disk. What a limit
 * holds back is never lost silently: a `suppressed` record names the event,
 * the address (`*` for the overall limit) and the count, written before the
 * key's next line or by {@linkcode AuditLog.flush}.
 *
 * @example Log a refusal
 * ```ts
 * import { AuditLog } from "./audit.ts";
 * import assert from "node:assert/strict";
 * const lines: string[] = [];
 * const log = new AuditLog((l) => lines.push(l));
 * log.write("refused", { peer: "127.0.0.2:5000", reason: "not allowed" });
 * assert.equal(JSON.parse(lines[0]!).event, "refused");
 * ```
 */
export class AuditLog {
  #sink: AuditSink;
  #limit: Required<AuditLimit> | undefined;
  #now: () => number;
  #keys = new Map<string, Bucket>();
  #global = new Map<string, Bucket>();

  /**
   * @param sink Where each line goes.
   * @param options Rate limits and clock.
   */
  constructor(sink: AuditSink, options: AuditLogOptions = {}) {
    this.#sink = sink;
    this.#now = options.now ?? Date.now;
    this.#limit = options.limit === false ? undefined : {
      burst: 100,
      perSecond: 10,
      globalPerSecond: 200,
      maxKeys: 4096,
      ...options.limit,
    };
  }

  /**
   * Appends one record, unless the rate limit holds it back.
   *
   * @param event The event name.
   * @param fields Extra fields; `ts` and `event` come first.
   * @returns Whether the record was written.
   */
  write(event: AuditEvent, fields: Record<string, unknown> = {}): boolean {
    const address = peerAddress(fields.peer);
    if (this.#limit !== undefined && address !== undefined) {
      if (!this.#admit(event, address)) return false;
    }
    this.#emit(event, withAddress(fields));
    return true;
  }

  /**
   * Writes the summaries of keys that went quiet and forgets keys that are
   * full again, so memory follows the active peers. Call it now and then
   * (the server's sweep does), and with `final` at shutdown.
   *
   * @param final Summarise every key that held lines back, quiet or not.
   */
  flush(final = false): void {
    if (this.#limit === undefined) return;
    const now = this.#now();
    for (const map of [this.#keys, this.#global]) {
      const global = map === this.#global;
      for (const [key, b] of map) {
        this.#refill(b, now, global);
        if (b.tokens < 1 && !final) continue;
        if (b.suppressed > 0) this.#summarise(key, b, global);
        if (b.tokens >= this.#capacity(global)) map.delete(key);
      }
    }
  }

  #capacity(global: boolean): number {
    return global ? this.#limit!.globalPerSecond : this.#limit!.burst;
  }

  #refill(b: Bucket, now: number, global: boolean) {
    const rate = global ? this.#limit!.globalPerSecond : this.#limit!.perSecond;
    b.tokens = Math.min(
      this.#capacity(global),
      b.tokens + Math.max(0, now - b.at) * rate / 1000,
    );
    b.at = now;
  }

  /** Takes a token from the overall bucket of `event` and the peer's own. */
  #admit(event: string, address: string): boolean {
    const now = this.#now();
    const key = `${event} ${address}`;
    let own = this.#keys.get(key);
    if (own === undefined) {
      if (this.#keys.size >= this.#limit!.maxKeys) this.#evictOldest();
      own = { tokens: this.#limit!.burst, at: now, suppressed: 0, since: 0 };
    } else {
      this.#keys.delete(key); // re-inserted below: the map stays LRU-ordered
      this.#refill(own, now, false);
    }
    this.#keys.set(key, own);
    let all = this.#global.get(event);
    if (all === undefined) {
      all = {
        tokens: this.#limit!.globalPerSecond,
        at: now,
        suppressed: 0,
        since: 0,
      };
      this.#global.set(event, all);
    } else this.#refill(all, now, true);
    if (own.tokens < 1) return this.#holdBack(own, now);
    if (all.tokens < 1) return this.#holdBack(all, now);
    own.tokens -= 1;
    all.tokens -= 1;
    if (all.suppressed > 0) this.#summarise(event, all, true);
    if (own.suppressed > 0) this.#summarise(key, own, false);
    return true;
  }

  #holdBack(b: Bucket, now: number): false {
    if (b.suppressed === 0) b.since = now;
    b.suppressed++;
    return false;
  }

  #evictOldest() {
    const [key, b] = this.#keys.entries().next().value!;
    this.#keys.delete(key);
    if (b.suppressed > 0) this.#summarise(key, b, false);
  }

  #summarise(key: string, b: Bucket, global: boolean) {
    const space = key.indexOf(" ");
    const address = key.slice(space + 1);
    this.#emit("suppressed", {
      of: global ? key : key.slice(0, space),
      peer: global ? "*" : address,
      ...(!global && { ip: ipOf(address) }),
      count: b.suppressed,
      since: new Date(b.since).toISOString(),
    });
    b.suppressed = 0;
  }

  #emit(event: string, fields: Record<string, unknown>) {
    try {
      // Safe to show on a terminal: see stringifySafe.
      this.#sink(
        stringifySafe({
          ts: new Date(this.#now()).toISOString(),
          event,
          ...fields,
        }),
      );
    } catch {
      // A failing sink (disk full, closed pipe) must not take the server down;
      // the server keeps serving, and the operator sees the gap in the log.
    }
  }
}
