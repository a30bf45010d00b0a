/**
 * Builds the shipper's ShipBatch frames straight from spool records: each
 * frame is one allocation holding the frame header and the payload, and
 * each line is copied once, from the spool bytes into the frame. No object
 * per record is made, and nothing is checksummed again: the spool checked
 * what it read back, and kept records are the bytes it wrote.
 *
 * @module
 */

import { encodeHeader, HEADER_SIZE } from "../framer.ts";
import { Kind, SHIP_RECORD_HEADER } from "../protocol.ts";
import {
  SPOOL_FLAG_PARTIAL,
  SPOOL_LINE_OFFSET,
  type SpoolChunk,
} from "./spool.ts";

/** One whole ShipBatch frame and the records it carries. */
export interface ShipFrame {
  /** Frame header and payload, ready to write. */
  frame: Uint8Array;
  /** Sequence number of its first record. */
  firstSeq: number;
  /** Sequence number of its last record. */
  lastSeq: number;
}

const TWO_32 = 0x1_0000_0000;

/**
 * Packs spool records into ShipBatch frames of at most `budget` payload
 * bytes (a single larger record goes alone) and at most `maxRecords`
 * records, in order. The payload is what `encodeShipBatch` in
 * `lib/protocol.ts` makes of the same records.
 *
 * @example One line
 * ```ts ignore
 * for (const f of shipFrames(batch, 512 * 1024, 4096)) await write(f.frame);
 * ```
 *
 * @param chunks Checked spool records (from `Spool.chunks`), consecutive.
 * @param budget Most payload bytes per frame (unless one record is larger).
 * @param maxRecords Most records per frame.
 * @returns The frames.
 */
export function* shipFrames(
  chunks: readonly SpoolChunk[],
  budget: number,
  maxRecords: number,
): Generator<ShipFrame> {
  let ci = 0;
  let at = 0;
  let seq = chunks[0]?.firstSeq ?? 0;
  while (ci < chunks.length) {
    // Pass 1: how many records, and how many bytes, go in this frame.
    const startChunk = ci;
    const startAt = at;
    const firstSeq = seq;
    let size = 0;
    let count = 0;
    while (ci < chunks.length && count < maxRecords) {
      const bytes = chunks[ci]!.bytes;
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
      let stop = false;
      while (at < bytes.length) {
        const length = view.getUint32(at + 4, true);
        const n = SHIP_RECORD_HEADER + length - SPOOL_LINE_OFFSET;
        if (count > 0 && (size + n > budget || count >= maxRecords)) {
          stop = true;
          break;
        }
        size += n;
        count++;
        at += length;
      }
      if (stop) break;
      ci++;
      at = 0;
    }
    // Pass 2: write them.
    const frame = new Uint8Array(HEADER_SIZE + size);
    encodeHeader(Kind.ShipBatch, size, frame);
    const out = new DataView(frame.buffer);
    let dst = HEADER_SIZE;
    let c = startChunk;
    let src = startAt;
    let bytes = chunks[c]!.bytes;
    let view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    for (let i = 0; i < count; i++) {
      if (src >= bytes.length) {
        c++;
        src = 0;
        bytes = chunks[c]!.bytes;
        view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
      }
      const length = view.getUint32(src + 4, true);
      const line = length - SPOOL_LINE_OFFSET;
      out.setFloat64(dst, seq, true);
      out.setFloat64(
        dst + 8,
        view.getUint32(src + 24, true) * TWO_32 +
          view.getUint32(src + 20, true),
        true,
      );
      frame[dst + 16] = (bytes[src + 9]! & SPOOL_FLAG_PARTIAL) !== 0 ? 1 : 0;
      out.setUint32(dst + 17, line, true);
      frame.set(
        bytes.subarray(src + SPOOL_LINE_OFFSET, src + length),
        dst + SHIP_RECORD_HEADER,
      );
      dst += SHIP_RECORD_HEADER + line;
      src += length;
      seq++;
    }
    yield { frame, firstSeq, lastSeq: seq - 1 };
  }
}
