/**
 * The vault's on-disk names and its line-record codec (see `docs/VAULT.md`).
 *
 * @module
 */

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { corruptError, getU64, setU64 } from "../segment/codec.ts";
import { crc32c } from "../segment/crc32c.ts";
import type { RawRecord } from "../segment/codec.ts";
import { LINK_BYTES, LINK_OFFSET, writeLink } from "./_chain.ts";
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

/** One record, as an array of them holds it. */
interface LineRecord {
  seq: number;
  ts: number;
  line: Uint8Array;
  partial?: boolean;
}

/**
 * Records read by index, with no object per record: what a decoded ship
 * frame is (`ShipBatchView` in `lib/protocol.ts`), so that a batch of
 * thousands of records costs the vault (and the garbage collector) a few
 * objects, not thousands. An array of records is read through
 * {@linkcode recordBatch}.
 */
export interface AppendBatch {
  /** How many records. */
  readonly length: number;
  /**
   * @param i A record's index.
   * @returns Its sequence number.
   */
  seq(i: number): number;
  /**
   * @param i A record's index.
   * @returns Its timestamp.
   */
  ts(i: number): number;
  /**
   * @param i A record's index.
   * @returns Whether the next record continues its line.
   */
  partial(i: number): boolean;
  /**
   * @param i A record's index.
   * @returns Its line's length in bytes.
   * @throws {TypeError} When the record has no line.
   */
  lineLength(i: number): number;
  /**
   * Copies a record's line.
   *
   * @param i A record's index.
   * @param to Where to.
   * @param at At what offset.
   */
  copyLine(i: number, to: Uint8Array, at: number): void;
}

/**
 * Reads an array of records as an {@linkcode AppendBatch}.
 *
 * @param records The records.
 * @returns The batch (a view: the array is not copied).
 */
export function recordBatch(records: readonly LineRecord[]): AppendBatch {
  return new _ArrayBatch(records);
}

class _ArrayBatch implements AppendBatch {
  readonly #records: readonly LineRecord[];

  constructor(records: readonly LineRecord[]) {
    this.#records = records;
  }

  get length(): number {
    return this.#records.length;
  }

  seq(i: number): number {
    return this.#records[i]!.seq;
  }

  ts(i: number): number {
    return this.#records[i]!.ts;
  }

  partial(i: number): boolean {
    return this.#records[i]!.partial === true;
  }

  lineLength(i: number): number {
    const record = this.#records[i]!;
    if (!(record.line instanceof Uint8Array)) {
      throw new TypeError(
        `Invalid record ${record.seq}: line is not a Uint8Array`,
      );
    }
    return record.line.length;
  }

  copyLine(i: number, to: Uint8Array, at: number): void {
    to.set(this.#records[i]!.line, at);
  }
}

/**
 * Encodes line records back to back. With `options.chain`, every record
 * carries flag 0x01 and its chain link (see `docs/VAULT.md`), and
 * `chain.link` is advanced to the last record's link. Nothing is allocated
 * per record but the view each link is hashed through.
 *
 * @param records Records, sequence numbers consecutive.
 * @param recvTs The receive time stamped on all of them.
 * @param options The chain state to continue (updated in place), the
 * index of the first record to encode (those before it are skipped), and
 * a function called with each record written.
 * @returns The bytes.
 */
export function encodeVaultRecords(
  records: readonly LineRecord[] | AppendBatch,
  recvTs: number,
  options: {
    chain?: { link: Uint8Array };
    from?: number;
    /**
     * Called with each record once it is written whole, while its bytes
     * are still in the CPU's cache (the vault hashes its Merkle leaf here).
     */
    each?:
      | ((bytes: Uint8Array, start: number, end: number) => void)
      | undefined;
  } = {},
): Uint8Array {
  const batch = Array.isArray(records)
    ? recordBatch(records)
    : records as AppendBatch;
  const chain = options.chain;
  const from = options.from ?? 0;
  const count = batch.length;
  const lineAt = VAULT_LINE_OFFSET + (chain ? CHAIN_LINK_BYTES : 0);
  let total = 0;
  for (let i = from; i < count; i++) total += lineAt + batch.lineLength(i);
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  let at = 0;
  let last = -1;
  for (let i = from; i < count; i++) {
    const lineLength = batch.lineLength(i);
    const length = lineAt + lineLength;
    const end = at + length;
    const flags = (batch.partial(i) ? FLAG_PARTIAL : 0) |
      (chain ? FLAG_CHAIN : 0);
    // The header as finishRecord writes it (the link covers it, so it is
    // written before the hash).
    view.setUint32(at + 4, length, true);
    view.setUint8(at + 8, VAULT_KIND);
    view.setUint8(at + 9, flags);
    view.setUint16(at + 10, 0, true);
    setU64(view, at + 12, batch.seq(i));
    setU64(view, at + 20, batch.ts(i));
    setU64(view, at + 28, recvTs);
    if (lineLength > 0) batch.copyLine(i, out, at + lineAt);
    if (chain) {
      const linkAt = at + LINK_OFFSET;
      if (last < 0) out.set(chain.link, linkAt);
      else {
        out.copyWithin(
          linkAt,
          last + LINK_OFFSET,
          last + LINK_OFFSET + LINK_BYTES,
        );
      }
      writeLink(out, at, end);
    }
    view.setUint32(at, crc32c(out, at + 4, end), true);
    options.each?.(out, at, end);
    last = at;
    at = end;
  }
  if (chain && last >= 0) {
    chain.link = out.slice(last + LINK_OFFSET, last + LINK_OFFSET + LINK_BYTES);
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
