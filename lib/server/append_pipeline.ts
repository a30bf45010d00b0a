/**
 * Pipelined appends to one vault source, shared by the ship path and the
 * syslog port.
 *
 * @module
 */

import type {
  AppendBatch,
  AppendOptions,
  AppendRecord,
  VaultSource,
} from "../vault/store.ts";
import { closedWhileWaiting, waitInLine } from "./wait_line.ts";

/** Appends one connection may have waiting for the vault at once. */
export const APPEND_IN_FLIGHT = 8;

/**
 * What the appends of every connection together may hold in flight, in
 * bytes ({@linkcode appendCost}): without it, 8 appends per connection
 * times every connection.
 */
export const DEFAULT_APPEND_BUDGET = 16 * 1024 * 1024;

/**
 * What one record costs in flight beyond its line: its decoded form, and
 * its encoding and chain hash in the vault until the commit.
 */
const RECORD_COST = 384;

/**
 * What a batch costs against an {@linkcode AppendBudget}.
 *
 * @param records The batch.
 * @returns Its lines' bytes plus a fixed cost per record.
 */
export function appendCost(records: readonly AppendRecord[]): number {
  let cost = 0;
  for (const r of records) cost += RECORD_COST + r.line.length;
  return cost;
}

/**
 * What an encoded batch costs against an {@linkcode AppendBudget}, from its
 * size and record count alone (at least what {@linkcode appendCost} says of
 * its records).
 *
 * @param bytes Its encoded size.
 * @param records How many records it holds.
 * @returns The cost.
 */
export function encodedCost(bytes: number, records: number): number {
  return bytes + records * RECORD_COST;
}

/**
 * Bytes of appends in flight that every connection shares. A batch waits,
 * in order, until it fits; one batch alone always fits, whatever its size.
 *
 * @example
 * ```ts
 * import { AppendBudget } from "./append_pipeline.ts";
 * import assert from "node:assert/strict";
 *
 * const budget = new AppendBudget(1000);
 * await budget.take(800);
 * let second = false;
 * const waiting = budget.take(800).then(() => (second = true));
 * assert.equal(budget.waiting, 1);
 * budget.give(800);
 * await waiting;
 * assert.ok(second);
 * ```
 */
export class AppendBudget {
  readonly #total: number;
  #used = 0;
  #waiters: { cost: number; resolve: () => void }[] = [];
  #onGive: (() => void)[] = [];

  /**
   * @param total Bytes in flight at most (but one batch always fits).
   */
  constructor(total: number) {
    this.#total = total;
  }

  /** The budget, in bytes. */
  get total(): number {
    return this.#total;
  }

  /** Bytes in flight now. */
  get used(): number {
    return this.#used;
  }

  /** Batches waiting to fit. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /**
   * Whether a {@linkcode AppendBudget.prototype.charge} may go in now: room
   * left, and no batch waiting before it.
   */
  get open(): boolean {
    return this.#waiters.length === 0 && this.#used < this.#total;
  }

  /**
   * Takes `cost` at once, without waiting, for a caller that must start its
   * append in the same turn (the syslog port numbers its records from the
   * source's last one) and checked {@linkcode AppendBudget.prototype.open}
   * first; it may pass the total by what it charges then.
   *
   * @param cost From {@linkcode appendCost}; give it back the same way.
   */
  charge(cost: number): void {
    this.#used += cost;
  }

  /**
   * Calls `fn` after every give, once the batches waiting that fit were let
   * in: the moment a caller of {@linkcode AppendBudget.prototype.charge} may
   * find it open again.
   *
   * @param fn The callback.
   */
  onGive(fn: () => void): void {
    this.#onGive.push(fn);
  }

  /**
   * Takes `cost` bytes, waiting in order until they fit.
   *
   * @param cost From {@linkcode appendCost}.
   * @param signal Ends the wait (the connection was closed).
   * @returns When taken; give them back with {@linkcode AppendBudget.prototype.give}.
   * @throws {ConnectionClosedError} When `signal` aborts first.
   */
  take(cost: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(closedWhileWaiting(WAITS_FOR));
    if (this.#waiters.length === 0 && this.#fits(cost)) {
      this.#used += cost;
      return Promise.resolve();
    }
    return waitInLine(
      this.#waiters,
      (resolve) => ({ cost, resolve }),
      WAITS_FOR,
      {
        signal,
        onLeave: () => this.#wake(),
      },
    );
  }

  /**
   * Gives bytes back, and lets waiting batches in, in order.
   *
   * @param cost What was taken.
   */
  give(cost: number): void {
    this.#used -= cost;
    this.#wake();
    for (const fn of this.#onGive) fn();
  }

  #fits(cost: number): boolean {
    return this.#used === 0 || this.#used + cost <= this.#total;
  }

  #wake() {
    while (this.#waiters.length > 0 && this.#fits(this.#waiters[0]!.cost)) {
      const w = this.#waiters.shift()!;
      this.#used += w.cost;
      w.resolve();
    }
  }
}

/** What a batch waiting for the {@linkcode AppendBudget} waits for. */
const WAITS_FOR = "the vault";

/**
 * What {@linkcode AppendPipeline.prototype.orFailure} resolves with once an
 * append has failed.
 */
export const APPEND_FAILED: unique symbol = Symbol("append failed");

/**
 * A batch decoded only once the shared budget has room for it: while it
 * waits, only its encoded bytes are held, not thousands of record objects.
 */
export interface LazyBatch {
  /** What it costs against the budget: see {@linkcode appendCost}. */
  readonly cost: number;
  /** Its records, in sequence order. */
  decode(): readonly AppendRecord[] | AppendBatch;
}

/** Options for {@linkcode AppendPipeline}. */
export interface AppendPipelineOptions {
  /** Most appends waiting at once. @default {8} */
  inFlight?: number;
  /**
   * Told of each append once it is durable, in order, with the highest
   * sequence number it stored; never after an earlier append failed.
   */
  onDurable?: (seq: number) => void;
  /** Bytes in flight shared with other connections' pipelines. */
  budget?: AppendBudget;
  /** Ends a wait for the budget (the connection was closed). */
  signal?: AbortSignal;
}

/**
 * Appends batches to a vault source without waiting for each fsync: the
 * vault keeps their order and commits them in groups, while at most
 * `inFlight` batches wait at once, which bounds memory.
 *
 * The first failure in batch order is the one kept: after a failed commit
 * the vault rolls back, so batches already in flight behind it then fail
 * with a gap that is only a consequence, and nothing after it counts as
 * stored.
 *
 * @example Append two batches and wait for both
 * ```ts ignore
 * const appends = new AppendPipeline(vault.source(key), {
 *   onDurable: (seq) => ack(seq),
 * });
 * await appends.push(batch1, { recvTs: Date.now() });
 * await appends.push(batch2, { recvTs: Date.now() });
 * await appends.finish();
 * ```
 */
export class AppendPipeline {
  #source: VaultSource;
  #limit: number;
  #onDurable: ((seq: number) => void) | undefined;
  #budget: AppendBudget | undefined;
  #signal: AbortSignal | undefined;
  #inFlight = new Set<Promise<void>>();
  #next = 0;
  #failedAt = Infinity;
  #failure: unknown;
  /** Waits of {@linkcode AppendPipeline.prototype.orFailure} in progress. */
  #onFailure = new Set<() => void>();
  #stored = 0;

  /**
   * Makes a pipeline with nothing in flight.
   *
   * @param source The source appended to.
   * @param options In-flight limit and the durable callback.
   */
  constructor(source: VaultSource, options: AppendPipelineOptions = {}) {
    this.#source = source;
    this.#limit = options.inFlight ?? APPEND_IN_FLIGHT;
    this.#onDurable = options.onDurable;
    this.#budget = options.budget;
    this.#signal = options.signal;
  }

  /** Records stored durably so far (before the first failure). */
  get stored(): number {
    return this.#stored;
  }

  /** True once an append has failed. */
  get failed(): boolean {
    return this.#failedAt !== Infinity;
  }

  /** The first failure in batch order; undefined while none failed. */
  get failure(): unknown {
    return this.#failure;
  }

  /**
   * Waits for `promise`, or for an append to fail, whichever comes first. A
   * connection waits for its next read this way: an append fails after the
   * connection went back to reading (a commit's fsync, a segment that
   * cannot be opened), and a shipper waiting for the acknowledgement sends
   * nothing more. (A `Promise.race` against one promise of the failure
   * would keep every value read until the connection ends: each race
   * leaves a reaction on it.)
   *
   * @example
   * ```ts ignore
   * const frame = await appends.orFailure(reader.readFrame());
   * if (frame === APPEND_FAILED) throw appends.failure;
   * ```
   *
   * @param promise What to wait for; a rejection after a failure won is
   * handled (dropped).
   * @returns What `promise` resolves with, or {@linkcode APPEND_FAILED}.
   * @throws What `promise` rejects with, if that comes first.
   */
  orFailure<T>(promise: Promise<T>): Promise<T | typeof APPEND_FAILED> {
    if (this.failed) {
      promise.catch(() => {});
      return Promise.resolve(APPEND_FAILED);
    }
    return new Promise((resolve, reject) => {
      const failed = () => resolve(APPEND_FAILED);
      this.#onFailure.add(failed);
      promise.then((value) => {
        this.#onFailure.delete(failed);
        resolve(value);
      }, (err) => {
        this.#onFailure.delete(failed);
        reject(err);
      });
    });
  }

  /**
   * Starts an append, once the shared budget (if any) has room for it. The
   * vault copies the records before this returns, so the caller may reuse
   * their buffers at once; nothing here keeps them while the append is in
   * flight (records that live that long are promoted by the garbage
   * collector, and a fast shipper's then fill the heap).
   *
   * @param batch Records in sequence order, or a {@linkcode LazyBatch}
   * decoded only once it fits the budget.
   * @param options Receive time.
   * @returns When fewer than `inFlight` appends are waiting.
   * @throws {ConnectionClosedError} When the signal aborts while the batch
   * waits for the budget.
   */
  async push(
    batch: readonly AppendRecord[] | LazyBatch,
    options: AppendOptions,
  ): Promise<void> {
    const budget = this.#budget;
    const lazy = "decode" in batch ? batch : undefined;
    const cost = budget === undefined
      ? 0
      : lazy?.cost ?? appendCost(batch as readonly AppendRecord[]);
    // Without a budget nothing is awaited before the append starts: callers
    // that push several batches in a row (the syslog port) number each from
    // the source's acceptedSeq, which only the append moves.
    if (budget !== undefined) await budget.take(cost, this.#signal);
    const index = this.#next++;
    let count: number;
    let appending: Promise<number>;
    try {
      const records = lazy ? lazy.decode() : batch as readonly AppendRecord[];
      count = records.length;
      appending = this.#source.append(records, options);
    } catch (err) {
      budget?.give(cost);
      throw err;
    }
    if (budget !== undefined) {
      const settled = () => budget.give(cost);
      appending.then(settled, settled);
    }
    const p = appending.then(
      (seq) => {
        if (index > this.#failedAt) return;
        this.#stored += count;
        this.#onDurable?.(seq);
      },
      (err) => {
        if (index < this.#failedAt) {
          this.#failedAt = index;
          this.#failure = err;
          for (const failed of this.#onFailure) failed();
          this.#onFailure.clear();
        }
      },
    );
    this.#inFlight.add(p);
    p.finally(() => this.#inFlight.delete(p));
    if (this.#inFlight.size >= this.#limit) await Promise.race(this.#inFlight);
  }

  /**
   * Waits for every append started.
   *
   * @returns When all are durable.
   * @throws The first failure in batch order.
   */
  async finish(): Promise<void> {
    await this.settle();
    if (this.failed) throw this.#failure;
  }

  /**
   * Waits for every append started, failed or not.
   *
   * @returns When none is waiting.
   */
  async settle(): Promise<void> {
    await Promise.allSettled(this.#inFlight);
  }
}
