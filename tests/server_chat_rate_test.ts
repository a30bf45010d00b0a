/**
 * Tests of `lib/server/rate.ts` and `lib/server/chat.ts` through a real
 * `Server` over a memory net, on a fake clock: the chat rate per peer
 * address and for the whole room (what reaches the operator), enforced by
 * not reading, with no line dropped; the bound on a member's queued lines;
 * and a line over `--max-line` refused from its header.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { RateLimiter } from "../lib/server/rate.ts";
import { OUTBOX_LIMIT } from "../lib/server/chat.ts";
import { ConnectionClosedError } from "../lib/errors.ts";
import { encodeFrame } from "../lib/framer.ts";
import { decodeError, Kind } from "../lib/protocol.ts";
import type { MemoryConn } from "./_memory_conn.ts";
import { concatBytes } from "./_test_utils.ts";
import {
  bytes,
  openFramed,
  startMemoryServer,
  type TestServer,
  within,
} from "./_server.ts";

test("RateLimiter spends a burst, then earns tokens back at its rate, per key", () => {
  let now = 0;
  const rate = new RateLimiter({ perSecond: 4, burst: 2, now: () => now });
  assert.ok(rate.tryTake("a"));
  assert.ok(rate.tryTake("a"));
  assert.equal(rate.tryTake("a"), false);
  assert.ok(rate.tryTake("b"));
  now += 249;
  assert.equal(rate.tryTake("a"), false);
  now += 1;
  assert.ok(rate.tryTake("a"));
  // Never more than the burst saved up.
  now += 60_000;
  assert.ok(rate.tryTake("a"));
  assert.ok(rate.tryTake("a"));
  assert.equal(rate.tryTake("a"), false);
});

test("RateLimiter holds all keys together to the global rate", () => {
  let now = 0;
  const rate = new RateLimiter({
    perSecond: 1,
    burst: 1,
    globalPerSecond: 2,
    globalBurst: 3,
    now: () => now,
  });
  assert.deepEqual(
    ["a", "b", "c", "d"].map((k) => rate.tryTake(k)),
    [true, true, true, false],
  );
  // A refused take spends nothing of the key's own bucket.
  now += 500;
  assert.ok(rate.tryTake("d"));
  assert.equal(rate.tryTake("e"), false);
});

test("RateLimiter.take waits in order until a poke finds the token due, and ends the wait on abort", async () => {
  let now = 0;
  const rate = new RateLimiter({ perSecond: 10, burst: 1, now: () => now });
  await rate.take("a", new AbortController().signal);
  const order: string[] = [];
  const first = rate.take("a", new AbortController().signal).then(() =>
    order.push("first")
  );
  const gone = new AbortController();
  const second = rate.take("a", gone.signal);
  const third = rate.take("a", new AbortController().signal).then(() =>
    order.push("third")
  );
  assert.equal(rate.waiting, 3);
  rate.poke();
  assert.equal(rate.waiting, 3, "the clock did not move: nothing is due");
  gone.abort();
  await assert.rejects(second, ConnectionClosedError);
  now += 100;
  rate.poke();
  await first;
  assert.deepEqual(order, ["first"]);
  now += 100;
  rate.poke();
  await third;
  assert.deepEqual(order, ["first", "third"]);
  assert.equal(rate.waiting, 0);
  rate.close();
});

test("RateLimiter remembers at most maxKeys keys and forgets full ones", () => {
  let now = 0;
  const rate = new RateLimiter({
    perSecond: 1,
    burst: 1,
    maxKeys: 2,
    now: () => now,
  });
  assert.ok(rate.tryTake("a"));
  assert.ok(rate.tryTake("b"));
  // "c" pushes out "a", the least recently used, which starts full again.
  assert.ok(rate.tryTake("c"));
  assert.ok(rate.tryTake("a"));
  assert.equal(rate.tryTake("c"), false);
  now += 1000;
  rate.poke();
  assert.ok(rate.tryTake("c"));
});

test("RateLimiter refuses a rate that is not positive", () => {
  assert.throws(() => new RateLimiter({ perSecond: 0, burst: 1 }), RangeError);
  assert.throws(() => new RateLimiter({ perSecond: 1, burst: -1 }), RangeError);
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

const LINES = Array.from({ length: 50 }, (_, i) => `line ${i}`);

/** A server whose operator lines are collected in `heard`. */
async function chatServer(chatRate: number) {
  const heard: string[] = [];
  const t = await startMemoryServer({
    chatRate,
    // Presence lines (joins, leaves) come from "server": only peers' lines
    // are paced.
    onChat: (line) => {
      if (line.from !== "server") heard.push(line.text);
    },
  });
  return { t, heard };
}

/**
 * Checks the rate on one peer: the burst (20 at --chat-rate 10), then
 * nothing while its reader is paused, then 10 a second, every line in order.
 */
async function assertPaced(t: TestServer, heard: string[]) {
  await until(
    () => heard.length >= 20 && t.server.usage().pausedReads === 1,
    "the burst, then a paused reader",
  );
  assert.deepEqual(heard, LINES.slice(0, 20));
  t.clock.advance(999);
  t.server.sweep();
  assert.equal(heard.length, 20);
  t.clock.advance(1);
  t.server.sweep();
  await until(
    () => heard.length >= 30 && t.server.usage().pausedReads === 1,
    "ten more, then a pause",
  );
  assert.deepEqual(heard, LINES.slice(0, 30));
  t.clock.advance(2000);
  t.server.sweep();
  await until(() => heard.length === 50, "every line");
  assert.deepEqual(heard, LINES);
  await until(() => t.server.usage().pausedReads === 0, "no reader paused");
}

test("serveFramedChat stops reading a peer over its chat rate and relays every line, in order, as the rate allows", async () => {
  const { t, heard } = await chatServer(10);
  await using _ = t;
  const client = await openFramed(t, "chat");
  await client.conn.write(
    concatBytes(
      LINES.map((l) => encodeFrame({ type: Kind.Chat, payload: bytes(l) })),
    ),
  );
  await assertPaced(t, heard);
  // The audit log has every one (or counts it in a `suppressed` line).
  assert.equal(t.audit.named("chat")[0]!.text, "line 0");
});

test("servePlain stops reading a peer over its chat rate and relays every line, in order, as the rate allows", async () => {
  const { t, heard } = await chatServer(10);
  await using _ = t;
  const conn = await t.connect();
  await conn.write(bytes(LINES.map((l) => `${l}\n`).join("")));
  await assertPaced(t, heard);
});

test("servePlain relays a line ended by EOF once the chat rate allows it", async () => {
  const { t, heard } = await chatServer(1);
  await using _ = t;
  const conn = await t.connect();
  await conn.write(bytes("one\ntwo\nthree"));
  await conn.closeWrite();
  await until(
    () => heard.length === 2 && t.server.usage().pausedReads === 1,
    "the burst of two",
  );
  t.clock.advance(1000);
  t.server.sweep();
  await until(() => heard.length === 3, "the last line");
  assert.deepEqual(heard, ["one", "two", "three"]);
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "peer closed");
});

test("Server holds the whole room, and so the operator's lines, to 20 times the chat rate", async () => {
  // --chat-rate 1: 2 lines at once per address, 40 at once for all.
  const { t, heard } = await chatServer(1);
  await using _ = t;
  const conns: MemoryConn[] = [];
  for (let i = 0; i < 25; i++) {
    const conn = await t.connect(`127.0.0.${i + 2}`);
    await conn.write(bytes(`a${i}\nb${i}\n`));
    conns.push(conn);
  }
  await Promise.all(conns.map((c) => within(c.drained(), "the lines read")));
  await until(
    () => heard.length >= 40 && t.server.usage().pausedReads >= 5,
    "the room's burst, then paused readers",
  );
  assert.equal(heard.length, 40);
  t.clock.advance(1000);
  t.server.sweep();
  await until(() => heard.length === 50, "every line");
  assert.deepEqual(
    heard.toSorted(),
    Array.from({ length: 25 }, (_, i) => [`a${i}`, `b${i}`]).flat().toSorted(),
  );
});

test("Server with chatRate 0 relays a flood of lines without pausing", async () => {
  const { t, heard } = await chatServer(0);
  await using _ = t;
  const conn = await t.connect();
  const many = Array.from({ length: 2000 }, (_, i) => `n${i}`);
  await conn.write(bytes(many.map((l) => `${l}\n`).join("")));
  await until(() => heard.length === 2000, "every line");
  assert.deepEqual(heard, many);
  assert.equal(t.server.usage().pausedReads, 0);
});

test("Member drops a chat client that does not read once OUTBOX_LIMIT bytes wait for it, and the room goes on", async () => {
  const { t, heard } = await chatServer(0);
  await using _ = t;
  const deaf = await openFramed(t, "chat");
  const talker = await openFramed(t, "chat");
  const line = "x".repeat(8000);
  // What the deaf client's pipe holds, then OUTBOX_LIMIT, then one more.
  const lines = Math.ceil((OUTBOX_LIMIT + 64 * 1024) / 8000) + 8;
  for (let i = 0; i < lines; i++) {
    await talker.send(Kind.Chat, bytes(line));
  }
  const closed = await t.audit.waitFor(
    (e) => e.event === "closed" && e.name === deaf.welcome.name,
    "the deaf client dropped",
  );
  assert.equal(closed.reason, "slow consumer");
  await until(() => heard.length === lines, "every line at the operator");
  // The talker is still served.
  await talker.send(Kind.Chat, bytes("still here"));
  await until(() => heard.at(-1) === "still here", "the talker's next line");
});

test("serveFramedChat refuses a line over maxLine from its header, without reading the line", async () => {
  await using t = await startMemoryServer({ maxLine: 100 });
  const client = await openFramed(t, "chat");
  // A header announcing 101 bytes, and none of them.
  await client.conn.write(Uint8Array.of(Kind.Chat, 0, 0, 0, 101));
  const frame = await within(client.reader.readFrame(), "the refusal");
  assert.equal(frame?.type, Kind.Error);
  assert.deepEqual(decodeError(frame!.payload), {
    code: "ERR_LINE_TOO_LONG",
    message: "Chat line of 101 bytes exceeds the limit of 100",
  });
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "chat line too long");
});
