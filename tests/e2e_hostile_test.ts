/**
 * Hostile peers against real `moat` processes over loopback: handshake
 * fuzzing, refused floods, slow clients, SIGKILL faults, a symlink swapped
 * during gets, and injection through chat lines, file names and a hostile
 * server, and floods by allowed peers (gets that never read, chat floods,
 * unread ship acks, empty records). Short versions of what `npm run soak`
 * runs for longer.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import process from "node:process";
import {
  LineWatcher,
  PRESENCE,
  runMoat,
  sha256File,
  spawnMoat,
  startServer,
  tempDir,
  writeRandomFile,
} from "./_e2e.ts";
import {
  checkAuditLines,
  faultRounds,
  fuzzHandshake,
  rawControl,
  refusedFlood,
  sampleRss,
  slowClients,
} from "../soak/hostile.ts";
import { prng } from "../soak/framer_fuzz.ts";
import {
  chatFlood,
  shipFlood,
  type ShipFloodOptions,
  type ShipFloodStats,
  unreadGets,
} from "../soak/amplify.ts";
import { encodeFrame } from "../lib/framer.ts";
import { decodeText, encodePreamble, Kind } from "../lib/protocol.ts";
import { escapeText } from "../lib/text.ts";
import { get } from "../lib/client.ts";
import { createDigest } from "../lib/digest.ts";
import { Buffer } from "node:buffer";
import { getNet } from "../lib/net/mod.ts";
import { PathError } from "../lib/errors.ts";

const enc = new TextEncoder();

function bytesOf(...parts: (string | number[])[]): Uint8Array {
  const arrays = parts.map((
    p,
  ) => (typeof p === "string" ? enc.encode(p) : Uint8Array.from(p)));
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let o = 0;
  for (const a of arrays) {
    out.set(a, o);
    o += a.length;
  }
  return out;
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits until `pred()` holds, polling, or fails after `ms`. */
async function until(
  pred: () => boolean,
  ms: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await delay(20);
  }
}

/** A raw framed client: preamble, hello, then frames both ways. */
async function framedClient(port: number, mode: "chat" | "get") {
  const sock = net.connect({ port, host: "127.0.0.1" });
  sock.on("error", () => {});
  let buf = new Uint8Array(0);
  let preamble = false;
  const frames: { type: number; payload: Uint8Array }[] = [];
  sock.on("data", (d: Uint8Array) => {
    const next = new Uint8Array(buf.length + d.length);
    next.set(buf);
    next.set(d, buf.length);
    buf = next;
    if (!preamble && buf.length >= 8) {
      preamble = true;
      buf = buf.subarray(8);
    }
    while (preamble && buf.length >= 5) {
      const len = buf[1]! * 0x100_0000 +
        (buf[2]! << 16 | buf[3]! << 8 | buf[4]!);
      if (buf.length < 5 + len) break;
      frames.push({ type: buf[0]!, payload: buf.slice(5, 5 + len) });
      buf = buf.subarray(5 + len);
    }
  });
  await new Promise<void>((r) => sock.on("connect", () => r()));
  const hello = encodeFrame({
    type: Kind.Hello,
    payload: enc.encode(
      JSON.stringify({ client: "moat/test", mode, maxFrameSize: 1_048_576 }),
    ),
  });
  sock.write(bytesOf([...encodePreamble()], [...hello]));
  await until(() => frames.length > 0, 10_000, "welcome");
  const welcome = frames.shift()!;
  assert.equal(welcome.type, Kind.Welcome, decodeText(welcome.payload));
  const { name } = JSON.parse(decodeText(welcome.payload));
  return {
    sock,
    name: name as string,
    port: sock.localPort!,
    frames,
    send(type: number, payload: Uint8Array) {
      sock.write(encodeFrame({ type, payload }));
    },
  };
}

/** A raw plain-text client that collects every byte it receives. */
async function plainClient(port: number) {
  const sock = net.connect({ port, host: "127.0.0.1" });
  sock.on("error", () => {});
  const chunks: Uint8Array[] = [];
  let size = 0;
  sock.on("data", (d: Uint8Array) => {
    chunks.push(new Uint8Array(d));
    size += d.length;
  });
  const ended = new Promise<void>((r) => {
    sock.on("end", () => r());
    sock.on("close", () => r());
  });
  await new Promise<void>((r) => sock.on("connect", () => r()));
  return {
    sock,
    port: sock.localPort!,
    /** Resolves once the server ended its side (or the socket closed). */
    ended,
    /** Everything received, decoded strictly: invalid UTF-8 here is a finding. */
    text(): string {
      const all = new Uint8Array(size);
      let o = 0;
      for (const c of chunks) {
        all.set(c, o);
        o += c.length;
      }
      return new TextDecoder("utf-8", { fatal: true }).decode(all);
    },
  };
}

/** The server's name for the connection from `port`, from the audit log. */
function nameOf(events: Record<string, unknown>[], port: number): string {
  const e = events.find((e) =>
    e.event === "accepted" && e.peer === `127.0.0.1:${port}`
  );
  assert.ok(e, `no accepted event for port ${port}`);
  return String(e.name);
}

// ---------------------------------------------------------------------------
// Handshake fuzzing

test("moat serve answers or closes each of 1,000 hostile handshakes and keeps serving gets", async () => {
  using root = tempDir();
  using out = tempDir();
  fs.writeFileSync(path.join(root.dir, "small.txt"), "hello small\n");
  fs.mkdirSync(path.join(root.dir, "sub"));
  await using server = await startServer([
    "--root",
    root.dir,
    "--handshake-timeout",
    "2",
    "--idle-timeout",
    "4",
    "--reply",
    "pong",
    // 64 fuzzing connections at once, all from 127.0.0.1, then a get.
    "--max-conns-per-peer",
    "1000",
  ]);
  const stats = await fuzzHandshake({
    port: server.port,
    seed: 8,
    cases: 1000,
    concurrency: 64,
    timeoutMs: 9000,
  });
  assert.equal(stats.cases, 1000);
  assert.deepEqual(stats.silent, [], "connections neither answered nor closed");
  assert.deepEqual(
    stats.lingering,
    [],
    "half-closed connections the server never closed",
  );
  assert.ok(Object.keys(stats.kinds).length >= 12, JSON.stringify(stats.kinds));
  assert.equal(server.child.exitCode, null, "server exited");
  const r = await runMoat([
    "get",
    "FILE:small.txt",
    "--server",
    `127.0.0.1:${server.port}`,
  ], { cwd: out.dir });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(
    fs.readFileSync(path.join(out.dir, "small.txt"), "utf8"),
    "hello small\n",
  );
  // Every session that was accepted is closed again: no slot leaks.
  await until(
    () => {
      const c = checkAuditLines(server.audit.lines.join("\n")).events;
      return c.accepted === c.closed;
    },
    15_000,
    "every accepted session closed",
  );
  const audit = checkAuditLines(server.audit.lines.join("\n"));
  assert.deepEqual(audit.bad, []);
  assert.equal(audit.events.accepted, 1001);
});

test("moat serve refuses a flood of 500 connections from refused addresses while an allowed get completes", async () => {
  using root = tempDir();
  using out = tempDir();
  writeRandomFile(path.join(root.dir, "big.bin"), 32 << 20, 21);
  await using server = await startServer([
    "--allow",
    "127.0.0.1",
    "--root",
    root.dir,
  ]);
  const rss = sampleRss(server.child.pid!);
  const getting = runMoat([
    "get",
    "FILE:big.bin",
    "--server",
    `127.0.0.1:${server.port}`,
  ], {
    cwd: out.dir,
    timeoutMs: 60_000,
  });
  const flood = await refusedFlood({
    port: server.port,
    rate: 1000,
    durationMs: 500,
    overrunMs: 10_000,
    drainMs: 5000,
  });
  const r = await getting;
  const peakKiB = rss.stop();
  assert.equal(r.code, 0, r.stderr);
  assert.equal(
    await sha256File(path.join(out.dir, "big.bin")),
    await sha256File(path.join(root.dir, "big.bin")),
  );
  assert.equal(flood.attempted, 500);
  assert.deepEqual(flood.unexpected, []);
  assert.equal(flood.unfinished, 0);
  assert.equal(
    flood.refusedNotice + flood.closedOther + flood.connectErrors,
    500,
  );
  assert.ok(flood.refusedNotice >= 450, JSON.stringify(flood));
  await until(
    () => checkAuditLines(server.audit.lines.join("\n")).events.refused === 500,
    10_000,
    "500 refused events",
  );
  const accepted = server.events().filter((e) => e.event === "accepted");
  assert.ok(
    accepted.every((e) => String(e.peer).startsWith("127.0.0.1:")),
    "a refused address was accepted",
  );
  assert.ok(peakKiB < 400 * 1024, `server RSS peaked at ${peakKiB} KiB`);
  assert.deepEqual(checkAuditLines(server.audit.lines.join("\n")).bad, []);
});

test("moat serve closes 50 slow handshakes at --handshake-timeout while an allowed client still gets a file", async () => {
  using root = tempDir();
  using out = tempDir();
  fs.writeFileSync(path.join(root.dir, "a.txt"), "allowed\n");
  await using server = await startServer([
    "--handshake-timeout",
    "1",
    "--root",
    root.dir,
  ]);
  const slow = slowClients({
    port: server.port,
    clients: 50,
    intervalMs: 1000,
    giveUpMs: 8000,
  });
  // The get runs while all 50 hold a connection.
  await until(
    () => server.events().filter((e) => e.event === "accepted").length === 50,
    10_000,
    "50 slow clients accepted",
  );
  const r = await runMoat([
    "get",
    "FILE:a.txt",
    "--server",
    `127.0.0.1:${server.port}`,
  ], { cwd: out.dir });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(
    fs.readFileSync(path.join(out.dir, "a.txt"), "utf8"),
    "allowed\n",
  );
  const stats = await slow;
  assert.equal(stats.held, 0, "slow clients still open after 8 s");
  assert.equal(stats.closed, 50);
  // When they close (at the deadline, not before) is checked on a fake clock
  // in tests/server_handshake_test.ts.
  await until(
    () =>
      server.events().filter((e) =>
        e.event === "closed" && e.reason === "handshake timeout"
      ).length === 50,
    5000,
    "50 handshake timeouts",
  );
});

test("moat serve still recognises framed clients whose preamble arrived while it was stalled", async () => {
  // Under a refused flood the server's event loop lagged by seconds, and a
  // `moat get` sent its preamble while the server was behind: the 1 s
  // "silence means plain text" timer fired before the waiting bytes were
  // read, the preamble was relayed as chat, and the client waited forever.
  // SIGSTOP reproduces the stall.
  await using server = await startServer([]);
  const socks = await Promise.all(Array.from({ length: 10 }, async () => {
    const sock = net.connect({ port: server.port, host: "127.0.0.1" });
    const seen = { sock, first: -1 };
    sock.on("data", (d: Uint8Array) => {
      if (seen.first < 0) seen.first = d[0]!;
    });
    sock.on("error", () => {});
    await new Promise<void>((r) => sock.on("connect", () => r()));
    return seen;
  }));
  await until(
    () => server.events().filter((e) => e.event === "accepted").length === 10,
    10_000,
    "10 accepted",
  );
  // Each "accepted" line is written in the turn that arms the detection timer.
  const hello = encodeFrame({
    type: Kind.Hello,
    payload: enc.encode(
      JSON.stringify({
        client: "moat/test",
        mode: "chat",
        maxFrameSize: 65_536,
      }),
    ),
  });
  process.kill(server.child.pid!, "SIGSTOP");
  try {
    for (const s of socks) {
      s.sock.write(bytesOf([...encodePreamble()], [...hello]));
    }
    await delay(1500);
  } finally {
    process.kill(server.child.pid!, "SIGCONT");
  }
  await until(
    () => socks.every((s) => s.first >= 0),
    5000,
    "an answer on every connection",
  ).catch(() => {});
  for (const s of socks) s.sock.destroy();
  const chats = server.events().filter((e) => e.event === "chat").map((e) =>
    e.text
  );
  assert.deepEqual(chats, [], "preambles relayed as chat");
  assert.deepEqual(
    socks.map((s) => s.first),
    socks.map(() => 0x89),
    "every client gets a preamble back",
  );
});

// ---------------------------------------------------------------------------
// Floods by allowed peers: short versions of the soak's rows (soak/amplify.ts)

/** The most a flood by allowed peers may make the server's RSS peak at. */
const FLOOD_RSS_KIB = 256 * 1024;

/** Gets `FILE:small.txt` from the server; true when it arrived whole. */
async function smallGet(port: number, dir: string): Promise<boolean> {
  const out = path.join(dir, `small-${Math.random().toString(36).slice(2)}`);
  const r = await runMoat([
    "get",
    "FILE:small.txt",
    "-o",
    out,
    "--server",
    `127.0.0.1:${port}`,
  ], { timeoutMs: 60_000 });
  return r.code === 0 && fs.readFileSync(out, "utf8") === "hello small\n";
}

/** A root with a 32 MiB `big.bin` and a `small.txt`. */
function floodRoot(dir: string): string {
  const root = path.join(dir, "root");
  fs.mkdirSync(root);
  writeRandomFile(path.join(root, "big.bin"), 32 << 20, 41);
  fs.writeFileSync(path.join(root, "small.txt"), "hello small\n");
  return root;
}

test("moat serve keeps 200 gets that never read within its send budget and serves a get meanwhile", async () => {
  using tmp = tempDir();
  const root = floodRoot(tmp.dir);
  // All 200 come from 127.0.0.1: no per-peer cap, so that the send budget
  // alone bounds them.
  await using server = await startServer([
    "--root",
    root,
    "--max-conns-per-peer",
    "1000",
  ]);
  const rss = sampleRss(server.child.pid!, 50);
  let during = false;
  const stats = await unreadGets({
    port: server.port,
    // Without a budget, 200 stalled gets held 1 MiB each: over 256 MiB.
    count: 200,
    path: "big.bin",
    hold: async () => {
      // Every get started (lines the audit rate held back are counted in
      // `suppressed` lines once the peer is quiet).
      await until(
        () =>
          (checkAuditLines(server.audit.lines.join("\n")).events
            .get_started ?? 0) >= 200,
        30_000,
        "200 gets started",
      );
      during = await smallGet(server.port, tmp.dir);
    },
  });
  const peak = rss.stop();
  assert.equal(stats.sent, 200);
  assert.equal(stats.closedByServer, 0);
  assert.ok(during, "a get while 200 gets were stalled");
  assert.ok(await smallGet(server.port, tmp.dir), "a get afterwards");
  assert.ok(peak <= FLOOD_RSS_KIB, `server RSS peaked at ${peak} KiB`);
});

test("moat serve holds a plain and a framed chat flood to --chat-rate and --audit-rate and drops no line", async () => {
  using tmp = tempDir();
  const root = floodRoot(tmp.dir);
  const server = await startServer([
    "--root",
    root,
    "--chat-rate",
    "20",
    "--audit-rate",
    "5",
  ]);
  const rss = sampleRss(server.child.pid!, 50);
  const started = performance.now();
  let during = false;
  let stats: Awaited<ReturnType<typeof chatFlood>>[];
  try {
    const flooding = Promise.all([
      chatFlood({ port: server.port, framed: false, durationMs: 1500 }),
      chatFlood({ port: server.port, framed: true, durationMs: 1500 }),
    ]);
    during = await smallGet(server.port, tmp.dir);
    stats = await flooding;
  } finally {
    // What the server still holds of the flood is in its sockets, read at
    // the chat rate; the shutdown ends it and summarises the audit lines.
    assert.equal(await server.stop(), 0);
  }
  const seconds = (performance.now() - started) / 1000;
  const peak = rss.stop();
  assert.ok(during, "a get during the flood");
  const written = stats.reduce((n, s) => n + s.linesWritten, 0);
  // Both clients share one address: 40 lines at once, then 20 a second.
  const relayed = server.stdout.lines.filter((l) => / \d+ x+$/.test(l));
  assert.ok(relayed.length > 0);
  assert.ok(
    relayed.length <= 40 + 20 * Math.ceil(seconds + 1),
    `${relayed.length} lines relayed in ${seconds.toFixed(1)} s`,
  );
  assert.ok(written > relayed.length, "the flood outran the rate");
  // The audit log wrote 50 at once, then 5 a second, and counted the rest:
  // every relayed line is in it, written or in a `suppressed` count.
  const chatLines = server.events().filter((e) => e.event === "chat");
  assert.ok(
    chatLines.length <= 50 + 5 * Math.ceil(seconds + 1),
    `${chatLines.length} chat audit lines in ${seconds.toFixed(1)} s`,
  );
  const audit = checkAuditLines(server.audit.lines.join("\n"));
  assert.equal(audit.events.chat, relayed.length);
  assert.deepEqual(audit.bad, []);
  assert.ok(peak <= FLOOD_RSS_KIB, `server RSS peaked at ${peak} KiB`);
});

/**
 * Runs a ship flood against a fresh server with a vault, checking a get
 * during it and one after it and the server's peak RSS.
 */
async function shipFloodServed(
  flood: Omit<ShipFloodOptions, "port" | "durationMs">,
): Promise<ShipFloodStats> {
  using tmp = tempDir();
  const root = floodRoot(tmp.dir);
  await using server = await startServer([
    "--root",
    root,
    "--vault",
    path.join(tmp.dir, "vault"),
  ]);
  const rss = sampleRss(server.child.pid!, 50);
  const flooding = shipFlood({
    ...flood,
    port: server.port,
    durationMs: 1500,
  });
  const during = await smallGet(server.port, tmp.dir);
  const stats = await flooding;
  const peak = rss.stop();
  assert.ok(during, "a get during the flood");
  assert.ok(await smallGet(server.port, tmp.dir), "a get afterwards");
  assert.ok(peak <= FLOOD_RSS_KIB, `server RSS peaked at ${peak} KiB`);
  return stats;
}

test("moat serve stops reading shippers that do not read their acks, and serves a get meanwhile", async () => {
  const stats = await shipFloodServed({
    connections: 4,
    recordsPerBatch: 1,
    lineBytes: 100,
    readAcks: false,
  });
  assert.equal(stats.shippers, 4);
});

test("moat serve takes batches of thousands of empty records from 8 shippers within its budgets, and serves a get meanwhile", async () => {
  const stats = await shipFloodServed({
    connections: 8,
    recordsPerBatch: 4096,
    lineBytes: 0,
    readAcks: true,
  });
  assert.equal(stats.shippers, 8);
  assert.ok(stats.records > 0);
});

// ---------------------------------------------------------------------------
// Faults

test("moat get survives 5 rounds of SIGKILL to a random side without a wrong complete-looking file", async () => {
  using base = tempDir();
  const root = path.join(base.dir, "root");
  const out = path.join(base.dir, "out");
  fs.mkdirSync(root);
  fs.mkdirSync(out);
  writeRandomFile(path.join(root, "big.bin"), 32 << 20, 31);
  const auditFile = path.join(base.dir, "audit.log");
  const { results: rounds } = await faultRounds({
    root,
    auditFile,
    out,
    rounds: 5,
    rand: prng(Number(process.env.MOAT_FUZZ_SEED ?? 5)),
  });
  assert.equal(rounds.length, 5);
  for (const [i, r] of rounds.entries()) {
    assert.notEqual(r.after, "wrong", `round ${i}: ${JSON.stringify(r)}`);
    assert.deepEqual(r.strays, [], `round ${i}`);
    assert.ok(r.rerunOk, `round ${i}: ${JSON.stringify(r)}`);
  }
  assert.deepEqual(checkAuditLines(fs.readFileSync(auditFile, "utf8")).bad, []);
});

// ---------------------------------------------------------------------------
// A symlink swapped in during gets over the wire

test("moat get never receives outside content while a served path is swapped for a symlink", async () => {
  using base = tempDir();
  const root = path.join(base.dir, "root");
  const race = path.join(root, "race");
  const outside = path.join(base.dir, "outside");
  const out = path.join(base.dir, "out");
  for (const d of [path.join(race, "d"), path.join(outside, "d"), out]) {
    fs.mkdirSync(d, { recursive: true });
  }
  const inside = "INSIDE:" + "i".repeat(64 * 1024);
  fs.writeFileSync(path.join(race, "d", "f"), inside);
  fs.writeFileSync(path.join(race, "f"), inside);
  fs.writeFileSync(path.join(outside, "d", "f"), "OUTSIDE:secret");
  fs.writeFileSync(path.join(outside, "f"), "OUTSIDE:secret");
  fs.symlinkSync(path.join(outside, "d"), path.join(race, "d_sym"));
  fs.symlinkSync(path.join(outside, "f"), path.join(race, "f_sym"));
  await using server = await startServer(["--root", root]);
  // A child swaps race/d and race/f with links to the outside, by rename(2).
  const stop = path.join(base.dir, "stop");
  const script = path.join(base.dir, "swap.mjs");
  fs.writeFileSync(
    script,
    `import fs from "node:fs";
const dir = ${JSON.stringify(race)};
const stop = ${JSON.stringify(stop)};
const end = Date.now() + 30000;
let cycles = 0;
console.log("ready");
while (cycles < 200000 && Date.now() < end && !fs.existsSync(stop)) {
  for (const n of ["d", "f"]) {
    fs.renameSync(dir + "/" + n, dir + "/" + n + "_real");
    fs.renameSync(dir + "/" + n + "_sym", dir + "/" + n);
    fs.renameSync(dir + "/" + n, dir + "/" + n + "_sym");
    fs.renameSync(dir + "/" + n + "_real", dir + "/" + n);
  }
  cycles++;
}
console.log("cycles " + cycles);
`,
  );
  const runtime = process.execPath;
  const child = spawn(
    runtime,
    navigator.userAgent.startsWith("Deno") ? ["run", "-A", script] : [script],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const watch = new LineWatcher(child.stdout!);
  const exited = new Promise<number | null>((r) =>
    child.on("close", (c) => r(c))
  );
  await watch.waitFor((l) => l === "ready", 20_000, "swapper ready");
  const outcomes: Record<string, number> = {};
  let escapes = 0;
  const client = {
    net: getNet(),
    server: { hostname: "127.0.0.1", port: server.port },
    version: "0.0.0-test",
  };
  const deadline = Date.now() + 10_000;
  let attempts = 0;
  try {
    while (attempts < 400 && Date.now() < deadline) {
      const p = attempts % 2 === 0 ? "race/d/f" : "race/f";
      const target = path.join(out, `got${attempts % 2}`);
      attempts++;
      try {
        await get(client, { path: p, out: target, force: true });
        if (fs.readFileSync(target, "utf8") !== inside) escapes++;
        outcomes.ok = (outcomes.ok ?? 0) + 1;
      } catch (err) {
        assert.ok(err instanceof PathError, String(err));
        outcomes[err.code] = (outcomes[err.code] ?? 0) + 1;
      }
    }
    // And a few through the real client process.
    for (let i = 0; i < 4; i++) {
      const target = path.join(out, `cli${i}`);
      const r = await runMoat([
        "get",
        `FILE:${i % 2 ? "race/f" : "race/d/f"}`,
        "-o",
        target,
        "--server",
        `127.0.0.1:${server.port}`,
      ]);
      if (r.code === 0) {
        if (fs.readFileSync(target, "utf8") !== inside) escapes++;
        outcomes.cli_ok = (outcomes.cli_ok ?? 0) + 1;
      } else {
        assert.equal(r.code, 4, r.stderr);
        assert.equal(fs.existsSync(target), false);
        outcomes.cli_refused = (outcomes.cli_refused ?? 0) + 1;
      }
    }
  } finally {
    fs.writeFileSync(stop, "");
    assert.equal(await exited, 0);
  }
  const cycles = Number(/cycles (\d+)/.exec(watch.lines.join("\n"))?.[1] ?? 0);
  assert.equal(escapes, 0, JSON.stringify(outcomes));
  assert.ok(cycles > 0, "the swapper never swapped");
  assert.ok(
    (outcomes.ok ?? 0) > 0,
    `nothing was ever served: ${JSON.stringify(outcomes)}`,
  );
  assert.ok(
    (outcomes.ERR_OUTSIDE_ROOT ?? 0) + (outcomes.ERR_NOT_FOUND ?? 0) +
        (outcomes.ERR_NOT_FILE ?? 0) > 0,
    `the swap never hit a get: ${JSON.stringify(outcomes)}`,
  );
  assert.ok(attempts >= 50, `only ${attempts} gets`);
  for (const code of Object.keys(outcomes)) {
    assert.ok(
      [
        "ok",
        "cli_ok",
        "cli_refused",
        "ERR_OUTSIDE_ROOT",
        "ERR_NOT_FOUND",
        "ERR_NOT_FILE",
      ].includes(code),
      code,
    );
  }
  assert.deepEqual(checkAuditLines(server.audit.lines.join("\n")).bad, []);
});

// ---------------------------------------------------------------------------
// Injection

/** Messages a plain client sends (no LF: LF ends a plain line). */
const HOSTILE_LINES: Uint8Array[] = [
  bytesOf("hi\r[operator] forged"),
  bytesOf("\x1b[2J\x1b[H\x1b]0;pwned\x07"),
  bytesOf("nul\x00del\x7fbs\x08tab\t"),
  bytesOf([0xc2, 0x9b], "31m C1 CSI ", [0xc2, 0x85], "NEL"),
  bytesOf(
    "bad ",
    [0xff, 0xfe],
    " overlong ",
    [0xc0, 0xaf],
    " surrogate ",
    [0xed, 0xa0, 0x80],
    " cut ",
    [0xe2, 0x80],
  ),
  bytesOf("\u2028sep\u2029 \u202eevil\u202c \u2066iso\u2069 \ufeffbom"),
  bytesOf('{"ts":"x","event":"forged"}'),
];

/** Extra messages only a framed client can send (LF inside one message). */
const FRAMED_ONLY: Uint8Array[] = [
  bytesOf("first\n[operator] second line"),
  bytesOf("\r\n"),
  bytesOf('\n{"event":"refused"}\n'),
];

/** The lines of a transcript that are not join or leave lines. */
function chatLines(lines: readonly string[]): string[] {
  return lines.filter((l) => !PRESENCE.test(l));
}

/** The frames of a framed receiver that are not join or leave lines. */
function chatFrames(frames: readonly { payload: Uint8Array }[]) {
  return frames.filter((f) =>
    JSON.parse(decodeText(f.payload)).from !== "server"
  );
}

test("moat serve relays hostile chat text as one escaped, correctly tagged line per message", async () => {
  await using server = await startServer([]);
  const port = server.port;
  // Receivers: the moat chat client (a terminal), a plain client (nc), a framed client.
  const cli = spawnMoat(["chat", "--server", `127.0.0.1:${port}`]);
  const cliOut = new LineWatcher(cli.stdout!);
  const cliErr = new LineWatcher(cli.stderr!);
  await cliErr.waitFor(
    (l) => l.includes("connected"),
    20_000,
    "chat connected",
  );
  const plainRx = await plainClient(port);
  plainRx.sock.write("\n"); // an empty line: joins the chat, says nothing
  const framedRx = await framedClient(port, "chat");
  // Senders.
  const plainTx = await plainClient(port);
  plainTx.sock.write("\n");
  const framedTx = await framedClient(port, "chat");
  await server.waitEvent(
    (e) => e.event === "accepted" && e.peer === `127.0.0.1:${plainTx.port}`,
    "plain sender",
  );
  // An operator line reaches a receiver only once it has joined the chat.
  server.child.stdin!.write("sync\n");
  await cliOut.waitFor(
    (l) => l === "[operator] sync",
    15_000,
    "sync at the chat client",
  );
  // Join lines (from the server) come and go around it; they are not compared.
  await until(
    () =>
      chatLines(plainRx.text().split("\n")).join("\n") === "[operator] sync\n",
    15_000,
    "sync at the plain client",
  );
  await until(
    () => chatFrames(framedRx.frames).length === 1,
    15_000,
    "sync at framed",
  );
  assert.deepEqual(
    JSON.parse(decodeText(chatFrames(framedRx.frames)[0]!.payload)),
    {
      from: "operator",
      addr: "",
      text: "sync",
    },
  );
  const plainName = nameOf(server.events(), plainTx.port);
  const sent: { from: string; port: number; bytes: Uint8Array }[] = [];
  try {
    for (const line of HOSTILE_LINES) {
      plainTx.sock.write(bytesOf([...line], "\n"));
      sent.push({ from: plainName, port: plainTx.port, bytes: line });
    }
    // The plain sender's lines are all relayed before the framed sender
    // speaks, so every receiver sees one order.
    await until(
      () => chatLines(server.stdout.lines).length === HOSTILE_LINES.length,
      15_000,
      "the plain lines at the operator",
    );
    for (const msg of [...HOSTILE_LINES, ...FRAMED_ONLY]) {
      framedTx.send(Kind.Chat, msg);
      sent.push({ from: framedTx.name, port: framedTx.port, bytes: msg });
    }
    const expected = sent.map((m) =>
      `[${m.from} 127.0.0.1:${m.port}] ${escapeText(decodeText(m.bytes))}`
    );
    // Lines arrive in order, so once the last one is in, every line (and any
    // extra one) is: the comparisons below see everything.
    const last = expected.at(-1)!;
    await cliOut.waitFor((l) => l === last, 15_000, "the last line at chat");
    await server.stdout.waitFor(
      (l) => l === last,
      15_000,
      "the last line at the operator",
    );
    await until(
      () => plainRx.text().endsWith(`\n${last}\n`),
      15_000,
      "the last line at the plain client",
    );
    const lastText = decodeText(sent.at(-1)!.bytes);
    await until(
      () =>
        framedRx.frames.some((f) =>
          JSON.parse(decodeText(f.payload)).text === lastText
        ),
      15_000,
      "the last frame at the framed client",
    );
    // The sync line was first everywhere; what follows it is compared.
    const cliLines = chatLines(cliOut.lines).slice(1);
    const plainLines = chatLines(plainRx.text().split("\n")).slice(1, -1);
    const framedLines = chatFrames(framedRx.frames).slice(1);
    for (
      const [who, lines] of [
        ["moat chat stdout", cliLines],
        ["operator stdout", chatLines(server.stdout.lines)],
        ["plain client", plainLines],
      ] as const
    ) {
      assert.deepEqual(lines, expected, who);
      for (const l of lines) {
        assert.equal(rawControl(l), undefined, `${who}: ${JSON.stringify(l)}`);
      }
    }
    // Framed receivers get the sender's own name and address, whatever the text says.
    assert.deepEqual(
      framedLines.map((f) => JSON.parse(decodeText(f.payload))),
      sent.map((m) => ({
        from: m.from,
        addr: `127.0.0.1:${m.port}`,
        text: decodeText(m.bytes),
      })),
    );
    // The audit log (the operator's stderr) is one JSON object per line, with
    // nothing that can drive a terminal or break a line. It is a pipe of its
    // own, so it may trail stdout: wait for every chat line in it.
    await until(
      () =>
        server.events().filter((e) => e.event === "chat").length >=
          sent.length,
      15_000,
      "every chat line in the audit log",
    );
    const audit = checkAuditLines(server.audit.lines.join("\n"));
    assert.deepEqual(audit.bad, []);
    assert.equal(audit.events.chat, sent.length);
    for (const l of server.audit.lines) {
      assert.equal(rawControl(l), undefined, `audit: ${l}`);
    }
    const chats = server.events().filter((e) => e.event === "chat").map((e) =>
      e.text
    );
    assert.deepEqual(chats, sent.map((m) => decodeText(m.bytes)));
  } finally {
    cli.stdin!.end();
    plainRx.sock.destroy();
    plainTx.sock.destroy();
    framedRx.sock.destroy();
    framedTx.sock.destroy();
    await new Promise((r) =>
      cli.exitCode === null ? cli.on("close", r) : r(null)
    );
  }
});

test("moat get and moat serve show hostile file names escaped on one line", async () => {
  using root = tempDir();
  using out = tempDir();
  const bidiName = "bidi\u202etxt.exe";
  fs.writeFileSync(path.join(root.dir, bidiName), "x");
  await using server = await startServer(["--root", root.dir]);
  const srv = `127.0.0.1:${server.port}`;
  // Through the client.
  for (
    const name of [
      "a\x1b[2Jb",
      "a\rb",
      "a\nmoat: saved evil",
      "\u202eevil",
      "a\x9bb",
      "nul\x7f",
    ]
  ) {
    const r = await runMoat(
      ["get", `FILE:${name}`, "-o", "x", "--server", srv],
      { cwd: out.dir },
    );
    assert.equal(r.code, 4, `${JSON.stringify(name)}: ${r.stderr}`);
    assert.equal(r.stderr.split("\n").length, 2, JSON.stringify(r.stderr));
    assert.equal(rawControl(r.stderr), undefined, JSON.stringify(r.stderr));
  }
  const ok = await runMoat(["get", `FILE:${bidiName}`, "--server", srv], {
    cwd: out.dir,
  });
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(fs.readFileSync(path.join(out.dir, bidiName), "utf8"), "x");
  assert.equal(rawControl(ok.stderr), undefined, JSON.stringify(ok.stderr));
  // Raw requests: invalid UTF-8 and escapes inside the JSON path.
  const framed = await framedClient(server.port, "get");
  framed.send(
    Kind.Get,
    bytesOf('{"path":"a', [0xff, 0xc0, 0xaf], '\\u001b[2J\\r\\n","offset":0}'),
  );
  await until(() => framed.frames.length > 0, 10_000, "error frame");
  const reply = framed.frames[0]!;
  assert.equal(reply.type, Kind.Error);
  const body = JSON.parse(decodeText(reply.payload));
  assert.equal(rawControl(body.message), undefined, body.message);
  framed.sock.destroy();
  const plain = await plainClient(server.port);
  plain.sock.write(bytesOf("FILE:a", [0xff], "\x1b[2J\r\n"));
  // The server half-closes after its one line.
  await plain.ended;
  const text = plain.text();
  assert.match(text, /^ERR [A-Z_]+ .*\n$/);
  assert.equal(rawControl(text), undefined, JSON.stringify(text));
  plain.sock.destroy();
  const plainName = nameOf(server.events(), plain.port);
  for (const name of [framed.name, plainName]) {
    await server.waitEvent(
      (e) => e.event === "closed" && e.name === name,
      `${name} closed`,
    );
  }
  for (const l of server.audit.lines) {
    assert.equal(rawControl(l), undefined, `audit: ${l}`);
  }
  assert.deepEqual(checkAuditLines(server.audit.lines.join("\n")).bad, []);
});

/**
 * A fake server that answers every connection after reading the client's
 * first bytes: with `reply`, then closes, or with `hold`, says nothing more
 * and keeps the connection open (a stalled server); or `reply` is a function
 * that does the talking.
 */
async function hostileServer(
  reply: Uint8Array | ((sock: net.Socket) => void),
  options: { hold?: boolean } = {},
) {
  const socks = new Set<net.Socket>();
  let talked = 0;
  const srv = net.createServer((sock) => {
    socks.add(sock);
    sock.on("close", () => socks.delete(sock));
    sock.on("error", () => {});
    sock.once("data", () => {
      talked++;
      if (typeof reply === "function") reply(sock);
      else if (options.hold) sock.write(reply);
      else sock.end(reply);
    });
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  return {
    port: (srv.address() as net.AddressInfo).port,
    /** Connections whose first bytes arrived so far. */
    get talked() {
      return talked;
    },
    [Symbol.asyncDispose]: () => {
      for (const sock of socks) sock.destroy();
      return new Promise<void>((r) => srv.close(() => r()));
    },
  };
}

/** A FileMeta frame's payload for `x` of `size` bytes, checked by CRC-32. */
function metaOfX(size: number): Uint8Array {
  return enc.encode(
    JSON.stringify({ path: "x", size, offset: 0, mtimeMs: 0, digest: "crc32" }),
  );
}

/** Runs `moat get FILE:x` in `dir` against a fake server on `port`. */
function getFrom(port: number, dir: string, extra: string[] = []) {
  return runMoat(["get", "FILE:x", "--server", `127.0.0.1:${port}`, ...extra], {
    cwd: dir,
    timeoutMs: 30_000,
  });
}

const WELCOME = encodeFrame({
  type: Kind.Welcome,
  payload: enc.encode(
    JSON.stringify({
      server: "moat/stalled",
      name: "c1",
      peer: "127.0.0.1:1",
      maxFrameSize: 1 << 20,
    }),
  ),
});

test("moat get, chat and ship give up on a server that accepts but never finishes the handshake", async () => {
  await using fake = await hostileServer(new Uint8Array(0), { hold: true });
  using out = tempDir();
  const server = `127.0.0.1:${fake.port}`;
  for (const args of [["get", "FILE:x"], ["chat"]]) {
    const r = await runMoat([...args, "--server", server, "--timeout", "1"], {
      cwd: out.dir,
      timeoutMs: 30_000,
    });
    assert.equal(r.code, 6, `${args[0]}: ${r.stderr}`);
    assert.match(
      r.stderr,
      /^moat: .*did not finish the handshake within 1 s \(see --timeout\)\n$/,
    );
  }
  assert.deepEqual(
    fs.readdirSync(out.dir),
    [],
    "no part file after a failed handshake",
  );
  // A shipper stopped while the handshake hangs exits at once, not after --timeout.
  fs.writeFileSync(path.join(out.dir, "app.log"), "a line\n");
  const ship = spawnMoat([
    "ship",
    path.join(out.dir, "app.log"),
    "--server",
    server,
    "--state",
    path.join(out.dir, "ship.json"),
    "--timeout",
    "600",
  ]);
  const exited = new Promise<number | null>((r) =>
    ship.on("close", (c) => r(c))
  );
  // The shipper's hello arrived: it is waiting in the handshake.
  await until(() => fake.talked === 3, 20_000, "the shipper's hello");
  process.kill(ship.pid!, "SIGTERM");
  // Killed (and failed) if it waits for --timeout (600 s) instead.
  const killer = setTimeout(() => ship.kill("SIGKILL"), 20_000);
  const code = await exited;
  clearTimeout(killer);
  assert.equal(code, 0);
});

test("moat get gives up on a server that stalls mid-transfer and keeps the part file for --resume", async () => {
  const meta = metaOfX(1000);
  await using fake = await hostileServer(
    bytesOf([...encodePreamble()], [
      ...WELCOME,
      ...encodeFrame({ type: Kind.FileMeta, payload: meta }),
      ...encodeFrame({
        type: Kind.FileData,
        payload: new Uint8Array(300).fill(7),
      }),
    ]),
    { hold: true },
  );
  using out = tempDir();
  const r = await getFrom(fake.port, out.dir, ["--timeout", "1"]);
  assert.equal(r.code, 6, r.stderr);
  assert.match(
    r.stderr,
    /sent nothing for 1 s \(see --timeout\); run the same command with --resume to continue\n$/,
  );
  assert.equal(
    fs.existsSync(path.join(out.dir, "x")),
    false,
    "no complete-looking file",
  );
  assert.equal(fs.statSync(path.join(out.dir, "x.moat-part")).size, 300);
});

test("moat get --timeout does not cut a slow transfer that keeps moving", async () => {
  // 20 bytes of file in a FileData frame trickled a byte per 100 ms (2.5 s in
  // all) against --timeout 1: the deadline is for silence, not for slowness.
  const content = new Uint8Array(20).fill(42);
  const crc = createDigest("crc32");
  crc.update(content);
  const meta = metaOfX(20);
  const data = encodeFrame({ type: Kind.FileData, payload: content });
  await using fake = await hostileServer(async (sock) => {
    sock.write(
      bytesOf([...encodePreamble()], [
        ...WELCOME,
        ...encodeFrame({ type: Kind.FileMeta, payload: meta }),
      ]),
    );
    for (let i = 0; i < data.length && !sock.destroyed; i++) {
      await delay(100);
      sock.write(data.subarray(i, i + 1));
    }
    sock.end(
      encodeFrame({
        type: Kind.FileEnd,
        payload: Buffer.from(crc.hex(), "hex"),
      }),
    );
  });
  using out = tempDir();
  const r = await getFrom(fake.port, out.dir, ["--timeout", "1"]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(
    new Uint8Array(fs.readFileSync(path.join(out.dir, "x"))),
    content,
  );
});

test("moat get --timeout takes whole seconds of at least 1", async () => {
  for (const bad of ["0", "1.5", "soon", ""]) {
    const r = await runMoat(["get", "FILE:x", "--timeout", bad]);
    assert.equal(r.code, 2, `${bad}: ${r.stderr}`);
    assert.match(r.stderr, /Invalid --timeout/);
  }
});

const EVIL = "\x1b[2J\x1b]0;owned\x07\rmoat: saved passwords.txt\x9b31m\u202e";

test("moat get does not print a hostile server's error message raw", async () => {
  const body = enc.encode(
    JSON.stringify({ code: "ERR_NOT_FOUND", message: EVIL }),
  );
  await using fake = await hostileServer(
    bytesOf([...encodePreamble()], [
      ...encodeFrame({ type: Kind.Error, payload: body }),
    ]),
  );
  using out = tempDir();
  const r = await getFrom(fake.port, out.dir);
  assert.notEqual(r.code, 0);
  assert.equal(rawControl(r.stderr), undefined, JSON.stringify(r.stderr));
});

test("moat get does not print a hostile server's text refusal raw", async () => {
  // No CR: the client only shows a refusal line it can parse.
  await using fake = await hostileServer(
    enc.encode(`ERR EVIL ${EVIL.replace("\r", " ")}\n`),
  );
  using out = tempDir();
  const r = await getFrom(fake.port, out.dir);
  assert.notEqual(r.code, 0);
  assert.equal(rawControl(r.stderr), undefined, JSON.stringify(r.stderr));
});

test("moat chat does not print a hostile server's welcome raw", async () => {
  const welcome = enc.encode(
    JSON.stringify({
      server: "moat/evil",
      name: EVIL,
      peer: EVIL,
      maxFrameSize: 1024,
    }),
  );
  await using fake = await hostileServer(
    bytesOf([...encodePreamble()], [
      ...encodeFrame({ type: Kind.Welcome, payload: welcome }),
    ]),
  );
  const r = await runMoat(["chat", "--server", `127.0.0.1:${fake.port}`], {
    input: "",
  });
  assert.equal(
    rawControl(r.stderr + r.stdout),
    undefined,
    JSON.stringify(r.stderr),
  );
  // The welcome was taken and shown (escaped), not lost with a dead client.
  assert.equal(
    r.stderr.split("\n")[0],
    `moat: connected to 127.0.0.1:${fake.port} as ${escapeText(EVIL)} (${
      escapeText(EVIL)
    }); Ctrl-D leaves`,
  );
});

/** The reply of a fake server that announces `x` (1000 bytes), sends 300, then `after`. */
function midTransfer(after: Uint8Array): Uint8Array {
  return bytesOf([...encodePreamble()], [
    ...WELCOME,
    ...encodeFrame({ type: Kind.FileMeta, payload: metaOfX(1000) }),
    ...encodeFrame({ type: Kind.FileData, payload: new Uint8Array(300) }),
    ...after,
  ]);
}

function errorFrame(code: string, message: string): Uint8Array {
  return encodeFrame({
    type: Kind.Error,
    payload: enc.encode(JSON.stringify({ code, message })),
  });
}

test("moat get shows a hostile server's mid-transfer ERR_FILE_CHANGED escaped on one line and keeps nothing", async () => {
  await using fake = await hostileServer(
    midTransfer(errorFrame("ERR_FILE_CHANGED", EVIL)),
  );
  using out = tempDir();
  const r = await getFrom(fake.port, out.dir);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(rawControl(r.stderr), undefined, JSON.stringify(r.stderr));
  assert.match(r.stderr, /^moat: Server error: \\e\[2J[^\n]*\n$/);
  assert.deepEqual(fs.readdirSync(out.dir), [], "no file, no part file");
});

test("moat get shows a hostile server's mid-transfer error with an unknown code escaped, and keeps the part", async () => {
  await using fake = await hostileServer(midTransfer(errorFrame(EVIL, EVIL)));
  using out = tempDir();
  const r = await getFrom(fake.port, out.dir);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(rawControl(r.stderr), undefined, JSON.stringify(r.stderr));
  assert.match(r.stderr, /^moat: Server error \\e\[2J[^\n]*\n$/);
  assert.equal(fs.existsSync(path.join(out.dir, "x")), false);
  assert.equal(fs.statSync(path.join(out.dir, "x.moat-part")).size, 300);
});

test("moat get does not print a hostile server's digest name raw", async () => {
  const meta = enc.encode(
    JSON.stringify({ path: "x", size: 1, offset: 0, mtimeMs: 0, digest: EVIL }),
  );
  await using fake = await hostileServer(
    bytesOf([...encodePreamble()], [
      ...WELCOME,
      ...encodeFrame({ type: Kind.FileMeta, payload: meta }),
    ]),
  );
  using out = tempDir();
  const r = await getFrom(fake.port, out.dir);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(rawControl(r.stderr), undefined, JSON.stringify(r.stderr));
  assert.match(
    r.stderr,
    /^moat: Unknown digest "\\e\[2J[^\n]*…" \(expected crc32 or sha256\)\n$/,
  );
  assert.equal(r.stderr.split("\n").length, 2, JSON.stringify(r.stderr));
  assert.deepEqual(fs.readdirSync(out.dir), [], "no file, no part file");
});

test("moat ship does not print a hostile server's ship-ready names raw", async () => {
  // lastSeq 5 against a fresh state: the shipper stops with ERR_STATE_LOST,
  // whose message quotes the server's peer and source names.
  const ready = enc.encode(
    JSON.stringify({ peer: EVIL, source: EVIL, lastSeq: 5 }),
  );
  await using fake = await hostileServer(
    bytesOf([...encodePreamble()], [
      ...WELCOME,
      ...encodeFrame({ type: Kind.ShipReady, payload: ready }),
    ]),
    { hold: true },
  );
  using out = tempDir();
  const r = await runMoat([
    "ship",
    "-",
    "--server",
    `127.0.0.1:${fake.port}`,
    "--state",
    path.join(out.dir, "ship.json"),
  ], { input: "a line\n", timeoutMs: 30_000 });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /Server already holds 5 records/);
  assert.equal(
    rawControl(r.stderr + r.stdout),
    undefined,
    JSON.stringify(r.stderr),
  );
});

test("moat get does not print a hostile server's authentication methods raw", async () => {
  const challenge = enc.encode(
    JSON.stringify({ nonce: "0".repeat(64), methods: [EVIL] }),
  );
  await using fake = await hostileServer(
    bytesOf([...encodePreamble()], [
      ...encodeFrame({ type: Kind.Challenge, payload: challenge }),
    ]),
    { hold: true },
  );
  using out = tempDir();
  const r = await getFrom(fake.port, out.dir);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /unknown authentication method: \\e\[2J/);
  assert.equal(rawControl(r.stderr), undefined, JSON.stringify(r.stderr));
  assert.deepEqual(fs.readdirSync(out.dir), [], "no part file");
});

test("moat get --force does not replace a target that is not a regular file", async () => {
  // Run as root, `moat get FILE:x -o /dev/null --force` replaced /dev/null with
  // a regular file. A FIFO stands in for the device here.
  using root = tempDir();
  using out = tempDir();
  fs.writeFileSync(path.join(root.dir, "a.txt"), "a");
  const fifo = path.join(out.dir, "fifo");
  await new Promise<void>((resolve, reject) => {
    const p = spawn("mkfifo", [fifo], { stdio: "ignore" });
    p.on("error", reject);
    p.on(
      "close",
      (c) => (c === 0 ? resolve() : reject(new Error(`mkfifo exited ${c}`))),
    );
  });
  await using server = await startServer(["--root", root.dir]);
  const r = await runMoat([
    "get",
    "FILE:a.txt",
    "-o",
    fifo,
    "--force",
    "--server",
    `127.0.0.1:${server.port}`,
  ]);
  assert.equal(r.code, 7, r.stderr);
  assert.equal(
    r.stderr,
    `moat: Refusing to replace "${fifo}": it is not a regular file\n`,
  );
  assert.ok(
    fs.lstatSync(fifo).isFIFO(),
    "the FIFO was replaced by a regular file",
  );
});
