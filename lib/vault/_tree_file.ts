/**
 * Where a source's Merkle tree lives on disk, and how a record is found by
 * its sequence number without reading its whole segment:
 *
 * - `TreeFile`: a `NodeStore` over one append-only file of 32-byte hashes,
 *   every complete subtree in the order `MerkleLog` stores them (the leaf,
 *   then each subtree it completes). The node at level L, index i is the
 *   (2m − popcount(m) + L)-th hash, m = (i + 1)·2^L − 1: the layout of Go's
 *   checksum database (`golang.org/x/mod/sumdb/tlog`, `StoredHashIndex`). A
 *   tree of n leaves holds 2n − popcount(n) hashes. Writes are buffered and
 *   written without fsync (the tree is derived from the records; see
 *   `_tree.ts` for what is trusted at open); reads are positioned reads.
 * - `appendRecordLeaf`: appends the RFC 9162 leaf hash of a stored vault
 *   record to a tree, hashed from the record's bytes where they lie (no
 *   copy of the line, no allocation); `leafHashOfRecord` returns it.
 * - `RecordLocator`: reads one record by sequence number, with a sparse
 *   in-memory index of record offsets built as segments are walked.
 *
 * Format: `docs/VAULT.md`, "Merkle trees".
 *
 * @module
 */

import {
  closeSync,
  constants,
  fstatSync,
  openSync,
  readSync,
  truncateSync,
  writeSync,
} from "node:fs";
import { open } from "node:fs/promises";
import { MoatError } from "../errors.ts";
import { type MerkleLog, type NodeStore, popcount } from "../merkle.ts";
import {
  checkRecord,
  MAX_RECORD_BYTES,
  RECORD_HEADER_BYTES,
  SEGMENT_HEADER_BYTES,
} from "../segment/codec.ts";
import { systemErrorCode } from "../segment/fs.ts";
import { nativeSha256Batch, sha256Many, sha256Parts } from "../sha256.ts";
import {
  CHAIN_LINK_BYTES,
  FLAG_CHAIN,
  FLAG_PARTIAL,
  VAULT_KIND,
  VAULT_LINE_OFFSET,
} from "./_format.ts";
import {
  LEAF_FLAG_PARTIAL,
  LEAF_HEADER_BYTES,
  LEAF_VERSION,
  SOURCE_HASH_BYTES,
} from "./leaf.ts";

/** Bytes per stored node. */
const NODE_BYTES = 32;
/** Buffered node bytes written once past this (about 1,000 records). */
const FLUSH_BYTES = 64 * 1024;

export { popcount };

/**
 * Hashes a tree of `size` leaves stores: 2·size − popcount(size).
 *
 * @param size Leaves.
 * @returns Stored nodes.
 */
export function nodesForSize(size: number): number {
  return 2 * size - popcount(size);
}

/**
 * The largest tree size whose nodes fit in `nodes` stored hashes.
 *
 * @param nodes Hashes stored.
 * @returns Leaves.
 */
export function sizeForNodes(nodes: number): number {
  let size = Math.floor((nodes + 53) / 2);
  while (size > 0 && nodesForSize(size) > nodes) size--;
  return size;
}

/**
 * Where the node at `level`, `index` is in the file, in nodes.
 *
 * @param level Its level (0: leaves).
 * @param index Its index in the level.
 * @returns Its position.
 */
export function nodePosition(level: number, index: number): number {
  const m = (index + 1) * 2 ** level - 1;
  return nodesForSize(m) + level;
}

/** A tree's nodes in one file; see the module doc. */
export class TreeFile implements NodeStore {
  readonly path: string;
  /** Nodes written to the file. */
  #written: number;
  /** Nodes not written yet; grown as needed (a quiet source holds little). */
  #buffer = new Uint8Array(0);
  #buffered = 0;
  /** The descriptor of a read session (see `reading`). */
  #fd: number | undefined;

  /**
   * @param path The file (need not exist when `written` is 0).
   * @param written Nodes the file holds that count (the rest is cut).
   */
  constructor(path: string, written: number) {
    this.path = path;
    this.#written = written;
  }

  /** Nodes held, written and buffered. */
  get count(): number {
    return this.#written + this.#buffered / NODE_BYTES;
  }

  /** Nodes written to the file. */
  get written(): number {
    return this.#written;
  }

  get(level: number, index: number): Uint8Array {
    const pos = nodePosition(level, index);
    if (pos >= this.#written) {
      const at = (pos - this.#written) * NODE_BYTES;
      if (at + NODE_BYTES > this.#buffered) {
        throw new RangeError(
          `no Merkle node at level ${level} index ${index}`,
        );
      }
      return this.#buffer.slice(at, at + NODE_BYTES);
    }
    const out = new Uint8Array(NODE_BYTES);
    const session = this.#fd;
    const fd = session ?? openSync(this.path, "r");
    try {
      const n = readSync(fd, out, 0, NODE_BYTES, pos * NODE_BYTES);
      if (n !== NODE_BYTES) {
        throw new MoatError(
          "ERR_CORRUPT",
          `Merkle tree file "${this.path}" ends before node ${pos}`,
        );
      }
    } finally {
      if (session === undefined) closeSync(fd);
    }
    return out;
  }

  put(_level: number, _index: number, hash: Uint8Array): void {
    // MerkleLog stores nodes in exactly the file's order (the leaf, then
    // each subtree it completes), so a put is an append.
    this.putRun(hash, 0, 1);
  }

  putFrom(_level: number, _index: number, buf: Uint8Array, at: number): void {
    if (this.#buffered + NODE_BYTES > this.#buffer.length) {
      this.putRun(buf, at, 1);
      return;
    }
    // 32 bytes: a loop costs less than the view set() would need.
    const out = this.#buffer;
    const to = this.#buffered;
    for (let i = 0; i < NODE_BYTES; i++) out[to + i] = buf[at + i]!;
    this.#buffered = to + NODE_BYTES;
  }

  putRun(buf: Uint8Array, at: number, count: number): void {
    const bytes = count * NODE_BYTES;
    if (this.#buffered + bytes > this.#buffer.length) {
      const bigger = new Uint8Array(
        Math.max(2048, this.#buffer.length * 2, this.#buffered + bytes),
      );
      bigger.set(this.#buffer.subarray(0, this.#buffered));
      this.#buffer = bigger;
    }
    this.#buffer.set(buf.subarray(at, at + bytes), this.#buffered);
    this.#buffered += bytes;
  }

  /** True once enough nodes are buffered to be worth a write. */
  get full(): boolean {
    return this.#buffered >= FLUSH_BYTES;
  }

  /**
   * Runs `fn` with one descriptor open for its reads (a proof reads
   * O(log² n) nodes).
   *
   * @param fn The reads.
   * @returns What `fn` returns.
   */
  reading<T>(fn: () => T): T {
    if (this.#fd !== undefined || this.#written === 0) return fn();
    this.#fd = openSync(this.path, "r");
    try {
      return fn();
    } finally {
      closeSync(this.#fd);
      this.#fd = undefined;
    }
  }

  /**
   * Writes the buffered nodes to the file (no fsync).
   *
   * @throws {Error} The system error; the nodes stay buffered.
   */
  flush(): void {
    if (this.#buffered === 0) return;
    const fd = openSync(
      this.path,
      constants.O_WRONLY | constants.O_CREAT,
      0o600,
    );
    try {
      let done = 0;
      while (done < this.#buffered) {
        const n = writeSync(
          fd,
          this.#buffer,
          done,
          this.#buffered - done,
          this.#written * NODE_BYTES + done,
        );
        if (n <= 0) throw new MoatError("ERR_IO", "no progress writing");
        done += n;
      }
    } finally {
      closeSync(fd);
    }
    this.#written += this.#buffered / NODE_BYTES;
    this.#buffered = 0;
    if (this.#buffer.length > 2 * FLUSH_BYTES) {
      this.#buffer = new Uint8Array(FLUSH_BYTES + 64 * NODE_BYTES);
    }
  }

  /**
   * Writes the buffered nodes and fsyncs the file.
   *
   * @returns When durable.
   */
  async sync(): Promise<void> {
    this.flush();
    if (this.#written === 0) return;
    const handle = await open(this.path, "r+");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  /**
   * Cuts the tree to `nodes` nodes (buffered ones first).
   *
   * @param nodes Nodes to keep.
   */
  truncate(nodes: number): void {
    if (nodes >= this.#written) {
      this.#buffered = Math.min(
        this.#buffered,
        (nodes - this.#written) * NODE_BYTES,
      );
      return;
    }
    this.#buffered = 0;
    this.#written = nodes;
    try {
      truncateSync(this.path, nodes * NODE_BYTES);
    } catch (error) {
      if (systemErrorCode(error) !== "ENOENT") throw error;
    }
  }

  /**
   * Nodes a tree file holds on disk (whole 32-byte hashes).
   *
   * @param path The file.
   * @returns Its node count; 0 if it does not exist.
   */
  static nodesOnDisk(path: string): number {
    let fd: number;
    try {
      fd = openSync(path, "r");
    } catch (error) {
      if (systemErrorCode(error) === "ENOENT") return 0;
      throw error;
    }
    try {
      return Math.floor(fstatSync(fd).size / NODE_BYTES);
    } finally {
      closeSync(fd);
    }
  }
}

/**
 * 0x00, then the leaf's bytes before its line: the first part of every
 * leaf hash input (the line, the second, is hashed where it lies in the
 * record). Hashing is synchronous, so one buffer serves every source (the
 * source hash in it is rewritten when the source changes).
 */
const prefix = new Uint8Array(1 + LEAF_HEADER_BYTES);
prefix[1] = LEAF_VERSION;
let prefixSource: Uint8Array | undefined;

/** Fills {@linkcode prefix} for the record at `at`; returns where its line starts. */
function fillPrefix(bytes: Uint8Array, at: number, source: Uint8Array): number {
  if (source.length !== SOURCE_HASH_BYTES) {
    throw new RangeError("Invalid leaf: a source hash is 32 bytes");
  }
  if (prefixSource !== source) {
    prefix.set(source, 2);
    prefixSource = source;
  }
  return writeRecordFields(prefix, 0, bytes, at);
}

/**
 * Writes a record's seq, ts, recvTs and partial flag into the leaf prefix
 * at `p[o, o + 59)` (0x00, version and source hash are the caller's).
 *
 * @returns Where the record's line starts in `bytes`.
 */
function writeRecordFields(
  p: Uint8Array,
  o: number,
  bytes: Uint8Array,
  at: number,
): number {
  const flags = bytes[at + 9]!;
  // seq, ts and recvTs are u64 LE at record bytes 12–35, leaf bytes 33–56.
  for (let i = 0; i < 24; i++) p[o + 34 + i] = bytes[at + 12 + i]!;
  p[o + 58] = flags & FLAG_PARTIAL ? LEAF_FLAG_PARTIAL : 0;
  return at + VAULT_LINE_OFFSET + (flags & FLAG_CHAIN ? CHAIN_LINK_BYTES : 0);
}

/**
 * The RFC 9162 leaf hash, SHA-256(0x00 ‖ leaf), of a stored vault line
 * record (its leaf as `encodeLeaf` in `leaf.ts` builds it).
 *
 * @param record The whole record, header included.
 * @param source The source hash.
 * @returns The leaf hash.
 */
export function leafHashOfRecord(
  record: Uint8Array,
  source: Uint8Array,
): Uint8Array {
  const lineAt = fillPrefix(record, 0, source);
  const out = new Uint8Array(NODE_BYTES);
  sha256Parts(prefix, 0, prefix.length, record, lineAt, record.length, out, 0);
  return out;
}

/**
 * Writes the leaf hash of the record at `bytes[at, at + length)` to
 * `dst[dstAt, dstAt + 32)`.
 *
 * @param bytes Records back to back.
 * @param at Where the record starts.
 * @param length Its length.
 * @param source The source hash.
 * @param dst Where the hash goes.
 * @param dstAt Its offset there.
 */
export function leafHashInto(
  bytes: Uint8Array,
  at: number,
  length: number,
  source: Uint8Array,
  dst: Uint8Array,
  dstAt: number,
): void {
  const lineAt = fillPrefix(bytes, at, source);
  const end = at + length;
  sha256Parts(prefix, 0, prefix.length, bytes, lineAt, end, dst, dstAt);
}

/** Bytes of a leaf's prefix: 0x00, then the leaf's header. */
const PREFIX_BYTES = 1 + LEAF_HEADER_BYTES;

/**
 * The leaf hashes of a chunk's records, collected as the chunk is encoded
 * ({@linkcode RecordLeaves.add} per record) and hashed in one native call
 * at the end ({@linkcode RecordLeaves.hash}): each record's prefix is
 * filled here, its line is hashed where it lies. Only where a batch
 * SHA-256 is installed ({@linkcode RecordLeaves.open}); else the caller
 * hashes each record with {@linkcode leafHashInto}, one call a record.
 * One at a time: the scratch buffers are shared.
 */
export class RecordLeaves {
  /** Prefixes, {@link PREFIX_BYTES} apart. */
  static #prefixes = new Uint8Array(0);
  /** The source whose hash the first {@link RecordLeaves.#filled} prefixes hold. */
  static #source: Uint8Array | undefined;
  static #filled = 0;
  static #spans = new Int32Array(0);
  #n = 0;
  readonly #sourceHash: Uint8Array;

  private constructor(sourceHash: Uint8Array, capacity: number) {
    this.#sourceHash = sourceHash;
    if (RecordLeaves.#spans.length < 2 * capacity) {
      RecordLeaves.#spans = new Int32Array(2 * capacity);
      RecordLeaves.#prefixes = new Uint8Array(PREFIX_BYTES * capacity);
      RecordLeaves.#filled = 0;
    }
    if (RecordLeaves.#source !== sourceHash) {
      RecordLeaves.#source = sourceHash;
      RecordLeaves.#filled = 0;
    }
  }

  /**
   * A collector for up to `capacity` records, or undefined where no batch
   * SHA-256 is installed.
   *
   * @param sourceHash The source hash.
   * @param capacity How many records the chunk holds.
   */
  static open(
    sourceHash: Uint8Array,
    capacity: number,
  ): RecordLeaves | undefined {
    if (sourceHash.length !== SOURCE_HASH_BYTES) {
      throw new RangeError("Invalid leaf: a source hash is 32 bytes");
    }
    if (nativeSha256Batch() === undefined) return undefined;
    return new RecordLeaves(sourceHash, capacity);
  }

  /**
   * Notes the record at `bytes[at, end)`.
   *
   * @param bytes Records back to back.
   * @param at Where the record starts.
   * @param end After its last byte.
   */
  add(bytes: Uint8Array, at: number, end: number): void {
    const k = this.#n++;
    const p = RecordLeaves.#prefixes;
    const o = PREFIX_BYTES * k;
    if (k >= RecordLeaves.#filled) {
      p[o] = 0;
      p[o + 1] = LEAF_VERSION;
      p.set(this.#sourceHash, o + 2);
      RecordLeaves.#filled = k + 1;
    }
    const spans = RecordLeaves.#spans;
    spans[2 * k] = writeRecordFields(p, o, bytes, at);
    spans[2 * k + 1] = end;
  }

  /**
   * Hashes the noted records' leaves.
   *
   * @param bytes The records every {@linkcode RecordLeaves.add} named.
   * @param into Where to put them (at its start), if not a new array.
   * @returns Their leaf hashes, 32 bytes each, in order.
   */
  hash(bytes: Uint8Array, into?: Uint8Array): Uint8Array {
    const n = this.#n;
    const out = into ?? new Uint8Array(32 * n);
    sha256Many(
      RecordLeaves.#prefixes,
      PREFIX_BYTES,
      PREFIX_BYTES,
      bytes,
      RecordLeaves.#spans,
      n,
      out,
      0,
    );
    return out;
  }
}

/**
 * Appends the leaf of the record at `bytes[at, at + length)` to a tree:
 * the hot path of every append, with no copy of the line and no
 * allocation (the hash is written where the tree keeps it).
 *
 * @param log The tree.
 * @param bytes Records back to back.
 * @param at Where the record starts.
 * @param length Its length.
 * @param source The source hash.
 */
export function appendRecordLeaf(
  log: MerkleLog,
  bytes: Uint8Array,
  at: number,
  length: number,
  source: Uint8Array,
): void {
  const lineAt = fillPrefix(bytes, at, source);
  log.appendHashOf(prefix, 0, prefix.length, bytes, lineAt, at + length);
}

/** The fields of a leaf, read from a stored vault line record. */
export function leafOfRecord(
  record: Uint8Array,
  source: Uint8Array,
): Uint8Array {
  const flags = record[9]!;
  const lineAt = VAULT_LINE_OFFSET +
    (flags & FLAG_CHAIN ? CHAIN_LINK_BYTES : 0);
  const out = new Uint8Array(LEAF_HEADER_BYTES + record.length - lineAt);
  out[0] = LEAF_VERSION;
  out.set(source, 1);
  out.set(record.subarray(12, 20), 1 + SOURCE_HASH_BYTES);
  out.set(record.subarray(20, 36), 9 + SOURCE_HASH_BYTES);
  out[57] = flags & FLAG_PARTIAL ? LEAF_FLAG_PARTIAL : 0;
  out.set(record.subarray(lineAt), LEAF_HEADER_BYTES);
  return out;
}

/** A segment as the locator needs it. */
export interface LocatorSegment {
  /** Its first record's sequence number. */
  firstSeq: number;
  /** Its path. */
  path: string;
  /** Bytes of durable records in it, header included. */
  size: number;
}

/** Records between the offsets the locator remembers. */
const STRIDE = 256;
/** Bytes read at a time while walking records. */
const WALK_BYTES = 256 * 1024;

/**
 * Reads single records by sequence number. Remembers the offset of every
 * 256th record of each segment (as records are committed, as the tree
 * builder reads them, and as it walks), so a read walks at most 256
 * records once the offsets are known, and a whole segment the first time
 * it reads one whose offsets are not.
 */
export class RecordLocator {
  /**
   * Per segment (by first seq): at index k the offset of record
   * first + 256·k, where known (holes elsewhere).
   */
  #offsets = new Map<number, number[]>();

  /**
   * Forgets segments that are gone (after a prune).
   *
   * @param firstSeqs The segments still there.
   */
  keep(firstSeqs: ReadonlySet<number>): void {
    for (const first of this.#offsets.keys()) {
      if (!firstSeqs.has(first)) this.#offsets.delete(first);
    }
  }

  /**
   * Notes where a record is (the tree builder walks every record).
   *
   * @param segmentFirst The segment's first sequence number.
   * @param seq The record's.
   * @param offset Its offset in the segment.
   */
  note(segmentFirst: number, seq: number, offset: number): void {
    const k = seq - segmentFirst;
    if (k % STRIDE !== 0) return;
    let list = this.#offsets.get(segmentFirst);
    if (list === undefined) {
      list = [SEGMENT_HEADER_BYTES];
      this.#offsets.set(segmentFirst, list);
    }
    list[k / STRIDE] = offset;
  }

  /**
   * Notes where the records of a chunk just committed are: it ends at
   * `end` in the segment starting at `segmentFirst`.
   *
   * @param segmentFirst The segment's first sequence number.
   * @param firstSeq The chunk's first record.
   * @param bytes The chunk (records back to back).
   * @param end Where the chunk ends in the segment.
   * @param starts Where each record starts in the chunk, if known (else
   *   the chunk is walked).
   */
  noteChunk(
    segmentFirst: number,
    firstSeq: number,
    bytes: Uint8Array,
    end: number,
    starts?: Int32Array,
  ): void {
    const start = end - bytes.length;
    if (starts !== undefined) {
      // Only every STRIDE-th record is noted: no walk.
      let i = firstSeq >= segmentFirst
        ? (STRIDE - (firstSeq - segmentFirst) % STRIDE) % STRIDE
        : segmentFirst - firstSeq;
      for (; i < starts.length; i += STRIDE) {
        this.note(segmentFirst, firstSeq + i, start + starts[i]!);
      }
      return;
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    let at = 0;
    let seq = firstSeq;
    while (at < bytes.length) {
      if (seq >= segmentFirst && (seq - segmentFirst) % STRIDE === 0) {
        this.note(segmentFirst, seq, start + at);
      }
      at += view.getUint32(at + 4, true);
      seq++;
    }
  }

  /**
   * Reads record `seq`, checked (length, checksum, kind, sequence).
   *
   * @param seq The sequence number.
   * @param segments The source's segments, oldest first, with their durable
   * sizes.
   * @returns A copy of the whole record, or undefined if no segment holds it.
   * @throws {MoatError} `ERR_CORRUPT` if the data on the way is damaged.
   */
  read(
    seq: number,
    segments: readonly LocatorSegment[],
  ): Uint8Array | undefined {
    let lo = 0;
    let hi = segments.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (segments[mid]!.firstSeq <= seq) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    if (found < 0) return undefined;
    const segment = segments[found]!;
    try {
      return this.#walk(segment, seq);
    } catch (error) {
      const list = this.#offsets.get(segment.firstSeq);
      if (list === undefined || list.length <= 1) throw error;
      // A remembered offset was wrong: walk once from the segment's start.
      this.#offsets.delete(segment.firstSeq);
      return this.#walk(segment, seq);
    }
  }

  #walk(segment: LocatorSegment, seq: number): Uint8Array | undefined {
    let list = this.#offsets.get(segment.firstSeq);
    if (list === undefined) {
      list = [SEGMENT_HEADER_BYTES];
      this.#offsets.set(segment.firstSeq, list);
    }
    let k = Math.min(
      Math.floor((seq - segment.firstSeq) / STRIDE),
      list.length - 1,
    );
    while (list[k] === undefined) k--;
    let at = list[k]!;
    let current = segment.firstSeq + k * STRIDE;
    const fd = openSync(segment.path, "r");
    try {
      let buf = new Uint8Array(WALK_BYTES);
      let bufAt = -1;
      let bufLen = 0;
      const window = (need: number): Uint8Array | undefined => {
        if (at + need > segment.size) return undefined;
        if (bufAt < 0 || at < bufAt || at + need > bufAt + bufLen) {
          if (need > buf.length) buf = new Uint8Array(need);
          bufAt = at;
          bufLen = readSync(
            fd,
            buf,
            0,
            Math.min(buf.length, segment.size - at),
            at,
          );
          if (bufLen < need) return undefined;
        }
        return buf.subarray(at - bufAt, at - bufAt + need);
      };
      while (true) {
        const header = window(RECORD_HEADER_BYTES);
        if (header === undefined) return undefined;
        const view = new DataView(header.buffer, header.byteOffset, 20);
        const length = view.getUint32(4, true);
        const recSeq = view.getUint32(12, true) +
          view.getUint32(16, true) * 0x100000000;
        if (
          length < RECORD_HEADER_BYTES || length > MAX_RECORD_BYTES ||
          recSeq !== current
        ) {
          throw new MoatError(
            "ERR_CORRUPT",
            `Damaged segment "${segment.path}" at byte ${at}: record ${current} is due there`,
          );
        }
        const k2 = current - segment.firstSeq;
        if (k2 % STRIDE === 0) list[k2 / STRIDE] = at;
        if (current === seq) {
          const whole = window(length);
          if (whole === undefined) return undefined;
          const checked = checkRecord(whole, 0, { kind: VAULT_KIND, seq });
          if (typeof checked !== "number") {
            throw new MoatError(
              "ERR_CORRUPT",
              `Damaged segment "${segment.path}" at byte ${at}: ${checked.reason}`,
            );
          }
          return whole.slice();
        }
        at += length;
        current++;
      }
    } finally {
      closeSync(fd);
    }
  }
}
