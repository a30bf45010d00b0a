// deno-lint-ignore-file no-console
/**
 * Does one-publish-in-flight-per-source compare-and-set, with coalescing,
 * hold on a three-replica stream (nats-server 2.9)? `bun bench/nats_cas.ts
 * [--lines N] [--sources N]`: a local three-node cluster (tests/_nats.ts),
 * one `NatsVault` (no moat server, no shipper: the door's write path
 * alone), each source appending batches of 500 lines with 8 in flight (as
 * the ship handler's pipeline does); then every source is read back from
 * the stream into a fresh copy and counted. Prints acknowledged vs stored,
 * messages, conflicts, failures, lines/s and CPU per line (door process and
 * the three nats-server processes), and how fast a door catches up (the
 * read-back, message by message, into its local copy).
 *
 * @module
 */

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { cpuSeconds } from "./_util.ts";
import { openNatsVault } from "../lib/vault/nats/vault.ts";
import { startNatsCluster } from "../tests/_nats.ts";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    lines: { type: "string", default: "400000" },
    sources: { type: "string", default: "4" },
    dir: { type: "string", default: "/var/tmp" },
  },
});
const total = Number(values.lines);
const sources = Number(values.sources);
const BATCH = 500;
const DEPTH = 8;
const work = fs.mkdtempSync(path.join(values.dir!, "moat-nats-cas-"));
const cluster = await startNatsCluster({ dir: work, nodes: 3 });
const url = `nats://${cluster.servers.replaceAll("nats://", "")}`;
const clusterCpu = () =>
  cluster.nodes.reduce((n, x) => n + cpuSeconds(x.child!.pid!), 0);
try {
  const vault = await openNatsVault({
    url,
    creds: cluster.users.admin.creds,
    cache: path.join(work, "door"),
    replicas: 3,
    sealIntervalMs: 0,
    maxSourcesPerPeer: 1000,
  });
  const line = new Uint8Array(119).fill(0x61);
  const per = Math.floor(total / sources);
  const c0 = cpuSeconds(process.pid);
  const k0 = clusterCpu();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: sources }, async (_, s) => {
    const key = { peer: "127.0.0.1", name: `cas-${s}` };
    const inFlight: Promise<number>[] = [];
    for (let first = 1; first <= per; first += BATCH) {
      const last = Math.min(per, first + BATCH - 1);
      const records = [];
      for (let seq = first; seq <= last; seq++) {
        records.push({ seq, ts: 1, line });
      }
      inFlight.push(vault.append(key, records));
      if (inFlight.length >= DEPTH) await inFlight.shift();
    }
    await Promise.all(inFlight);
  }));
  const seconds = (performance.now() - t0) / 1000;
  const doorCpu = cpuSeconds(process.pid) - c0;
  const natsCpu = clusterCpu() - k0;
  const stats = { ...vault.natsStats };
  await vault.close();
  // Read back from the stream into a fresh copy.
  const copy = path.join(work, "read-back");
  fs.mkdirSync(copy);
  fs.copyFileSync(
    path.join(work, "door", "checkpoint.key"),
    path.join(copy, "checkpoint.key"),
  );
  const reader = await openNatsVault({
    url,
    creds: cluster.users.admin.creds,
    cache: copy,
    sealIntervalMs: 0,
    maxSourcesPerPeer: 1000,
  });
  let stored = 0;
  const r0 = performance.now();
  for (let s = 0; s < sources; s++) {
    const key = { peer: "127.0.0.1", name: `cas-${s}` };
    await reader.catchUp(key);
    stored += reader.source(key).lastSeq;
  }
  const readSeconds = (performance.now() - r0) / 1000;
  await reader.close();
  console.log(JSON.stringify({
    date: new Date().toISOString(),
    runtime: navigator.userAgent,
    cpus: os.cpus().length,
    load: os.loadavg()[0],
    sources,
    linesAcknowledged: sources * per,
    linesStoredReadBack: stored,
    messages: stats.published,
    linesPerMessage: Math.round((sources * per) / stats.published),
    conflicts: stats.conflicts,
    failures: stats.failures,
    seconds: Math.round(seconds * 100) / 100,
    linesPerSec: Math.round((sources * per) / seconds),
    catchUpLinesPerSec: Math.round(stored / readSeconds),
    doorCpuUsPerLine: Math.round((doorCpu / (sources * per)) * 1e7) / 10,
    natsCpuUsPerLine: Math.round((natsCpu / (sources * per)) * 1e7) / 10,
  }));
} finally {
  await cluster.stop();
  fs.rmSync(work, { recursive: true, force: true });
}
