import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { generateKeyPairSync } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  decodeMeta,
  decodeRecordMessage,
  encodeMeta,
  encodeRecordMessage,
  encodeRecordSection,
  ForgedMessageError,
  parseRecordMsgId,
  recordMsgId,
  sourceId,
  subjectsOf,
} from "../lib/vault/nats/codec.ts";
import {
  applyRecordMessage,
  prepareLocalCopy,
  SourceApplier,
} from "../lib/vault/nats/apply.ts";
import { recordBatch } from "../lib/vault/_format.ts";
import { sourceDirName } from "../lib/vault/_key.ts";
import { openVault } from "../lib/vault/store.ts";
import { readRecords } from "../lib/vault/read.ts";
import { verifyVault } from "../lib/vault/verify.ts";

const enc = new TextEncoder();
const key = { peer: "10.0.0.5", identity: "token:web", name: "app" };
const vaultId = new Uint8Array(16).fill(0xcd);
const pair = generateKeyPairSync("ed25519");
const signer = { vaultId, key: pair.privateKey };
const check = { vaultId, key: pair.publicKey };
const SIG = 64;

function message(
  first: number,
  lines: string[],
  recvTs: number[],
  by = signer,
) {
  const sections = lines.map((line, i) =>
    encodeRecordSection(
      recordBatch([{
        seq: first + i,
        ts: 1000 + i,
        line: enc.encode(line),
        partial: line === "p",
      }]),
      recvTs[i]!,
    )
  );
  return encodeRecordMessage(key, first, lines.length, sections, by);
}

test("decodeRecordMessage reads back what encodeRecordMessage wrote", () => {
  const body = message(5, ["a", "", "p", "dddd"], [7, 7, 8, 9]);
  const msg = decodeRecordMessage(body, sourceId(key), check);
  assert.deepEqual(msg.key, key);
  assert.equal(msg.firstSeq, 5);
  assert.equal(msg.lastSeq, 8);
  assert.equal(msg.length, 4);
  assert.deepEqual(
    Array.from(
      { length: 4 },
      (
        _,
        i,
      ) => [
        msg.seq(i),
        msg.ts(i),
        msg.recvTs(i),
        msg.partial(i),
        new TextDecoder().decode(msg.line(i)),
      ],
    ),
    [
      [5, 1000, 7, false, "a"],
      [6, 1001, 7, false, ""],
      [7, 1002, 8, true, "p"],
      [8, 1003, 9, false, "dddd"],
    ],
  );
  assert.equal(sourceId(key), sourceDirName(key).slice(-32));
});

test("decodeRecordMessage refuses every truncation, a wrong source and trailing bytes", () => {
  const body = message(1, ["hello", "world"], [1, 1]);
  for (let n = 0; n < body.length; n++) {
    assert.throws(
      () => decodeRecordMessage(body.subarray(0, n), undefined, null),
      SyntaxError,
    );
  }
  assert.throws(
    () => decodeRecordMessage(body, "0".repeat(32), check),
    /of source/,
  );
  const longer = new Uint8Array(body.length + 1);
  longer.set(body);
  assert.throws(
    () => decodeRecordMessage(longer, undefined, null),
    /after the last record/,
  );
  const flags = body.slice();
  flags[body.length - SIG - 5 - 5] = 0x80; // the second record's flags byte
  assert.throws(
    () => decodeRecordMessage(flags, undefined, null),
    /unknown flags/,
  );
  const count = body.slice();
  new DataView(count.buffer).setUint32(
    body.length - SIG - 2 * 26 - 4,
    0xffffffff,
    true,
  );
  assert.throws(
    () => decodeRecordMessage(count, undefined, null),
    /cannot fit/,
  );
});

test("decodeRecordMessage refuses a message not signed by the vault's key", () => {
  const body = message(1, ["hello", "world"], [1, 1]);
  assert.equal(decodeRecordMessage(body, sourceId(key), check).lastSeq, 2);
  // Any byte changed (a line, the range, the key, the signature).
  for (const at of [body.length - SIG - 1, 40, 12, body.length - 1]) {
    const bent = body.slice();
    bent[at]! ^= 1;
    assert.throws(
      () => decodeRecordMessage(bent, undefined, check),
      ForgedMessageError,
      `byte ${at}`,
    );
  }
  // Well formed, signed by another key: what someone holding the cluster's
  // credentials but not the checkpoint key can publish.
  const other = generateKeyPairSync("ed25519");
  assert.throws(
    () =>
      decodeRecordMessage(
        message(1, ["hello"], [1], { vaultId, key: other.privateKey }),
        sourceId(key),
        check,
      ),
    /signature is not the vault's checkpoint key's/,
  );
  // Signed by this key for another vault.
  assert.throws(
    () =>
      decodeRecordMessage(
        message(1, ["hello"], [1], {
          vaultId: new Uint8Array(16),
          key: pair.privateKey,
        }),
        sourceId(key),
        check,
      ),
    ForgedMessageError,
  );
  // Format 1 (unsigned, before this check) is named as such.
  const old = body.slice();
  old[8] = 1;
  assert.throws(
    () => decodeRecordMessage(old, undefined, check),
    /format 1 is unsigned/,
  );
});

test("recordMsgId round-trips and subjectsOf lowercases the stream", () => {
  const id = recordMsgId(sourceId(key), 3, 9);
  assert.deepEqual(parseRecordMsgId(id), {
    srcid: sourceId(key),
    firstSeq: 3,
    lastSeq: 9,
  });
  assert.equal(parseRecordMsgId("x:1-2"), undefined);
  assert.equal(parseRecordMsgId(`${sourceId(key)}:9-3`), undefined);
  assert.equal(subjectsOf("Moat_2").meta, "moat.moat_2.meta");
  assert.throws(() => subjectsOf("a.b"), RangeError);
  const meta = { format: 2, vaultId: "ab".repeat(16), checkpointKey: "k+1+x" };
  assert.deepEqual(decodeMeta(encodeMeta(meta)), meta);
  assert.throws(() => decodeMeta(enc.encode('{"format":3}')), /format 3/);
  assert.throws(
    () => decodeMeta(enc.encode('{"format":1}')),
    /format 1 .*unsigned/,
  );
});

test("SourceApplier applies messages in order, keeps receive times, refuses gaps and replays", async () => {
  const dir = await mkdtemp(join(tmpdir(), "moat-apply-"));
  try {
    const meta = {
      format: 2,
      vaultId: "cd".repeat(16),
      checkpointKey: "unused",
    };
    await prepareLocalCopy(dir, meta, { signs: false });
    const vault = await openVault(dir, { sealIntervalMs: 0 });
    assert.equal(vault.id, meta.vaultId);
    const applier = new SourceApplier(vault, sourceId(key), check);
    await applier.apply(3, message(1, ["a", "b"], [10, 11]));
    await applier.apply(7, message(3, ["c"], [12]));
    await assert.rejects(
      applier.apply(7, message(4, ["d"], [13])),
      /arrived after/,
    );
    await assert.rejects(applier.apply(9, message(5, ["e"], [13])), /end at 3/);
    await assert.rejects(
      applier.apply(9, message(3, ["c"], [13])),
      /already applied/,
    );
    await assert.rejects(applier.apply(9, enc.encode("junk")), {
      code: "ERR_CORRUPT",
    });
    // A forged continuation: well formed, not signed by the vault's key.
    const other = generateKeyPairSync("ed25519");
    await assert.rejects(
      applier.apply(
        9,
        message(4, ["forged"], [13], { vaultId, key: other.privateKey }),
      ),
      { code: "ERR_CORRUPT", message: /signature/ },
    );
    assert.equal(
      await applyRecordMessage(
        vault,
        decodeRecordMessage(
          message(2, ["b", "c", "d"], [11, 12, 14]),
          undefined,
          check,
        ),
        { skipApplied: true },
      ),
      4,
    );
    await vault.close();
    const got = [];
    for await (const r of readRecords(dir)) {
      got.push([r.seq, new TextDecoder().decode(r.line), r.recvTs]);
    }
    assert.deepEqual(got, [[1, "a", 10], [2, "b", 11], [3, "c", 12], [
      4,
      "d",
      14,
    ]]);
    const report = await verifyVault(dir);
    assert.equal(report.ok, true, JSON.stringify(report));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
