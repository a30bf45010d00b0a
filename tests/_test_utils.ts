/**
 * Helpers shared by the unit tests. Runtime-neutral: runs under `deno test`
 * and `bun test`.
 *
 * @module
 */

import assert from "node:assert/strict";

/**
 * Pipes `inputs` through `transform` and asserts that it produces exactly
 * `outputs`, in order, and then ends.
 *
 * @param transform The transform stream under test.
 * @param inputs Chunks written to the stream.
 * @param outputs Chunks the stream must produce.
 * @returns Resolves when every output was checked.
 * @throws {AssertionError} If the output differs.
 */
export async function testTransformStream<T, U>(
  transform: TransformStream<T, U>,
  inputs: Iterable<T> | AsyncIterable<T>,
  outputs: Iterable<U> | AsyncIterable<U>,
): Promise<void> {
  const reader = ReadableStream.from(inputs).pipeThrough(transform).getReader();
  let index = 0;
  for await (const output of outputs) {
    const { value, done } = await reader.read();
    assert.equal(done, false, `stream ended before output ${index}`);
    assert.deepEqual(value, output, `output ${index} differs`);
    index++;
  }
  const last = await reader.read();
  assert.ok(last.done, `stream not done after ${index} outputs`);
}

/**
 * Pipes `inputs` through `transform` and returns everything it produced.
 *
 * @param transform The transform stream under test.
 * @param inputs Chunks written to the stream.
 * @returns The outputs; rejects with the stream's error.
 */
export function collect<T, U>(
  transform: TransformStream<T, U>,
  inputs: Iterable<T>,
): Promise<U[]> {
  return Array.fromAsync(ReadableStream.from(inputs).pipeThrough(transform));
}

/**
 * Splits `bytes` into one-byte chunks.
 *
 * @param bytes The bytes to split.
 * @returns One chunk per byte.
 */
export function splitEveryByte(bytes: Uint8Array): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i++) chunks.push(bytes.subarray(i, i + 1));
  return chunks;
}

/**
 * Every way the tests split an input into chunks: whole, in two at every
 * byte position, and one byte per chunk (nats' `byByteTest`).
 *
 * @param bytes The bytes to split.
 * @returns Labelled chunk lists.
 */
export function everySplit(
  bytes: Uint8Array,
): { label: string; chunks: Uint8Array[] }[] {
  const splits = [{ label: "whole", chunks: [bytes] }];
  for (let i = 1; i < bytes.length; i++) {
    splits.push({
      label: `split at ${i}`,
      chunks: [bytes.subarray(0, i), bytes.subarray(i)],
    });
  }
  splits.push({ label: "every byte", chunks: splitEveryByte(bytes) });
  return splits;
}

/**
 * Splits `bytes` into chunks of `size` bytes (the last may be shorter).
 *
 * @param bytes The bytes to split.
 * @param size Chunk size, at least 1.
 * @returns The chunks, as views of `bytes`.
 */
export function splitEvery(bytes: Uint8Array, size: number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) {
    chunks.push(bytes.subarray(i, i + size));
  }
  return chunks;
}

/**
 * Concatenates byte arrays into a new one.
 *
 * @param parts The arrays.
 * @returns Their concatenation.
 */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** A fake byte source that hands out given chunks and records its reads. */
export interface FakeByteSource {
  /** Like `Conn.read`: copies at most one chunk (or part of it) into `buf`. */
  read(buf: Uint8Array): Promise<number | null>;
  /** Number of `read` calls so far, including the one that returned null. */
  readonly reads: number;
  /** `byteOffset` of each `buf` passed to `read`. */
  readonly offsets: number[];
  /** `buf.length` of each `buf` passed to `read`. */
  readonly sizes: number[];
}

/**
 * Creates a {@linkcode FakeByteSource} that returns `chunks` one per read (a
 * chunk larger than the read buffer is handed out over several reads), then
 * null forever.
 *
 * @param chunks What the source delivers, in order. Empty chunks make a read
 * return 0.
 * @returns The source.
 */
export function fakeByteSource(chunks: readonly Uint8Array[]): FakeByteSource {
  const queue = [...chunks];
  const offsets: number[] = [];
  const sizes: number[] = [];
  let reads = 0;
  return {
    read(buf) {
      reads++;
      offsets.push(buf.byteOffset);
      sizes.push(buf.length);
      const chunk = queue.shift();
      if (chunk === undefined) return Promise.resolve(null);
      const n = Math.min(chunk.length, buf.length);
      buf.set(chunk.subarray(0, n));
      if (n < chunk.length) queue.unshift(chunk.subarray(n));
      return Promise.resolve(n);
    },
    get reads() {
      return reads;
    },
    offsets,
    sizes,
  };
}

/**
 * A seeded pseudo-random generator (mulberry32), so failures reproduce.
 *
 * @param seed Any 32-bit integer.
 * @returns A function returning an integer from 0 to `max - 1`.
 */
export function seededRandom(seed: number): (max: number) => number {
  let state = seed >>> 0;
  return function next(max: number): number {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * max);
  };
}

/**
 * A loopback TCP port that is free now and that the kernel never picks by
 * itself: one below Linux's ephemeral range (32768–60999), where `port: 0`
 * listeners and outgoing connections get theirs. For a test that needs a
 * port nothing listens on for a while, or that stops a server and starts
 * another on the same port: a port the kernel picked can be handed to
 * another socket in between, by any test running at the same time.
 *
 * @param host The address to check it on.
 * @returns A port from 20000 to 31999.
 * @throws {Error} If 100 random ports in that range were all taken.
 */
export async function quietPort(host = "127.0.0.1"): Promise<number> {
  const { createServer } = await import("node:net");
  for (let tries = 0; tries < 100; tries++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const free = await new Promise<boolean>((resolve) => {
      const server = createServer();
      server.once("error", () => resolve(false));
      server.listen(port, host, () => server.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error(`No free port from 20000 to 31999 on ${host}`);
}
