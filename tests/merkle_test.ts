import { test } from "node:test";
import assert from "node:assert/strict";
import {
  emptyRoot,
  leafHash,
  MemoryNodeStore,
  MerkleLog,
  type NodeStore,
  rootOf,
  verifyConsistency,
  verifyInclusion,
} from "../lib/merkle.ts";
import {
  refLeaf,
  refMth,
  refPath,
  refProof,
  refVerifyConsistency,
  refVerifyInclusion,
} from "./_rfc9162.ts";
import { setNativeSha256 } from "../lib/sha256.ts";
import { nativeSha256Parts } from "../lib/net/sha256.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));

// Certificate Transparency's reference entries and tree heads (RFC 6962 test
// vectors, as published by transparency-dev/merkle and certificate-transparency).
const CT_ENTRIES = [
  "",
  "00",
  "10",
  "2021",
  "3031",
  "40414243",
  "5051525354555657",
  "606162636465666768696a6b6c6d6e6f",
].map(unhex);
const CT_ROOTS = [
  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
  "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
  "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
  "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
  "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
  "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
  "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
  "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];
const CT_INCLUSION = [
  {
    index: 0,
    size: 8,
    path: [
      "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
      "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
      "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
  },
  {
    index: 5,
    size: 8,
    path: [
      "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
      "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
      "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
  },
];
const CT_CONSISTENCY = [
  {
    from: 2,
    size: 8,
    proof: [
      "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
      "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
  },
  {
    from: 6,
    size: 8,
    proof: [
      "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
      "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
      "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
  },
  {
    from: 2,
    size: 5,
    proof: [
      "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
      "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
  },
];

function ctLog(): MerkleLog {
  const log = new MerkleLog(new MemoryNodeStore());
  for (const e of CT_ENTRIES) log.append(leafHash(e));
  return log;
}

test("merkle: tree heads match the RFC 6962 test vectors at every size", () => {
  assert.equal(hex(emptyRoot()), CT_ROOTS[0]);
  const log = ctLog();
  for (let n = 0; n <= 8; n++) {
    assert.equal(hex(log.root(n)), CT_ROOTS[n], `root at size ${n}`);
    assert.equal(
      hex(rootOf(CT_ENTRIES.slice(0, n).map(leafHash))),
      CT_ROOTS[n],
    );
  }
  // Built one append at a time, each current root matches too.
  const grow = new MerkleLog(new MemoryNodeStore());
  assert.equal(hex(grow.root()), CT_ROOTS[0]);
  CT_ENTRIES.forEach((e, i) => {
    grow.append(leafHash(e));
    assert.equal(hex(grow.root()), CT_ROOTS[i + 1]);
  });
});

test("merkle: proofs match the published inclusion and consistency vectors", () => {
  const log = ctLog();
  for (const v of CT_INCLUSION) {
    assert.deepEqual(log.inclusionProof(v.index, v.size).map(hex), v.path);
    assert.ok(
      verifyInclusion(
        leafHash(CT_ENTRIES[v.index]!),
        v.index,
        v.size,
        v.path.map(unhex),
        unhex(CT_ROOTS[v.size]!),
      ),
    );
  }
  for (const v of CT_CONSISTENCY) {
    assert.deepEqual(log.consistencyProof(v.from, v.size).map(hex), v.proof);
    assert.ok(
      verifyConsistency(
        v.from,
        v.size,
        unhex(CT_ROOTS[v.from]!),
        unhex(CT_ROOTS[v.size]!),
        v.proof.map(unhex),
      ),
    );
  }
});

test("merkle: every proof of trees up to 40 leaves equals the RFC's definition and passes its verifier", () => {
  const leaves = Array.from(
    { length: 40 },
    (_, i) => refLeaf(new Uint8Array([i, i >> 3, 7])),
  );
  const log = new MerkleLog(new MemoryNodeStore());
  for (const l of leaves) log.append(l);
  for (let n = 1; n <= leaves.length; n++) {
    const tree = leaves.slice(0, n);
    const root = refMth(tree);
    assert.equal(hex(log.root(n)), hex(root), `root ${n}`);
    for (let m = 0; m < n; m++) {
      const path = log.inclusionProof(m, n);
      assert.deepEqual(
        path.map(hex),
        refPath(m, tree).map(hex),
        `path ${m}/${n}`,
      );
      assert.ok(refVerifyInclusion(tree[m]!, m, n, path, root));
      assert.ok(verifyInclusion(tree[m]!, m, n, path, root));
    }
    for (let m = 1; m < n; m++) {
      const proof = log.consistencyProof(m, n);
      assert.deepEqual(
        proof.map(hex),
        refProof(m, tree).map(hex),
        `proof ${m}→${n}`,
      );
      const old = refMth(leaves.slice(0, m));
      assert.ok(refVerifyConsistency(m, n, old, root, proof));
      assert.ok(verifyConsistency(m, n, old, root, proof));
    }
  }
});

test("merkle: the verifiers reject every altered proof, index, size or root", () => {
  const leaves = Array.from(
    { length: 23 },
    (_, i) => refLeaf(new Uint8Array([i])),
  );
  const log = new MerkleLog(new MemoryNodeStore());
  for (const l of leaves) log.append(l);
  const flip = (b: Uint8Array) => {
    const c = new Uint8Array(b);
    c[5]! ^= 1;
    return c;
  };
  for (let n = 2; n <= 23; n++) {
    const root = log.root(n);
    for (let m = 0; m < n; m++) {
      const path = log.inclusionProof(m, n);
      assert.equal(verifyInclusion(flip(leaves[m]!), m, n, path, root), false);
      assert.equal(verifyInclusion(leaves[m]!, m, n, path, flip(root)), false);
      assert.equal(verifyInclusion(leaves[m]!, m + 1, n, path, root), false);
      // (The size alone is not bound by the path: RFC 9162's algorithm
      // accepts some paths for a larger size with the smaller tree's root.
      // The signed checkpoint binds size and root together.)
      if (n < 23) {
        assert.equal(
          verifyInclusion(leaves[m]!, m, n + 1, path, log.root(n + 1)),
          false,
        );
      }
      assert.equal(verifyInclusion(leaves[m]!, n, n, path, root), false);
      assert.equal(
        verifyInclusion(leaves[m]!, m, n, [...path, root], root),
        false,
      );
      if (path.length > 0) {
        for (let j = 0; j < path.length; j++) {
          const bad = path.map((p, i) => (i === j ? flip(p) : p));
          assert.equal(verifyInclusion(leaves[m]!, m, n, bad, root), false);
        }
        assert.equal(
          verifyInclusion(leaves[m]!, m, n, path.slice(1), root),
          false,
        );
      }
    }
    for (let m = 1; m < n; m++) {
      const old = log.root(m);
      const proof = log.consistencyProof(m, n);
      assert.equal(verifyConsistency(m, n, flip(old), root, proof), false);
      assert.equal(verifyConsistency(m, n, old, flip(root), proof), false);
      assert.equal(verifyConsistency(m, n, old, root, proof.slice(1)), false);
      assert.equal(verifyConsistency(m, n, old, root, [...proof, old]), false);
      for (let j = 0; j < proof.length; j++) {
        const bad = proof.map((p, i) => (i === j ? flip(p) : p));
        assert.equal(verifyConsistency(m, n, old, root, bad), false);
      }
      if (m + 1 < n) {
        assert.equal(verifyConsistency(m + 1, n, old, root, proof), false);
      }
    }
  }
  // Equal sizes need equal roots; any tree extends the empty one.
  assert.ok(verifyConsistency(5, 5, log.root(5), log.root(5), []));
  assert.equal(verifyConsistency(5, 5, log.root(5), log.root(6), []), false);
  assert.ok(verifyConsistency(0, 9, emptyRoot(), log.root(9), []));
  assert.equal(verifyConsistency(6, 5, log.root(6), log.root(5), []), false);
});

test("merkle: a log reopened at its size from the store answers as before", () => {
  const store = new MemoryNodeStore();
  const first = new MerkleLog(store);
  for (let i = 0; i < 37; i++) first.append(refLeaf(new Uint8Array([i])));
  const again = new MerkleLog(store, 37);
  assert.equal(hex(again.root()), hex(first.root()));
  again.append(refLeaf(new Uint8Array([37])));
  first.append(refLeaf(new Uint8Array([37])));
  assert.equal(hex(again.root()), hex(first.root()));
  assert.deepEqual(
    again.consistencyProof(11, 38).map(hex),
    first.consistencyProof(11, 38).map(hex),
  );
  // Each leaf is stored once per level it completes: ~2 nodes per leaf.
  assert.deepEqual(store.counts.slice(0, 3), [38, 19, 9]);
});

test("merkle: sizes and indexes outside the tree are refused", () => {
  const log = ctLog();
  assert.throws(() => log.root(9), RangeError);
  assert.throws(() => log.inclusionProof(8, 8), RangeError);
  assert.throws(() => log.inclusionProof(-1, 8), RangeError);
  assert.throws(() => log.consistencyProof(9, 8), RangeError);
  assert.throws(() => log.append(new Uint8Array(31)), RangeError);
  assert.throws(() => new MerkleLog(new MemoryNodeStore(), 3), RangeError);
});

test("merkle: proofs in a tree of 10 million leaves need only O(log² n) node reads", () => {
  // A virtual tree whose leaves all hash alike, so every node of a level is
  // the same hash and a 10^7-leaf tree costs no memory; the test counts the
  // reads each proof makes. (Positions are told apart in the tests above.)
  const levels = [refLeaf(new Uint8Array([42]))];
  for (let l = 1; l <= 53; l++) {
    levels.push(rootOf([levels[l - 1]!, levels[l - 1]!]));
  }
  let reads = 0;
  const store: NodeStore = {
    get(level) {
      reads++;
      return levels[level]!;
    },
    put() {
      throw new Error("read only");
    },
  };
  const size = 10_000_000;
  const log = new MerkleLog(store, size);
  const root = log.root();
  for (const m of [0, 1, 4_999_999, 9_999_998, 9_999_999]) {
    reads = 0;
    const path = log.inclusionProof(m, size);
    assert.ok(
      reads > 0 && reads <= 24 * 24,
      `inclusion of ${m}: ${reads} reads`,
    );
    assert.ok(verifyInclusion(levels[0]!, m, size, path, root));
    assert.ok(refVerifyInclusion(levels[0]!, m, size, path, root));
  }
  for (const from of [1, 1024, 6_543_210, 9_999_999]) {
    reads = 0;
    const proof = log.consistencyProof(from, size);
    assert.ok(
      reads > 0 && reads <= 24 * 24,
      `consistency from ${from}: ${reads} reads`,
    );
    const old = log.root(from);
    assert.ok(verifyConsistency(from, size, old, root, proof));
    assert.ok(refVerifyConsistency(from, size, old, root, proof));
  }
});

test("merkle: appendHashOf (the vault's path: leaf hashed from two parts, nodes merged in place, stored with putFrom) gives the reference roots and nodes, portable and through libcrypto", () => {
  const leaves: Uint8Array[] = [];
  for (let i = 0; i < 70; i++) {
    leaves.push(Uint8Array.from({ length: i % 9 }, (_, j) => i * 31 + j));
  }
  try {
    for (const load of [undefined, nativeSha256Parts]) {
      setNativeSha256(load);
      const plain = new MemoryNodeStore();
      const fromParts: NodeStore & { counts: number[] } = Object.assign(
        new MemoryNodeStore(),
        {
          putFrom(level: number, index: number, buf: Uint8Array, at: number) {
            fromParts.put(level, index, buf.slice(at, at + 32));
          },
        },
      );
      const a = new MerkleLog(plain);
      const b = new MerkleLog(fromParts);
      const prefixed = new Uint8Array(64);
      for (let i = 0; i < leaves.length; i++) {
        const leaf = leaves[i]!;
        a.append(leafHash(leaf));
        // 0x00 and the first byte in one part, the rest of the leaf in another.
        prefixed[0] = 0;
        prefixed.set(leaf.subarray(0, 1), 1);
        const split = Math.min(1, leaf.length);
        b.appendHashOf(prefixed, 0, 1 + split, leaf, split, leaf.length);
        assert.equal(
          hex(b.root()),
          hex(refMth(leaves.slice(0, i + 1).map((l) => refLeaf(l)))),
          `size ${i + 1}`,
        );
        assert.equal(hex(b.root()), hex(a.root()));
      }
      assert.deepEqual(fromParts.counts, plain.counts);
      for (let level = 0; level < plain.counts.length; level++) {
        for (let i = 0; i < plain.counts[level]!; i++) {
          assert.equal(hex(fromParts.get(level, i)), hex(plain.get(level, i)));
        }
      }
    }
  } finally {
    setNativeSha256(undefined);
  }
});
