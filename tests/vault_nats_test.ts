import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createVaultStream, noNats, startNatsCluster } from "./_nats.ts";
import type { NatsCluster } from "./_nats.ts";
import { openNatsVault } from "../lib/vault/nats/vault.ts";
import type { NatsVault } from "../lib/vault/nats/vault.ts";
import { readRecords } from "../lib/vault/read.ts";
import { verifyVault } from "../lib/vault/verify.ts";

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
  const creds = join(dir, "moat.creds");
  await writeFile(
    creds,
    `${cluster.users.moat.user}:${cluster.users.moat.password}\n`,
    { mode: 0o600 },
  );
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
