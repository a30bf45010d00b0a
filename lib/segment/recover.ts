/**
 * Recovery of a segment log at open: the last segment is verified record by
 * record and cut at the first torn or invalid record; a segment without a
 * valid record is removed.
 *
 * @module
 */

import { open, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import { checkSegmentHeader, SEGMENT_HEADER_BYTES } from "./codec.ts";
import { syncDir } from "./fs.ts";
import { SegmentScanner } from "./scanner.ts";

/**
 * What a log knows about the records of one segment, for an index kept
 * beside it: the least and greatest record time and the tail after its
 * last record (both defined by the log's owner, see
 * {@linkcode SegmentSummarizer}).
 */
export interface SegmentSummary {
  /** Least record time in the segment. */
  minTime: number;
  /** Greatest record time in the segment. */
  maxTime: number;
  /** What follows from the last record (the vault: its chain link), if known. */
  tail?: Uint8Array;
}

/** How a log's owner reads a record's time and tail (see {@linkcode SegmentSummary}). */
export interface SegmentSummarizer {
  /** The record's time. */
  timeOf(record: Uint8Array): number;
  /** The record's tail, or undefined if it has none. */
  tailOf(record: Uint8Array): Uint8Array | undefined;
}

/** A segment file of a log. */
export interface SegmentInfo {
  /** Sequence number of its first record. */
  readonly firstSeq: number;
  /** Its path. */
  readonly path: string;
  /** Bytes known to be durable (header included); 0 while being created. */
  size: number;
  /**
   * The durable records' times and tail, when known: for a segment written
   * by this process, and for the last segment at open when the log has a
   * summarizer. Undefined otherwise.
   */
  summary?: SegmentSummary | undefined;
}

/** Something recovery did to a log at open. */
export type LogRepair =
  | {
    type: "truncated";
    file: string;
    offset: number;
    bytes: number;
    reason: string;
  }
  | { type: "removed"; file: string; bytes: number; reason: string };

/**
 * Verifies a segment and cuts a torn tail.
 *
 * @param segment The log's last segment; its `size` is set to the bytes kept.
 * @param options The log's magic and record kind, where to report a
 * repair, and how to summarize the records kept (sets `segment.summary`).
 * @returns The last valid sequence number and a copy of that record, or
 * undefined if the segment held no valid record (it has then been removed).
 * @throws {Error} A system error.
 */
export async function recoverSegment(
  segment: SegmentInfo,
  options: {
    magic: Uint8Array;
    kind: number;
    onRepair?: ((repair: LogRepair) => void) | undefined;
    summarizer?: SegmentSummarizer | undefined;
  },
): Promise<{ lastSeq: number; lastRecord: Uint8Array } | undefined> {
  const handle = await open(segment.path, "r+");
  let fileSize = 0;
  let removeReason: string | undefined;
  let lastSeq: number | undefined;
  let lastRecord: Uint8Array | undefined;
  let minTime = Infinity;
  let maxTime = -Infinity;
  const summarizer = options.summarizer;
  try {
    fileSize = (await handle.stat()).size;
    const header = new Uint8Array(Math.min(fileSize, SEGMENT_HEADER_BYTES));
    await handle.read(header, 0, header.length, 0);
    removeReason = checkSegmentHeader(header, {
      magic: options.magic,
      firstSeq: segment.firstSeq,
    });
    if (removeReason === undefined) {
      const scanner = new SegmentScanner(handle, {
        kind: options.kind,
        nextSeq: segment.firstSeq,
      });
      while (true) {
        const batch = await scanner.read(fileSize);
        if (batch.length === 0) break;
        lastRecord = batch.at(-1)!.bytes.slice();
        if (summarizer) {
          for (const record of batch) {
            const time = summarizer.timeOf(record.bytes);
            if (time < minTime) minTime = time;
            if (time > maxTime) maxTime = time;
          }
        }
      }
      if (scanner.offset === SEGMENT_HEADER_BYTES) {
        removeReason = scanner.error ?? "segment holds no complete record";
      } else {
        lastSeq = scanner.nextSeq - 1;
        if (scanner.offset < fileSize) {
          await handle.truncate(scanner.offset);
          await handle.sync();
          options.onRepair?.({
            type: "truncated",
            file: segment.path,
            offset: scanner.offset,
            bytes: fileSize - scanner.offset,
            reason: scanner.error ?? "last record is incomplete",
          });
        }
        segment.size = scanner.offset;
        if (summarizer) {
          const tail = summarizer.tailOf(lastRecord!);
          segment.summary = { minTime, maxTime, ...(tail && { tail }) };
        }
      }
    }
  } finally {
    await handle.close();
  }
  if (lastSeq !== undefined) return { lastSeq, lastRecord: lastRecord! };
  await unlink(segment.path);
  await syncDir(dirname(segment.path));
  options.onRepair?.({
    type: "removed",
    file: segment.path,
    bytes: fileSize,
    reason: removeReason ?? "segment is invalid",
  });
  return undefined;
}
