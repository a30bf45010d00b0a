/**
 * The vault's on-disk names and its line-record codec (see `docs/VAULT.md`).
 *
 * @module
 */

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  corruptError,
  finishRecord,
  getU64,
  setU64,
} from "../segment/codec.ts";
import type { RawRecord } from "../segment/codec.ts";
import { computeLink, LINK_BYTES } from "./_chain.ts";
import { checkSourceKey, sourceDirName } from "./_key.ts";
import type { SourceKey } from "./_key.ts";

export type { SourceKey } from "./_key.ts";

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
export const CHAIN_LINK_BYTES = LINK_BYTES;
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

/** One stored line. */
export interface VaultRecord {
  /** The peer's address (see {@linkcode SourceKey}). */
  peer: string;
  /** The identity the peer authenticated with, if any. */
  identity?: string;
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
    setU64(view, at + 20, record.ts);
    setU64(view, at + 28, recvTs);
    out.set(record.line, at + lineAt);
    if (chain) {
      // The link covers the header fields, so set them before hashing.
      view.setUint32(at + 4, length, true);
      view.setUint8(at + 8, VAULT_KIND);
      view.setUint8(at + 9, flags);
      setU64(view, at + 12, record.seq);
      chain.link = computeLink(bytes, chain.link);
      bytes.set(chain.link, VAULT_LINE_OFFSET);
    }
    finishRecord(bytes, { kind: VAULT_KIND, flags, seq: record.seq });
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
    throw corruptError(
      path,
      raw.offset,
      `record flags ${raw.flags} are unknown`,
    );
  }
  const lineAt = VAULT_LINE_OFFSET +
    (raw.flags & FLAG_CHAIN ? CHAIN_LINK_BYTES : 0);
  if (bytes.length < lineAt) {
    throw corruptError(path, raw.offset, "record is too short");
  }
  return {
    peer: key.peer,
    ...(key.identity !== undefined && { identity: key.identity }),
    name: key.name,
    seq: raw.seq,
    ts: getU64(view, 20),
    recvTs: getU64(view, 28),
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
    key = parsed.identity === undefined
      ? { peer: parsed.peer, name: parsed.name }
      : { peer: parsed.peer, identity: parsed.identity, name: parsed.name };
    checkSourceKey(key);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw corruptError(file, 0, `not a valid source file (${reason})`);
  }
  if (sourceDirName(key) !== entry) {
    throw corruptError(file, 0, "source does not match its directory name");
  }
  return key;
}
