/**
 * The vault's readers: list sources, read records in order (within a
 * receive-time range, skipping what the segment index dates outside it),
 * follow a vault being written, and format records for `moat vault cat`
 * (lines or JSON). They take no lock and may run while a server appends: a
 * record still being written (or a torn tail not yet cut by recovery) ends
 * the data, and is never returned. Every record's checksum is verified
 * before it is returned.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { open, readdir, readFile, stat } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import {
  checkSegmentHeader,
  corruptError,
  getU64,
  SEGMENT_HEADER_BYTES,
} from "../segment/codec.ts";
import { systemErrorCode } from "../segment/fs.ts";
import {
  listSegments,
  readSegment,
  SegmentScanner,
} from "../segment/scanner.ts";
import type { SegmentFile } from "../segment/scanner.ts";
import { escapeText, stringifySafe } from "../text.ts";
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
import { entryOf, readSegmentIndex } from "./_index.ts";
import type { SegmentEntry } from "./_index.ts";
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
/** Where a vault record's receive time ends: all a time filter looks at. */
const RECV_TS_END = 36;
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
  /**
   * Only records the server received at or after this time (ms since the
   * epoch). Whole segments the source's index dates before it are skipped
   * without being read.
   */
  since?: number;
  /** Only records the server received before this time (ms since the epoch). */
  until?: number;
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

async function _sources(
  dir: string,
  filter?: string,
  known?: ReadonlySet<string>,
): Promise<SourceEntry[]> {
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
    if (id.startsWith(".") || known?.has(id)) continue;
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

/** The receive-time range a read keeps: `since` ≤ recvTs < `until`. */
interface _Range {
  since?: number | undefined;
  until?: number | undefined;
}

/**
 * Reads one source's records in small batches, opening its current segment
 * file only for the time of one batch: a merge over thousands of sources
 * holds no file open between batches. Segments the index dates outside the
 * range are skipped unread. At the end it stays where it is, so that
 * {@linkcode _SourceReader.refresh} and `next` pick up records written since.
 */
class _SourceReader {
  #entry: SourceEntry;
  #batchBytes: number;
  #range: _Range;
  #segments: SegmentFile[] | undefined;
  #index: Map<number, SegmentEntry> = new Map();
  #at = 0;
  #offset = 0;
  #nextSeq = 0;

  constructor(entry: SourceEntry, batchBytes: number, range: _Range = {}) {
    this.#entry = entry;
    this.#batchBytes = batchBytes;
    this.#range = range;
  }

  /**
   * Lists the source's segments again (and its index), keeping the
   * position: for following a source that is being written.
   */
  async refresh(): Promise<void> {
    const before = this.#segments?.[this.#at];
    const segments = await listSegments(this.#entry.path);
    if (this.#range.since !== undefined || this.#range.until !== undefined) {
      this.#index = await readSegmentIndex(this.#entry.path);
    }
    this.#segments = segments;
    if (before === undefined) return;
    const at = segments.findIndex((s) => s.firstSeq >= before.firstSeq);
    if (at === -1) {
      this.#at = segments.length;
    } else {
      if (segments[at]!.firstSeq !== before.firstSeq) this.#offset = 0;
      this.#at = at;
    }
  }

  /** True if the index dates segment `i` wholly outside the range. */
  #outside(i: number): boolean {
    const { since, until } = this.#range;
    if (since === undefined && until === undefined) return false;
    const entry = entryOf(this.#index, this.#segments!, i);
    if (entry?.minRecvTs === undefined) return false;
    return (since !== undefined && entry.maxRecvTs! < since) ||
      (until !== undefined && entry.minRecvTs >= until);
  }

  /** The next batch, or undefined at the end of the source (for now). */
  async next(): Promise<VaultRecord[] | undefined> {
    if (this.#segments === undefined) await this.refresh();
    const segments = this.#segments!;
    while (this.#at < segments.length) {
      const segment = segments[this.#at]!;
      const last = this.#at === segments.length - 1;
      if (this.#offset === 0) {
        if (!last && this.#outside(this.#at)) {
          this.#at++;
          continue;
        }
        this.#nextSeq = segment.firstSeq;
      }
      const batch = await this.#read(segment, last);
      if (batch !== undefined && batch.length > 0) return batch;
      // The end of the last segment (or a record still being written):
      // stay, more may come.
      if (last) return undefined;
      this.#at++;
      this.#offset = 0;
    }
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
      const since = this.#range.since;
      if (since !== undefined) {
        // Records received before `since` are passed over unread (only
        // their headers are checked): they are never returned.
        await scanner.skipWhile(size, {
          peek: RECV_TS_END,
          skip: (view, at, length) =>
            length >= RECV_TS_END && getU64(view, at + 28) < since,
        });
      }
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
  entry: SourceEntry;
  reader: _SourceReader;
}

function _before(a: Head, b: Head): boolean {
  const ra = a.batch[a.index]!;
  const rb = b.batch[b.index]!;
  return ra.recvTs !== rb.recvTs ? ra.recvTs < rb.recvTs : a.order < b.order;
}

/** How a merge follows the vault once it has read everything. */
interface _Follow {
  /** The vault directory and source filter, to find sources that appear. */
  dir: string;
  source: string | undefined;
  /** Milliseconds between looks at the vault. */
  pollMs: number;
}

/**
 * Merges the records of `entries` by receive time; yields each record with
 * its source. A record flagged partial is always followed by the next
 * record of its own source (if there is one), so one host's line is never
 * continued by another's. With `follow`, once everything is read it yields
 * `null` (caught up), waits `pollMs`, and reads what was written since,
 * also from sources that appeared, until `signal` aborts.
 */
async function* _merge(
  entries: SourceEntry[],
  options: _Range & {
    signal?: AbortSignal | undefined;
    follow?: _Follow | undefined;
  },
): AsyncGenerator<[VaultRecord, SourceEntry] | null> {
  const { signal, follow } = options;
  const range: _Range = { since: options.since, until: options.until };
  const heap: Head[] = [];
  const heads: Head[] = [];
  const batchBytes = _batchBytes(entries.length);
  const add = async (entry: SourceEntry) => {
    const head: Head = {
      batch: [],
      index: 0,
      order: heads.length,
      entry,
      reader: new _SourceReader(entry, batchBytes, range),
    };
    heads.push(head);
    if (await _advance(head, range)) _push(heap, head);
  };
  for (const entry of entries) await add(entry);
  while (true) {
    while (heap.length > 0) {
      if (signal?.aborted) return;
      const head = heap[0]!;
      const record = head.batch[head.index]!;
      yield [record, head.entry];
      head.index++;
      if (head.index < head.batch.length || await _advance(head, range)) {
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
    if (follow === undefined || signal?.aborted) return;
    yield null;
    await _sleep(follow.pollMs, signal);
    if (signal?.aborted) return;
    const known = new Set(heads.map((h) => h.entry.id));
    for (const entry of await _sources(follow.dir, follow.source, known)) {
      await add(entry);
    }
    // Every source was at its end for now (the heap was empty); those just
    // added are in the heap already.
    for (const head of heads) {
      if (head.batch.length > head.index) continue;
      await head.reader.refresh();
      if (await _advance(head, range)) _push(heap, head);
    }
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function _sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
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
 * @param options Source filter, time range, abort signal.
 * @returns The records; each `line` may be kept (it is not reused).
 * @throws {MoatError} `ERR_NOT_VAULT` if `dir` is not a vault; `ERR_CORRUPT`
 * for damaged data anywhere but the tail of a source's last segment.
 */
export async function* readRecords(
  dir: string,
  options: ReadRecordsOptions = {},
): AsyncGenerator<VaultRecord> {
  const entries = await _sources(dir, options.source);
  for await (const item of _merge(entries, options)) {
    if (item !== null) yield item[0];
  }
}

/**
 * The labels of the sources a filter picks (as `readRecords` would read
 * them), sorted.
 *
 * @param dir The vault directory.
 * @param source A name or a label; undefined picks every source.
 * @returns The labels (raw: escape them before they meet a terminal).
 * @throws {MoatError} `ERR_NOT_VAULT` if `dir` is not a vault; `ERR_CORRUPT`
 * for a damaged `source.json`.
 */
export async function matchSources(
  dir: string,
  source?: string,
): Promise<string[]> {
  return (await _sources(dir, source)).map((e) => sourceLabel(e.key));
}

/** Options for {@linkcode catRecords}. */
export interface CatRecordsOptions extends ReadRecordsOptions {
  /**
   * Escape every label and line for a terminal ({@linkcode escapeText});
   * otherwise lines go out as stored, except that a line feed inside a
   * record is written as the two characters `\n`. (JSON is the same
   * either way.)
   * @default {false}
   */
  terminal?: boolean;
  /** One JSON object per record instead of lines (see {@linkcode formatRecordJson}). @default {false} */
  json?: boolean;
  /**
   * After everything is printed, keep looking for new records of the
   * matching sources (and new matching sources) every `pollMs`, until
   * `signal` aborts. Not with `until`.
   * @default {false}
   */
  follow?: boolean;
  /** Milliseconds between looks when following (10 ms to 10 s). @default {500} */
  pollMs?: number;
}

/** Default milliseconds between looks at the vault when following. */
export const DEFAULT_FOLLOW_POLL_MS = 500;

/**
 * The output of `moat vault cat`: every matching record, in the order of
 * {@linkcode readRecords}, as lines of text. Each output line is one stored
 * line of one source: a line feed inside a record is written as `\n` (so a
 * record can never start a line of its own), and the pieces of a line split
 * into partial records are joined. When more than one source matches (and
 * always when following, unless the filter is a label), every line starts
 * with its source's label (escaped) and a tab, so which host wrote a line is
 * never in doubt. With `json`, one object per record instead.
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
 * @param options Filters, format, following, abort signal, and whether the
 * output is a terminal.
 * @returns Chunks of output (whole lines, about 64 KiB each; when
 * following, also whatever is ready each time it has caught up).
 * @throws {MoatError} As {@linkcode readRecords}.
 * @throws {RangeError} For `follow` with `until`, or a bad `pollMs`.
 */
export async function* catRecords(
  dir: string,
  options: CatRecordsOptions = {},
): AsyncGenerator<Uint8Array> {
  const pollMs = options.pollMs ?? DEFAULT_FOLLOW_POLL_MS;
  if (options.follow && options.until !== undefined) {
    throw new RangeError("Cannot follow a vault up to an end time");
  }
  if (!Number.isSafeInteger(pollMs) || pollMs < 10 || pollMs > 10_000) {
    throw new RangeError(
      `Invalid pollMs: ${pollMs} is not an integer from 10 to 10000`,
    );
  }
  const entries = await _sources(dir, options.source);
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const terminal = options.terminal === true;
  const json = options.json === true;
  const labelled = entries.length > 1 ||
    (options.follow === true && !(options.source?.includes("/") ?? false));
  const labels = new Map<SourceEntry, Uint8Array>();
  const labelOf = (entry: SourceEntry) => {
    let label = labels.get(entry);
    if (label === undefined) {
      label = encoder.encode(`${escapeText(sourceLabel(entry.key))}\t`);
      labels.set(entry, label);
    }
    return label;
  };
  const out: Uint8Array[] = [];
  let size = 0;
  let open: SourceEntry | undefined;
  const put = (bytes: Uint8Array) => {
    out.push(bytes);
    size += bytes.length;
  };
  const follow = options.follow
    ? { dir, source: options.source, pollMs }
    : undefined;
  for await (const item of _merge(entries, { ...options, follow })) {
    if (item === null) {
      // Caught up while following: out with what is ready.
      if (size > 0) yield _concat(out.splice(0), size);
      size = 0;
      continue;
    }
    const [record, entry] = item;
    if (json) {
      put(encoder.encode(formatRecordJson(record) + "\n"));
    } else {
      if (open !== undefined && open !== entry) {
        // The source's line ended in a partial record: end it here.
        put(NEWLINE);
        open = undefined;
      }
      if (open === undefined && labelled) put(labelOf(entry));
      put(
        terminal
          ? encoder.encode(escapeText(decoder.decode(record.line)))
          : _escapeLineFeeds(record.line),
      );
      if (record.partial) {
        open = entry;
      } else {
        put(NEWLINE);
        open = undefined;
      }
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

const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true });
const LOOSE_UTF8 = new TextDecoder("utf-8");

/**
 * One record as a line of JSON (without the newline): `source` (its
 * label), `peer`, `identity` (only if the peer authenticated), `name`,
 * `seq`, `ts` (the shipper's time) and `recvTs` (the receive time), both in
 * ms since the epoch, `line`, and `partial: true` for a piece of a long line
 * that the next record continues. `line` is the stored bytes as UTF-8 text;
 * a line that is not valid UTF-8 has each bad sequence replaced by U+FFFD
 * and also carries its exact bytes as `lineBase64`. Every character that
 * could drive a terminal is written as a `\u` escape, so the output is
 * safe to show and parses to the same values.
 *
 * @example A line that is not UTF-8
 * ```ts
 * import { formatRecordJson } from "./read.ts";
 * import assert from "node:assert/strict";
 * const json = formatRecordJson({
 *   peer: "10.0.0.5", name: "app", seq: 7, ts: 1, recvTs: 2,
 *   line: Uint8Array.of(0x68, 0x69, 0xff), partial: false,
 * });
 * assert.deepEqual(JSON.parse(json), {
 *   source: "10.0.0.5/app", peer: "10.0.0.5", name: "app", seq: 7, ts: 1,
 *   recvTs: 2, line: "hi\ufffd", lineBase64: "aGn/",
 * });
 * ```
 *
 * @param record The record.
 * @returns The JSON text.
 */
export function formatRecordJson(record: VaultRecord): string {
  let line: string;
  let raw: string | undefined;
  try {
    line = STRICT_UTF8.decode(record.line);
  } catch {
    line = LOOSE_UTF8.decode(record.line);
    raw = Buffer.from(
      record.line.buffer,
      record.line.byteOffset,
      record.line.byteLength,
    ).toString("base64");
  }
  const key = record.identity === undefined
    ? { peer: record.peer, name: record.name }
    : { peer: record.peer, identity: record.identity, name: record.name };
  // Every character that could drive a terminal written as a \u escape.
  return stringifySafe({
    source: sourceLabel(key),
    ...key,
    seq: record.seq,
    ts: record.ts,
    recvTs: record.recvTs,
    line,
    ...(raw !== undefined && { lineBase64: raw }),
    ...(record.partial && { partial: true }),
  });
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

/** Loads the head's next non-empty batch, filtered by the range. */
async function _advance(head: Head, range: _Range): Promise<boolean> {
  const { since, until } = range;
  while (true) {
    const next = await head.reader.next();
    if (next === undefined) return false;
    const batch = since === undefined && until === undefined
      ? next
      : next.filter((r) =>
        (since === undefined || r.recvTs >= since) &&
        (until === undefined || r.recvTs < until)
      );
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
