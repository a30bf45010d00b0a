/**
 * The vault's readers: list sources, read records in order, and format them
 * for `moat vault cat`. They take no lock and may run while a server
 * appends: a record still being written (or a torn tail not yet cut by
 * recovery) ends the data, and is never returned. Every record's checksum
 * is verified before it is returned.
 *
 * @module
 */

import { open, readdir, readFile, stat } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import {
  checkSegmentHeader,
  corruptError,
  SEGMENT_HEADER_BYTES,
} from "../segment/codec.ts";
import { systemErrorCode } from "../segment/fs.ts";
import {
  listSegments,
  readSegment,
  SegmentScanner,
} from "../segment/scanner.ts";
import type { SegmentFile } from "../segment/scanner.ts";
import { escapeText } from "../text.ts";
import {
  decodeVaultRecord,
  MARKER_FILE,
  MARKER_TEXT,
  readSourceKey,
  SOURCES_DIR,
  VAULT_KIND,
  VAULT_MAGIC,
} from "./_format.ts";
import type { SourceKey, VaultRecord } from "./_format.ts";
import { matchesSource, sourceLabel } from "./_key.ts";

export type { SourceKey, VaultRecord } from "./_format.ts";
export { matchesSource, sourceLabel } from "./_key.ts";

/**
 * Bytes of records read from one source at a time while merging: 1 MiB for
 * a few sources, less for many, so that the batches held at once stay near
 * 32 MiB (but at least 16 KiB each).
 */
function _batchBytes(sources: number): number {
  const each = Math.floor(32 * 1024 * 1024 / Math.max(1, sources));
  return Math.min(1024 * 1024, Math.max(16 * 1024, each));
}
/** Bytes of output `catRecords` gathers before yielding them. */
const CAT_CHUNK_BYTES = 64 * 1024;

/** Options for {@linkcode readRecords}. */
export interface ReadRecordsOptions {
  /**
   * Only sources this picks: a label (`peer/name`, `peer[identity]/name`)
   * picks the source with exactly that label; a name without `/` picks
   * every peer's source of that name (see {@linkcode matchesSource}).
   * @default {undefined} (every source)
   */
  source?: string;
  /** Only records the server received at or after this time (ms since the epoch). */
  since?: number;
  /** Stops the iteration (it then returns without error). */
  signal?: AbortSignal;
}

/** Summary of one source, from {@linkcode listSources}. */
export interface SourceInfo {
  /** The peer's address (see {@linkcode SourceKey}). */
  peer: string;
  /** The identity the peer authenticated with, if any. */
  identity?: string;
  /** The shipper's source name. */
  name: string;
  /** The source's directory name under `sources/`. */
  id: string;
  /** Records stored. */
  records: number;
  /** Sequence number of the oldest record. */
  firstSeq: number;
  /** Sequence number of the newest record. */
  lastSeq: number;
  /** Shipper timestamp of the oldest record (ms since the epoch). */
  firstTs: number;
  /** Shipper timestamp of the newest record. */
  lastTs: number;
  /** Receive time of the oldest record (ms since the epoch). */
  firstRecvTs: number;
  /** Receive time of the newest record. */
  lastRecvTs: number;
  /** Segment files. */
  segments: number;
  /** Bytes on disk in segment files. */
  bytes: number;
}

interface SourceEntry {
  key: SourceKey;
  id: string;
  path: string;
}

async function _sources(dir: string, filter?: string): Promise<SourceEntry[]> {
  const root = resolve(dir);
  let marker: string | undefined;
  try {
    marker = await readFile(join(root, MARKER_FILE), "utf8");
  } catch (error) {
    const code = systemErrorCode(error);
    if (code !== "ENOENT" && code !== "ENOTDIR") throw error;
  }
  if (marker !== MARKER_TEXT) {
    throw new MoatError(
      "ERR_NOT_VAULT",
      `Cannot read "${root}": not a moat vault`,
      ExitCode.Usage,
    );
  }
  const sourcesDir = join(root, SOURCES_DIR);
  const out: SourceEntry[] = [];
  for (const id of (await readdir(sourcesDir)).sort()) {
    if (id.startsWith(".")) continue;
    const path = join(sourcesDir, id);
    const key = await readSourceKey(path, id);
    if (filter === undefined || matchesSource(key, filter)) {
      out.push({ key, id, path });
    }
  }
  out.sort((a, b) => _compare(sourceLabel(a.key), sourceLabel(b.key)));
  return out;
}

function _compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Reads one source's records in small batches, opening its current segment
 * file only for the time of one batch: a merge over thousands of sources
 * holds no file open between batches.
 */
class _SourceReader {
  #entry: SourceEntry;
  #batchBytes: number;
  #segments: SegmentFile[] | undefined;
  #index = 0;
  #offset = 0;
  #nextSeq = 0;

  constructor(entry: SourceEntry, batchBytes: number) {
    this.#entry = entry;
    this.#batchBytes = batchBytes;
  }

  /** The next batch, or undefined at the end of the source. */
  async next(): Promise<VaultRecord[] | undefined> {
    this.#segments ??= await listSegments(this.#entry.path);
    const segments = this.#segments;
    while (this.#index < segments.length) {
      const segment = segments[this.#index]!;
      const last = this.#index === segments.length - 1;
      if (this.#offset === 0) this.#nextSeq = segment.firstSeq;
      const batch = await this.#read(segment, last);
      if (batch !== undefined && batch.length > 0) return batch;
      if (batch === undefined && last) break;
      this.#index++;
      this.#offset = 0;
    }
    this.#index = segments.length;
    return undefined;
  }

  /**
   * Reads a batch of `segment` from where the last one ended: records, an
   * empty list at its end, or undefined for a torn tail of the last one.
   */
  async #read(
    segment: SegmentFile,
    last: boolean,
  ): Promise<VaultRecord[] | undefined> {
    let handle: FileHandle;
    try {
      handle = await open(segment.path, "r");
    } catch (error) {
      // Removed by recovery since it was listed: it held no record.
      if (systemErrorCode(error) === "ENOENT") return [];
      throw error;
    }
    try {
      const size = (await handle.stat()).size;
      if (this.#offset === 0) {
        const header = new Uint8Array(Math.min(size, SEGMENT_HEADER_BYTES));
        await handle.read(header, 0, header.length, 0);
        const bad = checkSegmentHeader(header, {
          magic: VAULT_MAGIC,
          firstSeq: segment.firstSeq,
        });
        if (bad !== undefined) {
          // A torn header can only be on a segment being created.
          if (last) return undefined;
          throw corruptError(segment.path, 0, bad);
        }
        this.#offset = SEGMENT_HEADER_BYTES;
      }
      const scanner = new SegmentScanner(handle, {
        kind: VAULT_KIND,
        nextSeq: this.#nextSeq,
        offset: this.#offset,
        readBytes: this.#batchBytes,
      });
      const raw = await scanner.read(size, this.#batchBytes);
      this.#offset = scanner.offset;
      this.#nextSeq = scanner.nextSeq;
      if (raw.length > 0) {
        return raw.map((r) =>
          decodeVaultRecord(r, this.#entry.key, segment.path)
        );
      }
      if (scanner.offset < size) {
        if (last) return undefined;
        throw corruptError(
          segment.path,
          scanner.offset,
          scanner.error ?? "last record is incomplete",
        );
      }
      return [];
    } finally {
      await handle.close();
    }
  }
}

/** A source's cursor in the merge. */
interface Head {
  batch: VaultRecord[];
  index: number;
  order: number;
  reader: _SourceReader;
}

function _before(a: Head, b: Head): boolean {
  const ra = a.batch[a.index]!;
  const rb = b.batch[b.index]!;
  return ra.recvTs !== rb.recvTs ? ra.recvTs < rb.recvTs : a.order < b.order;
}

/**
 * Merges the records of `entries` by receive time; yields each record with
 * the index of its entry. A record flagged partial is always followed by
 * the next record of its own source (if there is one), so one host's line
 * is never continued by another's.
 */
async function* _merge(
  entries: SourceEntry[],
  options: { since?: number | undefined; signal?: AbortSignal | undefined },
): AsyncGenerator<[VaultRecord, number]> {
  const { since, signal } = options;
  const heap: Head[] = [];
  const batchBytes = _batchBytes(entries.length);
  for (const [order, entry] of entries.entries()) {
    const head: Head = {
      batch: [],
      index: 0,
      order,
      reader: new _SourceReader(entry, batchBytes),
    };
    if (await _advance(head, since)) _push(heap, head);
  }
  while (heap.length > 0) {
    if (signal?.aborted) return;
    const head = heap[0]!;
    const record = head.batch[head.index]!;
    yield [record, head.order];
    head.index++;
    if (head.index < head.batch.length || await _advance(head, since)) {
      // The top stays put while its line goes on; sifting down later
      // restores the heap (its children are still heaps).
      if (!record.partial) _siftDown(heap, 0);
    } else {
      const last = heap.pop()!;
      if (heap.length > 0) {
        heap[0] = last;
        _siftDown(heap, 0);
      }
    }
  }
}

/**
 * Reads stored records. Each source's records come in sequence order; the
 * sources are merged by receive time (ties: by label), so a source whose
 * server clock stepped back still keeps its own order. A record flagged
 * `partial` is always followed by the record that continues it (the next
 * of its own source), whatever the receive times of other sources.
 *
 * @example Print every line since an hour ago
 * ```ts ignore
 * import { readRecords } from "./read.ts";
 * const since = Date.now() - 3_600_000;
 * for await (const r of readRecords("/srv/moat-vault", { since })) {
 *   console.log(r.peer, r.name, r.seq, new TextDecoder().decode(r.line));
 * }
 * ```
 *
 * @param dir The vault directory.
 * @param options Source filter, time filter, abort signal.
 * @returns The records; each `line` may be kept (it is not reused).
 * @throws {MoatError} `ERR_NOT_VAULT` if `dir` is not a vault; `ERR_CORRUPT`
 * for damaged data anywhere but the tail of a source's last segment.
 */
export async function* readRecords(
  dir: string,
  options: ReadRecordsOptions = {},
): AsyncGenerator<VaultRecord> {
  const entries = await _sources(dir, options.source);
  for await (const [record] of _merge(entries, options)) yield record;
}

/** Options for {@linkcode catRecords}. */
export interface CatRecordsOptions extends ReadRecordsOptions {
  /**
   * Escape every label and line for a terminal ({@linkcode escapeText});
   * otherwise lines go out as stored, except that a line feed inside a
   * record is written as the two characters `\n`.
   * @default {false}
   */
  terminal?: boolean;
}

/**
 * The output of `moat vault cat`: every matching record, in the order of
 * {@linkcode readRecords}, as lines of text. Each output line is one stored
 * line of one source: a line feed inside a record is written as `\n` (so a
 * record can never start a line of its own), and the pieces of a line split
 * into partial records are joined. When more than one source matches,
 * every line starts with its source's label (escaped) and a tab, so which
 * host wrote a line is never in doubt.
 *
 * @example Print a vault to standard output
 * ```ts ignore
 * import { catRecords } from "./read.ts";
 * for await (const chunk of catRecords("/srv/moat-vault")) {
 *   process.stdout.write(chunk);
 * }
 * ```
 *
 * @param dir The vault directory.
 * @param options Filters, abort signal, and whether the output is a terminal.
 * @returns Chunks of output (whole lines, about 64 KiB each).
 * @throws {MoatError} As {@linkcode readRecords}.
 */
export async function* catRecords(
  dir: string,
  options: CatRecordsOptions = {},
): AsyncGenerator<Uint8Array> {
  const entries = await _sources(dir, options.source);
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const terminal = options.terminal === true;
  const labels = entries.length > 1
    ? entries.map((e) => encoder.encode(`${escapeText(sourceLabel(e.key))}\t`))
    : undefined;
  const out: Uint8Array[] = [];
  let size = 0;
  let open: number | undefined;
  const put = (bytes: Uint8Array) => {
    out.push(bytes);
    size += bytes.length;
  };
  for await (const [record, order] of _merge(entries, options)) {
    if (open !== undefined && open !== order) {
      // The source's line ended in a partial record: end it here.
      put(NEWLINE);
      open = undefined;
    }
    if (open === undefined && labels) put(labels[order]!);
    put(
      terminal
        ? encoder.encode(escapeText(decoder.decode(record.line)))
        : _escapeLineFeeds(record.line),
    );
    if (record.partial) {
      open = order;
    } else {
      put(NEWLINE);
      open = undefined;
    }
    if (size >= CAT_CHUNK_BYTES && open === undefined) {
      yield _concat(out, size);
      out.length = 0;
      size = 0;
    }
  }
  if (open !== undefined) put(NEWLINE);
  if (size > 0) yield _concat(out, size);
}

const NEWLINE = Uint8Array.of(0x0a);
const ESCAPED_LF = Uint8Array.of(0x5c, 0x6e);

/** The line with every LF written as `\n`. */
function _escapeLineFeeds(line: Uint8Array): Uint8Array {
  let at = line.indexOf(0x0a);
  if (at === -1) return line;
  const parts: Uint8Array[] = [];
  let from = 0;
  let size = 0;
  while (at !== -1) {
    parts.push(line.subarray(from, at), ESCAPED_LF);
    size += at - from + 2;
    from = at + 1;
    at = line.indexOf(0x0a, from);
  }
  parts.push(line.subarray(from));
  size += line.length - from;
  return _concat(parts, size);
}

function _concat(parts: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Loads the head's next non-empty batch, filtered by `since`. */
async function _advance(
  head: Head,
  since: number | undefined,
): Promise<boolean> {
  while (true) {
    const next = await head.reader.next();
    if (next === undefined) return false;
    const batch = since === undefined
      ? next
      : next.filter((r) => r.recvTs >= since);
    if (batch.length > 0) {
      head.batch = batch;
      head.index = 0;
      return true;
    }
  }
}

function _push(heap: Head[], head: Head): void {
  heap.push(head);
  let i = heap.length - 1;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (!_before(heap[i]!, heap[parent]!)) break;
    [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
    i = parent;
  }
}

function _siftDown(heap: Head[], i: number): void {
  while (true) {
    const left = 2 * i + 1;
    const right = left + 1;
    let best = i;
    if (left < heap.length && _before(heap[left]!, heap[best]!)) best = left;
    if (right < heap.length && _before(heap[right]!, heap[best]!)) best = right;
    if (best === i) return;
    [heap[i], heap[best]] = [heap[best]!, heap[i]!];
    i = best;
  }
}

/**
 * Lists the sources that hold at least one record, sorted by label.
 * Reads each source's first record and scans its last segment.
 *
 * @example Usage
 * ```ts ignore
 * import { listSources, sourceLabel } from "./read.ts";
 * for (const s of await listSources("/srv/moat-vault")) {
 *   console.log(sourceLabel(s), s.records, new Date(s.lastRecvTs));
 * }
 * ```
 *
 * @param dir The vault directory.
 * @returns One summary per source.
 * @throws {MoatError} `ERR_NOT_VAULT` if `dir` is not a vault; `ERR_CORRUPT`
 * for damaged data.
 */
export async function listSources(dir: string): Promise<SourceInfo[]> {
  const out: SourceInfo[] = [];
  for (const entry of await _sources(dir)) {
    const segments = await listSegments(entry.path);
    let last: VaultRecord | undefined;
    let bytes = 0;
    for (const segment of segments) {
      bytes += await stat(segment.path).then((s) => s.size, () => 0);
    }
    const first = (await new _SourceReader(entry, 64 * 1024).next())?.[0];
    for (let i = segments.length - 1; i >= 0 && last === undefined; i--) {
      for await (const batch of _segmentRecords(entry, segments, i)) {
        last = batch.at(-1) ?? last;
      }
    }
    if (first === undefined || last === undefined) continue;
    out.push({
      peer: entry.key.peer,
      ...(entry.key.identity !== undefined &&
        { identity: entry.key.identity }),
      name: entry.key.name,
      id: entry.id,
      records: last.seq - first.seq + 1,
      firstSeq: first.seq,
      lastSeq: last.seq,
      firstTs: first.ts,
      lastTs: last.ts,
      firstRecvTs: first.recvTs,
      lastRecvTs: last.recvTs,
      segments: segments.length,
      bytes,
    });
  }
  return out;
}

async function* _segmentRecords(
  entry: SourceEntry,
  segments: SegmentFile[],
  i: number,
): AsyncGenerator<VaultRecord[]> {
  const segment = segments[i]!;
  try {
    for await (
      const raw of readSegment(segment.path, {
        magic: VAULT_MAGIC,
        kind: VAULT_KIND,
        firstSeq: segment.firstSeq,
        last: i === segments.length - 1,
      })
    ) {
      yield raw.map((r) => decodeVaultRecord(r, entry.key, segment.path));
    }
  } catch (error) {
    if (systemErrorCode(error) !== "ENOENT") throw error;
  }
}
