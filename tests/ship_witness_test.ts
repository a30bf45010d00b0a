/**
 * The receipt frames' codecs, and the shipper's witness: which checkpoints
 * it accepts, and that it stops, naming both checkpoints, on anything that
 * does not extend the one it holds; the audit sample and its check. Pure:
 * no sockets, no vault.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { generateKey, parseSigner, signCheckpoint } from "../lib/checkpoint.ts";
import { MoatError, ProtocolError } from "../lib/errors.ts";
import { leafHash, MemoryNodeStore, MerkleLog } from "../lib/merkle.ts";
import {
  decodeHello,
  decodeShipProof,
  decodeShipProve,
  decodeShipReady,
  decodeShipReceipt,
  encodeJson,
  encodeShipProof,
  encodeShipProve,
  encodeShipReceipt,
  SHIP_NOTE_MAX,
  SHIP_PROOF_HASHES_MAX,
  SHIP_RECEIPT_MAX,
} from "../lib/protocol.ts";
import { type HeldCheckpoint, Witness } from "../lib/ship/witness.ts";
import { checkAudit, SpotCheck } from "../lib/ship/spot_check.ts";
import { encodeLeaf } from "../lib/vault/leaf.ts";

const ORIGIN = `moat/${"ab".repeat(16)}/${"cd".repeat(32)}`;

/** A log of n leaves with a key, signing checkpoints of any size. */
function testLog(
  options: { name?: string; origin?: string; leaves?: number; tag?: string } =
    {},
) {
  const { signer, verifier } = generateKey(options.name ?? "moat/vault");
  const key = parseSigner(signer);
  const log = new MerkleLog(new MemoryNodeStore());
  const tag = options.tag ?? "line";
  const add = (n: number) => {
    for (let i = 0; i < n; i++) {
      log.append(leafHash(new TextEncoder().encode(`${tag} ${log.size}`)));
    }
  };
  add(options.leaves ?? 0);
  return {
    verifier,
    signer,
    log,
    add,
    note(size = log.size, origin = options.origin ?? ORIGIN) {
      return signCheckpoint({ origin, size, root: log.root(size) }, key);
    },
    receipt(from: number, size = log.size) {
      return {
        from,
        note: this.note(size),
        proof: log.consistencyProof(from, size),
      };
    },
  };
}

/** A witness with an in-memory store: what it keeps is in `kept`. */
function testWitness(
  saved: { vaultKey?: string; checkpoint?: string } = {},
  given?: string,
) {
  const kept: { vaultKey: string; checkpoint: string }[] = [];
  const witness = new Witness({
    store: {
      ...saved,
      keep: (vaultKey, checkpoint) => kept.push({ vaultKey, checkpoint }),
    },
    vaultKey: given,
    stateFile: "/state/ship.json",
  });
  return { witness, kept };
}

function rollback(fn: () => unknown, ...patterns: RegExp[]): string {
  let message = "";
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof MoatError, String(err));
    assert.equal(err.code, "ERR_ROLLBACK");
    assert.equal(err.exitCode, 5);
    message = err.message;
    return true;
  });
  assert.match(message, /^ROLLBACK OR FORK: /);
  assert.doesNotMatch(message, /\n/);
  for (const p of patterns) assert.match(message, p);
  return message;
}

function b64(root: Uint8Array): string {
  return Buffer.from(root).toString("base64").replace(/[+/=]/g, "\\$&");
}

test("ShipReceipt, ShipProve and ShipProof round-trip, and malformed payloads are refused", () => {
  const proof = [new Uint8Array(32).fill(1), new Uint8Array(32).fill(2)];
  const note = "o\n1\nAAAA\n\n\u2014 k AAAA\n";
  const r = encodeShipReceipt({ from: 7, note, proof });
  assert.deepEqual(decodeShipReceipt(r), { from: 7, note, proof });
  // from, length, the note's UTF-8, count, hashes.
  assert.equal(
    r.length,
    8 + 2 + new TextEncoder().encode(note).length + 1 + 64,
  );
  assert.throws(
    () => decodeShipReceipt(r.subarray(0, r.length - 1)),
    ProtocolError,
  );
  const bad = r.slice();
  bad[10] = 0xff;
  assert.throws(() => decodeShipReceipt(bad), /not UTF-8/);
  const tooMany = r.slice();
  tooMany[r.length - 65] = SHIP_PROOF_HASHES_MAX + 1;
  assert.throws(() => decodeShipReceipt(tooMany), ProtocolError);
  assert.throws(
    () => decodeShipReceipt(new Uint8Array(SHIP_RECEIPT_MAX + 1)),
    ProtocolError,
  );
  assert.throws(
    () =>
      encodeShipReceipt({
        from: 0,
        note: "x".repeat(SHIP_NOTE_MAX + 1),
        proof: [],
      }),
    RangeError,
  );
  // The largest receipt fits the bound the server checks frames against.
  const largest = encodeShipReceipt({
    from: 2 ** 52,
    note: "x".repeat(SHIP_NOTE_MAX),
    proof: Array.from(
      { length: SHIP_PROOF_HASHES_MAX },
      () => new Uint8Array(32),
    ),
  });
  assert.equal(largest.length, SHIP_RECEIPT_MAX);

  assert.deepEqual(decodeShipProve(encodeShipProve({ seq: 5, size: 9 })), {
    seq: 5,
    size: 9,
  });
  assert.throws(() => decodeShipProve(new Uint8Array(15)), ProtocolError);
  assert.throws(
    () => decodeShipProve(encodeShipProve({ seq: 0, size: 9 })),
    ProtocolError,
  );
  assert.throws(
    () => decodeShipProve(encodeShipProve({ seq: 1.5, size: 9 })),
    ProtocolError,
  );

  const found = {
    seq: 3,
    size: 9,
    found: true,
    leaf: new Uint8Array([1, 2, 3]),
    path: proof,
  };
  assert.deepEqual(decodeShipProof(encodeShipProof(found)), found);
  const missing = {
    seq: 3,
    size: 9,
    found: false,
    leaf: new Uint8Array(0),
    path: [],
  };
  assert.deepEqual(decodeShipProof(encodeShipProof(missing)), missing);
  assert.equal(encodeShipProof(missing).length, 17);
  const cut = encodeShipProof(found);
  assert.throws(
    () => decodeShipProof(cut.subarray(0, cut.length - 1)),
    ProtocolError,
  );
  const status = cut.slice();
  status[16] = 2;
  assert.throws(() => decodeShipProof(status), ProtocolError);
});

test("decodeHello takes a ship's receipts size, decodeShipReady its vaultKey; both are optional", () => {
  const hello = {
    client: "moat/x",
    mode: "ship",
    maxFrameSize: 1 << 20,
    source: "a",
  };
  assert.equal(decodeHello(encodeJson(hello)).receipts, undefined);
  assert.equal(
    decodeHello(encodeJson({ ...hello, receipts: 12 })).receipts,
    12,
  );
  assert.throws(
    () => decodeHello(encodeJson({ ...hello, receipts: -1 })),
    ProtocolError,
  );
  const ready = { peer: "127.0.0.1", source: "a", lastSeq: 3 };
  assert.equal(decodeShipReady(encodeJson(ready)).vaultKey, undefined);
  assert.equal(
    decodeShipReady(encodeJson({ ...ready, vaultKey: "k+1+A" })).vaultKey,
    "k+1+A",
  );
  assert.throws(
    () => decodeShipReady(encodeJson({ ...ready, vaultKey: "" })),
    ProtocolError,
  );
  assert.throws(
    () => decodeShipReady(encodeJson({ ...ready, vaultKey: 5 })),
    ProtocolError,
  );
});

test("Witness pins the key at first contact and accepts checkpoints that extend the one held", () => {
  const v = testLog({ leaves: 5 });
  const { witness, kept } = testWitness();
  assert.equal(witness.size, 0);
  assert.equal(witness.keyed, false);
  // An unsigned vault is fine before any key is known.
  assert.equal(witness.offered(undefined, "h:1"), false);
  assert.equal(witness.offered(v.verifier, "h:1"), true);
  const first = witness.accept(v.receipt(0), 5);
  assert.equal(first.size, 5);
  assert.equal(witness.covered, 5);
  assert.deepEqual(kept.map((k) => k.vaultKey), [v.verifier]);
  v.add(7);
  assert.equal(witness.accept(v.receipt(5), 12).size, 12);
  // The same size again is no news, and not kept again.
  witness.accept(v.receipt(12), 12);
  assert.equal(kept.length, 2);
  assert.equal(kept[1]!.checkpoint, v.note(12));

  // A restarted shipper reopens what it kept, and checks the next one.
  const again = testWitness(kept[1]!).witness;
  assert.equal(again.size, 12);
  assert.equal(again.keyed, true);
  again.offered(v.verifier, "h:1");
  v.add(1);
  assert.equal(again.accept(v.receipt(12), 13).size, 13);
});

test("Witness reports a smaller tree, another root, a failed proof, another log, and an ack beyond the checkpoint", () => {
  const v = testLog({ leaves: 20 });
  const held = () => {
    const w = testWitness().witness;
    w.offered(v.verifier, "127.0.0.1:4320");
    w.accept(v.receipt(0, 20), 20);
    return w;
  };
  const heldRoot = b64(v.log.root(20));

  // Rollback: the vault shows an older tree.
  let w = held();
  rollback(
    () => w.accept({ from: 20, note: v.note(12), proof: [] }, 12),
    /showed checkpoint "moat\/[0-9a-f]+\/[0-9a-f]+" size 12 root /,
    new RegExp(
      `holds, "moat/[0-9a-f]+/[0-9a-f]+" size 20 root ${heldRoot} \\(a smaller tree\\)`,
    ),
    /the state "\/state\/ship.json" are kept/,
    /127\.0\.0\.1:4320/,
  );
  // What it holds does not change.
  assert.equal(w.size, 20);

  // Fork: another tree of the same size, signed by the same key.
  const forked = testLog({ leaves: 20, tag: "other" });
  const forkNote = signCheckpoint(
    { origin: ORIGIN, size: 20, root: forked.log.root() },
    parseSigner(v.signer),
  );
  w = held();
  rollback(
    () => w.accept({ from: 20, note: forkNote, proof: [] }, 20),
    /another root at the same size/,
    new RegExp(`size 20 root ${b64(forked.log.root())}`),
    new RegExp(`size 20 root ${heldRoot}`),
  );
  // A larger fork: its proof cannot hold.
  forked.add(5);
  const bigger = signCheckpoint(
    { origin: ORIGIN, size: 25, root: forked.log.root() },
    parseSigner(v.signer),
  );
  w = held();
  rollback(
    () =>
      w.accept({
        from: 20,
        note: bigger,
        proof: forked.log.consistencyProof(20),
      }, 20),
    /whose proof that it extends .* fails/,
  );

  // A tampered proof of an honest extension.
  v.add(9);
  const honest = v.receipt(20);
  honest.proof[0] = honest.proof[0]!.slice();
  honest.proof[0][0]! ^= 1;
  w = held();
  rollback(() => w.accept(honest, 29), /fails/);
  // The honest one passes.
  w = held();
  assert.equal(w.accept(v.receipt(20), 29).size, 29);

  // A proof from another size than held.
  w = held();
  rollback(
    () => w.accept(v.receipt(10), 29),
    /proof from size 10, not from 20/,
  );

  // Another log signed by the same key (another source's checkpoint).
  w = held();
  const otherOrigin = signCheckpoint(
    {
      origin: `moat/${"ab".repeat(16)}/${"ef".repeat(32)}`,
      size: 29,
      root: v.log.root(29),
    },
    parseSigner(v.signer),
  );
  rollback(
    () =>
      w.accept({
        from: 20,
        note: otherOrigin,
        proof: v.log.consistencyProof(20, 29),
      }, 29),
    /another log/,
  );

  // An ack beyond what the checkpoint signs for.
  w = held();
  rollback(
    () => w.accept(v.receipt(20), 30),
    /acknowledged records up to 30: more than it signs for/,
  );
});

test("Witness refuses another key, an unsigned vault and a bad signature once it has a key, and --vault-key", () => {
  const v = testLog({ leaves: 3 });
  const other = testLog({ leaves: 3 });
  const { witness, kept } = testWitness();
  witness.offered(v.verifier, "h:1");
  witness.accept(v.receipt(0), 3);
  const saved = kept[0]!;

  let w = testWitness(saved).witness;
  rollback(
    () => w.offered(other.verifier, "h:1"),
    /signs with key moat\/vault\+[0-9a-f]{8}\+\S+, not the key/,
    /this shipper holds "moat\/.*" size 3 root /,
  );
  w = testWitness(saved).witness;
  rollback(
    () => w.offered(undefined, "h:1"),
    /sends no signed checkpoint, but this shipper holds .* size 3/,
  );
  w = testWitness(saved).witness;
  rollback(() => w.offered("not a key", "h:1"), /malformed key/);
  // Offered the right key, but the note is signed by another one.
  w = testWitness(saved).witness;
  w.offered(v.verifier, "h:1");
  rollback(() => w.accept(other.receipt(3), 3), /does not verify/);

  // --vault-key: a vault with another key is refused at first contact.
  w = testWitness({}, v.verifier).witness;
  assert.equal(w.keyed, true);
  rollback(() => w.offered(other.verifier, "h:1"), /not the key/);
  w = testWitness({}, v.verifier).witness;
  rollback(() => w.offered(undefined, "h:1"), /expects checkpoints signed by/);
  // --vault-key other than the pinned key is refused before connecting.
  rollback(
    () => testWitness(saved, other.verifier),
    /--vault-key .* is not the key .* this shipper pinned/,
  );
  assert.throws(
    () => testWitness({}, "nonsense"),
    /ERR_CHECKPOINT|not name\+id\+key/,
  );
});

test("Witness refuses a state whose checkpoint was altered, and escapes what a vault names", () => {
  const v = testLog({ leaves: 3, origin: "moat/evil\u202e/x" });
  const { witness, kept } = testWitness();
  witness.offered(v.verifier, "h:1");
  const held: HeldCheckpoint = witness.accept(v.receipt(0), 3);
  assert.equal(held.origin, "moat/evil\u202e/x");
  const tampered = {
    ...kept[0]!,
    checkpoint: kept[0]!.checkpoint.replace("\n3\n", "\n4\n"),
  };
  assert.throws(() => testWitness(tampered), (err: unknown) => {
    assert.ok(err instanceof MoatError);
    assert.equal(err.code, "ERR_CORRUPT");
    return true;
  });
  const w = testWitness(kept[0]!).witness;
  w.offered(v.verifier, "h:1");
  const message = rollback(() =>
    w.accept({ from: 3, note: v.note(1), proof: [] }, 1)
  );
  assert.ok(!message.includes("\u202e"), message);
  assert.match(message, /evil\\u\{202e\}/);
});

test("SpotCheck samples what was sent in the last hour, and gives out only records the checkpoint covers", () => {
  let now = 0;
  const spot = new SpotCheck({ capacity: 8, maxLine: 10, now: () => now });
  const record = (seq: number, line = "x") => ({
    seq,
    ts: seq * 10,
    partial: false,
    line: new TextEncoder().encode(line),
  });
  spot.offer([record(1), record(2, "too long a line"), record(3)]);
  assert.equal(spot.size, 2);
  spot.offer(Array.from({ length: 100 }, (_, i) => record(i + 4)));
  assert.equal(spot.size, 8);
  // Nothing covered, nothing to audit.
  assert.equal(spot.take(0, 1), undefined);
  const taken = spot.take(200, 1)!;
  assert.ok(taken.seq >= 1 && taken.seq <= 103);
  assert.equal(taken.ts, taken.seq * 10);
  assert.equal(spot.size, 7);
  now += 31 * 60_000;
  spot.offer([record(500)]);
  assert.equal(spot.size, 8);
  assert.equal(spot.take(500, 500)!.seq, 500);
  // An hour on, the first half hour's records are gone.
  now += 30 * 60_000;
  assert.equal(spot.size, 0);
});

test("checkAudit accepts the record sent at its place, and names an altered, foreign, missing or unproven one", () => {
  const source = new Uint8Array(32).fill(0xcd);
  const line = new TextEncoder().encode("hello");
  const leaves = Array.from({ length: 7 }, (_, i) =>
    encodeLeaf({
      source,
      seq: i + 1,
      ts: 1000 + i,
      recvTs: 2000 + i,
      partial: false,
      line: i === 2 ? line : new TextEncoder().encode(`l${i}`),
    }));
  const log = new MerkleLog(new MemoryNodeStore());
  for (const l of leaves) log.append(leafHash(l));
  const checkpoint: HeldCheckpoint = {
    origin: ORIGIN,
    size: 7,
    root: log.root(),
    note: "",
  };
  const audit = {
    record: {
      seq: 3,
      ts: 1002,
      partial: false,
      hash: new Uint8Array(createHash("sha256").update(line).digest()),
      length: 5,
    },
    checkpoint,
    first: 1,
  };
  const proof = {
    seq: 3,
    size: 7,
    found: true,
    leaf: leaves[2]!,
    path: log.inclusionProof(2, 7),
  };
  assert.equal(checkAudit(proof, audit), undefined);
  assert.match(checkAudit({ ...proof, found: false }, audit)!, /cannot prove/);
  assert.match(checkAudit({ ...proof, leaf: leaves[3]! }, audit)!, /altered/);
  const altered = leaves[2]!.slice();
  altered[altered.length - 1]! ^= 1;
  assert.match(checkAudit({ ...proof, leaf: altered }, audit)!, /altered/);
  assert.match(
    checkAudit({ ...proof, leaf: altered.subarray(0, 10) }, audit)!,
    /malformed/,
  );
  const foreign = encodeLeaf({
    source: new Uint8Array(32),
    seq: 3,
    ts: 1002,
    recvTs: 1,
    partial: false,
    line,
  });
  assert.match(
    checkAudit({ ...proof, leaf: foreign }, audit)!,
    /another source/,
  );
  // The right leaf, but a path to another tree or place.
  const path = proof.path.map((h) => h.slice());
  path[0]![0]! ^= 1;
  assert.match(checkAudit({ ...proof, path }, audit)!, /does not lead/);
  assert.match(
    checkAudit(proof, { ...audit, first: 2 })!,
    /does not lead/,
  );
});
