// deno-lint-ignore-file no-console
/**
 * moat's benchmark: `npm run bench` (runs with Bun; not part of the tests).
 *
 * Everything runs on 127.0.0.1, in one session, contenders interleaved round
 * by round, so that each comparison is made under the same machine noise;
 * every ratio is taken within a round and the tables give the median and the
 * spread (min–max) of the rounds.
 *
 * 1. get, plain: a 1 GiB file from /dev/shm to a file in /dev/shm, the server
 *    sending and the timed client receiving: the moat binary, moat on Deno,
 *    moat on Bun (CRC-32 check), the binary with `--digest sha256`,
 *    `socat -b 262144` (= 1.00), ncat, OpenBSD nc, and iperf3 `-R` (memory
 *    to memory, its own receiver rate: the ceiling of one TCP stream here);
 *    the receiving client's CPU seconds and both sides' peak RSS from
 *    `/usr/bin/time -v`;
 * 2. memory: peak RSS of moat's receiving client (and server) for a 16 MiB
 *    and the 1 GiB get;
 * 3. get over TLS 1.3 against `socat OPENSSL` with the same suite
 *    (`./tls.ts`);
 * 4. chat round trips: 100-byte lines, one connection, one plain-text driver
 *    for all (moat answers with `--reply`, socat echoes through `PIPE`);
 * 5. server RSS with 1,000 and 10,000 idle connections;
 * 6. start-up to listening (spawn until the "listening" audit line);
 * 7. binary size per target (dist/ after scripts/build.sh);
 * 8. shipping into a vault, against rsyslog (`./ship.ts`);
 * 9. syslog ingest against rsyslog (`./syslog.ts`).
 *
 * The get sections need socat, ncat, netcat-openbsd, iperf3 and time; the
 * bench installs what is missing with apt-get when it runs as root, and
 * otherwise names the packages. Sections 8 and 9 need rsyslog (likewise).
 * Prints Markdown tables, a summary of the issue-17 targets, and writes
 * bench/results.json (git-ignored).
 *
 * Usage: bun bench/run.ts [--rounds N] [--quick] [--ship-lines N]
 *          [--only get,memory,tls,chat,idle,startup,size,ship,syslog]
 *
 * @module
 */

import { spawn, spawnSync } from "node:child_process";
import { randomFillSync } from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import {
  checkSize,
  descendants,
  exited,
  fmt,
  freePort,
  has,
  innerPid,
  killAll,
  median,
  sh,
  sleep,
  spawnTimed,
  spread,
  table,
  timeReport,
  track,
  tryKill,
  waitListening,
} from "./_util.ts";
import { benchTls, type TlsRow } from "./tls.ts";
import { benchShip, type ShipBenchResult } from "./ship.ts";
import { benchSyslog, type SyslogRow } from "./syslog.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
const BIN_DIR = path.join(ROOT, "node_modules", ".bin");
const DENO = path.join(BIN_DIR, "deno");
const BUN = path.join(BIN_DIR, "bun");
const MAIN = path.join(ROOT, "main.ts");
const DIST = path.join(ROOT, "dist");
const MOAT_BIN = path.join(DIST, "moat-linux-x64");
const TARGETS = [
  "linux-x64",
  "linux-arm64",
  "darwin-x64",
  "darwin-arm64",
  "windows-x64",
];
const TIME = "/usr/bin/time";
const GIB = 2 ** 30;
const MIB = 2 ** 20;
/** The whole run is abandoned past this. */
const DEADLINE_MS = 120 * 60_000;
/** The socket buffer socat is given, as in the issue and PERF.md. */
const SOCAT_BUFFER = 262144;
const SECTIONS = [
  "get",
  "memory",
  "tls",
  "chat",
  "idle",
  "startup",
  "size",
  "ship",
  "syslog",
] as const;
type Section = typeof SECTIONS[number];

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
// 1 and 2: get, plain, and memory

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
  /** The receiving client's user + system CPU seconds. */
  clientCpuSec: number;
  /** The sending server's user + system CPU seconds (its whole life). */
  serverCpuSec: number;
}

/** Stops a server under `time` (SIGTERM to the process itself), or kills what is left. */
async function stopTimed(
  server: ReturnType<typeof spawnTimed>,
  what: string,
): Promise<void> {
  if (server.child.exitCode !== null) return;
  const pid = await innerPid(server).catch(() => undefined);
  tryKill(pid, "SIGTERM");
  try {
    await exited(server.child, 20_000, what);
  } catch {
    for (const p of descendants(server.child.pid!)) tryKill(p, "SIGKILL");
  }
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
  const server = spawnTimed(work(), [
    ...flavor.argv,
    "serve",
    "--root",
    path.join(work(), "root"),
    "--port",
    String(port),
  ], { stderr: audit });
  fs.closeSync(audit);
  try {
    await waitListening(port, server.child, `${flavor.name} server`);
    const client = spawnTimed(work(), [
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
    const code = await exited(client.child, 300_000, `${flavor.name} get`);
    const wallMs = performance.now() - client.started;
    if (code !== 0) {
      throw new Error(`${flavor.name} get failed (${code}): ${err}`);
    }
    await stopTimed(server, `${flavor.name} server`);
    await checkSize(out, size, flavor.name);
    const c = await timeReport(client.report);
    const sv = await timeReport(server.report);
    return {
      gibps: size / GIB / (wallMs / 1000),
      wallMs,
      serverKiB: sv.peakKiB,
      clientKiB: c.peakKiB,
      clientCpuSec: c.userSec + c.sysSec,
      serverCpuSec: sv.userSec + sv.sysSec,
    };
  } finally {
    await stopTimed(server, `${flavor.name} server`);
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
  const server = spawnTimed(work(), s.argv, { stdin: stdin ?? "ignore" });
  if (stdin !== undefined) fs.closeSync(stdin);
  try {
    await waitListening(port, server.child, `${peer.name} server`);
    const c = peer.client(out, port);
    const stdout = c.stdoutFile ? fs.openSync(c.stdoutFile, "w") : undefined;
    const client = spawnTimed(work(), c.argv, { stdout: stdout ?? "ignore" });
    if (stdout !== undefined) fs.closeSync(stdout);
    const code = await exited(client.child, 300_000, `${peer.name} client`);
    const wallMs = performance.now() - client.started;
    if (code !== 0) throw new Error(`${peer.name} client failed (${code})`);
    await exited(server.child, 20_000, `${peer.name} server`);
    await checkSize(out, size, peer.name);
    const ct = await timeReport(client.report);
    const sv = await timeReport(server.report);
    return {
      gibps: size / GIB / (wallMs / 1000),
      wallMs,
      serverKiB: sv.peakKiB,
      clientKiB: ct.peakKiB,
      clientCpuSec: ct.userSec + ct.sysSec,
      serverCpuSec: sv.userSec + sv.sysSec,
    };
  } finally {
    if (server.child.exitCode === null) {
      for (const pid of descendants(server.child.pid!)) tryKill(pid, "SIGKILL");
    }
  }
}

/**
 * iperf3 in reverse mode (the server sends, the client receives), `size`
 * bytes memory to memory; the rate is iperf3's own receiver figure, without
 * its start-up and control connection: the ceiling for one TCP stream.
 */
async function iperfTransfer(size: number): Promise<Transfer> {
  const port = await freePort();
  const server = spawnTimed(work(), [
    "iperf3",
    "-s",
    "-1",
    "-B",
    "127.0.0.1",
    "-p",
    String(port),
  ]);
  try {
    await waitListening(port, server.child, "iperf3 server");
    const client = spawnTimed(work(), [
      "iperf3",
      "-c",
      "127.0.0.1",
      "-p",
      String(port),
      "-R",
      "-n",
      String(size),
      "-J",
    ], { stdout: "pipe" });
    let out = "";
    client.child.stdout!.setEncoding("utf8").on(
      "data",
      (d: string) => (out += d),
    );
    const code = await exited(client.child, 300_000, "iperf3 client");
    const wallMs = performance.now() - client.started;
    if (code !== 0) throw new Error(`iperf3 client failed (${code}): ${out}`);
    await exited(server.child, 20_000, "iperf3 server");
    const result = JSON.parse(out) as {
      end: { sum_received: { bytes: number; seconds: number } };
    };
    const got = result.end.sum_received;
    if (got.bytes < size) {
      throw new Error(`iperf3 received ${got.bytes} of ${size} bytes`);
    }
    const ct = await timeReport(client.report);
    const sv = await timeReport(server.report);
    return {
      gibps: got.bytes / GIB / got.seconds,
      wallMs,
      serverKiB: sv.peakKiB,
      clientKiB: ct.peakKiB,
      clientCpuSec: ct.userSec + ct.sysSec,
      serverCpuSec: sv.userSec + sv.sysSec,
    };
  } finally {
    if (server.child.exitCode === null) {
      for (const pid of descendants(server.child.pid!)) tryKill(pid, "SIGKILL");
    }
  }
}

interface ThroughputRow {
  name: string;
  runs: Transfer[];
  /** Per round: GiB/s over socat's. */
  ratios: number[];
  /** Per round: GiB/s over iperf3's. */
  ceiling: number[];
}

const SOCAT_ROW = `socat -b ${SOCAT_BUFFER}`;
const IPERF_ROW = "iperf3 -R (memory to memory)";

async function benchGet(rounds: number, bigSize: number) {
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
    { name: IPERF_ROW, run: () => iperfTransfer(bigSize) },
  ];
  const rows: ThroughputRow[] = contenders.map((c) => ({
    name: c.name,
    runs: [],
    ratios: [],
    ceiling: [],
  }));
  for (let r = 0; r < rounds; r++) {
    const line: string[] = [];
    for (const [i, c] of contenders.entries()) {
      const t = await c.run();
      rows[i]!.runs.push(t);
      if (r === 0 && c.name !== IPERF_ROW) {
        await verifyContent(big, path.join(work(), "out", "big.bin"), c.name);
      }
      line.push(`${c.name} ${fmt(t.gibps)}`);
    }
    const socat = rows.find((row) => row.name === SOCAT_ROW)!.runs[r]!.gibps;
    const iperf = rows.find((row) => row.name === IPERF_ROW)!.runs[r]!.gibps;
    for (const row of rows) {
      row.ratios.push(row.runs[r]!.gibps / socat);
      row.ceiling.push(row.runs[r]!.gibps / iperf);
    }
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

/** 16 MiB and `bigSize` gets per runtime, interleaved. */
async function benchMemory(rounds: number, bigSize: number, big: boolean) {
  const small = path.join(work(), "root", "small.bin");
  const bigFile = path.join(work(), "root", "big.bin");
  const out: Record<string, { small: Transfer[]; big: Transfer[] }> = {};
  for (const f of flavors()) out[f.name] = { small: [], big: [] };
  for (let r = 0; r < rounds; r++) {
    for (const f of flavors()) {
      out[f.name]!.small.push(await moatTransfer(f, small, 16 * MIB));
      if (big) out[f.name]!.big.push(await moatTransfer(f, bigFile, bigSize));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// 4: chat round trips

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
        // The relay's round trip, not the per-peer chat rate limit (50
        // lines/s by default), which would bound one driver at 50 msgs/s.
        "--chat-rate",
        "0",
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
// 5: idle connections

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
    // Every connection comes from 127.0.0.1.
    "--max-conns-per-peer",
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
// 6: start-up

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
// ---------------------------------------------------------------------------
// 7: binary sizes

/** Size in bytes of each target's binary in dist/, building them if missing. */
function binarySizes(): Record<string, number> {
  const file = (t: string) =>
    path.join(DIST, `moat-${t}${t.startsWith("windows") ? ".exe" : ""}`);
  if (!TARGETS.every((t) => fs.existsSync(file(t)))) {
    log("building every target with scripts/build.sh");
    const r = sh("bash", [path.join(ROOT, "scripts", "build.sh")], 1_800_000);
    if (r.code !== 0) throw new Error(`build failed: ${r.out}`);
  }
  return Object.fromEntries(TARGETS.map((t) => [t, fs.statSync(file(t)).size]));
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

/**
 * Installs the peers the chosen sections drive (Debian packages), when
 * missing and running as root; otherwise says which to install. These are
 * bench-only peers: scripts/deps.sh lists what the tests need.
 */
function ensurePeers(sections: ReadonlySet<Section>): void {
  const need: string[] = [];
  const get = sections.has("get");
  if (!has("socat")) need.push("socat");
  if (get && !has("ncat")) need.push("ncat");
  if (get && !has("nc")) need.push("netcat-openbsd");
  if (get && !has("iperf3")) need.push("iperf3");
  if (sections.has("tls") && !has("openssl")) need.push("openssl");
  if (
    (sections.has("ship") || sections.has("syslog")) && !has("rsyslogd")
  ) need.push("rsyslog");
  if (!fs.existsSync(TIME)) need.push("time");
  if (!has("cmp")) need.push("diffutils");
  if (need.length === 0) return;
  if (process.getuid?.() !== 0 || !has("apt-get")) {
    throw new Error(
      `the bench needs: apt-get install ${need.join(" ")}`,
    );
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
    ncat: has("ncat")
      ? versionOf(["ncat", "--version"]).replace(
        /^Ncat: Version ([\d.]+).*$/,
        "ncat $1",
      )
      : "no ncat",
    iperf3: has("iperf3")
      ? versionOf(["iperf3", "--version"]).replace(/ \(.*$/, "")
      : "no iperf3",
  };
}

// ---------------------------------------------------------------------------
// Targets (issue 17)

interface Target {
  what: string;
  target: string;
  measured: string;
  holds: boolean | undefined;
}

function verdict(holds: boolean | undefined): string {
  return holds === undefined ? "not measured" : holds ? "holds" : "**misses**";
}

// ---------------------------------------------------------------------------
// Report

function parseOptions(argv: string[]) {
  const quick = argv.includes("--quick");
  const roundsAt = argv.indexOf("--rounds");
  const rounds = roundsAt !== -1
    ? Math.max(1, Number(argv[roundsAt + 1]))
    : quick
    ? 1
    : 5;
  const onlyAt = argv.indexOf("--only");
  const only = onlyAt !== -1 ? argv[onlyAt + 1]?.split(",") ?? [] : [];
  for (const s of only) {
    if (!(SECTIONS as readonly string[]).includes(s)) {
      throw new Error(
        `unknown section "${s}" (one of ${SECTIONS.join(", ")})`,
      );
    }
  }
  const sections = new Set<Section>(
    only.length > 0 ? only as Section[] : SECTIONS,
  );
  // The ship section's size: 2,000,000 lines a run by default; fewer keeps
  // a whole bench within a sitting (it runs some 25 contenders a round).
  const shipAt = argv.indexOf("--ship-lines");
  const shipLines = shipAt !== -1
    ? Math.max(10_000, Number(argv[shipAt + 1]))
    : quick
    ? 200_000
    : 2_000_000;
  if (!Number.isSafeInteger(shipLines)) {
    throw new Error(`--ship-lines needs a whole number of lines`);
  }
  return { quick, rounds, sections, shipLines };
}

async function main(argv: string[]): Promise<void> {
  const idle = argv.indexOf("--idle-client");
  if (idle !== -1) {
    return await idleClient(Number(argv[idle + 1]), Number(argv[idle + 2]));
  }
  const { quick, rounds, sections, shipLines } = parseOptions(argv);
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
  ensurePeers(sections);
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
  const sizeLabel = bigSize === GIB ? "1 GiB" : `${bigSize / MIB} MiB`;
  const parts: string[] = [];
  const targets: Target[] = [];
  const results: Record<string, unknown> = { environment: env };

  // 1. get, plain.
  let tp: ThroughputRow[] | undefined;
  if (sections.has("get")) {
    sampleLoad(`1. get, plain, ${sizeLabel}, ${rounds} rounds`);
    tp = await benchGet(rounds, bigSize);
    results.get = tp;
    parts.push(
      `**1. get, plain** — ${sizeLabel} from /dev/shm over 127.0.0.1 to a file in /dev/shm, ${rounds} rounds, ` +
        "contenders interleaved. GiB/s from the wall time of the receiving client process (moat: the whole `moat get`: " +
        "start-up, handshake, transfer, CRC-32 (or SHA-256) check, fsync, rename); iperf3 reports its own receiver rate " +
        "(memory to memory, no start-up). Ratios per round, then median (min–max). CPU: user + system seconds " +
        "per GiB of the receiving client and of the sending server, its start-up included (`/usr/bin/time -v`).",
      "",
      table(
        [
          "sender → receiver",
          "GiB/s median (min–max)",
          "× socat",
          "× iperf3",
          "slowest / median round",
          "CPU s/GiB client / server",
          "peak RSS server / client MiB",
        ],
        tp.map((row) => {
          const g = row.runs.map((t) => t.gibps);
          return [
            row.name,
            spread(g),
            spread(row.ratios),
            spread(row.ceiling),
            fmt(median(g) / Math.min(...g)),
            `${
              fmt(median(row.runs.map((t) => t.clientCpuSec / (bigSize / GIB))))
            } / ${
              fmt(median(row.runs.map((t) => t.serverCpuSec / (bigSize / GIB))))
            }`,
            `${mib(median(row.runs.map((t) => t.serverKiB)))} / ${
              mib(median(row.runs.map((t) => t.clientKiB)))
            }`,
          ];
        }),
      ),
      "",
    );
    for (const name of ["moat binary", "moat on Bun", "moat on Deno"]) {
      const row = tp.find((r) => r.name === name)!;
      targets.push({
        what: `get, plain: ${name}`,
        target: "≥ 1.00× socat",
        measured: `${fmt(median(row.ratios))}× (${
          fmt(median(row.ceiling))
        }× iperf3)`,
        holds: median(row.ratios) >= 1,
      });
    }
  }

  // 2. memory.
  if (sections.has("memory")) {
    sampleLoad("2. memory, 16 MiB and the big get");
    const mem = await benchMemory(quick ? 1 : 3, bigSize, tp === undefined);
    results.memory = mem;
    const rows = flavors().map((f) => {
      const small = mem[f.name]!.small;
      const bigRuns = tp?.find((row) => row.name === f.name)?.runs ??
        mem[f.name]!.big;
      const s = median(small.map((t) => t.clientKiB));
      const b = median(bigRuns.map((t) => t.clientKiB));
      const worst = Math.max(...bigRuns.map((t) => t.clientKiB));
      return { f, small, bigRuns, s, b, worst };
    });
    parts.push(
      `**2. Memory** — peak RSS (\`/usr/bin/time -v\`) of the receiving \`moat get\` and of the server, 16 MiB and ${sizeLabel}, medians (client: largest of the ${sizeLabel} rounds too).`,
      "",
      table(
        [
          "moat",
          "client 16 MiB",
          `client ${sizeLabel} (largest)`,
          `client ${sizeLabel} / 16 MiB`,
          "server 16 MiB",
          `server ${sizeLabel}`,
        ],
        rows.map(({ f, small, bigRuns, s, b, worst }) => [
          f.name,
          `${mib(s)} MiB`,
          `${mib(b)} MiB (${mib(worst)})`,
          fmt(b / s),
          `${mib(median(small.map((t) => t.serverKiB)))} MiB`,
          `${mib(median(bigRuns.map((t) => t.serverKiB)))} MiB`,
        ]),
      ),
      "",
    );
    for (const { f, s, b } of rows) {
      targets.push({
        what: `get, receiving peak RSS: ${f.name}`,
        target: `≤ 64 MiB, ${sizeLabel} within 10% of 16 MiB`,
        measured: `${mib(s)} → ${mib(b)} MiB (${fmt(b / s)}×)`,
        holds: b <= 64 * 1024 && b / s <= 1.1,
      });
    }
  }

  // 3. TLS.
  if (sections.has("tls")) {
    const tlsRounds = quick ? 1 : 3;
    sampleLoad(`3. get over TLS 1.3, ${sizeLabel}, ${tlsRounds} rounds`);
    const tls = await benchTls({
      dir: work(),
      file: path.join(work(), "root", "big.bin"),
      size: bigSize,
      rounds: tlsRounds,
      flavors: flavors(),
      log,
    });
    results.tls = tls.rows;
    parts.push(
      `**3. get over TLS 1.3** — ${sizeLabel}, /dev/shm to /dev/shm, ${tlsRounds} rounds, \`moat get --tls --pin\` ` +
        "against `socat OPENSSL-LISTEN` → `socat OPENSSL` (TLS 1.3 only); each moat against the socat of the suite it " +
        "negotiated (read off its ServerHello), in the same round.",
      "",
      tls.markdown,
      "",
    );
    for (const name of ["moat binary", "moat on Deno"]) {
      const row = tls.rows.find((r: TlsRow) => r.name === name)!;
      targets.push({
        what: `get, TLS: ${name}`,
        target: "≥ 0.90× socat OPENSSL, same suite",
        measured: `${fmt(median(row.ratios))}× (${row.suite})`,
        holds: median(row.ratios) >= 0.9,
      });
    }
  }

  // 4. chat.
  if (sections.has("chat")) {
    sampleLoad("4. chat round trips");
    const chat = await benchChat(quick ? 1 : 3);
    results.chat = Object.fromEntries(
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
    );
    parts.push(
      `**4. Chat round trips** — ${LINE_BYTES}-byte lines over one connection, ` +
        `${CHAT_TRIPS.toLocaleString("en-US")} round trips or ${
          CHAT_LIMIT_MS / 1000
        } s after ${CHAT_WARMUP} warm-up trips; ` +
        "one plain-text driver (Bun `node:net`) for all; moat answers with `--reply` (plain-text mode), socat echoes with `PIPE`.",
      "",
      table(
        [
          "echo server",
          "msgs/s median (min–max)",
          "p50 µs",
          "p99 µs",
          "round trips × rounds",
        ],
        Object.entries(chat).map(([name, runs]) => {
          const all = Float64Array.from(
            runs.flatMap((r) => [...r.latenciesUs]),
          ).sort();
          return [
            name,
            spread(runs.map((r) => r.msgsPerSec), 0),
            fmt(percentile(all, 0.5), 1),
            fmt(percentile(all, 0.99), 1),
            `${runs.map((r) => r.trips).join(", ")}`,
          ];
        }),
      ),
      "",
    );
  }

  // 5. idle connections.
  if (sections.has("idle")) {
    sampleLoad("5. idle connections");
    const idleRes = await benchIdle();
    results.idle = idleRes;
    parts.push(
      "**5. Idle connections** — server RSS with N connections open, 2.5 s after the last (`--max-conns 20000`).",
      "",
      table(
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
      ),
      "",
    );
  }

  // 6. start-up.
  let variants: { name: string; argv: string[] }[] = [];
  if (sections.has("startup")) {
    sampleLoad("6. start-up");
    variants = [
      { name: "dist/moat-linux-x64", argv: [MOAT_BIN] },
      { name: "binary, no --bytecode", argv: [buildVariant(false)] },
      { name: "moat on Deno", argv: [DENO, "run", "-A", MAIN] },
      { name: "moat on Bun", argv: [BUN, MAIN] },
    ];
    const startup = await benchStartup(quick ? 3 : 20, variants);
    results.startupMs = startup;
    parts.push(
      "**6. Start-up** — spawn to the `listening` audit line, `moat serve --port 0`; " +
        `${startup[variants[0]!.name]!.length} runs each, interleaved.`,
      "",
      table(
        ["moat serve", "start-up to listening, ms: median (min–max)"],
        Object.entries(startup).map(([name, ms]) => [name, spread(ms, 1)]),
      ),
      "",
    );
    const bin = startup["dist/moat-linux-x64"]!;
    targets.push({
      what: "start-up of the binary to a listening socket",
      target: "≤ 25 ms",
      measured: `${fmt(median(bin), 1)} ms median`,
      holds: median(bin) <= 25,
    });
  }

  // 7. sizes.
  if (sections.has("size")) {
    sampleLoad("7. binary sizes");
    const sizes = binarySizes();
    results.sizes = sizes;
    const noBytecode = variants.find((v) => v.name.includes("no --bytecode"))
      ?.argv[0];
    parts.push(
      "**7. Binary size** — `scripts/build.sh` (`bun build --compile --minify --bytecode`), per target.",
      "",
      table(
        ["target", "MiB"],
        [
          ...Object.entries(sizes).map(([t, b]) => [t, fmt(b / MIB, 1)]),
          ...(noBytecode
            ? [[
              "linux-x64 without --bytecode",
              fmt(fs.statSync(noBytecode).size / MIB, 1),
            ]]
            : []),
        ],
      ),
      "",
    );
  }

  // 8. ship.
  if (sections.has("ship")) {
    sampleLoad("8. shipping into a vault");
    const ship: ShipBenchResult = await benchShip({
      lines: shipLines,
      rounds: quick ? 1 : 3,
      follow: !quick,
      out: null,
      log,
    });
    results.ship = ship.json;
    parts.push("**8. Shipping**", "", ship.markdown, "");
    const shipped = ship.json.contenders as {
      id: string;
      medianLinesPerSec: number | null;
      ratioToRsyslogDefaults: number | null;
    }[];
    for (
      const [id, name, goal] of [
        ["binary-1", "moat binary, one shipper", 300_000],
        ["bun-1", "moat on Bun, one shipper", 300_000],
        ["deno-1", "moat on Deno, one shipper", 200_000],
        ["binary-gen-10", "fan-in, moat binary, 10 sources", 400_000],
        ["binary-gen-100", "fan-in, moat binary, 100 sources", 400_000],
      ] as const
    ) {
      const c = shipped.find((c) => c.id === id);
      const rate = c?.medianLinesPerSec ?? NaN;
      const vs = c?.ratioToRsyslogDefaults ?? NaN;
      targets.push({
        what: `ship: ${name}`,
        target: `≥ ${goal.toLocaleString("en-US")} acknowledged lines/s`,
        measured: Number.isFinite(rate)
          ? `${Math.round(rate).toLocaleString("en-US")}/s (${
            fmt(vs)
          }× rsyslog without fsync)`
          : "—",
        holds: Number.isFinite(rate) ? rate >= goal : undefined,
      });
    }
  }

  // 9. syslog.
  if (sections.has("syslog")) {
    sampleLoad("9. syslog ingest");
    const messages = quick ? 100_000 : 500_000;
    const syslogRounds = quick ? 1 : 3;
    const dir = fs.existsSync("/var/tmp") ? "/var/tmp" : "/tmp";
    const syslog = await benchSyslog({
      dir,
      messages,
      rounds: syslogRounds,
      flavors: flavors(),
      rsyslog: has("rsyslogd"),
      log,
    });
    results.syslog = syslog.rows;
    parts.push(
      `**9. Syslog ingest** — ${
        messages.toLocaleString("en-US")
      } RFC 5424 messages of 120 bytes on one TCP connection, ${syslogRounds} rounds, into a vault on ${dir} ` +
        "(moat: every record fsync'd before `syslog_finished`) or rsyslog imtcp → omfile (the ship bench's tuned configuration), " +
        "clock from connect until every record is stored.",
      "",
      syslog.markdown,
      "",
    );
    for (const name of ["moat binary", "moat on Bun", "moat on Deno"]) {
      const row = syslog.rows.find((r: SyslogRow) => r.name.startsWith(name));
      if (!row) continue;
      targets.push({
        what: `syslog ingest: ${name}`,
        target: "≥ 1.00× rsyslog imtcp → omfile",
        measured: `${fmt(median(row.ratios.nofsync))}× (no fsync), ${
          fmt(median(row.ratios.sync))
        }× (sync="on")`,
        holds: median(row.ratios.sync) >= 1,
      });
    }
  }

  sampleLoad("done");
  const minutes = (performance.now() - began) / 60_000;
  const header =
    `Measured ${
      env.date.slice(0, 16).replace("T", " ")
    } UTC on ${env.cpus} × ${env.cpu}, Linux ${env.kernel}; ` +
    `${env.moat}, ${
      env.deno.split("\n")[0]
    }, Bun ${env.bun}, ${env.socat}, ${env.ncat}, ${env.iperf3}. ` +
    `All on 127.0.0.1; contenders interleaved; ${fmt(minutes, 1)} min; ` +
    `1-min load average ${fmt(Math.min(...loads))}–${
      fmt(Math.max(...loads))
    } on ${env.cpus} CPUs (sampled at each section: ${
      loads.map((l) => fmt(l)).join(", ")
    }).`;
  const summary = table(
    ["target (issue 17)", "wanted", "measured", ""],
    targets.map((t) => [t.what, t.target, t.measured, verdict(t.holds)]),
  );
  const report = [header, "", ...parts, "**Targets**", "", summary, ""].join(
    "\n",
  );
  console.log(report);
  results.minutes = minutes;
  results.loadAverages = loads;
  results.targets = targets;
  results.markdown = report;
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
