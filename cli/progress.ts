/**
 * The progress bar of `moat get` on a terminal, and the byte, rate and
 * duration formats it shows.
 *
 * @module
 */

import process from "node:process";

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"] as const;

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
  let i = 0;
  let v = n;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(n)} B` : `${v.toFixed(1)} ${UNITS[i]}`;
}

/**
 * A transfer rate for people, in the unit that suits it: "512 B/s",
 * "9.77 KiB/s", "98.3 MiB/s", "1.02 GiB/s" (three significant digits), so a
 * small file does not show "0.00 GiB/s".
 *
 * @param bytesPerSecond The rate; anything not finite or below 0 counts as 0.
 * @returns The rate with its unit.
 *
 * @example
 * ```ts
 * import { formatRate } from "./progress.ts";
 * import assert from "node:assert/strict";
 * assert.equal(formatRate(800), "800 B/s");
 * assert.equal(formatRate(1.5 * 2 ** 30), "1.50 GiB/s");
 * ```
 */
export function formatRate(bytesPerSecond: number): string {
  let v = Number.isFinite(bytesPerSecond) && bytesPerSecond > 0
    ? bytesPerSecond
    : 0;
  let i = 0;
  // 1000, not 1024: "1023 KiB/s" would be four digits wide.
  while (v >= 1000 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0) return `${Math.round(v)} B/s`;
  const digits = v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${UNITS[i]}/s`;
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

/** What one frame of the progress bar shows. */
export interface ProgressState {
  /** The file's name, escaped by the caller. */
  label: string;
  /** Bytes of the file here so far. */
  done: number;
  /** Bytes of the whole file. */
  total: number;
  /** Bytes per second in this run. */
  rate: number;
  /** Seconds left (Infinity when unknown). */
  eta: number;
}

/** The columns assumed when stderr does not say (not a terminal, or unknown). */
export const DEFAULT_COLUMNS = 80;

/** The widest bar drawn, between its brackets. */
const MAX_BAR = 30;
/** Below this many cells, no bar is drawn at all. */
const MIN_BAR = 5;
/** A bar this wide is kept before the label gets more than {@linkcode MIN_LABEL}. */
const GOOD_BAR = 12;
/** A label is shortened to no fewer columns than this while a bar is drawn. */
const MIN_LABEL = 8;

/**
 * Columns `text` may take on a terminal, counted high on purpose: every
 * character outside printable ASCII counts 2, since a wide (CJK, emoji)
 * character takes two and underestimating would wrap the line.
 */
function columnsOf(text: string): number {
  let n = 0;
  for (const ch of text) n += ch >= " " && ch <= "~" ? 1 : 2;
  return n;
}

/** `text` cut to at most `width` columns (by {@linkcode columnsOf}), `…` marking a cut. */
function fitText(text: string, width: number): string {
  if (columnsOf(text) <= width) return text;
  if (width < 2) return "";
  let out = "";
  let used = 0;
  for (const ch of text) {
    const w = columnsOf(ch);
    // One column stays for the "…" (itself one column wide).
    if (used + w > width - 1) break;
    out += ch;
    used += w;
  }
  return `${out}…`;
}

/**
 * One frame of the progress bar, fitted to a terminal `columns` wide: never
 * more than `columns - 1` columns, so it cannot wrap (a wrapped line cannot
 * be redrawn in place with `\r`). What does not fit goes in this order: the
 * bar shrinks to 12 cells, the label is shortened, the bar shrinks to 5,
 * then the ETA, the rate and the sizes go, then the bar, and last the label.
 *
 * @param state What to show.
 * @param columns The terminal's width.
 * @returns The line, without `\r` or an erase.
 *
 * @example
 * ```ts
 * import { formatProgress } from "./progress.ts";
 * import assert from "node:assert/strict";
 * const state = { label: "big.iso", done: 512, total: 1024, rate: 100, eta: 5 };
 * assert.equal(
 *   formatProgress(state, 60),
 *   "big.iso [######------]  50% 512 B/1.0 KiB 100 B/s ETA 00:05",
 * );
 * assert.equal(formatProgress(state, 20), "big.iso 50%");
 * ```
 */
export function formatProgress(state: ProgressState, columns: number): string {
  const width = Math.max(0, Math.floor(columns) - 1);
  const frac = state.total > 0 ? Math.min(1, state.done / state.total) : 1;
  const percent = `${(frac * 100).toFixed(0).padStart(3)}%`;
  const sizes = `${formatBytes(state.done)}/${formatBytes(state.total)}`;
  const rate = formatRate(state.rate);
  const tails = [
    `${percent} ${sizes} ${rate} ETA ${formatDuration(state.eta)}`,
    `${percent} ${sizes} ${rate}`,
    `${percent} ${sizes}`,
    percent,
  ];
  const labelWidth = columnsOf(state.label);
  const shortest = Math.min(labelWidth, MIN_LABEL);
  // With a bar: "label [bar] tail".
  for (const tail of tails) {
    // Columns for the label, its space and the bar's cells.
    const room = width - tail.length - 3;
    if (room - (shortest > 0 ? shortest + 1 : 0) < MIN_BAR) continue;
    const spare = room - (labelWidth > 0 ? labelWidth + 1 : 0);
    const bar = spare >= GOOD_BAR
      ? Math.min(MAX_BAR, spare)
      : Math.max(MIN_BAR, Math.min(GOOD_BAR, room - shortest - 1));
    const label = fitText(state.label, room - bar - 1);
    const fill = Math.round(frac * bar);
    const head = label === "" ? "" : `${label} `;
    return `${head}[${"#".repeat(fill)}${"-".repeat(bar - fill)}] ${tail}`;
  }
  // Without one: "label tail", then the tail alone, cut short.
  for (const padded of tails) {
    const tail = padded.trimStart();
    if (tail.length + 1 + shortest > width) continue;
    const label = fitText(state.label, width - tail.length - 1);
    return label === "" ? tail : `${label} ${tail}`;
  }
  return fitText(tails[0]!.trimStart(), width);
}

/** A progress bar on stderr (see {@linkcode progressBar}). */
export interface ProgressBar {
  /** The transfer starts: `size` bytes in all, `offset` of them already here. */
  start(size: number, offset: number): void;
  /** `received` of `expected` bytes arrived; `force` redraws now. */
  update(received: number, expected: number, force?: boolean): void;
  /** Ends the bar's line, if one was drawn, leaving its last frame on screen. */
  end(): void;
}

/** Where the bar is drawn: stderr, or a stand-in in tests. */
export interface ProgressOutput {
  /** The terminal's width; {@linkcode DEFAULT_COLUMNS} when not set. */
  readonly columns?: number | undefined;
  write(text: string): unknown;
}

/** Options for {@linkcode progressBar}. */
export interface ProgressBarOptions {
  /** Where to draw. @default {process.stderr} */
  output?: ProgressOutput;
  /** The clock, in ms. @default {performance.now} */
  now?: () => number;
}

/**
 * A progress bar on stderr, redrawn in place at most 10 times a second.
 * Each frame is fitted to the terminal's width as it is at that moment
 * ({@linkcode formatProgress}), starts with `\r` and ends with erase-to-end
 * (`\e[K`), so that it replaces the previous frame whatever its length.
 *
 * @param label Shown before the bar (escaped by the caller).
 * @param options Output and clock.
 * @returns The bar's callbacks.
 */
export function progressBar(
  label: string,
  options: ProgressBarOptions = {},
): ProgressBar {
  const output = options.output ?? process.stderr;
  const now = options.now ?? (() => performance.now());
  const started = now();
  // Not 0: performance.now() counts from the process's start, and a fast
  // start (the compiled binary) gets its first bytes within 100 ms of it.
  let last = -Infinity;
  let base = 0;
  let total = 0;
  let drawn = false;
  return {
    start(size: number, offset: number) {
      base = offset;
      total = size;
    },
    update(received: number, expected: number, force = false) {
      const at = now();
      if (!force && at - last < 100) return;
      last = at;
      const secs = (at - started) / 1000;
      const rate = secs > 0 ? received / secs : 0;
      const line = formatProgress({
        label,
        done: base + received,
        total,
        rate,
        eta: rate > 0 ? (expected - received) / rate : Infinity,
      }, output.columns || DEFAULT_COLUMNS);
      output.write(`\r${line}\x1b[K`);
      drawn = true;
    },
    end() {
      if (drawn) output.write("\n");
      drawn = false;
    },
  };
}
