// The vault's Merkle trees, in-process on real files: proofs checked by the
// independent RFC 9162 reference (tests/_rfc9162.ts) over leaves encoded
// here from docs/VAULT.md's table, trees kept across reopen, rebuilt when
// damaged or missing, built for vaults from before trees, cut back behind
// lost records; checkpoints cover durable records only; verify catches a
// rolled-back copy, a cut tail and a rewritten history.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import {
  cosign,
  COSIGNATURE_V1,
  generateKey,
  openCheckpoint,
  parseSigner,
  parseVerifier,
  signCheckpoint,
} from "../lib/checkpoint.ts";
import { _internals } from "../lib/segment/log.ts";
import { openVault } from "../lib/vault/store.ts";
import type { SourceKey, TreeEvent, Vault } from "../lib/vault/store.ts";
import { decodeLeaf, encodeLeaf } from "../lib/vault/leaf.ts";
import { verifyVault } from "../lib/vault/verify.ts";
import { tempDir } from "./_e2e.ts";
import {
  refLeaf,
  refMth,
  refVerifyConsistency,
  refVerifyInclusion,
} from "./_rfc9162.ts";
import { seededRandom } from "./_test_utils.ts";
import process from "node:process";
import { setNativeSha256, setNativeSha256Batch } from "../lib/sha256.ts";
import { nativeSha256Batch, nativeSha256Parts } from "../lib/net/sha256.ts";
import { TreeHasher } from "../lib/vault/_tree_chunk.ts";

const KEY: SourceKey = { peer: "10.0.0.7", name: "app" };
const te = new TextEncoder();

/** The source hash as docs/VAULT.md defines it: SHA-256 of JSON [peer, name]. */
function sourceHashOf(key: SourceKey): Uint8Array {
  return new Uint8Array(
    createHash("sha256").update(JSON.stringify([key.peer, key.name])).digest(),
  );
}

/** A leaf from the table in docs/VAULT.md, written out byte by byte. */
function docLeaf(
  r: { seq: number; ts: number; recvTs: number; line: Uint8Array },
  partial = false,
): Uint8Array {
  const out = new Uint8Array(58 + r.line.length);
  const view = new DataView(out.buffer);
  out[0] = 1;
  out.set(sourceHashOf(KEY), 1);
  view.setBigUint64(33, BigInt(r.seq), true);
  view.setBigUint64(41, BigInt(r.ts), true);
  view.setBigUint64(49, BigInt(r.recvTs), true);
  out[57] = partial ? 1 : 0;
  out.set(r.line, 58);
  return out;
}

interface Kept {
  seq: number;
  ts: number;
  recvTs: number;
  line: Uint8Array;
}

/** Appends `n` records in batches of 1 to 40, receive time = seq * 10. */
async function fill(
  vault: Vault,
  n: number,
  kept: Kept[],
  seed = 1,
  key: SourceKey = KEY,
): Promise<void> {
  const random = seededRandom(seed);
  let left = n;
  while (left > 0) {
    const count = Math.min(left, 1 + random(40));
    const first = kept.length + 1;
    const records = Array.from({ length: count }, (_, i) => ({
      seq: first + i,
      ts: 1000 + first + i,
      line: te.encode(
        `seed ${seed} line ${first + i} ${"x".repeat(random(90))}`,
      ),
    }));
    await vault.append(key, records, { recvTs: first * 10 });
    for (const r of records) kept.push({ ...r, recvTs: first * 10 });
    left -= count;
  }
}

function open(dir: string, events: TreeEvent[] = []) {
  return openVault(dir, {
    segmentBytes: 4096,
    sealIntervalMs: 0,
    onTree: (e) => events.push(e),
  });
}

function sourceDir(dir: string): string {
  const sources = path.join(dir, "sources");
  return path.join(sources, fs.readdirSync(sources)[0]!);
}

test("Vault proofs for random records and sizes verify with an independent RFC 9162 verifier over leaves encoded from the docs", async () => {
  using tmp = tempDir();
  const vault = await open(tmp.dir);
  const kept: Kept[] = [];
  await fill(vault, 300, kept);
  const cp = await vault.checkpoint(KEY);
  const body = openCheckpoint(cp.note, parseVerifier(vault.checkpointVerifier));
  assert.equal(cp.size, 300);
  const leaves = kept.map((r) => refLeaf(docLeaf(r)));
  assert.deepEqual(body.root, refMth(leaves));
  assert.deepEqual(cp.root, body.root);
  const random = seededRandom(7);
  for (let i = 0; i < 60; i++) {
    const size = 1 + random(300);
    const seq = 1 + random(size);
    const proof = vault.inclusionProof(KEY, seq, size);
    assert.deepEqual(proof.leaf, docLeaf(kept[seq - 1]!));
    assert.deepEqual(encodeLeaf(decodeLeaf(proof.leaf)), proof.leaf);
    assert.equal(proof.index, seq - 1);
    assert.ok(
      refVerifyInclusion(
        refLeaf(proof.leaf),
        proof.index,
        size,
        proof.path,
        refMth(leaves.slice(0, size)),
      ),
      `record ${seq} in ${size}`,
    );
    if (size < 2) continue;
    const from = 1 + random(size - 1);
    const consistency = vault.consistencyProof(KEY, from, size);
    assert.ok(
      refVerifyConsistency(
        from,
        size,
        refMth(leaves.slice(0, from)),
        refMth(leaves.slice(0, size)),
        consistency,
      ),
      `${from} to ${size}`,
    );
  }
  // A partial record's leaf carries flag 0x01.
  const line = te.encode("part");
  await vault.append(KEY, [{ seq: 301, ts: 5, line, partial: true }], {
    recvTs: 9,
  });
  const p = vault.inclusionProof(KEY, 301, 301);
  assert.deepEqual(p.leaf, docLeaf({ seq: 301, ts: 5, recvTs: 9, line }, true));
  assert.throws(() => vault.inclusionProof(KEY, 302, 301), RangeError);
  assert.throws(() => vault.inclusionProof(KEY, 1, 302), RangeError);
  assert.throws(() => vault.consistencyProof(KEY, 5, 400), RangeError);
  assert.throws(
    () => vault.inclusionProof({ peer: "10.9.9.9", name: "x" }, 1, 1),
    (e: Error & { code?: string }) => e.code === "ERR_NO_SOURCE",
  );
  // An unknown source gets the empty tree, signed.
  const none = await vault.checkpoint({ peer: "10.9.9.9", name: "x" });
  assert.equal(none.size, 0);
  await vault.close();
});

test("Vault trees persist across reopen, and a damaged, missing or lagging tree is rebuilt from the records", async () => {
  using tmp = tempDir();
  const kept: Kept[] = [];
  let vault = await open(tmp.dir);
  await fill(vault, 200, kept, 2);
  const first = await vault.checkpoint(KEY);
  await vault.close();
  const dir = sourceDir(tmp.dir);
  const treeFile = path.join(dir, "tree");
  const logFile = path.join(dir, "checkpoints");
  assert.equal(fs.statSync(treeFile).size, 32 * (2 * 200 - 3));
  assert.equal(fs.readFileSync(logFile, "utf8").trim().split("\n").length, 1);

  // Reopened as it was: the same note, no event.
  let events: TreeEvent[] = [];
  vault = await open(tmp.dir, events);
  assert.equal((await vault.checkpoint(KEY)).note, first.note);
  assert.deepEqual(events, []);
  await vault.close();

  // A flipped node of the root's (the subtree of records 1 to 128, node
  // 2·127 − 7 + 7 in the file): rebuilt at open, same root, same file.
  const good = fs.readFileSync(treeFile);
  const bytes = new Uint8Array(good);
  bytes[32 * 254] = bytes[32 * 254]! ^ 1;
  fs.writeFileSync(treeFile, bytes);
  events = [];
  vault = await open(tmp.dir, events);
  assert.equal((await vault.checkpoint(KEY)).note, first.note);
  assert.deepEqual(events.map((e) => e.type), ["tree_rebuilt"]);
  await vault.close();
  assert.deepEqual(fs.readFileSync(treeFile), good);

  // A flipped leaf node (record 4's) is not read at open; a proof through it
  // is refused rather than given out, and verify names it.
  bytes.set(good);
  bytes[32 * 4] = bytes[32 * 4]! ^ 1;
  fs.writeFileSync(treeFile, bytes);
  vault = await open(tmp.dir);
  assert.throws(
    () => vault.inclusionProof(KEY, 3, 200),
    (e: Error & { code?: string }) => e.code === "ERR_CORRUPT",
  );
  assert.throws(
    () => vault.consistencyProof(KEY, 3, 200),
    (e: Error & { code?: string }) => e.code === "ERR_CORRUPT",
  );
  await vault.close();
  const bad = await verifyVault(tmp.dir);
  assert.deepEqual(bad.problems.map((p) => p.kind), ["tree"]);
  assert.match(
    bad.problems[0]!.message,
    /differs from the records at record 4 /,
  );
  fs.writeFileSync(treeFile, good);

  // A record after the last logged checkpoint (a crash lost its line): the
  // tree is trusted up to that checkpoint and catches up from the records.
  vault = await open(tmp.dir);
  const records = [{ seq: 201, ts: 1, line: te.encode("after") }];
  await vault.append(KEY, records, { recvTs: 1 });
  kept.push({ ...records[0]!, recvTs: 1 });
  const grown = await vault.checkpoint(KEY);
  await vault.close();
  const lines = fs.readFileSync(logFile, "utf8").trim().split("\n");
  fs.writeFileSync(logFile, lines.slice(0, -1).join("\n") + "\n");
  events = [];
  vault = await open(tmp.dir, events);
  assert.equal((await vault.checkpoint(KEY)).note, grown.note);
  assert.deepEqual(events, []);
  await vault.close();

  // Fewer nodes than the last logged checkpoint needs: rebuilt.
  fs.truncateSync(treeFile, 32 * 10);
  events = [];
  vault = await open(tmp.dir, events);
  assert.deepEqual(events.map((e) => e.type), ["tree_rebuilt"]);
  assert.equal((await vault.checkpoint(KEY)).note, grown.note);
  await vault.close();

  // The tree gone: built again whole.
  fs.rmSync(treeFile);
  events = [];
  vault = await open(tmp.dir, events);
  assert.equal((await vault.checkpoint(KEY)).note, grown.note);
  assert.deepEqual(events.map((e) => e.type), ["tree_rebuilt"]);
  await vault.close();
  const report = await verifyVault(tmp.dir);
  assert.deepEqual(report.problems, []);
  assert.equal(report.sources[0]!.tree?.size, 201);
});

test("Vault cuts its tree back when records behind a logged checkpoint are gone, and says so", async () => {
  using tmp = tempDir();
  const kept: Kept[] = [];
  let vault = await open(tmp.dir);
  await fill(vault, 120, kept, 3);
  await vault.close();
  // Cut the newest segment: the records there are gone.
  const dir = sourceDir(tmp.dir);
  const segments = fs.readdirSync(dir).filter((f) => f.endsWith(".seg"))
    .sort();
  const last = segments.at(-1)!;
  fs.rmSync(path.join(dir, last));
  const held = Number(last.slice(0, 20)) - 1;
  const events: TreeEvent[] = [];
  vault = await open(tmp.dir, events);
  assert.deepEqual(events, [{
    type: "tree_behind",
    source: KEY,
    records: held,
    checkpoint: 120,
  }]);
  const cp = await vault.checkpoint(KEY);
  assert.equal(cp.size, held);
  assert.deepEqual(
    cp.root,
    refMth(kept.slice(0, held).map((r) => refLeaf(docLeaf(r)))),
  );
  await vault.close();
});

test("Vault from before trees: opens, makes its checkpoint key, builds its trees, and verifies", async () => {
  using tmp = tempDir();
  const kept: Kept[] = [];
  let vault = await open(tmp.dir);
  await fill(vault, 150, kept, 4);
  await vault.close();
  // What a vault of the previous version holds: no key, no trees.
  const dir = sourceDir(tmp.dir);
  for (const f of ["tree", "checkpoints", "tree.json"]) {
    fs.rmSync(path.join(dir, f), { force: true });
  }
  fs.rmSync(path.join(tmp.dir, "checkpoint.key"));
  const info = JSON.parse(
    fs.readFileSync(path.join(tmp.dir, "vault.json"), "utf8"),
  );
  delete info.checkpointKey;
  fs.writeFileSync(path.join(tmp.dir, "vault.json"), JSON.stringify(info));
  const before = await verifyVault(tmp.dir);
  assert.deepEqual(before.problems, []);
  assert.equal(before.sources[0]!.tree?.noTree, true);

  const events: TreeEvent[] = [];
  vault = await open(tmp.dir, events);
  const cp = await vault.checkpoint(KEY);
  assert.equal(cp.size, 150);
  assert.deepEqual(
    cp.root,
    refMth(kept.map((r) => refLeaf(docLeaf(r)))),
  );
  assert.deepEqual(events.map((e) => e.type), [
    "checkpoint_key_created",
    "tree_building",
    "tree_built",
  ]);
  const made = JSON.parse(
    fs.readFileSync(path.join(tmp.dir, "vault.json"), "utf8"),
  );
  assert.equal(made.checkpointKey, vault.checkpointVerifier);
  assert.equal(
    fs.statSync(path.join(tmp.dir, "checkpoint.key")).mode & 0o777,
    0o600,
  );
  await vault.close();
  assert.deepEqual((await verifyVault(tmp.dir)).problems, []);

  // A key file that went missing while vault.json names one: refused.
  fs.rmSync(path.join(tmp.dir, "checkpoint.key"));
  await assert.rejects(
    open(tmp.dir),
    (e: Error & { code?: string }) =>
      e.code === "ERR_CHECKPOINT" && /is missing/.test(e.message),
  );
});

test("Vault tree of a source pruned before trees starts at its oldest record, and says so in its checkpoints", async () => {
  using tmp = tempDir();
  const kept: Kept[] = [];
  let vault = await openVault(tmp.dir, {
    segmentBytes: 4096,
    sealIntervalMs: 0,
    now: () => 1_000_000,
  });
  await fill(vault, 200, kept, 5);
  const pruned = await vault.prune({ before: 999_999_999 });
  await vault.close();
  const from = pruned.sources[0]!.throughSeq + 1;
  assert.ok(from > 1);
  const dir = sourceDir(tmp.dir);
  for (const f of ["tree", "checkpoints", "tree.json"]) {
    fs.rmSync(path.join(dir, f), { force: true });
  }
  const events: TreeEvent[] = [];
  vault = await open(tmp.dir, events);
  const cp = await vault.checkpoint(KEY);
  assert.equal(cp.size, 200 - from + 1);
  assert.match(cp.note, new RegExp(`\\nmoat-first-seq ${from}\\n\\n`));
  assert.deepEqual(
    cp.root,
    refMth(kept.slice(from - 1).map((r) => refLeaf(docLeaf(r)))),
  );
  const proof = vault.inclusionProof(KEY, from + 5, cp.size);
  assert.equal(proof.index, 5);
  assert.throws(() => vault.inclusionProof(KEY, from - 1, cp.size), RangeError);
  assert.deepEqual(events.map((e) => e.type), ["tree_building", "tree_built"]);
  await vault.close();
  const report = await verifyVault(tmp.dir);
  assert.deepEqual(report.problems, []);
  assert.equal(report.sources[0]!.tree?.first, from);
});

test("Vault.checkpoint covers only durable records: a failed commit adds nothing to the tree", async () => {
  using tmp = tempDir();
  const kept: Kept[] = [];
  const vault = await open(tmp.dir);
  await fill(vault, 10, kept, 6);
  const before = await vault.checkpoint(KEY);
  _internals.fault = (step) => {
    if (step === "sync") throw new Error("EIO: simulated");
  };
  try {
    await assert.rejects(
      vault.append(KEY, [{ seq: 11, ts: 1, line: te.encode("lost") }]),
      /EIO/,
    );
  } finally {
    _internals.fault = undefined;
  }
  assert.equal((await vault.checkpoint(KEY)).note, before.note);
  await vault.append(KEY, [{ seq: 11, ts: 1, line: te.encode("kept") }], {
    recvTs: 3,
  });
  const after = await vault.checkpoint(KEY);
  assert.equal(after.size, 11);
  assert.deepEqual(
    vault.inclusionProof(KEY, 11, 11).leaf,
    docLeaf({ seq: 11, ts: 1, recvTs: 3, line: te.encode("kept") }),
  );
  await vault.close();
});

test("Vault.checkpoint asked for between a commit and its tree update takes the records from the commit, not a rebuild from disk", async () => {
  using tmp = tempDir();
  const kept: Kept[] = [];
  const vault = await open(tmp.dir);
  await fill(vault, 10, kept, 9);
  // The source's tree (internal: the source object the vault keeps).
  const tree = (vault.sources()[0] as unknown as { tree: { builds: number } })
    .tree;
  const builds = tree.builds;
  let between: ReturnType<Vault["checkpoint"]> | undefined;
  // After the fsync: a microtask queued here runs once the log has marked
  // the records durable, before the append's own callbacks.
  _internals.fault = (step) => {
    if (step === "synced" && between === undefined) {
      queueMicrotask(() => {
        between = vault.checkpoint(KEY);
      });
    }
  };
  try {
    await vault.append(KEY, [{ seq: 11, ts: 1, line: te.encode("eleven") }], {
      recvTs: 5,
    });
  } finally {
    _internals.fault = undefined;
  }
  assert.ok(between !== undefined, "no checkpoint was asked for in between");
  const cp = await between;
  assert.equal(cp.size, 11);
  assert.equal(tree.builds, builds, "the tree was rebuilt from disk");
  assert.deepEqual(
    vault.inclusionProof(KEY, 11, 11).leaf,
    docLeaf({ seq: 11, ts: 1, recvTs: 5, line: te.encode("eleven") }),
  );
  await vault.close();
});

test("Vault with libcrypto's SHA-256 and its batch loops installed (as moat serve and moat vault run) writes the same records, chain and tree, byte for byte, as the portable path, and verifies", async () => {
  using tmp = tempDir();
  const gc = (globalThis as { Bun?: { gc(force: boolean): void } }).Bun?.gc;
  const write = async (dir: string) => {
    const vault = await openVault(dir, {
      sealIntervalMs: 0,
      segmentBytes: 65536,
    });
    // Many small chunks and a few large ones, several segments.
    await fill(vault, 1500, [], 21);
    const big = Array.from({ length: 2500 }, (_, i) => ({
      seq: 1501 + i,
      ts: 5000 + i,
      line: te.encode(`big ${i} ${"y".repeat(i % 200)}`),
    }));
    for (let i = 0; i < big.length; i += 1000) {
      await vault.append(KEY, big.slice(i, i + 1000), { recvTs: 77 });
      // A collection between appends (where the runtime offers one): an
      // address kept across calls went stale when storage moved.
      gc?.(true);
    }
    await vault.close();
    return path.join(
      dir,
      "sources",
      fs.readdirSync(path.join(dir, "sources"))[0]!,
    );
  };
  // Native first: in a process where the portable path ran first, the
  // arrays hashed from may have settled where they stay.
  assert.ok(nativeSha256Parts() !== undefined || process.platform !== "linux");
  setNativeSha256(nativeSha256Parts);
  setNativeSha256Batch(nativeSha256Batch);
  let native: string;
  try {
    if (navigator.userAgent.startsWith("Bun") && process.platform === "linux") {
      assert.ok(nativeSha256Batch() !== undefined, "the batch did not load");
    }
    const before = TreeHasher.hashed;
    native = await write(path.join(tmp.dir, "native"));
    const report = await verifyVault(path.join(tmp.dir, "native"), {});
    assert.deepEqual(report.problems, []);
    // One source: hashed on this thread (the tree worker takes chunks once
    // several sources append; tests/vault_tree_worker_test.ts).
    assert.equal(TreeHasher.hashed, before);
  } finally {
    setNativeSha256(undefined);
    setNativeSha256Batch(undefined);
  }
  const portable = await write(path.join(tmp.dir, "portable"));
  const files = (dir: string) =>
    fs.readdirSync(dir).filter((f) => f === "tree" || f.endsWith(".seg"))
      .sort();
  assert.deepEqual(files(native), files(portable));
  assert.ok(files(portable).length >= 3);
  for (const f of files(portable)) {
    const a = fs.readFileSync(path.join(portable, f));
    const b = fs.readFileSync(path.join(native, f));
    if (f === "tree") {
      assert.ok(a.equals(b), "the trees differ");
      continue;
    }
    // Segments: the same records; the vault ids (and so the chain's
    // genesis and every link) differ between the two vaults, so compare
    // each record's leaf fields and line through the tree's leaves above.
    assert.equal(a.length, b.length, f);
  }
});

test("Vault.storeCosigned keeps a witness's cosigned checkpoint and refuses one that is not the tree's", async () => {
  using tmp = tempDir();
  const kept: Kept[] = [];
  const vault = await open(tmp.dir);
  await fill(vault, 30, kept, 8);
  const cp = await vault.checkpoint(KEY);
  const witness = parseSigner(
    generateKey("witness.test", COSIGNATURE_V1).signer,
  );
  const body = cp.note.slice(0, cp.note.indexOf("\n\n") + 1);
  const cosigned = cp.note + cosign(body, witness, 1_700_000_000);
  await vault.storeCosigned(KEY, cosigned);
  const log = fs.readFileSync(
    path.join(sourceDir(tmp.dir), "checkpoints"),
    "utf8",
  );
  assert.ok(log.includes(JSON.stringify(cosigned).slice(1, -1)));
  // Another vault's checkpoint of the same source, and a forged root.
  using other = tempDir();
  const stranger = await open(other.dir);
  await fill(stranger, 30, [], 8);
  const theirs = await stranger.checkpoint(KEY);
  await stranger.close();
  await assert.rejects(
    vault.storeCosigned(KEY, theirs.note),
    (e: Error & { code?: string }) => e.code === "ERR_CHECKPOINT",
  );
  await assert.rejects(
    vault.storeCosigned(KEY, cp.note.replace("\n30\n", "\n31\n")),
    (e: Error & { code?: string }) => e.code === "ERR_CHECKPOINT",
  );
  await vault.close();
});

test("verifyVault with outside checkpoints catches a rolled-back copy, a cut tail and a rewritten history", async () => {
  using tmp = tempDir();
  const main = path.join(tmp.dir, "main");
  const kept: Kept[] = [];
  let vault = await open(main);
  await fill(vault, 100, kept, 9);
  const cp100 = await vault.checkpoint(KEY);
  await vault.close();
  const old = path.join(tmp.dir, "old");
  fs.cpSync(main, old, { recursive: true });
  vault = await open(main);
  await vault.append(
    KEY,
    Array.from({ length: 50 }, (_, i) => ({
      seq: 101 + i,
      ts: 1,
      line: te.encode(`real ${101 + i}`),
    })),
  );
  const cp150 = await vault.checkpoint(KEY);
  await vault.close();
  const held = [
    { file: "shipper-100.cp", note: cp100.note },
    { file: "witness-150.cp", note: cp150.note },
  ];

  // The vault as it is extends both.
  const clean = await verifyVault(main, { checkpoints: held });
  assert.deepEqual(clean.problems, []);
  assert.equal(clean.sources[0]!.tree?.outside, 2);

  // The older copy put back: names the checkpoint it contradicts.
  const rolled = await verifyVault(old, { checkpoints: held });
  assert.deepEqual(
    rolled.problems.map((p) => [p.kind, p.file]),
    [["checkpoint", "witness-150.cp"]],
  );
  assert.match(rolled.problems[0]!.message, /rolled back/);

  // The newest records cut (at a record boundary, nothing else touched).
  const cut = path.join(tmp.dir, "cut");
  fs.cpSync(main, cut, { recursive: true });
  const dir = sourceDir(cut);
  const lastSeg = fs.readdirSync(dir).filter((f) => f.endsWith(".seg")).sort()
    .at(-1)!;
  fs.rmSync(path.join(dir, lastSeg));
  const cutReport = await verifyVault(cut, { checkpoints: held });
  assert.ok(
    cutReport.problems.some((p) =>
      p.kind === "checkpoint" && p.file === "witness-150.cp"
    ),
  );

  // A fork: the old copy continued with other records (rewritten history).
  vault = await open(old);
  await vault.append(
    KEY,
    Array.from({ length: 50 }, (_, i) => ({
      seq: 101 + i,
      ts: 1,
      line: te.encode(`forged ${101 + i}`),
    })),
  );
  assert.equal((await vault.checkpoint(KEY)).size, 150);
  await vault.close();
  const forked = await verifyVault(old, { checkpoints: held });
  assert.deepEqual(
    forked.problems.map((p) => [p.kind, p.file]),
    [["checkpoint", "witness-150.cp"]],
  );
  assert.match(forked.problems[0]!.message, /rewritten/);

  // A checkpoint of this source under another key (a fork shown to a
  // shipper under a key of the intruder's), and one of another source.
  const origin = openCheckpoint(
    cp150.note,
    parseVerifier(
      JSON.parse(fs.readFileSync(path.join(main, "vault.json"), "utf8"))
        .checkpointKey,
    ),
  ).origin;
  const stranger = parseSigner(generateKey("moat/x").signer);
  const elsewhere = origin.replace(/[0-9a-f]{64}$/, "0".repeat(64));
  const foreign = await verifyVault(main, {
    checkpoints: [
      {
        file: "other-key.cp",
        note: signCheckpoint({ origin, size: 150, root: cp150.root }, stranger),
      },
      {
        file: "gone-source.cp",
        note: signCheckpoint(
          { origin: elsewhere, size: 1, root: cp150.root },
          parseSigner(
            fs.readFileSync(path.join(main, "checkpoint.key"), "utf8"),
          ),
        ),
      },
    ],
  });
  assert.deepEqual(
    foreign.problems.map((p) => [p.kind, p.file]),
    [["checkpoint", "other-key.cp"], ["checkpoint", "gone-source.cp"]],
  );

  // A stored tree that no longer matches its records.
  const treeFile = path.join(sourceDir(main), "tree");
  const bytes = fs.readFileSync(treeFile);
  bytes[64] = bytes[64]! ^ 0x80;
  fs.writeFileSync(treeFile, bytes);
  const damaged = await verifyVault(main);
  assert.deepEqual(damaged.problems.map((p) => p.kind), ["tree"]);
});

test("verifyVault with required witnesses fails closed: no checkpoint key, no cosignature past the grace, no checkpoint logged, an unreadable log", async () => {
  using tmp = tempDir();
  const vault = await open(tmp.dir);
  await fill(vault, 20, []);
  await vault.checkpoint(KEY);
  await vault.close();
  const w = parseVerifier(generateKey("w.test", COSIGNATURE_V1).verifier);
  const later = Date.now() + 3_600_000;
  // Within the grace, an uncosigned latest checkpoint is not yet damage.
  assert.deepEqual(
    (await verifyVault(tmp.dir, { witnesses: [w] })).problems,
    [],
  );
  // Past it, it is.
  const late = await verifyVault(tmp.dir, { witnesses: [w], now: later });
  assert.deepEqual(late.problems.map((p) => p.kind), ["witness"]);
  assert.match(late.problems[0]!.message, /not cosigned by witness w\.test/);
  // A source with no checkpoint logged at all, older than the grace.
  const log = path.join(sourceDir(tmp.dir), "checkpoints");
  const kept = fs.readFileSync(log);
  fs.writeFileSync(log, "");
  const none = await verifyVault(tmp.dir, { witnesses: [w], now: later });
  assert.ok(
    none.problems.some((p) => /no checkpoint is logged/.test(p.message)),
  );
  // A log that cannot be read.
  fs.rmSync(log);
  fs.mkdirSync(log);
  const unreadable = await verifyVault(tmp.dir, { witnesses: [w] });
  assert.ok(
    unreadable.problems.some((p) =>
      p.kind === "witness" && /cannot be read/.test(p.message)
    ),
    JSON.stringify(unreadable.problems),
  );
  fs.rmdirSync(log);
  fs.writeFileSync(log, kept);
  // No checkpoint key in vault.json: nothing can be checked, so damage.
  const infoFile = path.join(tmp.dir, "vault.json");
  const info = JSON.parse(fs.readFileSync(infoFile, "utf8"));
  delete info.checkpointKey;
  fs.writeFileSync(infoFile, JSON.stringify(info));
  const keyless = await verifyVault(tmp.dir, { witnesses: [w] });
  assert.ok(
    keyless.problems.some((p) =>
      p.kind === "witness" && /needs the vault's checkpoint key/.test(p.message)
    ),
  );
});
