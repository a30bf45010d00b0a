// deno-lint-ignore-file no-console
/**
 * moat's log-shipping benchmark (issue 4): `bun bench/ship.ts` (or
 * `npm run bench:ship`); not part of the tests.
 *
 * Measures acknowledged, durable lines per second into
 * `moat serve --vault DIR`, with DIR on a real disk (never tmpfs: fsync is
 * the point), from one `moat ship -` and from 10 shippers at once, for the
 * compiled binary (dist/moat-linux-x64, if present), moat on Deno and moat on
 * Bun. A shipper reading stdin exits once the server acknowledged every line
 * (after its fsync), which gives a clean end time: the clock runs from
 * spawning the shipper(s) to the exit of the last one, so process start-up
 * is included. Optionally (`--follow`, on by default) one shipper follows a
 * file that appears (hard link) once it is connected; that run ends when
 * every record is in the vault's segment files.
 *
 * In the same run, interleaved round by round, Debian's rsyslog (imtcp on a
 * loopback port → omfile, as an unprivileged foreground process) receives the
 * same lines over TCP from a small batching generator inside this process,
 * with the tuned configuration of `rsyslogConf` in `./_util.ts` (the one
 * the syslog bench uses too), once without fsync (page cache) and once with
 * `sync="on"` (fsync of file and directory after each batch). rsyslog acknowledges nothing; its
 * run ends when its output file holds every line (lines are fixed-size, so
 * the file size tells), and the newline count is checked afterwards.
 *
 * Every moat run is verified afterwards with `moat vault ls` (count of stored
 * records), every rsyslog run by counting lines. Between runs the outputs are
 * deleted and `sync` flushes dirty pages, so no run pays for another's
 * write-back. Ratios are taken run by run against rsyslog in the same round
 * with the same number of senders; the table shows their medians.
 *
 * Prints a Markdown table and writes bench/ship-results.json.
 *
 * With nats-server installed (unless `--no-nats`), the same moat flavors
 * also store into `--vault nats://…`: a three-node JetStream cluster on
 * loopback (tests/_nats.ts, its stores on the bench's disk), a fresh
 * three-replica stream per run; one shipper and the fan-in generator. Those
 * runs are verified by reading every source back from the stream into a
 * fresh local copy (what the stream stores, against what was acknowledged).
 *
 * Usage: bun bench/ship.ts [--lines N] [--rounds N] [--dir DIR] [--quick]
 *        [--no-follow] [--no-rsyslog] [--no-nats] [--only moat,rsyslog,binary,deno,bun]
 *        [--out FILE] [--keep] [--base DIR] [--single]
 *
 * `--base DIR` adds "moat at DIR on Bun" and "on Deno" (flavors "base",
 * "base-deno"): another checkout, e.g. the same build without a change,
 * measured in the same rounds. `--single` measures one sender only (no
 * 10-shipper or fan-in runs).
 *
 * @module
 */

import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import {
  childPids,
  cpuSeconds,
  fmt,
  freePort,
  has,
  killAll,
  median,
  rsyslogConf,
  sh,
  sleep,
  table,
  track,
  tryKill,
  waitListening,
} from "./_util.ts";
import { openSession } from "../lib/client.ts";
import { openNatsVault } from "../lib/vault/nats/vault.ts";
import { noNats, startNatsCluster } from "../tests/_nats.ts";
import type { NatsCluster } from "../tests/_nats.ts";
import { encodeFrame } from "../lib/framer.ts";
import { getNet } from "../lib/net/mod.ts";
import {
  encodeShipBatch,
  Kind,
  SHIP_RECORD_HEADER,
  type ShipRecord,
} from "../lib/protocol.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
const BIN_DIR = path.join(ROOT, "node_modules", ".bin");
const DENO = path.join(BIN_DIR, "deno");
const BUN = path.join(BIN_DIR, "bun");
const MAIN = path.join(ROOT, "main.ts");
const MOAT_BIN = path.join(ROOT, "dist", "moat-linux-x64");
const TIME = "/usr/bin/time";
/** Bytes per line on the wire and in files, the newline included. */
const LINE_BYTES = 120;
const VAULT_SEGMENT_HEADER = 32;
/** Senders in the "many" runs. */
const MANY = 10;
/**
 * Sources of the fan-in runs from one generator process (moat: this process
 * speaking moat's ship protocol; rsyslog: this process's TCP feeders).
 */
const FAN_IN = [10, 100];
/** Generator write size. */
const FEED_CHUNK = 256 * 1024;
/** rsyslog runs as this user when the bench runs as root (nobody). */
const UNPRIVILEGED = 65534;

/** Options for {@linkcode benchShip}. */
export interface ShipBenchOptions {
  /** Lines per run (all senders together), rounded down to a multiple of 10. @default {2000000} */
  lines?: number;
  /** Rounds; each runs every contender once, in a rotated order. @default {3} */
  rounds?: number;
  /** Where the work area is made; must not be tmpfs. @default {"/var/tmp", else "/tmp"} */
  dir?: string;
  /** Also measure one shipper following a file. @default {true} */
  follow?: boolean;
  /** Also measure rsyslog (installed with apt-get when missing and root). @default {true} */
  rsyslog?: boolean;
  /** Only these moat flavors ("binary", "deno", "bun", "base", "base-deno"); rsyslog unaffected. */
  flavors?: readonly string[];
  /**
   * Also measure the moat of another checkout on Bun and on Deno (flavors
   * "base", "base-deno"), in the same rounds: the same build without a
   * change, say.
   */
  base?: string;
  /** Only the runs with one sender: no 10-shipper or fan-in rows. */
  single?: boolean;
  /** Where the JSON goes; null writes none. @default {"bench/ship-results.json"} */
  out?: string | null;
  /** Keep the work area. @default {false} */
  keep?: boolean;
  /** Give up (reporting what was measured) after this long. @default {5400000} */
  deadlineMs?: number;
  /** Progress lines. @default {console.error} */
  log?: (message: string) => void;
  /**
   * Also measure `--vault nats://…` into a three-replica stream on a local
   * three-node cluster (when nats-server is installed).
   * @default {true}
   */
  nats?: boolean;
}

/** One measured run. */
export interface ShipRun {
  round: number;
  lines: number;
  seconds: number;
  linesPerSec: number;
  /** CPU seconds of the receiver during the run (moat serve / rsyslogd). */
  receiverCpuSec: number;
  /** CPU seconds of all shippers (moat only; NaN if unknown). */
  senderCpuSec: number;
  /** CPU seconds of the three nats-server processes (nats:// rows). */
  clusterCpuSec?: number;
  /** Lines found afterwards (vault records / output file lines). */
  verified: number;
  /** 1-minute load average when the run ended. */
  load: number;
}

/** What {@linkcode benchShip} measured. */
export interface ShipBenchResult {
  /** The report: a header line and the table. */
  markdown: string;
  /** Everything, as written to bench/ship-results.json. */
  json: Record<string, unknown>;
}

// ---------------------------------------------------------------------------
// Child processes

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** performance.now() at exit. */
  at: number;
}

function exitOf(child: ChildProcess): Promise<Exit> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      return resolve({
        code: child.exitCode,
        signal: child.signalCode,
        at: performance.now(),
      });
    }
    child.once(
      "exit",
      (code, signal) => resolve({ code, signal, at: performance.now() }),
    );
  });
}

/** Waits for an exit; past `ms`, kills the process (and its children) and throws. */
async function waitExit(
  child: ChildProcess,
  ms: number,
  what: string,
): Promise<Exit> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      for (const pid of childPids(child.pid!)) tryKill(pid, "SIGKILL");
      tryKill(child.pid, "SIGKILL");
      reject(
        new Error(`${what} did not finish within ${(ms / 1000).toFixed(0)} s`),
      );
    }, ms);
  });
  try {
    return await Promise.race([exitOf(child), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * SIGTERM, then SIGKILL after `ms`; the processes under `child` first (a
 * shipper under /usr/bin/time, which does not pass signals on), so none is
 * left behind.
 */
async function stop(child: ChildProcess, ms: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const inner = childPids(child.pid!).map((pid) => ({
    pid,
    cmdline: cmdline(pid),
  }));
  for (const { pid } of inner) tryKill(pid, "SIGTERM");
  tryKill(child.pid, "SIGTERM");
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    exitOf(child),
    new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        for (const { pid } of inner) tryKill(pid, "SIGKILL");
        tryKill(child.pid, "SIGKILL");
        resolve();
      }, ms);
    }),
  ]);
  clearTimeout(timer);
  await exitOf(child);
  // The wrapper may be gone while what ran under it is not (checked by its
  // command line, so that a reused pid is left alone).
  for (const { pid, cmdline: was } of inner) {
    if (was !== "" && cmdline(pid) === was) tryKill(pid, "SIGKILL");
  }
}

function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
  } catch {
    return "";
  }
}

/** Collects the last few KiB a stream carries (for error messages and checks). */
function tail(stream: NodeJS.ReadableStream | null): { text: () => string } {
  let text = "";
  stream?.setEncoding("utf8");
  stream?.on("data", (d: string) => {
    text = (text + d).slice(-8192);
  });
  return { text: () => text };
}

/** User + system seconds from a `/usr/bin/time -f "%U %S"` report. */
async function timedCpu(report: string): Promise<number> {
  const text = await fsp.readFile(report, "utf8").catch(() => "");
  const m = /(\d+\.\d+) (\d+\.\d+)\s*$/.exec(text.trim());
  return m ? Number(m[1]) + Number(m[2]) : NaN;
}

// ---------------------------------------------------------------------------
// Ports

// ---------------------------------------------------------------------------
// Work area and input

/** The file system holding `dir`, from /proc/self/mountinfo. */
function filesystemOf(
  dir: string,
): { type: string; source: string; mount: string } {
  const real = fs.realpathSync(dir);
  let best = { type: "unknown", source: "unknown", mount: "" };
  for (
    const line of fs.readFileSync("/proc/self/mountinfo", "utf8").split("\n")
  ) {
    const [left, right] = line.split(" - ");
    if (left === undefined || right === undefined) continue;
    const mount = left.split(" ")[4]!.replace(/\\040/g, " ");
    const inside = real === mount ||
      real.startsWith(mount.endsWith("/") ? mount : `${mount}/`);
    if (inside && mount.length >= best.mount.length) {
      const [type, source] = right.split(" ");
      best = { type: type ?? "unknown", source: source ?? "unknown", mount };
    }
  }
  return best;
}

function isMemoryFs(type: string): boolean {
  return type === "tmpfs" || type === "ramfs";
}

function pickBaseDir(): string {
  for (const dir of ["/var/tmp", "/tmp"]) {
    if (fs.existsSync(dir) && !isMemoryFs(filesystemOf(dir).type)) return dir;
  }
  throw new Error(
    "Neither /var/tmp nor /tmp is on a disk; pass --dir DIR on a real disk",
  );
}

/**
 * `count` syslog-style lines of exactly LINE_BYTES bytes (newline included),
 * numbered from `first`: `<14>Jan  1 00:00:00 bench app[1]: i=000000001 xxx…`.
 */
function makeLines(count: number): Uint8Array {
  const prefix = new TextEncoder().encode(
    "<14>Jan  1 00:00:00 bench app[1]: i=",
  );
  const digits = 9;
  const template = new Uint8Array(LINE_BYTES).fill(0x78); // "x"
  template.set(prefix);
  template[prefix.length + digits] = 0x20;
  template[LINE_BYTES - 1] = 0x0a;
  const out = new Uint8Array(count * LINE_BYTES);
  for (let i = 0; i < count; i++) {
    const at = i * LINE_BYTES;
    out.set(template, at);
    let n = i + 1;
    for (let d = digits - 1; d >= 0; d--) {
      out[at + prefix.length + d] = 0x30 + (n % 10);
      n = Math.floor(n / 10);
    }
  }
  return out;
}

/** Splits `total` lines into `parts` contiguous slices (byte ranges). */
function slices(
  total: number,
  parts: number,
): { start: number; end: number }[] {
  return Array.from({ length: parts }, (_, i) => ({
    start: Math.floor((i * total) / parts) * LINE_BYTES,
    end: Math.floor(((i + 1) * total) / parts) * LINE_BYTES,
  }));
}

async function countNewlines(file: string): Promise<number> {
  const handle = await fsp.open(file, "r");
  const buf = new Uint8Array(4 * 1024 * 1024);
  let count = 0;
  try {
    for (;;) {
      const { bytesRead } = await handle.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      const view = buf.subarray(0, bytesRead);
      for (
        let i = view.indexOf(0x0a);
        i !== -1;
        i = view.indexOf(0x0a, i + 1)
      ) count++;
    }
  } finally {
    await handle.close();
  }
  return count;
}

// ---------------------------------------------------------------------------
// Contenders

interface Flavor {
  id: string;
  name: string;
  argv: string[];
}

/** Another checkout of moat to compare with (`--base DIR`), run on Bun. */
let baseCheckout: string | undefined;

function flavors(only: readonly string[] | undefined): Flavor[] {
  const all: Flavor[] = [
    ...(fs.existsSync(MOAT_BIN)
      ? [{ id: "binary", name: "moat binary", argv: [MOAT_BIN] }]
      : []),
    { id: "deno", name: "moat on Deno", argv: [DENO, "run", "-A", MAIN] },
    { id: "bun", name: "moat on Bun", argv: [BUN, MAIN] },
    ...(baseCheckout !== undefined
      ? [{
        id: "base",
        name: `moat at ${path.basename(baseCheckout)} on Bun`,
        argv: [BUN, path.join(baseCheckout, "main.ts")],
      }, {
        id: "base-deno",
        name: `moat at ${path.basename(baseCheckout)} on Deno`,
        argv: [DENO, "run", "-A", path.join(baseCheckout, "main.ts")],
      }]
      : []),
  ];
  return only ? all.filter((f) => only.includes(f.id)) : all;
}

interface Context {
  work: string;
  lines: number;
  data: Uint8Array;
  /** Input files: [all lines] and MANY slices. */
  inputs: { one: string; many: string[] };
  runTimeoutMs: number;
  log: (message: string) => void;
  runs: number;
}

interface Contender {
  id: string;
  name: string;
  /** "rsyslog-defaults" / "rsyslog-sync" / a moat flavor id. */
  family: string;
  senders: number;
  how: string;
  run: (ctx: Context) => Promise<Omit<ShipRun, "round" | "load">>;
}

async function freshDir(ctx: Context, name: string): Promise<string> {
  const dir = path.join(ctx.work, `${++ctx.runs}-${name}`);
  await fsp.mkdir(dir);
  return dir;
}

/** Records in a vault, from `moat vault ls` (moat on Bun). */
function vaultCount(vault: string): number {
  const r = sh(BUN, [MAIN, "vault", "ls", vault], 300_000);
  if (r.code !== 0) throw new Error(`moat vault ls failed: ${r.out}`);
  return r.out.trim().split("\n").slice(1).reduce(
    (n, row) => n + Number(row.split("\t")[2]),
    0,
  );
}

/**
 * Counts the complete records in a vault's segment files as they grow, by
 * hopping over record lengths (docs/VAULT.md: length at offset 4 of each
 * record); checksums are not verified (`moat vault ls` does that after the
 * run). Records written but not yet fsync'd count too.
 */
class VaultTail {
  #vault: string;
  #offsets = new Map<string, number>();
  #count = 0;
  #buf = new Uint8Array(1024 * 1024);

  constructor(vault: string) {
    this.#vault = vault;
  }

  async count(): Promise<number> {
    const sources = path.join(this.#vault, "sources");
    const view = new DataView(this.#buf.buffer);
    for (
      const source of await fsp.readdir(sources).catch(() => [] as string[])
    ) {
      if (source.startsWith(".")) continue;
      const dir = path.join(sources, source);
      const names = (await fsp.readdir(dir).catch(() => [] as string[]))
        .filter((n) => n.endsWith(".seg")).sort();
      for (const name of names) {
        const file = path.join(dir, name);
        let offset = this.#offsets.get(file) ?? VAULT_SEGMENT_HEADER;
        const handle = await fsp.open(file, "r");
        try {
          for (let reads = 0; reads < 4096; reads++) {
            const { bytesRead } = await handle.read(
              this.#buf,
              0,
              this.#buf.length,
              offset,
            );
            let at = 0;
            while (at + 8 <= bytesRead) {
              const length = view.getUint32(at + 4, true);
              if (length < 20 || at + length > bytesRead) break;
              this.#count++;
              at += length;
            }
            if (at === 0) break;
            offset += at;
          }
        } finally {
          await handle.close();
        }
        this.#offsets.set(file, offset);
      }
    }
    return this.#count;
  }
}

/**
 * The three-node JetStream cluster of the `nats://` rows (`--nats`), on the
 * bench's disk; each run gets a stream of its own (3 replicas), made by the
 * door with the cluster's admin credentials.
 */
let natsCluster: NatsCluster | undefined;
let natsStreams = 0;

/** CPU seconds the cluster's nats-server processes have used. */
function clusterCpu(): number {
  let sum = 0;
  for (const node of natsCluster?.nodes ?? []) {
    if (node.child?.pid !== undefined) sum += cpuSeconds(node.child.pid);
  }
  return sum;
}

/** The `--vault` options of a door on a fresh stream, and the stream's name. */
function natsVaultArgs(vault: string): { args: string[]; stream: string } {
  const cluster = natsCluster!;
  const stream = `BENCH${++natsStreams}`;
  return {
    stream,
    args: [
      "--vault",
      `nats://${cluster.servers.replaceAll("nats://", "")}`,
      "--vault-cache",
      vault,
      "--nats-creds",
      cluster.users.admin.creds,
      "--stream",
      stream,
      "--replicas",
      "3",
    ],
  };
}

/**
 * Records of the given sources (peer 127.0.0.1) read back from a stream
 * into a fresh local copy: what the stream stores, not what a door holds.
 */
async function streamCount(
  dir: string,
  stream: string,
  cache: string,
  names: string[],
): Promise<number> {
  const copy = path.join(dir, "read-back");
  await fsp.mkdir(copy);
  await fsp.copyFile(
    path.join(cache, "checkpoint.key"),
    path.join(copy, "checkpoint.key"),
  );
  const cluster = natsCluster!;
  const vault = await openNatsVault({
    url: `nats://${cluster.servers.replaceAll("nats://", "")}`,
    creds: cluster.users.admin.creds,
    stream,
    cache: copy,
    sealIntervalMs: 0,
    maxSourcesPerPeer: 100_000,
  });
  let n = 0;
  try {
    for (const name of names) {
      const key = { peer: "127.0.0.1", name };
      await vault.catchUp(key);
      n += vault.source(key).lastSeq;
    }
  } finally {
    await vault.close();
  }
  return n;
}

async function startMoatServer(flavor: Flavor, dir: string, nats = false) {
  const port = await freePort();
  const vault = path.join(dir, "vault");
  const onNats = nats ? natsVaultArgs(vault) : undefined;
  const server = track(spawn(flavor.argv[0]!, [
    ...flavor.argv.slice(1),
    "serve",
    ...(onNats?.args ?? ["--vault", vault]),
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    "--log",
    path.join(dir, "audit.log"),
    // Every source comes from 127.0.0.1; the fan-in runs have 100.
    "--max-sources-per-peer",
    "1000",
    "--max-conns-per-peer",
    "1000",
  ], { cwd: dir, stdio: ["ignore", "ignore", "pipe"] }));
  const err = tail(server.stderr);
  await waitListening(port, server, `${flavor.name} serve`, err.text);
  return { server, port, vault, err, stream: onNats?.stream };
}

function shipperArgv(flavor: Flavor, report: string, args: string[]): string[] {
  const moat = [...flavor.argv, "ship", ...args];
  return fs.existsSync(TIME)
    ? [TIME, "-f", "%U %S", "-o", report, ...moat]
    : moat;
}

/** One run: a fresh server, `senders` shippers reading stdin, server stopped, vault counted. */
async function moatStdinRun(
  ctx: Context,
  flavor: Flavor,
  senders: number,
  nats = false,
) {
  const dir = await freshDir(ctx, `${flavor.id}-${senders}`);
  const { server, port, vault, err, stream } = await startMoatServer(
    flavor,
    dir,
    nats,
  );
  try {
    const files = senders === 1 ? [ctx.inputs.one] : ctx.inputs.many;
    const cpu0 = cpuSeconds(server.pid);
    const cluster0 = stream === undefined ? 0 : clusterCpu();
    const started = performance.now();
    const shippers = files.map((file, i) => {
      const fd = fs.openSync(file, "r");
      const report = path.join(dir, `ship-${i}.time`);
      const argv = shipperArgv(flavor, report, [
        "-",
        "--server",
        `127.0.0.1:${port}`,
        "--state",
        path.join(dir, `ship-${i}.json`),
        "--source",
        `bench-${i}`,
      ]);
      const child = track(
        spawn(argv[0]!, argv.slice(1), {
          cwd: dir,
          stdio: [fd, "ignore", "pipe"],
        }),
      );
      fs.closeSync(fd);
      return {
        child,
        report,
        err: tail(child.stderr),
        expect: fs.statSync(file).size / LINE_BYTES,
      };
    });
    const exits = await Promise.all(
      shippers.map((s, i) =>
        waitExit(s.child, ctx.runTimeoutMs, `${flavor.name} shipper ${i}`)
      ),
    ).catch((error) => {
      const said = shippers.map((s, i) =>
        `shipper ${i}: ${s.err.text().trim()}`
      );
      throw new Error(
        `${error.message}\n${said.join("\n")}\nserver: ${err.text()}`,
      );
    });
    const ended = Math.max(...exits.map((e) => e.at));
    const receiverCpuSec = cpuSeconds(server.pid) - cpu0;
    const clusterCpuSec = stream === undefined
      ? undefined
      : clusterCpu() - cluster0;
    for (const [i, s] of shippers.entries()) {
      const acked = /(\d+) records acknowledged/.exec(s.err.text());
      if (exits[i]!.code !== 0 || !acked || Number(acked[1]) !== s.expect) {
        throw new Error(
          `${flavor.name} shipper ${i} exited ${
            exits[i]!.code ?? exits[i]!.signal
          } ` +
            `(expected ${s.expect} acknowledged): ${s.err.text()} ${err.text()}`,
        );
      }
    }
    await stop(server, 20_000);
    let senderCpuSec = 0;
    for (const s of shippers) senderCpuSec += await timedCpu(s.report);
    const seconds = (ended - started) / 1000;
    return {
      lines: ctx.lines,
      seconds,
      linesPerSec: ctx.lines / seconds,
      receiverCpuSec,
      ...(clusterCpuSec !== undefined && { clusterCpuSec }),
      senderCpuSec,
      verified: stream === undefined ? vaultCount(vault) : await streamCount(
        dir,
        stream,
        vault,
        files.map((_, i) => `bench-${i}`),
      ),
    };
  } finally {
    await stop(server, 5_000);
  }
}

/** Encoded bytes per ShipBatch frame from the generator, as `moat ship` packs them. */
const GENERATOR_FRAME_BUDGET = 512 * 1024;

/**
 * `sources` sources' ShipBatch frames for the slices of `data`, each source
 * numbering its lines from 1 (as a shipper's spool does). Built before the
 * clock starts.
 */
function generatorFrames(data: Uint8Array, sources: number): Uint8Array[][] {
  const total = data.length / LINE_BYTES;
  return slices(total, sources).map(({ start, end }) => {
    const frames: Uint8Array[] = [];
    let group: ShipRecord[] = [];
    let size = 0;
    let seq = 0;
    const ts = Date.now();
    for (let at = start; at < end; at += LINE_BYTES) {
      const line = data.subarray(at, at + LINE_BYTES - 1);
      const n = SHIP_RECORD_HEADER + line.length;
      if (size + n > GENERATOR_FRAME_BUDGET && group.length > 0) {
        frames.push(
          encodeFrame({
            type: Kind.ShipBatch,
            payload: encodeShipBatch(group),
          }),
        );
        group = [];
        size = 0;
      }
      group.push({ seq: ++seq, ts, line, partial: false });
      size += n;
    }
    if (group.length > 0) {
      frames.push(
        encodeFrame({ type: Kind.ShipBatch, payload: encodeShipBatch(group) }),
      );
    }
    return frames;
  });
}

/**
 * Fan-in from one load generator: this process (not `sources` shipper
 * processes) opens `sources` ship sessions to a fresh server and writes
 * pre-encoded batches on each, as fast as the server takes them; the run
 * ends when every source's last line is acknowledged (stored and fsync'd).
 * What is measured is the server's capacity, without shippers' spools and
 * start-ups sharing the CPUs.
 */
async function moatGeneratorRun(
  ctx: Context,
  flavor: Flavor,
  sources: number,
  nats = false,
) {
  const dir = await freshDir(ctx, `${flavor.id}-gen-${sources}`);
  const { server, port, vault, err, stream } = await startMoatServer(
    flavor,
    dir,
    nats,
  );
  const frames = generatorFrames(ctx.data, sources);
  const client = {
    net: getNet(),
    server: { hostname: "127.0.0.1", port },
    version: "bench",
    timeoutMs: ctx.runTimeoutMs,
  };
  try {
    const cpu0 = cpuSeconds(server.pid);
    const cluster0 = stream === undefined ? 0 : clusterCpu();
    const started = performance.now();
    await Promise.all(frames.map(async (list, i) => {
      const lines = slices(ctx.lines, sources)[i]!;
      const want = (lines.end - lines.start) / LINE_BYTES;
      const { conn, reader } = await openSession(client, "ship", {
        source: `gen-${i}`,
      });
      try {
        const ready = await reader.readFrame();
        if (ready?.type !== Kind.ShipReady) {
          throw new Error(
            `source ${i}: no ShipReady (${ready?.type}): ${err.text()}`,
          );
        }
        const acked = (async () => {
          for (let seq = 0; seq < want;) {
            const frame = await reader.readFrame();
            if (frame === null) throw new Error(`source ${i}: closed early`);
            if (frame.type !== Kind.ShipAck) continue;
            seq = new DataView(
              frame.payload.buffer,
              frame.payload.byteOffset,
              8,
            ).getFloat64(0, true);
          }
        })();
        for (const frame of list) await conn.write(frame);
        await acked;
      } finally {
        conn.close();
      }
    }));
    const ended = performance.now();
    const receiverCpuSec = cpuSeconds(server.pid) - cpu0;
    const clusterCpuSec = stream === undefined
      ? undefined
      : clusterCpu() - cluster0;
    await stop(server, 20_000);
    const seconds = (ended - started) / 1000;
    return {
      lines: ctx.lines,
      seconds,
      linesPerSec: ctx.lines / seconds,
      receiverCpuSec,
      ...(clusterCpuSec !== undefined && { clusterCpuSec }),
      senderCpuSec: NaN,
      verified: stream === undefined ? vaultCount(vault) : await streamCount(
        dir,
        stream,
        vault,
        frames.map((_, i) => `gen-${i}`),
      ),
    };
  } finally {
    await stop(server, 5_000);
  }
}

/**
 * One shipper follows a path that does not exist yet; once it is connected
 * the input file appears there (hard link), and the run ends when every
 * record is in the vault's segment files.
 */
async function moatFollowRun(ctx: Context, flavor: Flavor) {
  const dir = await freshDir(ctx, `${flavor.id}-follow`);
  const { server, port, vault, err } = await startMoatServer(flavor, dir);
  const log = path.join(dir, "app.log");
  const report = path.join(dir, "ship.time");
  const argv = shipperArgv(flavor, report, [
    log,
    "--server",
    `127.0.0.1:${port}`,
    "--state",
    path.join(dir, "ship.json"),
    "--source",
    "follow",
  ]);
  const shipper = track(
    spawn(argv[0]!, argv.slice(1), {
      cwd: dir,
      stdio: ["ignore", "ignore", "pipe"],
    }),
  );
  const shipErr = tail(shipper.stderr);
  try {
    const until = performance.now() + 30_000;
    while (!shipErr.text().includes("shipping")) {
      if (performance.now() > until || shipper.exitCode !== null) {
        throw new Error(
          `${flavor.name} follow shipper did not connect: ${shipErr.text()} ${err.text()}`,
        );
      }
      await sleep(5);
    }
    const cpu0 = cpuSeconds(server.pid);
    const started = performance.now();
    await fsp.link(ctx.inputs.one, log);
    const deadline = started + ctx.runTimeoutMs;
    const stored = new VaultTail(vault);
    let have = 0;
    while ((have = await stored.count()) < ctx.lines) {
      if (performance.now() > deadline || shipper.exitCode !== null) {
        throw new Error(
          `${flavor.name} follow: ${have} of ${ctx.lines} records stored: ${shipErr.text()} ${err.text()}`,
        );
      }
      await sleep(10);
    }
    const ended = performance.now();
    const receiverCpuSec = cpuSeconds(server.pid) - cpu0;
    // SIGTERM the shipper itself, not /usr/bin/time, so that time writes its report.
    for (const pid of childPids(shipper.pid!)) tryKill(pid, "SIGTERM");
    await waitExit(shipper, 20_000, `${flavor.name} follow shipper`);
    await stop(server, 20_000);
    const seconds = (ended - started) / 1000;
    return {
      lines: ctx.lines,
      seconds,
      linesPerSec: ctx.lines / seconds,
      receiverCpuSec,
      senderCpuSec: await timedCpu(report),
      verified: vaultCount(vault),
    };
  } finally {
    await stop(shipper, 5_000);
    await stop(server, 5_000);
  }
}

/** Writes `bytes` to a new connection with backpressure, then ends it. */
function feed(port: number, bytes: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port }, () => {
      let at = 0;
      const pump = () => {
        while (at < bytes.length) {
          const end = Math.min(at + FEED_CHUNK, bytes.length);
          const more = socket.write(bytes.subarray(at, end));
          at = end;
          if (!more) {
            socket.once("drain", pump);
            return;
          }
        }
        socket.end(() => resolve());
      };
      pump();
    });
    socket.on("error", reject);
  });
}

/** One rsyslog run: a fresh daemon, `senders` connections fed the lines, daemon stopped. */
async function rsyslogRun(ctx: Context, sync: boolean, senders: number) {
  const dir = await freshDir(
    ctx,
    `rsyslog-${sync ? "sync" : "defaults"}-${senders}`,
  );
  const root = process.getuid?.() === 0;
  if (root) await fsp.chown(dir, UNPRIVILEGED, UNPRIVILEGED);
  const port = await freePort();
  const conf = path.join(dir, "rsyslog.conf");
  await fsp.writeFile(
    conf,
    rsyslogConf(dir, port, path.join(dir, "out.log"), sync),
    { mode: 0o644 },
  );
  const out = path.join(dir, "out.log");
  const daemon = [
    "rsyslogd",
    "-n",
    "-f",
    conf,
    "-i",
    path.join(dir, "rsyslogd.pid"),
  ];
  const argv = root
    ? [
      "setpriv",
      `--reuid=${UNPRIVILEGED}`,
      `--regid=${UNPRIVILEGED}`,
      "--clear-groups",
      ...daemon,
    ]
    : daemon;
  const child = track(
    spawn(argv[0]!, argv.slice(1), {
      cwd: dir,
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
  const err = tail(child.stderr);
  try {
    await waitListening(port, child, "rsyslogd", err.text);
    const want = ctx.lines * LINE_BYTES;
    const parts = senders === 1
      ? [{ start: 0, end: want }]
      : slices(ctx.lines, senders);
    const cpu0 = cpuSeconds(child.pid);
    const started = performance.now();
    const feeding = Promise.all(
      parts.map((p) => feed(port, ctx.data.subarray(p.start, p.end))),
    );
    let failed: unknown;
    feeding.catch((e) => (failed = e));
    const deadline = started + ctx.runTimeoutMs;
    let have = 0;
    for (;;) {
      have = fs.statSync(out, { throwIfNoEntry: false })?.size ?? 0;
      if (have >= want) break;
      if (failed !== undefined) throw failed;
      if (performance.now() > deadline || child.exitCode !== null) {
        throw new Error(
          `rsyslog: ${have} of ${want} bytes written: ${err.text()}`,
        );
      }
      await sleep(5);
    }
    const ended = performance.now();
    const receiverCpuSec = cpuSeconds(child.pid) - cpu0;
    await feeding;
    await stop(child, 20_000);
    const seconds = (ended - started) / 1000;
    return {
      lines: ctx.lines,
      seconds,
      linesPerSec: ctx.lines / seconds,
      receiverCpuSec,
      senderCpuSec: NaN,
      verified: await countNewlines(out),
    };
  } finally {
    await stop(child, 5_000);
  }
}

function contenders(
  options: {
    follow: boolean;
    rsyslog: boolean;
    only: readonly string[] | undefined;
    nats: boolean;
    /** Only the runs with one sender (`--single`). */
    single?: boolean;
  },
) {
  const list: Contender[] = [];
  if (options.nats) {
    // The replicated stream, next to the directory vault in the same rounds.
    for (const flavor of flavors(options.only)) {
      const name = `${flavor.name}, nats:// (3 replicas)`;
      list.push({
        id: `${flavor.id}-nats-1`,
        name,
        family: flavor.id,
        senders: 1,
        how: "`ship -` (stdin)",
        run: (ctx) => moatStdinRun(ctx, flavor, 1, true),
      });
      for (const senders of options.single ? [] : FAN_IN) {
        list.push({
          id: `${flavor.id}-nats-gen-${senders}`,
          name,
          family: flavor.id,
          senders,
          how: "one generator process",
          run: (ctx) => moatGeneratorRun(ctx, flavor, senders, true),
        });
      }
    }
  }
  for (const senders of options.single ? [1] : [1, MANY]) {
    if (options.rsyslog) {
      for (const sync of [false, true]) {
        const family = sync ? "rsyslog-sync" : "rsyslog-defaults";
        list.push({
          id: `${family}-${senders}`,
          name: sync ? 'rsyslog sync="on"' : "rsyslog, no fsync",
          family,
          senders,
          how: "TCP generator",
          run: (ctx) => rsyslogRun(ctx, sync, senders),
        });
      }
    }
    for (const flavor of flavors(options.only)) {
      list.push({
        id: `${flavor.id}-${senders}`,
        name: flavor.name,
        family: flavor.id,
        senders,
        how: "`ship -` (stdin)",
        run: (ctx) => moatStdinRun(ctx, flavor, senders),
      });
    }
  }
  // Fan-in: one generator process, many sources.
  for (const senders of options.single ? [] : FAN_IN) {
    // rsyslog's feeders are one generator process already: 10 is above.
    if (options.rsyslog && senders !== MANY) {
      for (const sync of [false, true]) {
        const family = sync ? "rsyslog-sync" : "rsyslog-defaults";
        list.push({
          id: `${family}-${senders}`,
          name: sync ? 'rsyslog sync="on"' : "rsyslog, no fsync",
          family,
          senders,
          how: "TCP generator",
          run: (ctx) => rsyslogRun(ctx, sync, senders),
        });
      }
    }
    for (const flavor of flavors(options.only)) {
      list.push({
        id: `${flavor.id}-gen-${senders}`,
        name: flavor.name,
        family: flavor.id,
        senders,
        how: "one generator process",
        run: (ctx) => moatGeneratorRun(ctx, flavor, senders),
      });
    }
  }
  if (options.follow) {
    for (const flavor of flavors(options.only)) {
      list.push({
        id: `${flavor.id}-follow`,
        name: flavor.name,
        family: flavor.id,
        senders: 1,
        how: "`ship FILE` (follow)",
        run: (ctx) => moatFollowRun(ctx, flavor),
      });
    }
  }
  return list;
}

// ---------------------------------------------------------------------------
// Setup and report

function ensureRsyslog(log: (m: string) => void): boolean {
  if (has("rsyslogd")) return true;
  if (process.getuid?.() !== 0 || !has("apt-get")) {
    log("rsyslogd not found (apt-get install rsyslog); measuring moat only");
    return false;
  }
  log("installing rsyslog with apt-get");
  sh("apt-get", ["update", "-qq"], 600_000);
  const r = sh("sh", [
    "-c",
    "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsyslog",
  ], 600_000);
  if (r.code !== 0 || !has("rsyslogd")) {
    log(
      `apt-get install rsyslog failed; measuring moat only: ${
        r.out.slice(-500)
      }`,
    );
    return false;
  }
  return true;
}

function firstLine(cmd: string, args: string[]): string {
  return sh(cmd, args).out.split("\n")[0]!.trim();
}

function thousands(x: number): string {
  return Number.isFinite(x) ? Math.round(x).toLocaleString("en-US") : "—";
}

/** Median over rounds of run-by-run ratios to `base` (same round). */
function ratio(
  runs: readonly ShipRun[],
  base: readonly ShipRun[] | undefined,
): number {
  if (!base) return NaN;
  return median(runs.flatMap((r) => {
    const b = base.find((x) => x.round === r.round);
    return b ? [r.linesPerSec / b.linesPerSec] : [];
  }));
}

/**
 * Runs the log-shipping benchmark and returns its Markdown table and data.
 *
 * @param options Lines, rounds, work area, which contenders.
 * @returns The report and the JSON written to bench/ship-results.json.
 * @throws {Error} If the work area is on tmpfs, or a run fails its check.
 */
export async function benchShip(
  options: ShipBenchOptions = {},
): Promise<ShipBenchResult> {
  const log = options.log ?? ((m: string) => console.error(m));
  const lines = Math.max(
    MANY,
    Math.floor((options.lines ?? 2_000_000) / MANY) * MANY,
  );
  const rounds = Math.max(1, options.rounds ?? 3);
  baseCheckout = options.base === undefined
    ? undefined
    : path.resolve(options.base);
  const began = performance.now();
  const deadline = began + (options.deadlineMs ?? 90 * 60_000);
  if (process.platform !== "linux") {
    throw new Error("The ship bench needs Linux (/proc)");
  }
  const base = options.dir ?? pickBaseDir();
  const disk = filesystemOf(base);
  if (isMemoryFs(disk.type)) {
    throw new Error(
      `"${base}" is on ${disk.type}; fsync is the point, pass --dir on a real disk`,
    );
  }
  const withRsyslog = options.rsyslog !== false && ensureRsyslog(log);
  const withNats = options.nats !== false && noNats === false;
  const list = contenders({
    follow: options.follow !== false,
    rsyslog: withRsyslog,
    only: options.flavors,
    nats: withNats,
    single: options.single ?? false,
  });
  const work = fs.mkdtempSync(path.join(base, "moat-bench-ship-"));
  fs.chmodSync(work, 0o755);
  if (withNats) {
    natsCluster = await startNatsCluster({ dir: work, nodes: 3 });
  }
  const cleanup = () => {
    killAll();
    if (!options.keep) fs.rmSync(work, { recursive: true, force: true });
  };
  process.on("exit", cleanup);
  const loads: number[] = [os.loadavg()[0]!];
  const runs: Record<string, ShipRun[]> = Object.fromEntries(
    list.map((c) => [c.id, []]),
  );
  let note = "";
  const failures: string[] = [];
  try {
    log(
      `work area ${work} (${disk.type} on ${disk.source}); ${
        lines.toLocaleString("en-US")
      } lines per run`,
    );
    const data = makeLines(lines);
    const one = path.join(work, "lines.txt");
    await fsp.writeFile(one, data);
    const many = await Promise.all(
      slices(lines, MANY).map(async (s, i) => {
        const file = path.join(work, `lines-${i}.txt`);
        await fsp.writeFile(file, data.subarray(s.start, s.end));
        return file;
      }),
    );
    fs.chmodSync(one, 0o644);
    const ctx: Context = {
      work,
      lines,
      data,
      inputs: { one, many },
      runTimeoutMs: 60_000 + lines / 5,
      log,
      runs: 0,
    };
    // Warm-up (not recorded): Deno's and Bun's module caches, the binary's pages.
    const warm = {
      ...ctx,
      lines: Math.min(lines, 20_000),
      inputs: { one: path.join(work, "warm.txt"), many },
    };
    await fsp.writeFile(
      warm.inputs.one,
      data.subarray(0, warm.lines * LINE_BYTES),
    );
    for (const flavor of flavors(options.flavors)) {
      await moatStdinRun(warm, flavor, 1);
      await settle(work);
    }
    ctx.runs = warm.runs;

    outer: for (let round = 0; round < rounds; round++) {
      const order = list.map((_, i) => list[(i + round * 3) % list.length]!);
      for (const c of order) {
        if (performance.now() > deadline) {
          note = ` Stopped at the deadline during round ${round + 1}.`;
          log(`deadline reached; reporting what was measured`);
          break outer;
        }
        let result: Awaited<ReturnType<Contender["run"]>>;
        try {
          result = await c.run(ctx);
        } catch (err) {
          // One failed run (rsyslog under 100 feeders once kept two
          // connections' lines for good) is reported, not the end of the bench.
          const why = err instanceof Error ? err.message : String(err);
          log(
            `round ${
              round + 1
            }/${rounds} ${c.name}, ${c.senders} × ${c.how}: FAILED: ${why}`,
          );
          failures.push(
            `${c.name}, ${c.senders} × ${c.how}, round ${round + 1}: ${
              why.split("\n")[0]
            }`,
          );
          killAll();
          await settle(work);
          continue;
        }
        const load = os.loadavg()[0]!;
        loads.push(load);
        const run: ShipRun = { ...result, round, load };
        runs[c.id]!.push(run);
        const ok = run.verified === run.lines
          ? "verified"
          : `VERIFY FAILED: ${run.verified} stored`;
        log(
          `round ${round + 1}/${rounds} ${c.name}, ${c.senders} × ${c.how}: ` +
            `${thousands(run.linesPerSec)} lines/s (${
              fmt(run.seconds)
            } s, ${ok}, load ${fmt(load)})`,
        );
        if (run.verified !== run.lines) {
          throw new Error(
            `${c.id}: ${run.verified} of ${run.lines} lines stored`,
          );
        }
        await settle(work);
      }
    }
  } finally {
    await natsCluster?.stop();
    natsCluster = undefined;
    process.off("exit", cleanup);
    cleanup();
  }

  // Report.
  const env = {
    date: new Date().toISOString(),
    cpu: os.cpus()[0]?.model ?? "unknown",
    cpus: os.cpus().length,
    kernel: os.release(),
    filesystem: `${disk.type} on ${disk.source} (${disk.mount})`,
    dir: base,
    moat: firstLine(BUN, [MAIN, "--version"]),
    moatBinary: fs.existsSync(MOAT_BIN)
      ? firstLine(MOAT_BIN, ["--version"])
      : null,
    deno: firstLine(DENO, ["--version"]),
    bun: firstLine(BUN, ["--version"]),
    rsyslog: withRsyslog
      ? firstLine("rsyslogd", ["-v"]).replace(
        /^rsyslogd\s+([\d.]+).*$/,
        "rsyslog $1",
      )
      : null,
  };
  const rows = list.map((c) => {
    const rs = runs[c.id]!;
    const mids = rs.map((r) => r.linesPerSec);
    const isMoat = !c.family.startsWith("rsyslog");
    const perLine = (key: "receiverCpuSec" | "senderCpuSec") =>
      fmt(median(rs.map((r) => (r[key] / r.lines) * 1e6)), 1);
    return {
      contender: c,
      cells: [
        c.name,
        `${c.senders} × ${c.how}`,
        `**${thousands(median(mids))}**`,
        `${thousands(Math.min(...mids))}–${thousands(Math.max(...mids))}`,
        isMoat || c.family !== "rsyslog-defaults"
          ? fmt(ratio(rs, runs[`rsyslog-defaults-${c.senders}`]))
          : "1.00",
        isMoat || c.family !== "rsyslog-sync"
          ? fmt(ratio(rs, runs[`rsyslog-sync-${c.senders}`]))
          : "1.00",
        perLine("receiverCpuSec"),
        isMoat ? perLine("senderCpuSec") : "—",
      ],
    };
  });
  const minutes = (performance.now() - began) / 60_000;
  const bestOf = (pick: (c: Contender) => boolean) =>
    Math.max(
      ...list.filter((c) => !c.family.startsWith("rsyslog") && pick(c)).map((
        c,
      ) => median(runs[c.id]!.map((r) => r.linesPerSec))).filter((x) =>
        Number.isFinite(x)
      ),
    );
  const best = bestOf((c) => c.senders === 1);
  const fanIn = bestOf((c) => c.how === "one generator process");
  const header =
    `Measured ${
      env.date.slice(0, 10)
    } on ${env.cpus} × ${env.cpu}, Linux ${env.kernel}, ` +
    `vault and rsyslog output on ${env.filesystem}; ${env.moat}${
      env.moatBinary ? ` (binary: ${env.moatBinary})` : ""
    }, ` +
    `${env.deno}, Bun ${env.bun}${env.rsyslog ? `, ${env.rsyslog}` : ""}. ` +
    `${
      lines.toLocaleString("en-US")
    } lines of ${LINE_BYTES} bytes (newline included) per run, all senders together; ` +
    `${rounds} rounds, contenders interleaved; medians; ${
      fmt(minutes, 1)
    } min; ` +
    `1-min load average ${fmt(Math.min(...loads))}–${
      fmt(Math.max(...loads))
    } on ${env.cpus} CPUs.${note}`;
  const markdown = [
    header,
    "",
    table(
      [
        "receiver",
        "senders",
        "lines/s (median)",
        "min–max",
        "× rsyslog, no fsync",
        '× rsyslog sync="on"',
        "receiver CPU µs/line",
        "shipper CPU µs/line",
      ],
      rows.map((r) => r.cells),
    ),
    "",
    "moat `ship -`: acknowledged lines (fsync'd by the server, after the shipper's own fsync'd spool), " +
    "clock from spawning the shipper(s) to the last exit. moat `ship FILE`: until every record is in the vault's " +
    "segment files (its fsync and ack follow within one commit). rsyslog: until its output file holds every line; " +
    "it acknowledges nothing, and its generator runs inside the bench. rsyslog: imtcp → omfile tuned with " +
    '`ioBufferSize="256k"` and `main_queue(queue.dequeueBatchSize="1024")` (with the default 4 KiB buffer ' +
    'rsyslog 8.2302 writes, and fsyncs, every 4 KiB, ~34 lines); no fsync (page cache only), or `sync="on"` ' +
    "(fsync of file and directory per batch). Ratios: run by run against rsyslog in the same round with the same number of senders " +
    "(follow: 1 sender). CPU: receiver from /proc during the run; shippers from `/usr/bin/time`, start-up included.",
    "",
    `Target ≥ 300,000 acknowledged lines/s from one shipper: ${
      best >= 300_000 ? "met" : "not met"
    } (best moat median ${
      thousands(best)
    }). Fan-in ≥ 400,000 lines/s from one generator: ${
      fanIn >= 400_000 ? "met" : "not met"
    } (best moat median ${thousands(fanIn)}).`,
    ...natsNote(list, runs),
    ...(failures.length > 0
      ? ["", `Failed runs (left out): ${failures.join("; ")}.`]
      : []),
    "",
  ].join("\n");
  const json = {
    environment: env,
    lines,
    lineBytes: LINE_BYTES,
    rounds,
    minutes,
    loadAverages: loads,
    contenders: list.map((c) => ({
      id: c.id,
      name: c.name,
      senders: c.senders,
      how: c.how,
      medianLinesPerSec: median(runs[c.id]!.map((r) => r.linesPerSec)),
      ratioToRsyslogDefaults: ratio(
        runs[c.id]!,
        runs[`rsyslog-defaults-${c.senders}`],
      ),
      ratioToRsyslogSync: ratio(runs[c.id]!, runs[`rsyslog-sync-${c.senders}`]),
      runs: runs[c.id],
    })),
    markdown,
  };
  if (options.out !== null) {
    await fsp.writeFile(
      options.out ?? path.join(ROOT, "bench", "ship-results.json"),
      JSON.stringify(
        json,
        (_, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v),
        2,
      ) + "\n",
    );
  }
  return { markdown, json };
}

/** The nats:// rows' cluster CPU and their ratio to the directory vault. */
function natsNote(
  list: readonly Contender[],
  runs: Record<string, ShipRun[]>,
): string[] {
  const rows = list.filter((c) => c.id.includes("-nats-"));
  if (rows.length === 0) return [];
  const parts = rows.map((c) => {
    const rs = runs[c.id]!;
    const dirId = c.id.replace("-nats", "");
    const cluster = median(
      rs.map((r) => ((r.clusterCpuSec ?? NaN) / r.lines) * 1e6),
    );
    const toDir = median(rs.flatMap((r) => {
      const d = runs[dirId]?.find((x) => x.round === r.round);
      return d ? [r.linesPerSec / d.linesPerSec] : [];
    }));
    return `${c.senders} × ${c.how}: ${
      fmt(toDir)
    } × the directory vault (same rounds), ` +
      `nats-server CPU ${fmt(cluster, 1)} µs/line (three nodes together)`;
  });
  return [
    "",
    "nats:// rows: acknowledged = after JetStream's publish ack (quorum of 3 replicas) and the door's local copy; " +
    "verified by reading every source back from the stream. " +
    parts.join("; ") + ".",
  ];
}

/** Flushes dirty pages (outputs already deleted) so the next run starts clean. */
async function settle(work: string): Promise<void> {
  for (const name of await fsp.readdir(work)) {
    if (/^\d+-/.test(name)) {
      await fsp.rm(path.join(work, name), { recursive: true, force: true });
    }
  }
  sh("sync", [], 120_000);
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      lines: { type: "string" },
      rounds: { type: "string" },
      dir: { type: "string" },
      quick: { type: "boolean" },
      "no-follow": { type: "boolean" },
      "no-rsyslog": { type: "boolean" },
      "no-nats": { type: "boolean" },
      only: { type: "string" },
      out: { type: "string" },
      keep: { type: "boolean" },
      base: { type: "string" },
      single: { type: "boolean" },
    },
  });
  const only = values.only?.split(",").map((s) => s.trim());
  // --only: "moat" means every flavor; naming no flavor (only "rsyslog") means no moat.
  const picked = only === undefined || only.includes("moat")
    ? undefined
    : only.filter((s) =>
      ["binary", "deno", "bun", "base", "base-deno"].includes(s)
    );
  const count = (text: string | undefined, name: string, fallback: number) => {
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!Number.isSafeInteger(n) || n < 1) {
      throw new Error(
        `Invalid --${name} "${text}": expected a positive integer`,
      );
    }
    return n;
  };
  const result = await benchShip({
    lines: count(values.lines, "lines", values.quick ? 200_000 : 2_000_000),
    rounds: count(values.rounds, "rounds", values.quick ? 1 : 3),
    follow: !values["no-follow"] && !values.quick,
    rsyslog: !values["no-rsyslog"] && !(only && !only.includes("rsyslog")),
    nats: !values["no-nats"],
    ...(values.dir !== undefined && { dir: values.dir }),
    ...(picked && { flavors: picked }),
    ...(values.out !== undefined && { out: values.out }),
    ...(values.keep && { keep: true }),
    ...(values.base !== undefined && { base: values.base }),
    ...(values.single && { single: true }),
  });
  console.log(result.markdown);
}

if (import.meta.main) {
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      killAll();
      process.exit(130);
    });
  }
  try {
    await main(process.argv.slice(2));
    process.exit(0);
  } catch (err) {
    console.error(
      `bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}`,
    );
    killAll();
    process.exit(1);
  }
}
