/**
 * The progress bar's formats: every frame fits the terminal it is drawn on,
 * rates come in a unit that suits them, and the bar redraws one line.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DEFAULT_COLUMNS,
  formatBytes,
  formatProgress,
  formatRate,
  progressBar,
  type ProgressState,
} from "../cli/progress.ts";

/** Columns a string takes, counting wide characters (CJK, emoji) as two. */
function displayWidth(text: string): number {
  let n = 0;
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    const wide = (cp >= 0x1100 && cp <= 0x115f) ||
      (cp >= 0x2e80 && cp <= 0xa4cf) || (cp >= 0xac00 && cp <= 0xd7a3) ||
      (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0xfe30 && cp <= 0xfe4f) ||
      (cp >= 0xff00 && cp <= 0xff60) || (cp >= 0xffe0 && cp <= 0xffe6) ||
      (cp >= 0x1f300 && cp <= 0x1faff) || (cp >= 0x20000 && cp <= 0x3fffd);
    n += wide ? 2 : 1;
  }
  return n;
}

const LABELS = [
  "",
  "a",
  "big.iso",
  "a-very-long-file-name-for-the-progress-bar-test.bin",
  "x".repeat(300),
  "日本語のファイル名はとても長いです.txt",
  "📦📦📦📦📦📦📦📦📦📦📦📦📦📦📦📦📦📦📦📦.tar",
  "\\e[2J\\x07 escaped",
];

const STATES: Omit<ProgressState, "label">[] = [
  { done: 0, total: 0, rate: 0, eta: Infinity },
  { done: 0, total: 1, rate: 0, eta: Infinity },
  { done: 512, total: 1024, rate: 100, eta: 5 },
  { done: 300 << 20, total: 2 ** 30, rate: 98.3 * 2 ** 20, eta: 125 },
  { done: 2 ** 42, total: 2 ** 43, rate: 1.5 * 2 ** 30, eta: 999_999 },
  { done: 1023.9 * 2 ** 20, total: 1023.9 * 2 ** 20, rate: 1e12, eta: 0 },
];

test("formatProgress never takes more than columns - 1, for any label, state and width", () => {
  let lines = 0;
  for (const label of LABELS) {
    for (const state of STATES) {
      for (let columns = 0; columns <= 200; columns++) {
        const line = formatProgress({ label, ...state }, columns);
        assert.ok(
          displayWidth(line) <= Math.max(0, columns - 1),
          `${columns} columns: ${JSON.stringify(line)}`,
        );
        lines++;
      }
    }
  }
  assert.equal(lines, LABELS.length * STATES.length * 201);
});

test("formatProgress shows the label, bar, percentage, sizes, rate and ETA on 80 columns", () => {
  const line = formatProgress({
    label: "big.iso",
    done: 300 << 20,
    total: 2 ** 30,
    rate: 98.3 * 2 ** 20,
    eta: 125,
  }, 80);
  assert.match(
    line,
    /^big\.iso \[#+-+\] {2}29% 300\.0 MiB\/1\.0 GiB 98\.3 MiB\/s ETA 02:05$/,
  );
  assert.equal(line.length, 79);
});

test("formatProgress shortens a long label before it drops the bar", () => {
  const line = formatProgress({
    label: "a-very-long-file-name-for-the-progress-bar-test.bin",
    done: 1,
    total: 2,
    rate: 1,
    eta: 1,
  }, 80);
  assert.match(line, /^a-very-long-file-n[^ ]*… \[#+-+\] {2}50% /);
  assert.ok(line.endsWith("ETA 00:01"), line);
});

test("formatRate picks B/s, KiB/s, MiB/s or GiB/s by size, with three digits", () => {
  const rows: [number, string][] = [
    [0, "0 B/s"],
    [-5, "0 B/s"],
    [NaN, "0 B/s"],
    [Infinity, "0 B/s"],
    [0.4, "0 B/s"],
    [11, "11 B/s"],
    [999, "999 B/s"],
    [1000, "0.98 KiB/s"],
    [10_000, "9.77 KiB/s"],
    [150 * 1024, "150 KiB/s"],
    [98.3 * 2 ** 20, "98.3 MiB/s"],
    [1.02 * 2 ** 30, "1.02 GiB/s"],
    [2 ** 40, "1.00 TiB/s"],
  ];
  for (const [rate, text] of rows) {
    assert.equal(formatRate(rate), text, `${rate}`);
  }
});

test("formatBytes keeps whole bytes below a KiB", () => {
  assert.equal(formatBytes(0), "0 B");
  assert.equal(formatBytes(1023), "1023 B");
  assert.equal(formatBytes(1024), "1.0 KiB");
  assert.equal(formatBytes(1.5 * 2 ** 30), "1.5 GiB");
});

/** A terminal stand-in: what was written, and its width. */
function fakeTerminal(columns?: number) {
  const writes: string[] = [];
  return { columns, writes, write: (text: string) => writes.push(text) };
}

test("progressBar redraws one line in place, fitted to the terminal, and ends it once", () => {
  const term = fakeTerminal(40);
  const bar = progressBar("a-very-long-file-name.bin", { output: term });
  bar.start(1000, 0);
  bar.update(100, 1000, true);
  bar.update(500, 1000, true);
  term.columns = 30; // resized between frames
  bar.update(1000, 1000, true);
  bar.end();
  bar.end();
  assert.equal(term.writes.length, 4);
  const frames = term.writes.slice(0, 3);
  for (const [i, frame] of frames.entries()) {
    assert.ok(frame.startsWith("\r") && frame.endsWith("\x1b[K"), frame);
    assert.ok(!frame.slice(1).includes("\r") && !frame.includes("\n"));
    const width = i < 2 ? 40 : 30;
    assert.ok(frame.length - 4 <= width - 1, `${width}: ${frame}`);
  }
  assert.match(frames[2]!, /100%/);
  assert.equal(
    term.writes[3],
    "\n",
    "one final newline, however often end() is called",
  );
});

test("progressBar assumes 80 columns when the terminal does not say", () => {
  const term = fakeTerminal(undefined);
  const bar = progressBar("x".repeat(200), { output: term });
  bar.start(10, 0);
  bar.update(5, 10, true);
  assert.equal(term.writes[0]!.length - 4, DEFAULT_COLUMNS - 1);
});

test("progressBar writes nothing at the end when it never drew", () => {
  const term = fakeTerminal(80);
  progressBar("a", { output: term }).end();
  assert.deepEqual(term.writes, []);
});

test("progressBar draws the first update at once, even in the process's first 100 ms, then at most every 100 ms", () => {
  const term = fakeTerminal(80);
  let clock = 5; // ms since the process started, as performance.now() counts
  const bar = progressBar("a", { output: term, now: () => clock });
  bar.start(10, 0);
  bar.update(1, 10);
  assert.equal(term.writes.length, 1);
  clock = 104;
  bar.update(2, 10);
  assert.equal(term.writes.length, 1, "the next waits its 100 ms");
  clock = 105;
  bar.update(3, 10);
  assert.equal(term.writes.length, 2);
  assert.match(term.writes[1]!, / 30% /);
});
