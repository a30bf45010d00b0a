/**
 * In-process tests of `lib/server/syslog.ts` and `lib/server/append_pipeline.ts`
 * against a real vault: syslog over a memory connection into the vault, the
 * size limit, and the pipeline's ordering of failures.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as path from "node:path";
import { openVault, type VaultSource } from "../lib/vault/store.ts";
import { readRecords } from "../lib/vault/read.ts";
import { decodeText } from "../lib/protocol.ts";
import { AppendPipeline } from "../lib/server/append_pipeline.ts";
import { tempDir } from "./_e2e.ts";
import {
  bytes,
  readAll,
  startMemoryServer,
  type TestServer,
} from "./_server.ts";

async function testVault() {
  const tmp = tempDir("moat-syslog-test-");
  const dir = path.join(tmp.dir, "vault");
  const vault = await openVault(dir, { sealIntervalMs: 0 });
  return {
    vault,
    dir,
    async [Symbol.asyncDispose]() {
      await vault.close();
      tmp[Symbol.dispose]();
    },
  };
}

/** Connects to the server's syslog port. */
function connectSyslog(t: TestServer, from = "127.0.0.1") {
  const listening = t.audit.named("listening")[0]!;
  const addr = (listening.syslog as string[])[0]!;
  return t.net.connect({
    hostname: "127.0.0.1",
    port: Number(addr.slice(addr.lastIndexOf(":") + 1)),
    from: { hostname: from, port: 52000 },
  });
}

test("serveSyslog stores newline-framed messages in order under the peer's syslog source", async () => {
  await using v = await testVault();
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
  await using v = await testVault();
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
  await using v = await testVault();
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
  await using v = await testVault();
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

test("AppendPipeline waits once the in-flight limit is reached", async () => {
  await using v = await testVault();
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
