/**
 * Hostile peers for a running `moat serve`, shared by
 * `tests/e2e_hostile_test.ts` (short runs) and `soak/main.ts` (long runs):
 * handshake fuzzing, floods from refused addresses, slow clients, syslog
 * senders writing as fast as the server takes it, and checks on the audit
 * log; and, for `tests/e2e_fd_test.ts` and the soak's descriptor rows, a
 * server's descriptor limit, the peers and shippers that exhaust it, and its
 * exhaustion episodes. Everything talks to loopback only, and every loop is
 * bounded in count and time.
 *
 * @module
 */

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import * as tls from "node:tls";
import { encodeFrame, encodeHeader } from "../lib/framer.ts";
import {
  decodeError,
  decodeShipReady,
  encodePreamble,
  encodeShipBatch,
  Kind,
} from "../lib/protocol.ts";
import { prng } from "./framer_fuzz.ts";
import { concatBytes } from "../tests/_test_utils.ts";
import { presencePattern, runMoat, spawnMoat } from "../tests/_e2e.ts";
import { openSession } from "../lib/client.ts";
import { getNet } from "../lib/net/mod.ts";
import { VERSION } from "../lib/version.ts";

const enc = new TextEncoder();

/** One hostile opening of a connection. */
export interface HandshakeCase {
  /** Which generator made it. */
  kind: string;
  /** Bytes to send, one write each. */
  parts: Uint8Array[];
  /** Pause between writes, in milliseconds. */
  gapMs: number;
  /** Half-close after the last write, so the server reads EOF. */
  end: boolean;
}

function latin1(bytes: Uint8Array): string {
  return String.fromCharCode(...bytes);
}

function frame(type: number, payload: Uint8Array | string): Uint8Array {
  const body = typeof payload === "string" ? enc.encode(payload) : payload;
  const out = new Uint8Array(5 + body.length);
  encodeHeader(type, body.length, out);
  out.set(body, 5);
  return out;
}

function rawHeader(type: number, length: number): Uint8Array {
  return Uint8Array.of(
    type,
    length >>> 24,
    (length >>> 16) & 255,
    (length >>> 8) & 255,
    length & 255,
  );
}

function hello(
  mode: string,
  maxFrameSize: number | string = 1_048_576,
): Uint8Array {
  return frame(
    Kind.Hello,
    `{"client":"moat/fuzz","mode":"${mode}","maxFrameSize":${maxFrameSize}}`,
  );
}

const HOSTILE_HELLOS = [
  "",
  "{",
  "null",
  "[]",
  '"get"',
  "1e999",
  "{}",
  '{"mode":"admin","client":"x","maxFrameSize":1}',
  '{"mode":"get","client":1,"maxFrameSize":1}',
  '{"mode":"get","client":"x","maxFrameSize":-1}',
  '{"mode":"get","client":"x","maxFrameSize":1.5}',
  '{"mode":"get","client":"x","maxFrameSize":1e308}',
  '{"mode":"get","client":"x","maxFrameSize":"1"}',
  '{"mode":"get","client":"x"}',
  '{"mode":"get\\u0000","client":"x","maxFrameSize":1}',
  '{"mode":"chat","mode":"get","client":"x","maxFrameSize":65536}',
  '{"__proto__":{"mode":"get","client":"x","maxFrameSize":1}}',
  '{"constructor":{"prototype":{"mode":"get"}},"client":"x"}',
  '{"mode":"get","client":"\\ud800","maxFrameSize":1}',
  '{"mode":"chat","client":"\\u001b[2J\\r\\n{\\"event\\":\\"forged\\"}","maxFrameSize":1024}',
];

const HOSTILE_GETS = [
  '{"path":"../../etc/passwd","offset":0}',
  '{"path":"/etc/passwd","offset":0}',
  '{"path":"small.txt","offset":-1}',
  '{"path":"small.txt","offset":1e20}',
  '{"path":"small.txt","offset":"0"}',
  '{"path":"small.txt","offset":99999}',
  '{"path":"small.txt","offset":5}',
  '{"path":"small.txt","offset":0}',
  '{"path":"small.txt"}',
  '{"path":["small.txt"],"offset":0}',
  '{"path":"small.txt\\u0000.png","offset":0}',
  '{"path":"sm\\u001b[2Jall.txt\\r\\n","offset":0}',
  '{"path":"' + "a/".repeat(3000) + 'b","offset":0}',
  '{"path":"%2e%2e/%2e%2e/etc/passwd","offset":0}',
  '{"path":"sub","offset":0}',
  "not json",
];

/** Applies a few byte-level mutations. */
function mutateBytes(
  rand: (n: number) => number,
  input: Uint8Array,
): Uint8Array {
  let bytes = input.slice();
  for (let r = rand(3) + 1; r > 0; r--) {
    const n = bytes.length;
    if (n === 0) break;
    switch (rand(4)) {
      case 0:
        bytes[rand(n)]! ^= 1 << rand(8);
        break;
      case 1:
        bytes = bytes.subarray(0, rand(n) + 1);
        break;
      case 2:
        bytes[rand(n)] = rand(2) ? 0xff : 0;
        break;
      default: {
        const at = rand(n + 1);
        const out = new Uint8Array(n + 4);
        out.set(bytes.subarray(0, at));
        for (let i = 0; i < 4; i++) out[at + i] = rand(256);
        out.set(bytes.subarray(at), at + 4);
        bytes = out;
      }
    }
  }
  return bytes;
}

/**
 * Builds hostile opening number `index` of the run seeded with `seed`.
 *
 * @param seed The run's seed.
 * @param index The case number.
 * @returns What to send and how.
 */
export function handshakeCase(seed: number, index: number): HandshakeCase {
  const rand = prng((seed ^ Math.imul(index + 1, 0x85eb_ca6b)) >>> 0);
  const pre = encodePreamble();
  let kind: string;
  let bytes: Uint8Array;
  switch (rand(14)) {
    case 0: {
      kind = "random-bytes";
      bytes = new Uint8Array(rand(64) + 1);
      for (let i = 0; i < bytes.length; i++) bytes[i] = rand(256);
      break;
    }
    case 1: {
      kind = "magic-then-junk";
      bytes = new Uint8Array(rand(24) + 1);
      for (let i = 0; i < bytes.length; i++) bytes[i] = rand(256);
      bytes[0] = 0x89;
      if (rand(2)) {
        bytes.set(pre.subarray(0, Math.min(bytes.length, rand(7) + 1)));
      }
      break;
    }
    case 2:
      kind = "bad-version";
      bytes = concatBytes([
        pre.subarray(0, 7),
        Uint8Array.of([0, 2, 3, 127, 255][rand(5)]!),
        hello("get"),
      ]);
      break;
    case 3: {
      kind = "boundary-length";
      const lengths = [
        0,
        1,
        1_048_576,
        1_048_577,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_fffe,
        0xffff_ffff,
      ];
      bytes = concatBytes([
        pre,
        rawHeader(rand(256), lengths[rand(lengths.length)]!),
        new Uint8Array(rand(32)),
      ]);
      break;
    }
    case 4:
      kind = "hostile-hello";
      bytes = concatBytes([
        pre,
        frame(Kind.Hello, HOSTILE_HELLOS[rand(HOSTILE_HELLOS.length)]!),
      ]);
      break;
    case 5: {
      kind = "deep-json-hello";
      const depth = [1000, 50_000, 200_000, 500_000][rand(4)]!;
      const open = rand(2) ? "[" : '{"a":';
      const close = open === "[" ? "]" : "}";
      bytes = concatBytes([
        pre,
        frame(Kind.Hello, open.repeat(depth) + "1" + close.repeat(depth)),
      ]);
      break;
    }
    case 6:
      kind = "wrong-first-frame";
      bytes = concatBytes([
        pre,
        frame(
          [Kind.Chat, Kind.Get, Kind.Error, Kind.Welcome, 0x7f, 0xff][rand(6)]!,
          "{}",
        ),
      ]);
      break;
    case 7: {
      kind = "hostile-get";
      const gets = [];
      for (let i = rand(3) + 1; i > 0; i--) {
        gets.push(frame(Kind.Get, HOSTILE_GETS[rand(HOSTILE_GETS.length)]!));
      }
      bytes = concatBytes([
        pre,
        hello("get", [0, 1, 7, 1024, 1_048_576][rand(5)]!),
        ...gets,
      ]);
      break;
    }
    case 8: {
      kind = "hostile-chat";
      const lines = [];
      for (let i = rand(4) + 1; i > 0; i--) {
        const type = rand(6) === 0 ? Kind.Get : Kind.Chat;
        const body = new Uint8Array(rand(8) === 0 ? 9000 : rand(40));
        for (let j = 0; j < body.length; j++) body[j] = rand(256);
        lines.push(frame(type, body));
      }
      bytes = concatBytes([pre, hello("chat"), ...lines]);
      break;
    }
    case 9: {
      kind = "plain-line";
      const text = [
        "hello\n",
        "\x1b[2J\r\n",
        "FILE:small.txt\n",
        "FILE:../../etc/passwd\n",
        "FILE:\n",
        "\n\n\n",
        "x".repeat(9000),
      ][rand(7)]!;
      bytes = enc.encode(text);
      break;
    }
    case 10:
      kind = "mutated-handshake";
      bytes = mutateBytes(
        rand,
        concatBytes([
          pre,
          hello(rand(2) ? "get" : "chat"),
          frame(Kind.Get, HOSTILE_GETS[7]!),
        ]),
      );
      break;
    case 11:
      kind = "preamble-only";
      bytes = pre.subarray(0, rand(8) + 1);
      break;
    default:
      kind = "valid";
      bytes = concatBytes([pre, hello(rand(2) ? "get" : "chat")]);
      if (rand(2)) {
        bytes = concatBytes([bytes, frame(Kind.Get, HOSTILE_GETS[7]!)]);
      }
  }
  // Split into up to 4 writes.
  const parts: Uint8Array[] = [];
  const pieces = bytes.length > 1 ? rand(4) + 1 : 1;
  const cuts = new Set<number>();
  for (let i = 1; i < pieces; i++) cuts.add(rand(bytes.length - 1) + 1);
  let start = 0;
  for (const cut of [...cuts].sort((a, b) => a - b)) {
    parts.push(bytes.subarray(start, cut));
    start = cut;
  }
  parts.push(bytes.subarray(start));
  return {
    kind,
    parts,
    gapMs: rand(5) === 0 ? rand(30) : 0,
    end: rand(10) !== 0,
  };
}

/** What happened to one probe connection. */
export interface ProbeResult {
  /** Milliseconds from connect to the first byte received, if any. */
  answeredMs: number | undefined;
  /** Milliseconds from connect to the server closing, if it did. */
  closedMs: number | undefined;
  /** Bytes received (counted up to the point the probe gave up). */
  bytes: number;
  /** The first bytes received, as latin1 text (up to 200). */
  head: string;
  /** A socket error, if any (a reset counts as a close). */
  error: string | undefined;
}

/** Options for {@linkcode probe}. */
export interface ProbeOptions {
  port: number;
  /** Source address. @default {"127.0.0.1"} */
  localAddress?: string;
  /** Give up after this long. */
  timeoutMs: number;
  /** Stop as soon as the server answers, without waiting for its close. */
  untilAnswer?: boolean;
}

/**
 * Opens one connection, sends `c`, and watches for an answer and a close.
 *
 * @param c What to send.
 * @param options Port, source address and time limit.
 * @returns What the server did.
 */
export function probe(
  c: HandshakeCase,
  options: ProbeOptions,
): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const result: ProbeResult = {
      answeredMs: undefined,
      closedMs: undefined,
      bytes: 0,
      head: "",
      error: undefined,
    };
    const sock = net.connect({
      port: options.port,
      host: "127.0.0.1",
      localAddress: options.localAddress ?? "127.0.0.1",
    });
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(result);
    };
    const timer = setTimeout(finish, options.timeoutMs);
    sock.on("data", (d: Uint8Array) => {
      result.answeredMs ??= performance.now() - t0;
      if (result.head.length < 200) {
        result.head += latin1(d.subarray(0, 200 - result.head.length));
      }
      result.bytes += d.length;
      if (options.untilAnswer || result.bytes > 1 << 20) finish();
    });
    sock.on("error", (e: Error & { code?: string }) => {
      result.error = e.code ?? e.message;
    });
    sock.on("close", () => {
      result.closedMs = performance.now() - t0;
      finish();
    });
    sock.on("connect", async () => {
      for (let i = 0; i < c.parts.length && !done; i++) {
        if (i > 0 && c.gapMs > 0) {
          await new Promise((r) => setTimeout(r, c.gapMs));
        }
        if (done) return;
        sock.write(c.parts[i]!);
      }
      if (c.end && !done) sock.end();
    });
  });
}

/**
 * Runs `fn` over `items` with at most `limit` calls in flight.
 *
 * @param items The inputs.
 * @param limit Most calls at once.
 * @param fn The work.
 * @returns The results, in input order.
 */
export async function pool<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!, i);
    }
  }
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, worker),
  );
  return results;
}

/** Totals of {@linkcode fuzzHandshake}. */
export interface HandshakeFuzzStats {
  cases: number;
  /** Answered with at least one byte. */
  answered: number;
  /** Closed by the server without a byte. */
  closedSilently: number;
  /** Neither answered nor closed in time: findings. */
  silent: { index: number; kind: string; hex: string }[];
  /** Half-closed by us but never closed by the server in time: findings. */
  lingering: { index: number; kind: string }[];
  /** Cases per kind. */
  kinds: Record<string, number>;
  ms: number;
}

/** Options for {@linkcode fuzzHandshake}. */
export interface HandshakeFuzzOptions {
  port: number;
  seed: number;
  cases: number;
  /** Connections in flight. @default {48} */
  concurrency?: number;
  /** A probe gives up after this long. */
  timeoutMs: number;
  /** Stop starting new probes after this long. */
  timeLimitMs?: number;
}

/**
 * Sends `cases` hostile openings to a server and checks that each one is
 * answered or closed, and that each half-closed one is closed.
 *
 * @param options Port, seed, count and limits.
 * @returns The totals and the findings.
 */
export async function fuzzHandshake(
  options: HandshakeFuzzOptions,
): Promise<HandshakeFuzzStats> {
  const started = performance.now();
  const stats: HandshakeFuzzStats = {
    cases: 0,
    answered: 0,
    closedSilently: 0,
    silent: [],
    lingering: [],
    kinds: {},
    ms: 0,
  };
  const indexes = Array.from({ length: options.cases }, (_, i) => i);
  const deadline = started + (options.timeLimitMs ?? Infinity);
  await pool(indexes, options.concurrency ?? 48, async (i) => {
    if (performance.now() > deadline) return;
    const c = handshakeCase(options.seed, i);
    const r = await probe(c, {
      port: options.port,
      timeoutMs: options.timeoutMs,
    });
    stats.cases++;
    stats.kinds[c.kind] = (stats.kinds[c.kind] ?? 0) + 1;
    if (r.answeredMs !== undefined) stats.answered++;
    else if (r.closedMs !== undefined) stats.closedSilently++;
    else {
      stats.silent.push({
        index: i,
        kind: c.kind,
        hex: concatBytes(c.parts).subarray(0, 64).toHex(),
      });
    }
    if (c.end && r.closedMs === undefined && r.bytes <= 1 << 20) {
      stats.lingering.push({ index: i, kind: c.kind });
    }
  });
  stats.ms = performance.now() - started;
  return stats;
}

/** Totals of {@linkcode refusedFlood}. */
export interface FloodStats {
  /** Connections attempted. */
  attempted: number;
  /** Connections that read the refusal notice. */
  refusedNotice: number;
  /** Connections closed or reset without the notice. */
  closedOther: number;
  /** Connections that failed to connect at all (e.g. no free local port). */
  connectErrors: number;
  /** Connections still open when the flood ended (destroyed then). */
  unfinished: number;
  /** Anything other than a refusal: findings (first 10). */
  unexpected: string[];
  /** Attempts per second achieved (over the longer of the planned and actual time). */
  rate: number;
  ms: number;
  /** CPU time the generator used, when it can tell (soak/flood.c does). */
  cpuMs?: number;
}

/** Options for {@linkcode refusedFlood}. */
export interface FloodOptions {
  port: number;
  /** Connection attempts per second. */
  rate: number;
  durationMs: number;
  /** Source addresses are 127.0.X.Y from `first` (2) on, over `hosts` addresses. */
  hosts?: number;
  /** Most connections open at once. @default {4000} */
  maxInFlight?: number;
  /**
   * How far past `durationMs` attempts may go on when the generator fell
   * behind its rate; after that the flood stops short. @default {0}
   */
  overrunMs?: number;
  /** Most time for the last connections to finish, in milliseconds. @default {3000} */
  drainMs?: number;
  /**
   * A compiled `soak/flood.c` ({@linkcode buildFloodGenerator}) to generate
   * the flood with, instead of node:net in this process.
   */
  generator?: string;
}

/**
 * Compiles `soak/flood.c` with `cc -O2` into a temporary folder.
 *
 * @returns The executable, or undefined when there is no C compiler (the
 * caller then floods with node:net, which costs ~3× the CPU per connection).
 */
export function buildFloodGenerator(): string | undefined {
  const source = path.join(import.meta.dirname ?? ".", "flood.c");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-flood-"));
  const out = path.join(dir, "flood");
  const r = spawnSync("cc", ["-O2", "-o", out, source], {
    encoding: "utf8",
    timeout: 60_000,
  });
  if (r.status !== 0) {
    fs.rmSync(dir, { recursive: true, force: true });
    return undefined;
  }
  return out;
}

/** Runs a compiled flood generator; its one JSON line is the totals. */
function nativeFlood(
  generator: string,
  options: FloodOptions,
): Promise<FloodStats> {
  const args = [
    options.port,
    options.rate,
    options.durationMs,
    options.hosts ?? 253,
    options.maxInFlight ?? 4000,
    options.drainMs ?? 3000,
  ].map(String);
  const child = spawn(generator, args, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (err += d));
  const limit = options.durationMs + (options.drainMs ?? 3000) + 10_000;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`flood generator did not finish within ${limit} ms`));
    }, limit);
    child.on("close", (code) => {
      clearTimeout(timer);
      if (code !== 0) {
        return reject(
          new Error(`flood generator exited ${code}: ${err.trim()}`),
        );
      }
      try {
        const stats = JSON.parse(out) as FloodStats;
        // The C generator replaces unprintable bytes by "?"; keep them quoted like the JS one.
        stats.unexpected = stats.unexpected.map((x) => JSON.stringify(x));
        resolve(stats);
      } catch {
        reject(
          new Error(
            `flood generator printed ${JSON.stringify(out.slice(0, 200))}`,
          ),
        );
      }
    });
  });
}

/** The `i`-th refused source address: 127.0.0.2 and up, skipping .0/.1/.255. */
export function refusedAddress(i: number): string {
  const n = i % (250 * 200);
  return `127.0.${Math.floor(n / 250)}.${(n % 250) + 2}`;
}

/**
 * Opens connections from refused source addresses at a steady rate; each one
 * must get the one-line refusal (or a close) and nothing else.
 *
 * @param options Port, rate, duration and limits.
 * @returns The totals.
 */
export function refusedFlood(options: FloodOptions): Promise<FloodStats> {
  if (options.generator !== undefined) {
    return nativeFlood(options.generator, options);
  }
  const hosts = options.hosts ?? 253;
  const maxInFlight = options.maxInFlight ?? 4000;
  const stats: FloodStats = {
    attempted: 0,
    refusedNotice: 0,
    closedOther: 0,
    connectErrors: 0,
    unfinished: 0,
    unexpected: [],
    rate: 0,
    ms: 0,
  };
  const open = new Set<net.Socket>();
  const started = performance.now();
  const tickMs = 10;
  const total = Math.round((options.rate * options.durationMs) / 1000);
  return new Promise((resolve) => {
    const tick = setInterval(() => {
      const elapsed = performance.now() - started;
      // Catch up on ticks lost to a busy event loop; never exceed the total.
      const due = Math.min(total, Math.floor((options.rate * elapsed) / 1000));
      while (stats.attempted < due && open.size < maxInFlight) {
        const i = stats.attempted++;
        const sock = net.connect({
          port: options.port,
          host: "127.0.0.1",
          localAddress: refusedAddress(i % hosts),
        });
        open.add(sock);
        let text = "";
        let connected = false;
        sock.on("connect", () => (connected = true));
        sock.on("data", (d: Uint8Array) => {
          if (text.length < 200) text += latin1(d.subarray(0, 200));
        });
        sock.on("error", () => {});
        sock.on("close", () => {
          open.delete(sock);
          if (!connected) stats.connectErrors++;
          else if (text.startsWith("ERR ACCESS_DENIED ")) {
            stats.refusedNotice++;
            if (
              text !== "ERR ACCESS_DENIED access refused by server\n" &&
              stats.unexpected.length < 10
            ) {
              stats.unexpected.push(JSON.stringify(text.slice(0, 100)));
            }
          } else if (text === "") stats.closedOther++;
          else if (stats.unexpected.length < 10) {
            stats.unexpected.push(JSON.stringify(text.slice(0, 100)));
          }
        });
      }
      if (
        stats.attempted >= total ||
        elapsed >= options.durationMs + (options.overrunMs ?? 0)
      ) {
        clearInterval(tick);
        const attemptedMs = performance.now() - started;
        const drainEnd = Date.now() + (options.drainMs ?? 3000);
        const drain = setInterval(() => {
          if (open.size > 0 && Date.now() < drainEnd) return;
          clearInterval(drain);
          stats.unfinished = open.size;
          for (const s of open) s.destroy();
          stats.ms = performance.now() - started;
          stats.rate = stats.attempted /
            (Math.max(attemptedMs, options.durationMs) / 1000);
          resolve(stats);
        }, 20);
      }
    }, tickMs);
  });
}

/** Totals of {@linkcode slowClients}. */
export interface SlowStats {
  clients: number;
  /** Clients the server closed. */
  closed: number;
  /** Clients still open when the run gave up: findings. */
  held: number;
  /** Clients that never connected. */
  connectErrors: number;
  /** Milliseconds from connect to close, sorted. */
  closeMs: number[];
  /** Handshake bytes sent in all. */
  bytesSent: number;
}

/** Options for {@linkcode slowClients}. */
export interface SlowOptions {
  port: number;
  clients: number;
  /** One byte per this many milliseconds. @default {1000} */
  intervalMs?: number;
  /** Spread the connects over this many milliseconds. @default {0} */
  rampMs?: number;
  /** Give up on a client still open after this long. */
  giveUpMs: number;
}

/**
 * Opens `clients` connections that trickle a valid handshake (preamble, then
 * a hello) one byte per interval, and measures when the server closes each.
 *
 * @param options Port, count, pace and limit.
 * @returns When each client was closed.
 */
export async function slowClients(options: SlowOptions): Promise<SlowStats> {
  const interval = options.intervalMs ?? 1000;
  const wire = concatBytes([encodePreamble(), hello("get")]);
  const stats: SlowStats = {
    clients: options.clients,
    closed: 0,
    held: 0,
    connectErrors: 0,
    closeMs: [],
    bytesSent: 0,
  };
  const one = (i: number) =>
    new Promise<void>((resolve) => {
      setTimeout(() => {
        const t0 = performance.now();
        let connected = false;
        let sent = 0;
        let timer: ReturnType<typeof setInterval> | undefined;
        const sock = net.connect({ port: options.port, host: "127.0.0.1" });
        const giveUp = setTimeout(() => {
          stats.held++;
          sock.destroy();
        }, options.giveUpMs);
        const drip = () => {
          if (sent < wire.length) {
            sock.write(wire.subarray(sent, sent + 1));
            sent++;
            stats.bytesSent++;
          }
        };
        sock.on("connect", () => {
          connected = true;
          drip();
          timer = setInterval(drip, interval);
        });
        sock.on("data", () => {});
        sock.on("error", () => {});
        sock.on("close", () => {
          clearInterval(timer);
          clearTimeout(giveUp);
          if (!connected) stats.connectErrors++;
          else if (
            sock.destroyed && performance.now() - t0 >= options.giveUpMs
          ) {
            // Given up on; counted as held.
          } else {
            stats.closed++;
            stats.closeMs.push(performance.now() - t0);
          }
          resolve();
        });
      }, options.rampMs ? (i * options.rampMs) / options.clients : 0);
    });
  await Promise.all(Array.from({ length: options.clients }, (_, i) => one(i)));
  stats.closeMs.sort((a, b) => a - b);
  return stats;
}

/** Totals of {@linkcode syslogFlood}. */
export interface SyslogFloodStats {
  /** Connections that connected. */
  connected: number;
  /** Connections that failed to connect. */
  connectErrors: number;
  /** Messages written, all connections together. */
  messages: number;
  /** Bytes written, all connections together. */
  bytes: number;
  /** Connections the server closed after reading all they sent. */
  closed: number;
  /** Connections closed or reset before they were done sending: findings. */
  cutShort: number;
  /** Connections still open when the run gave up (destroyed then): findings. */
  held: number;
  /** From the first connect to the last close, in milliseconds. */
  ms: number;
}

/** Options for {@linkcode syslogFlood}. */
export interface SyslogFloodOptions {
  /** The server's syslog port. */
  port: number;
  connections: number;
  /** Stop writing after this long. */
  durationMs: number;
  /** Stop writing a connection after this many bytes. @default {Infinity} */
  bytesPerConnection?: number;
  /** After writing stops, most time for the server to close every connection. */
  drainMs: number;
}

/**
 * One 64 KiB chunk of syslog messages (RFC 5424, 40 to 220 bytes each) in
 * one framing, and how many messages it holds.
 */
function syslogChunk(
  octetCounted: boolean,
): { bytes: Uint8Array; count: number } {
  const parts: Uint8Array[] = [];
  let size = 0;
  let count = 0;
  for (;;) {
    const pad = "x".repeat((count * 37) % 180);
    const text =
      `<13>1 2024-05-01T10:00:00.000Z soak flood - - - ${count} ${pad}`;
    const wire = enc.encode(
      octetCounted ? `${text.length} ${text}` : `${text}\n`,
    );
    if (size + wire.length > 64 * 1024) break;
    parts.push(wire);
    size += wire.length;
    count++;
  }
  return { bytes: concatBytes(parts), count };
}

/**
 * Opens `connections` syslog connections, half octet-counted and half
 * newline-framed, and writes messages on each as fast as the server takes
 * them until `durationMs` (or `bytesPerConnection`), then half-closes each and
 * waits for the server to close it: once it has, everything written is
 * stored.
 *
 * @param options Port, connections, how long and how much.
 * @returns The totals.
 */
export function syslogFlood(
  options: SyslogFloodOptions,
): Promise<SyslogFloodStats> {
  const chunks = [syslogChunk(false), syslogChunk(true)];
  const limit = options.bytesPerConnection ?? Infinity;
  const stats: SyslogFloodStats = {
    connected: 0,
    connectErrors: 0,
    messages: 0,
    bytes: 0,
    closed: 0,
    cutShort: 0,
    held: 0,
    ms: 0,
  };
  const started = performance.now();
  let stopped = false;
  const enders: (() => void)[] = [];
  const one = (i: number) =>
    new Promise<void>((resolve) => {
      const chunk = chunks[i % 2]!;
      const sock = net.connect({ port: options.port, host: "127.0.0.1" });
      let connected = false;
      let ended = false;
      let sent = 0;
      let gaveUp = false;
      let giveUp: ReturnType<typeof setTimeout> | undefined;
      const end = () => {
        if (ended) return;
        ended = true;
        sock.end();
        giveUp = setTimeout(() => {
          gaveUp = true;
          stats.held++;
          sock.destroy();
        }, options.drainMs);
      };
      enders.push(end);
      // Writes until the socket buffers (then again on "drain"); a write
      // that returns false is still taken whole.
      const pump = () => {
        while (!ended) {
          if (stopped || sent + chunk.bytes.length > limit) return end();
          sent += chunk.bytes.length;
          stats.bytes += chunk.bytes.length;
          stats.messages += chunk.count;
          if (!sock.write(chunk.bytes)) return;
        }
      };
      sock.on("connect", () => {
        connected = true;
        stats.connected++;
        pump();
      });
      sock.on("drain", pump);
      sock.on("data", () => {});
      sock.on("error", () => {});
      sock.on("close", (hadError) => {
        clearTimeout(giveUp);
        if (!connected) stats.connectErrors++;
        else if (gaveUp) {
          // Counted as held.
        } else if (!ended || hadError) stats.cutShort++;
        else stats.closed++;
        resolve();
      });
    });
  const timer = setTimeout(() => {
    stopped = true;
    for (const end of enders) end();
  }, options.durationMs);
  return Promise.all(
    Array.from({ length: options.connections }, (_, i) => one(i)),
  ).then(() => {
    clearTimeout(timer);
    stats.ms = performance.now() - started;
    return stats;
  });
}

/** Result of {@linkcode checkAuditLines}. */
export interface AuditCheck {
  lines: number;
  /** Lines that are not exactly one JSON object with `ts` and `event` (first 10). */
  bad: string[];
  badCount: number;
  /**
   * Events by name, accounted for: lines written plus the counts of
   * `suppressed` summaries (the audit rate limit holds lines back but always
   * says how many).
   */
  events: Record<string, number>;
}

/**
 * Checks that every line of an audit log is one JSON object with a string
 * `ts` and `event`.
 *
 * @param text The whole log.
 * @returns Counts and the offending lines.
 */
export function checkAuditLines(text: string): AuditCheck {
  const out: AuditCheck = { lines: 0, bad: [], badCount: 0, events: {} };
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  for (const line of lines) {
    out.lines++;
    let ok = false;
    try {
      const v = JSON.parse(line);
      if (
        v !== null && typeof v === "object" && !Array.isArray(v) &&
        typeof v.ts === "string" && typeof v.event === "string"
      ) {
        ok = true;
        out.events[v.event] = (out.events[v.event] ?? 0) + 1;
        if (
          v.event === "suppressed" && typeof v.of === "string" &&
          Number.isSafeInteger(v.count) && v.count > 0
        ) {
          out.events[v.of] = (out.events[v.of] ?? 0) + v.count;
        }
      }
    } catch {
      ok = false;
    }
    if (!ok) {
      out.badCount++;
      if (out.bad.length < 10) out.bad.push(line.slice(0, 200));
    }
  }
  return out;
}

/**
 * Reads a process's resident memory from `/proc`.
 *
 * @param pid The process.
 * @returns `VmRSS` and `VmHWM` (peak) in KiB, or zeros if it is gone.
 */
export function memoryKiB(pid: number): { rss: number; hwm: number } {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    return {
      rss: Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0),
      hwm: Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0),
    };
  } catch {
    return { rss: 0, hwm: 0 };
  }
}

/**
 * Samples a process's RSS every `everyMs` until stopped.
 *
 * @param pid The process.
 * @param everyMs Sampling period.
 * @returns `stop()`, which returns the peak RSS seen in KiB.
 */
export function sampleRss(pid: number, everyMs = 100): { stop(): number } {
  let peak = memoryKiB(pid).rss;
  const timer = setInterval(() => {
    peak = Math.max(peak, memoryKiB(pid).rss);
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, memoryKiB(pid).rss);
    },
  };
}

/**
 * Whether `text` holds a character that can drive a terminal or break a line:
 * C0 controls other than LF, DEL, C1 controls, line/paragraph separators and
 * bidirectional overrides.
 *
 * @param text Output to check (LF is allowed: it ends lines).
 * @returns The first such character's code point, or undefined.
 */
export function rawControl(text: string): number | undefined {
  const m = RAW_CONTROL.exec(text);
  return m ? m[0].codePointAt(0) : undefined;
}

const RAW_CONTROL =
  // deno-lint-ignore no-control-regex
  /[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

/** A `moat serve` whose audit log goes to a file. */
export interface LoggedServer {
  port: number;
  child: ChildProcess;
  /** The audit log file. */
  log: string;
  /** The audit log so far. */
  text(): string;
  /** Lines the operator saw on stdout (the first MiB of them). */
  stdout(): string;
  /** Lines the operator saw on stdout, counted to the end. */
  stdoutLines(): number;
  /** True once the process exited. */
  readonly exited: boolean;
  /** SIGKILL, then wait for exit. */
  kill(): Promise<void>;
  /** SIGTERM, then wait for exit (SIGKILL after 10 s). */
  stop(): Promise<number | null>;
}

/**
 * Starts `moat serve --host 127.0.0.1 --port 0 --log <log> …` and waits for
 * its "listening" record.
 *
 * @param args More arguments.
 * @param log Where the audit log goes (appended to).
 * @returns The server.
 */
export async function startLoggedServer(
  args: string[],
  log: string,
): Promise<LoggedServer> {
  const start = fs.existsSync(log) ? fs.statSync(log).size : 0;
  const child = spawnMoat([
    "serve",
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--log",
    log,
    ...args,
  ]);
  let stdout = "";
  let stdoutLines = 0;
  let stderr = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => {
    if (stdout.length < 1 << 20) stdout += d;
    for (let i = d.indexOf("\n"); i >= 0; i = d.indexOf("\n", i + 1)) {
      stdoutLines++;
    }
  });
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  let exited = false;
  const done = new Promise<number | null>((resolve) =>
    child.on("close", (code) => {
      exited = true;
      resolve(code);
    })
  );
  const text = () => {
    try {
      return fs.readFileSync(log, "utf8").slice(start);
    } catch {
      return "";
    }
  };
  const deadline = Date.now() + 20_000;
  let port = 0;
  while (port === 0) {
    const m = /"event":"listening","addrs":\["127\.0\.0\.1:(\d+)"/.exec(text());
    if (m) port = Number(m[1]);
    else if (exited || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`moat serve did not start: ${stderr}`);
    } else await new Promise((r) => setTimeout(r, 20));
  }
  return {
    port,
    child,
    log,
    text,
    stdout: () => stdout,
    stdoutLines: () => stdoutLines,
    get exited() {
      return exited;
    },
    async kill() {
      if (!exited) child.kill("SIGKILL");
      await done;
    },
    async stop() {
      if (!exited) process.kill(child.pid!, "SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      const code = await done;
      clearTimeout(timer);
      return code;
    },
  };
}

/** Result of one {@linkcode faultRound}. */
export interface FaultRound {
  victim: "server" | "client";
  killAtMs: number;
  /** The first get started from a partial file with --resume. */
  resumedFirst: boolean;
  /** The first get finished before the kill landed. */
  finishedFirst: boolean;
  /** What the target path held after the kill. */
  after: "absent" | "complete" | "wrong";
  /** Stray files left in the output folder (other than target and part). */
  strays: string[];
  /** The rerun used --resume. */
  rerunResume: boolean;
  /** The rerun's exit code. */
  rerunCode: number | null;
  /** The rerun produced the right file and removed the part file. */
  rerunOk: boolean;
  /** Why the rerun failed, if it did. */
  rerunError?: string;
}

/** Options for {@linkcode faultRound}. */
export interface FaultRoundOptions {
  /** Returns a running server, starting one if the last was killed. */
  server(): Promise<LoggedServer>;
  /** Request path of the file on the server. */
  file: string;
  /** Its full content's SHA-256. */
  sha256: string;
  /** Its size. */
  size: number;
  /** A copy of the file, to make partial downloads from. */
  source: string;
  /** Output folder (emptied at the start of the round). */
  out: string;
  /** Latest kill moment, in milliseconds after the client starts. */
  maxKillMs: number;
  /** Randomness. */
  rand: (n: number) => number;
}

/**
 * One round of fault injection: start a `moat get`, SIGKILL the server or
 * the client at a random moment, check that no complete-looking wrong file is
 * left, then rerun the get (with or without --resume) and check it succeeds.
 *
 * @param o Server, file and randomness.
 * @returns What happened.
 */
export async function faultRound(o: FaultRoundOptions): Promise<FaultRound> {
  const target = `${o.out}/out.bin`;
  const part = `${target}.moat-part`;
  for (const name of fs.readdirSync(o.out)) {
    fs.rmSync(`${o.out}/${name}`, { force: true });
  }
  const resumedFirst = o.rand(3) === 0;
  if (resumedFirst) {
    // A part file left by an earlier interrupted get.
    const keep = o.rand(o.size);
    fs.copyFileSync(o.source, part);
    fs.truncateSync(part, keep);
  }
  const victim = o.rand(2) === 0 ? "server" : "client";
  const killAtMs = o.rand(o.maxKillMs + 1);
  const server = await o.server();
  const args = [
    "get",
    `FILE:${o.file}`,
    "-o",
    target,
    "--server",
    `127.0.0.1:${server.port}`,
  ];
  if (resumedFirst) args.push("--resume");
  const client = spawnMoat(args);
  client.stdout!.resume();
  client.stderr!.resume();
  let clientDone = false;
  const clientExit = new Promise<void>((resolve) =>
    client.on("close", () => {
      clientDone = true;
      resolve();
    })
  );
  const limit = setTimeout(() => client.kill("SIGKILL"), 60_000);
  await Promise.race([clientExit, new Promise((r) => setTimeout(r, killAtMs))]);
  const finishedFirst = clientDone;
  if (victim === "server") await server.kill();
  else if (!clientDone) client.kill("SIGKILL");
  await clientExit;
  clearTimeout(limit);
  let after: FaultRound["after"] = "absent";
  if (fs.existsSync(target)) {
    after = (await sha256Of(target)) === o.sha256 ? "complete" : "wrong";
  }
  const strays = fs.readdirSync(o.out).filter((n) =>
    n !== "out.bin" && n !== "out.bin.moat-part"
  );
  // The rerun: the same get, with or without --resume.
  const rerunResume = o.rand(2) === 0;
  const again = await o.server();
  const rerunArgs = [
    "get",
    `FILE:${o.file}`,
    "-o",
    target,
    "--force",
    "--server",
    `127.0.0.1:${again.port}`,
  ];
  if (rerunResume) rerunArgs.push("--resume");
  const r = await runMoat(rerunArgs, { timeoutMs: 60_000 });
  const rerunOk = r.code === 0 && fs.existsSync(target) &&
    (await sha256Of(target)) === o.sha256 &&
    !fs.existsSync(part);
  const round: FaultRound = {
    victim,
    killAtMs,
    resumedFirst,
    finishedFirst,
    after,
    strays,
    rerunResume,
    rerunCode: r.code,
    rerunOk,
  };
  if (!rerunOk) round.rerunError = r.stderr.trim().slice(0, 300);
  return round;
}

/** Options for {@linkcode faultRounds}. */
export interface FaultRoundsOptions {
  /** The server's root, holding the file served as `big.bin`. */
  root: string;
  /** The server's audit log (`--log`). */
  auditFile: string;
  /** Output folder for the gets. */
  out: string;
  /** Rounds to run. */
  rounds: number;
  /** Randomness. */
  rand: (n: number) => number;
  /** Stop starting rounds after this many milliseconds. @default {Infinity} */
  budgetMs?: number;
  /** Latest kill moment as a multiple of one whole get's time. @default {1} */
  killWindow?: number;
}

/**
 * Runs {@linkcode faultRound} over `<root>/big.bin` with a server that is
 * restarted whenever a round killed it. The kill moments range over one
 * whole get (process start included), measured by a first, undisturbed get.
 *
 * @param o Folders, round count and randomness.
 * @returns Each round's outcome and how many servers were started.
 * @throws {Error} If the calibration get fails.
 */
export async function faultRounds(
  o: FaultRoundsOptions,
): Promise<{ results: FaultRound[]; starts: number; maxKillMs: number }> {
  const source = `${o.root}/big.bin`;
  const size = fs.statSync(source).size;
  const sha256 = await sha256Of(source);
  let current: LoggedServer | undefined;
  let starts = 0;
  const server = async () => {
    if (!current || current.exited) {
      current = await startLoggedServer(["--root", o.root], o.auditFile);
      starts++;
    }
    return current;
  };
  try {
    const s = await server();
    const t0 = performance.now();
    const cal = await runMoat([
      "get",
      "FILE:big.bin",
      "-o",
      `${o.out}/cal.bin`,
      "--server",
      `127.0.0.1:${s.port}`,
    ]);
    if (cal.code !== 0) {
      throw new Error(`calibration get failed: ${cal.stderr}`);
    }
    const maxKillMs = Math.ceil((performance.now() - t0) * (o.killWindow ?? 1));
    const deadline = Date.now() + (o.budgetMs ?? Infinity);
    const results: FaultRound[] = [];
    for (let i = 0; i < o.rounds && Date.now() < deadline; i++) {
      results.push(
        await faultRound({
          server,
          file: "big.bin",
          sha256,
          size,
          source,
          out: o.out,
          maxKillMs,
          rand: o.rand,
        }),
      );
    }
    return { results, starts, maxKillMs };
  } finally {
    await current?.stop();
  }
}

async function sha256Of(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of fs.createReadStream(file)) {
    hash.update(chunk as Uint8Array);
  }
  return hash.digest("hex");
}

// ---------------------------------------------------------------------------
// Descriptor exhaustion and refusals before TLS (issue 13): a server run
// with a low descriptor limit, the connections and shippers that exhaust it,
// and what its audit log says about each episode.

/** What a server out of descriptors answers a newcomer, before the close. */
export const BUSY_LINE = "ERR BUSY server busy: out of file descriptors\n";
/** What a refused address reads, on a plain port and on a TLS port alike. */
export const DENIED_LINE = "ERR ACCESS_DENIED access refused by server\n";

/**
 * Lowers a running process's descriptor limit, soft and hard, with
 * `prlimit(1)`. Done after start, so a runtime that raises its soft limit
 * to the hard one at startup (Bun does) cannot undo it.
 *
 * @param pid The process.
 * @param limit Most descriptors it may hold.
 * @throws {Error} When prlimit fails or `/proc` shows another limit.
 */
export function limitDescriptors(pid: number, limit: number): void {
  const r = spawnSync("prlimit", [
    "--pid",
    String(pid),
    `--nofile=${limit}:${limit}`,
  ], { encoding: "utf8", timeout: 10_000 });
  if (r.status !== 0) {
    throw new Error(
      `prlimit --pid ${pid} --nofile=${limit}:${limit} failed: ${
        r.error?.message ?? r.stderr.trim()
      }`,
    );
  }
  const limits = fs.readFileSync(`/proc/${pid}/limits`, "utf8");
  const m = /Max open files\s+(\d+)\s+(\d+)/.exec(limits);
  if (m?.[1] !== String(limit) || m[2] !== String(limit)) {
    throw new Error(`Descriptor limit of ${pid} is not ${limit}: ${m?.[0]}`);
  }
}

/**
 * Counts a process's open descriptors.
 *
 * @param pid The process.
 * @returns Entries of `/proc/PID/fd`, or 0 if it is gone.
 */
export function openDescriptors(pid: number): number {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}

/**
 * Samples a process's open descriptors every `everyMs` until stopped.
 *
 * @param pid The process.
 * @param everyMs Sampling period.
 * @returns `stop()`, which returns the most seen.
 */
export function sampleDescriptors(
  pid: number,
  everyMs = 20,
): { stop(): number } {
  let peak = openDescriptors(pid);
  const timer = setInterval(() => {
    peak = Math.max(peak, openDescriptors(pid));
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, openDescriptors(pid));
    },
  };
}

/**
 * Waits until `pred()` holds, checking every 20 ms.
 *
 * @param pred The condition.
 * @param ms Most time to wait.
 * @param what What is awaited, for the error.
 * @throws {Error} When `ms` passes first.
 */
export async function waitUntil(
  pred: () => boolean,
  ms: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The `accept_exhausted` / `accept_recovered` lines of an audit log. */
export interface AcceptEpisodes {
  exhausted: number;
  recovered: number;
  /** The lines alternate, starting with `accept_exhausted`: one report per episode. */
  alternate: boolean;
  /** Connections turned away, summed over the `accept_recovered` lines. */
  busy: number;
  /** Milliseconds spent exhausted, by the lines' timestamps (ended episodes). */
  ms: number;
  /** The last episode has not ended. */
  open: boolean;
}

/**
 * Reads the descriptor-exhaustion episodes out of an audit log.
 *
 * @param text The whole log (JSON lines).
 * @returns Counts, whether each episode was reported once, and their length.
 */
export function acceptEpisodes(text: string): AcceptEpisodes {
  const out: AcceptEpisodes = {
    exhausted: 0,
    recovered: 0,
    alternate: true,
    busy: 0,
    ms: 0,
    open: false,
  };
  let since: number | undefined;
  for (const line of text.split("\n")) {
    if (!line.includes('"event":"accept_')) continue;
    let e: { event?: unknown; ts?: unknown; busy?: unknown };
    try {
      e = JSON.parse(line);
    } catch {
      continue;
    }
    const ts = Date.parse(String(e.ts));
    if (e.event === "accept_exhausted") {
      out.exhausted++;
      if (out.open) out.alternate = false;
      out.open = true;
      since = ts;
    } else if (e.event === "accept_recovered") {
      out.recovered++;
      if (!out.open) out.alternate = false;
      out.open = false;
      if (Number.isSafeInteger(e.busy)) out.busy += e.busy as number;
      if (since !== undefined) out.ms += ts - since;
      since = undefined;
    }
  }
  return out;
}

/** Totals of {@linkcode answerConnections}: what each connection read before the close. */
export interface AnswerStats {
  attempted: number;
  /** Read exactly {@linkcode DENIED_LINE}. */
  denied: number;
  /** Read exactly {@linkcode BUSY_LINE}. */
  busy: number;
  /** Closed (or reset) by the server without a byte. */
  silentClose: number;
  /** Read something starting with a TLS record header (0x14-0x17, 0x03): findings. */
  tlsRecords: number;
  /**
   * Read only chat presence lines (`[server] c7 (…) joined`): an allowed
   * silent peer becomes a plain chat member and hears who comes and goes.
   */
  presence: number;
  /** Read anything else (first 5 kept, quoted, in `otherSamples`). */
  other: number;
  otherSamples: string[];
  /** Still open at the time limit (then destroyed): findings. */
  hung: number;
  /** Failed to connect at all. */
  connectErrors: number;
  /** Milliseconds from connect to the close (after `holdMs`, if any), sorted. */
  closeMs: number[];
}

/** Options for {@linkcode answerConnections}. */
export interface AnswerOptions {
  port: number;
  count: number;
  /** Source address of connection `i`. @default {() => "127.0.0.1"} */
  from?: (i: number) => string;
  /** Connections started per second; all at once when undefined. */
  rate?: number;
  /** Written once connected (a ClientHello, say); nothing when undefined. */
  payload?: Uint8Array;
  /**
   * Keep our side open this long after the server's half-close, as a peer
   * that never hangs up would: the server then holds the connection's
   * descriptor until its drain deadline. Undefined: end at once.
   */
  holdMs?: number;
  /** A connection still open this long after its start counts as hung. */
  timeoutMs: number;
}

function emptyAnswers(): AnswerStats {
  return {
    attempted: 0,
    denied: 0,
    busy: 0,
    silentClose: 0,
    tlsRecords: 0,
    other: 0,
    presence: 0,
    otherSamples: [],
    hung: 0,
    connectErrors: 0,
    closeMs: [],
  };
}

/**
 * Opens one connection, reads until the server closes it or `timeoutMs`
 * passes, and counts the outcome into `stats`.
 *
 * @returns The socket, and a promise settled once it is counted.
 */
function watchConnection(
  stats: AnswerStats,
  options: {
    port: number;
    localAddress: string;
    payload?: Uint8Array | undefined;
    holdMs?: number | undefined;
    /** Infinity: no limit. */
    timeoutMs: number;
    /** True when the close is ours (a release), not the server's: not counted. */
    ours?: () => boolean;
  },
): { sock: net.Socket; done: Promise<void> } {
  stats.attempted++;
  const t0 = performance.now();
  const sock = net.connect({
    port: options.port,
    host: "127.0.0.1",
    localAddress: options.localAddress,
    allowHalfOpen: options.holdMs !== undefined,
  });
  let head: Uint8Array = new Uint8Array(0);
  let hold: ReturnType<typeof setTimeout> | undefined;
  let connected = false;
  let hung = false;
  const timer = Number.isFinite(options.timeoutMs)
    ? setTimeout(() => {
      hung = true;
      sock.destroy();
    }, options.timeoutMs)
    : undefined;
  sock.on("connect", () => {
    connected = true;
    if (options.payload !== undefined) sock.write(options.payload);
  });
  sock.on("data", (d: Uint8Array) => {
    if (head.length < 256) head = concatBytes([head, d.subarray(0, 256)]);
  });
  sock.on("end", () => {
    if (options.holdMs !== undefined) {
      hold = setTimeout(() => sock.end(), options.holdMs);
    }
  });
  sock.on("error", () => {});
  const done = new Promise<void>((resolve) =>
    sock.on("close", () => {
      clearTimeout(timer);
      clearTimeout(hold);
      if (options.ours?.()) {
        // Released by the caller: not an answer.
      } else if (hung) stats.hung++;
      else if (!connected) stats.connectErrors++;
      else {
        stats.closeMs.push(performance.now() - t0);
        const text = latin1(head);
        if (head.length === 0) stats.silentClose++;
        else if (head[0]! >= 0x14 && head[0]! <= 0x17 && head[1] === 3) {
          stats.tlsRecords++;
        } else if (text === DENIED_LINE) stats.denied++;
        else if (text === BUSY_LINE) stats.busy++;
        else if (isPresence(text)) stats.presence++;
        else {
          stats.other++;
          if (stats.otherSamples.length < 5) {
            stats.otherSamples.push(JSON.stringify(text.slice(0, 100)));
          }
        }
      }
      resolve();
    })
  );
  return { sock, done };
}

/**
 * Opens `count` connections (at `rate` per second, or all at once), sends
 * each the payload if any, and classifies what each reads before the
 * server closes it; none may stay open past `timeoutMs`.
 *
 * @param options Port, count, sources, pace, payload and time limit.
 * @returns The totals.
 */
export async function answerConnections(
  options: AnswerOptions,
): Promise<AnswerStats> {
  const stats = emptyAnswers();
  const from = options.from ?? (() => "127.0.0.1");
  const pending: Promise<void>[] = [];
  const start = (i: number) =>
    pending.push(
      watchConnection(stats, {
        port: options.port,
        localAddress: from(i),
        payload: options.payload,
        holdMs: options.holdMs,
        timeoutMs: options.timeoutMs,
      }).done,
    );
  if (options.rate === undefined) {
    for (let i = 0; i < options.count; i++) start(i);
  } else {
    const rate = options.rate;
    const started = performance.now();
    await new Promise<void>((resolve) => {
      const tick = setInterval(() => {
        const due = Math.min(
          options.count,
          Math.floor((rate * (performance.now() - started)) / 1000),
        );
        while (stats.attempted < due) start(stats.attempted);
        if (stats.attempted >= options.count) {
          clearInterval(tick);
          resolve();
        }
      }, 10);
    });
  }
  await Promise.all(pending);
  stats.closeMs.sort((a, b) => a - b);
  return stats;
}

/** Connections opened by {@linkcode holdConnections}. */
export interface HeldConnections {
  /** What the ones the server closed read (those released are not counted). */
  stats: AnswerStats;
  /** Connections still open. */
  readonly open: number;
  /** Closes every connection still open; resolves once all are counted. */
  release(): Promise<void>;
}

/**
 * Opens `count` silent connections at once and keeps them open until
 * released: the peers that hold a server's descriptors.
 *
 * @param options Port, count and source address.
 * @returns The connections.
 */
export function holdConnections(
  options: { port: number; count: number; localAddress?: string },
): HeldConnections {
  const stats = emptyAnswers();
  const socks = new Set<net.Socket>();
  const pending: Promise<void>[] = [];
  let released = false;
  for (let i = 0; i < options.count; i++) {
    const { sock, done } = watchConnection(stats, {
      port: options.port,
      localAddress: options.localAddress ?? "127.0.0.1",
      timeoutMs: Infinity,
      ours: () => released,
    });
    socks.add(sock);
    pending.push(done.then(() => void socks.delete(sock)));
  }
  return {
    stats,
    get open() {
      return socks.size;
    },
    async release() {
      released = true;
      for (const s of socks) s.destroy();
      await Promise.all(pending);
      stats.closeMs.sort((a, b) => a - b);
    },
  };
}

/** Totals of {@linkcode shipSources}. */
export interface ShipSourcesStats {
  /** Sources asked for. */
  asked: number;
  /** Sources that took a record and acknowledged it. */
  stored: number;
  /**
   * Other outcomes by code: an Error frame's code (`ERR_TOO_MANY_SOURCES`),
   * a handshake refusal's (`ERR_BUSY`), `ERR_CONNECTION_CLOSED` for a close.
   */
  refused: Record<string, number>;
  /** Shippers the server left without an answer for `answerMs`: findings. */
  unanswered: number;
}

/** Options for {@linkcode shipSources}. */
export interface ShipSourcesOptions {
  port: number;
  /** Sources to ask for, named `<prefix>-0`, `<prefix>-1`, … */
  count: number;
  prefix: string;
  /** Sources being shipped at once. @default {8} */
  concurrency?: number;
  /** Longest wait for each answer (handshake, ShipReady, ShipAck). */
  answerMs: number;
}

/**
 * A shipper with many log streams: for each source, a connection from
 * 127.0.0.1 that says hello in ship mode (moat's own client handshake),
 * ships one record and waits for its acknowledgement.
 *
 * @param options Port, how many sources, and the time limit of each answer.
 * @returns What became of each source.
 */
export async function shipSources(
  options: ShipSourcesOptions,
): Promise<ShipSourcesStats> {
  const stats: ShipSourcesStats = {
    asked: 0,
    stored: 0,
    refused: {},
    unanswered: 0,
  };
  const client = {
    net: getNet(),
    server: { hostname: "127.0.0.1", port: options.port },
    version: VERSION,
    timeoutMs: options.answerMs,
  };
  const count = (outcome: string) => {
    if (outcome === "stored") stats.stored++;
    else if (outcome === "unanswered") stats.unanswered++;
    else stats.refused[outcome] = (stats.refused[outcome] ?? 0) + 1;
  };
  const indexes = Array.from({ length: options.count }, (_, i) => i);
  await pool(indexes, options.concurrency ?? 8, async (i) => {
    stats.asked++;
    let session;
    try {
      session = await openSession(client, "ship", {
        source: `${options.prefix}-${i}`,
      });
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      return count(code === "ERR_TIMEOUT" ? "unanswered" : String(code));
    }
    const { conn, reader } = session;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const silence = new Promise<"unanswered">((resolve) => {
      timer = setTimeout(() => resolve("unanswered"), options.answerMs);
    });
    const answer = async (): Promise<string> => {
      const ready = await reader.readFrame();
      if (ready === null) return "ERR_CONNECTION_CLOSED";
      if (ready.type === Kind.Error) return decodeError(ready.payload).code;
      const seq = decodeShipReady(ready.payload).lastSeq + 1;
      await conn.write(encodeFrame({
        type: Kind.ShipBatch,
        payload: encodeShipBatch([{
          seq,
          ts: Date.now(),
          line: enc.encode(`record of source ${i}`),
          partial: false,
        }]),
      }));
      const ack = await reader.readFrame();
      if (ack === null) return "ERR_CONNECTION_CLOSED";
      if (ack.type === Kind.Error) return decodeError(ack.payload).code;
      if (ack.type !== Kind.ShipAck) return `frame 0x${ack.type.toString(16)}`;
      const acked = new DataView(
        ack.payload.buffer,
        ack.payload.byteOffset,
        ack.payload.byteLength,
      ).getFloat64(0, true);
      return acked >= seq ? "stored" : "ack short";
    };
    try {
      count(
        await Promise.race([
          answer().catch((err) =>
            String((err as { code?: unknown }).code ?? "error")
          ),
          silence,
        ]),
      );
    } finally {
      clearTimeout(timer);
      conn.close();
    }
  });
  return stats;
}

/**
 * Makes a real TLS 1.3 ClientHello: node:tls connects to a listener here,
 * which keeps the first record and closes.
 *
 * @returns The ClientHello record, header included.
 * @throws {Error} When no whole record arrives within 10 s.
 */
export function captureClientHello(): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    let got: Uint8Array = new Uint8Array(0);
    const server = net.createServer((sock) => {
      sock.on("error", () => {});
      sock.on("data", (d: Uint8Array) => {
        got = concatBytes([got, d]);
        if (got.length < 5) return;
        const size = 5 + ((got[3]! << 8) | got[4]!);
        if (got.length < size) return;
        clearTimeout(timer);
        sock.destroy();
        server.close();
        resolve(got.subarray(0, size));
      });
    });
    const timer = setTimeout(() => {
      server.close();
      reject(new Error("No ClientHello arrived within 10 s"));
    }, 10_000);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      const client = tls.connect({
        host: "127.0.0.1",
        port,
        servername: "localhost",
        minVersion: "TLSv1.3",
        rejectUnauthorized: false,
      });
      client.on("error", () => {});
    });
  });
}

/**
 * Connections the kernel dropped because a listen queue was full
 * (`TcpExt ListenDrops` in `/proc/net/netstat`). The counter covers the
 * whole network namespace, so read it around a run to see whether clients
 * waited on TCP retransmissions rather than on the server.
 *
 * @returns The counter, or NaN where it cannot be read.
 */
export function listenDrops(): number {
  try {
    const lines = fs.readFileSync("/proc/net/netstat", "utf8").split("\n");
    const i = lines.findIndex((l) => l.startsWith("TcpExt:"));
    const names = lines[i]!.split(/\s+/);
    const values = lines[i + 1]!.split(/\s+/);
    return Number(values[names.indexOf("ListenDrops")]);
  } catch {
    return NaN;
  }
}

/** A join or leave line of any member, from any address. */
const ANY_PRESENCE = presencePattern(String.raw`\S+ \(.*\)`);

/** Whether `text` holds only chat presence lines (the last may be cut). */
function isPresence(text: string): boolean {
  const lines = text.split("\n");
  const whole = lines.slice(0, -1);
  return whole.length > 0 &&
    whole.every((l) => ANY_PRESENCE.test(l)) &&
    "[server] ".startsWith(lines.at(-1)!.slice(0, 9));
}
