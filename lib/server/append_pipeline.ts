/**
 * Pipelined appends to one vault source, shared by the ship path and the
 * syslog port.
 *
 * @module
 */

import type {
  AppendOptions,
  AppendRecord,
  VaultSource,
} from "../vault/store.ts";

/** Appends one connection may have waiting for the vault at once. */
export const APPEND_IN_FLIGHT = 8;

/** Options for {@linkcode AppendPipeline}. */
export interface AppendPipelineOptions {
  /** Most appends waiting at once. @default {8} */
  inFlight?: number;
  /**
   * Told of each append once it is durable, in order, with the highest
   * sequence number it stored; never after an earlier append failed.
   */
  onDurable?: (seq: number) => void;
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
  #inFlight = new Set<Promise<void>>();
  #next = 0;
  #failedAt = Infinity;
  #failure: unknown;
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
   * Starts an append. The vault copies the records before this returns, so
   * the caller may reuse their buffers at once.
   *
   * @param records Records in sequence order.
   * @param options Receive time.
   * @returns When fewer than `inFlight` appends are waiting.
   */
  async push(
    records: readonly AppendRecord[],
    options: AppendOptions,
  ): Promise<void> {
    const index = this.#next++;
    // Only the count is kept: the records may go once the vault has them.
    const count = records.length;
    const p = this.#source.append(records, options).then(
      (seq) => {
        if (index > this.#failedAt) return;
        this.#stored += count;
        this.#onDurable?.(seq);
      },
      (err) => {
        if (index < this.#failedAt) {
          this.#failedAt = index;
          this.#failure = err;
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
