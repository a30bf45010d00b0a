/**
 * In-process tests of `lib/server/liveness.ts` and the client heartbeats of
 * `lib/client.ts` and `lib/ship/shipper.ts`: a Ping is answered and keeps a
 * quiet connection alive past the idle timeout, a client that never pings
 * is still dropped, and a source that stops shipping is reported silent,
 * then back.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as path from "node:path";
import {
  decodeShipReady,
  decodeText,
  encodeShipBatch,
  Kind,
  PREAMBLE_SIZE,
} from "../lib/protocol.ts";
import { encodeFrame } from "../lib/framer.ts";
import type { Conn, Net } from "../lib/net/types.ts";
import { chat } from "../lib/client.ts";
import { ship } from "../lib/ship/shipper.ts";
import { testVault } from "./_vault_test_utils.ts";
import type { MemoryConn } from "./_memory_conn.ts";
import {
  bytes,
  type FramedClient,
  openFramed,
  readAll,
  startMemoryServer,
  type TestServer,
  within,
} from "./_server.ts";

const PING = encodeFrame({ type: Kind.Ping, payload: new Uint8Array(0) });

/** One ShipBatch frame of `texts`, numbered from `first`. */
function batch(first: number, texts: readonly string[]): Uint8Array {
  return encodeFrame({
    type: Kind.ShipBatch,
    payload: encodeShipBatch(texts.map((text, i) => ({
      seq: first + i,
      ts: 1_700_000_000_000 + first + i,
      partial: false,
      line: bytes(text),
    }))),
  });
}

/** A raw shipper past its ShipReady. */
async function openShip(t: TestServer, source: string) {
  const client = await openFramed(t, "ship", { hello: { source } });
  const frame = await within(client.reader.readFrame(), "ShipReady");
  assert.equal(frame?.type, Kind.ShipReady);
  return { ...client, ready: decodeShipReady(frame!.payload) };
}

/** Reads one frame and checks its type. */
async function expectFrame(client: FramedClient, type: number, what: string) {
  const frame = await within(client.reader.readFrame(), what);
  assert.ok(frame !== null, `closed while waiting for ${what}`);
  assert.equal(frame.type, type, decodeText(frame.payload));
  return frame;
}

/**
 * Counts the Pong frames a client reads, by parsing what the server sends
 * it (the preamble, then frames), so a test can wait until the server has
 * read a heartbeat and answered it.
 */
class PongTap implements Conn {
  pongs = 0;
  #inner: MemoryConn;
  #pending: number[] = [];
  #skip = PREAMBLE_SIZE;
  #payloadLeft = 0;
  #waiters = new Set<() => void>();

  constructor(inner: MemoryConn) {
    this.#inner = inner;
  }

  get localAddr() {
    return this.#inner.localAddr;
  }
  get remoteAddr() {
    return this.#inner.remoteAddr;
  }
  get readable() {
    return this.#inner.readable;
  }
  get writable() {
    return this.#inner.writable;
  }
  write(b: Uint8Array) {
    return this.#inner.write(b);
  }
  closeWrite() {
    return this.#inner.closeWrite();
  }
  close() {
    this.#inner.close();
  }

  async read(buf: Uint8Array): Promise<number | null> {
    const n = await this.#inner.read(buf);
    if (n !== null) this.#scan(buf.subarray(0, n));
    return n;
  }

  /** Resolves once more than `seen` Pongs were read. */
  morePongsThan(seen: number): Promise<void> {
    if (this.pongs > seen) return Promise.resolve();
    return within(
      new Promise<void>((resolve) => {
        const check = () => {
          if (this.pongs <= seen) return;
          this.#waiters.delete(check);
          resolve();
        };
        this.#waiters.add(check);
      }),
      `pong ${seen + 1}`,
    );
  }

  #scan(chunk: Uint8Array) {
    for (const byte of chunk) {
      if (this.#skip > 0) {
        this.#skip--;
        continue;
      }
      if (this.#payloadLeft > 0) {
        this.#payloadLeft--;
        continue;
      }
      this.#pending.push(byte);
      if (this.#pending.length < 5) continue;
      const [type, a, b, c, d] = this.#pending as [
        number,
        number,
        number,
        number,
        number,
      ];
      this.#pending = [];
      this.#payloadLeft = ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
      if (type === Kind.Pong) this.pongs++;
    }
    for (const w of [...this.#waiters]) w();
  }
}

/** The server's net, with every client connection it makes tapped. */
function tapNet(t: TestServer): { net: Net; taps: PongTap[] } {
  const taps: PongTap[] = [];
  const net: Net = {
    ...t.net,
    async connect(options) {
      const tap = new PongTap(await t.net.connect(options));
      taps.push(tap);
      return tap;
    },
  };
  return { net, taps };
}

/** An input that yields `first`, then nothing until `end()`. */
function heldInput<T>(first: T[]) {
  let end!: () => void;
  const ended = new Promise<void>((resolve) => (end = resolve));
  async function* input(): AsyncGenerator<T> {
    yield* first;
    await ended;
  }
  return { input: input(), end };
}

test("HeartbeatReader answers a Ping with a Pong, and the Ping counts as activity", async () => {
  await using t = await startMemoryServer({ idleTimeoutMs: 1000 });
  const c = await openFramed(t, "chat");
  assert.equal(c.welcome.idleTimeoutMs, 1000);
  t.clock.advance(800);
  await c.conn.write(PING);
  await expectFrame(c, Kind.Pong, "the pong");
  // 1600 ms since the connection opened, 800 since the Ping: still there.
  t.clock.advance(800);
  t.server.sweep();
  assert.equal(t.server.connections, 1);
  assert.equal(t.audit.named("closed").length, 0);
  t.clock.advance(201);
  t.server.sweep();
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "idle timeout");
});

test("HeartbeatReader answers Pings between ship batches without disturbing the acks", async () => {
  await using v = await testVault("moat-liveness-test-");
  await using t = await startMemoryServer({ vault: v.vault });
  const c = await openShip(t, "app");
  await c.conn.write(PING);
  await c.conn.write(batch(1, ["one"]));
  await c.conn.write(PING);
  await c.conn.write(batch(2, ["two"]));
  let pongs = 0;
  const acks: number[] = [];
  for (let i = 0; i < 4; i++) {
    const frame = await within(c.reader.readFrame(), `frame ${i + 1}`);
    assert.ok(frame !== null);
    if (frame.type === Kind.Pong) pongs++;
    else {
      assert.equal(frame.type, Kind.ShipAck, decodeText(frame.payload));
      acks.push(new DataView(frame.payload.buffer, frame.payload.byteOffset, 8)
        .getFloat64(0, true));
    }
  }
  assert.equal(pongs, 2);
  assert.deepEqual(acks, [1, 2]);
});

test("HeartbeatReader refuses a Ping with a payload, from its header", async () => {
  await using t = await startMemoryServer();
  const c = await openFramed(t, "chat");
  await c.conn.write(encodeFrame({ type: Kind.Ping, payload: bytes("xyz") }));
  await readAll(c.conn);
  const error = await t.audit.waitFor((e) => e.event === "error", "error");
  assert.match(
    String(error.message),
    /Expected an empty ping frame, got 3 bytes/,
  );
});

test("handshake still refuses a Ping before the Welcome", async () => {
  await using t = await startMemoryServer();
  const conn = await t.connect();
  const preamble = new Uint8Array(PREAMBLE_SIZE);
  preamble.set([0x89, 0x4d, 0x4f, 0x41, 0x54, 0x0d, 0x0a, 1]);
  await conn.write(preamble);
  await conn.write(PING);
  const text = decodeText(await readAll(conn));
  assert.match(text, /Expected a hello frame, got type 0x5/);
});

test("Server still drops a framed client that never pings at the idle timeout", async () => {
  await using v = await testVault("moat-liveness-test-");
  await using t = await startMemoryServer({
    vault: v.vault,
    idleTimeoutMs: 1000,
  });
  // An old client: it ignores the Welcome's idleTimeoutMs and sends nothing.
  const chatter = await openFramed(t, "chat");
  const shipper = await openShip(t, "old");
  t.clock.advance(1000);
  t.server.sweep();
  assert.equal(t.server.connections, 2);
  t.clock.advance(1);
  t.server.sweep();
  const closed = await t.audit.waitCount(
    (e) => e.event === "closed",
    2,
    "both closed",
  );
  assert.deepEqual(closed.map((e) => e.reason), [
    "idle timeout",
    "idle timeout",
  ]);
  assert.equal((await readAll(chatter.conn)).length, 0);
  await readAll(shipper.conn);
});

test("chat keeps a quiet connection open past the idle timeout with heartbeats", async () => {
  await using t = await startMemoryServer({ idleTimeoutMs: 900 });
  const { net, taps } = tapNet(t);
  const held = heldInput<string>([]);
  const chatting = chat(
    { net, server: { hostname: "127.0.0.1", port: t.port }, version: "test" },
    { input: held.input, output: () => {} },
  );
  await t.audit.waitFor((e) => e.event === "accepted", "accepted");
  const tap = taps[0]!;
  // Each round: the server has read a Ping and answered it (at the fake
  // time now), then 600 ms pass. 1800 ms in all: twice the idle timeout.
  for (let round = 0; round < 3; round++) {
    await tap.morePongsThan(tap.pongs);
    t.clock.advance(600);
    t.server.sweep();
    assert.equal(t.server.connections, 1, `dropped in round ${round + 1}`);
  }
  assert.equal(t.audit.named("closed").length, 0);
  held.end();
  await within(chatting, "the chat to end");
});

test("ship keeps a quiet connection open past the idle timeout, and its source is not reported silent", async () => {
  await using v = await testVault("moat-liveness-test-");
  await using t = await startMemoryServer({
    vault: v.vault,
    idleTimeoutMs: 900,
    silentAfterMs: 1000,
  });
  const { net, taps } = tapNet(t);
  const held = heldInput([bytes("first line\n")]);
  const stop = new AbortController();
  const shipping = ship({
    client: {
      net,
      server: { hostname: "127.0.0.1", port: t.port },
      version: "test",
    },
    inputs: ["-"],
    stdin: held.input,
    statePath: path.join(v.root, "ship.json"),
    source: "quiet",
    signal: stop.signal,
    onEvent: () => {},
  });
  await t.audit.waitFor((e) => e.event === "ship_started", "ship_started");
  const tap = taps[0]!;
  for (let round = 0; round < 3; round++) {
    await tap.morePongsThan(tap.pongs);
    t.clock.advance(600);
    t.server.sweep();
    assert.equal(t.server.connections, 1, `dropped in round ${round + 1}`);
  }
  assert.equal(t.audit.named("source_silent").length, 0);
  held.end();
  assert.equal(await within(shipping, "the shipper to finish"), 1);
});

test("SourceWatch reports source_silent after silentAfterMs without a shipper, and source_back when it ships again", async () => {
  await using v = await testVault("moat-liveness-test-");
  await using t = await startMemoryServer({
    vault: v.vault,
    silentAfterMs: 5000,
    idleTimeoutMs: 60_000,
  });
  const first = await openShip(t, "app");
  await first.conn.write(batch(1, ["a"]));
  await expectFrame(first, Kind.ShipAck, "ack 1");
  first.conn.close();
  await t.audit.waitFor((e) => e.event === "ship_finished", "ship_finished");
  t.clock.advance(5000);
  t.server.sweep();
  assert.equal(t.audit.named("source_silent").length, 0);
  t.clock.advance(1);
  t.server.sweep();
  const silent = await t.audit.waitFor(
    (e) => e.event === "source_silent",
    "source_silent",
  );
  assert.equal(silent.peer, "127.0.0.1");
  assert.equal(silent.source, "app");
  assert.equal(silent.lastSeq, 1);
  assert.equal(silent.silentMs, 5001);
  assert.equal(silent.connected, false);
  // Reported once, however long the silence lasts.
  t.clock.advance(60_000);
  t.server.sweep();
  assert.equal(t.audit.named("source_silent").length, 1);

  const second = await openShip(t, "app");
  assert.equal(second.ready.lastSeq, 1);
  const back = await t.audit.waitFor(
    (e) => e.event === "source_back",
    "source_back",
  );
  assert.equal(back.source, "app");
  assert.equal(back.silentMs, 65_001);
  await second.conn.write(batch(2, ["b"]));
  await expectFrame(second, Kind.ShipAck, "ack 2");
  t.clock.advance(4000);
  t.server.sweep();
  assert.equal(t.audit.named("source_silent").length, 1);
  assert.equal(t.audit.named("source_back").length, 1);
});

test("SourceWatch reports a connected shipper that stopped sending, and its return at its next heartbeat", async () => {
  await using v = await testVault("moat-liveness-test-");
  await using t = await startMemoryServer({
    vault: v.vault,
    silentAfterMs: 2000,
    idleTimeoutMs: 60_000,
  });
  const c = await openShip(t, "stuck");
  await c.conn.write(batch(1, ["a"]));
  await expectFrame(c, Kind.ShipAck, "ack 1");
  t.clock.advance(2001);
  t.server.sweep();
  const silent = await t.audit.waitFor(
    (e) => e.event === "source_silent",
    "source_silent",
  );
  assert.equal(silent.connected, true);
  await c.conn.write(PING);
  await expectFrame(c, Kind.Pong, "the pong");
  t.clock.advance(10);
  t.server.sweep();
  const back = await t.audit.waitFor(
    (e) => e.event === "source_back",
    "source_back",
  );
  assert.equal(back.source, "stuck");
  // Silent from its last record (time 0) to the sweep that heard it again.
  assert.equal(back.silentMs, 2011);
});

test("SourceWatch never reports a source that did not ship since the server started", async () => {
  await using v = await testVault("moat-liveness-test-");
  const line = bytes("from an earlier run");
  await v.vault.append({ peer: "10.0.0.9", name: "old" }, [
    { seq: 1, ts: 1, line },
  ]);
  await using t = await startMemoryServer({
    vault: v.vault,
    silentAfterMs: 1000,
  });
  t.clock.advance(10_000);
  t.server.sweep();
  assert.equal(t.audit.named("source_silent").length, 0);
  const [row] = t.server.status().sources;
  assert.equal(row?.name, "old");
  assert.equal(row?.records, 1);
  assert.equal(row?.lastSeen, null);
  assert.equal(row?.lagSeconds, null);
});
