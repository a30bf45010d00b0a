/**
 * A shipper's backlog: the lines spooled but not yet acknowledged by the
 * server, counted exactly in lines and in bytes, for the terminal and the
 * retry notices. The byte length of every unacknowledged line is kept (4
 * bytes each, where its spool record takes at least 56 on disk), so that an
 * acknowledgement that ends anywhere subtracts exactly what it covers.
 *
 * @module
 */

/** Smallest ring, in lines. */
const MIN_CAPACITY = 1024;
/** A ring larger than this is given back once everything is acknowledged. */
const SHRINK_CAPACITY = 65536;

/**
 * Counts spooled, unacknowledged lines and their bytes, by sequence number.
 *
 * @example Lines in, acknowledgements out
 * ```ts
 * import assert from "node:assert/strict";
 * import { ShipBacklog } from "./backlog.ts";
 *
 * const backlog = new ShipBacklog(10); // 10 records acknowledged before
 * backlog.add(11, [5, 7, 9]);          // records 11..13: 5, 7 and 9 bytes
 * assert.deepEqual([backlog.lines, backlog.bytes], [3, 21]);
 * backlog.ack(12);
 * assert.deepEqual([backlog.lines, backlog.bytes, backlog.ackedLines], [1, 9, 2]);
 * ```
 */
export class ShipBacklog {
  /** Byte lengths by sequence number, in a ring starting at `#head`. */
  #ring = new Uint32Array(MIN_CAPACITY);
  /** First unacknowledged sequence number (stored at ring index `#start`). */
  #head: number;
  #start = 0;
  /** One past the last sequence number added. */
  #end: number;
  #bytes = 0;
  #acked = 0;

  /**
   * @param ackedSeq The last sequence number acknowledged before (0 if none).
   */
  constructor(ackedSeq = 0) {
    this.#head = ackedSeq + 1;
    this.#end = this.#head;
  }

  /** Lines spooled and not acknowledged. */
  get lines(): number {
    return this.#end - this.#head;
  }

  /** Bytes of those lines (without their newlines). */
  get bytes(): number {
    return this.#bytes;
  }

  /** Lines acknowledged since this backlog was made (for rates). */
  get ackedLines(): number {
    return this.#acked;
  }

  /**
   * Forgets every line and starts counting after `ackedSeq` (where a spool
   * just opened stands); `ackedLines` is kept.
   *
   * @param ackedSeq The last sequence number acknowledged.
   */
  reset(ackedSeq: number): void {
    if (this.#ring.length > MIN_CAPACITY) {
      this.#ring = new Uint32Array(MIN_CAPACITY);
    } else this.#ring.fill(0);
    this.#head = this.#end = ackedSeq + 1;
    this.#start = 0;
    this.#bytes = 0;
  }

  /**
   * Counts spooled records `firstSeq`, `firstSeq + 1`, … with these line
   * lengths. Records already acknowledged are skipped; records may arrive
   * out of order, as long as every number is added once.
   *
   * @param firstSeq The sequence number of the first length.
   * @param lengths Each record's line length in bytes, in order.
   * @throws {RangeError} If `firstSeq` is not a positive integer.
   */
  add(firstSeq: number, lengths: ArrayLike<number>): void {
    if (!Number.isSafeInteger(firstSeq) || firstSeq < 1) {
      throw new RangeError(
        `Invalid sequence number: ${firstSeq} is not a positive integer`,
      );
    }
    const last = firstSeq + lengths.length;
    if (last > this.#end) {
      this.#grow(last - this.#head);
      this.#end = last;
    }
    const mask = this.#ring.length - 1;
    for (let i = Math.max(0, this.#head - firstSeq); i < lengths.length; i++) {
      const length = lengths[i]!;
      const at = (this.#start + firstSeq + i - this.#head) & mask;
      this.#bytes += length - this.#ring[at]!;
      this.#ring[at] = length;
    }
  }

  /**
   * Removes everything up to and including `seq` (acknowledged by the
   * server). An older number than before changes nothing.
   *
   * @param seq The acknowledged sequence number.
   */
  ack(seq: number): void {
    if (!(seq >= this.#head)) return;
    const n = seq + 1 - this.#head;
    this.#acked += n;
    if (seq + 1 >= this.#end) {
      // Everything acknowledged: clear only the slots in use, or give back
      // a ring that a long outage grew.
      if (this.#ring.length > SHRINK_CAPACITY) {
        this.#ring = new Uint32Array(MIN_CAPACITY);
      } else {
        const mask = this.#ring.length - 1;
        const used = this.#end - this.#head;
        for (let i = 0; i < used; i++) this.#ring[(this.#start + i) & mask] = 0;
      }
      this.#bytes = 0;
      this.#start = 0;
      this.#head = this.#end = seq + 1;
      return;
    }
    const mask = this.#ring.length - 1;
    for (let i = 0; i < n; i++) {
      const at = (this.#start + i) & mask;
      this.#bytes -= this.#ring[at]!;
      this.#ring[at] = 0;
    }
    this.#start = (this.#start + n) & mask;
    this.#head = seq + 1;
  }

  /** Makes room for `count` lines from `#head` on. */
  #grow(count: number): void {
    const old = this.#ring;
    if (count <= old.length) return;
    let capacity = old.length;
    while (capacity < count) capacity *= 2;
    const ring = new Uint32Array(capacity);
    const used = this.#end - this.#head;
    for (let i = 0; i < used; i++) {
      ring[i] = old[(this.#start + i) & (old.length - 1)]!;
    }
    this.#ring = ring;
    this.#start = 0;
  }
}
