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
import type { ClosedSegment, SegmentLog } from "../segment/log.ts";
import { readFirstRecord } from "../segment/scanner.ts";
import { chainGenesis, checkLink, LINK_BYTES, LINK_OFFSET } from "./_chain.ts";
import {
  type AppendBatch,
  FLAG_CHAIN,
  readSourceKey,
  SOURCE_FILE,
  VAULT_KIND,
  VAULT_MAGIC,
} from "./_format.ts";
import {
  entryOf,
  readSegmentIndex,
  summarizeSegment,
  writeSegmentIndex,
} from "./_index.ts";
import type { SegmentEntry } from "./_index.ts";
import { sourceHash, sourceLabel } from "./_key.ts";
import type { SourceKey } from "./_key.ts";
import { readPruneMarker, writePruneMarker } from "./_prune.ts";
import type { PruneMarker } from "./_prune.ts";
import type { SourceTree } from "./_tree.ts";
import type { LocatorSegment } from "./_tree_file.ts";

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
  /**
   * The records are new lines the server numbered itself (syslog), never a
   * shipper's replay: where a shared store (a JetStream vault) finds that
   * another front door took these sequence numbers first, they are numbered
   * on after that door's records instead of being dropped as duplicates. A
   * directory vault, which nobody else writes, ignores it.
   * @default {false}
   */
  fresh?: boolean;
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
   * @param records Records in sequence order: an array, or a batch read by
   * index (a decoded ship frame, no object per record).
   * @param options Receive time.
   * @returns The highest sequence number in `records`, once durable.
   */
  append(
    records: readonly AppendRecord[] | AppendBatch,
    options?: AppendOptions,
  ): Promise<number>;
}

/** Validates and queues an append (in `store.ts`). */
export type QueueAppend = (
  source: SourceLog,
  log: SegmentLog,
  records: readonly AppendRecord[] | AppendBatch,
  options: AppendOptions,
) => Promise<number>;

/** What a prune will remove from one source (see `SourceLog.planPrune`). */
export interface PrunePlan {
  /** Records 1 to `through` go. */
  through: number;
  /** The chain link of record `through`. */
  link: Uint8Array;
  /** False if the plan only removes segments an earlier prune already recorded. */
  fresh: boolean;
}

/** What a prune removed from one source. */
export interface PrunedSource {
  /** The source. */
  source: SourceKey;
  /** Records 1 to this one are gone now. */
  throughSeq: number;
  /** Records removed by this prune. */
  records: number;
  /** Segment files removed. */
  segments: number;
  /** Bytes removed. */
  bytes: number;
}

/** A source's log and chain heads. */
export class SourceLog implements VaultSource {
  readonly key: SourceKey;
  readonly id: string;
  /** The source hash, as seals name it (hex). */
  readonly hash: string;
  #queue: QueueAppend;
  #log: SegmentLog;
  /** Index entries of complete segments, by first sequence number. */
  #index = new Map<number, SegmentEntry>();
  /** Entries this process closed that no seal has covered yet. */
  #unstamped = new Set<number>();
  /** The highest count a seal of this process covered, and the first seal that did. */
  #lastCover: { count: number; time: number } | undefined;
  /** Complete segments found at open that no seal this process made dated. */
  #undated = new Set<number>();
  /** Last record removed by a prune (0: none), and its link if known. */
  #prunedThrough = 0;
  #prunedLink: Uint8Array | undefined;
  /** The prune point before that one, as the prune marker names it. */
  #prunedFrom: { seq: number; link: Uint8Array } | undefined;
  #indexChanged: () => void = () => {};
  /** The source's Merkle tree (set by the vault; see `_tree.ts`). */
  tree: SourceTree | undefined;
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
    this.hash = (sourceHash(key)).toHex();
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

  /**
   * Loads the segment index and the prune marker of a source found on disk
   * (at open). Complete segments without a seal time are left for
   * {@linkcode SourceLog.backfill} and the seal log to date.
   *
   * @param indexChanged Called whenever the index should be written again.
   * @returns When loaded.
   */
  async load(indexChanged: () => void): Promise<void> {
    this.#indexChanged = indexChanged;
    const dir = this.#log.dir;
    this.#index = await readSegmentIndex(dir);
    const marker = await readPruneMarker(dir).catch(() => undefined);
    const segments = this.#log.segments;
    this.#prunedThrough = Math.max(
      marker?.seq ?? 0,
      (segments[0]?.firstSeq ?? 1) - 1,
    );
    if (marker?.seq === this.#prunedThrough) {
      this.#prunedLink = marker.link;
      this.#prunedFrom = marker.from;
    }
    for (let i = 0; i + 1 < segments.length; i++) {
      const entry = entryOf(this.#index, segments, i);
      if (entry?.sealedAt === undefined) {
        this.#undated.add(segments[i]!.firstSeq);
      }
    }
  }

  /** Sets the callback of a new source (nothing on disk to load). */
  watchIndex(indexChanged: () => void): void {
    this.#indexChanged = indexChanged;
  }

  /**
   * Records a segment the log closed (it rotated): its index entry.
   *
   * @param closed The segment, its last record and its summary.
   */
  segmentClosed(closed: ClosedSegment): void {
    const summary = closed.summary;
    const before = this.#index.get(closed.firstSeq);
    const entry: SegmentEntry = {
      first: closed.firstSeq,
      last: closed.lastSeq,
      ...(summary && {
        minRecvTs: summary.minTime,
        maxRecvTs: summary.maxTime,
      }),
      ...(summary?.tail && { lastLink: summary.tail }),
      ...(before?.last === closed.lastSeq && before.sealedAt !== undefined &&
        { sealedAt: before.sealedAt }),
    };
    // Its last record was the head when it closed: a seal that saw that
    // head was the first to cover all of it.
    if (
      entry.sealedAt === undefined && this.#lastCover?.count === entry.last
    ) {
      entry.sealedAt = this.#lastCover.time;
    }
    this.#index.set(closed.firstSeq, entry);
    if (entry.sealedAt === undefined && !this.#undated.has(entry.first)) {
      this.#unstamped.add(entry.first);
    }
    this.#indexChanged();
  }

  /**
   * Dates the segments this process closed that a durable seal now covers.
   *
   * @param count The source's record count in the seal.
   * @param time The seal's time.
   */
  stamp(count: number, time: number): void {
    if (count > (this.#lastCover?.count ?? 0)) {
      this.#lastCover = { count, time };
    }
    let changed = false;
    for (const first of this.#unstamped) {
      const entry = this.#index.get(first);
      if (entry === undefined) {
        this.#unstamped.delete(first);
      } else if (entry.last <= count) {
        entry.sealedAt = time;
        this.#unstamped.delete(first);
        changed = true;
      }
    }
    if (changed) this.#indexChanged();
  }

  /**
   * Deletes the segments a prune recorded but did not get to delete (it
   * was cut short): those holding only records up to the prune marker's.
   *
   * @returns When they are gone.
   */
  async finishPrune(): Promise<void> {
    const taken = this.#log.takeClosedSegmentsThrough(this.#prunedThrough);
    if (taken.length === 0) return;
    for (const segment of taken) this.#index.delete(segment.firstSeq);
    await this.#log.removeSegments(taken);
    this.#indexChanged();
  }

  /**
   * Completes the index entries of segments found at open: reads each
   * complete segment whose entry is missing or lacks its times or its last
   * link. Stops early once `stopped()` says so.
   *
   * @param stopped True once the vault is closing.
   * @returns The last sequence numbers of the complete segments that still
   * need a seal time, by first sequence number.
   */
  async backfill(stopped: () => boolean): Promise<Map<number, number>> {
    const segments = this.#log.segments;
    const undated = new Map<number, number>();
    for (let i = 0; i + 1 < segments.length && !stopped(); i++) {
      const segment = segments[i]!;
      const last = segments[i + 1]!.firstSeq - 1;
      if (last <= this.#prunedThrough) continue;
      let entry = entryOf(this.#index, segments, i);
      if (
        entry?.minRecvTs === undefined || entry.lastLink === undefined
      ) {
        const read = await summarizeSegment(segment).catch(() => undefined);
        if (read === undefined || read.last !== last) continue;
        entry = {
          ...read,
          ...(entry?.sealedAt !== undefined && { sealedAt: entry.sealedAt }),
        };
        this.#index.set(entry.first, entry);
        this.#indexChanged();
      }
      if (this.#undated.has(entry.first)) undated.set(entry.first, last);
    }
    return undated;
  }

  /**
   * Dates complete segments found at open, from the seal log.
   *
   * @param times Per last sequence number, the time of the first seal
   * covering it.
   */
  date(times: ReadonlyMap<number, number>): void {
    let changed = false;
    for (const first of this.#undated) {
      const entry = this.#index.get(first);
      const time = entry && times.get(entry.last);
      if (entry === undefined || time === undefined) continue;
      entry.sealedAt = time;
      this.#undated.delete(first);
      changed = true;
    }
    if (changed) this.#indexChanged();
  }

  /**
   * Which whole segments a prune at `before` may remove: from the oldest,
   * every complete segment (never the last, nor one whose successor holds
   * no durable record yet) that a seal made before `before` covered (for a
   * sealed vault) or whose records were all received before `before` (an
   * unsealed one), stopping at the first that does not qualify. Checks the
   * chain link recorded for the cut against the first record kept.
   *
   * @param before The cut-off.
   * @param sealed True for a sealed vault.
   * @returns The plan, or undefined if nothing goes; a string if the chain
   * at the cut does not hold (nothing of this source is then removed).
   */
  async planPrune(
    before: number,
    sealed: boolean,
  ): Promise<PrunePlan | string | undefined> {
    const log = this.#log;
    const segments = log.segments;
    const durable = log.durableSeq;
    let through = this.#prunedThrough;
    let entry: SegmentEntry | undefined;
    let leftovers = false;
    for (let i = 0; i + 1 < segments.length; i++) {
      const next = segments[i + 1]!;
      if (next.firstSeq > durable) break;
      const last = next.firstSeq - 1;
      if (last <= this.#prunedThrough) {
        leftovers = true;
        continue;
      }
      const found = entryOf(this.#index, segments, i);
      const due = sealed
        ? found?.sealedAt !== undefined && found.sealedAt < before
        : found?.maxRecvTs !== undefined && found.maxRecvTs < before;
      if (!due || found?.lastLink === undefined) break;
      through = last;
      entry = found;
    }
    if (entry === undefined) {
      return leftovers
        ? { through, link: new Uint8Array(LINK_BYTES), fresh: false }
        : undefined;
    }
    const kept = segments.find((s) => s.firstSeq === through + 1)!;
    let link = entry.lastLink!;
    if (!(await this.#continues(kept.path, through + 1, link))) {
      // The index may be stale: read the segment itself once.
      const segment = segments.find((s) => s.firstSeq === entry!.first)!;
      const read = await summarizeSegment(segment).catch(() => undefined);
      if (
        read?.lastLink === undefined ||
        !(await this.#continues(kept.path, through + 1, read.lastLink))
      ) {
        return `record ${
          through + 1
        } does not chain on from record ${through} (run moat vault verify)`;
      }
      link = read.lastLink;
      this.#index.set(entry.first, { ...read, sealedAt: entry.sealedAt! });
    }
    return { through, link, fresh: true };
  }

  /** Whether the first record of a segment chains on from `link`. */
  async #continues(
    path: string,
    firstSeq: number,
    link: Uint8Array,
  ): Promise<boolean> {
    const record = await readFirstRecord(path, {
      magic: VAULT_MAGIC,
      kind: VAULT_KIND,
      firstSeq,
      last: false,
    }).catch(() => undefined);
    if (record === undefined || !(record.flags & FLAG_CHAIN)) return false;
    return checkLink(record.bytes, link).ok;
  }

  /**
   * Removes what a plan names, after the prune is recorded: writes the
   * prune marker (for a fresh plan), then deletes the segment files.
   *
   * @param plan The plan.
   * @param marker When, under which seal, and with which cut-off.
   * @returns What was removed.
   */
  async applyPrune(
    plan: PrunePlan,
    marker: Omit<PruneMarker, "seq" | "link">,
  ): Promise<PrunedSource> {
    const log = this.#log;
    if (plan.fresh) {
      // Where the oldest segment on disk starts: if this prune is cut short
      // before it deletes anything, its segments still run on from there.
      const oldest = (log.segments[0]?.firstSeq ?? 1) - 1;
      const from = oldest === this.#prunedThrough && this.#prunedLink
        ? { seq: oldest, link: this.#prunedLink }
        : this.#prunedFrom?.seq === oldest
        ? this.#prunedFrom
        : undefined;
      await writePruneMarker(log.dir, {
        ...marker,
        seq: plan.through,
        link: plan.link,
        ...(from && { from }),
      });
      this.#prunedThrough = plan.through;
      this.#prunedLink = plan.link;
      this.#prunedFrom = from;
    }
    const taken = log.takeClosedSegmentsThrough(this.#prunedThrough);
    let bytes = 0;
    let records = 0;
    for (let i = 0; i < taken.length; i++) {
      const segment = taken[i]!;
      const next = taken[i + 1]?.firstSeq ?? this.#prunedThrough + 1;
      bytes += segment.size;
      records += next - segment.firstSeq;
      this.#index.delete(segment.firstSeq);
      this.#unstamped.delete(segment.firstSeq);
      this.#undated.delete(segment.firstSeq);
    }
    try {
      await log.removeSegments(taken);
    } finally {
      if (taken.length > 0) this.#indexChanged();
    }
    return {
      source: this.key,
      throughSeq: this.#prunedThrough,
      records,
      segments: taken.length,
      bytes,
    };
  }

  /**
   * Writes the segment index (only entries of segments still there).
   *
   * @returns When written.
   */
  writeIndex(): Promise<void> {
    return writeSegmentIndex(this.#log.dir, [...this.#index.values()]);
  }

  get lastSeq(): number {
    return this.#log.durableSeq;
  }

  /** The oldest record held (`lastSeq + 1` if none). */
  get firstSeq(): number {
    return this.#log.firstSeq;
  }

  /**
   * The segments, oldest first, with their durable sizes (a snapshot).
   *
   * @returns The segments.
   */
  segmentList(): readonly LocatorSegment[] {
    return this.#log.segments;
  }

  get acceptedSeq(): number {
    return this.#log.lastSeq;
  }

  append(
    records: readonly AppendRecord[] | AppendBatch,
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
