/**
 * What `moat status` reports about a running server: its connections, its
 * vault sources and their liveness, the seal epoch, and recent refusals.
 * The report is one JSON object; `lib/status_socket.ts` carries it.
 *
 * @module
 */

import { ProtocolError } from "../errors.ts";
import type { SealEvent, Vault } from "../vault/store.ts";
import type { SourceWatch } from "./liveness.ts";
import type { Session } from "./session.ts";

/** One open connection. */
export interface ConnectionStatus {
  /** The server's name for it, e.g. "c7". */
  name: string;
  /** "host:port" as the server sees it. */
  peer: string;
  /** The identity it proved (`cert:sha256:…`, `token:NAME`), or null. */
  identity: string | null;
  /** "new", "tls", "handshake", "get", "chat", "ship", "witness", "plain" or "syslog". */
  mode: string;
  /** Mode "ship": the source name it ships, else null. */
  source: string | null;
  /** Bytes read from it. */
  bytesIn: number;
  /** Bytes written to it. */
  bytesOut: number;
  /** When it was accepted, ISO 8601. */
  since: string;
}

/** One vault source. */
export interface SourceStatus {
  /** The peer part of its key: the shipper's address. */
  peer: string;
  /** The identity part of its key, or null. */
  identity: string | null;
  /** The name the shipper gave. */
  name: string;
  /** Records durably stored (its last sequence number). */
  records: number;
  /** Ship connections open now. */
  connections: number;
  /** When the server last heard from it (ISO 8601), or null if not since it started. */
  lastSeen: string | null;
  /** Seconds since a record last arrived, or null if none arrived since the server started. */
  lagSeconds: number | null;
  /** Reported `source_silent` and not back since. */
  silent: boolean;
}

/** The vault's seals. */
export interface SealStatus {
  /** Whether the vault writes seals (set up with `moat vault init`). */
  sealed: boolean;
  /** The epoch of the last seal written, or null before the first. */
  epoch: number | null;
  /** When it was written (ISO 8601), or null. */
  at: string | null;
  /** The message of the last failed seal, if the last attempt failed; else null. */
  failed: string | null;
}

/** What {@linkcode Server.prototype.status} knows. */
export interface ServerStatus {
  /** "moat/VERSION". */
  server: string;
  /** When the server started listening, and now (ISO 8601, server clock). */
  startedAt: string;
  now: string;
  /** Bound addresses, "host:port". */
  listening: string[];
  idleTimeoutMs: number;
  silentAfterMs: number;
  connections: ConnectionStatus[];
  /** The vault's directory, or null without a vault. */
  vault: string | null;
  sources: SourceStatus[];
  /** Connections refused (allowlist, deny rules, busy, client certificate, TLS). */
  refusals: { lastMinute: number; lastHour: number };
}

/** The whole report: the server's status and what the command line adds. */
export interface StatusReport extends ServerStatus {
  /** The serving process. */
  pid: number;
  /** "deno 2.9.6" or "bun 1.4.5". */
  runtime: string;
  /** Null without a vault. */
  seal: SealStatus | null;
}

/**
 * The status of one connection.
 *
 * @param s The session.
 * @returns Its row.
 */
export function connectionStatus(s: Session): ConnectionStatus {
  return {
    name: s.name,
    peer: s.peer,
    identity: s.identity ?? null,
    mode: s.mode,
    source: s.source ?? null,
    bytesIn: s.conn.bytesIn,
    bytesOut: s.conn.bytesOut,
    since: new Date(s.since).toISOString(),
  };
}

/**
 * The status of every source of a vault, sorted by peer and name.
 *
 * @param vault The open vault.
 * @param options The watch of shipping sources, and the time now.
 * @returns One row per source.
 */
export function sourceStatuses(
  vault: Vault,
  options: { watch: SourceWatch; now: number },
): SourceStatus[] {
  const { watch, now } = options;
  const rows = vault.sources().map((source): SourceStatus => {
    const live = watch.liveness(source);
    return {
      peer: source.key.peer,
      identity: source.key.identity ?? null,
      name: source.key.name,
      records: source.lastSeq,
      connections: live.connections,
      lastSeen: live.lastSeen === undefined
        ? null
        : new Date(live.lastSeen).toISOString(),
      lagSeconds: live.lastRecord === undefined
        ? null
        : Math.max(0, Math.floor((now - live.lastRecord) / 1000)),
      silent: live.silent,
    };
  });
  return rows.sort((a, b) =>
    a.peer < b.peer
      ? -1
      : a.peer > b.peer
      ? 1
      : a.name < b.name
      ? -1
      : a.name > b.name
      ? 1
      : 0
  );
}

/**
 * The last seal a vault reported through its `onSeal` callback.
 *
 * @example
 * ```ts
 * import { SealTracker } from "./status.ts";
 * import assert from "node:assert/strict";
 * const seals = new SealTracker();
 * seals.note({ type: "sealed", epoch: 4, time: 0, sources: 1, records: 9 });
 * assert.deepEqual(seals.status(true), {
 *   sealed: true, epoch: 4, at: "1970-01-01T00:00:00.000Z", failed: null,
 * });
 * ```
 */
export class SealTracker {
  #epoch: number | null = null;
  #at: string | null = null;
  #failed: string | null = null;

  /**
   * Takes a seal event (pass it from the vault's `onSeal`).
   *
   * @param event A seal written, or one that failed.
   */
  note(event: SealEvent): void {
    if (event.type === "sealed") {
      this.#epoch = event.epoch;
      this.#at = new Date(event.time).toISOString();
      this.#failed = null;
    } else {
      this.#failed = event.message;
    }
  }

  /**
   * The seal part of the report.
   *
   * @param sealed Whether the vault writes seals.
   * @returns The last seal and the last failure.
   */
  status(sealed: boolean): SealStatus {
    return {
      sealed,
      epoch: this.#epoch,
      at: this.#at,
      failed: this.#failed,
    };
  }
}

/** Seconds of history a {@linkcode RecentCount} keeps. */
const WINDOW_SECONDS = 3600;

/**
 * Counts events over the last hour in one-second buckets: a fixed 14 KiB
 * however many events arrive (refusal floods are made of them).
 *
 * @example
 * ```ts
 * import { RecentCount } from "./status.ts";
 * import assert from "node:assert/strict";
 * const refusals = new RecentCount();
 * refusals.add(0);
 * refusals.add(120_000);
 * assert.equal(refusals.count(120_500, 60), 1);
 * assert.equal(refusals.count(120_500, 3600), 2);
 * ```
 */
export class RecentCount {
  #buckets = new Uint32Array(WINDOW_SECONDS);
  /** The second the newest bucket belongs to. */
  #second = -Infinity;

  /**
   * Counts one event.
   *
   * @param now When it happened, in ms.
   */
  add(now: number): void {
    const second = this.#advance(now);
    this.#buckets[second % WINDOW_SECONDS]!++;
  }

  /**
   * Events in the last `seconds` seconds (this one included).
   *
   * @param now The current time, in ms.
   * @param seconds How far back, at most 3600.
   * @returns The count.
   */
  count(now: number, seconds: number): number {
    const second = this.#advance(now);
    let sum = 0;
    for (let i = 0; i < Math.min(seconds, WINDOW_SECONDS); i++) {
      sum += this.#buckets[(second - i + WINDOW_SECONDS) % WINDOW_SECONDS]!;
    }
    return sum;
  }

  /** Clears the buckets of the seconds that passed; returns the current one. */
  #advance(now: number): number {
    const second = Math.floor(now / 1000);
    // A clock that went back counts into the newest bucket.
    if (second <= this.#second) return this.#second;
    if (second - this.#second >= WINDOW_SECONDS) this.#buckets.fill(0);
    else {
      for (let s = this.#second + 1; s <= second; s++) {
        this.#buckets[s % WINDOW_SECONDS] = 0;
      }
    }
    this.#second = second;
    return second;
  }
}

/**
 * Checks what a status socket answered: every field `moat status` shows,
 * of the right type. Unknown fields are kept; text is not escaped here.
 *
 * @param value The `status` object of the answer.
 * @returns The report.
 * @throws {ProtocolError} Naming the first field that is missing or wrong.
 */
export function decodeStatusReport(value: unknown): StatusReport {
  const r = object(value, "status");
  str(r, "server", "status");
  str(r, "startedAt", "status");
  str(r, "now", "status");
  num(r, "pid", "status");
  str(r, "runtime", "status");
  num(r, "idleTimeoutMs", "status");
  num(r, "silentAfterMs", "status");
  list(r, "listening", "status").forEach((v, i) => {
    if (typeof v !== "string") bad(`status.listening[${i}]`, "a string");
  });
  list(r, "connections", "status").forEach((v, i) => {
    const at = `status.connections[${i}]`;
    const c = object(v, at);
    for (const k of ["name", "peer", "mode", "since"]) str(c, k, at);
    for (const k of ["identity", "source"]) strOrNull(c, k, at);
    for (const k of ["bytesIn", "bytesOut"]) num(c, k, at);
  });
  strOrNull(r, "vault", "status");
  list(r, "sources", "status").forEach((v, i) => {
    const at = `status.sources[${i}]`;
    const s = object(v, at);
    str(s, "peer", at);
    str(s, "name", at);
    strOrNull(s, "identity", at);
    strOrNull(s, "lastSeen", at);
    num(s, "records", at);
    num(s, "connections", at);
    if (s.lagSeconds !== null) num(s, "lagSeconds", at);
    if (typeof s.silent !== "boolean") bad(`${at}.silent`, "true or false");
  });
  if (r.seal !== null) {
    const seal = object(r.seal, "status.seal");
    if (typeof seal.sealed !== "boolean") {
      bad("status.seal.sealed", "true or false");
    }
    if (seal.epoch !== null) num(seal, "epoch", "status.seal");
    strOrNull(seal, "at", "status.seal");
    strOrNull(seal, "failed", "status.seal");
  }
  const refusals = object(r.refusals, "status.refusals");
  num(refusals, "lastMinute", "status.refusals");
  num(refusals, "lastHour", "status.refusals");
  return r as unknown as StatusReport;
}

function bad(at: string, what: string): never {
  throw new ProtocolError(`Cannot read the status: ${at} must be ${what}`);
}

function object(v: unknown, at: string): Record<string, unknown> {
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    bad(at, "an object");
  }
  return v as Record<string, unknown>;
}

function list(o: Record<string, unknown>, k: string, at: string): unknown[] {
  const v = o[k];
  if (!Array.isArray(v)) bad(`${at}.${k}`, "a list");
  return v;
}

function str(o: Record<string, unknown>, k: string, at: string): void {
  if (typeof o[k] !== "string") bad(`${at}.${k}`, "a string");
}

function strOrNull(o: Record<string, unknown>, k: string, at: string): void {
  if (o[k] !== null && typeof o[k] !== "string") {
    bad(`${at}.${k}`, "a string or null");
  }
}

function num(o: Record<string, unknown>, k: string, at: string): void {
  const v = o[k];
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) {
    bad(`${at}.${k}`, "a non-negative number");
  }
}
