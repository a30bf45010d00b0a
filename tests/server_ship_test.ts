/**
 * In-process tests of `lib/server/ship.ts` against a real vault in a
 * temporary directory: pipelined appends with ordered acks, duplicates
 * dropped, sources keyed by the connection's address, and refusals.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppendBatch, Vault, VaultSource } from "../lib/vault/store.ts";
import { listSources, readRecords } from "../lib/vault/read.ts";
import {
  decodeError,
  decodeShipReady,
  decodeText,
  encodeShipBatch,
  Kind,
  type ShipReady,
} from "../lib/protocol.ts";
import { encodeFrame } from "../lib/framer.ts";
import { ConnectionClosedError, INTERNAL_MESSAGE } from "../lib/errors.ts";
import { ACKS_QUEUED_MAX } from "../lib/server/ship.ts";
import {
  APPEND_IN_FLIGHT,
  AppendBudget,
  AppendPipeline,
} from "../lib/server/append_pipeline.ts";
import { DEFAULT_MAX_BATCH_RECORDS } from "../lib/limits.ts";
import { stalledVault, testVault } from "./_vault_test_utils.ts";
import { concatBytes } from "./_test_utils.ts";
import {
  answerTokenChallenge,
  bytes,
  type FramedClient,
  openFramed,
  readAll,
  startMemoryServer,
  type TestServer,
  within,
} from "./_server.ts";

/**
 * Wraps a vault so that every source counts its appends in flight (called,
 * not yet settled); everything else goes to the real vault.
 */
function watchAppends(vault: Vault) {
  const stats = { inFlight: 0, max: 0, calls: 0 };
  const watched: Vault = {
    get dir() {
      return vault.dir;
    },
    get id() {
      return vault.id;
    },
    get sealed() {
      return vault.sealed;
    },
    get stats() {
      return vault.stats;
    },
    get checkpointVerifier() {
      return vault.checkpointVerifier;
    },
    checkpoint: (key) => vault.checkpoint(key),
    consistencyProof: (key, from, to) => vault.consistencyProof(key, from, to),
    inclusionProof: (key, seq, size) => vault.inclusionProof(key, seq, size),
    storeCosigned: (key, note) => vault.storeCosigned(key, note),
    seal: () => vault.seal(),
    prune: (options) => vault.prune(options),
    append: (key, records, options) => vault.append(key, records, options),
    sources: () => vault.sources(),
    close: () => vault.close(),
    source(key) {
      const source = vault.source(key);
      return {
        get key() {
          return source.key;
        },
        get id() {
          return source.id;
        },
        get lastSeq() {
          return source.lastSeq;
        },
        get acceptedSeq() {
          return source.acceptedSeq;
        },
        append(records, options) {
          stats.calls++;
          stats.inFlight++;
          stats.max = Math.max(stats.max, stats.inFlight);
          return source.append(records, options).finally(() =>
            stats.inFlight--
          );
        },
      };
    },
  };
  return { vault: watched, stats };
}

function lines(from: number, to: number, tag = "line"): string[] {
  const out: string[] = [];
  for (let i = from; i <= to; i++) {
    out.push(`${tag} ${i} ${"x".repeat(i % 50)}`);
  }
  return out;
}

/** One ShipBatch frame of `texts`, numbered from `first`. */
function batch(first: number, texts: readonly string[]): Uint8Array {
  return encodeFrame({
    type: Kind.ShipBatch,
    payload: encodeShipBatch(
      texts.map((text, i) => ({
        seq: first + i,
        ts: 1_700_000_000_000 + first + i,
        partial: false,
        line: bytes(text),
      })),
    ),
  });
}

/** A shipper after its Welcome and ShipReady. */
async function openShip(
  t: TestServer,
  source: string,
  from?: string,
): Promise<FramedClient & { ready: ShipReady }> {
  const client = await openFramed(t, "ship", {
    hello: { source },
    ...(from !== undefined && { from }),
  });
  const frame = await within(client.reader.readFrame(), "ShipReady");
  assert.equal(
    frame?.type,
    Kind.ShipReady,
    frame ? decodeText(frame.payload) : "closed",
  );
  return { ...client, ready: decodeShipReady(frame!.payload) };
}

/** Reads `n` ShipAck frames and returns their sequence numbers. */
async function readAcks(
  client: Pick<FramedClient, "reader">,
  n: number,
): Promise<number[]> {
  const acks: number[] = [];
  for (let i = 0; i < n; i++) {
    const frame = await within(client.reader.readFrame(), `ack ${i + 1}`);
    assert.ok(frame !== null, `closed after ${i} acks`);
    assert.equal(frame.type, Kind.ShipAck, decodeText(frame.payload));
    acks.push(
      new DataView(frame.payload.buffer, frame.payload.byteOffset, 8)
        .getFloat64(0, true),
    );
  }
  return acks;
}

async function storedLines(dir: string, source?: string): Promise<string[]> {
  const out: string[] = [];
  for await (const r of readRecords(dir, source ? { source } : {})) {
    out.push(decodeText(r.line));
  }
  return out;
}

test("serveShip pipelines batches: several in flight, at most 8, acks in order, every record once", async () => {
  await using v = await testVault("moat-ship-test-");
  const watched = watchAppends(v.vault);
  await using t = await startMemoryServer({ vault: watched.vault });
  const shipper = await openShip(t, "app");
  assert.deepEqual(shipper.ready, {
    peer: "127.0.0.1",
    source: "app",
    lastSeq: 0,
  });
  const all = lines(1, 1000);
  const frames: Uint8Array[] = [];
  for (let b = 0; b < 20; b++) {
    frames.push(batch(b * 50 + 1, all.slice(b * 50, b * 50 + 50)));
  }
  await shipper.conn.write(concatBytes(frames));
  const acks = await readAcks(shipper, 20);
  assert.deepEqual(acks, Array.from({ length: 20 }, (_, b) => (b + 1) * 50));
  assert.equal(watched.stats.calls, 20);
  // The frames were all waiting: the server keeps appending without waiting
  // for a commit until 8 are in flight, and never more.
  assert.equal(watched.stats.max, 8, "most appends in flight at once");
  shipper.conn.close();
  const finished = await t.audit.waitFor(
    (e) => e.event === "ship_finished",
    "ship_finished",
  );
  assert.equal(finished.records, 1000);
  assert.equal(finished.lastSeq, 1000);
  assert.deepEqual(await storedLines(v.dir), all);
});

test("serveShip drops records the vault already has, so a resend after a reconnect stores nothing twice", async () => {
  await using v = await testVault("moat-ship-test-");
  await using t = await startMemoryServer({ vault: v.vault });
  const all = lines(1, 15);
  const first = await openShip(t, "app");
  await first.conn.write(batch(1, all.slice(0, 10)));
  assert.deepEqual(await readAcks(first, 1), [10]);
  first.conn.close();
  const again = await openShip(t, "app");
  assert.equal(again.ready.lastSeq, 10);
  await again.conn.write(concatBytes([
    batch(1, all.slice(0, 5)),
    batch(6, all.slice(5, 15)),
  ]));
  assert.deepEqual(await readAcks(again, 2), [5, 15]);
  again.conn.close();
  await t.audit.waitCount((e) => e.event === "ship_finished", 2, "finished");
  assert.deepEqual(await storedLines(v.dir), all);
});

test("serveShip keys vault sources by peer address: another host cannot write into this host's records", async () => {
  await using v = await testVault("moat-ship-test-");
  await using t = await startMemoryServer({ vault: v.vault });
  const web = lines(1, 10);
  const own = await openShip(t, "web", "127.0.0.1");
  await own.conn.write(batch(1, web));
  assert.deepEqual(await readAcks(own, 1), [10]);
  own.conn.close();
  // A second host (127.0.0.2) claims the same source name and the next seq.
  const other = await openShip(t, "web", "127.0.0.2");
  assert.equal(
    other.ready.lastSeq,
    0,
    "the other host starts its own source at 0",
  );
  assert.equal(other.ready.peer, "127.0.0.2");
  await other.conn.write(batch(1, ["forged"]));
  assert.deepEqual(await readAcks(other, 1), [1]);
  other.conn.close();
  await t.audit.waitCount((e) => e.event === "ship_finished", 2, "finished");
  const rows = (await listSources(v.dir)).map((
    s,
  ) => [s.peer, s.name, s.records]);
  assert.deepEqual(rows.sort(), [["127.0.0.1", "web", 10], [
    "127.0.0.2",
    "web",
    1,
  ]]);
  assert.deepEqual(await storedLines(v.dir, "127.0.0.1/web"), web);
});

test("serveShip acknowledges what was stored, then reports a sequence gap with an Error frame", async () => {
  await using v = await testVault("moat-ship-test-");
  await using t = await startMemoryServer({ vault: v.vault });
  const shipper = await openShip(t, "app");
  await shipper.conn.write(concatBytes([
    batch(1, lines(1, 5)),
    batch(8, lines(8, 10)),
  ]));
  assert.deepEqual(await readAcks(shipper, 1), [5]);
  const frame = await within(shipper.reader.readFrame(), "the error");
  assert.equal(frame?.type, Kind.Error);
  assert.equal(decodeError(frame!.payload).code, "ERR_SEQ_GAP");
  // The server half-closes after the Error frame and reads on (so that no
  // reset destroys the frame) until the shipper closes, as a shipper does.
  assert.equal((await readAll(shipper.conn)).length, 0);
  shipper.conn.close();
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.match(String(closed.reason), /^ship ended: /);
  const finished = t.audit.named("ship_finished")[0]!;
  assert.equal(finished.records, 5);
  assert.equal(finished.lastSeq, 5);
  assert.deepEqual(await storedLines(v.dir), lines(1, 5));
});

test("serveShip refuses a shipper when the server keeps no vault", async () => {
  await using t = await startMemoryServer();
  const client = await openFramed(t, "ship", { hello: { source: "app" } });
  const frame = await within(client.reader.readFrame(), "the refusal");
  assert.equal(frame?.type, Kind.Error);
  assert.deepEqual(decodeError(frame!.payload), {
    code: "ERR_NO_VAULT",
    message: "This server keeps no vault (start it with --vault DIR)",
  });
  const closed = await t.audit.waitFor((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "ship refused: no vault");
});

test("serveShip refuses the syslog port's source name", async () => {
  await using v = await testVault("moat-ship-test-");
  await using t = await startMemoryServer({ vault: v.vault });
  const client = await openFramed(t, "ship", { hello: { source: "syslog" } });
  const frame = await within(client.reader.readFrame(), "the refusal");
  assert.equal(frame?.type, Kind.Error);
  const body = decodeError(frame!.payload);
  assert.equal(body.code, "ERR_PROTOCOL");
  assert.match(body.message, /"syslog" is reserved for the syslog port/);
  assert.deepEqual(await listSources(v.dir), []);
});

/** A shipper that proves `token` in its handshake, after ShipReady. */
async function openTokenShip(
  t: TestServer,
  source: string,
  from: string,
  token: { name: string; secret: string },
): Promise<Pick<FramedClient, "conn" | "reader"> & { ready: ShipReady }> {
  const { conn, reader } = await answerTokenChallenge(t, "ship", token, {
    hello: { maxFrameSize: 65536, source },
    from,
  });
  const welcome = await within(reader.readFrame(), "the Welcome");
  assert.equal(welcome?.type, Kind.Welcome);
  const ready = await within(reader.readFrame(), "ShipReady");
  assert.equal(
    ready?.type,
    Kind.ShipReady,
    ready ? decodeText(ready.payload) : "closed",
  );
  return { conn, reader, ready: decodeShipReady(ready!.payload) };
}

test("serveShip never lets a second host holding the same token write into the first host's source", async () => {
  const token = { name: "fleet", secret: "0123456789abcdef0123456789abcdef" };
  await using v = await testVault("moat-ship-test-");
  await using t = await startMemoryServer({
    vault: v.vault,
    auth: { tokens: [token] },
  });
  const own = await openTokenShip(t, "auth", "127.0.0.1", token);
  await own.conn.write(batch(1, lines(1, 10)));
  assert.deepEqual(await readAcks(own, 1), [10]);
  // The same token from another host: its own source, starting at 0.
  const other = await openTokenShip(t, "auth", "127.0.0.2", token);
  assert.equal(other.ready.lastSeq, 0);
  await other.conn.write(batch(1, ["forged 1", "forged 2"]));
  assert.deepEqual(await readAcks(other, 1), [2]);
  // The first host goes on where it was; nothing tells it "state was lost".
  await own.conn.write(batch(11, lines(11, 12)));
  assert.deepEqual(await readAcks(own, 1), [12]);
  own.conn.close();
  other.conn.close();
  await t.audit.waitCount((e) => e.event === "ship_finished", 2, "finished");
  const rows = (await listSources(v.dir)).map((s) => [
    s.peer,
    s.identity,
    s.name,
    s.records,
  ]);
  assert.deepEqual(rows.sort(), [
    ["127.0.0.1", "token:fleet", "auth", 12],
    ["127.0.0.2", "token:fleet", "auth", 2],
  ]);
  assert.deepEqual(
    await storedLines(v.dir, "127.0.0.1[token:fleet]/auth"),
    lines(1, 12),
  );
});

test("serveShip tells a shipper ERR_INTERNAL for a system error naming the vault's path, and keeps it in the audit log", async () => {
  await using v = await testVault("moat-ship-test-");
  const failing: Vault = Object.create(v.vault, {
    source: {
      value: () => {
        throw Object.assign(
          new Error(
            `EMFILE: too many open files, open '${v.dir}/sources/x/log'`,
          ),
          { code: "EMFILE", errno: -24, syscall: "open" },
        );
      },
    },
  });
  await using t = await startMemoryServer({ vault: failing });
  const client = await openFramed(t, "ship", { hello: { source: "app" } });
  const frame = await within(client.reader.readFrame(), "the refusal");
  assert.equal(frame?.type, Kind.Error);
  assert.deepEqual(decodeError(frame!.payload), {
    code: "ERR_INTERNAL",
    message: INTERNAL_MESSAGE,
  });
  assert.ok(!decodeText(frame!.payload).includes(v.dir));
  const refused = await t.audit.waitFor(
    (e) => e.event === "refused" && e.code === "EMFILE",
    "the refusal in the audit log",
  );
  assert.ok(String(refused.message).includes(v.dir));
});

test("serveShip tells a shipper ERR_INTERNAL when an append fails with a system error naming the vault's path", async () => {
  await using v = await testVault("moat-ship-test-");
  const failing: Vault = Object.create(v.vault, {
    source: {
      value: (key: Parameters<Vault["source"]>[0]) => {
        const source = v.vault.source(key);
        return {
          key: source.key,
          id: source.id,
          lastSeq: source.lastSeq,
          acceptedSeq: source.acceptedSeq,
          append: () =>
            Promise.reject(
              Object.assign(
                new Error(`EIO: i/o error, write '${v.dir}/segments/0001'`),
                { code: "EIO" },
              ),
            ),
        };
      },
    },
  });
  await using t = await startMemoryServer({ vault: failing });
  const shipper = await openShip(t, "app");
  await shipper.conn.write(batch(1, lines(1, 3)));
  const frame = await within(shipper.reader.readFrame(), "the error");
  assert.equal(frame?.type, Kind.Error);
  assert.deepEqual(decodeError(frame!.payload), {
    code: "ERR_INTERNAL",
    message: INTERNAL_MESSAGE,
  });
  assert.ok(!decodeText(frame!.payload).includes(v.dir));
  const err = await t.audit.waitFor(
    (e) => e.event === "error" && e.during === "ship",
    "the error in the audit log",
  );
  assert.equal(err.code, "EIO");
  assert.ok(String(err.message).includes(v.dir));
});

test("serveShip tells a shipper waiting for its ack that the append failed, audits it and closes, though the server was reading the next frame", async () => {
  await using v = await testVault();
  const stalled = stalledVault(v.vault);
  await using t = await startMemoryServer({ vault: stalled.vault });
  const shipper = await openShip(t, "app");
  // Failed on the way out too: the server's close waits for the append.
  using _end = { [Symbol.dispose]: () => stalled.fail(new Error("test end")) };
  await shipper.conn.write(batch(1, lines(1, 3)));
  await within(stalled.appended, "the append");
  // A Pong shows the server back in its read of the next frame.
  await shipper.conn.write(
    encodeFrame({ type: Kind.Ping, payload: new Uint8Array(0) }),
  );
  const pong = await within(shipper.reader.readFrame(), "the pong");
  assert.equal(pong?.type, Kind.Pong);
  // The commit fails now: the segment could not be opened.
  stalled.fail(
    Object.assign(
      new Error(
        `EMFILE: too many open files, open '${v.dir}/sources/app/0001.seg'`,
      ),
      { code: "EMFILE", errno: -24, syscall: "open" },
    ),
  );
  const frame = await within(shipper.reader.readFrame(), "the error");
  assert.equal(frame?.type, Kind.Error);
  assert.deepEqual(decodeError(frame!.payload), {
    code: "ERR_INTERNAL",
    message: INTERNAL_MESSAGE,
  });
  assert.ok(!decodeText(frame!.payload).includes(v.dir));
  assert.equal(
    await within(shipper.reader.readFrame(), "the close"),
    null,
    "the connection closes after the Error frame",
  );
  shipper.conn.close();
  const err = await t.audit.waitFor(
    (e) => e.event === "error" && e.during === "ship",
    "the error in the audit log",
  );
  assert.equal(err.code, "EMFILE");
  assert.ok(String(err.message).includes(v.dir));
  const finished = await t.audit.waitFor(
    (e) => e.event === "ship_finished",
    "the end of the ship session",
  );
  assert.equal(finished.records, 0);
});

/**
 * A vault whose sources take every append at once, durable on the next
 * turn, without touching a disk; `stats.appended` counts the records taken.
 */
function instantVault(base: Vault) {
  const stats = { appended: 0 };
  const vault: Vault = Object.create(base, {
    source: {
      value: (key: Parameters<Vault["source"]>[0]) => {
        let last = 0;
        return {
          key,
          id: "instant",
          get lastSeq() {
            return last;
          },
          get acceptedSeq() {
            return last;
          },
          // The server hands over ship frames read by index.
          append(records: AppendBatch) {
            stats.appended += records.length;
            if (records.length > 0) last = records.seq(records.length - 1);
            return Promise.resolve(last);
          },
        };
      },
    },
  });
  return { vault, stats };
}

/** Waits (bounded) until `pred()` holds: the server reaches a state. */
async function until(pred: () => boolean, what: string): Promise<void> {
  await within(
    (async () => {
      while (!pred()) await new Promise((r) => setTimeout(r, 1));
    })(),
    what,
  );
}

test("serveShip stops reading a shipper that does not read its acks, and goes on once it does", async () => {
  await using v = await testVault("moat-ship-test-");
  const instant = instantVault(v.vault);
  await using t = await startMemoryServer({ vault: instant.vault });
  const shipper = await openShip(t, "app");
  // 8,000 one-record batches: far more acks than the ack pipe holds.
  const n = 8000;
  const frames: Uint8Array[] = [];
  for (let seq = 1; seq <= n; seq++) frames.push(batch(seq, [`r${seq}`]));
  const writing = shipper.conn.write(concatBytes(frames));
  await until(
    () => t.server.usage().pausedReads === 1,
    "the server to stop reading",
  );
  // Stored: what the ack pipe (64 KiB, 13 bytes an ack), the outbox bound
  // and the appends in flight account for; the rest waits in the socket.
  const bound = Math.ceil(64 * 1024 / 13) + 1 +
    Math.ceil(ACKS_QUEUED_MAX / 13) + 1 + APPEND_IN_FLIGHT;
  assert.ok(
    instant.stats.appended <= bound,
    `${instant.stats.appended} batches taken while the acks went unread`,
  );
  assert.ok(bound < n);
  // Every ack comes, in order, once the shipper reads them.
  const acks = await readAcks(shipper, n);
  assert.deepEqual(acks, Array.from({ length: n }, (_, i) => i + 1));
  await within(writing, "the shipper's batches all read");
  assert.equal(instant.stats.appended, n);
  assert.equal(t.server.usage().pausedReads, 0);
});

test("serveShip refuses a batch of more records than the vault takes at once, before decoding it", async () => {
  await using v = await testVault("moat-ship-test-");
  const instant = instantVault(v.vault);
  await using t = await startMemoryServer({ vault: instant.vault });
  const shipper = await openShip(t, "app");
  const empty = Array.from({ length: DEFAULT_MAX_BATCH_RECORDS + 1 }, () => "");
  await shipper.conn.write(concatBytes([batch(1, ["a"]), batch(2, empty)]));
  assert.deepEqual(await readAcks(shipper, 1), [1]);
  const frame = await within(shipper.reader.readFrame(), "the refusal");
  assert.equal(frame?.type, Kind.Error);
  assert.deepEqual(decodeError(frame!.payload), {
    code: "ERR_TOO_MANY_RECORDS",
    message:
      "Cannot append 4097 records at once: a batch holds at most 4096 (maxRecordsPerAppend)",
  });
  assert.equal(instant.stats.appended, 1);
});

test("serveShip refuses a batch whose last record is cut short", async () => {
  await using v = await testVault("moat-ship-test-");
  const instant = instantVault(v.vault);
  await using t = await startMemoryServer({ vault: instant.vault });
  const shipper = await openShip(t, "app");
  const whole = encodeShipBatch([
    { seq: 1, ts: 1, partial: false, line: bytes("abc") },
  ]);
  await shipper.send(Kind.ShipBatch, whole.subarray(0, whole.length - 1));
  const frame = await within(shipper.reader.readFrame(), "the refusal");
  assert.equal(frame?.type, Kind.Error);
  assert.deepEqual(decodeError(frame!.payload), {
    code: "ERR_PROTOCOL",
    message: "Cannot decode ship batch: truncated line",
  });
  assert.equal(instant.stats.appended, 0);
});

test("AppendPipeline keeps the appends of every pipeline on one budget within it, and decodes a waiting batch only once it fits", async () => {
  const budget = new AppendBudget(3 * 1000);
  const pending: (() => void)[] = [];
  const source = (name: string): VaultSource => ({
    key: { peer: "10.0.0.5", name },
    id: name,
    lastSeq: 0,
    acceptedSeq: 0,
    append: (records) =>
      new Promise((resolve) =>
        // This test's batches are arrays.
        pending.push(() =>
          resolve((records as readonly { seq: number }[]).at(-1)!.seq)
        )
      ),
  });
  const a = new AppendPipeline(source("a"), { budget });
  const b = new AppendPipeline(source("b"), { budget });
  const decoded: string[] = [];
  const lazy = (name: string, seq: number) => ({
    cost: 1000,
    decode: () => {
      decoded.push(`${name}${seq}`);
      return [{ seq, ts: 1, line: new Uint8Array(0) }];
    },
  });
  await a.push(lazy("a", 1), { recvTs: 1 });
  await b.push(lazy("b", 1), { recvTs: 1 });
  await a.push(lazy("a", 2), { recvTs: 1 });
  assert.equal(budget.used, 3000);
  const waiting = b.push(lazy("b", 2), { recvTs: 1 });
  assert.equal(budget.waiting, 1);
  assert.deepEqual(decoded, ["a1", "b1", "a2"]);
  // One commit makes room for the waiting batch.
  pending.shift()!();
  await waiting;
  assert.deepEqual(decoded, ["a1", "b1", "a2", "b2"]);
  assert.equal(budget.used, 3000);
  for (const done of pending.splice(0)) done();
  await a.finish();
  await b.finish();
  assert.equal(budget.used, 0);
  assert.equal(a.stored + b.stored, 4);
});

test("AppendBudget lets one batch in alone whatever its cost, and ends a wait on abort", async () => {
  const budget = new AppendBudget(100);
  await budget.take(1000);
  const gone = new AbortController();
  const waiting = budget.take(1, gone.signal);
  gone.abort();
  await assert.rejects(waiting, ConnectionClosedError);
  budget.give(1000);
  assert.equal(budget.used, 0);
  assert.equal(budget.waiting, 0);
});
