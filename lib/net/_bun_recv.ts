/**
 * `recv(2)` straight into the caller's buffer, for plain Bun sockets, through
 * `bun:ffi`.
 *
 * Bun delivers received bytes to a `data` callback as a newly allocated
 * array: a copy out of its own receive buffer and fresh pages for every read,
 * which the collector frees late. On a 1 GiB get that held the receiving
 * `moat get` at 0.69× socat with 86–91 MiB peak RSS, against Deno's
 * read-into-our-buffer at 1.04× and 58 MiB. With this, a read that finds
 * bytes waiting in the kernel copies them once, into moat's reused buffer.
 *
 * Only a non-blocking `recv(fd, buf, len, MSG_DONTWAIT)` is called: it never
 * waits, and its result is trusted only when positive (bytes) or zero (the
 * peer's FIN). Anything else, "would block" or an error alike, sends the
 * caller back to Bun's own event-driven path, which waits for readiness and
 * reports errors as it always did, so errno is never needed.
 *
 * Portable fallback: where this cannot work (not Linux, no `bun:ffi`, no
 * libc to open, or the runtime is not Bun) {@linkcode directRecv} returns
 * undefined and the adapter keeps Bun's callbacks, as it did before. The
 * tests run both paths ({@linkcode setDirectRecv}).
 *
 * @module
 */

import process from "node:process";

/** Reads what the kernel holds for `fd`, up to `buf.length` bytes, without waiting. */
export type Recv = (fd: number, buf: Uint8Array) => number;

/** `MSG_DONTWAIT` on Linux. */
const MSG_DONTWAIT = 0x40;

/** The subset of `bun:ffi` used here. */
interface BunFfi {
  dlopen(
    path: string,
    symbols: Record<string, { args: string[]; returns: string }>,
  ): {
    symbols: Record<
      string,
      (fd: number, buf: Uint8Array, len: number, flags: number) => number
    >;
  };
}

/** Bun's CommonJS loader (also present in its ES modules). */
declare const require: ((id: string) => unknown) | undefined;

/** The libc function, once loaded (null: it cannot be). */
let libcRecv: Recv | null | undefined;
/** Whether connections use it; see setDirectRecv. */
let enabled = true;

/** Largest read asked for, so the count always fits the 32-bit result. */
const MAX_READ = 2 ** 30;

/**
 * Returns the direct `recv`, loading it on first use (about 1–3 ms, so not
 * at start-up: only a connection's first read pays it), or undefined when
 * the fallback must be used.
 *
 * @returns The function, or undefined.
 */
export function directRecv(): Recv | undefined {
  if (!enabled) return undefined;
  if (libcRecv === undefined) libcRecv = load();
  return libcRecv ?? undefined;
}

/**
 * For tests: `false` makes connections that start reading from now on use
 * Bun's callbacks only (the fallback); `true` restores the direct path
 * where it loads.
 *
 * @param on Whether new connections may read directly.
 */
export function setDirectRecv(on: boolean): void {
  enabled = on;
}

function load(): Recv | null {
  if (process.platform !== "linux") return null;
  try {
    if (typeof require !== "function") return null;
    const ffi = require("bun:ffi") as BunFfi;
    // ssize_t recv(int, void *, size_t, int); a read asks for at most
    // MAX_READ bytes, so the low 32 bits of the result carry it (and -1).
    const lib = ffi.dlopen("libc.so.6", {
      recv: { args: ["i32", "ptr", "u64", "i32"], returns: "i32" },
    });
    const recv = lib.symbols.recv;
    if (typeof recv !== "function") return null;
    return (fd, buf) =>
      recv(fd, buf, Math.min(buf.length, MAX_READ), MSG_DONTWAIT);
  } catch {
    return null;
  }
}
