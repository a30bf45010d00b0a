/**
 * `lib/witness/witness.ts`: what a witness cosigns and what it refuses, and
 * that what it holds survives a restart.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import {
  addSignatures,
  generateKey,
  parseVerifier,
  verifyCosignature,
} from "../lib/checkpoint.ts";
import { MoatError, WitnessRefusedError } from "../lib/errors.ts";
import {
  type AddResult,
  KEY_FILE,
  openWitness,
  ORIGINS_DIR,
  type Witness,
} from "../lib/witness/witness.ts";
import { tempDir } from "./_e2e.ts";
import { TestLog } from "./_witness.ts";

async function opened(dir: string, options = {}) {
  const { witness } = await openWitness(dir, { now: () => 1.7e12, ...options });
  return {
    witness,
    async [Symbol.asyncDispose]() {
      await witness.close();
    },
  };
}

function cosigned(r: AddResult): string {
  assert.equal(r.kind, "cosigned");
  return r.kind === "cosigned" ? r.cosignature : "";
}

async function refusal(p: Promise<unknown>, reason: RegExp) {
  const err = await p.then(
    () => assert.fail("expected a refusal"),
    (e) => e,
  );
  assert.ok(err instanceof WitnessRefusedError, String(err));
  assert.match(err.reason, reason);
  return err as WitnessRefusedError;
}

test("openWitness makes a cosignature key once (0600) and reads it back", async () => {
  using tmp = tempDir("moat-witness-");
  const dir = path.join(tmp.dir, "w");
  const first = await openWitness(dir, { name: "w.test" });
  assert.equal(first.created, true);
  const verifier = first.witness.verifier;
  assert.match(verifier, /^w\.test\+[0-9a-f]{8}\+/);
  assert.equal(parseVerifier(verifier).type, 0x04);
  await assert.rejects(openWitness(dir), { code: "ERR_LOCKED" });
  await first.witness.close();
  assert.equal(fs.statSync(path.join(dir, KEY_FILE)).mode & 0o777, 0o600);
  assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
  const again = await openWitness(dir);
  assert.equal(again.created, false);
  assert.equal(again.witness.verifier, verifier);
  await again.witness.close();
});

test("Witness cosigns a first checkpoint, then only checkpoints that extend it", async () => {
  using tmp = tempDir("moat-witness-");
  await using w = await opened(tmp.dir);
  const log = new TestLog().grow(10);
  const first = await w.witness.add(log.add(0), "10.0.0.1");
  assert.deepEqual({ ...first, cosignature: "" }, {
    kind: "cosigned",
    origin: log.origin,
    cosignature: "",
    from: 0,
    size: 10,
    pinned: true,
  });
  const note = addSignatures(log.note(), cosigned(first));
  assert.equal(
    verifyCosignature(note, parseVerifier(w.witness.verifier)),
    1_700_000_000,
  );
  log.grow(7);
  const next = await w.witness.add(log.add(10), "10.0.0.1");
  assert.equal(next.kind === "cosigned" && next.from, 10);
  assert.equal(next.kind === "cosigned" && next.pinned, false);
  // The same checkpoint again is cosigned again (a vault that lost the
  // answer retries).
  cosigned(await w.witness.add(log.add(17), "10.0.0.1"));
  assert.equal(w.witness.origins, 1);
});

test("Witness refuses a rollback, a fork, a failed proof and another key, naming both checkpoints", async () => {
  using tmp = tempDir("moat-witness-");
  await using w = await opened(tmp.dir);
  const key = generateKey("vault.test");
  const log = new TestLog(undefined, key).grow(20);
  cosigned(await w.witness.add(log.add(0), "10.0.0.1"));

  // Rollback: a smaller tree, whatever size the vault claims is held.
  const small = new TestLog(undefined, key).grow(12);
  for (const old of [20, 12, 0]) {
    const err = await refusal(
      w.witness.add(small.add(old), "10.0.0.1"),
      /rollback/,
    );
    assert.deepEqual(err.detail.held, {
      size: 20,
      root: Buffer.from(log.tree.root()).toString("base64"),
    });
    assert.equal(err.detail.offered?.size, 12);
    assert.equal(err.code, "ERR_WITNESS_REFUSED");
    assert.match(err.message, /size 12 .*size 20/);
  }

  // Fork: another history of the same size, signed with the same key.
  const fork = new TestLog(undefined, key).grow(20, "other ");
  await refusal(w.witness.add(fork.add(20), "10.0.0.1"), /fork/);

  // A longer fork: its proof from 20 does not lead to the held root.
  fork.grow(5, "other ");
  await refusal(w.witness.add(fork.add(20), "10.0.0.1"), /proof .*fails/);

  // The right tree with a wrong proof.
  log.grow(5);
  const bad = log.add(20);
  bad.proof = bad.proof.map((h) => h.map((b) => b ^ 1));
  await refusal(w.witness.add(bad, "10.0.0.1"), /proof .*fails/);
  const short = log.add(20);
  short.proof = short.proof.slice(1);
  await refusal(w.witness.add(short, "10.0.0.1"), /proof .*fails/);

  // Another key for the same origin, even with a valid signature.
  const other = new TestLog().grow(30);
  await refusal(w.witness.add(other.add(20), "10.0.0.1"), /another key/);

  // A signature that does not verify with the key sent.
  const forged = log.add(20);
  forged.checkpoint = forged.checkpoint.replace(/\n25\n/, "\n26\n");
  await refusal(w.witness.add(forged, "10.0.0.1"), /signature/);

  // None of it moved the witness: the true extension is still cosigned.
  cosigned(await w.witness.add(log.add(20), "10.0.0.1"));
});

test("Witness answers the size it holds when the vault's belief is stale", async () => {
  using tmp = tempDir("moat-witness-");
  await using w = await opened(tmp.dir);
  const log = new TestLog().grow(8);
  // Nothing held: a vault that believes otherwise is told 0.
  assert.deepEqual(await w.witness.add(log.add(5), "10.0.0.1"), {
    kind: "conflict",
    origin: log.origin,
    size: 0,
  });
  cosigned(await w.witness.add(log.add(0), "10.0.0.1"));
  log.grow(8);
  for (const old of [0, 3, 12]) {
    assert.deepEqual(await w.witness.add(log.add(old), "10.0.0.1"), {
      kind: "conflict",
      origin: log.origin,
      size: 8,
    });
  }
  cosigned(await w.witness.add(log.add(8), "10.0.0.1"));
});

test("Witness keeps what it cosigned across a restart, and refuses a rollback after it", async () => {
  using tmp = tempDir("moat-witness-");
  const log = new TestLog().grow(40);
  let verifier: string;
  {
    await using w = await opened(tmp.dir);
    verifier = w.witness.verifier;
    cosigned(await w.witness.add(log.add(0), "10.0.0.1"));
  }
  const files = fs.readdirSync(path.join(tmp.dir, ORIGINS_DIR));
  assert.equal(files.length, 1);
  const state = JSON.parse(
    fs.readFileSync(path.join(tmp.dir, ORIGINS_DIR, files[0]!), "utf8"),
  );
  assert.equal(state.size, 40);
  assert.equal(state.origin, log.origin);
  // The stored checkpoint carries the witness's cosignature.
  verifyCosignature(state.checkpoint, parseVerifier(verifier));

  await using w = await opened(tmp.dir);
  assert.equal(w.witness.origins, 1);
  const rolledBack = new TestLog(log.origin, {
    signer: log.signer,
    verifier: log.verifier,
  }).grow(30);
  await refusal(w.witness.add(rolledBack.add(0), "10.0.0.1"), /rollback/);
  assert.deepEqual(await w.witness.add(log.add(0), "10.0.0.1"), {
    kind: "conflict",
    origin: log.origin,
    size: 40,
  });
});

test("openWitness refuses to start on a damaged origin file (fail closed)", async () => {
  using tmp = tempDir("moat-witness-");
  {
    await using w = await opened(tmp.dir);
    cosigned(await w.witness.add(new TestLog().grow(3).add(0), "10.0.0.1"));
  }
  const dir = path.join(tmp.dir, ORIGINS_DIR);
  const [file] = fs.readdirSync(dir);
  fs.writeFileSync(path.join(dir, file!), '{"origin":"x"');
  await assert.rejects(openWitness(tmp.dir), (err) => {
    assert.ok(err instanceof MoatError);
    assert.equal(err.code, "ERR_CORRUPT");
    assert.match(err.message, /damaged \(not JSON\)/);
    return true;
  });
  // A temporary file left by a crash is removed, not read.
  fs.rmSync(path.join(dir, file!));
  fs.writeFileSync(path.join(dir, `.${file}.tmp-1-2`), "partial");
  await using w = await opened(tmp.dir);
  assert.equal(w.witness.origins, 0);
  assert.deepEqual(fs.readdirSync(dir), []);
});

test("Witness bounds the origins one peer may make it hold", async () => {
  using tmp = tempDir("moat-witness-");
  await using w = await opened(tmp.dir, { maxOriginsPerPeer: 2 });
  const key = generateKey("vault.test");
  const logs = ["a", "b", "c"].map((s) =>
    new TestLog(`moat/v/${s}`, key).grow(2)
  );
  cosigned(await w.witness.add(logs[0]!.add(0), "10.0.0.1"));
  cosigned(await w.witness.add(logs[1]!.add(0), "10.0.0.1"));
  await assert.rejects(w.witness.add(logs[2]!.add(0), "10.0.0.1"), {
    code: "ERR_TOO_MANY_ORIGINS",
  });
  // Growing an origin it holds is not a new one; another peer has its own.
  logs[0]!.grow(1);
  cosigned(await w.witness.add(logs[0]!.add(2), "10.0.0.1"));
  cosigned(await w.witness.add(logs[2]!.add(0), "10.0.0.2"));
});

test("Witness with vault keys cosigns only checkpoints signed by one of them", async () => {
  using tmp = tempDir("moat-witness-");
  const trusted = new TestLog("moat/v/a").grow(3);
  await using w = await opened(tmp.dir, { vaultKeys: [trusted.verifier] });
  cosigned(await w.witness.add(trusted.add(0), "10.0.0.1"));
  await refusal(
    w.witness.add(new TestLog("moat/v/b").grow(3).add(0), "10.0.0.1"),
    /not one this witness accepts/,
  );
});

test("Witness handles concurrent requests for one origin one at a time: one fork of two wins", async () => {
  using tmp = tempDir("moat-witness-");
  await using w = await opened(tmp.dir);
  const key = generateKey("vault.test");
  const a = new TestLog(undefined, key).grow(5);
  const b = new TestLog(undefined, key).grow(5, "b ");
  const results = await Promise.allSettled([
    w.witness.add(a.add(0), "10.0.0.1"),
    w.witness.add(b.add(0), "10.0.0.1"),
  ]);
  assert.deepEqual(results.map((r) => r.status), ["fulfilled", "rejected"]);
});

test("Witness refuses a malformed checkpoint without holding anything", async () => {
  using tmp = tempDir("moat-witness-");
  await using w = await opened(tmp.dir);
  const add = new TestLog().grow(2).add(0);
  for (
    const checkpoint of ["", "x\n\n", add.checkpoint.replace("\u2014", "-")]
  ) {
    await refusal(
      w.witness.add({ ...add, checkpoint }, "10.0.0.1"),
      /malformed/,
    );
  }
  await refusal(
    w.witness.add({ ...add, key: "nonsense" }, "10.0.0.1"),
    /bad vault key/,
  );
  assert.equal((w.witness as Witness).origins, 0);
});
