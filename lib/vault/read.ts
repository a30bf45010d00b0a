/**
 * The vault's readers: list sources, and read records in order. They take no
 * lock and may run while a server appends: a record still being written (or a
 * torn tail not yet cut by recovery) ends the data, and is never returned.
 * Every record's checksum is verified before it is returned.
 *
 * @module
 */

import { readdir, readFile, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import { _code } from "./_fs.ts";
import {
  decodeVaultRecord,
  MARKER_FILE,
  MARKER_TEXT,
  readSourceKey,
  sourceLabel,
  SOURCES_DIR,
  VAULT_KIND,
  VAULT_MAGIC,
} from "./_format.ts";
import type { SourceKey, VaultRecord } from "./_format.ts";
import { listSegments, readSegment } from "./_segment_log.ts";

export type { SourceKey, VaultRecord } from "./_format.ts";

/** Options for {@linkcode readRecords}. */
export interface ReadRecordsOptions {
  /**
   * Only sources whose name, or whose label `peer/name`, equals this.
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
  /** The peer the records came from. */
  peer: string;
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

async function _sources(dir: string): Promise<SourceEntry[]> {
  const root = resolve(dir);
  let marker: string | undefined;
  try {
    marker = await readFile(join(root, MARKER_FILE), "utf8");
  } catch (error) {
    if (_code(error) !== "ENOENT" && _code(error) !== "ENOTDIR") throw error;
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
    out.push({ key: await readSourceKey(path, id), id, path });
  }
  out.sort((a, b) => _compare(sourceLabel(a.key), sourceLabel(b.key)));
  return out;
}

function _compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Every record of one source, in batches, oldest first. */
async function* _sourceBatches(
  entry: SourceEntry,
): AsyncGenerator<VaultRecord[]> {
  const segments = await listSegments(entry.path);
  for (let i = 0; i < segments.length; i++) {
    yield* _segmentRecords(entry, segments, i);
  }
}

/** A source's cursor in the merge. */
interface Head {
  batch: VaultRecord[];
  index: number;
  order: number;
  iterator: AsyncGenerator<VaultRecord[]>;
}

function _before(a: Head, b: Head): boolean {
  const ra = a.batch[a.index]!;
  const rb = b.batch[b.index]!;
  return ra.recvTs !== rb.recvTs ? ra.recvTs < rb.recvTs : a.order < b.order;
}

/**
 * Reads stored records. Each source's records come in sequence order; the
 * sources are merged by receive time (ties: by label `peer/name`), so a
 * source whose server clock stepped back still keeps its own order.
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
  const { source, since, signal } = options;
  const entries = (await _sources(dir)).filter((entry) =>
    source === undefined || entry.key.name === source ||
    sourceLabel(entry.key) === source
  );
  const heap: Head[] = [];
  try {
    for (const [order, entry] of entries.entries()) {
      const head: Head = {
        batch: [],
        index: 0,
        order,
        iterator: _sourceBatches(entry),
      };
      if (await _advance(head, since)) _push(heap, head);
    }
    while (heap.length > 0) {
      if (signal?.aborted) return;
      const head = heap[0]!;
      yield head.batch[head.index]!;
      head.index++;
      if (head.index < head.batch.length || await _advance(head, since)) {
        _siftDown(heap, 0);
      } else {
        const last = heap.pop()!;
        if (heap.length > 0) {
          heap[0] = last;
          _siftDown(heap, 0);
        }
      }
    }
  } finally {
    for (const head of heap) await head.iterator.return(undefined);
  }
}

/** Loads the head's next non-empty batch, filtered by `since`. */
async function _advance(
  head: Head,
  since: number | undefined,
): Promise<boolean> {
  while (true) {
    const next = await head.iterator.next();
    if (next.done) return false;
    const batch = since === undefined
      ? next.value
      : next.value.filter((r) => r.recvTs >= since);
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
 * Lists the sources that hold at least one record, sorted by label
 * `peer/name`. Reads each source's first record and scans its last segment.
 *
 * @example Usage
 * ```ts ignore
 * import { listSources } from "./read.ts";
 * for (const s of await listSources("/srv/moat-vault")) {
 *   console.log(`${s.peer}/${s.name}`, s.records, new Date(s.lastRecvTs));
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
    let first: VaultRecord | undefined;
    let last: VaultRecord | undefined;
    let bytes = 0;
    for (const segment of segments) {
      bytes += await stat(segment.path).then((s) => s.size, () => 0);
    }
    for (let i = 0; i < segments.length && first === undefined; i++) {
      for await (const batch of _segmentRecords(entry, segments, i)) {
        first = batch[0];
        break;
      }
    }
    for (let i = segments.length - 1; i >= 0 && last === undefined; i--) {
      for await (const batch of _segmentRecords(entry, segments, i)) {
        last = batch.at(-1) ?? last;
      }
    }
    if (first === undefined || last === undefined) continue;
    out.push({
      peer: entry.key.peer,
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
  segments: { firstSeq: number; path: string }[],
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
    if (_code(error) !== "ENOENT") throw error;
  }
}
