/**
 * SHA-256 for the vault's per-record hashes (chain links, Merkle leaves and
 * nodes): short inputs, many of them. A runtime's `node:crypto` may cost
 * far more per call than per byte: Deno's `crypto.hash` takes about 5 µs
 * whatever the size, Bun's 0.3 µs. So this module carries a plain
 * JavaScript SHA-256 (FIPS 180-4, about 0.7 µs per 64-byte block) and
 * measures once, at the first call, what a native call costs here; where
 * it is dear, inputs up to `jsLimit` bytes go to the JavaScript one,
 * longer ones to `node:crypto`. Both give the same digest (tested against each other
 * and the FIPS 180-4 examples); only the speed differs.
 *
 * @module
 */

import { createHash, hash as oneShotHash } from "node:crypto";

const K = new Int32Array([
  0x428a2f98,
  0x71374491,
  0xb5c0fbcf,
  0xe9b5dba5,
  0x3956c25b,
  0x59f111f1,
  0x923f82a4,
  0xab1c5ed5,
  0xd807aa98,
  0x12835b01,
  0x243185be,
  0x550c7dc3,
  0x72be5d74,
  0x80deb1fe,
  0x9bdc06a7,
  0xc19bf174,
  0xe49b69c1,
  0xefbe4786,
  0x0fc19dc6,
  0x240ca1cc,
  0x2de92c6f,
  0x4a7484aa,
  0x5cb0a9dc,
  0x76f988da,
  0x983e5152,
  0xa831c66d,
  0xb00327c8,
  0xbf597fc7,
  0xc6e00bf3,
  0xd5a79147,
  0x06ca6351,
  0x14292967,
  0x27b70a85,
  0x2e1b2138,
  0x4d2c6dfc,
  0x53380d13,
  0x650a7354,
  0x766a0abb,
  0x81c2c92e,
  0x92722c85,
  0xa2bfe8a1,
  0xa81a664b,
  0xc24b8b70,
  0xc76c51a3,
  0xd192e819,
  0xd6990624,
  0xf40e3585,
  0x106aa070,
  0x19a4c116,
  0x1e376c08,
  0x2748774c,
  0x34b0bcb5,
  0x391c0cb3,
  0x4ed8aa4a,
  0x5b9cca4f,
  0x682e6ff3,
  0x748f82ee,
  0x78a5636f,
  0x84c87814,
  0x8cc70208,
  0x90befffa,
  0xa4506ceb,
  0xbef9a3f7,
  0xc67178f2,
]);
const W = new Int32Array(64);
const H = new Int32Array(8);
const PAD = new Uint8Array(128);

/** Runs the compression function over whole blocks of `m` in [off, end). */
function compress(m: Uint8Array, off: number, end: number): void {
  let h0 = H[0]!;
  let h1 = H[1]!;
  let h2 = H[2]!;
  let h3 = H[3]!;
  let h4 = H[4]!;
  let h5 = H[5]!;
  let h6 = H[6]!;
  let h7 = H[7]!;
  for (; off < end; off += 64) {
    for (let i = 0; i < 16; i++) {
      const j = off + 4 * i;
      W[i] = (m[j]! << 24) | (m[j + 1]! << 16) | (m[j + 2]! << 8) |
        m[j + 3]!;
    }
    for (let i = 16; i < 64; i++) {
      const x = W[i - 15]!;
      const y = W[i - 2]!;
      W[i] = ((((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^
        (y >>> 10)) +
        W[i - 7]! +
        (((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3)) +
        W[i - 16]!) | 0;
    }
    let a = h0;
    let b = h1;
    let c = h2;
    let d = h3;
    let e = h4;
    let f = h5;
    let g = h6;
    let h = h7;
    for (let i = 0; i < 64; i++) {
      const t1 = (h +
        (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^
          ((e >>> 25) | (e << 7))) +
        (g ^ (e & (f ^ g))) + K[i]! + W[i]!) | 0;
      const t2 = ((((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^
        ((a >>> 22) | (a << 10))) + ((a & b) | (c & (a | b)))) | 0;
      h = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0;
    h5 = (h5 + f) | 0;
    h6 = (h6 + g) | 0;
    h7 = (h7 + h) | 0;
  }
  H[0] = h0;
  H[1] = h1;
  H[2] = h2;
  H[3] = h3;
  H[4] = h4;
  H[5] = h5;
  H[6] = h6;
  H[7] = h7;
}

/**
 * SHA-256 in JavaScript (FIPS 180-4).
 *
 * @example The FIPS 180-4 "abc" example
 * ```ts
 * import { sha256Js } from "./sha256.ts";
 * const hex = Buffer.from(sha256Js(new TextEncoder().encode("abc"))).toString("hex");
 * if (!hex.startsWith("ba7816bf")) throw new Error(hex);
 * ```
 *
 * @param m The message (below 2^53 / 8 bytes).
 * @returns The 32-byte digest.
 */
export function sha256Js(m: Uint8Array): Uint8Array {
  H[0] = 0x6a09e667;
  H[1] = 0xbb67ae85 | 0;
  H[2] = 0x3c6ef372;
  H[3] = 0xa54ff53a | 0;
  H[4] = 0x510e527f;
  H[5] = 0x9b05688c | 0;
  H[6] = 0x1f83d9ab;
  H[7] = 0x5be0cd19;
  const n = m.length;
  const full = n - (n % 64);
  compress(m, 0, full);
  const rest = n - full;
  const tail = rest < 56 ? 64 : 128;
  PAD.fill(0);
  PAD.set(m.subarray(full));
  PAD[rest] = 0x80;
  const hi = Math.floor(n / 0x20000000);
  const lo = (n * 8) >>> 0;
  PAD[tail - 8] = hi >>> 24;
  PAD[tail - 7] = hi >>> 16;
  PAD[tail - 6] = hi >>> 8;
  PAD[tail - 5] = hi;
  PAD[tail - 4] = lo >>> 24;
  PAD[tail - 3] = lo >>> 16;
  PAD[tail - 2] = lo >>> 8;
  PAD[tail - 1] = lo;
  compress(PAD, 0, tail);
  const out = new Uint8Array(32);
  for (let i = 0; i < 8; i++) {
    const v = H[i]!;
    out[4 * i] = v >>> 24;
    out[4 * i + 1] = v >>> 16;
    out[4 * i + 2] = v >>> 8;
    out[4 * i + 3] = v;
  }
  return out;
}

/**
 * SHA-256 through `node:crypto` (one-shot where the runtime has it).
 *
 * @param m The message.
 * @returns The 32-byte digest.
 */
export function sha256Native(m: Uint8Array): Uint8Array {
  if (typeof oneShotHash === "function") {
    return oneShotHash("sha256", m, "buffer") as unknown as Uint8Array;
  }
  return createHash("sha256").update(m).digest();
}

/** Inputs up to this many bytes go to {@linkcode sha256Js}; -1 until measured. */
let limit = -1;

/**
 * Measures what one native call costs (the fastest of twenty timings of 50
 * calls on a 64-byte input, after 200 to warm up): where it is under 0.6 µs
 * (Bun: 0.2 µs) the JavaScript one takes nothing; else (Deno: 1.1–1.9 µs
 * at start-up, 5–10 µs once the process is busy, against 0.3–0.5 µs a
 * block for the JavaScript one) it takes inputs of up to 16 blocks, 1,015
 * bytes: chain links, Merkle nodes and the leaves of lines up to about
 * 950 bytes. (At 4 blocks, Deno's server spent 8.9 µs of CPU per syslog
 * record of 40–220 bytes, most of it in native calls for the records past
 * 247 bytes, and each call's buffers kept its heap 40 MiB higher; at 16
 * blocks, 5.8 µs.)
 * The JavaScript side is not timed: at the first call it is not compiled
 * yet.
 */
function measure(): number {
  const input = new Uint8Array(64);
  for (let i = 0; i < 200; i++) sha256Native(input);
  // The fastest of many short runs: a busy machine may preempt some of
  // them, hardly all twenty (Bun's run takes 15 µs, Deno's over 100 µs).
  let best = Infinity;
  for (let run = 0; run < 20; run++) {
    const start = performance.now();
    for (let i = 0; i < 50; i++) sha256Native(input);
    best = Math.min(best, (performance.now() - start) / 50);
  }
  return best * 1000 < 0.6 ? 0 : 16 * 64 - 9;
}

/**
 * The inputs the JavaScript SHA-256 takes: up to this many bytes (0: none).
 * Measured at the first call.
 *
 * @returns The limit in bytes.
 */
export function jsLimit(): number {
  if (limit < 0) limit = measure();
  return limit;
}

/**
 * SHA-256 of `m`, by whichever implementation is faster here for its size.
 *
 * @param m The message.
 * @returns The 32-byte digest (may be a `Buffer`).
 */
export function sha256(m: Uint8Array): Uint8Array {
  if (limit < 0) limit = measure();
  return m.length <= limit ? sha256Js(m) : sha256Native(m);
}

/**
 * SHA-256 of two byte ranges one after the other, `a[aStart, aEnd) ‖
 * b[bStart, bEnd)`, written to `dst[at, at + 32)`. The output may overlap
 * the input (the digest is written after every input byte is read).
 */
export type Sha256Parts = (
  a: Uint8Array,
  aStart: number,
  aEnd: number,
  b: Uint8Array,
  bStart: number,
  bEnd: number,
  dst: Uint8Array,
  at: number,
) => void;

/**
 * A native implementation the command installs (the runtime's own code
 * lives in `lib/net/`), loaded at its first use.
 */
class NativeSlot<T> {
  #load: (() => T | undefined) | undefined;
  /** Once loaded: the implementation, or null where none loads. */
  loaded: T | null | undefined;

  set(load: (() => T | undefined) | undefined): void {
    this.#load = load;
    this.loaded = undefined;
  }

  get(): T | undefined {
    if (this.loaded === undefined) {
      try {
        this.loaded = this.#load?.() ?? null;
      } catch {
        this.loaded = null;
      }
    }
    return this.loaded ?? undefined;
  }
}

/** libcrypto's per-hash SHA-256 (lib/net/sha256.ts), once installed. */
const nativeParts = new NativeSlot<Sha256Parts>();

/**
 * Gives {@linkcode sha256Parts} a native implementation, loaded at its
 * first call (the runtime's own code lives in `lib/net/`; the command
 * picks it). Without one, or where it loads none, the portable path runs.
 *
 * @param load Returns the implementation, or undefined where there is none.
 */
export function setNativeSha256(
  load: (() => Sha256Parts | undefined) | undefined,
): void {
  nativeParts.set(load);
}

/** The native implementation in use, if any (for tests and benches). */
export function nativeSha256(): Sha256Parts | undefined {
  return nativeParts.get();
}

/** Where the portable path puts the two parts together. */
let partsJoined = new Uint8Array(512);

function checkRange(buf: Uint8Array, start: number, end: number): void {
  // Whole numbers only: a fraction would be cut by one path and refused by
  // another (Deno's FFI takes no fractional length).
  if (
    !(start >= 0 && start <= end && end <= buf.length &&
      Number.isInteger(start) && Number.isInteger(end))
  ) {
    throw new RangeError(`bad range ${start}–${end} of ${buf.length} bytes`);
  }
}

/**
 * SHA-256 of `a[aStart, aEnd) ‖ b[bStart, bEnd)` into `dst[at, at + 32)`:
 * the vault's per-record hashes (chain links, Merkle leaves and nodes)
 * without an allocation or a copy of the input where a native one is
 * installed ({@linkcode setNativeSha256}); else the parts are copied
 * together and hashed by {@linkcode sha256}.
 *
 * @example
 * ```ts
 * import { sha256, sha256Parts } from "./sha256.ts";
 * const a = new Uint8Array([1, 2, 3]);
 * const out = new Uint8Array(32);
 * sha256Parts(a, 0, 1, a, 1, 3, out, 0);
 * if (Buffer.compare(out, sha256(a)) !== 0) throw new Error("parts");
 * ```
 *
 * @param a The first part's buffer.
 * @param aStart Its first byte.
 * @param aEnd After its last byte.
 * @param b The second part's buffer.
 * @param bStart Its first byte.
 * @param bEnd After its last byte.
 * @param dst Where the digest goes.
 * @param at Its offset in `dst`.
 * @throws {RangeError} For a range outside its buffer, or not of whole
 * numbers.
 */
export function sha256Parts(
  a: Uint8Array,
  aStart: number,
  aEnd: number,
  b: Uint8Array,
  bStart: number,
  bEnd: number,
  dst: Uint8Array,
  at: number,
): void {
  checkRange(a, aStart, aEnd);
  checkRange(b, bStart, bEnd);
  checkRange(dst, at, at + 32);
  const loaded = nativeParts.loaded;
  const fast = loaded === undefined ? nativeParts.get() : loaded;
  if (fast) return fast(a, aStart, aEnd, b, bStart, bEnd, dst, at);
  const aLen = aEnd - aStart;
  const total = aLen + bEnd - bStart;
  if (total > partsJoined.length) {
    partsJoined = new Uint8Array(Math.max(total, 2 * partsJoined.length));
  }
  const joined = partsJoined;
  // Byte loops: a subarray for set() costs more than copying a short part.
  if (aLen <= 64) {
    for (let i = 0; i < aLen; i++) joined[i] = a[aStart + i]!;
  } else joined.set(a.subarray(aStart, aEnd));
  if (bEnd - bStart <= 64) {
    for (let i = bStart; i < bEnd; i++) joined[aLen + i - bStart] = b[i]!;
  } else joined.set(b.subarray(bStart, bEnd), aLen);
  const digest = sha256(joined.subarray(0, total));
  for (let i = 0; i < 32; i++) dst[at + i] = digest[i]!;
}

/**
 * Many SHA-256 digests in one call: for k in [0, n), SHA-256 of
 * `a[k·aStride, k·aStride + aLen) ‖ b[spans[2k], spans[2k + 1])` into
 * `out[outAt + 32k, outAt + 32k + 32)`. The vault's Merkle leaves: a
 * fixed-size prefix per record, then its line where it lies.
 */
export type Sha256Many = (
  a: Uint8Array,
  aStride: number,
  aLen: number,
  b: Uint8Array,
  spans: Int32Array,
  n: number,
  out: Uint8Array,
  outAt: number,
) => void;

/**
 * RFC 9162 frontier merging for `n` leaf hashes at once (`lib/merkle.ts`,
 * `MerkleLog.appendLeaves`): `front` holds the roots of the `depth`
 * complete subtrees of a tree of `size` leaves, largest first, 32 bytes
 * each, with room after them. Each leaf of `leaves[at, at + 32n)` is
 * appended: stored, then merged as SHA-256(0x01 ‖ left ‖ right) with each
 * left sibling it completes (one per trailing 1 bit of the size before
 * it). Every stored hash (the leaf, then each merged node) is written to
 * `out` in that order; returns how many (at most 2n + 53: `out` must
 * have room for that many).
 */
export type MerkleAppend = (
  front: Uint8Array,
  depth: number,
  size: number,
  leaves: Uint8Array,
  at: number,
  n: number,
  out: Uint8Array,
) => number;

/** Batch hashing in one native call per list (lib/net/sha256.ts). */
export interface Sha256Batch {
  many: Sha256Many;
  merkleAppend: MerkleAppend;
}

/** The batch loops (lib/net/sha256.ts), once installed. */
const nativeBatch = new NativeSlot<Sha256Batch>();

/**
 * Gives {@linkcode sha256Many} and `MerkleLog.appendLeaves` a native
 * implementation, loaded at first use; without one they loop over
 * {@linkcode sha256Parts}.
 *
 * @param load Returns the implementation, or undefined where there is none.
 */
export function setNativeSha256Batch(
  load: (() => Sha256Batch | undefined) | undefined,
): void {
  nativeBatch.set(load);
}

/** The native batch implementation in use, if any. */
export function nativeSha256Batch(): Sha256Batch | undefined {
  return nativeBatch.get();
}

/**
 * The batch functions as loops over {@linkcode sha256Parts} (one native call
 * a hash where a per-hash native SHA-256 is installed): the same results
 * as the native batch, for the tree worker where there is none (Deno).
 */
export const portableBatch: Sha256Batch = {
  many(a, aStride, aLen, b, spans, n, out, outAt) {
    for (let k = 0; k < n; k++) {
      sha256Parts(
        a,
        k * aStride,
        k * aStride + aLen,
        b,
        spans[2 * k]!,
        spans[2 * k + 1]!,
        out,
        outAt + 32 * k,
      );
    }
  },
  merkleAppend(front, depth, size, leaves, at, n, out) {
    let w = 0;
    for (let k = 0; k < n; k++, size++) {
      let top = 32 * depth;
      front.set(leaves.subarray(at + 32 * k, at + 32 * k + 32), top);
      out.set(front.subarray(top, top + 32), 32 * w++);
      // One merge per trailing 1 bit of the size before this leaf.
      for (let i = size; i % 2 === 1; i = (i - 1) / 2) {
        top -= 32;
        sha256Parts(NODE, 0, 1, front, top, top + 64, front, top);
        out.set(front.subarray(top, top + 32), 32 * w++);
        depth--;
      }
      depth++;
    }
    return w;
  },
};

/** The interior node prefix, 0x01. */
const NODE = new Uint8Array([1]);

/**
 * {@linkcode Sha256Many}: natively in one call where installed
 * ({@linkcode setNativeSha256Batch}), else one {@linkcode sha256Parts} each.
 *
 * @example
 * ```ts
 * import { sha256, sha256Many } from "./sha256.ts";
 * const a = new Uint8Array([1, 2]);
 * const b = new Uint8Array([3, 4, 5]);
 * const out = new Uint8Array(64);
 * sha256Many(a, 1, 1, b, new Int32Array([0, 1, 1, 3]), 2, out, 0);
 * if (Buffer.compare(out.subarray(32), sha256(new Uint8Array([2, 4, 5]))) !== 0) {
 *   throw new Error("many");
 * }
 * ```
 *
 * @throws {RangeError} For a range outside its buffer.
 */
export function sha256Many(
  a: Uint8Array,
  aStride: number,
  aLen: number,
  b: Uint8Array,
  spans: Int32Array,
  n: number,
  out: Uint8Array,
  outAt: number,
): void {
  if (!(Number.isInteger(n) && n >= 0 && 2 * n <= spans.length)) {
    throw new RangeError(`bad count ${n} for ${spans.length / 2} spans`);
  }
  if (n === 0) return;
  checkRange(a, 0, (n - 1) * aStride + aLen);
  if (!(aLen >= 0 && aStride >= aLen)) {
    throw new RangeError(`bad stride ${aStride} for parts of ${aLen}`);
  }
  checkRange(out, outAt, outAt + 32 * n);
  for (let k = 0; k < n; k++) checkRange(b, spans[2 * k]!, spans[2 * k + 1]!);
  (nativeBatch.get() ?? portableBatch).many(
    a,
    aStride,
    aLen,
    b,
    spans,
    n,
    out,
    outAt,
  );
}
