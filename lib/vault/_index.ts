/**
 * A source's segment index, `segments.json` beside its segments: one entry
 * per complete segment (every one but the last) with its records' receive
 * times, the chain link after its last record, and the time of the first
 * seal that covered all of it. The writer keeps it; readers use it to skip
 * segments outside a time range, and prune to pick what to remove. It is a
 * cache: an entry that is missing, malformed or does not match the segments
 * on disk is ignored and the segment read instead, and `verify` never reads
 * it. Format: `docs/VAULT.md`, "Segment index".
 *
 * @module
 */

import { join } from "node:path";
import { getU64 } from "../segment/codec.ts";
import { readTextIfExists, writeFileAtomic } from "../segment/fs.ts";
import { readSegment } from "../segment/scanner.ts";
import type { SegmentFile } from "../segment/scanner.ts";
import { LINK_BYTES, LINK_OFFSET } from "./_chain.ts";
import { FLAG_CHAIN, VAULT_KIND, VAULT_MAGIC } from "./_format.ts";

/** The index file in each source directory. */
export const INDEX_FILE = "segments.json";

/** What the index knows about one complete segment. */
export interface SegmentEntry {
  /** Sequence number of its first record (its file name). */
  first: number;
  /** Sequence number of its last record. */
  last: number;
  /** Least receive time of its records. */
  minRecvTs?: number;
  /** Greatest receive time of its records. */
  maxRecvTs?: number;
  /** The chain link of its last record. */
  lastLink?: Uint8Array;
  /** Time of the first seal that covered its last record (sealed vaults). */
  sealedAt?: number;
}

/**
 * The receive time of a vault line record.
 *
 * @param record A whole vault line record (checked).
 * @returns Its `recvTs`.
 */
export function recvTsOf(record: Uint8Array): number {
  return getU64(
    new DataView(record.buffer, record.byteOffset, record.byteLength),
    28,
  );
}

/**
 * The chain link a vault line record carries.
 *
 * @param record A whole vault line record (checked).
 * @returns A copy of its link, or undefined for a record without one.
 */
export function linkOf(record: Uint8Array): Uint8Array | undefined {
  if (!(record[9]! & FLAG_CHAIN)) return undefined;
  if (record.length < LINK_OFFSET + LINK_BYTES) return undefined;
  return record.slice(LINK_OFFSET, LINK_OFFSET + LINK_BYTES);
}

/**
 * Reads a source's segment index. Never throws: an index that is missing,
 * unreadable or malformed is empty, and a malformed entry is left out.
 *
 * @param dir The source directory.
 * @returns The entries by first sequence number.
 */
export async function readSegmentIndex(
  dir: string,
): Promise<Map<number, SegmentEntry>> {
  const index = new Map<number, SegmentEntry>();
  let parsed: unknown;
  try {
    const text = await readTextIfExists(join(dir, INDEX_FILE));
    if (text === undefined) return index;
    parsed = JSON.parse(text);
  } catch {
    return index;
  }
  const list = (parsed as { version?: unknown; segments?: unknown })
    ?.segments;
  if ((parsed as { version?: unknown }).version !== 1 || !Array.isArray(list)) {
    return index;
  }
  for (const raw of list) {
    const entry = _parseEntry(raw);
    if (entry !== undefined) index.set(entry.first, entry);
  }
  return index;
}

function _parseEntry(raw: unknown): SegmentEntry | undefined {
  if (typeof raw !== "object" || raw === null) return undefined;
  const r = raw as Record<string, unknown>;
  const time = (v: unknown) =>
    typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
  const { first, last, minRecvTs, maxRecvTs, lastLink, sealedAt } = r;
  if (!time(first) || !time(last) || (first as number) < 1) return undefined;
  if ((last as number) < (first as number)) return undefined;
  const entry: SegmentEntry = { first: first as number, last: last as number };
  if (time(minRecvTs) && time(maxRecvTs) && minRecvTs! <= maxRecvTs!) {
    entry.minRecvTs = minRecvTs as number;
    entry.maxRecvTs = maxRecvTs as number;
  }
  if (typeof lastLink === "string" && /^[0-9a-f]{64}$/.test(lastLink)) {
    entry.lastLink = Uint8Array.fromHex(lastLink);
  }
  if (time(sealedAt)) entry.sealedAt = sealedAt as number;
  return entry;
}

/**
 * Replaces a source's segment index atomically.
 *
 * @param dir The source directory.
 * @param entries The entries, in any order.
 * @returns When it is durable.
 */
export async function writeSegmentIndex(
  dir: string,
  entries: Iterable<SegmentEntry>,
): Promise<void> {
  const list = [...entries].sort((a, b) => a.first - b.first).map((e) => ({
    first: e.first,
    last: e.last,
    ...(e.minRecvTs !== undefined && {
      minRecvTs: e.minRecvTs,
      maxRecvTs: e.maxRecvTs,
    }),
    ...(e.lastLink !== undefined && { lastLink: e.lastLink.toHex() }),
    ...(e.sealedAt !== undefined && { sealedAt: e.sealedAt }),
  }));
  await writeFileAtomic(
    join(dir, INDEX_FILE),
    new TextEncoder().encode(
      JSON.stringify({ version: 1, segments: list }) + "\n",
    ),
  );
}

/**
 * The index entry of segment `i` of `segments`, if the index has one that
 * matches it: same first record, and a last record just before the next
 * segment's first. The last segment has none.
 *
 * @param index The index.
 * @param segments The source's segments, oldest first.
 * @param i Which one.
 * @returns The entry, or undefined.
 */
export function entryOf(
  index: ReadonlyMap<number, SegmentEntry>,
  segments: readonly SegmentFile[],
  i: number,
): SegmentEntry | undefined {
  const next = segments[i + 1];
  if (next === undefined) return undefined;
  const entry = index.get(segments[i]!.firstSeq);
  return entry?.last === next.firstSeq - 1 ? entry : undefined;
}

/**
 * Reads a complete segment to build its index entry (for segments written
 * before the index existed, or whose entry was lost).
 *
 * @param segment The segment file.
 * @returns Its entry (without `sealedAt`).
 * @throws {MoatError} `ERR_CORRUPT` for damaged data; a system error.
 */
export async function summarizeSegment(
  segment: SegmentFile,
): Promise<SegmentEntry> {
  let minRecvTs = Infinity;
  let maxRecvTs = -Infinity;
  let last = segment.firstSeq - 1;
  let lastRecord: Uint8Array | undefined;
  for await (
    const batch of readSegment(segment.path, {
      magic: VAULT_MAGIC,
      kind: VAULT_KIND,
      firstSeq: segment.firstSeq,
      last: false,
    })
  ) {
    for (const record of batch) {
      const t = recvTsOf(record.bytes);
      if (t < minRecvTs) minRecvTs = t;
      if (t > maxRecvTs) maxRecvTs = t;
    }
    const tail = batch.at(-1)!;
    last = tail.seq;
    lastRecord = tail.bytes;
  }
  const entry: SegmentEntry = { first: segment.firstSeq, last };
  if (lastRecord === undefined) return entry;
  entry.minRecvTs = minRecvTs;
  entry.maxRecvTs = maxRecvTs;
  const link = linkOf(lastRecord);
  if (link) entry.lastLink = link;
  return entry;
}
