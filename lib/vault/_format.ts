/**
 * The vault's on-disk names and its line-record codec (see `docs/VAULT.md`).
 *
 * @module
 */

import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { _corrupt, _getU64, _sealRecord, _setU64 } from "./_segment_log.ts";
import type { RawRecord } from "./_segment_log.ts";
import { computeLink } from "./_seal.ts";

/** Magic at the start of every vault segment: 0x89 "MOATVLT". */
export const VAULT_MAGIC: Uint8Array = Uint8Array.of(
  0x89,
  0x4d,
  0x4f,
  0x41,
  0x54,
  0x56,
  0x4c,
  0x54,
);
/** Record kind of a vault line record. */
export const VAULT_KIND = 1;
/** Record flag: a 32-byte chain link follows the fixed fields (every record this version writes has one). */
export const FLAG_CHAIN = 0x01;
/** Record flag: the line is a piece of an overlong line, continued by the next record. */
export const FLAG_PARTIAL = 0x02;
/** Every flag this version understands. */
const KNOWN_FLAGS = FLAG_CHAIN | FLAG_PARTIAL;
/** Offset of the line in a record without a chain link. */
export const VAULT_LINE_OFFSET = 36;
/** Length of a chain link. */
export const CHAIN_LINK_BYTES = 32;
/** Marker file that makes a directory a vault. */
export const MARKER_FILE = "VAULT";
/** Contents of the marker file. */
export const MARKER_TEXT = "moat vault 1\n";
/** Subdirectory holding one directory per source. */
export const SOURCES_DIR = "sources";
/** File inside a source directory naming its key. */
export const SOURCE_FILE = "source.json";
/** Single-writer lock file in the vault directory. */
export const LOCK_FILE = "LOCK";

/** Who wrote a record: the peer as the server identified it, and the name the shipper gave. */
export interface SourceKey {
  /** The peer's identity as the server sees it (its address today). */
  readonly peer: string;
  /** The source name the shipper sent. */
  readonly name: string;
}

/** One stored line. */
export interface VaultRecord {
  /** The peer the record came from. */
  peer: string;
  /** The shipper's source name. */
  name: string;
  /** Per-source sequence number, from 1, without gaps. */
  seq: number;
  /** The shipper's timestamp, in milliseconds since the epoch. */
  ts: number;
  /** The server's receive time, in milliseconds since the epoch. */
  recvTs: number;
  /** The line, without its newline. */
  line: Uint8Array;
  /** True if the next record continues this line (an overlong line was split). */
  partial: boolean;
}

const SLUG_UNSAFE = /[^A-Za-z0-9._-]/g;

/**
 * The directory name of a source: a readable slug of peer and name (every
 * character outside `[A-Za-z0-9._-]`, and a leading dot, replaced by `_`,
 * each part cut to 40 characters) and 32 hex digits of SHA-256 over the exact key, so distinct
 * keys get distinct names and no key can climb out of the sources directory.
 *
 * @example Usage
 * ```ts
 * import { sourceDirName } from "./_format.ts";
 * import assert from "node:assert/strict";
 * const name = sourceDirName({ peer: "::1", name: "../../etc" });
 * assert.match(name, /^__1~_\._\.\._etc~[0-9a-f]{32}$/);
 * ```
 *
 * @param key The source key.
 * @returns A safe file name of at most 115 bytes.
 */
export function sourceDirName(key: SourceKey): string {
  const hash = createHash("sha256")
    .update(JSON.stringify([key.peer, key.name]))
    .digest("hex")
    .slice(0, 32);
  return `${_slug(key.peer)}~${_slug(key.name)}~${hash}`;
}

function _slug(text: string): string {
  // Never a leading dot: names starting with "." are the vault's own temporaries.
  return text.slice(0, 40).replace(SLUG_UNSAFE, "_").replace(/^\./, "_");
}

/**
 * The display label of a source: `peer/name`.
 *
 * @param key The source key.
 * @returns The label.
 */
export function sourceLabel(key: SourceKey): string {
  return `${key.peer}/${key.name}`;
}

/**
 * Path of a source's directory.
 *
 * @param vaultDir The vault directory.
 * @param key The source key.
 * @returns The path.
 */
export function sourceDir(vaultDir: string, key: SourceKey): string {
  return join(vaultDir, SOURCES_DIR, sourceDirName(key));
}

/**
 * Checks a source key's shape.
 *
 * @param key Untrusted key.
 * @throws {TypeError} If peer or name is not a string, name is empty, or
 * either is longer than 1024 characters.
 */
export function checkSourceKey(key: SourceKey): void {
  if (typeof key?.peer !== "string" || typeof key.name !== "string") {
    throw new TypeError("Invalid source: peer and name must be strings");
  }
  if (key.name.length === 0) {
    throw new TypeError("Invalid source: name is empty");
  }
  if (key.peer.length > 1024 || key.name.length > 1024) {
    throw new TypeError(
      "Invalid source: peer and name must be at most 1024 characters",
    );
  }
}

/**
 * Encodes line records back to back. With `options.chain`, every record
 * carries flag 0x01 and its chain link (see `docs/VAULT.md`), and
 * `chain.link` is advanced to the last record's link.
 *
 * @param records Records, sequence numbers consecutive.
 * @param recvTs The receive time stamped on all of them.
 * @param options The chain state to continue (updated in place).
 * @returns The bytes.
 */
export function encodeVaultRecords(
  records: readonly {
    seq: number;
    ts: number;
    line: Uint8Array;
    partial?: boolean;
  }[],
  recvTs: number,
  options: { chain?: { link: Uint8Array } } = {},
): Uint8Array {
  const chain = options.chain;
  const lineAt = VAULT_LINE_OFFSET + (chain ? CHAIN_LINK_BYTES : 0);
  let total = 0;
  for (const record of records) total += lineAt + record.line.length;
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const record of records) {
    const length = lineAt + record.line.length;
    const bytes = out.subarray(at, at + length);
    const flags = (record.partial ? FLAG_PARTIAL : 0) |
      (chain ? FLAG_CHAIN : 0);
    _setU64(view, at + 20, record.ts);
    _setU64(view, at + 28, recvTs);
    out.set(record.line, at + lineAt);
    if (chain) {
      // The link covers the header fields, so set them before hashing.
      view.setUint32(at + 4, length, true);
      view.setUint8(at + 8, VAULT_KIND);
      view.setUint8(at + 9, flags);
      _setU64(view, at + 12, record.seq);
      chain.link = computeLink(bytes, chain.link);
      bytes.set(chain.link, VAULT_LINE_OFFSET);
    }
    _sealRecord(bytes, { kind: VAULT_KIND, flags, seq: record.seq });
    at += length;
  }
  return out;
}

/**
 * Decodes a verified vault record.
 *
 * @param raw The record as read.
 * @param key Its source.
 * @param path The segment file, for errors.
 * @returns The record; `line` is a view into the read buffer.
 * @throws {MoatError} `ERR_CORRUPT` for unknown flags or a short record.
 */
export function decodeVaultRecord(
  raw: RawRecord,
  key: SourceKey,
  path: string,
): VaultRecord {
  const bytes = raw.bytes;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if ((raw.flags & ~KNOWN_FLAGS) !== 0) {
    throw _corrupt(path, raw.offset, `record flags ${raw.flags} are unknown`);
  }
  const lineAt = VAULT_LINE_OFFSET +
    (raw.flags & FLAG_CHAIN ? CHAIN_LINK_BYTES : 0);
  if (bytes.length < lineAt) {
    throw _corrupt(path, raw.offset, "record is too short");
  }
  return {
    peer: key.peer,
    name: key.name,
    seq: raw.seq,
    ts: _getU64(view, 20),
    recvTs: _getU64(view, 28),
    line: bytes.subarray(lineAt),
    partial: (raw.flags & FLAG_PARTIAL) !== 0,
  };
}

/**
 * Reads and checks a source directory's `source.json`.
 *
 * @param path The source directory.
 * @param entry Its name.
 * @returns The key.
 * @throws {MoatError} `ERR_CORRUPT` if missing, malformed, or not matching
 * the directory name.
 */
export async function readSourceKey(
  path: string,
  entry: string,
): Promise<SourceKey> {
  const file = join(path, SOURCE_FILE);
  let key: SourceKey;
  try {
    const parsed = JSON.parse(await readFile(file, "utf8"));
    key = { peer: parsed.peer, name: parsed.name };
    checkSourceKey(key);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw _corrupt(file, 0, `not a valid source file (${reason})`);
  }
  if (sourceDirName(key) !== entry) {
    throw _corrupt(file, 0, "source does not match its directory name");
  }
  return key;
}
