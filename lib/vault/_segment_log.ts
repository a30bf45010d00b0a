/**
 * A segmented, checksummed, append-only record log with group commit and
 * torn-tail recovery. The vault keeps one per source; the shipper's spool
 * keeps one. The byte layout is documented in `docs/VAULT.md`.
 *
 * A log is a directory of segment files named by the sequence number of
 * their first record (`00000000000000000001.seg`). A segment is a 32-byte
 * header followed by records; every record starts with the common 20-byte
 * header (`crc32c`, `length`, `kind`, `flags`, reserved, `seq`), and sequence
 * numbers run without gaps across segments.
 *
 * @module
 */

import { open, readdir, truncate, unlink } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { dirname, join } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import { crc32c } from "./_crc32c.ts";
import { _code, syncDir } from "./_fs.ts";

/** Size of a segment file's header. */
export const SEGMENT_HEADER_BYTES = 32;
/** Size of the header every record starts with. */
export const RECORD_HEADER_BYTES = 20;
/** Longest record accepted anywhere, header included (16 MiB + 1 KiB). */
export const MAX_RECORD_BYTES: number = 16 * 1024 * 1024 + 1024;
/** Segment format version written into every segment header. */
export const SEGMENT_VERSION = 1;

const TWO_32 = 0x1_0000_0000;
const SEGMENT_NAME = /^(\d{20})\.seg$/;
const READ_CHUNK = 1024 * 1024;

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

/** Writes `value` (0 to 2^53 - 1) as an unsigned 64-bit little-endian integer. */
export function _setU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, value % TWO_32, true);
  view.setUint32(at + 4, Math.floor(value / TWO_32), true);
}

/** Reads an unsigned 64-bit little-endian integer as a number (exact below 2^53). */
export function _getU64(view: DataView, at: number): number {
  return view.getUint32(at + 4, true) * TWO_32 + view.getUint32(at, true);
}

/**
 * Fills in a record's common header and checksum. `bytes` must already hold
 * the kind-specific fields and payload after {@linkcode RECORD_HEADER_BYTES}.
 *
 * @param bytes The whole record, exactly `length` bytes long.
 * @param fields Record kind, flags and sequence number.
 */
export function _sealRecord(
  bytes: Uint8Array,
  fields: { kind: number; flags: number; seq: number },
): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  view.setUint32(4, bytes.length, true);
  view.setUint8(8, fields.kind);
  view.setUint8(9, fields.flags);
  view.setUint16(10, 0, true);
  _setU64(view, 12, fields.seq);
  view.setUint32(0, crc32c(bytes, { start: 4 }), true);
}

/** The file name of the segment whose first record has sequence `seq`. */
export function _segmentName(seq: number): string {
  return `${String(seq).padStart(20, "0")}.seg`;
}

/** Builds a segment header. */
function _segmentHeader(magic: Uint8Array, firstSeq: number): Uint8Array {
  const header = new Uint8Array(SEGMENT_HEADER_BYTES);
  const view = new DataView(header.buffer);
  header.set(magic, 0);
  view.setUint16(8, SEGMENT_VERSION, true);
  view.setUint16(10, SEGMENT_HEADER_BYTES, true);
  _setU64(view, 16, firstSeq);
  view.setUint32(24, crc32c(header, { end: 24 }), true);
  return header;
}

/**
 * Checks a segment header.
 *
 * @returns Undefined if valid, else the reason.
 */
function _checkHeader(
  header: Uint8Array,
  magic: Uint8Array,
  firstSeq: number,
): string | undefined {
  if (header.length < SEGMENT_HEADER_BYTES) return "header is incomplete";
  const view = new DataView(header.buffer, header.byteOffset, header.length);
  if (view.getUint32(24, true) !== crc32c(header, { end: 24 })) {
    return "header checksum does not match";
  }
  for (let i = 0; i < 8; i++) {
    if (header[i] !== magic[i]) return "header magic is wrong";
  }
  const version = view.getUint16(8, true);
  if (version !== SEGMENT_VERSION) {
    return `segment version ${version} is not supported`;
  }
  if (_getU64(view, 16) !== firstSeq) {
    return "header sequence number does not match the file name";
  }
  return undefined;
}

/** One record as read from disk. */
export interface RawRecord {
  /** Sequence number. */
  seq: number;
  /** Flags byte. */
  flags: number;
  /** The whole record, header included (a view into a read buffer). */
  bytes: Uint8Array;
  /** Byte offset of the record in its segment file. */
  offset: number;
}

/**
 * Reads and verifies consecutive records from one segment file, from a byte
 * offset up to a limit that may grow between calls (for following a segment
 * that is being written).
 */
export class SegmentScanner {
  #handle: FileHandle;
  #kind: number;
  #buf: Uint8Array = new Uint8Array(0);
  /** File offset of `#buf[0]`. */
  #bufOffset: number;
  /** File offset just after the last record returned. */
  offset: number;
  /** Sequence number the next record must carry. */
  nextSeq: number;
  /** Why scanning stopped at bad data, if it did. */
  error: string | undefined;

  /**
   * @param handle An open segment file.
   * @param options The record kind expected, the sequence number of the
   * record at `offset`, and the start offset (default: just after the header).
   */
  constructor(
    handle: FileHandle,
    options: { kind: number; nextSeq: number; offset?: number },
  ) {
    this.#handle = handle;
    this.#kind = options.kind;
    this.offset = options.offset ?? SEGMENT_HEADER_BYTES;
    this.#bufOffset = this.offset;
    this.nextSeq = options.nextSeq;
  }

  /**
   * Returns the next batch of complete, verified records that end at or
   * before `limit`. An empty batch means no further complete record fits
   * below `limit`: either the end was reached (`offset === limit`), the next
   * record is incomplete, or bad data was found (`error` is set).
   *
   * @param limit File offset to stop at (for example the file size).
   * @param maxBytes Stop adding records to the batch after this many bytes.
   * @returns The records.
   */
  async read(limit: number, maxBytes = READ_CHUNK): Promise<RawRecord[]> {
    const out: RawRecord[] = [];
    let taken = 0;
    while (this.error === undefined) {
      let pos = this.offset - this.#bufOffset;
      const buf = this.#buf;
      let need = RECORD_HEADER_BYTES;
      while (pos + RECORD_HEADER_BYTES <= buf.length && taken < maxBytes) {
        const view = new DataView(buf.buffer, buf.byteOffset + pos);
        const length = view.getUint32(4, true);
        if (length < RECORD_HEADER_BYTES || length > MAX_RECORD_BYTES) {
          this.error = `record length ${length} is out of range`;
          return out;
        }
        if (this.offset + length > limit) return out;
        if (pos + length > buf.length) {
          need = length;
          break;
        }
        const bytes = buf.subarray(pos, pos + length);
        if (view.getUint32(0, true) !== crc32c(bytes, { start: 4 })) {
          this.error = "record checksum does not match";
          return out;
        }
        if (view.getUint8(8) !== this.#kind) {
          this.error = `record kind ${view.getUint8(8)} is unexpected`;
          return out;
        }
        const seq = _getU64(view, 12);
        if (seq !== this.nextSeq) {
          this.error = `record sequence ${seq} where ${this.nextSeq} was due`;
          return out;
        }
        out.push({ seq, flags: view.getUint8(9), bytes, offset: this.offset });
        this.offset += length;
        this.nextSeq++;
        taken += length;
        pos += length;
      }
      if (out.length > 0 || this.offset >= limit) return out;
      // Refill: keep the unparsed tail, read at least one whole record.
      const keep = buf.subarray(pos);
      const want = Math.min(
        Math.max(READ_CHUNK, need),
        limit - this.offset,
      );
      if (want <= keep.length) return out;
      const next = new Uint8Array(want);
      next.set(keep, 0);
      let filled = keep.length;
      while (filled < want) {
        const { bytesRead } = await this.#handle.read(
          next,
          filled,
          want - filled,
          this.offset + filled,
        );
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      this.#buf = next.subarray(0, filled);
      this.#bufOffset = this.offset;
      if (filled === keep.length) return out;
    }
    return out;
  }
}

/** A segment file of a log. */
export interface SegmentInfo {
  /** Sequence number of its first record. */
  readonly firstSeq: number;
  /** Its path. */
  readonly path: string;
  /** Bytes known to be durable (header included); 0 while being created. */
  size: number;
}

/** Something recovery did to a log at open. */
export type LogRepair =
  | {
    type: "truncated";
    file: string;
    offset: number;
    bytes: number;
    reason: string;
  }
  | { type: "removed"; file: string; bytes: number; reason: string };

/** Counters shared by the logs of one {@linkcode CommitGroup}. */
export interface CommitStats {
  /** Commit rounds run (each writes and fsyncs every dirty log). */
  commits: number;
  /** File fsyncs issued. */
  syncs: number;
}

/**
 * Runs group commits for a set of logs: whenever a log has queued records,
 * one loop writes and fsyncs every dirty log in parallel, resolves their
 * waiters, and repeats while more records arrived meanwhile.
 */
export class CommitGroup {
  #dirty = new Set<SegmentLog>();
  #running: Promise<void> | undefined;
  /** Counters. */
  readonly stats: CommitStats = { commits: 0, syncs: 0 };

  /** Queues a commit of `log`. */
  mark(log: SegmentLog): void {
    this.#dirty.add(log);
    this.#running ??= this.#loop();
  }

  /**
   * Resolves once no commit is queued or running.
   *
   * @returns When idle.
   */
  async idle(): Promise<void> {
    while (this.#running) await this.#running;
  }

  async #loop(): Promise<void> {
    // Let appends issued in the same tick join the first round.
    await Promise.resolve();
    while (this.#dirty.size > 0) {
      const logs = [...this.#dirty];
      this.#dirty.clear();
      this.stats.commits++;
      await Promise.all(logs.map((log) => log.commit()));
    }
    this.#running = undefined;
  }
}

/** Options for {@linkcode SegmentLog.open}. */
export interface SegmentLogOptions {
  /** 8 bytes that start every segment header. */
  magic: Uint8Array;
  /** The record kind this log holds. */
  kind: number;
  /** Start a new segment once the current one would grow past this. */
  segmentBytes: number;
  /** The group whose loop commits this log. */
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
}

interface Chunk {
  bytes: Uint8Array;
  firstSeq: number;
  lastSeq: number;
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
 * and truncates the file so that no unacknowledged byte stays behind.
 */
export class SegmentLog {
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
      const found = await _recoverSegment(segment, options);
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
   * @param seqs The first and last sequence numbers in `bytes`.
   * @returns Resolves with `lastSeq` once durable; rejects if the commit fails.
   * @throws {MoatError} `ERR_CLOSED` after close; `ERR_SEQUENCE` if
   * `firstSeq` does not follow `lastSeq`.
   */
  enqueue(
    bytes: Uint8Array,
    seqs: { firstSeq: number; lastSeq: number },
  ): Promise<number> {
    this.#checkOpen();
    if (seqs.firstSeq !== this.#lastSeq + 1 || seqs.lastSeq < seqs.firstSeq) {
      throw new MoatError(
        "ERR_SEQUENCE",
        `Cannot queue records ${seqs.firstSeq} to ${seqs.lastSeq}: the log ends at ${this.#lastSeq}`,
      );
    }
    this.#pending.push({ bytes, ...seqs });
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
          segment = {
            firstSeq: batch[i]!.firstSeq,
            path: join(this.dir, _segmentName(batch[i]!.firstSeq)),
            size: 0,
          };
          this.#segments.push(segment);
          this.#handle = await open(segment.path, "wx", 0o600);
          bufs.push(_segmentHeader(options.magic, segment.firstSeq));
          created = true;
        } else if (this.#handle === undefined) {
          this.#handle = await open(segment.path, "r+");
        }
        let size = segment.size + (created ? SEGMENT_HEADER_BYTES : 0);
        let lastSeq = this.#durableSeq;
        do {
          const chunk = batch[i]!;
          bufs.push(chunk.bytes);
          size += chunk.bytes.length;
          lastSeq = chunk.lastSeq;
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
        if (_code(error) !== "ENOENT") throw error;
      });
      this.#segments.pop();
      removed = true;
    }
    if (removed) await syncDir(this.dir);
    const last = this.#segments.at(-1);
    if (last) {
      await truncate(last.path, last.size);
      this.#handle = await open(last.path, "r+");
    }
    this.#broken = false;
  }

  async #closeHandle(): Promise<void> {
    const handle = this.#handle;
    this.#handle = undefined;
    await handle?.close().catch(() => {});
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
        if (_code(error) !== "ENOENT") throw error;
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
 * Verifies a segment and cuts a torn tail.
 *
 * @returns The last valid sequence number and a copy of that record, or
 * undefined if the segment held no valid record (it has then been removed).
 */
async function _recoverSegment(
  segment: SegmentInfo,
  options: SegmentLogOptions,
): Promise<{ lastSeq: number; lastRecord: Uint8Array } | undefined> {
  const handle = await open(segment.path, "r+");
  let fileSize = 0;
  let removeReason: string | undefined;
  let lastSeq: number | undefined;
  let lastRecord: Uint8Array | undefined;
  try {
    fileSize = (await handle.stat()).size;
    const header = new Uint8Array(Math.min(fileSize, SEGMENT_HEADER_BYTES));
    await handle.read(header, 0, header.length, 0);
    removeReason = _checkHeader(header, options.magic, segment.firstSeq);
    if (removeReason === undefined) {
      const scanner = new SegmentScanner(handle, {
        kind: options.kind,
        nextSeq: segment.firstSeq,
      });
      while (true) {
        const batch = await scanner.read(fileSize);
        if (batch.length === 0) break;
        lastRecord = batch.at(-1)!.bytes.slice();
      }
      if (scanner.offset === SEGMENT_HEADER_BYTES) {
        removeReason = scanner.error ?? "segment holds no complete record";
      } else {
        lastSeq = scanner.nextSeq - 1;
        if (scanner.offset < fileSize) {
          await handle.truncate(scanner.offset);
          await handle.sync();
          options.onRepair?.({
            type: "truncated",
            file: segment.path,
            offset: scanner.offset,
            bytes: fileSize - scanner.offset,
            reason: scanner.error ?? "last record is incomplete",
          });
        }
        segment.size = scanner.offset;
      }
    }
  } finally {
    await handle.close();
  }
  if (lastSeq !== undefined) return { lastSeq, lastRecord: lastRecord! };
  await unlink(segment.path);
  await syncDir(dirname(segment.path));
  options.onRepair?.({
    type: "removed",
    file: segment.path,
    bytes: fileSize,
    reason: removeReason ?? "segment is invalid",
  });
  return undefined;
}

/**
 * Lists a log directory's segments without opening them.
 *
 * @param dir The directory.
 * @returns Segment first sequence numbers and paths, oldest first; empty if
 * the directory does not exist.
 * @throws {Error} A system error other than ENOENT.
 */
export async function listSegments(
  dir: string,
): Promise<{ firstSeq: number; path: string }[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    if (_code(error) === "ENOENT") return [];
    throw error;
  }
  const out: { firstSeq: number; path: string }[] = [];
  for (const name of names.sort()) {
    const match = SEGMENT_NAME.exec(name);
    if (match) out.push({ firstSeq: Number(match[1]), path: join(dir, name) });
  }
  return out;
}

/**
 * Reads every verified record of one segment, in batches.
 *
 * @param path The segment file.
 * @param options Magic and kind expected, the first sequence number (from
 * the file name), and whether this is the log's last segment: there, a torn
 * or invalid tail ends the data silently (it is unacknowledged data, or a
 * record being written right now); elsewhere it is corruption.
 * @returns Batches of records.
 * @throws {MoatError} `ERR_CORRUPT` for bad data in a non-last segment or a
 * bad header.
 */
export async function* readSegment(
  path: string,
  options: { magic: Uint8Array; kind: number; firstSeq: number; last: boolean },
): AsyncGenerator<RawRecord[]> {
  const handle = await open(path, "r");
  try {
    const size = (await handle.stat()).size;
    const header = new Uint8Array(Math.min(size, SEGMENT_HEADER_BYTES));
    await handle.read(header, 0, header.length, 0);
    const bad = _checkHeader(header, options.magic, options.firstSeq);
    if (bad !== undefined) {
      // A torn header can only be on a segment being created.
      if (options.last) return;
      throw _corrupt(path, 0, bad);
    }
    const scanner = new SegmentScanner(handle, {
      kind: options.kind,
      nextSeq: options.firstSeq,
    });
    while (true) {
      const batch = await scanner.read(size);
      if (batch.length === 0) break;
      yield batch;
    }
    if (scanner.offset < size && !options.last) {
      throw _corrupt(
        path,
        scanner.offset,
        scanner.error ?? "last record is incomplete",
      );
    }
  } finally {
    await handle.close();
  }
}

/**
 * Builds the error for damaged data.
 *
 * @param path The file.
 * @param offset Where the damage starts.
 * @param reason What is wrong.
 * @returns The error.
 */
export function _corrupt(
  path: string,
  offset: number,
  reason: string,
): MoatError {
  return new MoatError(
    "ERR_CORRUPT",
    `Damaged data in "${path}" at byte ${offset}: ${reason}`,
    ExitCode.Integrity,
  );
}

/** Writes every buffer at `position`, looping over short writes. */
async function _writeAll(
  handle: FileHandle,
  bufs: Uint8Array[],
  position: number,
): Promise<void> {
  let total = 0;
  for (const buf of bufs) total += buf.length;
  let written = 0;
  while (written < total) {
    let rest = bufs;
    if (written > 0) {
      rest = [];
      let skip = written;
      for (const buf of bufs) {
        if (skip >= buf.length) {
          skip -= buf.length;
          continue;
        }
        rest.push(skip > 0 ? buf.subarray(skip) : buf);
        skip = 0;
      }
    }
    const { bytesWritten } = await handle.writev(rest, position + written);
    if (bytesWritten <= 0) {
      throw new MoatError(
        "ERR_IO",
        `Cannot write to "${handle.fd}": no progress`,
      );
    }
    written += bytesWritten;
  }
}
