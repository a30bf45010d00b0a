/**
 * The per-source hash chain: every vault line record carries
 * `link[n] = SHA-256(record n from byte 4, with the link field holding
 * link[n-1])`, starting from a genesis that names the vault and the source.
 * Format: `docs/VAULT.md`, "Hash chain".
 *
 * @module
 */

import { createHash, hash as oneShotHash, timingSafeEqual } from "node:crypto";
import {
  jsLimit,
  nativeSha256,
  sha256,
  sha256Js,
  sha256Parts,
} from "../sha256.ts";
import { sourceHash } from "./_key.ts";
import type { SourceKey } from "./_key.ts";

/** Offset of the chain link inside a vault line record. */
export const LINK_OFFSET = 36;
/** Bytes of a chain link. */
export const LINK_BYTES = 32;

const GENESIS_LABEL = new TextEncoder().encode("moat-chain-1\0");

/**
 * The link before a source's first record: SHA-256 over `"moat-chain-1\0"`,
 * the vault id and the source hash. Binds every chain to one vault and one
 * source.
 *
 * @param vaultId The vault's 16-byte id.
 * @param key The source.
 * @returns The genesis link.
 */
export function chainGenesis(vaultId: Uint8Array, key: SourceKey): Uint8Array {
  return createHash("sha256").update(GENESIS_LABEL).update(vaultId)
    .update(sourceHash(key)).digest();
}

/**
 * Computes a record's chain link: SHA-256 over the record from byte 4 to
 * its end, with the link field holding the previous link. Leaves the link
 * field holding `prev`.
 *
 * @param record A vault line record with flag 0x01 (its CRC is not covered).
 * @param prev The previous record's link (or the genesis link).
 * @returns The record's link.
 */
export function computeLink(record: Uint8Array, prev: Uint8Array): Uint8Array {
  record.set(prev, LINK_OFFSET);
  return sha256(record.subarray(4));
}

/**
 * Computes the chain link of the record at `bytes[start, end)` in place, as
 * {@linkcode computeLink} does: its link field must hold the previous link,
 * and holds the record's own afterwards. With a native SHA-256 installed
 * (`setNativeSha256`) the record is hashed where it lies and the digest
 * written in place. Else, where `lib/sha256.ts` hashes
 * with `node:crypto` (Bun; on Deno, long records), the digest comes as hex and is
 * written in place: `node:crypto` would make a Buffer per record, most of
 * what a batch of thousands of empty records cost the garbage collector.
 *
 * @param bytes Holds the record (flag 0x01 set, header fields written).
 * @param start The record's first byte.
 * @param end After its last byte.
 */
export function writeLink(bytes: Uint8Array, start: number, end: number): void {
  const at = start + LINK_OFFSET;
  if (nativeSha256() !== undefined) {
    // Hashed where it lies, the digest written in place: no view, no copy.
    sha256Parts(bytes, start + 4, end, bytes, 0, 0, bytes, at);
    return;
  }
  const data = bytes.subarray(start + 4, end);
  if (data.length <= jsLimit()) {
    bytes.set(sha256Js(data), at);
    return;
  }
  const hex = typeof oneShotHash === "function"
    ? oneShotHash("sha256", data, "hex")
    : createHash("sha256").update(data).digest("hex");
  for (let i = 0; i < LINK_BYTES; i++) {
    bytes[at + i] = (HEX[hex.charCodeAt(2 * i)]! << 4) |
      HEX[hex.charCodeAt(2 * i + 1)]!;
  }
}

/** Lowercase hex digit → value, by character code. */
const HEX: Uint8Array = hexTable();

function hexTable(): Uint8Array {
  const table = new Uint8Array(128);
  for (let i = 0; i < 16; i++) table["0123456789abcdef".charCodeAt(i)] = i;
  return table;
}

/**
 * Checks a stored record's link without changing the record.
 *
 * @param record The record as read (flag 0x01 set).
 * @param prev The previous link.
 * @returns The computed link and whether the stored one matches it.
 */
export function checkLink(
  record: Uint8Array,
  prev: Uint8Array,
): { link: Uint8Array; ok: boolean } {
  // A copy even when `record` is a Buffer (whose slice is a view).
  const stored = new Uint8Array(
    record.subarray(LINK_OFFSET, LINK_OFFSET + LINK_BYTES),
  );
  const link = computeLink(record, prev);
  record.set(stored, LINK_OFFSET);
  return { link, ok: _equal(stored, link) };
}

/**
 * Constant-time comparison of two byte strings of equal length.
 *
 * @param a One.
 * @param b The other.
 * @returns True if equal.
 */
export function _equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
