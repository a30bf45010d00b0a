/**
 * CRC-32C (Castagnoli), the checksum on every segment header and record
 * (vault, spool and seal logs). Slicing-by-8 over a precomputed table; no
 * dependencies.
 *
 * @module
 */

const POLY = 0x82f63b78;

/** Eight 256-entry tables, one after the other, for slicing-by-8. */
const TABLE: Uint32Array = _makeTable();

function _makeTable(): Uint32Array {
  const table = new Uint32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    table[n] = c;
  }
  for (let n = 0; n < 256; n++) {
    let c = table[n]!;
    for (let k = 1; k < 8; k++) {
      c = table[c & 0xff]! ^ (c >>> 8);
      table[k * 256 + n] = c;
    }
  }
  return table;
}

/**
 * Computes the CRC-32C of `bytes[start, end)`.
 *
 * @example Check value
 * ```ts
 * import { crc32c } from "./crc32c.ts";
 * import assert from "node:assert/strict";
 * assert.equal(crc32c(new TextEncoder().encode("123456789")), 0xe3069283);
 * ```
 *
 * @param bytes The data.
 * @param range Optional `start` (default 0) and `end` (default `bytes.length`).
 * @returns The checksum as an unsigned 32-bit integer.
 */
export function crc32c(
  bytes: Uint8Array,
  range: { start?: number; end?: number } = {},
): number {
  return crc32cRange(bytes, range.start ?? 0, range.end ?? bytes.length);
}

/**
 * {@linkcode crc32c} of `bytes[start, end)`, without an options object: for
 * loops over thousands of records.
 *
 * @example
 * ```ts
 * import { crc32c, crc32cRange } from "./crc32c.ts";
 * import assert from "node:assert/strict";
 * const bytes = new TextEncoder().encode("..123456789");
 * assert.equal(crc32cRange(bytes, 2, bytes.length), crc32c(bytes, { start: 2 }));
 * ```
 *
 * @param bytes The data.
 * @param start First byte.
 * @param end After the last byte.
 * @returns The checksum as an unsigned 32-bit integer.
 */
export function crc32cRange(
  bytes: Uint8Array,
  start: number,
  end: number,
): number {
  const t = TABLE;
  let i = start;
  let crc = 0xffffffff;
  const fast = end - ((end - i) & 7);
  while (i < fast) {
    const a = (crc ^ (bytes[i]! | (bytes[i + 1]! << 8) |
      (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24))) >>> 0;
    crc = t[0x700 + (a & 0xff)]! ^ t[0x600 + ((a >>> 8) & 0xff)]! ^
      t[0x500 + ((a >>> 16) & 0xff)]! ^ t[0x400 + (a >>> 24)]! ^
      t[0x300 + bytes[i + 4]!]! ^ t[0x200 + bytes[i + 5]!]! ^
      t[0x100 + bytes[i + 6]!]! ^ t[bytes[i + 7]!]!;
    i += 8;
  }
  while (i < end) crc = t[(crc ^ bytes[i++]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}
