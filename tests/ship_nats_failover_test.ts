/**
 * Two front doors on one JetStream vault (a real nats-server, in-process
 * moat servers): deduplication across a front-door failover mid-batch, and
 * a shipper that reconnects to the other door resumes from the right
 * sequence — the new door catches the source up from the stream before it
 * answers, so its lastSeq counts what the other door stored.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { ship, type ShipperEvent } from "../lib/ship/shipper.ts";
import { openNatsVault } from "../lib/vault/nats/vault.ts";
import { CHECKPOINT_KEY_FILE } from "../lib/vault/_checkpoints.ts";
import { tempDir } from "./_e2e.ts";
import {
  client,
  door,
  Doors,
  gated,
  lines,
  stored,
  watched,
} from "./_doors.ts";
import {
  createVaultStream,
  jsPublish,
  noNats,
  rawConnect,
  startNatsCluster,
} from "./_nats.ts";
import {
  encodeRecordMessage,
  encodeRecordSection,
  sourceId,
} from "../lib/vault/nats/codec.ts";
import { recordBatch } from "../lib/vault/_format.ts";
import { generateKeyPairSync } from "node:crypto";
import { within } from "./_server.ts";

test(
  "ship across two front doors of one JetStream vault: a door failing mid-batch stores nothing twice, and each door resumes the shipper from the stream's sequence",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-ship-nats-");
    await using cluster = await startNatsCluster({ dir: tmp.dir, nodes: 1 });
    await createVaultStream(cluster, 1);
    const nats = {
      url: `nats://${cluster.servers}`,
      creds: cluster.users.moat.creds,
      stream: cluster.stream,
      sealIntervalMs: 0,
    };
    const cache = (name: string) => path.join(tmp.dir, name);
    const vaultA = await openNatsVault({ ...nats, cache: cache("a") });
    // Every door signs with the vault's one checkpoint key.
    const copyKey = (to: string) => {
      fs.mkdirSync(cache(to));
      fs.copyFileSync(
        path.join(cache("a"), CHECKPOINT_KEY_FILE),
        path.join(cache(to), CHECKPOINT_KEY_FILE),
      );
    };
    copyKey("b");
    const vaultB = await openNatsVault({ ...nats, cache: cache("b") });
    assert.equal(vaultB.checkpointVerifier, vaultA.checkpointVerifier);
    try {
      await using doors = new Doors();
      // Door A: the batch holding line 3000 reaches the stream (and A's
      // copy), then A fails it and refuses what follows, unstored: the
      // shipper never gets those acks.
      let failing = true;
      let failedAt = 0;
      const a = await doors.open(watched(vaultA, async (records, append) => {
        if (!failing) return await append();
        if (failedAt !== 0) throw new Error("the door is going down");
        if (records.first <= 3000 && records.last >= 3000) {
          failedAt = records.last;
          await append();
          throw new Error("the door went down after publishing");
        }
        return await append();
      }));
      const firstOn = { a: [] as number[], b: [] as number[] };
      const b = await doors.open(watched(vaultB, (records, append) => {
        firstOn.b.push(records.first);
        return append();
      }));
      const statePath = path.join(tmp.dir, "ship.json");
      const events: ShipperEvent[] = [];
      const run = (text: string, order: number[]) =>
        within(
          ship({
            client: client(doors.net, order[0]!),
            doors: order.map(door),
            inputs: ["-"],
            stdin: gated([{ text }]),
            statePath,
            source: "app",
            signal: new AbortController().signal,
            onEvent: (e) => events.push(e),
          }),
          "the shipper to finish",
          60_000,
        );

      // 1. Through A, which fails mid-batch: the rest goes through B.
      assert.equal(await run(lines(1, 6000), [a.port, b.port]), 6000);
      assert.ok(failedAt >= 3000, "door A failed a batch");
      const connected = events.filter((e) => e.type === "connected");
      assert.deepEqual(
        connected.map((e) => e.type === "connected" && [e.server, e.lastSeq]),
        [[`127.0.0.1:${a.port}`, 0], [`127.0.0.1:${b.port}`, failedAt]],
      );
      assert.equal(firstOn.b[0], failedAt + 1, "B asked for nothing twice");
      assert.equal(await stored(cache("b")), lines(1, 6000));

      // 2. B goes away; the shipper reconnects to A, whose copy stopped at
      // failedAt: A catches up from the stream and resumes it at 6001.
      failing = false;
      events.length = 0;
      const firstOnA = firstOn.a;
      const a2 = watched(vaultA, (records, append) => {
        firstOnA.push(records.first);
        return append();
      });
      const again = await doors.open(a2);
      await b.server.close();
      assert.equal(
        await run(lines(6001, 8000), [b.port, again.port]),
        8000,
      );
      const onA = events.find((e) => e.type === "connected");
      assert.ok(onA?.type === "connected", JSON.stringify(events));
      assert.deepEqual([onA.server, onA.lastSeq], [
        `127.0.0.1:${again.port}`,
        6000,
      ]);
      assert.equal(firstOnA[0], 6001);
      assert.equal(await stored(cache("a")), lines(1, 8000));

      // 3. The stream itself: a third door's fresh copy, caught up from it,
      // holds every line once, in order.
      copyKey("c");
      const vaultC = await openNatsVault({ ...nats, cache: cache("c") });
      try {
        await vaultC.catchUp!({ peer: "127.0.0.1", name: "app" });
        assert.equal(await stored(cache("c")), lines(1, 8000));
      } finally {
        await vaultC.close();
      }
    } finally {
      await vaultA.close();
      await vaultB.close();
    }
  },
);

test(
  "ship to a JetStream vault after a forged continuation (raw publish, not signed by the vault's key): the door refuses, the shipper keeps its lines, nothing is acknowledged",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-ship-nats-");
    await using cluster = await startNatsCluster({ dir: tmp.dir, nodes: 1 });
    await createVaultStream(cluster, 1);
    const cache = path.join(tmp.dir, "a");
    const vault = await openNatsVault({
      url: `nats://${cluster.servers}`,
      creds: cluster.users.moat.creds,
      stream: cluster.stream,
      sealIntervalMs: 0,
      cache,
    });
    try {
      await using doors = new Doors();
      const a = await doors.open(vault);
      const statePath = path.join(tmp.dir, "ship.json");
      const events: ShipperEvent[] = [];
      const run = (text: string) => {
        const stop = new AbortController();
        return within(
          ship({
            client: client(doors.net, a.port),
            doors: [door(a.port)],
            inputs: ["-"],
            stdin: gated([{ text }]),
            statePath,
            source: "app",
            signal: stop.signal,
            onEvent: (e) => {
              events.push(e);
              if (e.type === "disconnected") stop.abort();
            },
          }),
          "the shipper to finish",
          60_000,
        );
      };
      assert.equal(await run(lines(1, 10)), 10);
      // Records 11-12, published raw with moat's credentials, signed by
      // another key than the vault's.
      const key = { peer: "127.0.0.1", name: "app" };
      const forged = encodeRecordMessage(key, 11, 2, [
        encodeRecordSection(
          recordBatch([11, 12].map((seq) => ({
            seq,
            ts: 1,
            line: new TextEncoder().encode(`forged ${seq}`),
          }))),
          1,
        ),
      ], {
        vaultId: Uint8Array.fromHex(vault.id),
        key: generateKeyPairSync("ed25519").privateKey,
      });
      {
        using conn = await rawConnect(
          cluster.nodes[0]!.clientPort,
          cluster.users.moat,
        );
        await jsPublish(conn, `moat.moat.rec.${sourceId(key)}`, forged);
      }
      // The shipper's 11-15: the door's catch-up (before ShipReady) meets
      // the forged message and refuses; the shipper is never told 12.
      events.length = 0;
      assert.equal(await run(lines(11, 15)), 10);
      assert.ok(
        !events.some((e) => e.type === "connected" && e.lastSeq > 10),
        JSON.stringify(events),
      );
      assert.ok(
        events.some((e) => e.type === "disconnected"),
        JSON.stringify(events),
      );
      assert.equal(await stored(cache), lines(1, 10));
    } finally {
      await vault.close();
    }
  },
);
