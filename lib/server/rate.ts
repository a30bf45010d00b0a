/**
 * Rates enforced by backpressure: a peer over its rate is not read until the
 * rate allows, so nothing it sent is dropped and nothing piles up.
 *
 * @module
 */

import { closedWhileWaiting, waitInLine } from "./wait_line.ts";

/** Options for {@linkcode RateLimiter}. */
export interface RateLimiterOptions {
  /** Tokens a key earns per second. */
  perSecond: number;
  /** Most tokens a key holds: what it may spend at once. */
  burst: number;
  /** Tokens all keys together earn per second. @default {Infinity} */
  globalPerSecond?: number;
  /** Most tokens all keys together hold. @default {globalPerSecond} */
  globalBurst?: number;
  /**
   * Keys remembered; past it the least recently used is forgotten (and
   * starts full again). @default {4096}
   */
  maxKeys?: number;
  /** The clock, in milliseconds. @default {Date.now} */
  now?: () => number;
}

interface Bucket {
  tokens: number;
  at: number;
}

interface Waiter {
  key: string;
  resolve: () => void;
}

/** A timer that never keeps the process alive on its own. */
function unrefTimer(
  fn: () => void,
  ms: number,
): ReturnType<typeof setTimeout> {
  const timer = setTimeout(fn, ms);
  (timer as { unref?: () => void }).unref?.();
  return timer;
}

/**
 * Token buckets per key (a peer address) and one for all keys together.
 * {@linkcode RateLimiter.prototype.tryTake} spends a token of both, if
 * there are; {@linkcode RateLimiter.prototype.take} waits for them, which is
 * how a reader stops reading a peer over its rate.
 *
 * Waiters are woken by a timer set for the earliest moment a token is due,
 * and by {@linkcode RateLimiter.prototype.poke}, which the server's sweep
 * calls (on a fake clock, tests advance the clock and sweep).
 *
 * @example Two lines at once, then one per 100 ms
 * ```ts
 * import { RateLimiter } from "./rate.ts";
 * import assert from "node:assert/strict";
 *
 * let t = 0;
 * const rate = new RateLimiter({ perSecond: 10, burst: 2, now: () => t });
 * assert.ok(rate.tryTake("10.0.0.5"));
 * assert.ok(rate.tryTake("10.0.0.5"));
 * assert.equal(rate.tryTake("10.0.0.5"), false);
 * assert.ok(rate.tryTake("10.0.0.6"), "another address has its own bucket");
 * t += 100;
 * assert.ok(rate.tryTake("10.0.0.5"));
 * ```
 */
export class RateLimiter {
  readonly #perSecond: number;
  readonly #burst: number;
  readonly #globalPerSecond: number;
  readonly #globalBurst: number;
  readonly #maxKeys: number;
  readonly #now: () => number;
  #keys = new Map<string, Bucket>();
  /** Undefined without a limit for all keys together. */
  #global: Bucket | undefined;
  #waiters: Waiter[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;

  /**
   * Makes a limiter whose buckets all start full.
   *
   * @param options Rates, bursts, memory bound and clock.
   * @throws {RangeError} For a rate or burst that is not positive.
   */
  constructor(options: RateLimiterOptions) {
    this.#perSecond = options.perSecond;
    this.#burst = options.burst;
    this.#globalPerSecond = options.globalPerSecond ?? Infinity;
    this.#globalBurst = options.globalBurst ?? this.#globalPerSecond;
    for (
      const [name, value] of [
        ["perSecond", this.#perSecond],
        ["burst", this.#burst],
        ["globalPerSecond", this.#globalPerSecond],
        ["globalBurst", this.#globalBurst],
      ] as const
    ) {
      if (!(value > 0)) {
        throw new RangeError(
          `Invalid rate limit: ${name} must be positive, got ${value}`,
        );
      }
    }
    this.#maxKeys = options.maxKeys ?? 4096;
    this.#now = options.now ?? Date.now;
    this.#global = this.#globalPerSecond === Infinity
      ? undefined
      : { tokens: this.#globalBurst, at: this.#now() };
  }

  /** Readers waiting for a token now. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /**
   * Spends one token of `key` and one of all keys together, if both have one.
   *
   * @param key The peer address.
   * @returns Whether the token was spent.
   */
  tryTake(key: string): boolean {
    const now = this.#now();
    const all = this.#global;
    if (all) refill(all, now, this.#globalPerSecond, this.#globalBurst);
    const own = this.#bucket(key, now);
    if (own.tokens < 1 || (all !== undefined && all.tokens < 1)) return false;
    own.tokens -= 1;
    if (all) all.tokens -= 1;
    return true;
  }

  /**
   * Spends a token of `key`, waiting (in order with the other waiters) until
   * it may: the caller reads nothing more from the peer meanwhile.
   *
   * @param key The peer address.
   * @param signal Ends the wait (the connection was closed).
   * @returns When the token was spent.
   * @throws {ConnectionClosedError} When `signal` aborts first.
   */
  take(key: string, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(closedWhileWaiting(WAITS_FOR));
    if (this.#waiters.length === 0 && this.tryTake(key)) {
      return Promise.resolve();
    }
    const taken = waitInLine<void, Waiter>(
      this.#waiters,
      (resolve) => ({ key, resolve }),
      WAITS_FOR,
      { signal },
    );
    this.#arm();
    return taken;
  }

  /**
   * Spends tokens for the waiters that can have one again, in order, and
   * wakes them; forgets keys that are full again (memory follows the active
   * peers).
   */
  poke(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    // Emptied in place: an aborted waiter leaves this same array.
    const waiters = this.#waiters.splice(0);
    let woken = 0;
    for (const w of waiters) {
      if (this.tryTake(w.key)) {
        w.resolve();
        woken++;
      } else this.#waiters.push(w);
    }
    const now = this.#now();
    const waited = new Set(this.#waiters.map((w) => w.key));
    for (const [key, b] of this.#keys) {
      refill(b, now, this.#perSecond, this.#burst);
      if (b.tokens >= this.#burst && !waited.has(key)) this.#keys.delete(key);
    }
    if (woken > 0) this.#arm();
  }

  /** Stops the timer; waiters are ended by their signals. */
  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #bucket(key: string, now: number): Bucket {
    let b = this.#keys.get(key);
    if (b === undefined) {
      if (this.#keys.size >= this.#maxKeys) {
        this.#keys.delete(this.#keys.keys().next().value!);
      }
      b = { tokens: this.#burst, at: now };
    } else {
      this.#keys.delete(key); // re-inserted below: the map stays LRU-ordered
      refill(b, now, this.#perSecond, this.#burst);
    }
    this.#keys.set(key, b);
    return b;
  }

  /**
   * Sets the timer for when the first waiter's token is due. It fires once:
   * if the clock did not move as far (a fake clock), the sweep's poke takes
   * over.
   */
  #arm() {
    if (this.#timer !== undefined || this.#waiters.length === 0) return;
    const global = this.#global?.tokens ?? Infinity;
    let ms = Infinity;
    for (const w of this.#waiters) {
      const own = this.#keys.get(w.key)?.tokens ?? this.#burst;
      ms = Math.min(ms, (1 - own) * 1000 / this.#perSecond);
    }
    if (global < 1) {
      ms = Math.max(ms, (1 - global) * 1000 / this.#globalPerSecond);
    }
    ms = Math.max(ms, 0);
    // +1 ms: timers may fire a little early.
    this.#timer = unrefTimer(() => {
      this.#timer = undefined;
      this.poke();
    }, Math.ceil(ms) + 1);
  }
}

function refill(b: Bucket, now: number, perSecond: number, burst: number) {
  b.tokens = Math.min(
    burst,
    b.tokens + Math.max(0, now - b.at) * perSecond / 1000,
  );
  b.at = now;
}

/** What a chat reader waiting for the {@linkcode RateLimiter} waits for. */
const WAITS_FOR = "its chat rate";
