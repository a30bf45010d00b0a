/**
 * A seeded fuzzer for the frame decoders, shared by `tests/fuzz_test.ts`
 * (a short run plus the corpus replay) and `soak/main.ts` (the 1,000,000-case
 * run on each runtime).
 *
 * Every case is a byte string, a way to split it into chunks, a frame limit
 * and a way to consume it. It goes through both decoders,
 * {@linkcode FrameDecoderStream} and {@linkcode FrameReader}, and what they
 * produce is compared with {@linkcode modelDecode}, a tiny reference decoder:
 * the same frames in the same order, then the same ending (clean end, type 0,
 * length over the limit, or input ending inside a header or a payload), with
 * the documented error class and message. Anything else (another error, a
 * missing or extra frame, a payload over the limit, a fragment over the
 * reader's buffer, a promise that never settles) is a finding.
 *
 * @module
 */

import process from "node:process";
import { seededRandom as prng } from "../tests/_test_utils.ts";
import {
  ConnectionClosedError,
  FrameTooLargeError,
  ProtocolError,
} from "../lib/errors.ts";
import {
  DEFAULT_MAX_FRAME_SIZE,
  encodeHeader,
  FrameDecoderStream,
  FrameReader,
  HEADER_SIZE,
} from "../lib/framer.ts";

/** Largest value of the 4-byte length field. */
export const MAX_U32 = 0xffff_ffff;

/** How a case ends. */
export type Ending =
  | "ok"
  | "type0"
  | "too_large"
  | "truncated_header"
  | "truncated_payload";

/** How the {@linkcode FrameReader} run consumes payloads. */
export type ReaderMode = "frame" | "fragment" | "skip" | "peek";

/** One fuzz input. */
export interface FuzzCase {
  /** The whole input. */
  bytes: Uint8Array;
  /** Ascending cut points inside `bytes`, where chunks split. */
  cuts: number[];
  /** The decoders' `maxFrameSize`. */
  maxFrameSize: number;
  /** The reader's `bufferSize`, at least 5. */
  bufferSize: number;
  /** How the reader consumes payloads. */
  mode: ReaderMode;
  /** Indexes of reads (counting from 0) that return 0 bytes first. */
  emptyReads: number[];
  /** Which generator made it, for the corpus and the table. */
  kind: string;
}

/** What a correct decoder produces for a case. */
export interface Expected {
  /** Frames in order: type and payload. */
  frames: { type: number; payload: Uint8Array }[];
  /** How the input ends. */
  ending: Ending;
  /** For `too_large`: the declared length. */
  size?: number;
  /** For truncations: bytes of the unfinished unit received, and its total. */
  got?: number;
  /** For truncations: total bytes of the unfinished unit. */
  total?: number;
}

/**
 * Decodes `bytes` as a reference: the simplest possible reading of the frame
 * format, with no buffering concerns.
 *
 * @param bytes The whole input.
 * @param maxFrameSize The limit.
 * @returns The frames and the ending.
 */
export function modelDecode(bytes: Uint8Array, maxFrameSize: number): Expected {
  const frames: Expected["frames"] = [];
  let pos = 0;
  for (;;) {
    const left = bytes.length - pos;
    if (left === 0) return { frames, ending: "ok" };
    if (left < HEADER_SIZE) {
      return { frames, ending: "truncated_header", got: left, total: 5 };
    }
    const type = bytes[pos]!;
    const length = bytes[pos + 1]! * 0x100_0000 +
      (bytes[pos + 2]! << 16 | bytes[pos + 3]! << 8 | bytes[pos + 4]!);
    if (type === 0) return { frames, ending: "type0" };
    if (length > maxFrameSize) {
      return { frames, ending: "too_large", size: length };
    }
    pos += HEADER_SIZE;
    if (bytes.length - pos < length) {
      return {
        frames,
        ending: "truncated_payload",
        got: HEADER_SIZE + bytes.length - pos,
        total: HEADER_SIZE + length,
      };
    }
    frames.push({ type, payload: bytes.subarray(pos, pos + length) });
    pos += length;
  }
}

/** Splits `bytes` at `cuts`. */
export function chunksOf(
  bytes: Uint8Array,
  cuts: readonly number[],
): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  let start = 0;
  for (const cut of cuts) {
    chunks.push(bytes.subarray(start, cut));
    start = cut;
  }
  chunks.push(bytes.subarray(start));
  return chunks;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function describeError(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/**
 * Checks an error against the expected ending. `reader` selects the
 * {@linkcode FrameReader} flavour of a truncated payload.
 */
function checkError(
  err: unknown,
  want: Expected,
  maxFrameSize: number,
  reader: boolean,
): string | undefined {
  switch (want.ending) {
    case "ok":
      return `unexpected error ${describeError(err)}`;
    case "type0":
      if (
        err instanceof ProtocolError &&
        err.message === "Cannot decode frame: type 0 is not a valid type"
      ) return undefined;
      break;
    case "too_large":
      if (
        err instanceof FrameTooLargeError && err.size === want.size &&
        err.limit === maxFrameSize
      ) return undefined;
      break;
    case "truncated_header":
      if (
        err instanceof ProtocolError &&
        err.message ===
          `Cannot decode frame: stream ended inside a frame (${want.got} of ${want.total} bytes)`
      ) return undefined;
      break;
    case "truncated_payload":
      if (reader) {
        if (
          err instanceof ConnectionClosedError &&
          err.message === "Connection closed inside a frame"
        ) return undefined;
      } else if (
        err instanceof ProtocolError &&
        err.message ===
          `Cannot decode frame: stream ended inside a frame (${want.got} of ${want.total} bytes)`
      ) return undefined;
      break;
  }
  return `expected ${want.ending}, got ${describeError(err)}`;
}

/**
 * Compares decoded frames with the expected ones; returns a finding or
 * undefined. With `prefix`, fewer frames than expected are accepted.
 */
function checkFrames(
  got: { type: number; payload: Uint8Array }[],
  want: Expected,
  maxFrameSize: number,
  prefix = false,
): string | undefined {
  if (got.length > want.frames.length) {
    return `decoded ${got.length} frames, expected ${want.frames.length}`;
  }
  for (let i = 0; i < got.length; i++) {
    const g = got[i]!;
    const w = want.frames[i]!;
    if (g.payload.length > maxFrameSize) {
      return `frame ${i} payload ${g.payload.length} exceeds limit ${maxFrameSize}`;
    }
    if (g.type !== w.type || !equalBytes(g.payload, w.payload)) {
      return `frame ${i} differs: type ${g.type} length ${g.payload.length}, expected type ${w.type} length ${w.payload.length}`;
    }
  }
  if (!prefix && got.length < want.frames.length) {
    return `decoded ${got.length} frames, expected ${want.frames.length}`;
  }
  return undefined;
}

/** What {@linkcode runDecoderStream} saw. */
export interface StreamRun {
  /** A finding, or undefined if the decoder behaved. */
  finding: string | undefined;
  /**
   * Valid frames before the error that never reached the reader. Web Streams
   * discard a readable's queue when it errors, so frames decoded from the
   * same chunk as a bad header are lost; this counts them (not a finding).
   */
  dropped: number;
}

/**
 * Runs a case through {@linkcode FrameDecoderStream}. When the stream errors,
 * the frames it delivered must be a prefix of the expected ones (see
 * {@linkcode StreamRun.dropped}); when it ends cleanly, all of them.
 *
 * @param c The case.
 * @param want Its expected result.
 * @returns The finding, if any, and the frames dropped before an error.
 */
export async function runDecoderStream(
  c: FuzzCase,
  want: Expected,
): Promise<StreamRun> {
  const frames: { type: number; payload: Uint8Array }[] = [];
  let error: unknown;
  let failed = false;
  const reader = ReadableStream.from(chunksOf(c.bytes, c.cuts))
    .pipeThrough(new FrameDecoderStream({ maxFrameSize: c.maxFrameSize }))
    .getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      frames.push(value);
      if (frames.length > want.frames.length) break;
    }
  } catch (err) {
    error = err;
    failed = true;
  }
  const dropped = failed ? Math.max(0, want.frames.length - frames.length) : 0;
  const bad = checkFrames(frames, want, c.maxFrameSize, failed);
  if (bad) return { finding: `FrameDecoderStream: ${bad}`, dropped };
  if (failed) {
    const e = checkError(error, want, c.maxFrameSize, false);
    return { finding: e && `FrameDecoderStream: ${e}`, dropped };
  }
  if (want.ending !== "ok") {
    return {
      finding: `FrameDecoderStream: ended cleanly, expected ${want.ending}`,
      dropped,
    };
  }
  return { finding: undefined, dropped };
}

/** A byte source over chunks, with scheduled empty reads. */
function sourceOf(c: FuzzCase) {
  const queue = chunksOf(c.bytes, c.cuts).filter((x) => x.length > 0);
  const empty = new Set(c.emptyReads);
  let reads = 0;
  let index = 0;
  let rest: Uint8Array | undefined;
  return {
    read(buf: Uint8Array): Promise<number | null> {
      if (empty.has(reads++)) return Promise.resolve(0);
      const chunk = rest ?? queue[index++];
      rest = undefined;
      if (chunk === undefined) return Promise.resolve(null);
      const n = Math.min(chunk.length, buf.length);
      buf.set(chunk.subarray(0, n));
      if (n < chunk.length) rest = chunk.subarray(n);
      return Promise.resolve(n);
    },
  };
}

/**
 * Runs a case through {@linkcode FrameReader} in the case's mode.
 *
 * @param c The case.
 * @param want Its expected result.
 * @returns A finding, or undefined if the reader behaved.
 */
export async function runFrameReader(
  c: FuzzCase,
  want: Expected,
): Promise<string | undefined> {
  const reader = new FrameReader(sourceOf(c), {
    maxFrameSize: c.maxFrameSize,
    bufferSize: c.bufferSize,
  });
  const frames: { type: number; payload: Uint8Array }[] = [];
  let error: unknown;
  let failed = false;
  try {
    for (let i = 0; i <= want.frames.length; i++) {
      if (c.mode === "peek") {
        const n = Math.min(c.bufferSize, i % 7 === 0 ? HEADER_SIZE : i % 3);
        const seen = await reader.peek(n);
        if (seen.length > c.bufferSize) {
          return `FrameReader: peek returned ${seen.length} > bufferSize`;
        }
      }
      const header = await reader.readHeader();
      if (header === null) break;
      if (c.mode === "frame" || c.mode === "peek") {
        frames.push({ type: header.type, payload: await reader.readPayload() });
      } else if (c.mode === "skip") {
        await reader.skipPayload();
        const w = want.frames[frames.length];
        // Skipped payloads are compared by type and length only.
        frames.push({
          type: header.type,
          payload: w && w.payload.length === header.length
            ? w.payload
            : new Uint8Array(header.length),
        });
      } else {
        const payload = new Uint8Array(header.length);
        let filled = 0;
        for (let part; (part = await reader.readFragment()) !== null;) {
          if (part.length === 0) return "FrameReader: empty fragment";
          if (part.length > c.bufferSize) {
            return `FrameReader: fragment ${part.length} > bufferSize ${c.bufferSize}`;
          }
          if (filled + part.length > header.length) {
            return "FrameReader: fragments overrun the payload";
          }
          payload.set(part, filled);
          filled += part.length;
        }
        if (filled !== header.length) {
          return `FrameReader: fragments gave ${filled} of ${header.length} bytes`;
        }
        frames.push({ type: header.type, payload });
      }
    }
  } catch (err) {
    error = err;
    failed = true;
  }
  const bad = checkFrames(frames, want, c.maxFrameSize);
  if (bad) return `FrameReader/${c.mode}: ${bad}`;
  if (failed) {
    const e = checkError(error, want, c.maxFrameSize, true);
    return e && `FrameReader/${c.mode}: ${e}`;
  }
  if (want.ending !== "ok") {
    return `FrameReader/${c.mode}: ended cleanly, expected ${want.ending}`;
  }
  return undefined;
}

/** A seeded PRNG (mulberry32) returning integers from 0 to `max - 1`: the suite's own. */
export { prng };

const LIMITS = [0, 1, 4, 5, 16, 100, 255, 1024, 4096, 65_536];

function pick<T>(rand: (n: number) => number, items: readonly T[]): T {
  return items[rand(items.length)]!;
}

function randomBytes(rand: (n: number) => number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = rand(256);
  return out;
}

/** Lengths a header is made to declare: the edges around the limit and the field. */
function boundaryLength(rand: (n: number) => number, limit: number): number {
  return pick(rand, [
    0,
    1,
    limit,
    limit,
    limit + 1,
    limit + 1,
    Math.max(0, limit - 1),
    MAX_U32,
    MAX_U32,
    MAX_U32 - 1,
    0x8000_0000,
    0x7fff_ffff,
    0x0100_0000,
    0x00ff_ffff,
    0x0001_0000,
    0xffff,
    256,
    255,
    rand(limit + 2),
  ]);
}

/** A payload length that keeps cases small but reaches the limit. */
function payloadLength(rand: (n: number) => number, limit: number): number {
  const cap = Math.min(limit, 600);
  switch (rand(6)) {
    case 0:
      return 0;
    case 1:
      return Math.min(limit, 1);
    case 2:
      return limit <= 2048 ? limit : rand(cap + 1);
    default:
      return rand(cap + 1);
  }
}

function validStream(rand: (n: number) => number, limit: number): Uint8Array {
  const count = rand(5) + (rand(4) === 0 ? 0 : 1);
  const parts: Uint8Array[] = [];
  let total = 0;
  for (let i = 0; i < count; i++) {
    const length = payloadLength(rand, limit);
    const frame = new Uint8Array(HEADER_SIZE + length);
    encodeHeader(rand(255) + 1, length, frame);
    for (let j = HEADER_SIZE; j < frame.length; j++) frame[j] = rand(256);
    parts.push(frame);
    total += frame.length;
  }
  const out = new Uint8Array(total);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

/** Applies 1 to 4 random mutations. */
function mutate(
  rand: (n: number) => number,
  input: Uint8Array,
  limit: number,
): Uint8Array {
  let bytes = input.slice();
  const rounds = rand(4) + 1;
  for (let r = 0; r < rounds; r++) {
    const n = bytes.length;
    switch (rand(9)) {
      case 0:
      case 1: // bit flip
        if (n > 0) bytes[rand(n)]! ^= 1 << rand(8);
        break;
      case 2: // byte to 0 or 0xff
        if (n > 0) bytes[rand(n)] = rand(2) ? 0xff : 0;
        break;
      case 3: // truncate
        bytes = bytes.subarray(0, rand(n + 1));
        break;
      case 4: { // rewrite a length field at some position
        if (n >= HEADER_SIZE) {
          const at = rand(n - HEADER_SIZE + 1);
          const header = encodeHeader(1, boundaryLength(rand, limit));
          bytes.set(header.subarray(1), at + 1);
        }
        break;
      }
      case 5: { // insert random bytes
        const at = rand(n + 1);
        const extra = randomBytes(rand, rand(8) + 1);
        const out = new Uint8Array(n + extra.length);
        out.set(bytes.subarray(0, at));
        out.set(extra, at);
        out.set(bytes.subarray(at), at + extra.length);
        bytes = out;
        break;
      }
      case 6: { // delete a range
        const at = rand(n + 1);
        const len = rand(Math.min(8, n - at) + 1);
        const out = new Uint8Array(n - len);
        out.set(bytes.subarray(0, at));
        out.set(bytes.subarray(at + len), at);
        bytes = out;
        break;
      }
      case 7: { // duplicate a range
        const at = rand(n + 1);
        const len = rand(Math.min(32, n - at) + 1);
        const out = new Uint8Array(n + len);
        out.set(bytes.subarray(0, at + len));
        out.set(bytes.subarray(at, at + len), at + len);
        out.set(bytes.subarray(at + len), at + 2 * len);
        bytes = out;
        break;
      }
      default: // type byte to 0
        if (n > 0) bytes[0] = 0;
    }
  }
  return bytes;
}

/** Cut points: whole, a few random ones, every byte, or a fixed stride. */
function makeCuts(rand: (n: number) => number, n: number): number[] {
  if (n <= 1) return [];
  const style = rand(8);
  if (style === 0) return [];
  if (style === 1 && n <= 300) {
    return Array.from({ length: n - 1 }, (_, i) => i + 1);
  }
  if (style === 2) {
    const stride = rand(7) + 1;
    const cuts: number[] = [];
    for (let i = stride; i < n; i += stride) cuts.push(i);
    return cuts;
  }
  const set = new Set<number>();
  const count = rand(8) + 1;
  for (let i = 0; i < count; i++) set.add(rand(n - 1) + 1);
  return [...set].sort((a, b) => a - b);
}

/**
 * Generates case number `index` of the run seeded with `seed`; the same pair
 * always gives the same case.
 *
 * @param seed The run's seed.
 * @param index The case number.
 * @param corpus Inputs to mutate, besides freshly generated ones.
 * @returns The case.
 */
export function generateCase(
  seed: number,
  index: number,
  corpus: readonly Uint8Array[] = [],
): FuzzCase {
  const rand = prng((seed ^ Math.imul(index + 1, 0x9e37_79b9)) >>> 0);
  const big = rand(2000) === 0;
  const maxFrameSize = big ? DEFAULT_MAX_FRAME_SIZE : pick(rand, LIMITS);
  let bytes: Uint8Array;
  let kind: string;
  switch (rand(big ? 1 : 6)) {
    case 0: {
      // A header at a boundary length, then a payload that may be short.
      kind = "boundary";
      const length = boundaryLength(rand, maxFrameSize);
      const have = length <= maxFrameSize
        ? (rand(3) === 0
          ? rand(Math.min(length, 2048) + 1)
          : Math.min(length, big ? length : 2048))
        : rand(16);
      const head = validStream(rand, Math.min(maxFrameSize, 64)).subarray(
        0,
        rand(2) ? 0 : undefined,
      );
      bytes = new Uint8Array(head.length + HEADER_SIZE + have);
      bytes.set(head);
      encodeHeader(
        rand(4) === 0 ? 1 : rand(255) + 1,
        length,
        bytes,
        head.length,
      );
      if (rand(8) === 0) bytes[head.length] = 0;
      for (let i = head.length + HEADER_SIZE; i < bytes.length; i++) {
        bytes[i] = rand(256);
      }
      break;
    }
    case 1:
      kind = "random";
      bytes = randomBytes(rand, rand(48));
      break;
    case 2:
      kind = "valid";
      bytes = validStream(rand, maxFrameSize);
      break;
    case 3:
      if (corpus.length > 0) {
        kind = "corpus-mutation";
        bytes = mutate(rand, pick(rand, corpus), maxFrameSize);
        break;
      }
      // Falls through: no corpus.
    default:
      kind = "mutation";
      bytes = mutate(rand, validStream(rand, maxFrameSize), maxFrameSize);
  }
  const modes: ReaderMode[] = ["frame", "fragment", "skip", "peek"];
  const bufferSize = pick(rand, [5, 6, 7, 8, 13, 64, 65, 100, 1024, 4096]);
  const emptyReads: number[] = [];
  if (rand(8) === 0) {
    for (let i = rand(4); i > 0; i--) emptyReads.push(rand(12));
  }
  return {
    bytes,
    cuts: big
      ? makeCuts(rand, Math.min(bytes.length, 64))
      : makeCuts(rand, bytes.length),
    maxFrameSize,
    bufferSize,
    mode: pick(rand, modes),
    emptyReads,
    kind,
  };
}

/** Outcome of one case through both decoders. */
export interface CaseResult {
  /** The expected result. */
  expected: Expected;
  /** Findings: empty when both decoders behaved. */
  findings: string[];
  /** Frames the stream dropped before its error (see {@linkcode StreamRun}). */
  dropped: number;
}

/**
 * Runs one case through both decoders and compares with the model.
 *
 * @param c The case.
 * @returns The expected result and any findings.
 */
export async function runCase(c: FuzzCase): Promise<CaseResult> {
  const expected = modelDecode(c.bytes, c.maxFrameSize);
  const findings: string[] = [];
  let f: string | undefined;
  let dropped = 0;
  try {
    const run = await runDecoderStream(c, expected);
    f = run.finding;
    dropped = run.dropped;
  } catch (err) {
    f = `FrameDecoderStream: harness error ${describeError(err)}`;
  }
  if (f) findings.push(f);
  try {
    f = await runFrameReader(c, expected);
  } catch (err) {
    f = `FrameReader: harness error ${describeError(err)}`;
  }
  if (f) findings.push(f);
  return { expected, findings, dropped };
}

/** A corpus entry as stored in `tests/fixtures/framer_corpus.json`. */
export interface CorpusEntry {
  name: string;
  hex: string;
  cuts: number[];
  maxFrameSize: number;
  bufferSize: number;
  mode: ReaderMode;
  emptyReads: number[];
  /** The expected result, recorded when the entry was saved. */
  expect: {
    frames: { type: number; hex: string }[];
    ending: Ending;
    size?: number;
    got?: number;
    total?: number;
  };
}

/**
 * Turns a corpus entry back into a case and its recorded expectation.
 *
 * @param e The entry.
 * @returns The case and the expectation recorded with it.
 */
export function caseFromEntry(
  e: CorpusEntry,
): { c: FuzzCase; expected: Expected } {
  const c: FuzzCase = {
    bytes: Uint8Array.fromHex(e.hex),
    cuts: e.cuts,
    maxFrameSize: e.maxFrameSize,
    bufferSize: e.bufferSize,
    mode: e.mode,
    emptyReads: e.emptyReads,
    kind: "corpus",
  };
  const expected: Expected = {
    frames: e.expect.frames.map((f) => ({
      type: f.type,
      payload: Uint8Array.fromHex(f.hex),
    })),
    ending: e.expect.ending,
  };
  if (e.expect.size !== undefined) expected.size = e.expect.size;
  if (e.expect.got !== undefined) expected.got = e.expect.got;
  if (e.expect.total !== undefined) expected.total = e.expect.total;
  return { c, expected };
}

/**
 * Records a case as a corpus entry, with the model's expectation.
 *
 * @param name A label.
 * @param c The case.
 * @returns The entry.
 */
export function entryFromCase(name: string, c: FuzzCase): CorpusEntry {
  const x = modelDecode(c.bytes, c.maxFrameSize);
  const expect: CorpusEntry["expect"] = {
    frames: x.frames.map((f) => ({ type: f.type, hex: f.payload.toHex() })),
    ending: x.ending,
  };
  if (x.size !== undefined) expect.size = x.size;
  if (x.got !== undefined) expect.got = x.got;
  if (x.total !== undefined) expect.total = x.total;
  return {
    name,
    hex: c.bytes.toHex(),
    cuts: c.cuts,
    maxFrameSize: c.maxFrameSize,
    bufferSize: c.bufferSize,
    mode: c.mode,
    emptyReads: c.emptyReads,
    expect,
  };
}

/** Totals of a fuzz run. */
export interface FuzzStats {
  cases: number;
  /** Cases per generator kind. */
  kinds: Record<string, number>;
  /** Cases per ending. */
  endings: Record<string, number>;
  /** Findings (capped), with the case index. */
  findings: { index: number; finding: string; hex: string }[];
  /** Findings in all, including those not kept. */
  findingCount: number;
  /** Cases where the stream dropped frames before its error. */
  droppedCases: number;
  /** Cases that did not settle within the hang limit. */
  hangs: number;
  /** Unhandled rejections seen during the run. */
  unhandled: number;
  /** Largest heap in use at any sample, in bytes. */
  peakHeap: number;
  ms: number;
}

/** Options for {@linkcode fuzzFramer}. */
export interface FuzzOptions {
  seed: number;
  /** Cases to run. */
  cases: number;
  /** Stop early after this many milliseconds. */
  timeLimitMs?: number;
  /** A case that takes longer than this counts as a hang. @default {5000} */
  hangMs?: number;
  /** Inputs to mutate. */
  corpus?: readonly Uint8Array[];
  /** Called for each case whose (kind, ending, mode) was not seen before. */
  onNew?: (c: FuzzCase, index: number, expected: Expected) => void;
  /** Reads the heap in use; sampled every 4,096 cases. */
  heapUsed?: () => number;
}

/**
 * Runs a seeded fuzz campaign against both decoders.
 *
 * @param options Seed, count, limits and hooks.
 * @returns The totals.
 */
export async function fuzzFramer(options: FuzzOptions): Promise<FuzzStats> {
  const hangMs = options.hangMs ?? 5000;
  const stats: FuzzStats = {
    cases: 0,
    kinds: {},
    endings: {},
    findings: [],
    findingCount: 0,
    droppedCases: 0,
    hangs: 0,
    unhandled: 0,
    peakHeap: 0,
    ms: 0,
  };
  const seen = new Set<string>();
  const started = performance.now();
  const deadline = started + (options.timeLimitMs ?? Infinity);
  // One watchdog for the whole run: it fails the case in flight if that
  // case has not settled after hangMs.
  let current = -1;
  let currentStart = 0;
  let fireHang: (() => void) | undefined;
  const onUnhandled = () => {
    stats.unhandled++;
  };
  process.on("unhandledRejection", onUnhandled);
  const watchdog = setInterval(() => {
    if (current >= 0 && performance.now() - currentStart > hangMs) fireHang?.();
  }, Math.min(1000, hangMs));
  try {
    for (let i = 0; i < options.cases; i++) {
      if ((i & 1023) === 0) {
        if (performance.now() > deadline) break;
        // Let timers (the watchdog) and pending rejections run.
        await new Promise((r) => setTimeout(r, 0));
        if ((i & 4095) === 0 && options.heapUsed) {
          stats.peakHeap = Math.max(stats.peakHeap, options.heapUsed());
        }
      }
      const c = generateCase(options.seed, i, options.corpus);
      current = i;
      currentStart = performance.now();
      const hang = new Promise<"hang">((resolve) => {
        fireHang = () => resolve("hang");
      });
      const result = await Promise.race([runCase(c), hang]);
      current = -1;
      stats.cases++;
      stats.kinds[c.kind] = (stats.kinds[c.kind] ?? 0) + 1;
      if (result === "hang") {
        stats.hangs++;
        stats.findingCount++;
        if (stats.findings.length < 20) {
          stats.findings.push({
            index: i,
            finding: "hang",
            hex: c.bytes.subarray(0, 256).toHex(),
          });
        }
        continue;
      }
      const ending = result.expected.ending;
      stats.endings[ending] = (stats.endings[ending] ?? 0) + 1;
      if (result.dropped > 0) stats.droppedCases++;
      for (const finding of result.findings) {
        stats.findingCount++;
        if (stats.findings.length < 20) {
          stats.findings.push({
            index: i,
            finding,
            hex: c.bytes.subarray(0, 256).toHex(),
          });
        }
      }
      if (options.onNew) {
        const key = `${c.kind}/${ending}/${c.mode}/${
          c.cuts.length === 0 ? "whole" : "split"
        }`;
        if (!seen.has(key)) {
          seen.add(key);
          options.onNew(c, i, result.expected);
        }
      }
    }
  } finally {
    clearInterval(watchdog);
    // Rejections that surface a tick late still count.
    await new Promise((r) => setTimeout(r, 0));
    process.off("unhandledRejection", onUnhandled);
  }
  stats.ms = performance.now() - started;
  return stats;
}

/** Hand-picked seeds: every edge of the header, each split inside it. */
function seedCases(): { name: string; c: FuzzCase }[] {
  const seeds: { name: string; c: FuzzCase }[] = [];
  const add = (
    name: string,
    bytes: Uint8Array,
    maxFrameSize: number,
    cuts: number[] = [],
  ) => {
    seeds.push({
      name,
      c: {
        bytes,
        cuts,
        maxFrameSize,
        bufferSize: 5,
        mode: "fragment",
        emptyReads: [],
        kind: "seed",
      },
    });
  };
  const header = (type: number, length: number, payload = 0) => {
    const out = new Uint8Array(HEADER_SIZE + payload);
    encodeHeader(type, length, out);
    return out;
  };
  add("empty input", new Uint8Array(0), 16);
  add("one byte", Uint8Array.of(1), 16);
  add("four header bytes", Uint8Array.of(1, 0, 0, 0), 16);
  add("type 0, length 0", header(1, 0).fill(0, 0, 1), 16);
  add("length 0", header(7, 0), 16);
  add("length 0 under limit 0", header(7, 0), 0);
  add("length 1 under limit 0", header(7, 1, 1), 0);
  add("length max", header(2, 16, 16), 16);
  add("length max + 1", header(2, 17, 17), 16);
  add("length max + 1, payload absent", header(2, 17), 16);
  add("length 2^32 - 1", header(255, MAX_U32), 16);
  add(
    "length 2^32 - 1 under the default limit",
    header(255, MAX_U32),
    DEFAULT_MAX_FRAME_SIZE,
  );
  add("length 2^31", header(1, 0x8000_0000), DEFAULT_MAX_FRAME_SIZE);
  add(
    "length default limit + 1",
    header(1, DEFAULT_MAX_FRAME_SIZE + 1),
    DEFAULT_MAX_FRAME_SIZE,
  );
  add("length max, payload one short", header(2, 16, 15), 16);
  add(
    "valid then type 0 in one chunk",
    Uint8Array.of(1, 0, 0, 0, 1, 9, 0, 0, 0, 0, 0),
    16,
  );
  add(
    "valid then too large in one chunk",
    Uint8Array.of(1, 0, 0, 0, 1, 9, 1, 0, 0, 0, 17),
    16,
  );
  for (let cut = 1; cut < HEADER_SIZE; cut++) {
    add(`length max + 1, header split at ${cut}`, header(3, 17, 2), 16, [cut]);
    add(`length max, header split at ${cut}`, header(3, 16, 16), 16, [
      cut,
      HEADER_SIZE + 3,
    ]);
  }
  return seeds;
}

/**
 * Builds the fixture corpus: the seeds, then the first case of every
 * (generator, ending, reader mode, split) combination a seeded run meets,
 * keeping only inputs of at most 512 bytes so the file stays readable.
 *
 * @param seed The run's seed.
 * @param cases How many cases to search.
 * @returns The entries.
 */
export async function buildCorpus(
  seed: number,
  cases: number,
): Promise<CorpusEntry[]> {
  const entries = seedCases().map(({ name, c }) => entryFromCase(name, c));
  await fuzzFramer({
    seed,
    cases,
    onNew(c, index, expected) {
      if (c.bytes.length > 512) return;
      entries.push(
        entryFromCase(
          `${c.kind} ${expected.ending} ${c.mode} (seed ${seed}, case ${index})`,
          c,
        ),
      );
    },
  });
  return entries;
}
