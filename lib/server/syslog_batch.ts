/**
 * The messages of one syslog read on their way into the vault, with no
 * object per message: {@linkcode SyslogBatch}.
 *
 * @module
 */

import type { AppendBatch, VaultSource } from "../vault/store.ts";
import { type SyslogSink, syslogTimeAt } from "../syslog.ts";
import type { AppendPipeline } from "./append_pipeline.ts";
import { DEFAULT_MAX_BATCH_RECORDS } from "../limits.ts";

/**
 * The messages of one read, as the vault appends them: where each lies in
 * its buffer, and its timestamp, in arrays reused from read to read, so a
 * message costs no object of its own (at 100,000 messages a second, a view
 * and a record object each were most of the garbage the collector chased).
 * One batch can serve every connection: a read's messages are framed and
 * appended in one synchronous stretch ({@linkcode SyslogBatch.prototype.start}
 * to {@linkcode SyslogBatch.prototype.end}), and the vault copies the lines
 * before `append` returns.
 */
export class SyslogBatch implements AppendBatch, SyslogSink {
  /** Messages in the batch being filled. */
  length = 0;
  #first = 1;
  #recvTs = 0;
  #starts = new Uint32Array(64);
  #ends = new Uint32Array(64);
  #ts = new Float64Array(64);
  /**
   * The buffers the messages lie in, and which is whose: at most two, the
   * read's buffer and the held message the read completes.
   */
  #bufs: Uint8Array[] = [];
  #which = new Uint8Array(64);
  #appends: AppendPipeline | undefined;
  #source: VaultSource | undefined;
  #pushed: Promise<void>[] = [];

  /**
   * Starts a read's batches.
   *
   * @returns The appends pushed so far (filled as batches fill).
   */
  start(
    appends: AppendPipeline,
    source: VaultSource,
    recvTs: number,
  ): readonly Promise<void>[] {
    this.#appends = appends;
    this.#source = source;
    this.#recvTs = recvTs;
    this.#pushed = [];
    this.#reset();
    return this.#pushed;
  }

  /**
   * Appends what is left and lets go of the buffers.
   *
   * @returns When every batch of the read is durable.
   */
  end(): Promise<unknown> {
    if (this.length > 0) this.#append();
    const pushed = this.#pushed;
    this.#pushed = [];
    this.#reset();
    this.#appends = this.#source = undefined;
    return pushed.length === 0 ? RESOLVED : Promise.all(pushed);
  }

  message(bytes: Uint8Array, start: number, end: number): void {
    let i = this.length;
    if (i === DEFAULT_MAX_BATCH_RECORDS) {
      this.#append();
      i = 0;
    }
    if (i === this.#starts.length) this.#grow();
    const bufs = this.#bufs;
    let which = bufs.length - 1;
    if (which < 0 || bufs[which] !== bytes) {
      bufs.push(bytes);
      which++;
    }
    this.#which[i] = which;
    this.#starts[i] = start;
    this.#ends[i] = end;
    const ts = syslogTimeAt(bytes, start, end, this.#recvTs);
    this.#ts[i] = ts < 0 ? this.#recvTs : ts;
    this.length = i + 1;
  }

  seq(i: number): number {
    return this.#first + i;
  }

  ts(i: number): number {
    return this.#ts[i]!;
  }

  partial(): boolean {
    return false;
  }

  lineLength(i: number): number {
    return this.#ends[i]! - this.#starts[i]!;
  }

  copyLine(i: number, to: Uint8Array, at: number): void {
    const from = this.#starts[i]!;
    const end = this.#ends[i]!;
    const bytes = this.#bufs[this.#which[i]!]!;
    // A short line byte by byte: a view to copy it would cost more.
    if (end - from <= 64) {
      for (let k = from; k < end; k++) to[at++] = bytes[k]!;
    } else {
      to.set(bytes.subarray(from, end), at);
    }
  }

  #append() {
    // acceptedSeq moves as soon as append is called, so each batch numbers
    // on from the one before.
    this.#first = this.#source!.acceptedSeq + 1;
    this.#pushed.push(
      this.#appends!.push({ cost: 0, decode: () => this }, {
        recvTs: this.#recvTs,
        // A shared vault numbers them on after other front doors' records.
        fresh: true,
      }),
    );
    this.#reset();
  }

  #reset() {
    this.length = 0;
    this.#bufs.length = 0;
  }

  #grow() {
    const size = Math.min(2 * this.#starts.length, DEFAULT_MAX_BATCH_RECORDS);
    const starts = new Uint32Array(size);
    starts.set(this.#starts);
    this.#starts = starts;
    const ends = new Uint32Array(size);
    ends.set(this.#ends);
    this.#ends = ends;
    const ts = new Float64Array(size);
    ts.set(this.#ts);
    this.#ts = ts;
    const which = new Uint8Array(size);
    which.set(this.#which);
    this.#which = which;
  }
}

const RESOLVED: Promise<void> = Promise.resolve();
