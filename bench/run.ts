// deno-lint-ignore-file no-console
/**
 * moat's benchmark: `npm run bench` (runs with Bun; not part of the tests).
 *
 * Everything runs on 127.0.0.1, in one session, contenders interleaved round
 * by round, so each comparison is made under the same machine noise:
 *
 * 1. throughput: a 1 GiB file from /dev/shm to a file in /dev/shm, the server
 *    sending and the timed client receiving: the moat binary, moat on Deno,
 *    moat on Bun (all with the default CRC-32 check), the binary with
 *    `--digest sha256`, `socat -b 262144`, ncat, OpenBSD nc; peak RSS of both
 *    sides from `/usr/bin/time -v`;
 * 2. memory flatness: peak RSS of moat's server and client for 16 MiB vs 1 GiB;
 * 3. chat round trips: 100-byte lines, one connection, one plain-text driver
 *    for all (moat answers with `--reply`, socat echoes through `PIPE`);
 * 4. server RSS with 1,000 and 10,000 idle connections;
 * 5. start-up to listening (spawn until the "listening" audit line).
 *
 * Prints Markdown tables and writes bench/results.json (git-ignored).
 *
 * Usage: bun bench/run.ts [--rounds N] [--quick]
 *
 * @module
 */

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomFillSync } from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import {
  childPids,
  descendants,
  fmt,
  freePort,
  has,
  killAll,
  median,
  sh,
  sleep,
  table,
  track,
  tryKill,
  waitListening,
} from "./_util.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
const BIN_DIR = path.join(ROOT, "node_modules", ".bin");
const DENO = path.join(BIN_DIR, "deno");
const BUN = path.join(BIN_DIR, "bun");
const MAIN = path.join(ROOT, "main.ts");
const MOAT_BIN = path.join(ROOT, "dist", "moat-linux-x64");
const TIME = "/usr/bin/time";
const GIB = 2 ** 30;
const MIB = 2 ** 20;
/** The whole run is abandoned past this. */
const DEADLINE_MS = 25 * 60_000;
/** The socket buffer socat is given, as in the brief and PERF.md. */
const SOCAT_BUFFER = 262144;

// ---------------------------------------------------------------------------
// Child processes

function exited(child: ChildProcess, timeoutMs: number, what: string) {
  return new Promise<number | null>((resolve, reject) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      return resolve(child.exitCode);
    }
    const timer = setTimeout(() => {
      killAll();
      reject(new Error(`${what} did not exit within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

// ---------------------------------------------------------------------------
// Measuring one process with /usr/bin/time -v

interface Timed {
  child: ChildProcess;
  report: string;
  started: number;
}

/** Spawns `argv` under `/usr/bin/time -v`, stdio as given. */
function spawnTimed(
  argv: string[],
  options: {
    cwd?: string;
    stdin?: number | "ignore" | "pipe";
    stdout?: number | "ignore" | "pipe";
    stderr?: number | "ignore" | "pipe";
    nofile?: number;
  } = {},
): Timed {
  const report = path.join(work(), `time-${++timedCount}.txt`);
  const inner = options.nofile
    ? ["sh", "-c", `ulimit -n ${options.nofile} && exec "$@"`, "sh", ...argv]
    : argv;
  const started = performance.now();
  const child = track(spawn(TIME, ["-v", "-o", report, ...inner], {
    cwd: options.cwd ?? work(),
    stdio: [
      options.stdin ?? "ignore",
      options.stdout ?? "ignore",
      options.stderr ?? "ignore",
    ],
  }));
  return { child, report, started };
}
let timedCount = 0;

/** Peak RSS in KiB from a `time -v` report. */
async function peakRssKiB(report: string): Promise<number> {
  const text = await fsp.readFile(report, "utf8");
  const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(text);
  if (!m) throw new Error(`no RSS in ${report}: ${text}`);
  return Number(m[1]);
}

/** The measured process under `time` (its only child). */
async function innerPid(timed: Timed): Promise<number> {
  for (let i = 0; i < 500; i++) {
    // Through `sh -c "ulimit … && exec …"`, the pid stays the same.
    const pids = childPids(timed.child.pid!);
    if (pids.length === 1) return pids[0]!;
    await sleep(2);
  }
  throw new Error("cannot find the process under time");
}

// ---------------------------------------------------------------------------
// Ports

// ---------------------------------------------------------------------------
// Statistics

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1);
  return sorted[Math.max(0, i)]!;
}

function mib(kib: number): string {
  return Number.isFinite(kib) ? (kib / 1024).toFixed(0) : "—";
}

// ---------------------------------------------------------------------------
// Work area

let workDir = "";

function work(): string {
  return workDir;
}

/** A file of `size` bytes of random data (a 16 MiB random block repeated). */
async function makeFile(file: string, size: number): Promise<void> {
  const block = new Uint8Array(Math.min(size, 16 * MIB));
  randomFillSync(block);
  const handle = await fsp.open(file, "w");
  try {
    for (let left = size; left > 0; left -= block.length) {
      await handle.write(block, 0, Math.min(left, block.length));
    }
  } finally {
    await handle.close();
  }
}

// ---------------------------------------------------------------------------
// Contenders

interface Flavor {
  name: string;
  /** argv prefix that runs moat. */
  argv: string[];
}

function flavors(): Flavor[] {
  return [
    { name: "moat binary", argv: [MOAT_BIN] },
    { name: "moat on Deno", argv: [DENO, "run", "-A", MAIN] },
    { name: "moat on Bun", argv: [BUN, MAIN] },
  ];
}

interface Transfer {
  gibps: number;
  wallMs: number;
  serverKiB: number;
  clientKiB: number;
}

/** One moat transfer: fresh server, one timed `get`, server stopped. */
async function moatTransfer(
  flavor: Flavor,
  file: string,
  size: number,
  getArgs: string[] = [],
): Promise<Transfer> {
  const port = await freePort();
  const out = path.join(work(), "out", path.basename(file));
  await fsp.rm(out, { force: true });
  const audit = fs.openSync(path.join(work(), "audit.log"), "a");
  const server = spawnTimed(
    [
      ...flavor.argv,
      "serve",
      "--root",
      path.join(work(), "root"),
      "--port",
      String(port),
    ],
    { stderr: audit, stdout: "ignore", stdin: "ignore" },
  );
  fs.closeSync(audit);
  try {
    await waitListening(port, server.child, `${flavor.name} server`);
    const client = spawnTimed([
      ...flavor.argv,
      "get",
      `FILE:${path.basename(file)}`,
      "--server",
      `127.0.0.1:${port}`,
      "-o",
      out,
      "--force",
      ...getArgs,
    ], { stderr: "pipe" });
    let err = "";
    client.child.stderr!.setEncoding("utf8").on(
      "data",
      (d: string) => (err += d),
    );
    const code = await exited(client.child, 120_000, `${flavor.name} get`);
    const wallMs = performance.now() - client.started;
    if (code !== 0) {
      throw new Error(`${flavor.name} get failed (${code}): ${err}`);
    }
    const pid = await innerPid(server);
    tryKill(pid, "SIGTERM");
    await exited(server.child, 20_000, `${flavor.name} server`);
    await checkSize(out, size, flavor.name);
    return {
      gibps: size / GIB / (wallMs / 1000),
      wallMs,
      serverKiB: await peakRssKiB(server.report),
      clientKiB: await peakRssKiB(client.report),
    };
  } finally {
    if (server.child.exitCode === null) {
      for (const pid of descendants(server.child.pid!)) tryKill(pid, "SIGKILL");
    }
  }
}

async function checkSize(out: string, size: number, what: string) {
  const st = await fsp.stat(out).catch(() => undefined);
  if (st?.size !== size) {
    throw new Error(
      `${what}: received ${st?.size ?? "no"} bytes, expected ${size}`,
    );
  }
}

interface Peer {
  name: string;
  server(file: string, port: number): { argv: string[]; stdinFile?: string };
  client(out: string, port: number): { argv: string[]; stdoutFile?: string };
}

const PEERS: Peer[] = [
  {
    name: `socat -b ${SOCAT_BUFFER}`,
    server: (file, port) => ({
      argv: [
        "socat",
        "-b",
        String(SOCAT_BUFFER),
        "-u",
        `OPEN:${file}`,
        `TCP-LISTEN:${port},reuseaddr,bind=127.0.0.1`,
      ],
    }),
    client: (out, port) => ({
      argv: [
        "socat",
        "-b",
        String(SOCAT_BUFFER),
        "-u",
        `TCP:127.0.0.1:${port}`,
        `CREATE:${out}`,
      ],
    }),
  },
  {
    name: "ncat",
    server: (file, port) => ({
      argv: ["ncat", "--send-only", "-l", "127.0.0.1", String(port)],
      stdinFile: file,
    }),
    client: (out, port) => ({
      argv: ["ncat", "--recv-only", "127.0.0.1", String(port)],
      stdoutFile: out,
    }),
  },
  {
    name: "nc (OpenBSD)",
    server: (file, port) => ({
      argv: ["nc", "-N", "-l", "127.0.0.1", String(port)],
      stdinFile: file,
    }),
    client: (out, port) => ({
      argv: ["nc", "-d", "127.0.0.1", String(port)],
      stdoutFile: out,
    }),
  },
];

/** One peer transfer: a one-shot sending server, one timed receiving client. */
async function peerTransfer(
  peer: Peer,
  file: string,
  size: number,
): Promise<Transfer> {
  const port = await freePort();
  const out = path.join(work(), "out", path.basename(file));
  await fsp.rm(out, { force: true });
  const s = peer.server(file, port);
  const stdin = s.stdinFile ? fs.openSync(s.stdinFile, "r") : undefined;
  const server = spawnTimed(s.argv, { stdin: stdin ?? "ignore" });
  if (stdin !== undefined) fs.closeSync(stdin);
  try {
    await waitListening(port, server.child, `${peer.name} server`);
    const c = peer.client(out, port);
    const stdout = c.stdoutFile ? fs.openSync(c.stdoutFile, "w") : undefined;
    const client = spawnTimed(c.argv, {
      stdout: stdout ?? "ignore",
      stdin: "ignore",
    });
    if (stdout !== undefined) fs.closeSync(stdout);
    const code = await exited(client.child, 120_000, `${peer.name} client`);
    const wallMs = performance.now() - client.started;
    if (code !== 0) throw new Error(`${peer.name} client failed (${code})`);
    await exited(server.child, 20_000, `${peer.name} server`);
    await checkSize(out, size, peer.name);
    return {
      gibps: size / GIB / (wallMs / 1000),
      wallMs,
      serverKiB: await peakRssKiB(server.report),
      clientKiB: await peakRssKiB(client.report),
    };
  } finally {
    if (server.child.exitCode === null) {
      for (const pid of descendants(server.child.pid!)) tryKill(pid, "SIGKILL");
    }
  }
}

// ---------------------------------------------------------------------------
// 1 and 2: throughput and memory

interface ThroughputRow {
  name: string;
  runs: Transfer[];
  ratios: number[];
}

async function benchThroughput(rounds: number, bigSize: number) {
  const big = path.join(work(), "root", "big.bin");
  const contenders: { name: string; run: () => Promise<Transfer> }[] = [
    ...flavors().map((f) => ({
      name: f.name,
      run: () => moatTransfer(f, big, bigSize),
    })),
    // What the CRC-32 default saves: the same binary checking SHA-256.
    {
      name: "moat binary --digest sha256",
      run: () =>
        moatTransfer(flavors()[0]!, big, bigSize, ["--digest", "sha256"]),
    },
    ...PEERS.map((p) => ({
      name: p.name,
      run: () => peerTransfer(p, big, bigSize),
    })),
  ];
  const rows: ThroughputRow[] = contenders.map((c) => ({
    name: c.name,
    runs: [],
    ratios: [],
  }));
  for (let r = 0; r < rounds; r++) {
    const line: string[] = [];
    for (const [i, c] of contenders.entries()) {
      const t = await c.run();
      rows[i]!.runs.push(t);
      if (r === 0) {
        await verifyContent(big, path.join(work(), "out", "big.bin"), c.name);
      }
      line.push(`${c.name} ${fmt(t.gibps)}`);
    }
    const socat = rows.find((row) =>
      row.name.startsWith("socat")
    )!.runs[r]!.gibps;
    for (const row of rows) row.ratios.push(row.runs[r]!.gibps / socat);
    log(`  round ${r + 1}/${rounds}: ${line.join(", ")} GiB/s`);
  }
  return rows;
}

async function verifyContent(a: string, b: string, what: string) {
  const r = spawnSync("cmp", ["-s", a, b], { timeout: 120_000 });
  if (r.status !== 0) {
    throw new Error(`${what}: received file differs from the source`);
  }
  await Promise.resolve();
}

async function benchMemory(rounds: number) {
  const small = path.join(work(), "root", "small.bin");
  const out: Record<string, Transfer[]> = {};
  for (const f of flavors()) out[f.name] = [];
  for (let r = 0; r < rounds; r++) {
    for (const f of flavors()) {
      out[f.name]!.push(await moatTransfer(f, small, 16 * MIB));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// 3: chat round trips

const LINE_BYTES = 100;
const CHAT_TRIPS = 100_000;
const CHAT_LIMIT_MS = 20_000;
const CHAT_WARMUP = 1_000;

interface ChatResult {
  trips: number;
  seconds: number;
  msgsPerSec: number;
  latenciesUs: Float64Array;
}

/**
 * Plain-text ping-pong over one connection: send a 100-byte line, wait for a
 * whole reply line, repeat; 1,000 warm-up trips, then up to 100,000 or 20 s.
 */
function chatDriver(port: number): Promise<ChatResult> {
  return new Promise((resolve, reject) => {
    const line = Buffer.from("x".repeat(LINE_BYTES - 1) + "\n");
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.setNoDelay(true);
    const lat = new Float64Array(CHAT_TRIPS);
    let n = -CHAT_WARMUP;
    let sent = 0;
    let start = 0;
    let t0 = 0;
    const guard = setTimeout(() => {
      socket.destroy();
      reject(new Error(`chat driver stuck after ${n} trips`));
    }, CHAT_LIMIT_MS + 30_000);
    const send = () => {
      sent = performance.now();
      socket.write(line);
    };
    socket.on("connect", () => send());
    socket.on("error", (err) => {
      clearTimeout(guard);
      reject(err);
    });
    socket.on("data", (chunk: Buffer) => {
      // One reply per request; a reply may arrive in pieces.
      if (chunk[chunk.length - 1] !== 0x0a) return;
      const now = performance.now();
      if (n >= 0) lat[n] = (now - sent) * 1000;
      n++;
      if (n === 0) start = t0 = now;
      if (n >= CHAT_TRIPS || (n > 0 && now - t0 > CHAT_LIMIT_MS)) {
        clearTimeout(guard);
        socket.destroy();
        const seconds = (now - start) / 1000;
        const done = lat.slice(0, n).sort();
        resolve({
          trips: n,
          seconds,
          msgsPerSec: n / seconds,
          latenciesUs: done,
        });
        return;
      }
      send();
    });
  });
}

async function chatRound(name: string, argv: string[]): Promise<ChatResult> {
  const port = await freePort();
  const full = argv.map((a) => a.replace("{port}", String(port)));
  const logFd = fs.openSync(path.join(work(), "chat-audit.log"), "w");
  const server = track(spawn(full[0]!, full.slice(1), {
    cwd: work(),
    stdio: ["ignore", "ignore", logFd],
  }));
  fs.closeSync(logFd);
  try {
    await waitListening(port, server, `${name} chat server`);
    return await chatDriver(port);
  } finally {
    tryKill(server.pid!, "SIGTERM");
    await exited(server, 20_000, `${name} chat server`);
  }
}

async function benchChat(rounds: number) {
  // "[server] " + text + "\n" is 100 bytes, like the request line.
  const reply = "y".repeat(LINE_BYTES - "[server] ".length - 1);
  const servers: { name: string; argv: string[] }[] = [
    ...flavors().map((f) => ({
      name: f.name,
      argv: [
        ...f.argv,
        "serve",
        "--root",
        path.join(work(), "root"),
        "--port",
        "{port}",
        "--reply",
        reply,
      ],
    })),
    {
      name: "socat echo (PIPE)",
      argv: ["socat", "TCP-LISTEN:{port},reuseaddr,bind=127.0.0.1", "PIPE"],
    },
  ];
  const results: Record<string, ChatResult[]> = {};
  for (const s of servers) results[s.name] = [];
  for (let r = 0; r < rounds; r++) {
    for (const s of servers) {
      const res = await chatRound(s.name, s.argv);
      results[s.name]!.push(res);
      log(
        `  round ${r + 1}/${rounds}: ${s.name} ${
          Math.round(res.msgsPerSec)
        } msgs/s`,
      );
    }
  }
  return results;
}

// ---------------------------------------------------------------------------
// 4: idle connections

/** Child mode: open `count` connections to `port`, report, hold until stdin ends. */
async function idleClient(count: number, port: number): Promise<void> {
  const sockets: net.Socket[] = [];
  const batch = 250;
  for (let i = 0; i < count; i += batch) {
    const n = Math.min(batch, count - i);
    await Promise.all(
      Array.from({ length: n }, () =>
        new Promise<void>((resolve, reject) => {
          const s = net.connect({ host: "127.0.0.1", port });
          s.on("connect", () => resolve());
          s.on("error", reject);
          sockets.push(s);
        })),
    );
  }
  process.stdout.write(`ready ${sockets.length}\n`);
  for await (const _ of process.stdin) {
    // Hold the connections until the parent closes stdin.
  }
  for (const s of sockets) s.destroy();
  process.exit(0);
}

async function rssKiB(pid: number): Promise<number> {
  const text = await fsp.readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(text)![1]);
}

async function fdCount(pid: number): Promise<number> {
  return (await fsp.readdir(`/proc/${pid}/fd`)).length;
}

async function idleRound(flavor: Flavor, count: number) {
  const port = await freePort();
  const server = track(spawn("sh", [
    "-c",
    'ulimit -n 24000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"',
    "sh",
    ...flavor.argv,
    "serve",
    "--root",
    path.join(work(), "root"),
    "--port",
    String(port),
    "--max-conns",
    "20000",
  ], { cwd: work(), stdio: ["ignore", "ignore", "ignore"] }));
  try {
    await waitListening(port, server, `${flavor.name} server`);
    await sleep(500);
    const baseline = await rssKiB(server.pid!);
    const client = track(spawn("sh", [
      "-c",
      'ulimit -n 24000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"',
      "sh",
      BUN,
      path.join(ROOT, "bench", "run.ts"),
      "--idle-client",
      String(count),
      String(port),
    ], { stdio: ["pipe", "pipe", "pipe"] }));
    let out = "";
    client.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
    client.stderr!.setEncoding("utf8").on("data", (d: string) => (out += d));
    const until = performance.now() + 60_000;
    while (!out.includes("ready") && performance.now() < until) {
      if (client.exitCode !== null) {
        throw new Error(`idle client failed: ${out}`);
      }
      await sleep(20);
    }
    if (!out.includes("ready")) {
      throw new Error(`idle client not ready: ${out}`);
    }
    // moat serves a silent connection as plain text after 1 s: let every
    // session settle before measuring.
    await sleep(2500);
    const rss = await rssKiB(server.pid!);
    const fds = await fdCount(server.pid!);
    client.stdin!.end();
    await exited(client, 30_000, "idle client");
    return { baselineKiB: baseline, rssKiB: rss, fds };
  } finally {
    tryKill(server.pid!, "SIGTERM");
    await exited(server, 20_000, `${flavor.name} server`);
  }
}

async function benchIdle() {
  const out: Record<
    string,
    { count: number; baselineKiB: number; rssKiB: number; fds: number }[]
  > = {};
  for (const f of flavors()) out[f.name] = [];
  for (const count of [1000, 10000]) {
    for (const f of flavors()) {
      const r = await idleRound(f, count);
      out[f.name]!.push({ count, ...r });
      log(`  ${f.name}, ${count} idle: ${mib(r.rssKiB)} MiB (${r.fds} fds)`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// 5: start-up

async function startupOnce(argv: string[]): Promise<number> {
  const started = performance.now();
  const child = track(spawn(argv[0]!, [
    ...argv.slice(1),
    "serve",
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--root",
    path.join(work(), "root"),
  ], { cwd: work(), stdio: ["ignore", "ignore", "pipe"] }));
  let err = "";
  try {
    const ms = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no listening line: ${err}`)),
        30_000,
      );
      child.stderr!.setEncoding("utf8").on("data", (d: string) => {
        err += d;
        if (err.includes('"event":"listening"')) {
          clearTimeout(timer);
          resolve(performance.now() - started);
        }
      });
      child.on("close", (code) => {
        clearTimeout(timer);
        reject(new Error(`exited ${code} before listening: ${err}`));
      });
    });
    return ms;
  } finally {
    tryKill(child.pid!, "SIGTERM");
    await exited(child, 20_000, "start-up server");
  }
}

async function benchStartup(
  runs: number,
  variants: { name: string; argv: string[] }[],
) {
  const out: Record<string, number[]> = {};
  for (const v of variants) out[v.name] = [];
  for (let r = 0; r < runs; r++) {
    for (const v of variants) out[v.name]!.push(await startupOnce(v.argv));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Setup

function log(message: string): void {
  console.error(message);
}

/** 1-minute load averages sampled at each section (other work on the host). */
const loads: number[] = [];

function sampleLoad(section: string): void {
  const load = os.loadavg()[0]!;
  loads.push(load);
  log(`${section} (load average ${load.toFixed(2)})`);
}

function ensurePeers(): void {
  const need: string[] = [];
  if (!has("socat")) need.push("socat");
  if (!has("ncat")) need.push("ncat");
  if (!has("nc")) need.push("netcat-openbsd");
  if (!fs.existsSync(TIME)) need.push("time");
  if (!has("cmp")) need.push("diffutils");
  if (need.length === 0) return;
  if (process.getuid?.() !== 0 || !has("apt-get")) {
    throw new Error(`please install: ${need.join(" ")}`);
  }
  log(`installing ${need.join(", ")} with apt-get`);
  sh("apt-get", ["update", "-qq"]);
  const r = sh("sh", [
    "-c",
    `DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${need.join(" ")}`,
  ]);
  if (r.code !== 0) throw new Error(`apt-get install failed: ${r.out}`);
}

function ensureBinary(): void {
  if (fs.existsSync(MOAT_BIN)) return;
  log("building dist/moat-linux-x64");
  const r = sh("bash", [path.join(ROOT, "scripts", "build.sh"), "linux-x64"]);
  if (r.code !== 0) throw new Error(`build failed: ${r.out}`);
}

/** The same build as scripts/build.sh, with --bytecode toggled, for start-up. */
function buildVariant(bytecode: boolean): string {
  const out = path.join(
    work(),
    bytecode ? "moat-bytecode" : "moat-no-bytecode",
  );
  const args = [
    "build",
    "--compile",
    "--minify",
    ...(bytecode ? ["--bytecode"] : []),
    "--format=esm",
    "--target=bun-linux-x64",
    "--define",
    'MOAT_TARGET="linux-x64"',
    MAIN,
    "--outfile",
    out,
  ];
  const r = sh(BUN, args);
  if (r.code !== 0) throw new Error(`bun build failed: ${r.out}`);
  return out;
}

function versionOf(argv: string[]): string {
  return sh(argv[0]!, argv.slice(1)).out.split("\n")[0]!.trim();
}

function environment() {
  const cpu = os.cpus()[0]?.model ?? "unknown";
  return {
    date: new Date().toISOString(),
    cpu,
    cpus: os.cpus().length,
    kernel: os.release(),
    memoryGiB: Math.round(os.totalmem() / GIB),
    moat: versionOf([MOAT_BIN, "--version"]),
    deno: versionOf([DENO, "--version"]).replace(/ \(.*$/, ""),
    bun: versionOf([BUN, "--version"]),
    socat: sh("socat", ["-V"]).out.match(/socat version [\d.]+/)?.[0] ??
      "socat",
    ncat: versionOf(["ncat", "--version"]).replace(
      /^Ncat: Version ([\d.]+).*$/,
      "ncat $1",
    ),
  };
}

// ---------------------------------------------------------------------------
// Report

async function main(argv: string[]): Promise<void> {
  const idle = argv.indexOf("--idle-client");
  if (idle !== -1) {
    return await idleClient(Number(argv[idle + 1]), Number(argv[idle + 2]));
  }
  const quick = argv.includes("--quick");
  const roundsAt = argv.indexOf("--rounds");
  const rounds = roundsAt !== -1
    ? Math.max(1, Number(argv[roundsAt + 1]))
    : quick
    ? 1
    : 5;
  const bigSize = quick ? 256 * MIB : GIB;
  const began = performance.now();
  const watchdog = setTimeout(() => {
    log(`bench: over ${DEADLINE_MS / 60_000} minutes, giving up`);
    killAll();
    process.exit(1);
  }, DEADLINE_MS);

  if (process.platform !== "linux") {
    throw new Error("the bench needs Linux (/proc, /dev/shm)");
  }
  ensurePeers();
  ensureBinary();
  workDir = fs.mkdtempSync("/dev/shm/moat-bench-");
  process.on("exit", () => {
    killAll();
    fs.rmSync(workDir, { recursive: true, force: true });
  });
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => process.exit(130));
  }
  fs.mkdirSync(path.join(work(), "root"));
  fs.mkdirSync(path.join(work(), "out"));
  log(`work area ${work()}; writing the test files`);
  await makeFile(path.join(work(), "root", "big.bin"), bigSize);
  await makeFile(path.join(work(), "root", "small.bin"), 16 * MIB);
  // Warm Deno's and Bun's caches so no round pays for the first compile.
  for (const f of flavors()) sh(f.argv[0]!, [...f.argv.slice(1), "--version"]);
  const env = environment();
  log(
    `${env.moat}; ${
      env.deno.split("\n")[0]
    }; bun ${env.bun}; ${env.cpus} × ${env.cpu}`,
  );

  sampleLoad(`1. throughput, ${bigSize / MIB} MiB, ${rounds} rounds`);
  const tp = await benchThroughput(rounds, bigSize);
  sampleLoad("2. memory, 16 MiB");
  const mem = await benchMemory(quick ? 1 : 3);
  sampleLoad("3. chat round trips");
  const chat = await benchChat(quick ? 1 : 3);
  sampleLoad("4. idle connections");
  const idleRes = await benchIdle();
  sampleLoad("5. start-up");
  const variants = [
    { name: "binary, --bytecode", argv: [buildVariant(true)] },
    { name: "binary, no --bytecode", argv: [buildVariant(false)] },
    { name: "dist/moat-linux-x64", argv: [MOAT_BIN] },
    { name: "moat on Deno", argv: [DENO, "run", "-A", MAIN] },
    { name: "moat on Bun", argv: [BUN, MAIN] },
  ];
  const startup = await benchStartup(quick ? 3 : 20, variants);

  // Tables.
  const sizeLabel = bigSize === GIB ? "1 GiB" : `${bigSize / MIB} MiB`;
  const t1 = table(
    [
      "sender → receiver",
      "GiB/s median",
      "min",
      "max",
      "× socat (median of rounds)",
      "peak RSS server / client MiB",
    ],
    tp.map((row) => {
      const g = row.runs.map((t) => t.gibps);
      return [
        row.name,
        fmt(median(g)),
        fmt(Math.min(...g)),
        fmt(Math.max(...g)),
        fmt(median(row.ratios)),
        `${mib(median(row.runs.map((t) => t.serverKiB)))} / ${
          mib(median(row.runs.map((t) => t.clientKiB)))
        }`,
      ];
    }),
  );
  const t2 = table(
    [
      "moat",
      "server 16 MiB",
      `server ${sizeLabel}`,
      "client 16 MiB",
      `client ${sizeLabel}`,
    ],
    flavors().map((f) => {
      const small = mem[f.name]!;
      const bigRuns = tp.find((row) => row.name === f.name)!.runs;
      return [
        f.name,
        `${mib(median(small.map((t) => t.serverKiB)))} MiB`,
        `${mib(median(bigRuns.map((t) => t.serverKiB)))} MiB`,
        `${mib(median(small.map((t) => t.clientKiB)))} MiB`,
        `${mib(median(bigRuns.map((t) => t.clientKiB)))} MiB`,
      ];
    }),
  );
  const t3 = table(
    [
      "echo server",
      "msgs/s (median)",
      "p50 µs",
      "p99 µs",
      "round trips × rounds",
    ],
    Object.entries(chat).map(([name, runs]) => {
      const all = Float64Array.from(runs.flatMap((r) => [...r.latenciesUs]))
        .sort();
      return [
        name,
        Math.round(median(runs.map((r) => r.msgsPerSec))).toLocaleString(
          "en-US",
        ),
        fmt(percentile(all, 0.5), 1),
        fmt(percentile(all, 0.99), 1),
        `${runs.map((r) => r.trips).join(", ")}`,
      ];
    }),
  );
  const t4 = table(
    [
      "server",
      "RSS before",
      "1,000 idle",
      "10,000 idle",
      "KiB per connection (10k)",
    ],
    flavors().map((f) => {
      const rs = idleRes[f.name]!;
      const k1 = rs.find((r) => r.count === 1000)!;
      const k10 = rs.find((r) => r.count === 10000)!;
      return [
        f.name,
        `${mib(k10.baselineKiB)} MiB`,
        `${mib(k1.rssKiB)} MiB`,
        `${mib(k10.rssKiB)} MiB`,
        fmt((k10.rssKiB - k10.baselineKiB) / 10000, 1),
      ];
    }),
  );
  const t5 = table(
    ["moat serve", "start-up to listening, median ms", "min", "max"],
    Object.entries(startup).map(([name, ms]) => [
      name,
      fmt(median(ms), 1),
      fmt(Math.min(...ms), 1),
      fmt(Math.max(...ms), 1),
    ]),
  );
  sampleLoad("done");
  const minutes = (performance.now() - began) / 60_000;
  const header =
    `Measured ${
      env.date.slice(0, 10)
    } on ${env.cpus} × ${env.cpu}, Linux ${env.kernel}; ` +
    `${env.moat}, ${
      env.deno.split("\n")[0]
    }, Bun ${env.bun}, ${env.socat}, ${env.ncat}. ` +
    `All on 127.0.0.1; contenders interleaved; ${fmt(minutes, 1)} min; ` +
    `1-min load average ${fmt(Math.min(...loads))}–${
      fmt(Math.max(...loads))
    } on ${env.cpus} CPUs.`;
  const report = [
    header,
    "",
    `**1. Throughput** — ${sizeLabel} from /dev/shm to a file in /dev/shm, ${rounds} rounds; ` +
    "wall time of the receiving client process (moat: `moat get`, which also checks a CRC-32, or SHA-256 in the `--digest sha256` row, fsyncs and renames).",
    "",
    t1,
    "",
    "**2. Memory flatness** — peak RSS (`/usr/bin/time -v`), medians.",
    "",
    t2,
    "",
    `**3. Chat round trips** — ${LINE_BYTES}-byte lines over one connection, ` +
    `${CHAT_TRIPS.toLocaleString("en-US")} round trips or ${
      CHAT_LIMIT_MS / 1000
    } s after ${CHAT_WARMUP} warm-up trips; ` +
    "one plain-text driver (Bun `node:net`) for all; moat answers with `--reply` (plain-text mode), socat echoes with `PIPE`.",
    "",
    t3,
    "",
    "**4. Idle connections** — server RSS with N connections open, 2.5 s after the last (`--max-conns 20000`).",
    "",
    t4,
    "",
    "**5. Start-up** — spawn to the `listening` audit line, `moat serve --port 0`; " +
    `${startup[variants[0]!.name]!.length} runs each, interleaved.`,
    "",
    t5,
    "",
  ].join("\n");
  console.log(report);
  const results = {
    environment: env,
    minutes,
    loadAverages: loads,
    throughput: tp,
    memory16MiB: mem,
    chat: Object.fromEntries(
      Object.entries(chat).map(([k, runs]) => [
        k,
        runs.map((r) => ({
          trips: r.trips,
          seconds: r.seconds,
          msgsPerSec: r.msgsPerSec,
          p50Us: percentile(r.latenciesUs, 0.5),
          p99Us: percentile(r.latenciesUs, 0.99),
        })),
      ]),
    ),
    idle: idleRes,
    startupMs: startup,
    markdown: report,
  };
  await fsp.writeFile(
    path.join(ROOT, "bench", "results.json"),
    JSON.stringify(results, null, 2) + "\n",
  );
  log(`wrote bench/results.json (${fmt(minutes, 1)} min)`);
  clearTimeout(watchdog);
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
