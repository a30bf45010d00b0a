import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, createPublicKey, verify } from "node:crypto";
import {
  addSignatures,
  checkpointBody,
  cosign,
  COSIGNATURE_V1,
  generateKey,
  openCheckpoint,
  parseCheckpointBody,
  parseSigner,
  parseVerifier,
  signCheckpoint,
  splitNote,
  verifyCosignature,
} from "../lib/checkpoint.ts";
import { MoatError } from "../lib/errors.ts";

const root = new Uint8Array(32).fill(7);
const cp = { origin: "moat/00112233/aabb", size: 42, root };

test("checkpoint: the body is origin, size, base64 root, one per line", () => {
  assert.equal(
    checkpointBody(cp),
    `moat/00112233/aabb\n42\n${Buffer.from(root).toString("base64")}\n`,
  );
  assert.deepEqual(parseCheckpointBody(checkpointBody(cp)), {
    ...cp,
    extensions: [],
  });
  for (
    const bad of [
      "o\n42\n",
      "o\n042\nAAAA\n",
      "o\n-1\n" + Buffer.from(root).toString("base64") + "\n",
      "o\n1\n" + Buffer.from(root.subarray(1)).toString("base64") + "\n",
      "o\n1\n" + Buffer.from(root).toString("base64"),
      "o\n99999999999999999\n" + Buffer.from(root).toString("base64") + "\n",
    ]
  ) {
    assert.throws(
      () => parseCheckpointBody(bad),
      MoatError,
      JSON.stringify(bad),
    );
  }
});

test("checkpoint: a signed note verifies with the signed-note rules, as another implementation would check it", () => {
  const { signer, verifier } = generateKey("vault.test");
  assert.match(
    signer,
    /^PRIVATE\+KEY\+vault\.test\+[0-9a-f]{8}\+[A-Za-z0-9+/]+=*$/,
  );
  assert.match(verifier, /^vault\.test\+[0-9a-f]{8}\+[A-Za-z0-9+/]+=*$/);
  const note = signCheckpoint(cp, parseSigner(signer));
  const opened = openCheckpoint(note, parseVerifier(verifier));
  assert.equal(opened.size, 42);
  assert.deepEqual(opened.root, root);

  // Recheck from the spec alone: key id = SHA-256(name ‖ \n ‖ 0x01 ‖ key)[:4],
  // the signature line is "— name base64(id ‖ sig)" over the body.
  const [, idHex, b64] = /^([^+]+)\+([^+]+)\+(.+)$/.exec(verifier)!.slice(1);
  const raw = Buffer.from(b64!, "base64");
  assert.equal(raw[0], 1);
  const id = createHash("sha256").update("vault.test\n").update(raw).digest()
    .subarray(0, 4);
  assert.equal(id.toString("hex"), idHex);
  const [body, sigLine] = note.split("\n\n");
  const m = /^\u2014 vault\.test (\S+)\n$/.exec(sigLine!);
  assert.ok(m, sigLine);
  const sig = Buffer.from(m[1]!, "base64");
  assert.deepEqual(sig.subarray(0, 4), id);
  const pub = createPublicKey({
    key: Buffer.concat([
      Buffer.from("302a300506032b6570032100", "hex"),
      raw.subarray(1),
    ]),
    format: "der",
    type: "spki",
  });
  assert.ok(verify(null, Buffer.from(body + "\n"), pub, sig.subarray(4)));
});

test("checkpoint: altered notes, other keys and malformed keys are refused", () => {
  const a = generateKey("vault.a");
  const b = generateKey("vault.a");
  const note = signCheckpoint(cp, parseSigner(a.signer));
  const va = parseVerifier(a.verifier);
  // Another key of the same name, a changed size, a changed signature.
  assert.throws(
    () => openCheckpoint(note, parseVerifier(b.verifier)),
    MoatError,
  );
  assert.throws(
    () => openCheckpoint(note.replace("\n42\n", "\n43\n"), va),
    /does not verify/,
  );
  const lines = note.split("\n");
  const sigLine = lines[4]!;
  const flipped = sigLine.slice(0, -6) + (sigLine.at(-6) === "A" ? "B" : "A") +
    sigLine.slice(-5);
  assert.throws(
    () => openCheckpoint([...lines.slice(0, 4), flipped, ""].join("\n"), va),
    MoatError,
  );
  for (
    const bad of [
      "",
      cp.origin,
      checkpointBody(cp),
      note.replace("\u2014", "-"),
      note + "\x1b[2J",
      note.replace("\n\n", "\n\x07\n"),
    ]
  ) {
    assert.throws(
      () => openCheckpoint(bad, va),
      MoatError,
      JSON.stringify(bad),
    );
  }
  for (
    const key of [
      "",
      "vault.a",
      a.verifier.replace(/\+[0-9a-f]{8}\+/, "+00000000+"),
      a.verifier + "A",
      "bad name+00000000+AQ==",
      a.signer,
    ]
  ) {
    assert.throws(() => parseVerifier(key), MoatError, key);
  }
  assert.throws(() => parseSigner(a.verifier), MoatError);
  assert.throws(
    () => parseSigner(a.signer.replace(/\+[0-9a-f]{8}\+/, "+00000000+")),
    /does not match/,
  );
});

test("checkpoint: a witness cosignature (tlog-cosignature/v1) binds the time and the body", () => {
  const log = generateKey("vault.w");
  const wit = generateKey("witness.1", COSIGNATURE_V1);
  const note = signCheckpoint(cp, parseSigner(log.signer));
  const { body } = splitNote(note);
  const line = cosign(body, parseSigner(wit.signer), 1_700_000_000);
  const both = addSignatures(note, line);
  assert.equal(
    verifyCosignature(both, parseVerifier(wit.verifier)),
    1_700_000_000,
  );
  // The log's signature still verifies with the cosignature added.
  assert.equal(openCheckpoint(both, parseVerifier(log.verifier)).size, 42);
  assert.throws(
    () => verifyCosignature(note, parseVerifier(wit.verifier)),
    /not cosigned/,
  );
  // A cosignature moved to another checkpoint does not verify.
  const other = signCheckpoint({ ...cp, size: 43 }, parseSigner(log.signer));
  assert.throws(
    () =>
      verifyCosignature(
        addSignatures(other, line),
        parseVerifier(wit.verifier),
      ),
    /does not verify/,
  );
  // A log key cannot cosign, a witness key cannot sign as the log.
  assert.throws(() => cosign(body, parseSigner(log.signer), 1), MoatError);
  assert.throws(() => signCheckpoint(cp, parseSigner(wit.signer)), MoatError);
});
