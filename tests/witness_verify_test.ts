/**
 * `lib/witness/verify.ts`: what `vault verify --witness-key` requires of a
 * source's checkpoint log.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  addSignatures,
  cosign,
  COSIGNATURE_V1,
  generateKey,
  parseSigner,
  parseVerifier,
  splitNote,
} from "../lib/checkpoint.ts";
import { checkWitnessed } from "../lib/witness/verify.ts";
import { TestLog } from "./_witness.ts";

const MIN = 60_000;
const T0 = 1_700_000_000_000;

function witnessKey(name: string) {
  const k = generateKey(name, COSIGNATURE_V1);
  return { signer: parseSigner(k.signer), verifier: parseVerifier(k.verifier) };
}

function cosigned(note: string, w: ReturnType<typeof witnessKey>): string {
  return addSignatures(note, cosign(splitNote(note).body, w.signer, T0 / 1000));
}

test("checkWitnessed passes a log whose latest checkpoint is cosigned, and lists the cosigned ones", () => {
  const log = new TestLog().grow(10);
  const w = witnessKey("w1");
  const first = log.note();
  log.grow(5);
  const entries = [
    { note: first, time: T0 },
    { note: cosigned(first, w), time: T0 + 1000 },
    { note: log.note(), time: T0 + MIN },
    { note: cosigned(log.note(), w), time: T0 + MIN + 1000 },
  ];
  const r = checkWitnessed(entries, {
    vault: parseVerifier(log.verifier),
    witnesses: [w.verifier],
    now: T0 + 60 * MIN,
    graceMs: 10 * MIN,
  });
  assert.deepEqual(r.problems, []);
  assert.deepEqual(r.cosigned.map((c) => [c.witness, c.size]), [
    ["w1", 10],
    ["w1", 15],
  ]);
  assert.deepEqual(r.witnessed, { w1: 15 });
  assert.deepEqual(r.latest, { size: 15, time: T0 + MIN + 1000 });
});

test("checkWitnessed fails a latest checkpoint past the grace that a witness did not cosign, and not one within it", () => {
  const log = new TestLog().grow(10);
  const w = witnessKey("w1");
  const other = witnessKey("w2");
  const entries = [
    { note: cosigned(log.note(), w), time: T0 },
    { note: log.grow(3).note(), time: T0 + MIN },
  ];
  const options = {
    vault: parseVerifier(log.verifier),
    witnesses: [w.verifier, other.verifier],
    graceMs: 10 * MIN,
  };
  const late = checkWitnessed(entries, { ...options, now: T0 + 12 * MIN });
  assert.equal(late.problems.length, 2);
  assert.match(
    late.problems[0]!,
    /latest checkpoint \(size 13, .*\) is not cosigned by witness w1, which cosigned up to size 10/,
  );
  assert.match(late.problems[1]!, /witness w2, which cosigned none/);
  const soon = checkWitnessed(entries, { ...options, now: T0 + 5 * MIN });
  assert.deepEqual(soon.problems, []);
});

test("checkWitnessed fails a cosignature that does not verify, and a checkpoint the vault did not sign", () => {
  const log = new TestLog().grow(4);
  const w = witnessKey("w1");
  const good = cosigned(log.note(), w);
  // The cosignature line of another checkpoint pasted onto this one.
  const pasted = log.note(3) + good.slice(good.lastIndexOf("\u2014 w1"));
  const stranger = new TestLog().grow(4).note();
  const r = checkWitnessed([
    { note: pasted, time: T0 },
    { note: stranger, time: T0 },
  ], {
    vault: parseVerifier(log.verifier),
    witnesses: [w.verifier],
    now: T0,
    graceMs: MIN,
  });
  assert.equal(r.problems.length, 2);
  assert.match(r.problems[0]!, /size 3: cosignature by w1 does not verify/);
  assert.match(r.problems[1]!, /not signed by vault\.test/);
  assert.deepEqual(r.cosigned, []);
});
