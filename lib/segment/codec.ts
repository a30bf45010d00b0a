/**
 * The segment format shared by the vault, its seal log and the shipper's
 * spool, as pure functions over bytes: the 32-byte segment header, the
 * 20-byte header every record starts with, and the checks a reader applies
 * to both. Layout: `docs/VAULT.md`, "Common building block".
 *
 * @module
 */

import { ExitCode, MoatError } from "../errors.ts";
import { crc32c } from "./crc32c.ts";

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

/**
 * Writes `value` (0 to 2^53 - 1) as an unsigned 64-bit little-endian integer.
 *
 * @example Round trip
 * ```ts
 * import { getU64, setU64 } from "./codec.ts";
 * import assert from "node:assert/strict";
 * const view = new DataView(new ArrayBuffer(8));
 * setU64(view, 0, 2 ** 40 + 7);
 * assert.equal(getU64(view, 0), 2 ** 40 + 7);
 * ```
 *
 * @param view Where to write.
 * @param at Byte offset in `view`.
 * @param value The integer.
 */
export function setU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, value % TWO_32, true);
  view.setUint32(at + 4, Math.floor(value / TWO_32), true);
}

/**
 * Reads an unsigned 64-bit little-endian integer as a number (exact below 2^53).
 *
 * @param view Where to read.
 * @param at Byte offset in `view`.
 * @returns The integer.
 */
export function getU64(view: DataView, at: number): number {
  return view.getUint32(at + 4, true) * TWO_32 + view.getUint32(at, true);
}

/**
 * Fills in a record's common header and checksum. `bytes` must already hold
 * the kind-specific fields and payload after {@linkcode RECORD_HEADER_BYTES}.
 *
 * @example A record that passes checkRecord
 * ```ts
 * import { checkRecord, finishRecord } from "./codec.ts";
 * import assert from "node:assert/strict";
 * const record = new Uint8Array(24);
 * finishRecord(record, { kind: 2, flags: 0, seq: 7 });
 * assert.equal(checkRecord(record, 0, { kind: 2, seq: 7 }), 24);
 * ```
 *
 * @param bytes The whole record, exactly `length` bytes long.
 * @param fields Record kind, flags and sequence number.
 */
export function finishRecord(
  bytes: Uint8Array,
  fields: { kind: number; flags: number; seq: number },
): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  view.setUint32(4, bytes.length, true);
  view.setUint8(8, fields.kind);
  view.setUint8(9, fields.flags);
  view.setUint16(10, 0, true);
  setU64(view, 12, fields.seq);
  view.setUint32(0, crc32c(bytes, 4), true);
}

/**
 * The file name of the segment whose first record has sequence `seq`.
 *
 * @example Usage
 * ```ts
 * import { segmentName } from "./codec.ts";
 * import assert from "node:assert/strict";
 * assert.equal(segmentName(4097), "00000000000000004097.seg");
 * ```
 *
 * @param seq The sequence number.
 * @returns 20 decimal digits and `.seg`.
 */
export function segmentName(seq: number): string {
  return `${String(seq).padStart(20, "0")}.seg`;
}

/**
 * The first sequence number a segment file name stands for.
 *
 * @param name A file name.
 * @returns The number, or undefined if `name` is not a segment's.
 */
export function parseSegmentName(name: string): number | undefined {
  const match = SEGMENT_NAME.exec(name);
  return match ? Number(match[1]) : undefined;
}

/**
 * Builds a segment header.
 *
 * @param magic The 8 bytes naming the log's format.
 * @param firstSeq Sequence number of the segment's first record.
 * @returns The 32 bytes.
 */
export function encodeSegmentHeader(
  magic: Uint8Array,
  firstSeq: number,
): Uint8Array {
  const header = new Uint8Array(SEGMENT_HEADER_BYTES);
  const view = new DataView(header.buffer);
  header.set(magic, 0);
  view.setUint16(8, SEGMENT_VERSION, true);
  view.setUint16(10, SEGMENT_HEADER_BYTES, true);
  setU64(view, 16, firstSeq);
  view.setUint32(24, crc32c(header, 0, 24), true);
  return header;
}

/**
 * Checks a segment header.
 *
 * @param header The file's first bytes (at most 32 are looked at).
 * @param expect The magic of the log and the first sequence number the file
 * name promises.
 * @returns Undefined if valid, else the reason.
 */
export function checkSegmentHeader(
  header: Uint8Array,
  expect: { magic: Uint8Array; firstSeq: number },
): string | undefined {
  if (header.length < SEGMENT_HEADER_BYTES) return "header is incomplete";
  const view = new DataView(header.buffer, header.byteOffset, header.length);
  if (view.getUint32(24, true) !== crc32c(header, 0, 24)) {
    return "header checksum does not match";
  }
  for (let i = 0; i < 8; i++) {
    if (header[i] !== expect.magic[i]) return "header magic is wrong";
  }
  const version = view.getUint16(8, true);
  if (version !== SEGMENT_VERSION) {
    return `segment version ${version} is not supported`;
  }
  if (getU64(view, 16) !== expect.firstSeq) {
    return "header sequence number does not match the file name";
  }
  return undefined;
}

/** Why the bytes at some offset are not the record due there. */
export interface RecordStop {
  /**
   * `incomplete`: the bytes end inside the record (its length is in range);
   * `damaged`: its length, checksum or kind is wrong;
   * `sequence`: a valid record carrying another sequence number.
   */
  kind: "incomplete" | "damaged" | "sequence";
  /** What is wrong, for messages. */
  reason: string;
}

/**
 * Checks the record that starts at `at`: length in range and inside
 * `bytes`, checksum, kind, and sequence number. Every reader of segments
 * applies exactly this check, in this order.
 *
 * @param bytes The data (a whole file, or a window of it starting at a
 * record).
 * @param at Offset of the record in `bytes`.
 * @param expect The kind the log holds and the sequence number due.
 * @returns The record's length if it is the record due, else why not.
 */
export function checkRecord(
  bytes: Uint8Array,
  at: number,
  expect: { kind: number; seq: number },
): number | RecordStop {
  if (at + RECORD_HEADER_BYTES > bytes.length) {
    return { kind: "incomplete", reason: "data ends inside a record header" };
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset + at);
  const length = view.getUint32(4, true);
  if (length < RECORD_HEADER_BYTES || length > MAX_RECORD_BYTES) {
    return {
      kind: "damaged",
      reason: `record length ${length} is out of range`,
    };
  }
  if (at + length > bytes.length) {
    return {
      kind: "incomplete",
      reason: `data ends inside a record of ${length} bytes`,
    };
  }
  const record = bytes.subarray(at, at + length);
  if (view.getUint32(0, true) !== crc32c(record, 4)) {
    return { kind: "damaged", reason: "record checksum does not match" };
  }
  if (record[8] !== expect.kind) {
    return {
      kind: "damaged",
      reason: `record kind ${record[8]} is unexpected`,
    };
  }
  const seq = getU64(view, 12);
  if (seq !== expect.seq) {
    return {
      kind: "sequence",
      reason: `record ${seq} is stored where ${expect.seq} is due`,
    };
  }
  return length;
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

/** What {@linkcode scanSegment} found in one segment file's bytes. */
export interface SegmentScan {
  /** The valid records from the start, in order. */
  records: RawRecord[];
  /** Offset just after the last valid record (0 if the header is bad). */
  end: number;
  /** Where and why the valid records stop, if the file does not end there. */
  stop?: {
    /** `header` for a bad segment header, else as in {@linkcode RecordStop}. */
    kind: "header" | RecordStop["kind"];
    /** Byte offset of the bad header (0) or record. */
    offset: number;
    /** The sequence number due there. */
    seq: number;
    /** What is wrong. */
    reason: string;
  };
}

/**
 * Checks a whole segment file held in memory: its header, then every
 * record with {@linkcode checkRecord}, stopping at the first bad one.
 *
 * @example A segment with a torn last record
 * ```ts
 * import { encodeSegmentHeader, finishRecord, scanSegment } from "./codec.ts";
 * import assert from "node:assert/strict";
 * const magic = Uint8Array.of(0x89, ...new TextEncoder().encode("MOATXYZ"));
 * const record = new Uint8Array(24);
 * finishRecord(record, { kind: 9, flags: 0, seq: 1 });
 * const file = new Uint8Array([
 *   ...encodeSegmentHeader(magic, 1), ...record, ...record.subarray(0, 10),
 * ]);
 * const scan = scanSegment(file, { magic, kind: 9, firstSeq: 1 });
 * assert.equal(scan.records.length, 1);
 * assert.equal(scan.stop?.kind, "incomplete");
 * assert.equal(scan.stop?.offset, 56);
 * ```
 *
 * @param bytes The file's bytes.
 * @param expect Magic and record kind of the log, and the first sequence
 * number (from the file name).
 * @returns The records and where they stop.
 */
export function scanSegment(
  bytes: Uint8Array,
  expect: { magic: Uint8Array; kind: number; firstSeq: number },
): SegmentScan {
  const records: RawRecord[] = [];
  const first = expect.firstSeq;
  const bad = checkSegmentHeader(bytes, expect);
  if (bad !== undefined) {
    const torn = bytes.length < SEGMENT_HEADER_BYTES;
    return {
      records,
      end: 0,
      stop: {
        kind: torn ? "incomplete" : "header",
        offset: 0,
        seq: first,
        reason: `the segment ${bad}`,
      },
    };
  }
  let at = SEGMENT_HEADER_BYTES;
  let seq = first;
  while (at < bytes.length) {
    const checked = checkRecord(bytes, at, { kind: expect.kind, seq });
    if (typeof checked !== "number") {
      return {
        records,
        end: at,
        stop: { kind: checked.kind, offset: at, seq, reason: checked.reason },
      };
    }
    records.push({
      seq,
      flags: bytes[at + 9]!,
      bytes: bytes.subarray(at, at + checked),
      offset: at,
    });
    at += checked;
    seq++;
  }
  return { records, end: at };
}

/**
 * Builds the error for damaged data.
 *
 * @param path The file.
 * @param offset Where the damage starts.
 * @param reason What is wrong.
 * @returns An `ERR_CORRUPT` error (exit status 5).
 */
export function corruptError(
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
