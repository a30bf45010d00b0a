/**
 * The leaves of a source's Merkle tree: the canonical encoding of one vault
 * record, which anyone can recompute from the record (see `docs/VAULT.md`,
 * "Leaf encoding"). The tree hashes them as RFC 9162 leaves,
 * SHA-256(0x00 ‖ leaf).
 *
 * | offset | size | field                                   |
 * | ------ | ---- | --------------------------------------- |
 * | 0      | 1    | leaf version, 1                         |
 * | 1      | 32   | source hash                             |
 * | 33     | 8    | seq, u64 little-endian                  |
 * | 41     | 8    | ts (shipper's time, ms), u64 LE         |
 * | 49     | 8    | recvTs (server's receive time, ms), u64 |
 * | 57     | 1    | flags: 0x01 partial                     |
 * | 58     | rest | the line                                |
 *
 * Pure: no I/O, importable by the shipper.
 *
 * @module
 */

import { Code, MoatError } from "../errors.ts";

/** Version byte every leaf starts with. */
export const LEAF_VERSION = 1;
/** Bytes of a leaf before its line. */
export const LEAF_HEADER_BYTES = 58;
/** Leaf flag: the line is a piece of an overlong line continued by the next record. */
export const LEAF_FLAG_PARTIAL = 0x01;
/** Bytes of a source hash. */
export const SOURCE_HASH_BYTES = 32;

/** One record, as its leaf holds it. */
export interface Leaf {
  /** The source hash (`sourceHash` of the source key, 32 bytes). */
  source: Uint8Array;
  /** The record's sequence number. */
  seq: number;
  /** The shipper's timestamp, ms since the epoch. */
  ts: number;
  /** The server's receive time, ms since the epoch. */
  recvTs: number;
  /** True if the next record continues this line. */
  partial: boolean;
  /** The line, without its newline. */
  line: Uint8Array;
}

function u64(view: DataView, at: number, value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`Invalid leaf: ${what} ${value} is out of range`);
  }
  view.setUint32(at, value % 0x100000000, true);
  view.setUint32(at + 4, Math.floor(value / 0x100000000), true);
}

function getU64(view: DataView, at: number): number {
  return view.getUint32(at, true) + view.getUint32(at + 4, true) * 0x100000000;
}

/**
 * Encodes a record as its leaf.
 *
 * @example Round trip
 * ```ts
 * import { decodeLeaf, encodeLeaf } from "./leaf.ts";
 * import assert from "node:assert/strict";
 * const leaf = {
 *   source: new Uint8Array(32), seq: 7, ts: 1000, recvTs: 1001,
 *   partial: false, line: new TextEncoder().encode("hello"),
 * };
 * const bytes = encodeLeaf(leaf);
 * assert.equal(bytes.length, 58 + 5);
 * assert.deepEqual(decodeLeaf(bytes), leaf);
 * ```
 *
 * @param leaf The record.
 * @returns The leaf bytes (58 + line length).
 * @throws {RangeError} For a source hash that is not 32 bytes or a number
 * out of range.
 */
export function encodeLeaf(leaf: Leaf): Uint8Array {
  if (leaf.source.length !== SOURCE_HASH_BYTES) {
    throw new RangeError("Invalid leaf: a source hash is 32 bytes");
  }
  const out = new Uint8Array(LEAF_HEADER_BYTES + leaf.line.length);
  const view = new DataView(out.buffer);
  out[0] = LEAF_VERSION;
  out.set(leaf.source, 1);
  u64(view, 33, leaf.seq, "seq");
  u64(view, 41, leaf.ts, "ts");
  u64(view, 49, leaf.recvTs, "recvTs");
  out[57] = leaf.partial ? LEAF_FLAG_PARTIAL : 0;
  out.set(leaf.line, LEAF_HEADER_BYTES);
  return out;
}

/**
 * Decodes a leaf.
 *
 * @param bytes The leaf bytes.
 * @returns The record it holds (`line` and `source` are views into `bytes`).
 * @throws {MoatError} `ERR_CHECKPOINT` for a leaf that is too short, of an
 * unknown version or with unknown flags.
 */
export function decodeLeaf(bytes: Uint8Array): Leaf {
  if (bytes.length < LEAF_HEADER_BYTES) {
    throw new MoatError(Code.ERR_CHECKPOINT, "leaf is too short");
  }
  if (bytes[0] !== LEAF_VERSION) {
    throw new MoatError(
      Code.ERR_CHECKPOINT,
      `leaf version ${bytes[0]} is unknown`,
    );
  }
  if ((bytes[57]! & ~LEAF_FLAG_PARTIAL) !== 0) {
    throw new MoatError(
      Code.ERR_CHECKPOINT,
      `leaf flags ${bytes[57]} are unknown`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    source: bytes.subarray(1, 33),
    seq: getU64(view, 33),
    ts: getU64(view, 41),
    recvTs: getU64(view, 49),
    partial: (bytes[57]! & LEAF_FLAG_PARTIAL) !== 0,
    line: bytes.subarray(LEAF_HEADER_BYTES),
  };
}
