import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { initVault } from "../lib/vault/init.ts";
import { openVault } from "../lib/vault/store.ts";
import type { AppendRecord, SealEvent } from "../lib/vault/store.ts";
import { verifyVault } from "../lib/vault/verify.ts";
import { readRecords } from "../lib/vault/read.ts";
import { sourceDirName } from "../lib/vault/_key.ts";
import { _internals } from "../lib/segment/log.ts";
import { evolveKey, parseVerificationKey } from "../lib/vault/_seal.ts";
import { MoatError } from "../lib/errors.ts";
import { runMoat, startServer } from "./_e2e.ts";

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-seal-")),
);
after(() => fs.rmSync(base, { recursive: true, force: true }));

let counter = 0;
function freshDir(): string {
  return path.join(base, `v${counter++}`);
}

const te = new TextEncoder();
const KEY = { peer: "127.0.0.1", name: "web1" };

function records(from: number, to: number): AppendRecord[] {
  const out: AppendRecord[] = [];
  for (let seq = from; seq <= to; seq++) {
    out.push({ seq, ts: 1_000 + seq, line: te.encode(`line ${seq}`) });
  }
  return out;
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

function keyFile(dir: string): { epoch: number; key: string } {
  return JSON.parse(fs.readFileSync(path.join(dir, "seal.key"), "utf8"));
}

/** Every byte of every file under dir, as one hex string. */
function allBytesHex(dir: string): string {
  let out = "";
  for (const entry of fs.readdirSync(dir, { recursive: true })) {
    const file = path.join(dir, String(entry));
    if (fs.statSync(file).isFile()) out += fs.readFileSync(file, "hex") + "|";
    if (fs.statSync(file).isFile()) out += fs.readFileSync(file, "utf8") + "|";
  }
  return out;
}

function lastSegment(dir: string): string {
  const sdir = path.join(dir, "sources", sourceDirName(KEY));
  const names = fs.readdirSync(sdir).filter((n) => n.endsWith(".seg")).sort();
  return path.join(sdir, names.at(-1)!);
}

describe("initVault", () => {
  test("initVault keeps only k1 on the host and hands out k0 once", async () => {
    const dir = freshDir();
    const made = await initVault(dir);
    assert.equal(made.existed, false);
    const { vaultId, k0 } = parseVerificationKey(made.verificationKey);
    assert.equal(hex(vaultId), made.id);
    const stored = keyFile(dir);
    assert.equal(stored.epoch, 1);
    assert.equal(stored.key, hex(evolveKey(k0)));
    assert.ok(!allBytesHex(dir).includes(hex(k0)), "k0 is on the host");
    const report = await verifyVault(dir, { key: made.verificationKey });
    assert.equal(report.ok, true);
    assert.equal(report.seals, 0);
  });

  test("initVault refuses a vault that is already sealed", async () => {
    const dir = freshDir();
    await initVault(dir);
    await assert.rejects(
      initVault(dir),
      (e: unknown) => e instanceof MoatError && e.code === "ERR_EXISTS",
    );
  });

  test("initVault seals an existing unsealed vault and keeps its records", async () => {
    const dir = freshDir();
    const plain = await openVault(dir);
    assert.equal(plain.sealed, false);
    await plain.append(KEY, records(1, 5));
    await plain.close();
    const made = await initVault(dir);
    assert.equal(made.existed, true);
    const vault = await openVault(dir, { sealIntervalMs: 0 });
    assert.equal(vault.sealed, true);
    assert.equal(vault.id, made.id);
    await vault.append(KEY, records(6, 8));
    await vault.close();
    const report = await verifyVault(dir, { key: made.verificationKey });
    assert.deepEqual(report.problems, []);
    assert.equal(report.sources[0]!.sealedSeq, 8);
  });
});

describe("initVault and openVault leave no record of a sealed vault unsealed", () => {
  test("initVault seals the records an existing vault holds before it marks it sealed", async () => {
    const dir = freshDir();
    const plain = await openVault(dir);
    await plain.append(KEY, records(1, 5));
    await plain.close();
    const made = await initVault(dir);
    // No server ran since: the seal init wrote is what covers the records.
    const report = await verifyVault(dir, { key: made.verificationKey });
    assert.deepEqual(report.problems, []);
    assert.ok(report.seals >= 1);
    assert.equal(report.sources[0]!.sealedSeq, 5);
    assert.equal(report.keyEpoch, report.seals + 1);
  });

  test("openVault records its seal interval and seals at once", async () => {
    const dir = freshDir();
    await initVault(dir);
    const events: SealEvent[] = [];
    const vault = await openVault(dir, {
      sealIntervalMs: 3_600_000,
      onSeal: (e) => events.push(e),
    });
    try {
      assert.deepEqual(events.map((e) => [e.type, e.epoch]), [["sealed", 1]]);
      const info = JSON.parse(
        fs.readFileSync(path.join(dir, "vault.json"), "utf8"),
      );
      assert.equal(info.sealIntervalMs, 3_600_000);
      assert.equal(info.sealed, true);
      assert.equal((await verifyVault(dir)).sealIntervalMs, 3_600_000);
    } finally {
      await vault.close();
    }
  });

  test("openVault refuses a seal interval longer than a day", async () => {
    await assert.rejects(
      openVault(freshDir(), { sealIntervalMs: 86_400_001 }),
      RangeError,
    );
  });
});

describe("Vault.seal", () => {
  test("Vault.seal evolves the key one way and erases the old one", async () => {
    const dir = freshDir();
    const { verificationKey } = await initVault(dir);
    const { k0 } = parseVerificationKey(verificationKey);
    const keys = [k0];
    for (let i = 1; i <= 5; i++) keys.push(evolveKey(keys[i - 1]!));
    const vault = await openVault(dir, { sealIntervalMs: 0 });
    for (let epoch = 1; epoch <= 3; epoch++) {
      await vault.append(KEY, records(epoch * 10 - 9, epoch * 10));
      const info = await vault.seal();
      assert.equal(info.epoch, epoch);
      assert.equal(info.records, epoch * 10);
      assert.deepEqual(keyFile(dir), {
        version: 1,
        vault: vault.id,
        epoch: epoch + 1,
        key: hex(keys[epoch + 1]!),
      } as unknown);
    }
    const bytes = allBytesHex(dir);
    for (let n = 0; n <= 3; n++) {
      assert.ok(!bytes.includes(hex(keys[n]!)), `k${n} is still on the host`);
    }
    await vault.close(); // seals epoch 4
    assert.equal(keyFile(dir).epoch, 5);
    const report = await verifyVault(dir, { key: verificationKey });
    assert.deepEqual(report.problems, []);
    assert.equal(report.seals, 4);
  });

  test("Vault seals on its interval even when no record arrives", async () => {
    const dir = freshDir();
    const { verificationKey } = await initVault(dir);
    const events: SealEvent[] = [];
    const vault = await openVault(dir, {
      sealIntervalMs: 20,
      onSeal: (e) => events.push(e),
    });
    const deadline = Date.now() + 5_000;
    while (events.length < 3 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await vault.close();
    assert.ok(events.length >= 3, `${events.length} seals`);
    assert.ok(events.every((e) => e.type === "sealed" && e.records === 0));
    const report = await verifyVault(dir, { key: verificationKey });
    assert.deepEqual(report.problems, []);
    assert.ok(report.seals >= 4);
  });

  test("Vault.seal rejects on a vault that was not initialised", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    assert.equal(vault.sealed, false);
    await assert.rejects(
      vault.seal(),
      (e: unknown) => e instanceof MoatError && e.code === "ERR_NOT_SEALED",
    );
    await vault.close();
  });

  test("openVault moves a key left behind by a crash after a seal forward", async () => {
    const dir = freshDir();
    const { verificationKey } = await initVault(dir);
    const vault = await openVault(dir, { sealIntervalMs: 0 });
    await vault.append(KEY, records(1, 3));
    const before = fs.readFileSync(path.join(dir, "seal.key"));
    await vault.seal();
    await vault.append(KEY, records(4, 6));
    await vault.close(); // seal 2
    // As if the host crashed after seals 1 and 2 became durable but before
    // the key file moved on: the key is behind the seal log.
    fs.writeFileSync(path.join(dir, "seal.key"), before);
    const again = await openVault(dir, { sealIntervalMs: 0 });
    assert.equal(keyFile(dir).epoch, 3);
    assert.equal(again.source(KEY).lastSeq, 6);
    await again.append(KEY, records(7, 7));
    await again.close();
    const report = await verifyVault(dir, { key: verificationKey });
    assert.deepEqual(report.problems, []);
    assert.equal(report.seals, 3);
    assert.equal(report.sources[0]!.sealedSeq, 7);
  });

  test("openVault refuses a key ahead of the seal log", async () => {
    const dir = freshDir();
    await initVault(dir);
    const stored = JSON.parse(
      fs.readFileSync(path.join(dir, "seal.key"), "utf8"),
    );
    fs.writeFileSync(
      path.join(dir, "seal.key"),
      JSON.stringify({ ...stored, epoch: 3 }),
    );
    await assert.rejects(
      openVault(dir),
      (e: unknown) =>
        e instanceof MoatError && e.code === "ERR_CORRUPT" &&
        /seals are missing/.test(e.message),
    );
  });

  test("openVault refuses a sealed vault whose key file is gone", async () => {
    const dir = freshDir();
    await initVault(dir);
    fs.rmSync(path.join(dir, "seal.key"));
    await assert.rejects(
      openVault(dir),
      (e: unknown) => e instanceof MoatError && e.code === "ERR_SEAL_KEY",
    );
  });
});

describe("Vault hash chain", () => {
  test("Vault chain continues across reopen and a failed commit", async () => {
    const dir = freshDir();
    const { verificationKey } = await initVault(dir);
    let vault = await openVault(dir, { sealIntervalMs: 0 });
    await vault.append(KEY, records(1, 10));
    await vault.seal();
    await vault.append(KEY, records(11, 20));
    _internals.fault = (step) => {
      if (step === "sync") throw new Error("EIO (injected)");
    };
    try {
      await assert.rejects(vault.append(KEY, records(21, 30)), /injected/);
    } finally {
      _internals.fault = undefined;
    }
    await vault.seal(); // covers 20, not the rolled-back records
    await vault.append(KEY, records(21, 25));
    await vault.close();
    vault = await openVault(dir, { sealIntervalMs: 0 });
    await vault.append(KEY, records(26, 40));
    await vault.close();
    const report = await verifyVault(dir, { key: verificationKey });
    assert.deepEqual(report.problems, []);
    assert.equal(report.sources[0]!.records, 40);
    let n = 0;
    for await (const r of readRecords(dir)) assert.equal(r.seq, ++n);
    assert.equal(n, 40);
  });

  test("verifyVault reports records after the last seal as an unsealed tail", async () => {
    const dir = freshDir();
    const { verificationKey } = await initVault(dir);
    const vault = await openVault(dir, { sealIntervalMs: 0 });
    try {
      await vault.append(KEY, records(1, 10));
      await vault.seal();
      await vault.append(KEY, records(11, 17));
      let report = await verifyVault(dir, { key: verificationKey });
      assert.deepEqual(report.problems, []);
      assert.equal(report.unsealed, 7);
      assert.deepEqual(
        [report.sources[0]!.sealedSeq, report.sources[0]!.unsealed],
        [10, 7],
      );
      // A record being written at the end of the tail is not damage, but
      // it is reported.
      fs.appendFileSync(lastSegment(dir), new Uint8Array(30).fill(7));
      report = await verifyVault(dir, { key: verificationKey });
      assert.deepEqual(report.problems, []);
      assert.equal(report.unsealed, 7);
      assert.equal(report.sources[0]!.torn?.bytes, 30);
      fs.truncateSync(
        lastSegment(dir),
        fs.statSync(lastSegment(dir)).size - 30,
      );
    } finally {
      await vault.close();
    }
  });

  test("verifyVault checks the chains of an unsealed vault, and no key fits it", async () => {
    const dir = freshDir();
    const vault = await openVault(dir);
    await vault.append(KEY, records(1, 50));
    await vault.close();
    const report = await verifyVault(dir);
    assert.deepEqual(report.problems, []);
    assert.equal(report.keyed, false);
    assert.equal(report.unsealed, 50);
    const other = await initVault(freshDir());
    const keyed = await verifyVault(dir, { key: other.verificationKey });
    assert.equal(keyed.ok, false);
    assert.ok(keyed.problems.some((p) => p.kind === "vault"));
    assert.ok(keyed.problems.some((p) => p.kind === "link"));
  });

  test("verifyVault with another sealed vault's key fails at seal 1", async () => {
    const dir = freshDir();
    await initVault(dir);
    const vault = await openVault(dir, { sealIntervalMs: 0 });
    await vault.append(KEY, records(1, 5));
    await vault.close();
    const other = await initVault(freshDir());
    const report = await verifyVault(dir, { key: other.verificationKey });
    assert.equal(report.ok, false);
    assert.equal(report.seals, 0);
  });

  test("parseVerificationKey rejects a mistyped key", async () => {
    const { verificationKey } = await initVault(freshDir());
    const i = 20;
    const typo = verificationKey.slice(0, i) +
      (verificationKey[i] === "0" ? "1" : "0") + verificationKey.slice(i + 1);
    assert.throws(() => parseVerificationKey(typo), /check digits/);
    assert.throws(() => parseVerificationKey("moat-vk1-xyz"), TypeError);
    assert.deepEqual(
      parseVerificationKey(` ${verificationKey}\n`),
      parseVerificationKey(verificationKey),
    );
  });
});

describe("moat vault init and verify", () => {
  test("moat vault verify exits 0 on an intact vault sealed by serve, 5 on damage", async () => {
    const dir = freshDir();
    const init = await runMoat(["vault", "init", dir]);
    assert.equal(init.code, 0, init.stderr);
    const key = init.stdout.trim();
    assert.match(key, /^moat-vk1-/);
    assert.match(init.stderr, /keep it off this host/);
    const server = await startServer(["--vault", dir, "--seal-interval", "1"]);
    try {
      await server.waitEvent(
        (e) => e.event === "vault_sealed",
        "a seal",
        10_000,
      );
      assert.ok(!server.events().some((e) => e.event === "vault_unsealed"));
    } finally {
      await server.stop();
    }
    const ok = await runMoat(["vault", "verify", dir, "--key", key]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /OK: every record and seal is intact/);
    // Remove seal 1 of at least 2: an epoch gap.
    const sealDir = path.join(dir, "seals");
    const seg = path.join(sealDir, fs.readdirSync(sealDir)[0]!);
    const bytes = fs.readFileSync(seg);
    const first = bytes.readUInt32LE(32 + 4);
    assert.ok(bytes.length > 32 + first, "fewer than 2 seals");
    fs.writeFileSync(
      seg,
      Buffer.concat([bytes.subarray(0, 32), bytes.subarray(32 + first)]),
    );
    const bad = await runMoat(["vault", "verify", dir, "--key", key]);
    assert.equal(bad.code, 5, bad.stdout + bad.stderr);
    assert.match(bad.stdout, /DAMAGED: Seal 1 is missing \(epoch gap/);
  });

  test("moat serve --vault on a fresh directory says loudly that it is unsealed", async () => {
    const dir = freshDir();
    const server = await startServer(["--vault", dir]);
    try {
      const event = await server.waitEvent((e) => e.event === "vault_unsealed");
      assert.match(String(event.warning), /NOT sealed/);
    } finally {
      await server.stop();
    }
    const r = await runMoat(["vault", "verify", dir]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /seals NOT verified/);
  });
});
