/**
 * A segmented, checksummed, append-only record log with group commit and
 * torn-tail recovery. The vault keeps one per source and one for its seals;
 * the shipper's spool keeps one. The byte layout is documented in
 * `docs/VAULT.md`; the codec is `codec.ts`.
 *
 * A log is a directory of segment files named by the sequence number of
 * their first record (`00000000000000000001.seg`). A segment is a 32-byte
 * header followed by records; every record starts with the common 20-byte
 * header (`crc32c`, `length`, `kind`, `flags`, reserved, `seq`), and sequence
 * numbers run without gaps across segments.
 *
 * @module
 */

import { open, truncate, unlink } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { MoatError } from "../errors.ts";
import {
  encodeSegmentHeader,
  SEGMENT_HEADER_BYTES,
  segmentName,
} from "./codec.ts";
import type { CommitGroup, GroupMember } from "./commit_group.ts";
import { syncDir, systemErrorCode } from "./fs.ts";
import { recoverSegment } from "./recover.ts";
import type {
  LogRepair,
  SegmentInfo,
  SegmentSummarizer,
  SegmentSummary,
} from "./recover.ts";
import { listSegments } from "./scanner.ts";

export type {
  LogRepair,
  SegmentInfo,
  SegmentSummarizer,
  SegmentSummary,
} from "./recover.ts";

/**
 * Hooks for tests. Not part of the API.
 *
 * @internal
 */
export const _internals: {
  /**
   * Called before each write (`"write"`) and fsync (`"sync"`) of a segment
   * file during a commit, and after the fsync returned (`"synced"`);
   * throwing from it simulates a disk-full or I/O error there.
   */
  fault:
    | ((step: "write" | "sync" | "synced", path: string) => void)
    | undefined;
} = { fault: undefined };

/** Options for {@linkcode SegmentLog.open}. */
export interface SegmentLogOptions {
  /** 8 bytes that start every segment header. */
  magic: Uint8Array;
  /** The record kind this log holds. */
  kind: number;
  /** Start a new segment once the current one would grow past this. */
  segmentBytes: number;
  /** The group whose loop commits this log, and that bounds its open files. */
  group: CommitGroup;
  /** Sequence number before the first record when no segment exists. @default {0} */
  baseSeq?: number;
  /**
   * Runs once before the first segment file is created (e.g. makes the
   * directory); retried at the next commit if it fails. Pass it only for a
   * log whose directory does not exist yet.
   */
  init?: () => Promise<void>;
  /** Told about every repair made while opening. */
  onRepair?: (repair: LogRepair) => void;
  /**
   * Reads a record's time and tail, to summarize the last segment at open
   * (see {@linkcode SegmentInfo.summary}); without it, only segments
   * written by this process have a summary.
   */
  summarizer?: SegmentSummarizer;
  /**
   * Told when a new segment starts: the one before it is complete, with
   * its last sequence number and, if known, its summary. May be told again
   * about the same segment if the new one could not be created.
   */
  onSegmentClosed?: (closed: ClosedSegment) => void;
}

/** A segment that will take no more records (see `onSegmentClosed`). */
export interface ClosedSegment {
  /** Sequence number of its first record. */
  firstSeq: number;
  /** Sequence number of its last record. */
  lastSeq: number;
  /** Its path. */
  path: string;
  /** Its records' times and tail, if known. */
  summary: SegmentSummary | undefined;
}

/** What the caller knows about the records of one queued chunk. */
export interface ChunkNote {
  /** Least record time in the chunk. */
  minTime: number;
  /** Greatest record time in the chunk. */
  maxTime: number;
  /** The tail after the chunk's last record. */
  tail?: Uint8Array;
}

interface Chunk {
  bytes: Uint8Array;
  firstSeq: number;
  lastSeq: number;
  note: ChunkNote | undefined;
}

interface Waiter {
  seq: number;
  resolve: (seq: number) => void;
  reject: (error: unknown) => void;
}

/**
 * One append-only log. Records are queued with {@linkcode SegmentLog.enqueue}
 * and become durable at the next group commit; on a write or fsync error the
 * log rolls back to its last durable record, rejects every waiter after it,
 * and truncates the file so that no unacknowledged byte stays behind. Its
 * current segment file is open only while its group allows (see
 * {@linkcode CommitGroup}); it is reopened when needed.
 */
export class SegmentLog implements GroupMember {
  readonly dir: string;
  #options: SegmentLogOptions;
  #segments: SegmentInfo[];
  #handle: FileHandle | undefined;
  #durableSeq: number;
  #lastSeq: number;
  #pending: Chunk[] = [];
  #pendingBytes = 0;
  #inflightBytes = 0;
  #waiters: Waiter[] = [];
  #changed: (() => void)[] = [];
  #committing: Promise<void> | undefined;
  #broken = false;
  #initDone: boolean;
  #closed = false;
  #lastRecord: Uint8Array | undefined;

  private constructor(
    dir: string,
    options: SegmentLogOptions,
    segments: SegmentInfo[],
    lastSeq: number,
    lastRecord?: Uint8Array,
  ) {
    this.dir = dir;
    this.#lastRecord = lastRecord;
    this.#options = options;
    this.#segments = segments;
    this.#durableSeq = lastSeq;
    this.#lastSeq = lastSeq;
    this.#initDone = options.init === undefined;
  }

  /**
   * Creates the handle of a log that has no directory yet; `options.init`
   * should make the directory at the first commit.
   *
   * @param dir The log's directory.
   * @param options Format and commit settings.
   * @returns The empty log.
   */
  static empty(dir: string, options: SegmentLogOptions): SegmentLog {
    return new SegmentLog(dir, options, [], options.baseSeq ?? 0);
  }

  /**
   * Opens a log, recovering it first: the last segment is verified record by
   * record and cut at the first torn or invalid record; trailing segments
   * without a valid record are removed. Earlier segments are not read.
   *
   * @param dir The log's directory; need not exist yet (then `init` makes it).
   * @param options Format and commit settings.
   * @returns The log.
   * @throws {Error} A system error.
   */
  static async open(
    dir: string,
    options: SegmentLogOptions,
  ): Promise<SegmentLog> {
    const segments: SegmentInfo[] = (await listSegments(dir)).map((s) => ({
      ...s,
      size: 0,
    }));
    let lastSeq = options.baseSeq ?? 0;
    let lastRecord: Uint8Array | undefined;
    while (segments.length > 0) {
      const segment = segments[segments.length - 1]!;
      const found = await recoverSegment(segment, {
        ...options,
        summarizer: options.summarizer,
      });
      if (found !== undefined) {
        lastSeq = found.lastSeq;
        lastRecord = found.lastRecord;
        break;
      }
      segments.pop();
    }
    if (segments.length > 0) {
      // Earlier segments are complete: their size is the file size.
      for (const segment of segments.slice(0, -1)) {
        const handle = await open(segment.path, "r");
        try {
          segment.size = (await handle.stat()).size;
        } finally {
          await handle.close();
        }
      }
    }
    return new SegmentLog(dir, options, segments, lastSeq, lastRecord);
  }

  /**
   * The last record found when the log was opened (a copy), or undefined
   * for a log that was empty then.
   */
  get lastRecordAtOpen(): Uint8Array | undefined {
    return this.#lastRecord;
  }

  /** Sequence number of the last record queued (durable or not). */
  get lastSeq(): number {
    return this.#lastSeq;
  }

  /** Sequence number of the last durable record. */
  get durableSeq(): number {
    return this.#durableSeq;
  }

  /** Sequence number of the oldest record on disk, or `durableSeq + 1` if none. */
  get firstSeq(): number {
    return this.#segments[0]?.firstSeq ?? this.#durableSeq + 1;
  }

  /** Durable bytes on disk plus bytes queued. */
  get bytes(): number {
    let total = this.#pendingBytes + this.#inflightBytes;
    for (const segment of this.#segments) total += segment.size;
    return total;
  }

  /** The segments, oldest first (a snapshot). */
  get segments(): readonly Readonly<SegmentInfo>[] {
    return this.#segments.map((s) => ({ ...s }));
  }

  /** The record kind. */
  get kind(): number {
    return this.#options.kind;
  }

  /**
   * Queues encoded records for the next group commit.
   *
   * @param bytes Records `firstSeq` to `lastSeq`, encoded back to back.
   * @param seqs The first and last sequence numbers in `bytes`, and what
   * the caller knows about their times and tail (for segment summaries).
   * @returns Resolves with `lastSeq` once durable; rejects if the commit fails.
   * @throws {MoatError} `ERR_CLOSED` after close; `ERR_SEQUENCE` if
   * `firstSeq` does not follow `lastSeq`.
   */
  enqueue(
    bytes: Uint8Array,
    seqs: { firstSeq: number; lastSeq: number; note?: ChunkNote },
  ): Promise<number> {
    this.#checkOpen();
    if (seqs.firstSeq !== this.#lastSeq + 1 || seqs.lastSeq < seqs.firstSeq) {
      throw new MoatError(
        "ERR_SEQUENCE",
        `Cannot queue records ${seqs.firstSeq} to ${seqs.lastSeq}: the log ends at ${this.#lastSeq}`,
      );
    }
    this.#pending.push({
      bytes,
      firstSeq: seqs.firstSeq,
      lastSeq: seqs.lastSeq,
      note: seqs.note,
    });
    this.#pendingBytes += bytes.length;
    this.#lastSeq = seqs.lastSeq;
    this.#options.group.mark(this);
    return this.waitDurable(seqs.lastSeq);
  }

  /**
   * Resolves once record `seq` is durable.
   *
   * @param seq A sequence number no greater than {@linkcode lastSeq}.
   * @returns `seq`.
   */
  waitDurable(seq: number): Promise<number> {
    if (seq <= this.#durableSeq) return Promise.resolve(seq);
    return new Promise((resolve, reject) => {
      this.#waiters.push({ seq, resolve, reject });
    });
  }

  /**
   * Resolves at the next change: records became durable, segments were
   * removed, or the log closed.
   *
   * @returns When something changed.
   */
  changed(): Promise<void> {
    return new Promise((resolve) => this.#changed.push(resolve));
  }

  /**
   * Writes and fsyncs every queued record. Never rejects: a failure rejects
   * the affected waiters instead. Called by the {@linkcode CommitGroup}.
   *
   * @returns When done.
   */
  commit(): Promise<void> {
    this.#committing ??= this.#commit().finally(() => {
      this.#committing = undefined;
      this.#notify();
    });
    return this.#committing;
  }

  async #commit(): Promise<void> {
    const batch = this.#pending;
    if (batch.length === 0) return;
    this.#pending = [];
    this.#inflightBytes = this.#pendingBytes;
    this.#pendingBytes = 0;
    const options = this.#options;
    const stats = options.group.stats;
    try {
      if (this.#broken) await this.#repair();
      if (!this.#initDone) {
        await options.init?.();
        this.#initDone = true;
      }
      let i = 0;
      while (i < batch.length) {
        let segment = this.#segments.at(-1);
        const bufs: Uint8Array[] = [];
        let created = false;
        if (
          segment === undefined ||
          segment.size + batch[i]!.bytes.length > options.segmentBytes
        ) {
          await this.#closeHandle();
          if (segment !== undefined) {
            options.onSegmentClosed?.({
              firstSeq: segment.firstSeq,
              lastSeq: batch[i]!.firstSeq - 1,
              path: segment.path,
              summary: segment.summary,
            });
          }
          segment = {
            firstSeq: batch[i]!.firstSeq,
            path: join(this.dir, segmentName(batch[i]!.firstSeq)),
            size: 0,
          };
          this.#segments.push(segment);
          await this.#openFile(segment.path, "wx");
          bufs.push(encodeSegmentHeader(options.magic, segment.firstSeq));
          created = true;
        } else if (this.#handle === undefined) {
          await this.#openFile(segment.path, "r+");
        } else {
          options.group.touch(this);
        }
        let size = segment.size + (created ? SEGMENT_HEADER_BYTES : 0);
        let lastSeq = this.#durableSeq;
        let summary = created ? null : segment.summary;
        do {
          const chunk = batch[i]!;
          bufs.push(chunk.bytes);
          size += chunk.bytes.length;
          lastSeq = chunk.lastSeq;
          summary = _addNote(summary, chunk.note);
          i++;
        } while (
          i < batch.length &&
          size + batch[i]!.bytes.length <= options.segmentBytes
        );
        const handle = this.#handle!;
        _internals.fault?.("write", segment.path);
        await _writeAll(handle, bufs, segment.size);
        _internals.fault?.("sync", segment.path);
        await handle.sync();
        _internals.fault?.("synced", segment.path);
        stats.syncs++;
        if (created) await syncDir(this.dir);
        this.#inflightBytes -= size - segment.size -
          (created ? SEGMENT_HEADER_BYTES : 0);
        segment.size = size;
        segment.summary = summary ?? undefined;
        this.#durableSeq = lastSeq;
        this.#settle();
      }
      this.#inflightBytes = 0;
    } catch (error) {
      // Nothing after durableSeq is on disk for sure: roll back to it, so the
      // next append resends from there, and cut the file back.
      this.#lastSeq = this.#durableSeq;
      this.#pending = [];
      this.#pendingBytes = 0;
      this.#inflightBytes = 0;
      this.#broken = true;
      const waiters = this.#waiters;
      this.#waiters = [];
      // Cut the file back before anyone hears of the failure.
      await this.#repair().catch(() => {});
      for (const waiter of waiters) waiter.reject(error);
    }
  }

  /** Resolves waiters up to durableSeq (in any order: duplicates wait too). */
  #settle(): void {
    const durable = this.#durableSeq;
    const ready = this.#waiters.filter((w) => w.seq <= durable);
    if (ready.length > 0) {
      this.#waiters = this.#waiters.filter((w) => w.seq > durable);
      for (const waiter of ready) waiter.resolve(waiter.seq);
    }
    this.#notify();
  }

  #notify(): void {
    const changed = this.#changed;
    this.#changed = [];
    for (const resolve of changed) resolve();
  }

  /**
   * Undoes a failed commit: removes segments that never became durable and
   * truncates the last one to its durable size. Retried before the next
   * commit until it succeeds.
   */
  async #repair(): Promise<void> {
    await this.#closeHandle();
    let removed = false;
    while (this.#segments.length > 0 && this.#segments.at(-1)!.size === 0) {
      const segment = this.#segments.at(-1)!;
      await unlink(segment.path).catch((error) => {
        if (systemErrorCode(error) !== "ENOENT") throw error;
      });
      this.#segments.pop();
      removed = true;
    }
    if (removed) await syncDir(this.dir);
    const last = this.#segments.at(-1);
    if (last) {
      await truncate(last.path, last.size);
      await this.#openFile(last.path, "r+");
    }
    this.#broken = false;
  }

  /** Opens a segment file as the current one, within the group's bound. */
  async #openFile(path: string, flags: "wx" | "r+"): Promise<void> {
    const group = this.#options.group;
    await group.admit(this);
    this.#handle = flags === "wx"
      ? await open(path, "wx", 0o600)
      : await open(path, "r+");
    group.touch(this);
  }

  async #closeHandle(): Promise<void> {
    const handle = this.#handle;
    this.#handle = undefined;
    this.#options.group.release(this);
    await handle?.close().catch(() => {});
  }

  /**
   * True while a commit runs.
   *
   * @internal
   */
  get committing(): boolean {
    return this.#committing !== undefined;
  }

  /**
   * Closes the current segment file unless a commit is using it; the next
   * commit reopens it. Called by the group to bound open files.
   *
   * @internal
   * @returns When closed.
   */
  async closeFile(): Promise<void> {
    if (this.#committing === undefined) await this.#closeHandle();
  }

  /**
   * Takes every segment whose records all have sequence numbers up to `seq`
   * out of the log (the spool's trim), for the caller to read and then delete
   * with {@linkcode removeSegments}. The segment being written qualifies only
   * when no commit is queued or running; it is then closed, and the next
   * commit starts a new segment.
   *
   * @param seq Highest sequence number that may go.
   * @returns The segments taken, oldest first.
   */
  takeSegmentsThrough(seq: number): SegmentInfo[] {
    const segments = this.#segments;
    let n = 0;
    while (n + 1 < segments.length && segments[n + 1]!.firstSeq - 1 <= seq) n++;
    if (
      n === segments.length - 1 && segments.length > 0 &&
      this.#durableSeq <= seq && this.#lastSeq === this.#durableSeq &&
      this.#committing === undefined && !this.#broken
    ) {
      n++;
      void this.#closeHandle();
    }
    return segments.splice(0, n);
  }

  /**
   * Takes every segment but the last whose records all have sequence
   * numbers up to `seq` out of the log (the vault's prune), for the caller
   * to delete with {@linkcode removeSegments}. Never the segment being
   * written.
   *
   * @param seq Highest sequence number that may go.
   * @returns The segments taken, oldest first.
   */
  takeClosedSegmentsThrough(seq: number): SegmentInfo[] {
    const segments = this.#segments;
    let n = 0;
    while (n + 1 < segments.length && segments[n + 1]!.firstSeq - 1 <= seq) n++;
    return segments.splice(0, n);
  }

  /**
   * Deletes segment files taken with {@linkcode takeSegmentsThrough} and
   * fsyncs the directory.
   *
   * @param segments The segments.
   * @returns When they are gone.
   * @throws {Error} A system error other than ENOENT.
   */
  async removeSegments(segments: readonly SegmentInfo[]): Promise<void> {
    if (segments.length === 0) return;
    for (const segment of segments) {
      await unlink(segment.path).catch((error) => {
        if (systemErrorCode(error) !== "ENOENT") throw error;
      });
    }
    await syncDir(this.dir);
    this.#notify();
  }

  /**
   * Waits for queued commits, then closes the file.
   *
   * @returns When closed.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    while (this.#pending.length > 0 || this.#committing) {
      await (this.#committing ?? this.commit());
    }
    this.#closed = true;
    await this.#closeHandle();
    this.#notify();
  }

  /** True once closed. */
  get closed(): boolean {
    return this.#closed;
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new MoatError("ERR_CLOSED", `Log "${this.dir}" is closed`);
    }
  }
}

/**
 * A segment's summary with one more chunk: `null` stands for a new segment
 * (no record yet), undefined for unknown (a chunk without a note makes it
 * unknown).
 */
function _addNote(
  summary: SegmentSummary | null | undefined,
  note: ChunkNote | undefined,
): SegmentSummary | undefined {
  if (note === undefined || summary === undefined) return undefined;
  const tail = note.tail;
  if (summary === null) {
    return {
      minTime: note.minTime,
      maxTime: note.maxTime,
      ...(tail && { tail }),
    };
  }
  return {
    minTime: Math.min(summary.minTime, note.minTime),
    maxTime: Math.max(summary.maxTime, note.maxTime),
    ...(tail && { tail }),
  };
}

/**
 * Buffers of a commit are copied into one of these and written with one
 * `write`: Deno's `FileHandle.writev` copies each array that is not a
 * `Buffer` and then concatenates them (two fresh copies of every commit),
 * and that churn of large short-lived arrays is what grew Deno's heap in
 * the soak's syslog flood. Reused, so a commit allocates nothing.
 */
const spareWriteBuffers: Uint8Array[] = [];
/**
 * Spare write buffers kept at most, and the largest kept: a flood's group
 * commits reach several MiB (with at most 1 MiB kept, Deno's peak in the
 * soak's syslog flood went back from 191 to 238 MiB).
 */
const SPARE_WRITE_BUFFERS = 2;
const SPARE_WRITE_MAX = 8 * 1024 * 1024;

/** Keeps a write buffer for reuse; when enough are kept, the larger ones. */
function _keepSpare(buf: Uint8Array): void {
  const spare = spareWriteBuffers;
  if (spare.length < SPARE_WRITE_BUFFERS) {
    spare.push(buf);
    return;
  }
  let smallest = 0;
  for (let k = 1; k < spare.length; k++) {
    if (spare[k]!.length < spare[smallest]!.length) smallest = k;
  }
  if (spare[smallest]!.length < buf.length) spare[smallest] = buf;
}

/** Writes every buffer at `position`, looping over short writes. */
async function _writeAll(
  handle: FileHandle,
  bufs: Uint8Array[],
  position: number,
): Promise<void> {
  let total = 0;
  for (const buf of bufs) total += buf.length;
  let scratch: Uint8Array | undefined;
  let bytes: Uint8Array;
  if (bufs.length === 1) {
    bytes = bufs[0]!;
  } else {
    const i = spareWriteBuffers.findIndex((b) => b.length >= total);
    scratch = i >= 0
      ? spareWriteBuffers.splice(i, 1)[0]!
      // A power of two, so that the next commit, a little larger, fits too.
      : new Uint8Array(Math.max(2 ** Math.ceil(Math.log2(total)), 65_536));
    let at = 0;
    for (const buf of bufs) {
      scratch.set(buf, at);
      at += buf.length;
    }
    bytes = scratch.subarray(0, total);
  }
  try {
    let written = 0;
    while (written < total) {
      const { bytesWritten } = await handle.write(
        bytes,
        written,
        total - written,
        position + written,
      );
      if (bytesWritten <= 0) {
        throw new MoatError(
          "ERR_IO",
          `Cannot write to "${handle.fd}": no progress`,
        );
      }
      written += bytesWritten;
    }
  } finally {
    if (scratch !== undefined && scratch.length <= SPARE_WRITE_MAX) {
      _keepSpare(scratch);
    }
  }
}
