/**
 * The writing side of seals: the seal log, the current epoch key, and the
 * timer that seals a vault every interval. Formats: `_seal.ts` and
 * `docs/VAULT.md`, "Seals".
 *
 * @module
 */

import { join } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import { CommitGroup } from "../segment/commit_group.ts";
import { makeDir } from "../segment/fs.ts";
import { SegmentLog } from "../segment/log.ts";
import {
  encodeSeal,
  evolveKey,
  readSealingKey,
  SEAL_KIND,
  SEAL_MAGIC,
  SEALS_DIR,
  writeSealingKey,
} from "./_seal.ts";
import type { SealEntry, SealPrune } from "./_seal.ts";

/** Seal-log segments start anew past this size (64 MiB, as sources). */
const SEAL_SEGMENT_BYTES = 64 * 1024 * 1024;

/** What one seal covered. */
export interface SealInfo {
  /** The seal's epoch number (1 for the first seal). */
  epoch: number;
  /** When it was made, ms since the epoch. */
  time: number;
  /** Sources with at least one durable record. */
  sources: number;
  /** Records covered, over all sources. */
  records: number;
}

/** A durable seal, as the vault learns of it (to date its segments). */
export interface WrittenSeal {
  /** Its epoch. */
  epoch: number;
  /** When it was made. */
  time: number;
  /** Every source's durable count and head it covered. */
  entries: readonly SealEntry[];
}

/** A seal written by the timer, at open or at close, or one that failed. */
export type SealEvent =
  | ({ type: "sealed" } & SealInfo)
  | { type: "seal_failed"; epoch: number; message: string };

/**
 * Writes the seals of one open vault, one at a time. `heads` lists, at the
 * moment a seal is made, every source's durable record count and chain head.
 */
export class Sealer {
  #root: string;
  #vaultId: Uint8Array;
  #log: SegmentLog;
  #key: Uint8Array;
  #epoch: number;
  #keySaved = true;
  #heads: () => SealEntry[];
  #onSeal: ((event: SealEvent) => void) | undefined;
  #onSealed: ((seal: WrittenSeal) => void) | undefined;
  #now: () => number;
  #sealing: Promise<unknown> = Promise.resolve();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #stopped = false;

  private constructor(
    root: string,
    options: {
      vaultId: Uint8Array;
      log: SegmentLog;
      key: Uint8Array;
      epoch: number;
      heads: () => SealEntry[];
      onSeal: ((event: SealEvent) => void) | undefined;
      onSealed: ((seal: WrittenSeal) => void) | undefined;
      now: () => number;
    },
  ) {
    this.#root = root;
    this.#onSealed = options.onSealed;
    this.#now = options.now;
    this.#vaultId = options.vaultId;
    this.#log = options.log;
    this.#key = options.key;
    this.#epoch = options.epoch;
    this.#heads = options.heads;
    this.#onSeal = options.onSeal;
  }

  /**
   * Opens the seal log and the key file, and lines the key up with the log:
   * a key behind the log (a crash between a seal and the key update) is
   * moved forward; a key ahead of it means seals are missing.
   *
   * @param root The vault directory (its lock is held).
   * @param options Vault id, the source heads, the seal callbacks (`onSeal`
   * for reports, `onSealed` with what every durable seal covered), the clock.
   * @returns The sealer.
   * @throws {MoatError} `ERR_SEAL_KEY` for a missing or malformed key file;
   * `ERR_CORRUPT` if the key is ahead of the seal log.
   */
  static async open(
    root: string,
    options: {
      vaultId: Uint8Array;
      heads: () => SealEntry[];
      onSeal: ((event: SealEvent) => void) | undefined;
      onSealed?: ((seal: WrittenSeal) => void) | undefined;
      now?: (() => number) | undefined;
    },
  ): Promise<Sealer> {
    const stored = await readSealingKey(root, options.vaultId);
    const log = await SegmentLog.open(join(root, SEALS_DIR), {
      magic: SEAL_MAGIC,
      kind: SEAL_KIND,
      segmentBytes: SEAL_SEGMENT_BYTES,
      group: new CommitGroup({ maxOpenFiles: 1 }),
      init: () => makeDir(join(root, SEALS_DIR), 0o700),
    });
    const next = log.durableSeq + 1;
    if (stored.epoch > next) {
      await log.close();
      throw new MoatError(
        "ERR_CORRUPT",
        `Cannot seal vault "${root}": the sealing key is at epoch ${stored.epoch} but the seal log ends at seal ${log.durableSeq} (seals are missing)`,
        ExitCode.Integrity,
      );
    }
    // One way: moving the key forward loses nothing.
    let key = stored.key;
    for (let epoch = stored.epoch; epoch < next; epoch++) key = evolveKey(key);
    const sealer = new Sealer(root, {
      ...options,
      log,
      key,
      epoch: next,
      onSealed: options.onSealed,
      now: options.now ?? Date.now,
    });
    if (stored.epoch !== next) await sealer.#saveKey();
    return sealer;
  }

  /**
   * Starts sealing every `intervalMs` (0: never on a timer).
   *
   * @param intervalMs The interval.
   */
  startTimer(intervalMs: number): void {
    if (intervalMs === 0) return;
    const tick = () => {
      this.#timer = setTimeout(() => {
        this.sealAndReport().finally(() => {
          if (!this.#stopped) tick();
        });
      }, intervalMs);
    };
    tick();
  }

  /**
   * Seals, and reports the seal (or its failure) through `onSeal`; never
   * rejects.
   *
   * @returns When done.
   */
  async sealAndReport(): Promise<void> {
    try {
      const info = await this.seal();
      this.#onSeal?.({ type: "sealed", ...info });
    } catch (error) {
      this.#onSeal?.({
        type: "seal_failed",
        epoch: this.#epoch,
        message: error instanceof Error ? error.message : String(error),
      });
    }
  }

  /**
   * Writes a seal now (after any seal still running).
   *
   * @param prunes Prunes the seal carries (records to be removed, all
   * covered by an earlier seal).
   * @returns What it covered.
   * @throws {MoatError} `ERR_CLOSED` after close; the system error if
   * writing fails (the key is then kept and the next seal retries).
   */
  seal(prunes: readonly SealPrune[] = []): Promise<SealInfo> {
    const run = this.#sealing.then(() => this.#seal(prunes));
    this.#sealing = run.catch(() => {});
    return run;
  }

  async #seal(prunes: readonly SealPrune[]): Promise<SealInfo> {
    const log = this.#log;
    if (log.closed) {
      throw new MoatError("ERR_CLOSED", `Vault "${this.#root}" is closed`);
    }
    const entries = this.#heads();
    let records = 0;
    for (const entry of entries) records += entry.lastSeq;
    const epoch = this.#epoch;
    const time = this.#now();
    // A cut-off cannot be later than the prune itself.
    const cut = prunes.map((p) => ({ ...p, before: Math.min(p.before, time) }));
    const bytes = encodeSeal(
      { epoch, time, vaultId: this.#vaultId, entries, prunes: cut },
      this.#key,
    );
    await log.enqueue(bytes, { firstSeq: epoch, lastSeq: epoch });
    this.#onSealed?.({ epoch, time, entries });
    // The seal is durable: move to the next key and erase this one.
    const old = this.#key;
    this.#key = evolveKey(old);
    old.fill(0);
    this.#epoch = epoch + 1;
    this.#keySaved = false;
    await this.#saveKey();
    return { epoch, time, sources: entries.length, records };
  }

  async #saveKey(): Promise<void> {
    await writeSealingKey(this.#root, {
      vaultId: this.#vaultId,
      epoch: this.#epoch,
      key: this.#key,
    });
    this.#keySaved = true;
  }

  /** Stops the timer, so that no seal starts after the sources close. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  /**
   * Closes the seal log without sealing (an open that failed half-way).
   *
   * @returns When closed.
   */
  async discard(): Promise<void> {
    this.stop();
    await this.#log.close();
    this.#key.fill(0);
  }

  /**
   * Writes a last seal (so a cleanly stopped vault has no unsealed tail),
   * closes the seal log and erases the key from memory.
   *
   * @returns When closed.
   */
  async close(): Promise<void> {
    this.stop();
    await this.#sealing;
    await this.sealAndReport();
    if (!this.#keySaved) await this.#saveKey().catch(() => {});
    await this.#log.close();
    this.#key.fill(0);
  }
}
