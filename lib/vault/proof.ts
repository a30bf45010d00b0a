/**
 * Proofs for anyone: the latest signed checkpoint of a source, inclusion and
 * consistency proofs as JSON (read from the vault's files, no server or lock
 * needed), and their offline check with only the vault's public key
 * (`moat verify-proof`). The JSON form: `docs/VAULT.md`, "Proofs".
 *
 * @module
 */

import { statSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { openCheckpoint, parseVerifier } from "../checkpoint.ts";
import type { Verifier } from "../checkpoint.ts";
import { ExitCode, MoatError } from "../errors.ts";
import {
  HASH_BYTES,
  leafHash,
  verifyConsistency,
  verifyInclusion,
} from "../merkle.ts";
import { listSegments } from "../segment/scanner.ts";
import { _equal } from "./_chain.ts";
import { readSourceKey, SOURCES_DIR } from "./_format.ts";
import { matchesSource, sourceHash, sourceLabel } from "./_key.ts";
import type { SourceKey } from "./_key.ts";
import { readVaultInfo } from "./_seal.ts";
import {
  checkpointOrigin,
  firstSeqOf,
  openLoggedTree,
} from "./_checkpoints.ts";
import { leafOfRecord, RecordLocator } from "./_tree_file.ts";
import { decodeLeaf } from "./leaf.ts";
import type { Leaf } from "./leaf.ts";

/** `moat vault proof --seq`: a record's inclusion proof. */
export interface InclusionProofJson {
  type: "inclusion";
  /** The source's label (for people; the checkpoint's origin is what counts). */
  source: string;
  /** The record's sequence number. */
  seq: number;
  /** Its leaf index: seq minus the tree's first sequence number. */
  index: number;
  /** The tree size the proof is for (the checkpoint's). */
  treeSize: number;
  /** The leaf bytes, hex (`docs/VAULT.md`, "Leaf encoding"). */
  leaf: string;
  /** SHA-256(0x00 ‖ leaf), hex. */
  leafHash: string;
  /** The audit path, deepest sibling first, hex. */
  path: string[];
  /** The signed checkpoint the proof leads to. */
  checkpoint: string;
}

/** `moat vault proof --from`: a consistency proof. */
export interface ConsistencyProofJson {
  type: "consistency";
  /** The source's label. */
  source: string;
  /** The older tree size. */
  from: number;
  /** The vault's root at that size, hex: compare it with the checkpoint you hold. */
  fromRoot: string;
  /** The newer tree size (the checkpoint's). */
  treeSize: number;
  /** The consistency proof, hex. */
  proof: string[];
  /** The signed checkpoint of the newer size. */
  checkpoint: string;
}

/** What {@linkcode verifyProof} established. */
export type VerifiedProof =
  | {
    type: "inclusion";
    origin: string;
    treeSize: number;
    index: number;
    /** The record the leaf holds. */
    record: Leaf;
  }
  | {
    type: "consistency";
    origin: string;
    from: number;
    fromRoot: Uint8Array;
    treeSize: number;
  };

function fail(message: string): never {
  throw new MoatError("ERR_CHECKPOINT", message);
}

/** The one source `filter` names, and the vault's checkpoint verifier. */
async function _locate(
  dir: string,
  filter: string,
): Promise<
  {
    root: string;
    key: SourceKey;
    path: string;
    origin: string;
    verifier: Verifier;
  }
> {
  const root = resolve(dir);
  const info = await readVaultInfo(root);
  if (info === undefined) {
    throw new MoatError(
      "ERR_NOT_VAULT",
      `Cannot read "${root}": it has no vault.json`,
      ExitCode.Usage,
    );
  }
  const found: { key: SourceKey; path: string }[] = [];
  for (const id of (await readdir(join(root, SOURCES_DIR))).sort()) {
    if (id.startsWith(".")) continue;
    const path = join(root, SOURCES_DIR, id);
    const key = await readSourceKey(path, id);
    if (matchesSource(key, filter)) found.push({ key, path });
  }
  if (found.length === 0) {
    throw new MoatError(
      "ERR_NO_SOURCE",
      `No source in vault "${root}" matches --source "${filter}" (see moat vault ls)`,
      ExitCode.NotFound,
    );
  }
  if (found.length > 1) {
    throw new TypeError(
      `--source "${filter}" matches ${found.length} sources (${
        found.map((f) => sourceLabel(f.key)).join(", ")
      }): give PEER/NAME`,
    );
  }
  if (info.checkpointKey === undefined) {
    throw new MoatError(
      "ERR_CHECKPOINT",
      `Vault "${root}" has no checkpoint key yet: moat serve makes one (and the Merkle trees) at its next start`,
    );
  }
  const { key, path } = found[0]!;
  return {
    root,
    key,
    path,
    origin: checkpointOrigin(info.id, sourceHash(key)),
    verifier: parseVerifier(info.checkpointKey),
  };
}

async function _tree(dir: string, source: string) {
  const where = await _locate(dir, source);
  const tree = await openLoggedTree(where.path, where.verifier, where.origin);
  if (tree === undefined) {
    throw new MoatError(
      "ERR_CHECKPOINT",
      `Source "${
        sourceLabel(where.key)
      }" has no checkpoint yet: the server logs one every seal interval and when it stops`,
    );
  }
  return { ...where, tree };
}

/**
 * The latest checkpoint a source's log holds (what `moat vault checkpoint`
 * prints).
 *
 * @param dir The vault directory.
 * @param source The source: its name, or PEER/NAME.
 * @returns The signed note, its size and the source's label.
 * @throws {MoatError} `ERR_NO_SOURCE` if no source matches; `ERR_CHECKPOINT`
 * if none was logged; `ERR_CORRUPT` if the stored tree does not give its root.
 * @throws {TypeError} If `source` matches more than one source.
 */
export async function latestCheckpoint(
  dir: string,
  source: string,
): Promise<{ note: string; size: number; source: string }> {
  const { key, tree } = await _tree(dir, source);
  return {
    note: tree.checkpoint.note,
    size: tree.checkpoint.size,
    source: sourceLabel(key),
  };
}

/**
 * The inclusion proof of record `seq` in the tree of the latest logged
 * checkpoint.
 *
 * @param dir The vault directory.
 * @param source The source.
 * @param seq The record's sequence number.
 * @returns The proof as JSON.
 * @throws {RangeError} For a record the checkpoint does not cover, or one
 * pruned.
 * @throws {MoatError} As {@linkcode latestCheckpoint}; `ERR_CORRUPT` if the
 * record on disk does not match the tree.
 */
export async function proveInclusion(
  dir: string,
  source: string,
  seq: number,
): Promise<InclusionProofJson> {
  const { key, path, tree } = await _tree(dir, source);
  const label = sourceLabel(key);
  const size = tree.checkpoint.size;
  const index = seq - tree.first;
  if (!Number.isSafeInteger(seq) || index < 0 || index >= size) {
    throw new RangeError(
      `Record ${seq} of "${label}" is not covered by its latest checkpoint (records ${tree.first} to ${
        tree.first + size - 1
      })`,
    );
  }
  const segments = (await listSegments(path)).map((s) => ({
    ...s,
    size: statSync(s.path).size,
  }));
  if (segments.length === 0 || seq < segments[0]!.firstSeq) {
    throw new RangeError(`Record ${seq} of "${label}" was pruned`);
  }
  const record = new RecordLocator().read(seq, segments);
  if (record === undefined) {
    throw new RangeError(`Record ${seq} of "${label}" is not held`);
  }
  const leaf = leafOfRecord(record, sourceHash(key));
  const hash = leafHash(leaf);
  const auditPath = tree.file.reading(() => {
    if (!_equal(hash, tree.file.get(0, index))) {
      throw new MoatError(
        "ERR_CORRUPT",
        `Record ${seq} of "${label}" does not match its leaf in the Merkle tree`,
      );
    }
    return tree.log.inclusionProof(index, size);
  });
  return {
    type: "inclusion",
    source: label,
    seq,
    index,
    treeSize: size,
    leaf: leaf.toHex(),
    leafHash: hash.toHex(),
    path: auditPath.map((node) => node.toHex()),
    checkpoint: tree.checkpoint.note,
  };
}

/**
 * The consistency proof from tree size `from` to the latest logged
 * checkpoint.
 *
 * @param dir The vault directory.
 * @param source The source.
 * @param from The older size (a checkpoint you hold).
 * @returns The proof as JSON.
 * @throws {RangeError} If `from` is beyond the latest checkpoint.
 * @throws {MoatError} As {@linkcode latestCheckpoint}.
 */
export async function proveConsistency(
  dir: string,
  source: string,
  from: number,
): Promise<ConsistencyProofJson> {
  const { key, tree } = await _tree(dir, source);
  const size = tree.checkpoint.size;
  if (!Number.isSafeInteger(from) || from < 0 || from > size) {
    throw new RangeError(
      `Tree size ${from} is beyond the latest checkpoint of "${
        sourceLabel(key)
      }" (${size} records): the vault holds less than your checkpoint says`,
    );
  }
  const { proof, fromRoot } = tree.file.reading(() => ({
    proof: tree.log.consistencyProof(from, size),
    fromRoot: tree.log.root(from),
  }));
  return {
    type: "consistency",
    source: sourceLabel(key),
    from,
    fromRoot: fromRoot.toHex(),
    treeSize: size,
    proof: proof.map((node) => node.toHex()),
    checkpoint: tree.checkpoint.note,
  };
}

function _bytes(value: unknown, what: string): Uint8Array {
  if (typeof value !== "string" || !/^([0-9a-f]{2})*$/.test(value)) {
    fail(`proof field ${what} is not lowercase hex`);
  }
  return Uint8Array.fromHex(value);
}

function _hashes(value: unknown, what: string): Uint8Array[] {
  if (!Array.isArray(value) || value.length > 64) {
    fail(`proof field ${what} is not a list of at most 64 hashes`);
  }
  return value.map((v, i) => {
    const b = _bytes(v, `${what}[${i}]`);
    if (b.length !== HASH_BYTES) {
      fail(`proof field ${what}[${i}] is not 32 bytes`);
    }
    return b;
  });
}

function _count(value: unknown, what: string): number {
  if (!Number.isSafeInteger(value) || (value as number) < 0) {
    fail(`proof field ${what} is not a non-negative integer`);
  }
  return value as number;
}

/**
 * Checks a proof offline with only the vault's public key: the checkpoint's
 * signature, that the proof leads to its root, and (inclusion) that the
 * leaf is the record the proof names, of the source the checkpoint names,
 * at its index.
 *
 * @param proof The parsed JSON of `moat vault proof`.
 * @param key The vault's checkpoint verifier key.
 * @param options `held`: a checkpoint the caller holds, for a consistency
 * proof: it must be of the same origin and have the proof's `from` size and
 * root.
 * @returns What the proof shows.
 * @throws {MoatError} `ERR_CHECKPOINT` for a malformed proof, a bad
 * signature, or a proof that does not verify.
 */
export function verifyProof(
  proof: unknown,
  key: string,
  options: { held?: string } = {},
): VerifiedProof {
  const verifier = parseVerifier(key);
  if (typeof proof !== "object" || proof === null) {
    fail("proof is not a JSON object");
  }
  const p = proof as Record<string, unknown>;
  if (typeof p.checkpoint !== "string") fail("proof has no checkpoint");
  const cp = openCheckpoint(p.checkpoint, verifier);
  const m = /^moat\/[0-9a-f]{32}\/([0-9a-f]{64})$/.exec(cp.origin);
  if (m === null) fail(`checkpoint origin ${cp.origin} is not a moat source`);
  const treeSize = _count(p.treeSize, "treeSize");
  if (treeSize !== cp.size) {
    fail(`proof is for a tree of ${treeSize}, its checkpoint of ${cp.size}`);
  }
  if (p.type === "inclusion") {
    const leaf = _bytes(p.leaf, "leaf");
    const index = _count(p.index, "index");
    const path = _hashes(p.path, "path");
    const record = decodeLeaf(leaf);
    if (record.source.toHex() !== m[1]) {
      fail("the leaf is of another source than the checkpoint");
    }
    const first = firstSeqOf(cp.extensions);
    if (record.seq - first !== index) {
      fail(
        `the leaf holds record ${record.seq}, which is leaf ${
          record.seq - first
        }, not ${index}`,
      );
    }
    if (p.seq !== undefined && p.seq !== record.seq) {
      fail(`the proof names record ${p.seq}, its leaf holds ${record.seq}`);
    }
    if (
      p.leafHash !== undefined &&
      !_equal(_bytes(p.leafHash, "leafHash"), leafHash(leaf))
    ) fail("leafHash is not the hash of the leaf");
    if (!verifyInclusion(leafHash(leaf), index, treeSize, path, cp.root)) {
      fail(
        `inclusion proof of record ${record.seq} does not lead to the checkpoint's root`,
      );
    }
    return { type: "inclusion", origin: cp.origin, treeSize, index, record };
  }
  if (p.type === "consistency") {
    const from = _count(p.from, "from");
    const fromRoot = _bytes(p.fromRoot, "fromRoot");
    if (fromRoot.length !== HASH_BYTES) fail("fromRoot is not 32 bytes");
    const steps = _hashes(p.proof, "proof");
    if (options.held !== undefined) {
      const held = openCheckpoint(options.held, verifier);
      if (held.origin !== cp.origin) {
        fail(
          `the held checkpoint is of ${held.origin}, the proof of ${cp.origin}`,
        );
      }
      if (held.size !== from || !_equal(held.root, fromRoot)) {
        fail(
          `the held checkpoint (${held.size} records) is not the proof's starting point (${from} records and its root): the vault's history differs from the one you hold`,
        );
      }
    }
    if (!verifyConsistency(from, treeSize, fromRoot, cp.root, steps)) {
      fail(
        `the tree of ${treeSize} records does not extend the tree of ${from}: a fork or a rewritten history`,
      );
    }
    return { type: "consistency", origin: cp.origin, from, fromRoot, treeSize };
  }
  fail(`unknown proof type ${JSON.stringify(p.type)}`);
}
