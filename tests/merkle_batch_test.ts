// The batch hashing paths: sha256Many (a chunk's Merkle leaves) and
// MerkleLog.appendLeaves (a chunk's nodes), portable and through the C loops
// that `bun:ffi`'s cc compiles (lib/net/sha256.ts), against one hash at a
// time and the RFC 9162 reference.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { leafHash, MemoryNodeStore, MerkleLog } from "../lib/merkle.ts";
import {
  nativeSha256Batch as loadedBatch,
  portableBatch,
  setNativeSha256,
  setNativeSha256Batch,
  sha256Many,
} from "../lib/sha256.ts";
import { nativeSha256Batch, nativeSha256Parts } from "../lib/net/sha256.ts";
import { TreeFile } from "../lib/vault/_tree_file.ts";
import { refLeaf, refMth } from "./_rfc9162.ts";
import { tempDir } from "./_e2e.ts";
import { seededRandom } from "./_test_utils.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const bun = navigator.userAgent.startsWith("Bun");

test("the batch loops load on Bun on Linux, and nowhere without a C compiler to call (Deno)", () => {
  const batch = nativeSha256Batch();
  if (bun && process.platform === "linux") {
    assert.ok(batch !== undefined, "cc or libcrypto did not load");
    assert.equal(nativeSha256Batch(), batch, "compiled once a process");
  } else {
    assert.equal(batch, undefined);
  }
});

/** Each (label, loader) the batch functions run with. */
const paths: [
  string,
  (() => ReturnType<typeof nativeSha256Batch>) | undefined,
][] = [
  ["portable", undefined],
  ["native", nativeSha256Batch],
];

test("sha256Many gives, for every record, the SHA-256 of its prefix and its span, portable and native", () => {
  const random = seededRandom(41);
  const b = new Uint8Array(5000).map(() => random(256));
  setNativeSha256(nativeSha256Parts);
  try {
    for (const [label, load] of paths) {
      setNativeSha256Batch(load);
      for (let round = 0; round < 20; round++) {
        const n = 1 + random(60);
        const aLen = random(70);
        const stride = aLen + random(5);
        const a = new Uint8Array(stride * n + random(3)).map(() => random(256));
        const spans = new Int32Array(2 * n + 2 * random(3));
        for (let k = 0; k < n; k++) {
          const start = random(4000);
          spans[2 * k] = start;
          spans[2 * k + 1] = start + random(900);
        }
        const out = new Uint8Array(32 * n + 64).fill(0xee);
        sha256Many(a, stride, aLen, b, spans, n, out, 32);
        for (let k = 0; k < n; k++) {
          const want = createHash("sha256")
            .update(a.subarray(k * stride, k * stride + aLen))
            .update(b.subarray(spans[2 * k]!, spans[2 * k + 1]!))
            .digest("hex");
          assert.equal(
            hex(out.subarray(32 + 32 * k, 64 + 32 * k)),
            want,
            `${label} round ${round} record ${k}`,
          );
        }
        assert.ok(out.subarray(0, 32).every((x) => x === 0xee), label);
        assert.ok(out.subarray(32 + 32 * n).every((x) => x === 0xee), label);
      }
      // Ranges outside their buffers are refused before any native call.
      const out = new Uint8Array(64);
      const a = new Uint8Array(10);
      assert.throws(
        () => sha256Many(a, 5, 5, b, new Int32Array([0, 5001]), 1, out, 0),
        RangeError,
      );
      assert.throws(
        () => sha256Many(a, 5, 5, b, new Int32Array([6, 5]), 1, out, 0),
        RangeError,
      );
      assert.throws(
        () => sha256Many(a, 5, 6, b, new Int32Array([0, 1, 0, 1]), 2, out, 0),
        RangeError,
      );
      assert.throws(
        () => sha256Many(a, 5, 5, b, new Int32Array([0, 1, 0, 1]), 2, out, 33),
        RangeError,
      );
      assert.throws(
        () => sha256Many(a, 5, 5, b, new Int32Array([0, 1]), 2, out, 0),
        RangeError,
      );
    }
  } finally {
    setNativeSha256(undefined);
    setNativeSha256Batch(undefined);
  }
});

test("MerkleLog.appendLeaves stores the same nodes in the same order as one leaf at a time, for chunks of every size from every start, portable and native", () => {
  using tmp = tempDir("moat-merkle-batch-");
  const random = seededRandom(77);
  setNativeSha256(nativeSha256Parts);
  try {
    for (const [label, load] of paths) {
      setNativeSha256Batch(load);
      const file = new TreeFile(path.join(tmp.dir, `${label}.tree`), 0);
      const batched = new MerkleLog(file);
      const refStore = new MemoryNodeStore();
      const reference = new MerkleLog(refStore);
      const leaves: Uint8Array[] = [];
      // Single leaves onto sizes 2^k − 1 (the longest merges), then chunks
      // of random sizes, some large, from wherever the tree stands.
      const chunks = [1, 1, 2, 3, 1, 7, 1, 15, 1, 1, 31, 33, 64, 1, 127, 1];
      for (let i = 0; i < 60; i++) {
        chunks.push(1 + random(i % 10 === 0 ? 600 : 40));
      }
      for (const n of chunks) {
        const buf = new Uint8Array(32 * (n + 2));
        for (let k = 0; k < n; k++) {
          const leaf = Uint8Array.from(
            { length: 1 + random(20) },
            () => random(256),
          );
          leaves.push(leaf);
          const hash = leafHash(leaf);
          buf.set(hash, 32 * (k + 1));
          reference.append(hash);
        }
        batched.appendLeaves(buf, 32, n);
        assert.equal(batched.size, reference.size);
        assert.equal(hex(batched.root()), hex(reference.root()), label);
        if (random(4) === 0) file.flush();
      }
      assert.equal(
        hex(batched.root()),
        hex(refMth(leaves.map((l) => refLeaf(l)))),
        `${label}: the RFC 9162 root`,
      );
      // Every node where the reference holds it, read back through the file.
      const size = reference.size;
      for (let level = 0; 2 ** level <= size; level++) {
        for (let i = 0; (i + 1) * 2 ** level <= size; i++) {
          const want = hex(refStore.get(level, i));
          assert.equal(hex(file.get(level, i)), want, `${label} ${level}/${i}`);
        }
      }
      // Proofs answered from the batched file agree with the reference.
      for (let k = 0; k < 50; k++) {
        const n = 1 + random(size);
        const m = random(n);
        assert.deepEqual(
          batched.inclusionProof(m, n).map(hex),
          reference.inclusionProof(m, n).map(hex),
        );
      }
      assert.throws(
        () => batched.appendLeaves(new Uint8Array(40), 10, 1),
        RangeError,
      );
      assert.equal(
        loadedBatch() !== undefined,
        load !== undefined && nativeSha256Batch() !== undefined,
      );
    }
  } finally {
    setNativeSha256(undefined);
    setNativeSha256Batch(undefined);
  }
});

test("portableBatch (the tree worker's path on Deno) stores the same hashes in the same order and leaves the same frontier as one leaf at a time", () => {
  using tmp = tempDir("moat-merkle-batch-");
  const random = seededRandom(91);
  setNativeSha256(nativeSha256Parts);
  try {
    const file = new TreeFile(path.join(tmp.dir, "ref.tree"), 0);
    const reference = new MerkleLog(file);
    const front = new Uint8Array(32 * 56);
    let size = 0;
    const runs: Uint8Array[] = [];
    for (const n of [1, 1, 2, 3, 1, 7, 1, 15, 1, 33, 64, 1, 200, 5]) {
      const leaves = new Uint8Array(32 * n).map(() => random(256));
      const out = new Uint8Array(32 * (2 * n + 54));
      const count = portableBatch.merkleAppend(
        front,
        reference.frontier().length / 32,
        size,
        leaves,
        0,
        n,
        out,
      );
      runs.push(out.slice(0, 32 * count));
      for (let k = 0; k < n; k++) reference.appendFrom(leaves, 32 * k);
      size += n;
      assert.deepEqual(
        front.subarray(0, reference.frontier().length),
        reference.frontier(),
        `size ${size}`,
      );
    }
    file.flush();
    assert.deepEqual(Buffer.concat(runs), fs.readFileSync(file.path));
  } finally {
    setNativeSha256(undefined);
  }
});

test("MerkleLog.appendRun refuses a run that does not fit the new size (wrong count, short run, wrong frontier, a store without runs) and stores nothing then", () => {
  using tmp = tempDir("moat-merkle-batch-");
  const file = new TreeFile(path.join(tmp.dir, "t.tree"), 0);
  const log = new MerkleLog(file);
  const leaf = new Uint8Array(32).fill(9);
  for (let k = 0; k < 3; k++) log.appendFrom(leaf, 0);
  const root = log.root();
  const stored = file.count;
  // Appending 1 leaf to 3 stores 3 hashes (the leaf, then 2 merges) and
  // leaves a frontier of one subtree (size 4).
  const front = new Uint8Array(32);
  const run = new Uint8Array(32 * 3);
  for (
    const [count, r, f] of [
      [2, run, front],
      [4, new Uint8Array(32 * 4), front],
      [3, new Uint8Array(32 * 2), front],
      [3, run, new Uint8Array(64)],
      [3, run, new Uint8Array(0)],
    ] as const
  ) {
    assert.throws(() => log.appendRun(r, count, 1, f), RangeError);
    assert.equal(log.size, 3);
    assert.equal(file.count, stored);
    assert.deepEqual(log.root(), root);
  }
  const memory = new MerkleLog(new MemoryNodeStore());
  assert.throws(() => memory.appendRun(run, 1, 1, front), RangeError);
  assert.equal(memory.size, 0);
  // The shape that fits is taken.
  log.appendRun(run, 3, 1, front);
  assert.equal(log.size, 4);
  assert.equal(file.count, stored + 3);
});
