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

import process from "node:process";
import type { Sha256Parts } from "../sha256.ts";

/** Bun's CommonJS loader (also present in its ES modules). */
declare const require: ((id: string) => unknown) | undefined;

/** The subset of `bun:ffi` used here. */
interface BunFfi {
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
  return (a, aStart, aEnd, b, bStart, bEnd, dst, at) => {
    init(ctx);
    if (aEnd > aStart) {
      update(ctx, aStart === 0 ? a : a.subarray(aStart), aEnd - aStart);
    }
    if (bEnd > bStart) {
      update(ctx, bStart === 0 ? b : b.subarray(bStart), bEnd - bStart);
    }
    final(digest, ctx);
    for (let i = 0; i < 32; i++) dst[at + i] = digest[i]!;
  };
}
