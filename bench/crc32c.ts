// deno-lint-ignore-file no-console
/**
 * crc32c across fresh processes (issue 17): `bun bench/crc32c.ts`; not part
 * of the tests.
 *
 * Calls `crc32c` the way the vault server does: over each record of a batch
 * that `encodeVaultRecords` built (`crc32c(out, at + 4, end)` on a plain
 * `Uint8Array`), with a segment header now and then (`crc32c(header, 0,
 * 24)`) and a record read back from a `Buffer` (`crc32c(record, 4)`, as
 * `checkRecord` does on what `node:fs` returns). The lines are the ship
 * bench's (fixed size, mostly `x`) unless `--data random`. Each process
 * measures its own CPU time per checksummed byte over 40 windows and reports
 * the median of the last 30 (steady state), the fastest and the slowest; the
 * driver prints min/median/max of those over `--procs` processes per
 * runtime, because what varies is the mode a process settles in, not the
 * noise within one.
 *
 * `--module FILE` measures another copy of crc32c.ts (e.g. the one before a
 * change) with the same driver.
 *
 * Usage: bun bench/crc32c.ts [--procs N] [--runtimes bun,deno]
 *        [--data fixed|random] [--module FILE]
 *
 * @module
 */

import { spawnSync } from "node:child_process";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { Buffer } from "node:buffer";
import { encodeVaultRecords } from "../lib/vault/_format.ts";

const HERE = path.dirname(new URL(import.meta.url).pathname);
const ROOT = path.join(HERE, "..");
const DEFAULT_MODULE = path.join(ROOT, "lib/segment/crc32c.ts");
const LINE_BYTES = 119; // the ship bench's 120-byte lines, newline stripped
const BATCH = 256;
const WINDOWS = 40;
const STEADY_FROM = 10;
const WINDOW_BYTES = 8_000_000;

type Crc = (bytes: Uint8Array, start?: number, end?: number) => number;

/** Server-shaped records: `count` lines, their encoded records and offsets. */
function makeRecords(count: number, data: string) {
  let seed = 1;
  const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  const prefix = new TextEncoder().encode(
    "<14>Jan  1 00:00:00 bench app[1]: i=",
  );
  const records = [];
  for (let i = 0; i < count; i++) {
    let line: Uint8Array;
    if (data === "random") {
      line = new Uint8Array(40 + Math.floor(rnd() * 200));
      for (let k = 0; k < line.length; k++) line[k] = rnd() * 256;
    } else {
      line = new Uint8Array(LINE_BYTES).fill(0x78);
      line.set(prefix);
      const digits = String(i + 1).padStart(9, "0");
      for (let d = 0; d < 9; d++) {
        line[prefix.length + d] = digits.charCodeAt(d);
      }
      line[prefix.length + 9] = 0x20;
    }
    records.push({ seq: i + 1, ts: 1_700_000_000_000 + i, line });
  }
  const offsets: number[] = [0];
  const out = encodeVaultRecords(records, 1_700_000_000_000, {
    chain: { link: new Uint8Array(32) },
    each: (_bytes, _start, end) => void offsets.push(end),
  });
  return { out, offsets };
}

let sink = 0;

/**
 * One batch, called the way the server calls crc32c; a function of its own
 * so that it is optimised like the server's callers are (a loop inlined in
 * `child` was OSR-compiled, or not, at random, and that showed as the
 * checksum's speed on Deno).
 */
function batch(
  crc32c: Crc,
  out: Uint8Array,
  offsets: number[],
  fromFile: Uint8Array,
  header: Uint8Array,
): number {
  let bytes = 0;
  for (let r = 0; r < BATCH; r++) {
    const at = offsets[r]!;
    const end = offsets[r + 1]!;
    sink ^= crc32c(out, at + 4, end);
    bytes += end - at - 4;
    if ((r & 63) === 63) {
      header[16] = r;
      sink ^= crc32c(header, 0, 24);
      sink ^= crc32c(fromFile.subarray(at, end), 4);
      bytes += 24 + end - at - 4;
    }
  }
  return bytes;
}

async function child(module: string, data: string): Promise<void> {
  const { crc32c } = await import(pathToFileURL(module).href) as {
    crc32c: Crc;
  };
  const { out, offsets } = makeRecords(BATCH, data);
  const fromFile = Buffer.from(out);
  const header = new Uint8Array(32);
  const ns: number[] = [];
  for (let w = 0; w < WINDOWS; w++) {
    let bytes = 0;
    const c0 = process.cpuUsage();
    while (bytes < WINDOW_BYTES) {
      bytes += batch(crc32c, out, offsets, fromFile, header);
    }
    const used = process.cpuUsage(c0);
    ns.push((used.user + used.system) * 1000 / bytes);
  }
  const steady = ns.slice(STEADY_FROM).sort((a, b) => a - b);
  console.log(JSON.stringify({
    median: steady[steady.length >> 1],
    min: steady[0],
    max: steady[steady.length - 1],
    first: ns[0],
    sink,
  }));
}

function quantiles(xs: number[]): string {
  const s = [...xs].sort((a, b) => a - b);
  const f = (x: number) => x.toFixed(2);
  return `${f(s[0]!)} / ${f(s[s.length >> 1]!)} / ${f(s[s.length - 1]!)}`;
}

function driver(options: {
  procs: number;
  runtimes: string[];
  data: string;
  module: string;
}): void {
  const bin = (name: string) => path.join(ROOT, "node_modules/.bin", name);
  const self = new URL(import.meta.url).pathname;
  const args = ["--child", "--data", options.data, "--module", options.module];
  console.log(
    `crc32c over ${options.data} server-shaped records, ${options.module}`,
  );
  console.log(
    "| runtime | processes | ns/byte min / median / max (per-process medians) | fastest window | slowest window |",
  );
  console.log("| --- | --- | --- | --- | --- |");
  for (const runtime of options.runtimes) {
    const argv = runtime === "deno"
      ? [bin("deno"), "run", "-A", "--no-check", self, ...args]
      : [bin("bun"), self, ...args];
    const medians: number[] = [];
    const mins: number[] = [];
    const maxes: number[] = [];
    for (let p = 0; p < options.procs; p++) {
      const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8" });
      if (r.status !== 0) {
        throw new Error(`${runtime} child failed: ${r.stderr}`);
      }
      const result = JSON.parse(r.stdout) as {
        median: number;
        min: number;
        max: number;
      };
      medians.push(result.median);
      mins.push(result.min);
      maxes.push(result.max);
    }
    console.log(
      `| ${runtime} | ${options.procs} | ${quantiles(medians)} | ${
        quantiles(mins)
      } | ${quantiles(maxes)} |`,
    );
    console.log(
      `  per process: ${medians.map((m) => m.toFixed(2)).join(" ")}`,
    );
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      child: { type: "boolean" },
      procs: { type: "string", default: "20" },
      runtimes: { type: "string", default: "bun,deno" },
      data: { type: "string", default: "fixed" },
      module: { type: "string", default: DEFAULT_MODULE },
    },
  });
  const module = path.resolve(values.module);
  if (values.data !== "fixed" && values.data !== "random") {
    console.error("crc32c bench: --data is fixed or random");
    process.exit(2);
  }
  if (values.child) await child(module, values.data);
  else {
    const procs = Number(values.procs);
    if (!Number.isInteger(procs) || procs < 1) {
      console.error("crc32c bench: --procs must be a positive integer");
      process.exit(2);
    }
    driver({
      procs,
      runtimes: values.runtimes.split(","),
      data: values.data,
      module,
    });
  }
}
