// deno-lint-ignore-file no-console
/**
 * Proof generation for a large source (issue 15: under 1 ms for 10 million
 * records): `bun bench/proof.ts [--leaves N] [--records N] [--dir DIR]`;
 * not part of the tests.
 *
 * 1. A tree file of N leaves (default 10,000,000; 640 MB) is written through
 *    the vault's `TreeFile` and `MerkleLog`, then inclusion proofs of random
 *    leaves and consistency proofs between random sizes are timed, read
 *    from the file as the vault reads them (positioned reads, one
 *    descriptor per proof).
 * 2. A vault of `--records` records (default 1,000,000 of 120 bytes, 64 MiB
 *    segments) is filled through `Vault.append`, and `Vault.inclusionProof`
 *    (the leaf read from its segment, the path, the self-check) is timed
 *    for random records: the first read of a segment walks it once, later
 *    reads walk at most 256 records.
 *
 * Prints medians and 99th percentiles in microseconds.
 *
 * @module
 */

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { MerkleLog } from "../lib/merkle.ts";
import { sha256 } from "../lib/sha256.ts";
import { TreeFile } from "../lib/vault/_tree_file.ts";
import { openVault } from "../lib/vault/store.ts";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    leaves: { type: "string", default: "10000000" },
    records: { type: "string", default: "1000000" },
    dir: { type: "string" },
  },
});
const leaves = Number(values.leaves);
const records = Number(values.records);
const base = values.dir ??
  (fs.existsSync("/var/tmp") ? "/var/tmp" : os.tmpdir());
const work = fs.mkdtempSync(path.join(base, "moat-bench-proof-"));

function stats(samples: number[]): string {
  samples.sort((a, b) => a - b);
  const at = (q: number) => samples[Math.floor(q * (samples.length - 1))]!;
  return `median ${(at(0.5) * 1000).toFixed(0)} µs, p99 ${
    (at(0.99) * 1000).toFixed(0)
  } µs, max ${(at(1) * 1000).toFixed(0)} µs`;
}

let seed = 12345;
function random(max: number): number {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return Math.floor((seed / 2147483648) * max);
}

try {
  const file = new TreeFile(path.join(work, "tree"), 0);
  const log = new MerkleLog(file);
  const leaf = new Uint8Array(8);
  let t = performance.now();
  for (let i = 0; i < leaves; i++) {
    new DataView(leaf.buffer).setFloat64(0, i);
    log.append(sha256(leaf));
    if (file.full) file.flush();
  }
  file.flush();
  console.log(
    `tree of ${leaves} leaves written in ${
      ((performance.now() - t) / 1000).toFixed(1)
    } s (${(fs.statSync(file.path).size / 2 ** 20).toFixed(0)} MiB)`,
  );
  const reopened = new TreeFile(file.path, file.count);
  const tree = new MerkleLog(reopened, leaves);
  const inclusion: number[] = [];
  const consistency: number[] = [];
  for (let i = 0; i < 2000; i++) {
    const size = leaves - random(1000);
    const index = random(size);
    t = performance.now();
    reopened.reading(() => tree.inclusionProof(index, size));
    inclusion.push(performance.now() - t);
    const from = 1 + random(size - 1);
    t = performance.now();
    reopened.reading(() => tree.consistencyProof(from, size));
    consistency.push(performance.now() - t);
  }
  console.log(`inclusion proof (tree file only): ${stats(inclusion)}`);
  console.log(`consistency proof: ${stats(consistency)}`);
  fs.rmSync(file.path);

  const vault = await openVault(path.join(work, "vault"), {
    sealIntervalMs: 0,
  });
  const key = { peer: "10.0.0.1", name: "bench" };
  const line = new TextEncoder().encode("x".repeat(119));
  t = performance.now();
  for (let seq = 1; seq <= records;) {
    const batch = [];
    for (let i = 0; i < 4096 && seq <= records; i++) {
      batch.push({ seq: seq++, ts: 1, line });
    }
    await vault.append(key, batch);
  }
  console.log(
    `vault of ${records} records filled in ${
      ((performance.now() - t) / 1000).toFixed(1)
    } s`,
  );
  const { size } = await vault.checkpoint(key);
  const first: number[] = [];
  const later: number[] = [];
  for (let i = 0; i < 2000; i++) {
    const seq = 1 + random(size);
    t = performance.now();
    vault.inclusionProof(key, seq, size);
    (i < 20 ? first : later).push(performance.now() - t);
  }
  console.log(
    `Vault.inclusionProof, leaf read from its segment: first 20 ${
      stats(first)
    }; then ${stats(later)}`,
  );
  await vault.close();
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
