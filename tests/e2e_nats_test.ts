/**
 * The JetStream vault end to end: `moat serve --vault nats://…` front doors
 * as processes, a real three-node cluster (tests/_nats.ts), `moat ship
 * --server a,b` failing over, nodes and doors SIGKILLed.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { setTimeout as sleep } from "node:timers/promises";
import {
  LineWatcher,
  runMoat,
  spawnMoat,
  startServer,
  tempDir,
  vaultCount,
} from "./_e2e.ts";
import { createVaultStream, noNats, startNatsCluster } from "./_nats.ts";
import type { NatsCluster } from "./_nats.ts";
import { openNatsVault } from "../lib/vault/nats/vault.ts";
import { readRecords } from "../lib/vault/read.ts";
import { verifyVault } from "../lib/vault/verify.ts";

function lines(from: number, to: number): string {
  let out = "";
  for (let i = from; i <= to; i++) out += `line ${i}\n`;
  return out;
}

async function setup(dir: string) {
  const cluster = await startNatsCluster({ dir, nodes: 3 });
  await createVaultStream(cluster, 3);
  const creds = cluster.users.moat.creds;
  const url = `nats://${cluster.servers.replaceAll("nats://", "")}`;
  return { cluster, creds, url };
}

function doorArgs(url: string, creds: string, cache: string): string[] {
  return ["--vault", url, "--vault-cache", cache, "--nats-creds", creds];
}

/** A door's cache dir for a door after the first: the vault's checkpoint key. */
function secondCache(first: string, dir: string): string {
  fs.mkdirSync(dir);
  fs.copyFileSync(
    path.join(first, "checkpoint.key"),
    path.join(dir, "checkpoint.key"),
  );
  return dir;
}

function startShipper(args: string[], cwd: string) {
  const child = spawnMoat(["ship", ...args], { cwd });
  const err = new LineWatcher(child.stderr!);
  const exited = new Promise<number | null>((r) =>
    child.on("close", (c) => r(c))
  );
  return { child, err, exited };
}

/** Every record of source `app` in a fresh copy of the stream, read through a new door's catch-up. */
async function materialize(
  cluster: NatsCluster,
  url: string,
  creds: string,
  firstCache: string,
  dir: string,
): Promise<{ seqs: number[]; bad: number; ok: boolean }> {
  const cache = secondCache(firstCache, dir);
  const vault = await openNatsVault({
    url,
    creds,
    cache,
    replicas: cluster.nodes.length,
    sealIntervalMs: 0,
  });
  await vault.catchUp({ peer: "127.0.0.1", name: "app" });
  await vault.close();
  const seqs: number[] = [];
  let bad = 0;
  for await (const r of readRecords(cache)) {
    seqs.push(r.seq);
    if (new TextDecoder().decode(r.line) !== `line ${r.seq}`) bad++;
  }
  const report = await verifyVault(cache);
  return { seqs, bad, ok: report.ok };
}

async function waitCount(dir: string, want: number, what: () => string) {
  // Polls the door's local copy (a directory vault) until it holds `want`.
  for (let i = 0; i < 1500; i++) {
    const n = await vaultCount(dir);
    if (n >= want) return n;
    await sleep(200);
  }
  throw new Error(`${dir} never reached ${want} records: ${what()}`);
}

test(
  "moat serve --vault nats://: 100,000 lines through two front doors, a NATS node and a door SIGKILLed, every line once, in order; vault verify passes",
  {
    skip: noNats,
  },
  async () => {
    using tmp = tempDir("moat-e2e-nats-");
    const dir = tmp.dir;
    const { cluster, creds, url } = await setup(dir);
    const cacheA = path.join(dir, "a");
    const cacheB = path.join(dir, "b");
    try {
      const a = await startServer(doorArgs(url, creds, cacheA));
      const b = await startServer(
        doorArgs(url, creds, secondCache(cacheA, cacheB)),
      );
      const log = path.join(dir, "app.log");
      fs.writeFileSync(log, "");
      const shipper = startShipper([
        log,
        "--server",
        `127.0.0.1:${a.port},127.0.0.1:${b.port}`,
        "--state",
        path.join(dir, "ship.json"),
        "--source",
        "app",
      ], dir);
      const total = 100_000;
      const burst = total / 20;
      try {
        for (let i = 0; i < 20; i++) {
          fs.appendFileSync(log, lines(i * burst + 1, (i + 1) * burst));
          await sleep(150);
          if (i === 4) await cluster.kill(1);
          if (i === 9) await cluster.restart(1);
          if (i === 12) {
            // Door A dies with whatever it had in flight.
            process.kill(a.child.pid!, "SIGKILL");
          }
        }
        assert.equal(
          await waitCount(cacheB, total, () => shipper.err.lines.join("\n")),
          total,
        );
        // The shipper did fail over: door B took it after door A died, and
        // resumed it past what A had stored.
        const started = b.events().filter((e) => e.event === "ship_started");
        assert.ok(started.length > 0 && Number(started[0]!.lastSeq) > 0);
      } finally {
        process.kill(shipper.child.pid!, "SIGTERM");
        await shipper.exited;
        await a.stop();
        await b.stop();
      }
      const cat = await runMoat(["vault", "cat", cacheB]);
      assert.equal(cat.code, 0, cat.stderr);
      assert.ok(
        cat.stdout === lines(1, total),
        "door B's copy holds every line once, in order",
      );
      const verify = await runMoat(["vault", "verify", cacheB]);
      assert.equal(verify.code, 0, verify.stdout + verify.stderr);
      // The stream itself, read into a third door's fresh copy.
      const fresh = await materialize(
        cluster,
        url,
        creds,
        cacheA,
        path.join(dir, "c"),
      );
      assert.equal(fresh.seqs.length, total);
      assert.ok(fresh.seqs.every((s, i) => s === i + 1));
      assert.equal(fresh.bad, 0);
      assert.equal(fresh.ok, true);
    } finally {
      await cluster.stop();
    }
  },
);

test(
  "moat serve --vault nats://: with the whole cluster down the door acks nothing and the shipper spools; back up, every line lands once",
  {
    skip: noNats,
  },
  async () => {
    using tmp = tempDir("moat-e2e-nats-");
    const dir = tmp.dir;
    const { cluster, creds, url } = await setup(dir);
    const cache = path.join(dir, "a");
    try {
      await using door = await startServer(doorArgs(url, creds, cache));
      const log = path.join(dir, "app.log");
      fs.writeFileSync(log, lines(1, 1000));
      const shipper = startShipper([
        log,
        "--server",
        `127.0.0.1:${door.port}`,
        "--state",
        path.join(dir, "ship.json"),
        "--source",
        "app",
      ], dir);
      try {
        await waitCount(cache, 1000, () => shipper.err.lines.join("\n"));
        for (let i = 0; i < 3; i++) await cluster.kill(i);
        fs.appendFileSync(log, lines(1001, 5000));
        // The door tries, fails, and says so: no ack for these lines.
        await door.waitEvent(
          (e) => e.event === "error" && e.during === "ship",
          "a failed append",
          60_000,
        );
        assert.equal(await vaultCount(cache), 1000);
        // Together: a node alone has no quorum, so no healthy JetStream.
        await Promise.all([0, 1, 2].map((i) => cluster.restart(i)));
        fs.appendFileSync(log, lines(5001, 6000));
        assert.equal(
          await waitCount(cache, 6000, () => shipper.err.lines.join("\n")),
          6000,
        );
      } finally {
        process.kill(shipper.child.pid!, "SIGTERM");
        await shipper.exited;
      }
      await door.stop();
      const cat = await runMoat(["vault", "cat", cache]);
      assert.ok(cat.stdout === lines(1, 6000), "every line once, in order");
      const fresh = await materialize(
        cluster,
        url,
        creds,
        cache,
        path.join(dir, "c"),
      );
      assert.equal(fresh.seqs.length, 6000);
      assert.equal(fresh.ok, true);
    } finally {
      await cluster.stop();
    }
  },
);

test("moat serve refuses nats:// options that do not go together, with one line and exit 2", async () => {
  const cases: [string[], RegExp][] = [
    [["--vault", "nats://127.0.0.1:4222"], /needs --vault-cache DIR/],
    [["--vault", "/tmp/v", "--stream", "X"], /--stream needs --vault nats:/],
    [
      ["--vault", "/tmp/v", "--vault-cache", "/tmp/c"],
      /--vault-cache needs --vault nats:/,
    ],
    [
      ["--vault", "nats://u:p@h:4222", "--vault-cache", "/tmp/c"],
      /not host:port/,
    ],
    [
      [
        "--vault",
        "nats://h:4222",
        "--vault-cache",
        "/tmp/c",
        "--retain",
        "30d",
      ],
      /--retain cannot prune/,
    ],
    [[
      "--vault",
      "nats://h:4222",
      "--vault-cache",
      "/tmp/c",
      "--nats-tls-cert",
      "c.pem",
    ], /go together/],
    [
      [
        "--vault",
        "nats://h:4222",
        "--vault-cache",
        "/tmp/c",
        "--stream",
        "a.b",
      ],
      /Invalid stream name/,
    ],
  ];
  for (const [args, want] of cases) {
    const r = await runMoat(["serve", "--port", "0", ...args]);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, want);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
});
