/**
 * SHA-256 from the system's libcrypto (OpenSSL), called through `bun:ffi`
 * or `Deno.dlopen`, for the vault's per-record hashes (`lib/sha256.ts`,
 * `sha256Parts`).
 *
 * Every record costs three short hashes (chain link, Merkle leaf, about one
 * Merkle node). Through `node:crypto` each is a call of 0.2–0.6 µs on Bun
 * and a new Buffer (on Deno about 5 µs, so short inputs go to a JavaScript
 * SHA-256 there); `SHA256_Init`/`_Update`/`_Final` through FFI measured
 * 0.08 µs for a Merkle node and 0.13–0.16 µs for a 178-byte leaf in two
 * parts on this VM (with SHA-NI), writing the digest where it belongs.
 * OpenSSL's one-shot `SHA256()` is no faster than `node:crypto` here
 * (0.9 µs: OpenSSL 3 looks the digest up each call), so it is not used.
 *
 * Portable fallback: where this cannot load (no libcrypto, not Bun or Deno,
 * Deno without the ffi permission) {@linkcode nativeSha256Parts} returns
 * undefined and `lib/sha256.ts` hashes with `node:crypto` or JavaScript as
 * before. A loaded library must give the FIPS 180-4 digest of "abc" or it
 * is not used.
 *
 * @module
 */

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import type { Sha256Batch, Sha256Parts } from "../sha256.ts";

/** Bun's CommonJS loader (also present in its ES modules). */
declare const require: ((id: string) => unknown) | undefined;

/** The subset of `bun:ffi` used here. */
interface BunFfi {
  cc(options: {
    source: string;
    symbols: Record<string, { args: string[]; returns: string }>;
  }): { symbols: Record<string, (...args: unknown[]) => number> };
  dlopen(
    path: string,
    symbols: Record<string, { args: string[]; returns: string }>,
  ): { symbols: Record<string, (...args: unknown[]) => number> };
  ptr(view: Uint8Array, byteOffset?: number): number;
}

/** The subset of the Deno namespace used here. */
interface DenoFfi {
  permissions: { querySync(d: { name: string }): { state: string } };
  dlopen(
    path: string,
    symbols: Record<string, { parameters: string[]; result: string }>,
  ): { symbols: Record<string, (...args: unknown[]) => number> };
}

/**
 * Library names tried in order. Never macOS's unversioned
 * `libcrypto.dylib`: loading the system's aborts the process.
 */
const LIBRARIES = process.platform === "linux"
  ? ["libcrypto.so.3", "libcrypto.so"]
  : process.platform === "darwin"
  ? ["libcrypto.3.dylib"]
  : [];

/** FIPS 180-4's "abc" digest, checked once at load. */
const ABC_HEX =
  "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

/** What the loaded implementations use, referenced for the process's life. */
const kept: unknown[] = [];

/** Bytes kept for a SHA256_CTX (112 in OpenSSL 3). */
const CTX_BYTES = 4096;

/**
 * Loads libcrypto's SHA-256 for this runtime.
 *
 * @returns The implementation, or undefined where there is none.
 */
export function nativeSha256Parts(): Sha256Parts | undefined {
  const agent = globalThis.navigator?.userAgent ?? "";
  let parts: Sha256Parts | undefined;
  for (const name of LIBRARIES) {
    try {
      if (agent.startsWith("Bun")) parts = bunParts(name);
      else if (agent.startsWith("Deno")) parts = denoParts(name);
    } catch {
      parts = undefined;
    }
    if (parts !== undefined) break;
  }
  if (parts === undefined) return undefined;
  const abc = new TextEncoder().encode("abc");
  const out = new Uint8Array(32);
  parts(abc, 0, 1, abc, 1, 3, out, 0);
  let hex = "";
  for (const byte of out) hex += byte.toString(16).padStart(2, "0");
  return hex === ABC_HEX ? parts : undefined;
}

function bunParts(name: string): Sha256Parts | undefined {
  if (typeof require !== "function") return undefined;
  const ffi = require("bun:ffi") as BunFfi;
  const lib = ffi.dlopen(name, {
    SHA256_Init: { args: ["ptr"], returns: "i32" },
    SHA256_Update: { args: ["ptr", "ptr", "u64"], returns: "i32" },
    SHA256_Final: { args: ["ptr", "ptr"], returns: "i32" },
  });
  const init = lib.symbols.SHA256_Init!;
  const update = lib.symbols.SHA256_Update!;
  const final = lib.symbols.SHA256_Final!;
  const ptr = ffi.ptr;
  // Over an ArrayBuffer of its own, so its address never changes. The
  // storage of a small typed array made with a length can move: an address
  // cached across calls went stale and wrong leaves were hashed (seen in
  // testing), so every other address is taken right before its call.
  const ctxBuf = new Uint8Array(new ArrayBuffer(CTX_BYTES));
  const ctx = ptr(ctxBuf);
  // The library and the context must outlive every call: Bun frees a
  // library's call stubs when its dlopen result is collected (a server
  // crashed at address 0 after about 1,500 records when only the
  // functions were kept).
  kept.push(lib, ctxBuf);
  // sha256Parts (lib/sha256.ts) checked every range against its buffer.
  return (a, aStart, aEnd, b, bStart, bEnd, dst, at) => {
    init(ctx);
    if (aEnd > aStart) update(ctx, ptr(a, aStart), aEnd - aStart);
    if (bEnd > bStart) update(ctx, ptr(b, bStart), bEnd - bStart);
    final(ptr(dst, at), ctx);
  };
}

function denoParts(name: string): Sha256Parts | undefined {
  const deno = (globalThis as { Deno?: DenoFfi }).Deno;
  if (deno === undefined) return undefined;
  // Never a permission prompt: only where ffi is granted already.
  if (deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    return undefined;
  }
  const lib = deno.dlopen(name, {
    SHA256_Init: { parameters: ["buffer"], result: "i32" },
    SHA256_Update: { parameters: ["buffer", "buffer", "usize"], result: "i32" },
    SHA256_Final: { parameters: ["buffer", "buffer"], result: "i32" },
  });
  const init = lib.symbols.SHA256_Init!;
  const update = lib.symbols.SHA256_Update!;
  const final = lib.symbols.SHA256_Final!;
  const ctx = new Uint8Array(CTX_BYTES);
  const digest = new Uint8Array(32);
  kept.push(lib);
  // A usize argument given as a number takes Deno's slow call path (165 ns
  // an SHA256_Update of nothing, measured on Deno 2.9); as a bigint it
  // takes the fast one (29 ns). A leaf went from 795 to 266 ns, a node
  // from 574 to 197. Lengths below 4 KiB come from this table (a new
  // bigint each call cost 80 ns more a leaf).
  const lengths = Array.from({ length: 4096 }, (_, i) => BigInt(i));
  const length = (n: number) => n < 4096 ? lengths[n]! : BigInt(n);
  return (a, aStart, aEnd, b, bStart, bEnd, dst, at) => {
    init(ctx);
    if (aEnd > aStart) {
      update(ctx, aStart === 0 ? a : a.subarray(aStart), length(aEnd - aStart));
    }
    if (bEnd > bStart) {
      update(ctx, bStart === 0 ? b : b.subarray(bStart), length(bEnd - bStart));
    }
    final(digest, ctx);
    dst.set(digest, at);
  };
}

/**
 * The batch loops, in C for `bun:ffi`'s `cc` (TinyCC): one call hashes a
 * whole chunk's leaves or merges its nodes, so the 3–4 FFI calls and 3
 * `ptr()` lookups each hash costs from JavaScript (about 165 ns of a
 * 293 ns leaf hash, measured) are paid once per chunk. The SHA-256 is
 * still libcrypto's, through the function pointers given to `setup`. No
 * header is included: TinyCC in Bun has no system include path to rely on.
 */
const BATCH_C = `
typedef int (*sha_init)(void *);
typedef int (*sha_update)(void *, const void *, unsigned long);
typedef int (*sha_final)(unsigned char *, void *);

/* env: SHA256_Init, _Update, _Final, then room for a SHA256_CTX. */
struct env {
  sha_init init;
  sha_update update;
  sha_final final;
  unsigned long long ctx[125];
};

/* Four 8-byte moves: TinyCC does not optimize, a byte loop costs 10x. */
static void copy32(unsigned char *to, const unsigned char *from) {
  unsigned long long *t = (unsigned long long *)to;
  const unsigned long long *f = (const unsigned long long *)from;
  t[0] = f[0];
  t[1] = f[1];
  t[2] = f[2];
  t[3] = f[3];
}

/* args: stride, alen, n. */
void moat_many(struct env *e, const unsigned int *args,
               const unsigned char *a, const unsigned char *b,
               const int *spans, unsigned char *out) {
  int stride = (int)args[0], alen = (int)args[1], n = (int)args[2];
  void *ctx = e->ctx;
  for (int k = 0; k < n; k++) {
    int s = spans[2 * k], t = spans[2 * k + 1];
    e->init(ctx);
    if (alen > 0) e->update(ctx, a + (long)k * stride, alen);
    if (t > s) e->update(ctx, b + s, t - s);
    e->final(out + 32L * k, ctx);
  }
}

/* args: size (low 32 bits, high bits), n. */
int moat_merkle_append(struct env *e, const unsigned int *args,
                       unsigned char *front, const unsigned char *leaves,
                       unsigned char *out) {
  unsigned long long size =
    (unsigned long long)args[0] | ((unsigned long long)args[1] << 32);
  int n = (int)args[2];
  int depth = 0;
  unsigned char one = 1;
  void *ctx = e->ctx;
  for (unsigned long long s = size; s; s >>= 1) depth += (int)(s & 1);
  int w = 0;
  for (int k = 0; k < n; k++) {
    unsigned char *top = front + 32L * depth;
    copy32(top, leaves + 32L * k);
    copy32(out + 32L * w, top);
    w++;
    unsigned long long i = size;
    while (i & 1) {
      top -= 32;
      e->init(ctx);
      e->update(ctx, &one, 1);
      e->update(ctx, top, 64);
      e->final(top, ctx);
      copy32(out + 32L * w, top);
      w++;
      depth--;
      i >>= 1;
    }
    depth++;
    size++;
  }
  return w;
}
`;

/**
 * Loads the batch loops (Bun only: Deno has no C compiler to call; there
 * `lib/sha256.ts` loops over {@linkcode nativeSha256Parts}). Checked at
 * load against the per-hash path on a small tree; any difference, or a
 * failure to compile or load, and it is not used.
 *
 * @returns The implementation, or undefined where there is none.
 */
export function nativeSha256Batch(): Sha256Batch | undefined {
  // Compiled once a process (about 10 ms; each compilation's code stays
  // loaded for the process's life).
  if (loadedBatch === undefined) loadedBatch = loadBatch() ?? null;
  return loadedBatch ?? undefined;
}

/** The batch loops once loaded; null: none here. */
let loadedBatch: Sha256Batch | null | undefined;

function loadBatch(): Sha256Batch | undefined {
  const agent = globalThis.navigator?.userAgent ?? "";
  if (!agent.startsWith("Bun") || typeof require !== "function") {
    return undefined;
  }
  const parts = nativeSha256Parts();
  if (parts === undefined) return undefined;
  for (const name of LIBRARIES) {
    let loaded: Sha256Batch | undefined;
    try {
      loaded = bunBatch(name);
    } catch {
      loaded = undefined;
    }
    if (loaded !== undefined && batchAgrees(loaded, parts)) return loaded;
  }
  return undefined;
}

function bunBatch(name: string): Sha256Batch | undefined {
  const ffi = require!("bun:ffi") as BunFfi;
  const crypto = ffi.dlopen(name, {
    SHA256_Init: { args: ["ptr"], returns: "i32" },
    SHA256_Update: { args: ["ptr", "ptr", "u64"], returns: "i32" },
    SHA256_Final: { args: ["ptr", "ptr"], returns: "i32" },
  });
  const address = (f: unknown) => (f as { ptr?: number }).ptr;
  const fns = [
    address(crypto.symbols.SHA256_Init),
    address(crypto.symbols.SHA256_Update),
    address(crypto.symbols.SHA256_Final),
  ];
  if (fns.some((p) => typeof p !== "number" || p === 0)) return undefined;
  // cc compiles a file: a private directory of its own, removed at once.
  const dir = mkdtempSync(join(tmpdir(), "moat-sha256-"));
  let lib;
  try {
    const source = join(dir, "batch.c");
    writeFileSync(source, BATCH_C, { mode: 0o600 });
    lib = ffi.cc({
      source,
      symbols: {
        moat_many: {
          args: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr"],
          returns: "void",
        },
        moat_merkle_append: {
          args: ["ptr", "ptr", "ptr", "ptr", "ptr"],
          returns: "i32",
        },
      },
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const { moat_many, moat_merkle_append } = lib.symbols;
  // The C side's state lives in JavaScript-owned memory (an ArrayBuffer
  // of its own, so its address never moves), not in the compiled code's
  // statics.
  const env = new BigUint64Array(new ArrayBuffer(128 * 8));
  env[0] = BigInt(fns[0]!);
  env[1] = BigInt(fns[1]!);
  env[2] = BigInt(fns[2]!);
  const envBytes = new Uint8Array(env.buffer);
  kept.push(env);
  // Both libraries must outlive every call (see bunParts).
  kept.push(crypto, lib);
  const ptr = ffi.ptr;
  const spanView = (spans: Int32Array) =>
    new Uint8Array(spans.buffer, spans.byteOffset, spans.byteLength);
  // lib/sha256.ts checked every range; addresses are taken per call.
  // Counts and sizes go through memory, so that every argument is a
  // pointer (a size past 2^32 needs no 64-bit number conversion).
  const args = new Uint32Array(new ArrayBuffer(16));
  const argBytes = new Uint8Array(args.buffer);
  kept.push(args);
  return {
    many(a, aStride, aLen, b, spans, n, out, outAt) {
      args[0] = aStride;
      args[1] = aLen;
      args[2] = n;
      moat_many!(
        ptr(envBytes),
        ptr(argBytes),
        ptr(a),
        ptr(b),
        ptr(spanView(spans)),
        ptr(out, outAt),
      );
    },
    merkleAppend(front, _depth, size, leaves, at, n, out) {
      args[0] = size % 0x100000000;
      args[1] = Math.floor(size / 0x100000000);
      args[2] = n;
      return moat_merkle_append!(
        ptr(envBytes),
        ptr(argBytes),
        ptr(front),
        ptr(leaves, at),
        ptr(out),
      );
    },
  };
}

/** Whether a loaded batch gives what the per-hash path gives. */
function batchAgrees(batch: Sha256Batch, parts: Sha256Parts): boolean {
  const data = new Uint8Array(300).map((_, i) => (i * 37 + 11) & 0xff);
  const spans = new Int32Array([0, 0, 5, 150, 7, 300]);
  const out = new Uint8Array(3 * 32);
  batch.many(data, 10, 9, data, spans, 3, out, 0);
  const want = new Uint8Array(32);
  for (let k = 0; k < 3; k++) {
    parts(
      data,
      10 * k,
      10 * k + 9,
      data,
      spans[2 * k]!,
      spans[2 * k + 1]!,
      want,
      0,
    );
    for (let i = 0; i < 32; i++) if (want[i] !== out[32 * k + i]) return false;
  }
  // Three leaves onto a tree of one: the second completes a subtree of
  // two, then a subtree of four.
  const front = new Uint8Array(32 * 8);
  front.set(out.subarray(0, 32), 0);
  const stored = new Uint8Array(6 * 32);
  const written = batch.merkleAppend(front, 1, 1, out, 0, 3, stored);
  if (written !== 6) return false;
  const node = (l: Uint8Array, r: Uint8Array) => {
    const input = new Uint8Array(65);
    input[0] = 1;
    input.set(l, 1);
    input.set(r, 33);
    const h = new Uint8Array(32);
    parts(input, 0, 65, input, 0, 0, h, 0);
    return h;
  };
  const l0 = out.slice(0, 32);
  const n01 = node(l0, l0);
  const l1 = out.slice(32, 64);
  const l2 = out.slice(64, 96);
  const n23 = node(l1, l2);
  const n03 = node(n01, n23);
  const expected = [l0, n01, l1, l2, n23, n03];
  for (let j = 0; j < 6; j++) {
    for (let i = 0; i < 32; i++) {
      if (expected[j]![i] !== stored[32 * j + i]) return false;
    }
  }
  return true;
}
