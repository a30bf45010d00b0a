import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { sourceDirName } from "../lib/vault/_key.ts";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  createVaultStream,
  jsPublish,
  noNats,
  rawConnect,
  startNatsCluster,
  vaultStreamConfig,
} from "./_nats.ts";
import type { NatsCluster } from "./_nats.ts";
import { openNatsVault } from "../lib/vault/nats/vault.ts";
import type { NatsVault } from "../lib/vault/nats/vault.ts";
import { readRecords } from "../lib/vault/read.ts";
import { verifyVault } from "../lib/vault/verify.ts";
import { initVault } from "../lib/vault/init.ts";
import { materializeStream } from "../lib/vault/nats/read.ts";
import {
  encodeRecordMessage,
  encodeRecordSection,
  sourceId,
} from "../lib/vault/nats/codec.ts";
import { recordBatch } from "../lib/vault/_format.ts";
import { generateKeyPairSync } from "node:crypto";

const enc = new TextEncoder();
const key = { peer: "10.0.0.5", name: "app" };

function records(from: number, to: number) {
  const out = [];
  for (let seq = from; seq <= to; seq++) {
    out.push({ seq, ts: 1_000 + seq, line: enc.encode(`line ${seq}`) });
  }
  return out;
}

async function lines(dir: string): Promise<number[]> {
  const seqs: number[] = [];
  for await (const r of readRecords(dir)) {
    assert.equal(new TextDecoder().decode(r.line), `line ${r.seq}`);
    seqs.push(r.seq);
  }
  return seqs;
}

async function setup(dir: string, nodes: 1 | 3 = 1) {
  const cluster = await startNatsCluster({ dir, nodes });
  await createVaultStream(cluster);
  const creds = cluster.users.moat.creds;
  return { cluster, creds };
}

function open(cluster: NatsCluster, creds: string, cache: string) {
  return openNatsVault({
    url: `nats://${cluster.servers.replaceAll("nats://", "")}`,
    creds,
    cache,
    replicas: cluster.nodes.length,
    sealIntervalMs: 0,
  });
}

test(
  "NatsVault stores appends in the stream and its local copy, and a second door catches up and continues",
  {
    skip: noNats,
  },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), "moat-nats-vault-"));
    let a: NatsVault | undefined;
    let b: NatsVault | undefined;
    const { cluster, creds } = await setup(dir);
    try {
      a = await open(cluster, creds, join(dir, "a"));
      assert.equal(await a.append(key, records(1, 3)), 3);
      // Many appends without waiting: coalesced, fewer messages than appends.
      const waits = [];
      for (let seq = 4; seq <= 400; seq++) {
        waits.push(a.append(key, records(seq, seq)));
      }
      assert.deepEqual(
        await Promise.all(waits),
        records(4, 400).map((r) => r.seq),
      );
      assert.ok(
        a.natsStats.published < 100,
        `${a.natsStats.published} messages`,
      );
      assert.equal(a.source(key).lastSeq, 400);
      // Door B: an empty cache with the stream's checkpoint key.
      await mkdir(join(dir, "b"));
      await copyFile(
        join(dir, "a", "checkpoint.key"),
        join(dir, "b", "checkpoint.key"),
      );
      b = await open(cluster, creds, join(dir, "b"));
      assert.equal(b.id, a.id);
      assert.equal(b.source(key).lastSeq, 0);
      await b.catchUp(key);
      assert.equal(b.source(key).lastSeq, 400);
      // B writes; A's next publish conflicts, reads B's records, and goes on
      // after them: its duplicates are dropped, the rest follow in order.
      assert.equal(await b.append(key, records(401, 450)), 450);
      assert.equal(await a.append(key, records(401, 500)), 500);
      assert.equal(a.natsStats.conflicts, 1);
      await assert.rejects(a.append(key, records(600, 601)), {
        code: "ERR_SEQ_GAP",
      });
      // B is behind (it holds up to 450): a gap makes it catch up first.
      assert.equal(await b.append(key, records(480, 520)), 520);
      const cpA = await a.checkpoint(key);
      await b.catchUp(key);
      await a.catchUp(key);
      assert.equal(
        (await b.checkpoint(key)).root.join(),
        (await a.checkpoint(key)).root.join(),
      );
      assert.ok(cpA.size >= 500);
      await a.close();
      await b.close();
      const expected = records(1, 520).map((r) => r.seq);
      assert.deepEqual(await lines(join(dir, "a")), expected);
      assert.deepEqual(await lines(join(dir, "b")), expected);
      for (const copy of ["a", "b"]) {
        const report = await verifyVault(join(dir, copy));
        assert.equal(report.ok, true, JSON.stringify(report.problems));
      }
    } finally {
      await a?.close();
      await b?.close();
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
  },
);

test(
  "NatsVault refuses a second door's cache of another vault, and fails appends while the cluster is down",
  {
    skip: noNats,
  },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), "moat-nats-vault-"));
    let a: NatsVault | undefined;
    const { cluster, creds } = await setup(dir);
    try {
      a = await open(cluster, creds, join(dir, "a"));
      await a.append(key, records(1, 2));
      await assert.rejects(
        open(cluster, creds, join(dir, "a2-unrelated")).then(async (v) => {
          await v.close();
        }),
        { code: "ERR_CHECKPOINT" },
      );
      await cluster.kill(0);
      const down = a.append(key, records(3, 4));
      await assert.rejects(down, { code: "ERR_CONNECT" });
      assert.equal(a.source(key).lastSeq, 2);
      await cluster.restart(0);
      // Sent again, as a shipper does from its spool.
      assert.equal(await a.append(key, records(3, 4)), 4);
      await a.close();
      assert.deepEqual(await lines(join(dir, "a")), [1, 2, 3, 4]);
    } finally {
      await a?.close();
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
  },
);

test(
  "NatsVault publishes a sealed door's seals and checkpoints: the stream read back verifies with the door's key",
  {
    skip: noNats,
  },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), "moat-nats-vault-"));
    const { cluster, creds } = await setup(dir);
    try {
      const { verificationKey } = await initVault(join(dir, "a"));
      const a = await openNatsVault({
        url: `nats://${cluster.servers.replaceAll("nats://", "")}`,
        creds,
        cache: join(dir, "a"),
        replicas: 1,
        sealIntervalMs: 0,
      });
      assert.equal(a.sealed, true);
      await a.append(key, records(1, 300));
      await a.seal();
      await a.append(key, records(301, 400));
      await a.close();
      const out = join(dir, "export");
      const file = await materializeStream({
        url: `nats://${cluster.servers.replaceAll("nats://", "")}`,
        creds,
        dir: out,
      });
      assert.deepEqual(file.problems ?? [], []);
      assert.deepEqual(await lines(out), records(1, 400).map((r) => r.seq));
      // The checkpoint the door logged at close came through ckpt.<srcid>.
      const log = await readFile(
        join(out, "sources", sourceDirName(key), "checkpoints"),
        "utf8",
      );
      assert.match(log, /\\n400\\n/);
      const report = await verifyVault(out, { keys: [verificationKey] });
      assert.equal(report.ok, true, JSON.stringify(report.problems));
      // As many seals as the door's own copy holds.
      const local = await verifyVault(join(dir, "a"), {
        keys: [verificationKey],
      });
      assert.equal(report.seals, local.seals);
      assert.ok(report.seals >= 2, `${report.seals} seals`);
      assert.equal(report.unsealed, 0);
      // Without the door's seals every record would be unsealed: another
      // key opens no door.
      const other = await initVault(join(dir, "other"));
      const wrong = await verifyVault(out, { keys: [other.verificationKey] });
      assert.equal(wrong.ok, false);
    } finally {
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
  },
);

test(
  "NatsVault numbers a door's own (syslog) lines on after another door's instead of dropping them",
  {
    skip: noNats,
  },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), "moat-nats-vault-"));
    const { cluster, creds } = await setup(dir);
    try {
      const a = await open(cluster, creds, join(dir, "a"));
      await mkdir(join(dir, "b"));
      await copyFile(
        join(dir, "a", "checkpoint.key"),
        join(dir, "b", "checkpoint.key"),
      );
      const b = await open(cluster, creds, join(dir, "b"));
      const syslog = { peer: "10.0.0.9", name: "syslog" };
      const msg = (who: string, n: number) =>
        Array.from(
          { length: n },
          (_, i) => ({
            seq: i + 1,
            ts: 1,
            line: enc.encode(`${who} ${i + 1}`),
          }),
        );
      // Both doors number from 1: A's land first, B's go after them.
      assert.equal(await a.append(syslog, msg("a", 3), { fresh: true }), 3);
      assert.equal(await b.append(syslog, msg("b", 2), { fresh: true }), 5);
      await a.close();
      await b.close();
      const got = [];
      for await (const r of readRecords(join(dir, "b"))) {
        got.push(
          `${r.seq}:${new TextDecoder().decode(r.line)}`,
        );
      }
      assert.deepEqual(got, ["1:a 1", "2:a 2", "3:a 3", "4:b 1", "5:b 2"]);
    } finally {
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
  },
);

test(
  "NatsVault keeps a batch's lines that wait for a catch-up, though the caller reuses the batch's buffer once append returns",
  {
    skip: noNats,
  },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), "moat-nats-vault-"));
    const { cluster, creds } = await setup(dir);
    try {
      const a = await open(cluster, creds, join(dir, "a"));
      await mkdir(join(dir, "b"));
      await copyFile(
        join(dir, "a", "checkpoint.key"),
        join(dir, "b", "checkpoint.key"),
      );
      const b = await open(cluster, creds, join(dir, "b"));
      await a.append(key, records(1, 10));
      // B has not seen 1-10: records 11-15 look like a gap to it, so it
      // catches up first; meanwhile the caller (a ship frame's reader) has
      // moved on and overwritten its buffer.
      const batch = records(11, 15);
      const stored = b.append(key, recordBatch(batch));
      for (const r of batch) r.line.fill(0x58);
      assert.equal(await stored, 15);
      await a.close();
      await b.close();
      assert.deepEqual(
        await lines(join(dir, "b")),
        records(1, 15).map((r) => r.seq),
      );
    } finally {
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
  },
);

test(
  "NatsVault refuses a stream whose records could be deleted, and stores a line too long to pack alone in a message",
  {
    skip: noNats,
  },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), "moat-nats-vault-"));
    const { cluster, creds } = await setup(dir);
    try {
      const url = `nats://${cluster.servers.replaceAll("nats://", "")}`;
      {
        using admin = await rawConnect(
          cluster.nodes[0]!.clientPort,
          cluster.users.admin,
        );
        for (
          const [name, change] of [["LOOSE", { deny_delete: false }], [
            "PURGE",
            { deny_purge: false },
          ], ["AGED", { max_age: 86_400_000_000_000 }]] as const
        ) {
          const r = await admin.api(`$JS.API.STREAM.CREATE.${name}`, {
            ...vaultStreamConfig(name, `moat.${name.toLowerCase()}.>`, 1),
            ...change,
          });
          assert.equal(r.error, undefined, JSON.stringify(r));
          await assert.rejects(
            openNatsVault({
              url,
              creds: cluster.users.admin.creds,
              stream: name,
              cache: join(dir, name),
              replicas: 1,
            }),
            { code: "ERR_USAGE" },
          );
        }
      }
      const a = await open(cluster, creds, join(dir, "a"));
      // 1 MiB: more than a packed message takes (1 MiB less 8 KiB), less than
      // the servers' max_payload (4 MB): a message of its own.
      const long = new Uint8Array(1024 * 1024).fill(0x6c);
      assert.equal(await a.append(key, records(1, 2)), 2);
      assert.equal(
        await a.append(key, [{ seq: 3, ts: 1, line: long }, ...records(4, 5)]),
        5,
      );
      const published = a.natsStats.published;
      await a.close();
      assert.equal(published, 3);
      const sizes = [];
      for await (const r of readRecords(join(dir, "a"))) {
        sizes.push(
          r.line.length,
        );
      }
      assert.deepEqual(sizes, [6, 6, 1024 * 1024, 6, 6]);
    } finally {
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
  },
);

test(
  "NatsVault refuses a forged continuation published raw (no compare-and-set header, not signed by the vault's key): nothing acknowledged, nothing lost",
  {
    skip: noNats,
  },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), "moat-nats-vault-"));
    const { cluster, creds } = await setup(dir);
    let a: NatsVault | undefined;
    let b: NatsVault | undefined;
    try {
      a = await open(cluster, creds, join(dir, "a"));
      assert.equal(await a.append(key, records(1, 10)), 10);
      // Someone holding moat's NATS credentials, not the checkpoint key,
      // publishes records 11-12 as the next message of the source, without
      // Nats-Expected-Last-Subject-Sequence.
      const forged = encodeRecordMessage(
        key,
        11,
        2,
        [
          encodeRecordSection(
            recordBatch(
              [11, 12].map((seq) => ({
                seq,
                ts: 1,
                line: enc.encode(`forged ${seq}`),
              })),
            ),
            1,
          ),
        ],
        {
          vaultId: Uint8Array.fromHex(a.id),
          key: generateKeyPairSync("ed25519").privateKey,
        },
      );
      {
        using conn = await rawConnect(
          cluster.nodes[0]!.clientPort,
          cluster.users.moat,
        );
        await jsPublish(conn, `moat.moat.rec.${sourceId(key)}`, forged);
      }
      // The shipper's 11-15: the door's publish conflicts, the catch-up
      // meets the forged message and stops; nothing is acknowledged (not
      // 11-12 as duplicates of the forged ones).
      await assert.rejects(a.append(key, records(11, 15)), {
        code: "ERR_CORRUPT",
        message: /signature is not the vault's checkpoint key's/,
      });
      assert.equal(a.source(key).lastSeq, 10);
      await assert.rejects(a.append(key, records(11, 15)), {
        code: "ERR_CORRUPT",
      });
      // A second door taking the source over (the ship handler's catch-up
      // before ShipReady) refuses too: it never tells a shipper 12.
      await mkdir(join(dir, "b"));
      await copyFile(
        join(dir, "a", "checkpoint.key"),
        join(dir, "b", "checkpoint.key"),
      );
      b = await open(cluster, creds, join(dir, "b"));
      await assert.rejects(b.catchUp(key), {
        code: "ERR_CORRUPT",
        message: /signature/,
      });
      assert.equal(b.source(key).lastSeq, 10);
      await a.close();
      await b.close();
      // The copies hold the vault's records only, and verify.
      assert.deepEqual(
        await lines(join(dir, "a")),
        records(1, 10).map((r) => r.seq),
      );
      assert.deepEqual(
        await lines(join(dir, "b")),
        records(1, 10).map((r) => r.seq),
      );
      assert.equal((await verifyVault(join(dir, "a"))).ok, true);
      // A reader reports the forged message as stream damage.
      const out = join(dir, "out");
      const file = await materializeStream({
        url: `nats://${cluster.servers.replaceAll("nats://", "")}`,
        creds,
        dir: out,
      });
      assert.equal(file.read?.skipped?.length, 1, JSON.stringify(file.read));
      assert.match(file.read!.skipped![0]!.message, /signature/);
      assert.deepEqual(await lines(out), records(1, 10).map((r) => r.seq));
    } finally {
      await a?.close();
      await b?.close();
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
  },
);

test(
  "NatsVault refuses, never acknowledges, records the stream holds with other content at the numbers a shipper sends (a fork)",
  {
    skip: noNats,
  },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), "moat-nats-vault-"));
    const { cluster, creds } = await setup(dir);
    let a: NatsVault | undefined;
    let b: NatsVault | undefined;
    try {
      a = await open(cluster, creds, join(dir, "a"));
      assert.equal(await a.append(key, records(1, 10)), 10);
      await mkdir(join(dir, "b"));
      await copyFile(
        join(dir, "a", "checkpoint.key"),
        join(dir, "b", "checkpoint.key"),
      );
      b = await open(cluster, creds, join(dir, "b"));
      await b.catchUp(key);
      // Another writer of the same source (signed: a door) writes other
      // lines as 11-12; then A's shipper sends its own 11-15.
      assert.equal(
        await b.append(
          key,
          [11, 12].map((seq) => ({
            seq,
            ts: 1_000 + seq,
            line: enc.encode(`other ${seq}`),
          })),
        ),
        12,
      );
      await assert.rejects(a.append(key, records(11, 15)), {
        code: "ERR_CORRUPT",
        message: /forked: the stream holds a record 11 other than/,
      });
      // The resend is refused too (not taken for duplicates of 11-12).
      await assert.rejects(a.append(key, records(11, 15)), {
        code: "ERR_CORRUPT",
        message: /forked/,
      });
      await assert.rejects(a.catchUp(key), { message: /forked/ });
    } finally {
      await a?.close();
      await b?.close();
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
  },
);

test(
  "NatsVault refuses, by name, a stream a pre-release build wrote (format 1: unsigned record messages)",
  {
    skip: noNats,
  },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), "moat-nats-vault-"));
    const { cluster, creds } = await setup(dir);
    try {
      {
        using conn = await rawConnect(
          cluster.nodes[0]!.clientPort,
          cluster.users.moat,
        );
        await jsPublish(
          conn,
          "moat.moat.meta",
          JSON.stringify({
            format: 1,
            vaultId: "ab".repeat(16),
            checkpointKey: "moat/x+00000000+AA",
          }),
        );
      }
      await assert.rejects(open(cluster, creds, join(dir, "a")), {
        code: "ERR_CORRUPT",
        message:
          /format 1 \(a pre-release build's, whose record messages are unsigned\) is not read by this build: use a new stream/,
      });
    } finally {
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
  },
);
