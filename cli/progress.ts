/**
 * The progress bar of `moat get` on a terminal, and the byte and duration
 * formats it shows.
 *
 * @module
 */

import process from "node:process";

/**
 * A byte count for people: "512 B", "1.5 MiB".
 *
 * @param n Bytes.
 * @returns The count in the largest binary unit below it, one decimal.
 *
 * @example
 * ```ts
 * import { formatBytes } from "./progress.ts";
 * import assert from "node:assert/strict";
 * assert.equal(formatBytes(1536), "1.5 KiB");
 * ```
 */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

/**
 * A duration as MM:SS, or "--:--" when unknown (infinite).
 *
 * @param s Seconds.
 * @returns Minutes and seconds.
 *
 * @example
 * ```ts
 * import { formatDuration } from "./progress.ts";
 * import assert from "node:assert/strict";
 * assert.equal(formatDuration(75), "01:15");
 * ```
 */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return "--:--";
  const m = Math.floor(s / 60);
  return `${String(m).padStart(2, "0")}:${
    String(Math.floor(s % 60)).padStart(2, "0")
  }`;
}

/** A progress bar on stderr (see {@linkcode progressBar}). */
export interface ProgressBar {
  /** The transfer starts: `size` bytes in all, `offset` of them already here. */
  start(size: number, offset: number): void;
  /** `received` of `expected` bytes arrived; `force` redraws now. */
  update(received: number, expected: number, force?: boolean): void;
  /** Ends the bar's line. */
  end(): void;
}

/**
 * A progress bar on stderr, redrawn at most 10 times a second.
 *
 * @param label Shown before the bar (escaped by the caller).
 * @returns The bar's callbacks.
 */
export function progressBar(label: string): ProgressBar {
  const started = performance.now();
  let last = 0;
  let base = 0;
  let total = 0;
  return {
    start(size: number, offset: number) {
      base = offset;
      total = size;
    },
    update(received: number, expected: number, force = false) {
      const now = performance.now();
      if (!force && now - last < 100) return;
      last = now;
      const done = base + received;
      const secs = (now - started) / 1000;
      const rate = secs > 0 ? received / secs : 0;
      const frac = total > 0 ? done / total : 1;
      const width = 24;
      const fill = Math.round(frac * width);
      const eta = rate > 0 ? (expected - received) / rate : Infinity;
      process.stderr.write(
        `\r${label} [${"#".repeat(fill)}${"-".repeat(width - fill)}] ${
          (frac * 100).toFixed(0).padStart(3)
        }% ` +
          `${formatBytes(done)}/${formatBytes(total)} ${
            formatBytes(rate)
          }/s ETA ${formatDuration(eta)}\x1b[K`,
      );
    },
    end() {
      process.stderr.write("\n");
    },
  };
}
