/**
 * Reading a JetStream vault (lib/vault/nats/read.ts, import.ts) against a
 * real nats-server: a sealed directory vault imported into a stream reads
 * back (export) as the same vault and verifies with its key; and every kind
 * of tampering a stream allows — a foreign writer's message out of order, a
 * forged record batch that continues a source, a malformed message, a
 * second meta, a forged or missing seal, a forged checkpoint — is caught by
 * `verifyVault` on the copy.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { tempDir } from "./_e2e.ts";
import {
  createVaultStream,
  jsPublish,
  type NatsCluster,
  noNats,
  rawConnect,
  startNatsCluster,
  waitStreamLeader,
} from "./_nats.ts";
import { initVault } from "../lib/vault/init.ts";
import { openVault } from "../lib/vault/store.ts";
import { verifyVault } from "../lib/vault/verify.ts";
import type { VerifyReport } from "../lib/vault/verify.ts";
import { materializeStream } from "../lib/vault/nats/read.ts";
import { importVault } from "../lib/vault/nats/import.ts";
import { openNatsVault } from "../lib/vault/nats/vault.ts";
import { loadRecordKeys, prepareLocalCopy } from "../lib/vault/nats/apply.ts";
import type { RecordKey } from "../lib/vault/nats/codec.ts";
import { generateKey, parseSigner } from "../lib/checkpoint.ts";
import { generateKeyPairSync } from "node:crypto";
import process from "node:process";
import {
  encodeMeta,
  encodeRecordMessage,
  encodeRecordSection,
  recordMsgId,
  sourceId,
} from "../lib/vault/nats/codec.ts";
import { recordBatch } from "../lib/vault/_format.ts";
import { finishRecord } from "../lib/segment/codec.ts";
import { latestCheckpoint, proveInclusion } from "../lib/vault/proof.ts";
import { readRecords } from "../lib/vault/read.ts";

const KEY = { peer: "10.0.0.5", name: "web" };
const OTHER = { peer: "10.0.0.6", identity: "token:db", name: "db" };
const enc = new TextEncoder();

/**
 * A sealed directory vault with two sources (250 and 40 records), sealed
 * and checkpointed: what import publishes.
 */
async function sealedVault(dir: string): Promise<string> {
  const { verificationKey } = await initVault(dir);
  const vault = await openVault(dir, { sealIntervalMs: 0 });
  const now = Date.now();
  for (let b = 0; b < 5; b++) {
    await vault.append(
      KEY,
      Array.from({ length: 50 }, (_, i) => ({
        seq: b * 50 + i + 1,
        ts: now + i,
        line: enc.encode(`web line ${b * 50 + i + 1}`),
      })),
      { recvTs: now + b },
    );
  }
  await vault.append(
    OTHER,
    Array.from({ length: 40 }, (_, i) => ({
      seq: i + 1,
      ts: now,
      line: enc.encode(`db ${i + 1}`),
      ...(i === 7 && { partial: true }),
    })),
  );
  await vault.checkpoint(KEY);
  await vault.checkpoint(OTHER);
  await vault.seal();
  await vault.close();
  return verificationKey;
}

interface Setup {
  cluster: NatsCluster;
  url: string;
  key: string;
  src: string;
  tmp: string;
  /** The vault's checkpoint key: what a front door signs record messages with. */
  sign: RecordKey;
}

async function withImported(
  tmp: string,
  fn: (s: Setup) => Promise<void>,
): Promise<void> {
  await using cluster = await startNatsCluster({ dir: tmp, nodes: 1 });
  await createVaultStream(cluster);
  const src = path.join(tmp, "src");
  const key = await sealedVault(src);
  const url = `nats://${cluster.servers}`;
  const report = await importVault({
    url,
    creds: cluster.users.moat.creds,
    dir: src,
  });
  assert.equal(report.records, 290);
  assert.equal(report.sources, 2);
  assert.ok(report.seals >= 2, JSON.stringify(report));
  assert.equal(report.checkpoints, 2);
  const info = JSON.parse(
    fs.readFileSync(path.join(src, "vault.json"), "utf8"),
  );
  const { sign } = await loadRecordKeys(src, {
    vaultId: info.id,
    checkpointKey: info.checkpointKey,
  });
  await fn({ cluster, url, key, src, tmp, sign });
}

let exports = 0;
async function exportAndVerify(
  s: Setup,
  keys: string[] = [s.key],
): Promise<{ dir: string; report: VerifyReport }> {
  const dir = path.join(s.tmp, `out${++exports}`);
  await materializeStream({
    url: s.url,
    creds: s.cluster.users.moat.creds,
    dir,
  });
  const report = await verifyVault(dir, { keys });
  return { dir, report };
}

function kinds(report: VerifyReport): string[] {
  return report.problems.map((p) => p.kind);
}

test(
  "JetStream read: a sealed vault imported into a stream exports as the same vault and verifies with its key",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-read-");
    await withImported(tmp.dir, async (s) => {
      const { dir, report } = await exportAndVerify(s);
      assert.deepEqual(report.problems, []);
      assert.equal(report.ok, true);
      assert.equal(report.keyed, true);
      assert.ok(report.seals >= 2);
      assert.deepEqual(
        report.sources.map((x) => [x.label, x.records, x.sealedSeq]),
        [
          ["10.0.0.5/web", 250, 250],
          ["10.0.0.6[token:db]/db", 40, 40],
        ],
      );
      // Records, receive times and flags as stored in the directory.
      const a = await Array.fromAsync(readRecords(s.src));
      const b = await Array.fromAsync(readRecords(dir));
      assert.deepEqual(b, a);
      // The checkpoints are the directory's, and proofs work on the copy.
      const cp = await latestCheckpoint(dir, "web");
      assert.equal(cp.note, (await latestCheckpoint(s.src, "web")).note);
      const proof = await proveInclusion(dir, "web", 17);
      assert.deepEqual(proof, await proveInclusion(s.src, "web", 17));
      // Import again: nothing new.
      const again = await importVault({
        url: s.url,
        creds: s.cluster.users.moat.creds,
        dir: s.src,
      });
      assert.deepEqual(
        [again.records, again.checkpoints, again.seals],
        [0, 0, 0],
      );
      // Without the key: chains only; with a wrong key: refused.
      const unkeyed = await verifyVault(dir);
      assert.equal(unkeyed.ok, true);
      assert.equal(unkeyed.keyed, false);
      const other = await initVault(path.join(s.tmp, "other"));
      const wrong = await verifyVault(dir, {
        keys: [other.verificationKey],
      });
      assert.equal(wrong.ok, false);
      assert.ok(kinds(wrong).includes("vault"), JSON.stringify(wrong));
    });
  },
);

/** Publishes a record message as a foreign writer would: no expected-sequence header. */
async function publishRecords(
  s: Setup,
  key: typeof KEY | typeof OTHER,
  first: number,
  lines: string[],
  recvTs = Date.now(),
  signer: RecordKey = s.sign,
): Promise<void> {
  using conn = await rawConnect(
    s.cluster.nodes[0]!.clientPort,
    s.cluster.users.moat,
  );
  const batch = recordBatch(
    lines.map((line, i) => ({
      seq: first + i,
      ts: recvTs,
      line: enc.encode(line),
    })),
  );
  const body = encodeRecordMessage(
    key,
    first,
    lines.length,
    [encodeRecordSection(batch, recvTs)],
    signer,
  );
  const srcid = sourceId(key);
  await jsPublish(conn, `moat.moat.rec.${srcid}`, body, {
    "Nats-Msg-Id": recordMsgId(srcid, first, first + lines.length - 1) + "x",
  });
}

async function publishRaw(
  s: Setup,
  subject: string,
  body: Uint8Array | string,
): Promise<void> {
  using conn = await rawConnect(
    s.cluster.nodes[0]!.clientPort,
    s.cluster.users.moat,
  );
  await jsPublish(conn, subject, body);
}

test(
  "JetStream read: a key holder's message out of order (a gap, a rewrite of held records) is skipped and reported",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-read-");
    await withImported(tmp.dir, async (s) => {
      // Records 100-101 again, with other lines: a rewrite attempt.
      await publishRecords(s, KEY, 100, ["forged 100", "forged 101"]);
      // Records after a gap.
      await publishRecords(s, OTHER, 45, ["after a gap"]);
      const { dir, report } = await exportAndVerify(s);
      assert.equal(report.ok, false);
      const stream = report.problems.filter((p) => p.kind === "stream");
      assert.equal(stream.length, 2, JSON.stringify(report.problems));
      assert.match(stream[0]!.message, /already applied/);
      assert.match(stream[1]!.message, /records before it end at 40/);
      // The skipped messages changed nothing.
      const lines = (await Array.fromAsync(readRecords(dir, { source: "web" })))
        .map((r) => new TextDecoder().decode(r.line));
      assert.equal(lines[99], "web line 100");
      assert.equal(lines.length, 250);
    });
  },
);

test(
  "JetStream read: a forged record batch that continues a source (not signed by the vault's key) is skipped and reported",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-read-");
    await withImported(tmp.dir, async (s) => {
      // What someone holding the cluster's credentials but not the
      // checkpoint key can publish: well formed, continuing the source,
      // signed by another key.
      const other = generateKeyPairSync("ed25519").privateKey;
      await publishRecords(s, KEY, 251, ["forged 251"], Date.now(), {
        vaultId: s.sign.vaultId,
        key: other,
      });
      const { dir, report } = await exportAndVerify(s);
      assert.equal(report.ok, false);
      const stream = report.problems.filter((p) => p.kind === "stream");
      assert.equal(stream.length, 1, JSON.stringify(report.problems));
      assert.match(
        stream[0]!.message,
        /signature is not the vault's checkpoint key's/,
      );
      // Never applied: the source ends where the vault's doors left it.
      const web = await Array.fromAsync(readRecords(dir, { source: "web" }));
      assert.equal(web.length, 250);
    });
  },
);

test(
  "JetStream read: a record batch signed with the vault's key but no door's seal is unsealed: damage once the grace is past",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-read-");
    await withImported(tmp.dir, async (s) => {
      const hour = 3_600_000;
      // Dated an hour ago: no door's seal covers it, and the seals say a
      // door sealed well after it arrived. (Only the checkpoint key's
      // holder can sign it.)
      await publishRecords(s, KEY, 251, ["forged 251"], Date.now() - hour);
      const { report } = await exportAndVerify(s);
      assert.equal(report.ok, false);
      const unsealed = report.problems.find((p) => p.kind === "unsealed");
      assert.ok(unsealed, JSON.stringify(report.problems));
      assert.equal(unsealed.seq, 251);
    });
  },
);

test(
  "JetStream read: malformed messages, a second meta, an unknown subject and a forged checkpoint are reported",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-read-");
    await withImported(tmp.dir, async (s) => {
      const srcid = sourceId(KEY);
      await publishRaw(s, `moat.moat.rec.${srcid}`, "not a record message");
      await publishRaw(
        s,
        "moat.moat.meta",
        JSON.stringify({
          format: 1,
          vaultId: "00".repeat(16),
          checkpointKey: "moat/x+00000000+AAAA",
        }),
      );
      await publishRaw(s, "moat.moat.other", "?");
      await publishRaw(s, `moat.moat.ckpt.${srcid}`, "forged checkpoint");
      const { report } = await exportAndVerify(s);
      assert.equal(report.ok, false);
      const messages = report.problems.map((p) => `${p.kind}: ${p.message}`);
      assert.ok(
        messages.some((m) => /stream: .*wrong magic|too short/.test(m)),
        messages.join("\n"),
      );
      assert.ok(messages.some((m) => /a second meta message/.test(m)));
      assert.ok(
        messages.some((m) => /unknown subject moat\.moat\.other/.test(m)),
      );
      assert.ok(
        messages.some((m) => /^tree: .*does not verify/.test(m)),
        messages.join("\n"),
      );
    });
  },
);

test(
  "JetStream read: a forged seal, a seal out of order, and a door whose key is not given are caught",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-read-");
    await withImported(tmp.dir, async (s) => {
      // Seal 1 published again under the same door: out of order.
      const { dir: first } = await exportAndVerify(s);
      const doorId = fs.readdirSync(path.join(first, "doors"))[0]!;
      const segs = fs.readdirSync(path.join(first, "doors", doorId, "seals"));
      const bytes = fs.readFileSync(
        path.join(first, "doors", doorId, "seals", segs[0]!),
      );
      const seal1 = new Uint8Array(
        bytes.subarray(32, 32 + bytes.readUInt32LE(32 + 4)),
      );
      await publishRaw(s, `moat.moat.seal.${doorId}`, seal1);
      const replayed = await exportAndVerify(s);
      assert.equal(replayed.report.ok, false);
      assert.ok(
        kinds(replayed.report).some((k) => k === "seal" || k === "sequence"),
        JSON.stringify(replayed.report.problems),
      );

      // A door nobody gave the key of (here: a forged one, whose MAC no
      // key opens): its seals are not trusted, and verify says so.
      const forged = Uint8Array.from(seal1);
      forged[forged.length - 1]! ^= 1;
      finishRecord(forged, { kind: 3, flags: 0, seq: 1 });
      await publishRaw(s, "moat.moat.seal.forgeddoor", forged);
      const both = await exportAndVerify(s);
      assert.ok(
        both.report.problems.some((p) =>
          p.kind === "seal-key" && /forgeddoor/.test(p.message)
        ),
        JSON.stringify(both.report.problems),
      );
    });
  },
);

test(
  "JetStream read: two front doors' stream (NatsVault) verifies with both doors' keys; with one, the other door is reported",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-read-");
    await using cluster = await startNatsCluster({ dir: tmp.dir, nodes: 1 });
    await createVaultStream(cluster);
    const url = `nats://${cluster.servers}`;
    const creds = cluster.users.moat.creds;
    // Door A: a sealed cache; the stream adopts its vault id.
    const cacheA = path.join(tmp.dir, "a");
    const keyA = (await initVault(cacheA)).verificationKey;
    const a = await openNatsVault({ url, creds, cache: cacheA, replicas: 1 });
    const now = Date.now();
    const lines = (from: number, n: number, tag: string) =>
      Array.from({ length: n }, (_, i) => ({
        seq: from + i,
        ts: now,
        line: enc.encode(`${tag} ${from + i}`),
      }));
    await a.append(KEY, lines(1, 100, "a"));
    // Door B: the stream's id and checkpoint key, then its own seal key.
    const cacheB = path.join(tmp.dir, "b");
    fs.mkdirSync(cacheB);
    fs.copyFileSync(
      path.join(cacheA, "checkpoint.key"),
      path.join(cacheB, "checkpoint.key"),
    );
    const vaultJson = JSON.parse(
      fs.readFileSync(path.join(cacheA, "vault.json"), "utf8"),
    );
    await prepareLocalCopy(cacheB, {
      format: 2,
      vaultId: vaultJson.id,
      checkpointKey: vaultJson.checkpointKey,
    });
    const keyB = (await initVault(cacheB)).verificationKey;
    const b = await openNatsVault({ url, creds, cache: cacheB, replicas: 1 });
    // B takes KEY over (catch-up first, as the ship handler does) and
    // writes OTHER.
    await b.catchUp?.(KEY);
    await b.append(KEY, lines(101, 50, "b"));
    await b.append(OTHER, lines(1, 20, "b-other"));
    for (const door of [a, b]) {
      await door.checkpoint(KEY);
      await door.seal();
      await door.close();
    }
    // Each door published its seals to seal.<doorid> (lib/vault/nats/seals.ts).
    const dir = path.join(tmp.dir, "out");
    const file = await materializeStream({ url, creds, dir });
    assert.equal(Object.keys(file.doors).length, 2);
    const both = await verifyVault(dir, { keys: [keyB, keyA] });
    assert.deepEqual(both.problems, []);
    assert.deepEqual(
      both.sources.map((s) => [s.label, s.records, s.sealedSeq]),
      [["10.0.0.5/web", 150, 150], ["10.0.0.6[token:db]/db", 20, 20]],
    );
    const onlyA = await verifyVault(dir, { keys: [keyA] });
    assert.equal(onlyA.ok, false);
    assert.deepEqual(kinds(onlyA), ["seal-key"]);
    assert.match(onlyA.problems[0]!.message, /no --key given opens its seals/);
  },
);

test(
  "JetStream read: a record changed on a NATS host's disk (one replica) fails verify, with the key and with a checkpoint held outside",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-read-");
    await withImported(tmp.dir, async (s) => {
      const held = (await latestCheckpoint(s.src, "web")).note;
      await s.cluster.kill(0);
      let patched = 0;
      const walk = (d: string): string[] =>
        fs.readdirSync(d, { withFileTypes: true }).flatMap((e) =>
          e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]
        );
      for (const f of walk(s.cluster.nodes[0]!.storeDir)) {
        if (!f.endsWith(".blk")) continue;
        const b = fs.readFileSync(f);
        const at = b.indexOf("web line 17");
        if (at < 0) continue;
        b[at + 9] = "X".charCodeAt(0);
        fs.writeFileSync(f, b);
        patched++;
      }
      assert.equal(patched, 1);
      await s.cluster.restart(0);
      const dir = path.join(s.tmp, "out");
      await materializeStream({
        url: s.url,
        creds: s.cluster.users.moat.creds,
        dir,
      });
      // Whether the server cuts its store at the damage (2.9.10 does) or
      // serves the changed message, verify fails: the seals, and the
      // checkpoint held outside, no longer match.
      const keyed = await verifyVault(dir, { keys: [s.key] });
      assert.equal(keyed.ok, false);
      const outside = await verifyVault(dir, {
        checkpoints: [{ file: "held", note: held }],
      });
      assert.equal(outside.ok, false);
      assert.ok(kinds(outside).includes("checkpoint"), JSON.stringify(outside));
    });
  },
);

test(
  "JetStream read: a cluster that stops answering mid-read ends the read with an error instead of a hang",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-read-");
    await using cluster = await startNatsCluster({ dir: tmp.dir, nodes: 1 });
    await createVaultStream(cluster);
    const node = cluster.nodes[0]!;
    const made = generateKey("moat/x");
    const signer = {
      vaultId: new Uint8Array(16).fill(0xab),
      key: parseSigner(made.signer).key,
    };
    {
      using conn = await rawConnect(node.clientPort, cluster.users.moat);
      await jsPublish(
        conn,
        "moat.moat.meta",
        encodeMeta({
          format: 2,
          vaultId: "ab".repeat(16),
          checkpointKey: made.verifier,
        }),
      );
      // One record per message: the copy fsyncs each, so the read takes a
      // while after its consumer appears.
      for (let i = 1; i <= 2000; i++) {
        await jsPublish(
          conn,
          `moat.moat.rec.${sourceId(KEY)}`,
          encodeRecordMessage(KEY, i, 1, [
            encodeRecordSection(
              recordBatch([{ seq: i, ts: 1, line: enc.encode(`x${i}`) }]),
              5,
            ),
          ], signer),
        );
      }
    }
    const read = materializeStream({
      url: `nats://${cluster.servers}`,
      creds: cluster.users.moat.creds,
      dir: path.join(tmp.dir, "out"),
      timeoutMs: 1000,
    });
    const settled = read.then(() => "done", (e: Error) => e.message);
    // The read has begun once its consumer exists: then stop the server.
    for (;;) {
      const r = await fetch(
        `http://127.0.0.1:${node.monitorPort}/jsz?accounts=true&consumers=true`,
      );
      if (/"consumer_detail"/.test(await r.text())) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    process.kill(node.child!.pid!, "SIGSTOP");
    try {
      assert.match(await settled, /^Cannot read stream "MOAT": /);
    } finally {
      process.kill(node.child!.pid!, "SIGCONT");
    }
  },
);

test(
  "JetStream read: a read into an earlier copy (--cache) takes only the new messages, and refuses a stream that lost some",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-read-");
    await withImported(tmp.dir, async (s) => {
      const dir = path.join(s.tmp, "cache");
      const read = () =>
        materializeStream({
          url: s.url,
          creds: s.cluster.users.moat.creds,
          dir,
        });
      const first = await read();
      // More records, a checkpoint and a seal in the source vault; imported.
      const vault = await openVault(s.src, { sealIntervalMs: 0 });
      await vault.append(
        KEY,
        Array.from({ length: 30 }, (_, i) => ({
          seq: 251 + i,
          ts: Date.now(),
          line: enc.encode(`web line ${251 + i}`),
        })),
      );
      await vault.checkpoint(KEY);
      await vault.seal();
      await vault.close();
      await importVault({
        url: s.url,
        creds: s.cluster.users.moat.creds,
        dir: s.src,
      });
      await publishRecords(s, OTHER, 50, ["after a gap"]);
      const second = await read();
      assert.ok(second.lastSeq > first.lastSeq);
      assert.equal(
        second.messages,
        second.lastSeq,
        "every message read once, over the two reads",
      );
      const report = await verifyVault(dir, { keys: [s.key] });
      assert.deepEqual(
        report.sources.map((x) => [x.label, x.records, x.sealedSeq]),
        [["10.0.0.5/web", 280, 280], ["10.0.0.6[token:db]/db", 40, 40]],
      );
      assert.deepEqual(kinds(report), ["stream"], JSON.stringify(report));
      assert.deepEqual(
        await Array.fromAsync(readRecords(dir)),
        await Array.fromAsync(readRecords(s.src)),
      );
      assert.equal(
        (await latestCheckpoint(dir, "web")).note,
        (await latestCheckpoint(s.src, "web")).note,
      );
      // Nothing new: a third read changes nothing.
      const third = await read();
      assert.equal(third.messages, second.messages);
      assert.equal(third.problems.length, second.problems.length);

      // The admin deletes the stream and imports the vault again: fewer
      // messages than the copy read.
      {
        using admin = await rawConnect(
          s.cluster.nodes[0]!.clientPort,
          s.cluster.users.admin,
        );
        const gone = await admin.api("$JS.API.STREAM.DELETE.MOAT");
        assert.equal(gone.success, true);
      }
      await createVaultStream(s.cluster);
      await importVault({
        url: s.url,
        creds: s.cluster.users.moat.creds,
        dir: s.src,
      });
      await assert.rejects(read(), (e: Error & { code?: string }) => {
        assert.equal(e.code, "ERR_INTEGRITY");
        assert.match(e.message, /deleted and made again/);
        return true;
      });
    });
  },
);

test(
  "JetStream read: with one node of three down, every read succeeds (a consumer placed on the dead node is given up for message-by-message reads)",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-nats-read-");
    await using cluster = await startNatsCluster({ dir: tmp.dir, nodes: 3 });
    await createVaultStream(cluster);
    const src = path.join(tmp.dir, "src");
    const key = await sealedVault(src);
    const url = `nats://${cluster.servers}`;
    const creds = cluster.users.moat.creds;
    await importVault({ url, creds, dir: src });
    await cluster.kill(2);
    await waitStreamLeader(cluster);
    // 2.9.10 puts about one ephemeral consumer in three on the dead node.
    for (let i = 0; i < 6; i++) {
      const dir = path.join(tmp.dir, `out${i}`);
      const file = await materializeStream({
        url,
        creds,
        dir,
        timeoutMs: 5000,
      });
      assert.equal(file.messages, file.lastSeq);
      const report = await verifyVault(dir, { keys: [key] });
      assert.deepEqual(report.problems, []);
      assert.equal(report.sources[0]!.records, 250);
    }
  },
);
