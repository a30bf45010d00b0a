/**
 * In-process tests of `lib/server/syslog.ts` and `lib/server/append_pipeline.ts`
 * against a real vault: syslog over a memory connection into the vault, the
 * size limit, the port's own connection limit and deadlines, the budget of
 * bytes in flight, and the pipeline's ordering of failures.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import type { VaultSource } from "../lib/vault/store.ts";
import { readRecords } from "../lib/vault/read.ts";
import { decodeText } from "../lib/protocol.ts";
import {
  APPEND_FAILED,
  AppendBudget,
  AppendPipeline,
  encodedCost,
} from "../lib/server/append_pipeline.ts";
import { SyslogBudget } from "../lib/server/syslog.ts";
import { stalledVault, testVault } from "./_vault_test_utils.ts";
import {
  bytes,
  openFramed,
  readAll,
  readText,
  startMemoryServer,
  type TestServer,
  within,
} from "./_server.ts";

let nextPort = 52000;

/** Connects to the server's syslog port. */
function connectSyslog(t: TestServer, from = "127.0.0.1") {
  const listening = t.audit.named("listening")[0]!;
  const addr = (listening.syslog as string[])[0]!;
  return t.net.connect({
    hostname: "127.0.0.1",
    port: Number(addr.slice(addr.lastIndexOf(":") + 1)),
    from: { hostname: from, port: nextPort++ },
  });
}

/** Waits until `pred` holds, checking after each turn of the event loop. */
async function waitUntil(pred: () => boolean, what: string) {
  for (let i = 0; i < 10_000 && !pred(); i++) {
    await within(new Promise((r) => setTimeout(r, 1)), what);
  }
  if (!pred()) throw new Error(`Gave up waiting for ${what}`);
}

/** Resolves whether `p` has settled once every queued callback has run. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(() => (done = true), () => (done = true));
  await new Promise((r) => setTimeout(r, 0));
  return done;
}

test("serveSyslog stores newline-framed messages in order under the peer's syslog source", async () => {
  await using v = await testVault("moat-syslog-test-");
  await using t = await startMemoryServer({
    vault: v.vault,
    syslog: { port: 0 },
  });
  const conn = await connectSyslog(t);
  const sent: string[] = [];
  for (let i = 1; i <= 300; i++) {
    sent.push(`<13>1 2024-05-01T10:00:00Z host app - - - message ${i}`);
  }
  // Several writes: several reads, so several appends in the pipeline.
  for (let i = 0; i < sent.length; i += 50) {
    await conn.write(bytes(sent.slice(i, i + 50).join("\n") + "\n"));
  }
  await conn.closeWrite();
  assert.equal((await readAll(conn)).length, 0);
  const finished = await t.audit.waitFor(
    (e) => e.event === "syslog_finished",
    "syslog_finished",
  );
  assert.equal(finished.records, 300);
  assert.equal(finished.lastSeq, 300);
  assert.equal(finished.framing, "newline");
  assert.equal(finished.listener, "syslog");
  const stored: string[] = [];
  for await (const r of readRecords(v.dir)) {
    assert.equal(r.peer, "127.0.0.1");
    assert.equal(r.name, "syslog");
    assert.equal(r.seq, stored.length + 1);
    stored.push(decodeText(r.line));
  }
  assert.deepEqual(stored, sent);
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "peer closed");
});

test("serveSyslog refuses an oversize message with an audit line and keeps what came before", async () => {
  await using v = await testVault("moat-syslog-test-");
  await using t = await startMemoryServer({
    vault: v.vault,
    syslog: { port: 0, maxMessage: 100 },
  });
  const conn = await connectSyslog(t);
  await conn.write(bytes(`<13>short one\n<13>${"x".repeat(200)}\n`));
  assert.equal((await readAll(conn)).length, 0);
  const refused = await t.audit.waitFor(
    (e) => e.event === "refused",
    "refused",
  );
  assert.equal(refused.listener, "syslog");
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "syslog message too large");
  const stored: string[] = [];
  for await (const r of readRecords(v.dir)) stored.push(decodeText(r.line));
  assert.deepEqual(stored, ["<13>short one"]);
});

test("Server refuses a syslog peer outside the allowlist before reading it", async () => {
  await using v = await testVault("moat-syslog-test-");
  await using t = await startMemoryServer({
    vault: v.vault,
    syslog: { port: 0 },
  });
  const conn = await connectSyslog(t, "10.0.0.9");
  await conn.write(bytes("<13>not stored\n"));
  await conn.closeWrite();
  assert.equal(
    decodeText(await readAll(conn)),
    "ERR ACCESS_DENIED access refused by server\n",
  );
  const refused = await t.audit.waitFor(
    (e) => e.event === "refused",
    "refused",
  );
  assert.equal(refused.listener, "syslog");
  assert.deepEqual(t.audit.named("accepted"), []);
});

test("AppendPipeline keeps the first failure in batch order and counts nothing after it", async () => {
  await using v = await testVault("moat-syslog-test-");
  const source = v.vault.source({ peer: "10.0.0.5", name: "app" });
  const durable: number[] = [];
  const appends = new AppendPipeline(source, {
    onDurable: (seq) => durable.push(seq),
  });
  const record = (seq: number) => ({ seq, ts: 1, line: bytes(`line ${seq}`) });
  await appends.push([record(1), record(2)], { recvTs: 1 });
  // A gap: refused by the vault.
  await appends.push([record(5)], { recvTs: 1 });
  // Continues the first batch, so the vault takes it, but it comes after the failure.
  await appends.push([record(3)], { recvTs: 1 });
  await assert.rejects(appends.finish(), { code: "ERR_SEQ_GAP" });
  assert.equal(appends.failed, true);
  assert.deepEqual(durable, [2]);
  assert.equal(appends.stored, 2);
});

test("AppendPipeline.orFailure gives what it waits for, or APPEND_FAILED once an append fails meanwhile", async () => {
  let fail!: (err: unknown) => void;
  const source: VaultSource = {
    key: { peer: "10.0.0.5", name: "app" },
    id: "app",
    lastSeq: 0,
    acceptedSeq: 0,
    append: () => new Promise((_, reject) => (fail = reject)),
  };
  const appends = new AppendPipeline(source);
  assert.equal(await appends.orFailure(Promise.resolve(5)), 5);
  await assert.rejects(
    appends.orFailure(Promise.reject(new Error("closed"))),
    /closed/,
  );
  await appends.push([{ seq: 1, ts: 1, line: bytes("one") }], { recvTs: 1 });
  let closed!: (err: unknown) => void;
  const waiting = appends.orFailure(
    new Promise((_, reject) => (closed = reject)),
  );
  assert.equal(await settled(waiting), false);
  fail(new Error("EIO: i/o error"));
  assert.equal(await within(waiting, "the failure"), APPEND_FAILED);
  // The read it gave up on fails later, as the connection closes: handled.
  closed(new Error("closed"));
  assert.equal(
    await appends.orFailure(new Promise(() => {})),
    APPEND_FAILED,
  );
});

test("AppendPipeline waits once the in-flight limit is reached", async () => {
  await using v = await testVault("moat-syslog-test-");
  const source = v.vault.source({ peer: "10.0.0.5", name: "app" });
  let inFlight = 0;
  let max = 0;
  const watched: VaultSource = {
    key: source.key,
    id: source.id,
    get lastSeq() {
      return source.lastSeq;
    },
    get acceptedSeq() {
      return source.acceptedSeq;
    },
    append(records, options) {
      max = Math.max(max, ++inFlight);
      return source.append(records, options).finally(() => inFlight--);
    },
  };
  const appends = new AppendPipeline(watched, { inFlight: 3 });
  for (let seq = 1; seq <= 10; seq++) {
    await appends.push([{ seq, ts: 1, line: bytes(`line ${seq}`) }], {
      recvTs: 1,
    });
  }
  await appends.finish();
  assert.equal(max, 3);
  assert.equal(appends.stored, 10);
  assert.equal(source.lastSeq, 10);
});

test("Server counts syslog connections apart from the main port: neither port's limit or refusals take the other's slots", async () => {
  await using v = await testVault("moat-syslog-test-");
  await using t = await startMemoryServer({
    vault: v.vault,
    maxConns: 2,
    syslog: { port: 0, maxConns: 2 },
  });
  // Two silent syslog sockets: the syslog port is full.
  const silent = [await connectSyslog(t), await connectSyslog(t)];
  await t.audit.waitCount(
    (e) => e.event === "accepted" && e.listener === "syslog",
    2,
    "two syslog accepts",
  );
  const third = await connectSyslog(t);
  assert.equal(
    await readText(third),
    "ERR BUSY server busy: too many connections\n",
  );
  // The main port still has both of its slots.
  const a = await openFramed(t, "chat");
  const b = await openFramed(t, "chat");
  assert.deepEqual([a.welcome.name, b.welcome.name], ["c3", "c4"]);
  const busyMain = await t.connect();
  assert.equal(
    await readText(busyMain),
    "ERR BUSY server busy: too many connections\n",
  );
  const refused = t.audit.named("refused");
  assert.deepEqual(refused.map((e) => e.listener ?? "main"), [
    "syslog",
    "main",
  ]);
  // One syslog socket goes; its slot is free again though the main port is full.
  silent[0]!.close();
  await t.audit.waitFor(
    (e) => e.event === "closed" && e.listener === "syslog",
    "the syslog close",
  );
  const next = await connectSyslog(t);
  await next.write(bytes("<13>after\n"));
  await next.closeWrite();
  assert.equal((await readAll(next)).length, 0);
  const finished = await t.audit.waitFor(
    (e) => e.event === "syslog_finished" && e.records === 1,
    "the new syslog connection's records",
  );
  assert.equal(finished.listener, "syslog");
  assert.equal(t.server.connections, 3);
});

test("SyslogPort closes a syslog connection that sends no message by its deadline, with an audit line", async () => {
  await using v = await testVault("moat-syslog-test-");
  await using t = await startMemoryServer({
    vault: v.vault,
    syslog: { port: 0, idleTimeoutMs: 5000 },
  });
  const conn = await connectSyslog(t);
  // A partial message is not a message: it does not move the deadline.
  await conn.write(bytes("<13>never ends"));
  await within(conn.drained(), "the server to read the partial message");
  t.clock.advance(5000);
  t.server.sweep();
  assert.equal(conn.peer.isClosed, false, "closed before the deadline");
  t.clock.advance(1);
  t.server.sweep();
  assert.equal(conn.peer.isClosed, true, "open past the deadline");
  const closed = await t.audit.waitFor(
    (e) => e.event === "closed" && e.listener === "syslog",
    "closed",
  );
  assert.equal(
    closed.reason,
    "syslog idle timeout: no message in 5 s after connecting",
  );
  assert.equal((await readAll(conn)).length, 0);
});

test("SyslogPort keeps a sender that keeps sending, and closes it once it has been quiet too long", async () => {
  await using v = await testVault("moat-syslog-test-");
  await using t = await startMemoryServer({
    vault: v.vault,
    idleTimeoutMs: 1000,
    syslog: { port: 0, idleTimeoutMs: 5000, quietTimeoutMs: 60_000 },
  });
  const conn = await connectSyslog(t);
  const source = v.vault.source({ peer: "127.0.0.1", name: "syslog" });
  for (let i = 1; i <= 5; i++) {
    t.clock.advance(i === 1 ? 4000 : 59_000);
    await conn.write(bytes(`<13>message ${i}\n`));
    await waitUntil(() => source.lastSeq === i, `message ${i} stored`);
    t.clock.advance(59_000);
    t.server.sweep();
    // Past the silent deadline and the main port's idle timeout, inside the quiet one.
    assert.equal(conn.peer.isClosed, false, `closed after message ${i}`);
  }
  t.clock.advance(1001);
  t.server.sweep();
  assert.equal(conn.peer.isClosed, true, "open after an hour's quiet");
  const closed = await t.audit.waitFor(
    (e) => e.event === "closed" && e.listener === "syslog",
    "closed",
  );
  assert.equal(closed.reason, "syslog quiet timeout: no message in 60 s");
  const finished = t.audit.named("syslog_finished")[0]!;
  assert.equal(finished.records, 5);
});

test("serveSyslog audits an append that fails while the sender is quiet, and closes the connection at once", async () => {
  await using v = await testVault();
  const stalled = stalledVault(v.vault);
  await using t = await startMemoryServer({
    vault: stalled.vault,
    syslog: { port: 0 },
  });
  // Failed on the way out too: the server's close waits for the append.
  using _end = { [Symbol.dispose]: () => stalled.fail(new Error("test end")) };
  const conn = await connectSyslog(t);
  await conn.write(bytes("<13>one\n"));
  await within(stalled.appended, "the append");
  // One turn of the event loop runs every queued callback: the server then
  // waits for the next message.
  await new Promise((r) => setTimeout(r, 0));
  const inFlight = t.server.usage().appends.used;
  stalled.fail(
    Object.assign(
      new Error(`ENOSPC: no space left on device, write '${v.dir}/x.seg'`),
      { code: "ENOSPC" },
    ),
  );
  // The record in flight counted against the append budget ship shares.
  assert.equal(inFlight, encodedCost("<13>one".length, 1));
  assert.equal((await within(readAll(conn), "the close")).length, 0);
  const err = await t.audit.waitFor(
    (e) => e.event === "error" && e.during === "syslog",
    "the error in the audit log",
  );
  assert.equal(err.code, "ENOSPC");
  const closed = await t.audit.waitFor(
    (e) => e.event === "closed" && e.listener === "syslog",
    "closed",
  );
  assert.match(String(closed.reason), /^syslog ended: ENOSPC/);
  assert.equal(t.audit.named("syslog_finished")[0]!.records, 0);
  assert.equal(t.server.usage().appends.used, 0);
});

test("SyslogBudget charges the server's append budget too, and waits while it is spent or ship batches wait for it", async () => {
  const shared = new AppendBudget(1000);
  const budget = new SyslogBudget(10_000, { shared });
  assert.equal(budget.enter(), undefined);
  budget.take(100, 900);
  budget.leave();
  assert.equal(shared.used, 900);
  // A ship batch that does not fit waits, and the syslog port behind it,
  // though its own budget has room.
  let shipIn = false;
  const ship = shared.take(500).then(() => (shipIn = true));
  const turn = budget.enter();
  assert.ok(turn instanceof Promise);
  let syslogIn = false;
  void turn.then(() => (syslogIn = true));
  assert.equal(await settled(turn), false);
  budget.give(100, 900);
  await within(ship, "the ship batch");
  await within(turn, "the syslog turn");
  assert.ok(shipIn && syslogIn);
  assert.equal(shared.used, 500);
  budget.leave();
  // Spent by ship batches alone: the syslog port waits for their give.
  shared.charge(600);
  const next = budget.enter();
  assert.ok(next instanceof Promise);
  assert.equal(await settled(next), false);
  shared.give(600);
  await within(next, "the next turn");
  budget.leave();
  shared.give(500);
  assert.equal(shared.used, 0);
});

test("serveSyslog stores every connection's messages, each in its order, through a budget far smaller than one read", async () => {
  await using v = await testVault("moat-syslog-test-");
  await using t = await startMemoryServer({
    vault: v.vault,
    syslog: { port: 0, maxBytesInFlight: 1000 },
  });
  const conns = 12;
  const perConn = 400;
  await Promise.all(
    Array.from({ length: conns }, async (_, c) => {
      const conn = await connectSyslog(t);
      let text = "";
      for (let m = 1; m <= perConn; m++) text += `<13>c${c} m${m}\n`;
      // Written in pieces, so reads, budget turns and appends interleave.
      const wire = bytes(text);
      for (let at = 0; at < wire.length; at += 1500) {
        await conn.write(wire.subarray(at, at + 1500));
      }
      await conn.closeWrite();
      assert.equal((await readAll(conn)).length, 0);
    }),
  );
  await t.audit.waitCount(
    (e) => e.event === "syslog_finished",
    conns,
    "every connection finished",
  );
  const next = new Array<number>(conns).fill(1);
  let seq = 0;
  for await (const r of readRecords(v.dir)) {
    assert.equal(r.seq, ++seq);
    const m = /^<13>c(\d+) m(\d+)$/.exec(decodeText(r.line));
    assert.ok(m, decodeText(r.line));
    const c = Number(m[1]);
    assert.equal(Number(m[2]), next[c]!++, `connection ${c} in order`);
  }
  assert.equal(seq, conns * perConn);
  assert.ok(next.every((n) => n === perConn + 1));
  for (const e of t.audit.named("syslog_finished")) {
    assert.equal(e.records, perConn);
  }
});

test("SyslogBudget goes on at once while it has room and nobody waits", () => {
  const budget = new SyslogBudget(100);
  assert.equal(budget.enter(), undefined);
  budget.take(60);
  budget.leave();
  assert.equal(budget.enter(), undefined);
  budget.take(60);
  budget.leave();
  assert.equal(budget.used, 120);
  assert.ok(budget.enter() instanceof Promise);
  assert.throws(() => new SyslogBudget(0), RangeError);
});

test("SyslogBudget lets waiters in one at a time, in arrival order, only while it has room", async () => {
  const budget = new SyslogBudget(100);
  budget.take(150);
  const b = budget.enter()!;
  const c = budget.enter()!;
  assert.equal(budget.waiting, 2);
  budget.give(40);
  assert.equal(await settled(b), false, "let in while over the limit");
  budget.give(40);
  assert.equal(await settled(b), true);
  assert.equal(await settled(c), false, "two let in at once");
  // While b has its turn, a newcomer waits even though there is room.
  const d = budget.enter();
  assert.ok(d instanceof Promise);
  budget.take(200);
  budget.leave();
  assert.equal(await settled(c), false, "let in while over the limit");
  budget.give(200);
  assert.equal(await settled(c), true);
  assert.equal(await settled(d), false, "d before c left");
  budget.leave();
  assert.equal(await settled(d), true);
  budget.leave();
  assert.equal(budget.waiting, 0);
  assert.equal(budget.used, 70);
});
