/**
 * Helpers for in-process server tests: a real {@linkcode Server} on a
 * {@linkcode memoryNet}, a fake clock for its deadlines, its audit log as
 * parsed events with waiters, and raw framed and plain clients.
 * Runtime-neutral: runs under `deno test` and `bun test`.
 *
 * @module
 */

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Server, type ServerOptions } from "../lib/server/mod.ts";
import { AuditLog } from "../lib/audit.ts";
import { compileAllowlist } from "../lib/allowlist.ts";
import { createJail, type Jail } from "../lib/jail.ts";
import { encodeFrame, FrameReader } from "../lib/framer.ts";
import { answerChallenge, type Token } from "../lib/auth.ts";
import {
  decodeText,
  decodeWelcome,
  encodeJson,
  encodePreamble,
  Kind,
  type Mode,
  PREAMBLE_SIZE,
  type Welcome,
} from "../lib/protocol.ts";
import type { Addr, Net } from "../lib/net/types.ts";
import { type MemoryConn, type MemoryNet, memoryNet } from "./_memory_conn.ts";

/** How long any wait in these helpers may take before it fails the test. */
const WAIT_MS = 10_000;

/** Rejects with `what` if `p` has not settled after `ms`. */
export async function within<T>(
  p: Promise<T>,
  what: string,
  ms = WAIT_MS,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Timed out after ${ms} ms waiting for ${what}`)),
      ms,
    );
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** A clock that moves only when told to. */
export interface FakeClock {
  now(): number;
  /** Moves the clock forward by `ms`. */
  advance(ms: number): void;
}

/**
 * Makes a {@linkcode FakeClock}.
 *
 * @param start The first time it reads.
 * @returns The clock.
 */
export function fakeClock(start = 1_700_000_000_000): FakeClock {
  let t = start;
  return {
    now: () => t,
    advance(ms) {
      t += ms;
    },
  };
}

/** One audit record, parsed. */
export type AuditRecord = Record<string, unknown> & { event: string };

/** An audit log whose records are kept, parsed, with waiters. */
export class AuditEvents {
  readonly log: AuditLog;
  readonly events: AuditRecord[] = [];
  readonly lines: string[] = [];
  #waiters = new Set<(e: AuditRecord) => void>();

  constructor() {
    this.log = new AuditLog((line) => {
      this.lines.push(line);
      const e = JSON.parse(line) as AuditRecord;
      this.events.push(e);
      for (const w of [...this.#waiters]) w(e);
    });
  }

  /** Records of one event name. */
  named(event: string): AuditRecord[] {
    return this.events.filter((e) => e.event === event);
  }

  /** Resolves with the first record (past or future) matching `pred`. */
  waitFor(
    pred: (e: AuditRecord) => boolean,
    what: string,
  ): Promise<AuditRecord> {
    return this.waitCount(pred, 1, what).then((found) => found[0]!);
  }

  /** Resolves once `n` records (past or future) match `pred`. */
  waitCount(
    pred: (e: AuditRecord) => boolean,
    n: number,
    what: string,
  ): Promise<AuditRecord[]> {
    const found = this.events.filter(pred);
    if (found.length >= n) return Promise.resolve(found.slice(0, n));
    let waiter: ((e: AuditRecord) => void) | undefined;
    const done = new Promise<AuditRecord[]>((resolve) => {
      waiter = (e) => {
        if (!pred(e)) return;
        found.push(e);
        if (found.length === n) resolve(found);
      };
      this.#waiters.add(waiter);
    });
    return within(done, `${n} × ${what}`).finally(() =>
      this.#waiters.delete(waiter!)
    );
  }
}

/** A running in-process server and what a test needs around it. */
export interface TestServer {
  readonly server: Server;
  readonly net: MemoryNet;
  readonly audit: AuditEvents;
  readonly clock: FakeClock;
  /** The served root (a fresh temporary directory unless given). */
  readonly root: string;
  /** The main port. */
  readonly port: number;
  /**
   * Connects to the main port.
   *
   * @param from The client's address; a string is a hostname on a new port.
   */
  connect(from?: string | Addr): Promise<MemoryConn>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Options for {@linkcode startMemoryServer}: any server option, and the root. */
export type TestServerOptions =
  & Partial<Omit<ServerOptions, "net" | "audit" | "jail" | "now">>
  & {
    root?: string;
    /** Wraps the jail of `root` (to make it fail as a system would). */
    wrapJail?: (jail: Jail) => Jail;
    /**
     * Wraps the net the server listens on (to give its connections a TLS
     * handshake); {@linkcode TestServer.connect} still connects through it.
     */
    wrapNet?: (net: MemoryNet) => Net;
  };

let nextPort = 51000;

/**
 * Starts a real {@linkcode Server} on a {@linkcode memoryNet} with a fake
 * clock, on 127.0.0.1, allowing loopback only unless told otherwise.
 *
 * @param options Server options, and the root to serve.
 * @returns The running server; dispose it to close it (and remove the
 * temporary root).
 */
export async function startMemoryServer(
  options: TestServerOptions = {},
): Promise<TestServer> {
  const { root: given, wrapJail, wrapNet, ...rest } = options;
  const root = given ??
    fs.mkdtempSync(path.join(os.tmpdir(), "moat-server-test-"));
  const net = memoryNet();
  const audit = new AuditEvents();
  const clock = fakeClock();
  const jail = await createJail(root);
  const server = new Server({
    net: wrapNet ? wrapNet(net) : net,
    hosts: ["127.0.0.1"],
    port: 0,
    allowlist: compileAllowlist({}),
    version: "0.0.0-test",
    ...rest,
    // A witness serves no files.
    ...(rest.witness === undefined &&
      { jail: wrapJail ? wrapJail(jail) : jail }),
    audit: audit.log,
    now: clock.now,
  });
  const [addr] = await server.listen();
  const port = addr!.port;
  return {
    server,
    net,
    audit,
    clock,
    root,
    port,
    connect(from) {
      const addr = typeof from === "string"
        ? { hostname: from, port: nextPort++ }
        : from ?? { hostname: "127.0.0.1", port: nextPort++ };
      return net.connect({ hostname: "127.0.0.1", port, from: addr });
    },
    async [Symbol.asyncDispose]() {
      await server.close();
      if (given === undefined) {
        fs.rmSync(root, { recursive: true, force: true });
      }
    },
  };
}

/**
 * Reads until EOF.
 *
 * @param conn The connection.
 * @param max Most bytes expected; more fails the test.
 * @returns Everything read.
 */
export async function readAll(
  conn: MemoryConn,
  max = 256 << 20,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let size = 0;
  const buf = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await within(conn.read(buf), "the end of input");
    if (n === null) break;
    size += n;
    if (size > max) throw new Error(`More than ${max} bytes before EOF`);
    parts.push(buf.slice(0, n));
  }
  const out = new Uint8Array(size);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Reads until EOF and decodes the bytes as UTF-8. */
export async function readText(conn: MemoryConn): Promise<string> {
  return decodeText(await readAll(conn));
}

/**
 * Reads until the text received ends with a newline (or EOF).
 *
 * @param conn The connection.
 * @returns One or more whole lines.
 */
export async function readLine(conn: MemoryConn): Promise<string> {
  const buf = new Uint8Array(1);
  const bytes: number[] = [];
  for (let i = 0; i < 1 << 20; i++) {
    const n = await within(conn.read(buf), "a line");
    if (n === null) break;
    bytes.push(buf[0]!);
    if (buf[0] === 0x0a) break;
  }
  return decodeText(Uint8Array.from(bytes));
}

const enc = new TextEncoder();

/**
 * The bytes a framed client opens with: the preamble and a Hello.
 *
 * @param mode The Hello's mode.
 * @param extra More Hello fields (a ship's `source`).
 * @returns The bytes.
 */
export function helloBytes(
  mode: Mode,
  extra: Record<string, unknown> = {},
): Uint8Array {
  const hello = encodeFrame({
    type: Kind.Hello,
    payload: encodeJson({
      client: "moat/test",
      mode,
      maxFrameSize: 1_048_576,
      ...extra,
    }),
  });
  const out = new Uint8Array(PREAMBLE_SIZE + hello.length);
  out.set(encodePreamble());
  out.set(hello, PREAMBLE_SIZE);
  return out;
}

/** A raw framed client after its Welcome. */
export interface FramedClient {
  conn: MemoryConn;
  reader: FrameReader;
  welcome: Welcome;
  /** Sends one frame. */
  send(type: number, payload: Uint8Array): Promise<void>;
}

/**
 * Connects, sends the preamble and a Hello, and reads the preamble and the
 * Welcome.
 *
 * @param t The server.
 * @param mode The Hello's mode.
 * @param options Extra Hello fields, and the client's address.
 * @returns The client.
 */
export async function openFramed(
  t: TestServer,
  mode: Mode,
  options: { hello?: Record<string, unknown>; from?: string } = {},
): Promise<FramedClient> {
  const conn = await t.connect(options.from);
  await conn.write(helloBytes(mode, options.hello));
  const reader = new FrameReader(conn, { bufferSize: 64 * 1024 });
  const pre = await within(reader.readExact(PREAMBLE_SIZE), "the preamble");
  if (pre[0] !== 0x89) throw new Error(`No preamble: ${decodeText(pre)}`);
  const frame = await within(reader.readFrame(), "the welcome");
  if (frame === null || frame.type !== Kind.Welcome) {
    throw new Error(
      `Expected a welcome, got ${
        frame && `type ${frame.type}: ${decodeText(frame.payload)}`
      }`,
    );
  }
  return {
    conn,
    reader,
    welcome: decodeWelcome(frame.payload),
    send: (type, payload) => conn.write(encodeFrame({ type, payload })),
  };
}

/**
 * Connects, sends the preamble and a Hello, reads the preamble and the
 * Challenge of a server that requires a token, and answers it with `token`.
 *
 * @param t The server.
 * @param mode The Hello's mode.
 * @param token The token to prove.
 * @param options Extra Hello fields, and the client's address.
 * @returns The connection and its reader, before the server's answer.
 */
export async function answerTokenChallenge(
  t: TestServer,
  mode: Mode,
  token: Token,
  options: { hello?: Record<string, unknown>; from?: string } = {},
): Promise<{ conn: MemoryConn; reader: FrameReader }> {
  const conn = await t.connect(options.from);
  await conn.write(helloBytes(mode, options.hello));
  const reader = new FrameReader(conn, { bufferSize: 64 * 1024 });
  await within(reader.readExact(PREAMBLE_SIZE), "the preamble");
  const challenge = await within(reader.readFrame(), "the challenge");
  if (challenge === null || challenge.type !== Kind.Challenge) {
    throw new Error(`Expected a challenge, got ${challenge?.type ?? "EOF"}`);
  }
  await conn.write(encodeFrame({
    type: Kind.Auth,
    payload: answerChallenge(challenge.payload, { token, mode, binding: "" }),
  }));
  return { conn, reader };
}

/**
 * Encodes text as UTF-8.
 *
 * @param text The text.
 * @returns Its bytes.
 */
export function bytes(text: string): Uint8Array {
  return enc.encode(text);
}
