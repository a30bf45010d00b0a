/**
 * One source inside an open vault: its segment log and its chain heads, and
 * the creation of its directory. `store.ts` validates and queues appends.
 *
 * @module
 */

import { mkdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { MoatError } from "../errors.ts";
import { syncDir, writeFileAtomic } from "../segment/fs.ts";
import type { SegmentLog } from "../segment/log.ts";
import { chainGenesis, LINK_BYTES, LINK_OFFSET } from "./_chain.ts";
import { FLAG_CHAIN, readSourceKey, SOURCE_FILE } from "./_format.ts";
import { sourceLabel } from "./_key.ts";
import type { SourceKey } from "./_key.ts";

/** One record handed to `Vault.append`. */
export interface AppendRecord {
  /** Per-source sequence number: 1 for the first line, then +1 per line. */
  seq: number;
  /** The shipper's timestamp, integer milliseconds since the epoch (0 to 2^53 - 1). */
  ts: number;
  /** The line without its newline. */
  line: Uint8Array;
  /** True if the next record continues this line (an overlong line was split). @default {false} */
  partial?: boolean;
}

/** Options for `Vault.append`. */
export interface AppendOptions {
  /** Receive time to store, integer milliseconds since the epoch. @default {Date.now()} */
  recvTs?: number;
}

/** One source's log inside an open vault. */
export interface VaultSource {
  /** The source key. */
  readonly key: SourceKey;
  /** Its directory name under `sources/`. */
  readonly id: string;
  /** Highest durable sequence number; 0 for a new source. */
  readonly lastSeq: number;
  /** Highest sequence number accepted, durable or still being committed. */
  readonly acceptedSeq: number;
  /**
   * Appends records; see `Vault.append`.
   *
   * @param records Records in sequence order.
   * @param options Receive time.
   * @returns The highest sequence number in `records`, once durable.
   */
  append(
    records: readonly AppendRecord[],
    options?: AppendOptions,
  ): Promise<number>;
}

/** Validates and queues an append (in `store.ts`). */
export type QueueAppend = (
  source: SourceLog,
  log: SegmentLog,
  records: readonly AppendRecord[],
  options: AppendOptions,
) => Promise<number>;

/** A source's log and chain heads. */
export class SourceLog implements VaultSource {
  readonly key: SourceKey;
  readonly id: string;
  #queue: QueueAppend;
  #log: SegmentLog;
  /**
   * Chain heads: the one at the last durable record, then one per queued
   * chunk (a commit makes whole chunks durable, and a failed one rolls back
   * to a chunk end).
   */
  #heads: { seq: number; link: Uint8Array }[];

  /**
   * @param key The source key.
   * @param options Its directory name, its log, the vault id (for the
   * genesis), and the vault's append queue.
   */
  constructor(
    key: SourceKey,
    options: {
      id: string;
      log: SegmentLog;
      vaultId: Uint8Array;
      queue: QueueAppend;
    },
  ) {
    const { id, log, vaultId } = options;
    this.#queue = options.queue;
    this.key = key;
    this.id = id;
    this.#log = log;
    const last = log.lastRecordAtOpen;
    // A record without a link (written before chains existed) restarts the
    // chain from genesis; verify reports such records as unchained.
    const link = last && (last[9]! & FLAG_CHAIN)
      ? last.slice(LINK_OFFSET, LINK_OFFSET + LINK_BYTES)
      : chainGenesis(vaultId, key);
    this.#heads = [{ seq: log.lastSeq, link }];
  }

  /** Drops heads rolled back by a failed commit, and ones no longer needed. */
  #trim(): void {
    const heads = this.#heads;
    const lastSeq = this.#log.lastSeq;
    while (heads.length > 1 && heads.at(-1)!.seq > lastSeq) heads.pop();
    const durable = this.#log.durableSeq;
    let drop = 0;
    while (drop + 1 < heads.length && heads[drop + 1]!.seq <= durable) drop++;
    if (drop > 0) heads.splice(0, drop);
  }

  /** The link of the last accepted record (or genesis). */
  acceptedHead(): Uint8Array {
    this.#trim();
    return this.#heads.at(-1)!.link;
  }

  /** Records the head after a queued chunk. */
  pushHead(seq: number, link: Uint8Array): void {
    this.#heads.push({ seq, link });
  }

  /** The last durable record's sequence number and link. */
  durableHead(): { seq: number; link: Uint8Array } {
    this.#trim();
    const head = this.#heads[0]!;
    if (head.seq !== this.#log.durableSeq) {
      throw new MoatError(
        "ERR_INTERNAL",
        `Chain head of "${
          sourceLabel(this.key)
        }" is at ${head.seq}, the log at ${this.#log.durableSeq}`,
      );
    }
    return head;
  }

  get lastSeq(): number {
    return this.#log.durableSeq;
  }

  get acceptedSeq(): number {
    return this.#log.lastSeq;
  }

  append(
    records: readonly AppendRecord[],
    options: AppendOptions = {},
  ): Promise<number> {
    try {
      return this.#queue(this, this.#log, records, options);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Waits for its commits and closes its log.
   *
   * @returns When closed.
   */
  close(): Promise<void> {
    return this.#log.close();
  }
}

/**
 * Creates a source directory atomically: temp dir, key file, rename. A
 * retry after a failed directory fsync finds the directory in place.
 *
 * @param sourcesDir The vault's `sources/`.
 * @param id The source's directory name.
 * @param key The source key, written to `source.json`.
 * @returns When the directory is durable.
 */
export async function createSourceDir(
  sourcesDir: string,
  id: string,
  key: SourceKey,
): Promise<void> {
  const final = join(sourcesDir, id);
  if (await readSourceKey(final, id).then(() => true, () => false)) {
    await syncDir(sourcesDir);
    return;
  }
  const temp = join(
    sourcesDir,
    `.tmp-${id}-${Math.floor(Math.random() * 0x100000000).toString(16)}`,
  );
  await mkdir(temp);
  try {
    await writeFileAtomic(
      join(temp, SOURCE_FILE),
      new TextEncoder().encode(
        JSON.stringify(
          key.identity === undefined
            ? { peer: key.peer, name: key.name }
            : { peer: key.peer, identity: key.identity, name: key.name },
        ) + "\n",
      ),
    );
    await rename(temp, final);
  } catch (error) {
    await rm(temp, { recursive: true, force: true }).catch(() => {});
    throw error;
  }
  await syncDir(sourcesDir);
}
