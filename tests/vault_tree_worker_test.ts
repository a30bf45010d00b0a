// The tree worker (lib/vault/_tree_chunk.ts): a chunk's leaves and nodes
// hashed on a second thread and written into the tree file where the
// server's thread would have put them; the vault with it gives the same
// files as without, checkpoints wait for its answers, a commit that fails
// and is sent again, and a worker that dies, leave the tree whole. Checked
// against leaves hashed here one by one and the RFC 9162 reference.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { MerkleLog } from "../lib/merkle.ts";
import { nativeSha256Batch, nativeSha256Parts } from "../lib/net/sha256.ts";
import { _internals } from "../lib/segment/log.ts";
import { setNativeSha256, setNativeSha256Batch } from "../lib/sha256.ts";
import {
  type ChunkDone,
  chunkWorker,
  setTreeWorker,
  TreeHasher,
} from "../lib/vault/_tree_chunk.ts";
import { treeWorkerUrl } from "../cli/serve.ts";
import { encodeVaultRecords } from "../lib/vault/_format.ts";
import {
  appendRecordLeaf,
  leafHashOfRecord,
  TreeFile,
} from "../lib/vault/_tree_file.ts";
import { openVault } from "../lib/vault/store.ts";
import type { SourceKey, Vault } from "../lib/vault/store.ts";
import { verifyVault } from "../lib/vault/verify.ts";
import { tempDir } from "./_e2e.ts";
import { refMth } from "./_rfc9162.ts";
import { seededRandom } from "./_test_utils.ts";

const KEY: SourceKey = { peer: "10.0.0.9", name: "worker" };
/** A second source: the worker takes chunks once more than one appends. */
const OTHER: SourceKey = { peer: "10.0.0.9", name: "other" };
const te = new TextEncoder();
/**
 * The worker runs where a native SHA-256 loads: with its batch loops on
 * Bun, one call a hash on Deno.
 */
const batchHere = nativeSha256Batch() !== undefined ||
  nativeSha256Parts() !== undefined;

/** Installs what `moat serve` installs: libcrypto, its batch, the worker. */
function install(): () => void {
  setNativeSha256(nativeSha256Parts);
  setNativeSha256Batch(nativeSha256Batch);
  setTreeWorker(new URL("../cli/_tree_worker.ts", import.meta.url));
  return () => {
    setNativeSha256(undefined);
    setNativeSha256Batch(undefined);
    setTreeWorker(undefined);
  };
}

/** Records `first`… as the vault encodes them, with a chain. */
function chunkOf(first: number, count: number, seed: number): Uint8Array {
  const random = seededRandom(seed);
  const records = Array.from({ length: count }, (_, i) => ({
    seq: first + i,
    ts: 1000 + first + i,
    line: te.encode(`line ${first + i} ${"z".repeat(random(150))}`),
    partial: random(9) === 0,
  }));
  return encodeVaultRecords(records, 77, {
    chain: { link: new Uint8Array(32).fill(seed) },
  });
}

function recordsOf(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = 0; at < bytes.length;) {
    const length = view.getUint32(at + 4, true);
    out.push(bytes.subarray(at, at + length));
    at += length;
  }
  return out;
}

test("without a native SHA-256, or without an entry named, no tree worker is started", () => {
  const restore = install();
  try {
    const hasher = TreeHasher.acquire();
    assert.equal(hasher !== undefined, batchHere);
    hasher?.release();
    setTreeWorker(undefined);
    assert.equal(TreeHasher.acquire(), undefined);
  } finally {
    restore();
  }
});

test("treeWorkerUrl finds the worker's entry beside cli/serve.ts, and inside the release binary at its path from the root", () => {
  assert.equal(
    treeWorkerUrl("file:///opt/moat/cli/serve.ts").href,
    "file:///opt/moat/cli/_tree_worker.ts",
  );
  assert.equal(
    treeWorkerUrl("file:///$bunfs/root/moat-linux-x64").href,
    "file:///$bunfs/root/cli/_tree_worker.ts",
  );
  assert.equal(
    treeWorkerUrl("file:///B:/~BUN/root/moat.exe").href,
    "file:///B:/~BUN/root/cli/_tree_worker.ts",
  );
  assert.ok(fs.existsSync(new URL(treeWorkerUrl())));
});

test("chunkWorker hashes chunks onto a tree's copy and answers the hashes the tree file stores, in its order; a chunk out of step is refused and the copy forgotten", () => {
  if (!batchHere) return;
  using tmp = tempDir("moat-tree-worker-");
  const restore = install();
  try {
    const source = new Uint8Array(32).map((_, i) => i * 7);
    const answers: ChunkDone[] = [];
    const handle = chunkWorker((done) => answers.push(done));
    const runs: Uint8Array[] = [];
    const refFile = new TreeFile(path.join(tmp.dir, "ref.tree"), 0);
    const ref = new MerkleLog(refFile);
    const leaves: Uint8Array[] = [];
    // The first chunk lands on a tree that has 5 leaves already (written
    // by "the server's thread": here, the reference file copied).
    const head = chunkOf(1, 5, 1);
    for (const r of recordsOf(head)) {
      appendRecordLeaf(ref, r, 0, r.length, source);
      leaves.push(leafHashOfRecord(r, source));
    }
    refFile.flush();
    const headBytes = fs.statSync(refFile.path).size;
    const sizes = [1, 7, 300, 2, 64, 1000, 3];
    let first = 6;
    for (const [k, count] of sizes.entries()) {
      const bytes = chunkOf(first, count, 10 + k);
      handle({
        id: k,
        stream: 4,
        size: first - 1,
        bytes,
        ...(k === 0 && {
          reset: { source, front: ref.frontier() },
        }),
      });
      const records = recordsOf(bytes);
      for (const r of records) {
        appendRecordLeaf(ref, r, 0, r.length, source);
        leaves.push(leafHashOfRecord(r, source));
      }
      const done = answers.pop()!;
      assert.ok(!("error" in done), JSON.stringify(done));
      assert.equal(done.id, k);
      assert.equal(done.n, count);
      runs.push(done.run.subarray(0, 32 * done.count));
      assert.deepEqual(done.front, ref.frontier(), `chunk ${k}`);
      assert.deepEqual(
        [...done.starts],
        records.map((r) => r.byteOffset - bytes.byteOffset),
      );
      first += count;
    }
    refFile.flush();
    assert.deepEqual(
      Buffer.concat(runs),
      fs.readFileSync(refFile.path).subarray(headBytes),
      "the worker's hashes differ from the tree file written here",
    );
    assert.deepEqual(ref.root(), refMth(leaves.map((l) => l)));
    // A chunk at another size than the copy's is refused, and the copy is
    // forgotten: the next chunk must start it anew.
    handle({
      id: 50,
      stream: 4,
      size: first + 3,
      bytes: chunkOf(first + 4, 2, 3),
    });
    const refused = answers.pop()!;
    assert.ok("error" in refused && /at \d+, the chunk at/.test(refused.error));
    handle({ id: 51, stream: 4, size: first - 1, bytes: chunkOf(first, 2, 3) });
    const forgotten = answers.pop()!;
    assert.ok("error" in forgotten && /is at none/.test(forgotten.error));
    // Damaged bytes are refused, not hashed.
    handle({
      id: 52,
      stream: 5,
      size: 0,
      bytes: new Uint8Array(40).fill(255),
      reset: { source, front: new Uint8Array(0) },
    });
    const bad = answers.pop()!;
    assert.ok(
      "error" in bad && /bad record/.test(bad.error),
      JSON.stringify(bad),
    );
  } finally {
    restore();
  }
});

/** Appends `n` records in chunks of random sizes, some awaited together. */
async function fill(vault: Vault, from: number, n: number, seed: number) {
  const random = seededRandom(seed);
  const appends: Promise<unknown>[] = [];
  for (let seq = from; seq < from + n;) {
    const count = Math.min(
      from + n - seq,
      1 + random(random(5) === 0 ? 900 : 30),
    );
    const records = Array.from({ length: count }, (_, i) => ({
      seq: seq + i,
      ts: seq + i,
      line: te.encode(`r ${seq + i} ${"q".repeat(random(130))}`),
    }));
    appends.push(vault.append(KEY, records, { recvTs: seq }));
    appends.push(vault.append(OTHER, records, { recvTs: seq + 1 }));
    seq += count;
    if (appends.length >= 4 || random(3) === 0) {
      await Promise.all(appends.splice(0));
    }
  }
  await Promise.all(appends);
}

test("a vault with the tree worker writes the same tree file as without, and its checkpoints cover every append resolved before them", async () => {
  using tmp = tempDir("moat-tree-worker-");
  const treesOf = (dir: string) => {
    const sources = path.join(dir, "sources");
    return fs.readdirSync(sources).sort().map((name) =>
      fs.readFileSync(path.join(sources, name, "tree"))
    );
  };
  let restore = install();
  let hashed = TreeHasher.hashed;
  try {
    const vault = await openVault(path.join(tmp.dir, "worker"), {
      sealIntervalMs: 0,
      segmentBytes: 65536,
    });
    await fill(vault, 1, 3000, 5);
    // Asked for right after an append resolved: it waits for the worker.
    const records = [{ seq: 3001, ts: 1, line: te.encode("last") }];
    await vault.append(OTHER, records, { recvTs: 9 });
    await vault.append(KEY, records, { recvTs: 9 });
    const cp = await vault.checkpoint(KEY);
    assert.equal(cp.size, 3001);
    await vault.close();
    if (batchHere) assert.ok(TreeHasher.hashed - hashed > 50);
    const report = await verifyVault(path.join(tmp.dir, "worker"), {});
    assert.deepEqual(report.problems.map((p) => p.message), []);
  } finally {
    restore();
  }
  const plain = await openVault(path.join(tmp.dir, "plain"), {
    sealIntervalMs: 0,
    segmentBytes: 65536,
  });
  await fill(plain, 1, 3000, 5);
  for (const key of [OTHER, KEY]) {
    await plain.append(key, [{ seq: 3001, ts: 1, line: te.encode("last") }], {
      recvTs: 9,
    });
  }
  await plain.close();
  const trees = treesOf(path.join(tmp.dir, "worker"));
  assert.equal(trees.length, 2);
  assert.deepEqual(trees, treesOf(path.join(tmp.dir, "plain")));
  // A commit that fails and is sent again from the same record; then the
  // worker dies in the middle of appends: the tree stays whole.
  restore = install();
  hashed = TreeHasher.hashed;
  const events: unknown[] = [];
  let workerFailed = () => {};
  const failure = new Promise<void>((resolve) => (workerFailed = resolve));
  try {
    const vault = await openVault(path.join(tmp.dir, "worker"), {
      sealIntervalMs: 0,
      segmentBytes: 65536,
      onTree: (e) => {
        events.push(e);
        if (e.type === "tree_worker_failed") workerFailed();
      },
    });
    // Once the reopened trees caught up (a tree that is building takes no
    // chunks), the worker takes chunks again.
    await vault.checkpoint(KEY);
    await vault.checkpoint(OTHER);
    await fill(vault, 3002, 500, 6);
    // Appends resolve once durable; a checkpoint waits for the answers.
    await vault.checkpoint(KEY);
    await vault.checkpoint(OTHER);
    if (batchHere) assert.ok(TreeHasher.hashed > hashed);
    let failed = false;
    _internals.fault = (step) => {
      if (step === "sync" && !failed) {
        failed = true;
        throw new Error("EIO: simulated");
      }
    };
    const lines = (from: number, n: number) =>
      Array.from({ length: n }, (_, i) => ({
        seq: from + i,
        ts: 1,
        line: te.encode(`again ${from + i}`),
      }));
    try {
      await assert.rejects(
        vault.append(KEY, lines(3502, 40), { recvTs: 1 }),
        /EIO/,
      );
    } finally {
      _internals.fault = undefined;
    }
    await vault.append(KEY, lines(3502, 40), { recvTs: 2 });
    await vault.append(OTHER, lines(3502, 40), { recvTs: 2 });
    await fill(vault, 3542, 400, 7);
    TreeHasher._kill();
    await fill(vault, 3942, 400, 8);
    if (batchHere) {
      await failure;
      assert.deepEqual(events, [{
        type: "tree_worker_failed",
        message: "the tree worker exited",
      }]);
    }
    const cp = await vault.checkpoint(KEY);
    assert.equal(cp.size, 4341);
    await vault.close();
    const report = await verifyVault(path.join(tmp.dir, "worker"), {});
    assert.deepEqual(report.problems.map((p) => p.message), []);
  } finally {
    restore();
  }
  // Reopened without the worker, the tree is trusted as it was left.
  events.length = 0;
  const again = await openVault(path.join(tmp.dir, "worker"), {
    sealIntervalMs: 0,
    onTree: (e) => events.push(e),
  });
  assert.equal((await again.checkpoint(KEY)).size, 4341);
  assert.deepEqual(events, []);
  await again.close();
});
