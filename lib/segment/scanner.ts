/**
 * Reading segment files: list a log's segments, read one segment's verified
 * records in batches, or follow a segment that is still being written.
 * Every record passes {@linkcode checkRecord} before it is returned.
 *
 * @module
 */

import { open, readdir } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import {
  checkRecord,
  checkSegmentHeader,
  corruptError,
  getU64,
  MAX_RECORD_BYTES,
  parseSegmentName,
  RECORD_HEADER_BYTES,
  SEGMENT_HEADER_BYTES,
} from "./codec.ts";
import type { RawRecord } from "./codec.ts";
import { systemErrorCode } from "./fs.ts";

const READ_CHUNK = 1024 * 1024;

/**
 * Reads and verifies consecutive records from one segment file, from a byte
 * offset up to a limit that may grow between calls (for following a segment
 * that is being written).
 */
export class SegmentScanner {
  #handle: FileHandle;
  #kind: number;
  #buf: Uint8Array = new Uint8Array(0);
  #readBytes: number;
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
   * record at `offset`, the start offset (default: just after the header),
   * and how many bytes to read at a time (default 1 MiB; more if a record
   * needs it).
   */
  constructor(
    handle: FileHandle,
    options: {
      kind: number;
      nextSeq: number;
      offset?: number;
      readBytes?: number;
    },
  ) {
    this.#handle = handle;
    this.#kind = options.kind;
    this.#readBytes = options.readBytes ?? READ_CHUNK;
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
   * @param limit File offset to stop at (for example the file size); may
   * only grow from one call to the next.
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
      while (taken < maxBytes) {
        const checked = checkRecord(buf, pos, {
          kind: this.#kind,
          seq: this.nextSeq,
        });
        if (typeof checked !== "number") {
          if (checked.kind !== "incomplete") {
            this.error = checked.reason;
            return out;
          }
          if (pos + RECORD_HEADER_BYTES <= buf.length) {
            // The buffer never holds bytes past `limit`: read the rest of
            // the record, unless it ends past `limit` (still being written).
            const length = new DataView(buf.buffer, buf.byteOffset + pos)
              .getUint32(4, true);
            if (this.offset + length > limit) return out;
            need = length;
          }
          break;
        }
        out.push({
          seq: this.nextSeq,
          flags: buf[pos + 9]!,
          bytes: buf.subarray(pos, pos + checked),
          offset: this.offset,
        });
        this.offset += checked;
        this.nextSeq++;
        taken += checked;
        pos += checked;
      }
      if (out.length > 0 || this.offset >= limit) return out;
      // Read at least one whole record.
      if (!await this.#fill(limit, need)) return out;
    }
    return out;
  }

  /**
   * Moves past records while `skip` says so, checking only each record's
   * length, kind and sequence number, not its checksum: for records a
   * reader passes over and never returns (a time filter), at the cost of
   * reading little more than their headers. Stops before the first record
   * not skipped, at `limit`, or at bytes that fail those checks or do not
   * hold a whole record (left for {@linkcode SegmentScanner.read}, which
   * checks them in full).
   *
   * @param limit File offset to stop at (as for `read`).
   * @param options How many bytes of a record `skip` looks at (from its
   * start), and the test: it is given a view of the data and the record's
   * offset in it, with `peek` bytes there (fewer if the record is shorter:
   * `length` says how long it is).
   * @returns When stopped; `offset` and `nextSeq` are past the records skipped.
   */
  async skipWhile(
    limit: number,
    options: {
      peek: number;
      skip: (view: DataView, at: number, length: number) => boolean;
    },
  ): Promise<void> {
    const peek = Math.max(RECORD_HEADER_BYTES, options.peek);
    let view = new DataView(this.#buf.buffer, this.#buf.byteOffset);
    let size = this.#buf.length;
    while (this.error === undefined && this.offset < limit) {
      let pos = this.offset - this.#bufOffset;
      if (pos + RECORD_HEADER_BYTES > size) {
        if (!await this.#fill(limit, RECORD_HEADER_BYTES)) return;
        view = new DataView(this.#buf.buffer, this.#buf.byteOffset);
        size = this.#buf.length;
        pos = 0;
        if (RECORD_HEADER_BYTES > size) return;
      }
      const length = view.getUint32(pos + 4, true);
      if (
        length < RECORD_HEADER_BYTES || length > MAX_RECORD_BYTES ||
        this.offset + length > limit || view.getUint8(pos + 8) !== this.#kind ||
        getU64(view, pos + 12) !== this.nextSeq
      ) return;
      const need = Math.min(length, peek);
      if (pos + need > size) {
        if (!await this.#fill(limit, need)) return;
        view = new DataView(this.#buf.buffer, this.#buf.byteOffset);
        size = this.#buf.length;
        if (need > size) return;
        continue;
      }
      if (!options.skip(view, pos, length)) return;
      this.offset += length;
      this.nextSeq++;
    }
  }

  /**
   * Moves the buffer to start at `offset`: the unread bytes it holds, then
   * the file's, at least `need` bytes in all if the file has them, never
   * past `limit`.
   *
   * @returns Whether it now holds more bytes from `offset` than before (if
   * not, it is left as it was).
   */
  async #fill(limit: number, need: number): Promise<boolean> {
    // Empty when `offset` is past the buffer (a skipped record ran on).
    const keep = this.#buf.subarray(this.offset - this.#bufOffset);
    const want = Math.min(Math.max(this.#readBytes, need), limit - this.offset);
    if (want <= keep.length) return false;
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
    return filled > keep.length;
  }
}

/** A segment file found by {@linkcode listSegments}. */
export interface SegmentFile {
  /** Sequence number of its first record (from its name). */
  firstSeq: number;
  /** Its path. */
  path: string;
}

/**
 * Lists a log directory's segments without opening them.
 *
 * @param dir The directory.
 * @returns Segment first sequence numbers and paths, oldest first; empty if
 * the directory does not exist.
 * @throws {Error} A system error other than ENOENT.
 */
export async function listSegments(dir: string): Promise<SegmentFile[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    if (systemErrorCode(error) === "ENOENT") return [];
    throw error;
  }
  const out: SegmentFile[] = [];
  for (const name of names.sort()) {
    const firstSeq = parseSegmentName(name);
    if (firstSeq !== undefined) out.push({ firstSeq, path: join(dir, name) });
  }
  return out;
}

/** Options for {@linkcode readSegment}. */
export interface ReadSegmentOptions {
  /** The 8 bytes that start the log's segment headers. */
  magic: Uint8Array;
  /** The record kind the log holds. */
  kind: number;
  /** The first sequence number (from the file name). */
  firstSeq: number;
  /**
   * True for the log's last segment: there, a torn or invalid tail ends the
   * data silently (it is unacknowledged data, or a record being written
   * right now); elsewhere it is damage.
   */
  last: boolean;
  /** Bytes of records per batch, roughly. @default {1048576} */
  batchBytes?: number;
}

/**
 * Reads every verified record of one segment, in batches. The file stays
 * open while the generator runs.
 *
 * @param path The segment file.
 * @param options Format, first sequence number, whether it is the last.
 * @returns Batches of records.
 * @throws {MoatError} `ERR_CORRUPT` for bad data in a non-last segment or a
 * bad header.
 */
export async function* readSegment(
  path: string,
  options: ReadSegmentOptions,
): AsyncGenerator<RawRecord[]> {
  const handle = await open(path, "r");
  try {
    const size = (await handle.stat()).size;
    const header = new Uint8Array(Math.min(size, SEGMENT_HEADER_BYTES));
    await handle.read(header, 0, header.length, 0);
    const bad = checkSegmentHeader(header, options);
    if (bad !== undefined) {
      // A torn header can only be on a segment being created.
      if (options.last) return;
      throw corruptError(path, 0, bad);
    }
    const scanner = new SegmentScanner(handle, {
      kind: options.kind,
      nextSeq: options.firstSeq,
    });
    while (true) {
      const batch = await scanner.read(size, options.batchBytes);
      if (batch.length === 0) break;
      yield batch;
    }
    if (scanner.offset < size && !options.last) {
      throw corruptError(
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
 * Reads the first record of a segment, with the checks of
 * {@linkcode readSegment}, reading little more than that record.
 *
 * @param path The segment file.
 * @param options Format and first sequence number.
 * @returns The record, or undefined if the segment holds none yet (a
 * segment being created).
 * @throws {MoatError} `ERR_CORRUPT` for a bad header or a bad first record
 * in a segment that is not the last.
 */
export async function readFirstRecord(
  path: string,
  options: Omit<ReadSegmentOptions, "batchBytes">,
): Promise<RawRecord | undefined> {
  const handle = await open(path, "r");
  try {
    const size = (await handle.stat()).size;
    const header = new Uint8Array(Math.min(size, SEGMENT_HEADER_BYTES));
    await handle.read(header, 0, header.length, 0);
    const bad = checkSegmentHeader(header, options);
    if (bad !== undefined) {
      if (options.last) return undefined;
      throw corruptError(path, 0, bad);
    }
    const scanner = new SegmentScanner(handle, {
      kind: options.kind,
      nextSeq: options.firstSeq,
      readBytes: 4096,
    });
    const [first] = await scanner.read(size, 1);
    if (first === undefined && !options.last) {
      throw corruptError(
        path,
        scanner.offset,
        scanner.error ?? "segment holds no complete record",
      );
    }
    return first;
  } finally {
    await handle.close();
  }
}
