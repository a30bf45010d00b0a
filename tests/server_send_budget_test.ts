/**
 * Tests of `lib/server/send_budget.ts` and of gets drawing on it through a
 * real `Server` over a memory net: the budget's grants, its reserve and its
 * queue, and gets whose clients never read.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { MIN_SEND_CHUNK, SendBudget } from "../lib/server/send_budget.ts";
import { ConnectionClosedError } from "../lib/errors.ts";
import { FIRST_CHUNK_SIZE } from "../lib/file_sender.ts";
import { encodeJson, Kind } from "../lib/protocol.ts";
import { writeRandomFile } from "./_e2e.ts";
import {
  type FramedClient,
  openFramed,
  startMemoryServer,
  type TestServer,
  within,
} from "./_server.ts";

const MIB = 1 << 20;

test("SendBudget grants what is asked while there is room, less when tight, never under the minimum", async () => {
  const budget = new SendBudget(8 * MIN_SEND_CHUNK);
  assert.equal(await budget.take(3 * MIN_SEND_CHUNK), 3 * MIN_SEND_CHUNK);
  assert.equal(await budget.take(4 * MIN_SEND_CHUNK), 4 * MIN_SEND_CHUNK);
  // One minimum chunk left: a large ask gets that.
  assert.equal(await budget.take(MIB), MIN_SEND_CHUNK);
  assert.equal(budget.used, 8 * MIN_SEND_CHUNK);
  assert.equal(budget.holders, 3);
  // A grant below the minimum counts as the minimum.
  budget.give(MIN_SEND_CHUNK);
  assert.equal(await budget.take(100), 100);
  assert.equal(budget.used, 8 * MIN_SEND_CHUNK);
});

test("SendBudget keeps a minimum chunk for every connection in reserve, so none waits", async () => {
  const budget = new SendBudget(8 * MIN_SEND_CHUNK, { reserveFor: 4 });
  // The first may take all but three minimum chunks.
  assert.equal(await budget.take(MIB), 5 * MIN_SEND_CHUNK);
  // It cannot grow into the reserve.
  assert.equal(budget.grow(5 * MIN_SEND_CHUNK, MIB), 5 * MIN_SEND_CHUNK);
  for (let i = 0; i < 3; i++) {
    assert.equal(await budget.take(MIB), MIN_SEND_CHUNK);
  }
  assert.equal(budget.waiting, 0);
  assert.equal(budget.used, budget.total);
});

test("SendBudget grows a grant with what is spare, and not while others wait", async () => {
  const budget = new SendBudget(4 * MIN_SEND_CHUNK);
  const a = await budget.take(MIN_SEND_CHUNK);
  assert.equal(budget.grow(a, 2 * MIN_SEND_CHUNK), 2 * MIN_SEND_CHUNK);
  const b = await budget.take(2 * MIN_SEND_CHUNK);
  assert.equal(b, 2 * MIN_SEND_CHUNK);
  const waiting = budget.take(MIN_SEND_CHUNK);
  assert.equal(budget.waiting, 1);
  budget.give(b);
  assert.equal(await waiting, MIN_SEND_CHUNK);
  // A taker waits: nobody grows past it.
  const c = budget.take(2 * MIN_SEND_CHUNK);
  assert.equal(
    budget.grow(2 * MIN_SEND_CHUNK, 4 * MIN_SEND_CHUNK),
    2 * MIN_SEND_CHUNK,
  );
  budget.give(MIN_SEND_CHUNK);
  assert.equal(await c, MIN_SEND_CHUNK);
});

test("SendBudget serves waiting takers in order, and a closed connection's wait ends without a grant", async () => {
  const budget = new SendBudget(2 * MIN_SEND_CHUNK);
  const held = [
    await budget.take(MIN_SEND_CHUNK),
    await budget.take(MIN_SEND_CHUNK),
  ];
  const order: string[] = [];
  const gone = new AbortController();
  const first = budget.take(MIN_SEND_CHUNK, gone.signal);
  const second = budget.take(MIN_SEND_CHUNK).then((g) => {
    order.push("second");
    return g;
  });
  assert.equal(budget.waiting, 2);
  gone.abort();
  await assert.rejects(first, ConnectionClosedError);
  assert.equal(budget.waiting, 1);
  budget.give(held[0]!);
  assert.equal(await second, MIN_SEND_CHUNK);
  assert.deepEqual(order, ["second"]);
  assert.equal(budget.used, 2 * MIN_SEND_CHUNK);
  await assert.rejects(budget.take(1, gone.signal), ConnectionClosedError);
});

test("SendBudget refuses a total below the minimum chunk", () => {
  assert.throws(() => new SendBudget(MIN_SEND_CHUNK - 1), RangeError);
});

/** Waits (bounded) until `pred()` holds: the server reaches a state. */
async function until(pred: () => boolean, what: string): Promise<void> {
  await within(
    (async () => {
      while (!pred()) await new Promise((r) => setTimeout(r, 1));
    })(),
    what,
  );
}

/** A framed get of `file` whose client then never reads. */
async function unreadGet(t: TestServer, file: string): Promise<FramedClient> {
  const client = await openFramed(t, "get");
  await client.send(Kind.Get, encodeJson({ path: file, offset: 0 }));
  return client;
}

/** Reads one whole framed get; returns the FileData payload sizes. */
async function readGet(client: FramedClient): Promise<number[]> {
  const meta = await within(client.reader.readFrame(), "file metadata");
  assert.equal(meta?.type, Kind.FileMeta);
  const sizes: number[] = [];
  for (let i = 0; i < 100_000; i++) {
    const frame = await within(client.reader.readFrame(), "file data");
    assert.ok(frame !== null, "closed mid-file");
    if (frame.type === Kind.FileEnd) return sizes;
    assert.equal(frame.type, Kind.FileData);
    sizes.push(frame.payload.length);
  }
  throw new Error("no file end");
}

test("serveGets holds no more than the send budget for clients that never read, and a reading get still completes", async () => {
  const budget = 2 * MIB;
  await using t = await startMemoryServer({
    sendBufferBytes: budget,
    maxConns: 64,
  });
  writeRandomFile(path.join(t.root, "big.bin"), 8 * MIB, 3);
  const stalled: FramedClient[] = [];
  for (let i = 0; i < 40; i++) stalled.push(await unreadGet(t, "big.bin"));
  // Every get started and holds a buffer; none waits for one.
  await until(
    () => t.server.usage().sendBuffers.holders === 40,
    "40 gets holding send buffers",
  );
  const usage = t.server.usage().sendBuffers;
  assert.equal(usage.waiting, 0);
  assert.ok(usage.used <= budget, `${usage.used} bytes > ${budget}`);
  // The 41st gets at least a minimum chunk at once, and finishes.
  const reader = await openFramed(t, "get");
  await reader.send(Kind.Get, encodeJson({ path: "big.bin", offset: 0 }));
  const sizes = await readGet(reader);
  assert.equal(sizes.reduce((a, b) => a + b, 0), 8 * MIB);
  assert.ok(Math.max(...sizes) <= budget);
  assert.ok(t.server.usage().sendBuffers.used <= budget);
  for (const c of stalled) c.conn.close();
  await until(
    () => t.server.usage().sendBuffers.used === 0,
    "every buffer returned",
  );
});

test("serveGets starts with a chunk of at most 64 KiB and doubles it while the client reads", async () => {
  await using t = await startMemoryServer();
  writeRandomFile(path.join(t.root, "big.bin"), 6 * MIB, 4);
  const client = await openFramed(t, "get");
  await client.send(Kind.Get, encodeJson({ path: "big.bin", offset: 0 }));
  const sizes = await readGet(client);
  assert.equal(sizes[0], FIRST_CHUNK_SIZE);
  assert.deepEqual(sizes.slice(0, 5), [
    FIRST_CHUNK_SIZE,
    2 * FIRST_CHUNK_SIZE,
    4 * FIRST_CHUNK_SIZE,
    8 * FIRST_CHUNK_SIZE,
    16 * FIRST_CHUNK_SIZE,
  ]);
  assert.equal(Math.max(...sizes), MIB, "never past the chunk size");
  assert.equal(sizes.reduce((a, b) => a + b, 0), 6 * MIB);
});

test("serveGets hands the buffers of gets closed at the idle timeout to a get waiting for one", async () => {
  // A budget of two minimum chunks: two stalled gets hold it all.
  await using t = await startMemoryServer({
    sendBufferBytes: 2 * MIN_SEND_CHUNK,
    idleTimeoutMs: 1000,
  });
  fs.writeFileSync(path.join(t.root, "f.bin"), new Uint8Array(4 * MIB));
  await unreadGet(t, "f.bin");
  await unreadGet(t, "f.bin");
  await until(
    () => t.server.usage().sendBuffers.holders === 2,
    "two holders",
  );
  t.clock.advance(600);
  const waiter = await unreadGet(t, "f.bin");
  await until(
    () => t.server.usage().sendBuffers.waiting === 1,
    "a get waiting for a buffer",
  );
  // The holders pass their idle timeout first: their buffers go to the
  // waiter, which is then closed at its own.
  t.clock.advance(401);
  t.server.sweep();
  await until(
    () =>
      t.server.usage().sendBuffers.waiting === 0 &&
      t.server.usage().sendBuffers.holders === 1,
    "the waiter served",
  );
  assert.equal(waiter.conn.peer.isClosed, false);
  t.clock.advance(1001);
  t.server.sweep();
  assert.equal(waiter.conn.peer.isClosed, true);
  const closed = await t.audit.waitCount(
    (e) => e.event === "closed" && e.reason === "idle timeout",
    3,
    "three idle closes",
  );
  assert.equal(closed.length, 3);
  await until(
    () => t.server.usage().sendBuffers.used === 0,
    "every buffer returned",
  );
});

test("serveGets closes a get still waiting for a send buffer at the idle timeout", async () => {
  await using t = await startMemoryServer({
    sendBufferBytes: MIN_SEND_CHUNK,
    idleTimeoutMs: 60_000,
  });
  fs.writeFileSync(path.join(t.root, "f.bin"), new Uint8Array(4 * MIB));
  await unreadGet(t, "f.bin");
  await until(() => t.server.usage().sendBuffers.holders === 1, "a holder");
  const waiter = await unreadGet(t, "f.bin");
  await until(() => t.server.usage().sendBuffers.waiting === 1, "a waiter");
  t.clock.advance(60_001);
  t.server.sweep();
  await until(() => t.server.usage().sendBuffers.waiting === 0, "no waiter");
  assert.equal(waiter.conn.peer.isClosed, true);
  const err = await t.audit.waitFor(
    (e) => e.event === "error" && e.name === waiter.welcome.name,
    "the waiter's error line",
  );
  assert.equal(
    err.message,
    "Connection closed while waiting for a send buffer",
  );
});
