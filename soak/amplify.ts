/**
 * Floods by allowed peers against a running `moat serve`: what a peer that
 * passed the allowlist can make the server spend. Shared by
 * `tests/e2e_hostile_test.ts` (short runs) and `soak/main.ts` (long runs):
 *
 * - {@linkcode unreadGets}: many gets of a large file whose clients never read;
 * - {@linkcode chatFlood}: chat lines as fast as the socket takes them;
 * - {@linkcode shipFlood}: ship batches whose acks are never read, or batches
 *   of thousands of empty records.
 *
 * Each holds its connections until the caller says so, so that the caller
 * can sample the server's memory and check that it still serves a get.
 * Loopback only; every loop is bounded in count and time.
 *
 * @module
 */

import * as net from "node:net";
import { encodeHeader } from "../lib/framer.ts";
import { encodePreamble, encodeShipBatch, Kind } from "../lib/protocol.ts";
import { concatBytes } from "../tests/_test_utils.ts";

const enc = new TextEncoder();

/** One frame: header and payload. */
function frame(type: number, payload: Uint8Array | string): Uint8Array {
  const body = typeof payload === "string" ? enc.encode(payload) : payload;
  const out = new Uint8Array(5 + body.length);
  encodeHeader(type, body.length, out);
  out.set(body, 5);
  return out;
}

/** The preamble and a Hello of `mode`. */
function opening(mode: string, extra: Record<string, unknown> = {}) {
  return concatBytes([
    encodePreamble(),
    frame(
      Kind.Hello,
      JSON.stringify({
        client: "moat/amplify",
        mode,
        maxFrameSize: 1_048_576,
        ...extra,
      }),
    ),
  ]);
}

/**
 * Connects to loopback and writes `first` at once (a framed client that
 * waits a second is served as plain text); resolves the socket, or
 * undefined if it fails.
 */
function connect(
  port: number,
  first: Uint8Array,
): Promise<net.Socket | undefined> {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: "127.0.0.1" });
    sock.on("error", () => resolve(undefined));
    sock.once("connect", () => {
      sock.write(first);
      resolve(sock);
    });
  });
}

/**
 * Writes `bytes`; resolves true once the socket took them (at once, or on
 * `drain`), false if `deadline` (a `performance.now()` time) passes first or
 * the socket closes.
 */
function writeBefore(
  sock: net.Socket,
  bytes: Uint8Array,
  deadline: number,
): Promise<boolean> {
  if (sock.destroyed) return Promise.resolve(false);
  if (sock.write(bytes)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      sock.off("drain", onDrain);
      sock.off("close", onClose);
      resolve(ok);
    };
    const onDrain = () => done(true);
    const onClose = () => done(false);
    const timer = setTimeout(
      () => done(false),
      Math.max(0, deadline - performance.now()),
    );
    sock.on("drain", onDrain);
    sock.on("close", onClose);
  });
}

/**
 * Reads the server's side of a framed handshake (the preamble, then frames)
 * until `want` frames arrived; the bytes after them are dropped.
 */
function readFrames(
  sock: net.Socket,
  want: number,
  timeoutMs: number,
): Promise<{ type: number; payload: Uint8Array }[]> {
  return new Promise((resolve, reject) => {
    let buf: Uint8Array = new Uint8Array(0);
    let preamble = false;
    const frames: { type: number; payload: Uint8Array }[] = [];
    const finish = (err?: Error) => {
      clearTimeout(timer);
      sock.off("data", onData);
      sock.off("close", onClose);
      if (err) reject(err);
      else resolve(frames);
    };
    const onData = (d: Uint8Array) => {
      buf = concatBytes([buf, d]);
      if (!preamble && buf.length >= 8) {
        preamble = true;
        buf = buf.subarray(8);
      }
      while (preamble && buf.length >= 5 && frames.length < want) {
        const len = buf[1]! * 0x100_0000 +
          (buf[2]! << 16 | buf[3]! << 8 | buf[4]!);
        if (buf.length < 5 + len) break;
        frames.push({ type: buf[0]!, payload: buf.slice(5, 5 + len) });
        buf = buf.subarray(5 + len);
      }
      if (frames.length === want) finish();
    };
    const onClose = () =>
      finish(new Error(`closed after ${frames.length} of ${want} frames`));
    const timer = setTimeout(
      () => finish(new Error(`no ${want} frames within ${timeoutMs} ms`)),
      timeoutMs,
    );
    sock.on("data", onData);
    sock.on("close", onClose);
  });
}

/** Stops reading a socket for good: the kernel's buffers fill, then the server's writes wait. */
function stopReading(sock: net.Socket) {
  sock.removeAllListeners("data");
  sock.pause();
}

/** Options for {@linkcode unreadGets}. */
export interface UnreadGetsOptions {
  port: number;
  /** Connections, each asking for `path` once and never reading. */
  count: number;
  /** A file on the server, much larger than a socket's buffers. */
  path: string;
  /** Called once every get was sent; the connections are held until it resolves. */
  hold: () => Promise<void>;
}

/** What {@linkcode unreadGets} did. */
export interface UnreadGetsStats {
  /** Gets sent. */
  sent: number;
  /** Connections that failed to connect. */
  connectErrors: number;
  /** Connections the server closed while they were held. */
  closedByServer: number;
}

/**
 * Opens `count` framed connections that each ask for `path` and never read
 * a byte: the server starts every get, and then waits on sockets whose
 * buffers are full. Holds them until `hold()` resolves, then closes them.
 *
 * @param options Port, count, file and the hold.
 * @returns What was sent.
 */
export async function unreadGets(
  options: UnreadGetsOptions,
): Promise<UnreadGetsStats> {
  const request = concatBytes([
    opening("get"),
    frame(
      Kind.Get,
      JSON.stringify({ path: options.path, offset: 0, digest: "crc32" }),
    ),
  ]);
  const stats: UnreadGetsStats = {
    sent: 0,
    connectErrors: 0,
    closedByServer: 0,
  };
  const socks: net.Socket[] = [];
  let releasing = false;
  // 50 connects at a time: a burst of 400 overflows the listen backlog.
  for (let i = 0; i < options.count; i += 50) {
    const batch = await Promise.all(
      Array.from(
        { length: Math.min(50, options.count - i) },
        () => connect(options.port, request),
      ),
    );
    for (const sock of batch) {
      if (sock === undefined) {
        stats.connectErrors++;
        continue;
      }
      stopReading(sock);
      sock.on("close", () => {
        if (!releasing) stats.closedByServer++;
      });
      stats.sent++;
      socks.push(sock);
    }
  }
  try {
    await options.hold();
  } finally {
    releasing = true;
    for (const sock of socks) sock.destroy();
  }
  return stats;
}

/** Options for {@linkcode chatFlood}. */
export interface ChatFloodOptions {
  port: number;
  /** Framed chat frames, or plain-text lines. */
  framed: boolean;
  /** How long to write. */
  durationMs: number;
  /** Bytes of each line, newline excluded. @default {1000} */
  lineBytes?: number;
}

/** What {@linkcode chatFlood} did. */
export interface ChatFloodStats {
  /** Lines the socket took (written into the kernel, or queued briefly). */
  linesWritten: number;
  /** Bytes of chat the socket took. */
  bytesWritten: number;
  /** Whether the server closed the connection during the flood. */
  closedByServer: boolean;
}

/**
 * One allowed client writing chat lines as fast as its socket takes them,
 * for `durationMs`; it reads (and drops) whatever the server sends back.
 *
 * @param options Port, framing, duration and line size.
 * @returns How much the socket took.
 */
export async function chatFlood(
  options: ChatFloodOptions,
): Promise<ChatFloodStats> {
  const lineBytes = options.lineBytes ?? 1000;
  const stats: ChatFloodStats = {
    linesWritten: 0,
    bytesWritten: 0,
    closedByServer: false,
  };
  const sock = await connect(
    options.port,
    options.framed ? opening("chat") : new Uint8Array(0),
  );
  if (sock === undefined) throw new Error("chat flood: cannot connect");
  let closing = false;
  sock.on("close", () => {
    if (!closing) stats.closedByServer = true;
  });
  try {
    if (options.framed) await readFrames(sock, 1, 10_000);
    sock.on("data", () => {});
    sock.resume();
    // 64 lines per write, each numbered.
    const perWrite = 64;
    const text = "x".repeat(lineBytes);
    const end = performance.now() + options.durationMs;
    for (let n = 0; n < 10_000_000 && performance.now() < end; n++) {
      const lines: Uint8Array[] = [];
      for (let i = 0; i < perWrite; i++) {
        const line = `${n * perWrite + i} ${text}`.slice(0, lineBytes);
        lines.push(
          options.framed ? frame(Kind.Chat, line) : enc.encode(line + "\n"),
        );
      }
      const bytes = concatBytes(lines);
      if (!(await writeBefore(sock, bytes, end))) break;
      stats.linesWritten += perWrite;
      stats.bytesWritten += bytes.length;
    }
  } finally {
    closing = true;
    sock.destroy();
  }
  return stats;
}

/** Options for {@linkcode shipFlood}. */
export interface ShipFloodOptions {
  port: number;
  /** Parallel shippers, each with its own source. */
  connections: number;
  /** How long to write. */
  durationMs: number;
  /** Records per ShipBatch frame. */
  recordsPerBatch: number;
  /** Bytes of each record's line. */
  lineBytes: number;
  /** Read the acks (or never read a byte after ShipReady). */
  readAcks: boolean;
  /** Source names are this and a number. @default {"flood"} */
  source?: string;
}

/** What {@linkcode shipFlood} did. */
export interface ShipFloodStats {
  /** Shippers that got their ShipReady. */
  shippers: number;
  /** Batches the sockets took. */
  batches: number;
  /** Records in them. */
  records: number;
  /** Shippers the server closed during the flood. */
  closedByServer: number;
}

/**
 * Parallel shippers writing ShipBatch frames as fast as their sockets take
 * them for `durationMs`: with `readAcks: false` they never read after
 * ShipReady (the server's acks pile up), with thousands of empty records per
 * batch they make the most records per byte.
 *
 * @param options Port, shippers, duration, batch shape and whether acks are read.
 * @returns How much the sockets took.
 */
export async function shipFlood(
  options: ShipFloodOptions,
): Promise<ShipFloodStats> {
  const stats: ShipFloodStats = {
    shippers: 0,
    batches: 0,
    records: 0,
    closedByServer: 0,
  };
  const end = performance.now() + options.durationMs;
  const line = new Uint8Array(options.lineBytes).fill(0x61);
  const one = async (i: number) => {
    const sock = await connect(
      options.port,
      opening("ship", { source: `${options.source ?? "flood"}${i}` }),
    );
    if (sock === undefined) return;
    let closing = false;
    sock.on("close", () => {
      if (!closing) stats.closedByServer++;
    });
    try {
      const [, ready] = await readFrames(sock, 2, 10_000);
      if (ready?.type !== Kind.ShipReady) return;
      stats.shippers++;
      let seq = JSON.parse(new TextDecoder().decode(ready.payload)).lastSeq;
      if (options.readAcks) {
        sock.on("data", () => {});
        sock.resume();
      } else stopReading(sock);
      for (let n = 0; n < 10_000_000 && performance.now() < end; n++) {
        const records = Array.from({ length: options.recordsPerBatch }, () => ({
          seq: ++seq,
          ts: Date.now(),
          partial: false,
          line,
        }));
        const batch = frame(Kind.ShipBatch, encodeShipBatch(records));
        if (!(await writeBefore(sock, batch, end))) break;
        stats.batches++;
        stats.records += records.length;
      }
    } catch {
      // Counted by what it managed; a refused shipper is in closedByServer.
    } finally {
      closing = true;
      sock.destroy();
    }
  };
  await Promise.all(
    Array.from({ length: options.connections }, (_, i) => one(i)),
  );
  return stats;
}
