/**
 * The front doors a shipper may use (`moat ship --server a,b,c`): parsing
 * the list, and which door to try next after a failure, and when.
 *
 * The rule (README, "Several front doors"): a failure that is the door's —
 * it cannot be reached, the connection closed or reset, the TLS handshake
 * (or the check of its certificate) or the wait for an answer failed, or it
 * answered with an Error frame that means "not now" (`ERR_BUSY`,
 * `ERR_INTERNAL`, …) — moves to the next door. A refusal that names this
 * shipper or the vault's integrity ({@linkcode SHIP_FATAL}) stops the
 * shipper on any door: another door of the same vault would say the same,
 * and one that does not is not to be believed quietly.
 *
 * @module
 */

import { parseServerAddr, type ServerAddr } from "../client.ts";
import { Code, MoatError, UsageError } from "../errors.ts";
import { DEFAULT_PORT } from "../limits.ts";
import { escapeText } from "../text.ts";

/**
 * Errors that stop the shipper, on whichever door: no reconnect, here or
 * at another door of the same vault, can fix them. Not ERR_SEQ_GAP: the
 * shipper always resends from the server's lastSeq, so a gap can only
 * follow a server-side rollback (a failed commit); a reconnect resends from
 * the durable position. Not ERR_TLS_VERIFY: a door that cannot prove itself
 * got nothing, and the next door may.
 */
export const SHIP_FATAL: ReadonlySet<Code> = new Set([
  // The shipper's state and the vault disagree: lines would be lost or
  // skipped.
  Code.ERR_STATE_LOST,
  Code.ERR_VAULT_LOST,
  Code.ERR_NO_VAULT,
  // This shipper is refused.
  Code.ERR_ACCESS_DENIED,
  Code.ERR_AUTH,
  Code.ERR_CERT_REQUIRED,
  Code.ERR_CERT_REJECTED,
  Code.ERR_PROTOCOL,
  // The vault refuses this source (its name, or one source too many) or
  // this shipper's batches: resending cannot change that.
  Code.ERR_SOURCE_NAME,
  Code.ERR_TOO_MANY_SOURCES,
  Code.ERR_TOO_MANY_RECORDS,
  // A vault that rolled back, forked, changed key or failed an audit:
  // never again.
  Code.ERR_ROLLBACK,
]);

/**
 * Whether an error stops the shipper (see {@linkcode SHIP_FATAL}).
 *
 * @param err What a session failed with.
 * @returns True to stop; false to try the next door.
 */
export function isFatal(err: unknown): boolean {
  return err instanceof MoatError && SHIP_FATAL.has(err.code);
}

/** Most front doors one shipper may be given. */
export const MAX_DOORS = 16;

/**
 * The doors in `--server` values: each value one door or several separated
 * by commas; each `HOST`, `HOST:PORT` or `[IPV6]:PORT` (a bare IPv6
 * address gets the default port).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseDoors } from "./doors.ts";
 *
 * assert.deepEqual(parseDoors(["a:1,b", "[::1]:7"]), [
 *   { hostname: "a", port: 1 },
 *   { hostname: "b", port: 4320 },
 *   { hostname: "::1", port: 7 },
 * ]);
 * ```
 *
 * @param values The `--server` values, in order.
 * @param defaultPort The port of a door given without one.
 * @returns At least one door, in order, none twice.
 * @throws {UsageError} For an empty entry, a bad address, a door
 * named twice or more than {@linkcode MAX_DOORS}.
 */
export function parseDoors(
  values: readonly string[],
  defaultPort: number = DEFAULT_PORT,
): ServerAddr[] {
  const doors: ServerAddr[] = [];
  const seen = new Set<string>();
  for (const value of values) {
    for (const part of value.split(",")) {
      const text = part.trim();
      if (text === "") {
        throw new UsageError(
          `Invalid server list "${
            escapeText(value)
          }": an empty entry (expected HOST:PORT,HOST:PORT…)`,
        );
      }
      const door = parseServerAddr(text, defaultPort);
      const name = doorText(door);
      if (seen.has(name)) {
        throw new UsageError(`Server ${escapeText(name)} is given twice`);
      }
      seen.add(name);
      doors.push(door);
    }
  }
  if (doors.length === 0) {
    throw new UsageError("No server given");
  }
  if (doors.length > MAX_DOORS) {
    throw new UsageError(`${doors.length} servers given: at most ${MAX_DOORS}`);
  }
  return doors;
}

/**
 * A door as `host:port`, an IPv6 address in brackets.
 *
 * @param door The door.
 * @returns Its text.
 */
export function doorText(door: ServerAddr): string {
  const host = door.hostname.includes(":") && !door.hostname.startsWith("[")
    ? `[${door.hostname}]`
    : door.hostname;
  return `${host}:${door.port}`;
}

/** Options for {@linkcode DoorRotation}. */
export interface DoorRotationOptions {
  /** Wait after the first full round of failures. @default {200} */
  firstDelayMs?: number;
  /** Longest wait between rounds. @default {10000} */
  maxDelayMs?: number;
  /**
   * A session connected at least this long counts as healthy even if it
   * acknowledged nothing (a quiet log), so its loss starts afresh.
   * @default {10000}
   */
  healthyMs?: number;
  /** The clock. @default {Date.now} */
  now?: () => number;
}

/** Where to go after a failure. */
export interface NextDoor {
  /** The door that failed. */
  from: ServerAddr;
  /** The door to try next (the same one when there is only one). */
  to: ServerAddr;
  /** How long to wait before trying it. */
  delayMs: number;
}

/**
 * Which door a shipper uses, and where it goes after a failure. After a
 * failure it moves to the next door at once; only after every door failed
 * in a row does it wait, doubling the wait each round (200 ms, 400 ms, …,
 * 10 s): so at most one round of doors is tried without a pause, and one
 * door behaves as a single server always did. A session that made progress
 * (acknowledged something, or stayed up {@linkcode DoorRotationOptions.healthyMs})
 * ends the run of failures.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { DoorRotation } from "./doors.ts";
 *
 * const a = { hostname: "a", port: 1 }, b = { hostname: "b", port: 1 };
 * const doors = new DoorRotation([a, b]);
 * assert.deepEqual(doors.failed(), { from: a, to: b, delayMs: 0 });
 * assert.deepEqual(doors.failed(), { from: b, to: a, delayMs: 200 });
 * assert.deepEqual(doors.failed(), { from: a, to: b, delayMs: 0 });
 * assert.deepEqual(doors.failed(), { from: b, to: a, delayMs: 400 });
 * ```
 */
export class DoorRotation {
  readonly doors: readonly ServerAddr[];
  #at = 0;
  /** Failures in a row since the last healthy session. */
  #failures = 0;
  #connectedAt: number | undefined;
  #progressed = false;
  #first: number;
  #max: number;
  #healthy: number;
  #now: () => number;

  /**
   * @param doors The doors, in the order to try them; at least one.
   * @param options Delays and the clock.
   */
  constructor(doors: readonly ServerAddr[], options: DoorRotationOptions = {}) {
    if (doors.length === 0) throw new RangeError("No door to ship to");
    this.doors = doors;
    this.#first = options.firstDelayMs ?? 200;
    this.#max = options.maxDelayMs ?? 10_000;
    this.#healthy = options.healthyMs ?? 10_000;
    this.#now = options.now ?? Date.now;
  }

  /** The door to use now. */
  get current(): ServerAddr {
    return this.doors[this.#at]!;
  }

  /** The current door answered (ShipReady): a session is under way. */
  connected(): void {
    this.#connectedAt = this.#now();
    this.#progressed = false;
  }

  /** The current door acknowledged new records. */
  progressed(): void {
    this.#progressed = true;
  }

  /** The session ended without a failure. */
  succeeded(): void {
    this.#failures = 0;
    this.#connectedAt = undefined;
  }

  /**
   * The session on the current door failed: moves to the next door.
   *
   * @returns The door that failed, the next one and the wait before it.
   */
  failed(): NextDoor {
    const since = this.#connectedAt;
    this.#connectedAt = undefined;
    if (
      since !== undefined &&
      (this.#progressed || this.#now() - since >= this.#healthy)
    ) {
      this.#failures = 0;
    }
    this.#progressed = false;
    this.#failures++;
    const from = this.current;
    this.#at = (this.#at + 1) % this.doors.length;
    const n = this.doors.length;
    const delayMs = this.#failures % n !== 0 ? 0 : Math.min(
      this.#first * 2 ** Math.min(this.#failures / n - 1, 30),
      this.#max,
    );
    return { from, to: this.current, delayMs };
  }
}
