/**
 * In-process tests of `lib/server/witness.ts` and `lib/witness/client.ts`:
 * a real Server in witness mode on a memory net, spoken to by the vault's
 * client; refusals on the wire and in the audit log; and a witness serving
 * nothing else.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKey } from "../lib/checkpoint.ts";
import { encodeFrame, FrameReader } from "../lib/framer.ts";
import {
  decodeError,
  encodeJson,
  encodeWitnessAdd,
  Kind,
} from "../lib/protocol.ts";
import { MoatError } from "../lib/errors.ts";
import { openWitness } from "../lib/witness/witness.ts";
import { WitnessConnection } from "../lib/witness/client.ts";
import { WITNESS_FRAME_MAX } from "../lib/server/witness.ts";
import { tempDir } from "./_e2e.ts";
import {
  bytes,
  helloBytes,
  openFramed,
  readLine,
  startMemoryServer,
  type TestServer,
  within,
} from "./_server.ts";
import { TestLog } from "./_witness.ts";

/** A witness server on a memory net, its state in a temporary folder. */
async function witnessServer() {
  const tmp = tempDir("moat-witness-server-");
  const { witness } = await openWitness(tmp.dir);
  const t = await startMemoryServer({ witness });
  return {
    t,
    witness,
    connect: () =>
      WitnessConnection.open({
        net: t.net,
        server: { hostname: "127.0.0.1", port: t.port },
        version: "0.0.0-test",
        timeoutMs: 10_000,
      }),
    async [Symbol.asyncDispose]() {
      await t[Symbol.asyncDispose]();
      await witness.close();
      tmp[Symbol.dispose]();
    },
  };
}

async function expectError(t: TestServer, mode: "get" | "chat" | "ship") {
  const conn = await t.connect();
  await conn.write(helloBytes(mode, mode === "ship" ? { source: "s" } : {}));
  const reader = new FrameReader(conn, { bufferSize: 4096 });
  await within(reader.readExact(8), "the preamble");
  const welcome = await within(reader.readFrame(), "the welcome");
  assert.equal(welcome?.type, Kind.Welcome);
  const frame = await within(reader.readFrame(), "an error");
  assert.equal(frame?.type, Kind.Error);
  return decodeError(frame!.payload);
}

test("serveWitness cosigns checkpoints over one connection, answering a stale size with the size held", async () => {
  await using w = await witnessServer();
  const log = new TestLog().grow(10);
  const conn = await w.connect();
  const first = await within(conn.request(log.add(0)), "a cosignature");
  assert.equal(first.kind, "cosigned");
  log.grow(5);
  assert.deepEqual(await within(conn.request(log.add(3)), "a conflict"), {
    kind: "conflict",
    size: 10,
  });
  const second = await within(conn.request(log.add(10)), "a cosignature");
  assert.equal(second.kind, "cosigned");
  conn.close();
  const lines = await w.t.audit.waitCount(
    (e) => e.event === "witness_cosigned",
    2,
    "two witness_cosigned lines",
  );
  assert.deepEqual(
    lines.map((e) => [e.origin, e.from, e.size, e.pinned, e.key]),
    [
      [log.origin, 0, 10, true, log.verifier],
      [log.origin, 10, 15, undefined, undefined],
    ],
  );
});

test("serveWitness refuses a rollback with ERR_WITNESS_REFUSED and one witness_refused line naming both checkpoints", async () => {
  await using w = await witnessServer();
  const key = generateKey("vault.test");
  const log = new TestLog(undefined, key).grow(100);
  const conn = await w.connect();
  await within(conn.request(log.add(0)), "a cosignature");
  const old = new TestLog(undefined, key).grow(60);
  const err = await conn.request(old.add(100)).then(
    () => assert.fail("a rollback was cosigned"),
    (e) => e,
  );
  assert.ok(err instanceof MoatError);
  assert.equal(err.code, "ERR_WITNESS_REFUSED");
  assert.match(err.message, /size 60 .*rollback.*size 100/);
  assert.equal(conn.closed, true);
  const line = await w.t.audit.waitFor(
    (e) => e.event === "witness_refused",
    "witness_refused",
  );
  assert.deepEqual(line.held, {
    size: 100,
    root: Buffer.from(log.tree.root()).toString("base64"),
  });
  assert.deepEqual(line.offered, {
    size: 60,
    root: Buffer.from(old.tree.root()).toString("base64"),
  });
  assert.equal(line.origin, log.origin);
  assert.match(String(line.reason), /rollback/);
  const closed = await w.t.audit.waitFor(
    (e) => e.event === "closed" && e.name === line.name,
    "the closed line",
  );
  assert.match(String(closed.reason), /witness refused a checkpoint/);
  // A new connection still gets the true extension cosigned.
  log.grow(1);
  const again = await w.connect();
  assert.equal((await again.request(log.add(100))).kind, "cosigned");
  again.close();
});

test("serveWitness refuses an oversized frame from its header, and a malformed request", async () => {
  await using w = await witnessServer();
  const c = await openFramed(w.t, "witness");
  await c.conn.write(
    encodeFrame({
      type: Kind.WitnessAdd,
      payload: new Uint8Array(WITNESS_FRAME_MAX + 1),
    }).subarray(0, 5),
  );
  const big = await within(c.reader.readFrame(), "an error");
  assert.equal(big?.type, Kind.Error);
  assert.equal(decodeError(big!.payload).code, "ERR_FRAME_TOO_LARGE");

  const bad = await openFramed(w.t, "witness");
  const add = new TestLog().grow(2).add(0);
  const tooLong = {
    ...add,
    proof: Array.from({ length: 65 }, () => new Uint8Array(32)),
  };
  await bad.send(Kind.WitnessAdd, encodeWitnessAdd(tooLong));
  const proto = await within(bad.reader.readFrame(), "an error");
  assert.equal(decodeError(proto!.payload).code, "ERR_PROTOCOL");
  assert.match(decodeError(proto!.payload).message, /at most 64 hashes/);

  const other = await openFramed(w.t, "witness");
  await other.send(Kind.Chat, bytes("hi"));
  assert.equal(
    decodeError((await within(other.reader.readFrame(), "an error"))!.payload)
      .code,
    "ERR_PROTOCOL",
  );
  const empty = await openFramed(w.t, "witness");
  await empty.send(Kind.WitnessAdd, encodeJson({}));
  assert.equal(
    decodeError((await within(empty.reader.readFrame(), "an error"))!.payload)
      .code,
    "ERR_PROTOCOL",
  );
  assert.equal(w.witness.origins, 0);
});

test("a witness serves nothing else: get, chat, ship and plain text are refused", async () => {
  await using w = await witnessServer();
  for (const mode of ["get", "chat", "ship"] as const) {
    const body = await expectError(w.t, mode);
    assert.equal(body.code, "ERR_NOT_WITNESS");
  }
  const plain = await w.t.connect();
  await plain.write(bytes("FILE:witness.key\n"));
  assert.match(await readLine(plain), /^ERR PLAIN_DISABLED /);
  plain.close();
  await w.t.audit.waitFor(
    (e) =>
      e.event === "closed" &&
      /plain-text client refused \(a witness\)/.test(String(e.reason)),
    "the plain refusal",
  );
});

test("a server that is not a witness refuses witness mode with ERR_NOT_WITNESS", async () => {
  await using t = await startMemoryServer();
  const c = await WitnessConnection.open({
    net: t.net,
    server: { hostname: "127.0.0.1", port: t.port },
    version: "0.0.0-test",
  });
  const err = await c.request(new TestLog().grow(1).add(0)).then(
    () => assert.fail("cosigned"),
    (e) => e,
  );
  assert.equal(err.code, "ERR_NOT_WITNESS");
});
