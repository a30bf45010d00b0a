/**
 * `lib/witness/feeder.ts`: the vault's side, against a real witness server
 * on a memory net and logs standing in for vault sources. Cosigned
 * checkpoints are kept; a stale belief is corrected; a rollback is refused
 * and logged; a witness that is down is retried until it is back.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { Server } from "../lib/server/mod.ts";
import { compileAllowlist } from "../lib/allowlist.ts";
import { parseVerifier, verifyCosignature } from "../lib/checkpoint.ts";
import { openWitness, type Witness } from "../lib/witness/witness.ts";
import { type CheckpointLog, WitnessFeeder } from "../lib/witness/feeder.ts";
import { tempDir } from "./_e2e.ts";
import { type MemoryNet, memoryNet } from "./_memory_conn.ts";
import { AuditEvents } from "./_server.ts";
import { TestLog } from "./_witness.ts";

/** Sources by name, each a TestLog; the cosigned notes they keep. */
class FakeVault implements CheckpointLog<string> {
  readonly logs = new Map<string, TestLog>();
  readonly cosigned = new Map<string, string[]>();

  constructor(readonly checkpointVerifier: string) {}

  checkpoint(key: string) {
    const log = this.logs.get(key);
    return log && { note: log.note(), size: log.tree.size };
  }

  consistencyProof(key: string, from: number, to: number) {
    return this.logs.get(key)!.tree.consistencyProof(from, to);
  }

  storeCosigned(key: string, note: string) {
    this.cosigned.set(key, [...(this.cosigned.get(key) ?? []), note]);
    return Promise.resolve();
  }
}

/** A witness server on `net` at `port`, its state in `dir`. */
async function startWitness(net: MemoryNet, dir: string, port = 0) {
  const { witness } = await openWitness(dir);
  const audit = new AuditEvents();
  const server = new Server({
    net,
    hosts: ["127.0.0.1"],
    port,
    allowlist: compileAllowlist({}),
    audit: audit.log,
    version: "0.0.0-test",
    witness,
  });
  const [addr] = await server.listen();
  return {
    witness: witness as Witness,
    audit,
    port: addr!.port,
    async [Symbol.asyncDispose]() {
      await server.close();
      await witness.close();
    },
  };
}

function feeder(
  vault: FakeVault,
  options: { net: MemoryNet; port: number; key: string; audit: AuditEvents },
) {
  const f = new WitnessFeeder(vault, {
    witnesses: [{
      client: {
        net: options.net,
        server: { hostname: "127.0.0.1", port: options.port },
        version: "0.0.0-test",
        timeoutMs: 10_000,
      },
      key: options.key,
    }],
    audit: options.audit.log,
    label: (k) => k,
    retryMinMs: 5,
    retryMaxMs: 20,
  });
  return Object.assign(f, {
    [Symbol.asyncDispose]: () => f.close(),
  });
}

test("WitnessFeeder sends each grown source's checkpoint and keeps the cosigned note", async () => {
  using tmp = tempDir("moat-feeder-");
  const net = memoryNet();
  await using w = await startWitness(net, tmp.dir);
  const a = new TestLog("moat/v/a").grow(4);
  const vault = new FakeVault(a.verifier);
  vault.logs.set("a", a);
  vault.logs.set(
    "b",
    new TestLog("moat/v/b", { signer: a.signer, verifier: a.verifier }).grow(9),
  );
  const audit = new AuditEvents();
  await using f = feeder(vault, {
    net,
    port: w.port,
    key: w.witness.verifier,
    audit,
  });
  f.submit(["a", "b"]);
  await f.idle();
  assert.deepEqual([...vault.cosigned.keys()], ["a", "b"]);
  const key = parseVerifier(w.witness.verifier);
  for (const notes of vault.cosigned.values()) {
    verifyCosignature(notes[0]!, key);
  }
  a.grow(3);
  f.submit(["a"]);
  await f.idle();
  assert.equal(vault.cosigned.get("a")!.length, 2);
  assert.match(vault.cosigned.get("a")![1]!, /\n7\n/);
  assert.deepEqual(
    audit.named("cosigned").map((e) => [e.witness, e.checkpoints]),
    [[`127.0.0.1:${w.port}`, 2], [`127.0.0.1:${w.port}`, 1]],
  );
  // The witness saw a consistency proof from 4 to 7.
  assert.deepEqual(
    w.audit.named("witness_cosigned").map((e) => [e.from, e.size]),
    [[0, 4], [0, 9], [4, 7]],
  );
});

test("WitnessFeeder of a restarted vault follows the size the witness holds", async () => {
  using tmp = tempDir("moat-feeder-");
  const net = memoryNet();
  await using w = await startWitness(net, tmp.dir);
  const a = new TestLog("moat/v/a").grow(50);
  const vault = new FakeVault(a.verifier);
  vault.logs.set("a", a);
  const audit = new AuditEvents();
  {
    await using f = feeder(vault, {
      net,
      port: w.port,
      key: w.witness.verifier,
      audit,
    });
    f.submit(["a"]);
    await f.idle();
  }
  a.grow(13);
  // A new feeder believes the witness holds nothing.
  await using f = feeder(vault, {
    net,
    port: w.port,
    key: w.witness.verifier,
    audit,
  });
  f.submit(["a"]);
  await f.idle();
  assert.equal(vault.cosigned.get("a")!.length, 2);
  assert.deepEqual(
    w.audit.named("witness_cosigned").map((e) => [e.from, e.size]),
    [[0, 50], [50, 63]],
  );
});

test("WitnessFeeder logs a refused rollback loudly and goes on with the other sources", async () => {
  using tmp = tempDir("moat-feeder-");
  const net = memoryNet();
  await using w = await startWitness(net, tmp.dir);
  const keys = new TestLog();
  const key = { signer: keys.signer, verifier: keys.verifier };
  const vault = new FakeVault(key.verifier);
  vault.logs.set("a", new TestLog("moat/v/a", key).grow(30));
  vault.logs.set("b", new TestLog("moat/v/b", key).grow(3));
  const audit = new AuditEvents();
  await using f = feeder(vault, {
    net,
    port: w.port,
    key: w.witness.verifier,
    audit,
  });
  f.submit(["a", "b"]);
  await f.idle();
  // The vault is rolled back: source a holds 20 records, not 30.
  vault.logs.set("a", new TestLog("moat/v/a", key).grow(20));
  vault.logs.get("b")!.grow(1);
  f.submit(["a", "b"]);
  await f.idle();
  const [refused] = audit.named("cosign_refused");
  assert.equal(refused?.source, "a");
  assert.equal(refused?.code, "ERR_WITNESS_REFUSED");
  assert.match(String(refused?.message), /size 20 .*rollback.*size 30/);
  assert.equal(vault.cosigned.get("a")!.length, 1);
  assert.equal(vault.cosigned.get("b")!.length, 2);
  const [line] = w.audit.named("witness_refused");
  assert.deepEqual(
    [line?.held, line?.offered].map((c) => (c as { size: number }).size),
    [30, 20],
  );
  assert.deepEqual(audit.named("witness_unreachable"), []);
});

test("WitnessFeeder retries a witness that is down, and says when it is back", async () => {
  using tmp = tempDir("moat-feeder-");
  const net = memoryNet();
  const a = new TestLog("moat/v/a").grow(5);
  const vault = new FakeVault(a.verifier);
  vault.logs.set("a", a);
  // The witness's key exists before it listens.
  const { witness } = await openWitness(tmp.dir);
  const verifier = witness.verifier;
  await witness.close();
  const audit = new AuditEvents();
  await using f = feeder(vault, { net, port: 4321, key: verifier, audit });
  f.submit(["a"]);
  const down = await audit.waitFor(
    (e) => e.event === "witness_unreachable",
    "witness_unreachable",
  );
  assert.equal(down.code, "ERR_CONNECT");
  assert.equal(down.pending, 1);
  await using w = await startWitness(net, tmp.dir, 4321);
  await audit.waitFor(
    (e) => e.event === "witness_reachable",
    "witness_reachable",
  );
  await audit.waitFor((e) => e.event === "cosigned", "cosigned");
  assert.equal(vault.cosigned.get("a")!.length, 1);
  // One line for the whole outage, however many retries it took.
  assert.equal(audit.named("witness_unreachable").length, 1);
  assert.equal(w.witness.origins, 1);
});

test("WitnessFeeder refuses a cosignature that does not verify with the witness key", async () => {
  using tmp = tempDir("moat-feeder-");
  const net = memoryNet();
  await using w = await startWitness(net, tmp.dir);
  const a = new TestLog("moat/v/a").grow(5);
  const vault = new FakeVault(a.verifier);
  vault.logs.set("a", a);
  const audit = new AuditEvents();
  const other = tempDir("moat-feeder-other-");
  const { witness: stranger } = await openWitness(other.dir);
  const wrongKey = stranger.verifier;
  await stranger.close();
  other[Symbol.dispose]();
  await using f = feeder(vault, { net, port: w.port, key: wrongKey, audit });
  f.submit(["a"]);
  await f.idle();
  assert.equal(vault.cosigned.size, 0);
  const [line] = audit.named("cosign_invalid");
  assert.match(String(line?.message), /not cosigned by/);
});

test("WitnessFeeder.finish sends the last checkpoints before it closes, and gives up on a witness that is down", async () => {
  using tmp = tempDir("moat-feeder-");
  const net = memoryNet();
  await using w = await startWitness(net, tmp.dir);
  const a = new TestLog("moat/v/a").grow(5);
  const vault = new FakeVault(a.verifier);
  vault.logs.set("a", a);
  const audit = new AuditEvents();
  const f = feeder(vault, {
    net,
    port: w.port,
    key: w.witness.verifier,
    audit,
  });
  await f.finish(["a"], 10_000);
  assert.equal(vault.cosigned.get("a")!.length, 1);
  // Closed: nothing more is sent.
  a.grow(1);
  f.submit(["a"]);
  await f.idle();
  assert.equal(vault.cosigned.get("a")!.length, 1);

  const down = feeder(vault, {
    net,
    port: 1,
    key: w.witness.verifier,
    audit,
  });
  await down.finish(["a"], 50);
  await audit.waitFor(
    (e) => e.event === "witness_unreachable" && e.witness === "127.0.0.1:1",
    "witness_unreachable",
  );
  assert.equal(vault.cosigned.get("a")!.length, 1);
});
