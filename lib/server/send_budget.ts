/**
 * The memory all file transfers together may hold in send buffers.
 *
 * @module
 */

import { closedWhileWaiting, waitInLine } from "./wait_line.ts";
import type { SendBuffers } from "../file_sender.ts";

/**
 * The smallest send buffer a transfer is given: what every connection can
 * always have. A grant for less (a client's small `maxFrameSize`) still
 * counts as this much.
 */
export const MIN_SEND_CHUNK = 16 * 1024;

/** Options for {@linkcode SendBudget}. */
export interface SendBudgetOptions {
  /**
   * Connections that can always get {@linkcode MIN_SEND_CHUNK} at once (the
   * server's `maxConns`): that much of the budget is kept back from larger
   * grants, so that transfers stalled on peers that do not read can make the
   * others' chunks small, never make them wait. @default {0}
   */
  reserveFor?: number;
}

interface Waiter {
  max: number;
  resolve: (grant: number) => void;
}

/**
 * A budget of bytes that file transfers take their send buffers from. A
 * transfer takes one grant and may grow it; a grant is as large as asked
 * while the budget has room, smaller (down to {@linkcode MIN_SEND_CHUNK})
 * when it is tight. Room for `reserveFor` minimum grants is kept back, so a
 * new transfer never waits while fewer than `reserveFor` hold grants; past
 * that (a budget smaller than `reserveFor` minimum chunks), takers wait in
 * order until one is returned, or until their signal aborts.
 *
 * @example Two transfers share a small budget
 * ```ts
 * import { MIN_SEND_CHUNK, SendBudget } from "./send_budget.ts";
 * import assert from "node:assert/strict";
 *
 * const budget = new SendBudget(4 * MIN_SEND_CHUNK, { reserveFor: 2 });
 * const a = await budget.take(1 << 20);
 * assert.equal(a, 3 * MIN_SEND_CHUNK); // room for one more minimum is kept
 * const b = await budget.take(1 << 20);
 * assert.equal(b, MIN_SEND_CHUNK);
 * budget.give(a);
 * // Grown into what `a` gave back, less one minimum kept for a newcomer.
 * assert.equal(budget.grow(b, 1 << 20), 3 * MIN_SEND_CHUNK);
 * ```
 */
export class SendBudget {
  readonly #total: number;
  readonly #reserveSlots: number;
  #used = 0;
  #holders = 0;
  #waiters: Waiter[] = [];

  /**
   * Makes an unused budget.
   *
   * @param total Bytes, at least {@linkcode MIN_SEND_CHUNK}.
   * @param options How many connections keep a minimum grant in reserve.
   * @throws {RangeError} For a total below {@linkcode MIN_SEND_CHUNK}.
   */
  constructor(total: number, options: SendBudgetOptions = {}) {
    if (!Number.isSafeInteger(total) || total < MIN_SEND_CHUNK) {
      throw new RangeError(
        `Invalid send budget ${total}: it must be an integer of at least ${MIN_SEND_CHUNK} bytes`,
      );
    }
    this.#total = total;
    this.#reserveSlots = Math.min(
      options.reserveFor ?? 0,
      Math.floor(total / MIN_SEND_CHUNK),
    );
  }

  /** The budget, in bytes. */
  get total(): number {
    return this.#total;
  }

  /** Bytes granted now (a grant below the minimum counts as the minimum). */
  get used(): number {
    return this.#used;
  }

  /** Grants held now. */
  get holders(): number {
    return this.#holders;
  }

  /** Takers waiting for room. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /**
   * Takes a grant of at most `max` bytes: all of it if there is room, less
   * (at least {@linkcode MIN_SEND_CHUNK}, or `max` if smaller) when the
   * budget is tight, or waits for room in order.
   *
   * @param max Bytes wanted, at least 1.
   * @param signal Stops the wait (the connection was closed).
   * @returns The grant, in bytes; give it back with {@linkcode SendBudget.prototype.give}.
   * @throws {ConnectionClosedError} When `signal` aborts before a grant.
   */
  take(max: number, signal?: AbortSignal): Promise<number> {
    if (signal?.aborted) return Promise.reject(closedWhileWaiting(WAITS_FOR));
    if (this.#waiters.length === 0) {
      const grant = this.#tryTake(max);
      if (grant > 0) return Promise.resolve(grant);
    }
    return waitInLine<number, Waiter>(
      this.#waiters,
      (resolve) => ({ max, resolve }),
      WAITS_FOR,
      // The first in line may have been all that held the others back.
      { signal, onLeave: () => this.#wake() },
    );
  }

  /**
   * Grows a grant toward `max` with what the budget has spare (nothing when
   * others wait). Never waits.
   *
   * @param held The grant held now.
   * @param max Bytes wanted.
   * @returns The new grant, at least `held`.
   */
  grow(held: number, max: number): number {
    if (max <= held || this.#waiters.length > 0) return held;
    const spare = this.#total - this.#used -
      MIN_SEND_CHUNK * Math.max(0, this.#reserveSlots - this.#holders);
    const grant = Math.min(max, cost(held) + Math.max(0, spare));
    if (grant <= held) return held;
    this.#used += cost(grant) - cost(held);
    return grant;
  }

  /**
   * Returns a grant, and hands the room to waiting takers in order.
   *
   * @param grant What {@linkcode SendBudget.prototype.take} or
   * {@linkcode SendBudget.prototype.grow} returned last.
   */
  give(grant: number): void {
    this.#used -= cost(grant);
    this.#holders--;
    this.#wake();
  }

  /**
   * A view of this budget for one transfer, waiting no longer than `signal`.
   *
   * @param signal Aborted when the transfer's connection closes.
   * @returns What `sendFile` takes as its `buffers` option.
   */
  for(signal: AbortSignal): SendBuffers {
    return {
      take: (max) => this.take(max, signal),
      grow: (held, max) => this.grow(held, max),
      give: (grant) => this.give(grant),
    };
  }

  /** A grant for a new holder, or 0 when there is no room. */
  #tryTake(max: number): number {
    const room = this.#total - this.#used -
      MIN_SEND_CHUNK * Math.max(0, this.#reserveSlots - this.#holders - 1);
    if (room < MIN_SEND_CHUNK) return 0;
    const grant = Math.max(1, Math.min(max, room));
    this.#used += cost(grant);
    this.#holders++;
    return grant;
  }

  #wake() {
    while (this.#waiters.length > 0) {
      const grant = this.#tryTake(this.#waiters[0]!.max);
      if (grant === 0) return;
      this.#waiters.shift()!.resolve(grant);
    }
  }
}

/** What a grant counts against the budget. */
function cost(grant: number): number {
  return Math.max(grant, MIN_SEND_CHUNK);
}

/** What a transfer waiting for the {@linkcode SendBudget} waits for. */
const WAITS_FOR = "a send buffer";
