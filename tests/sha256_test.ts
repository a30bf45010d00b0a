import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import {
  jsLimit,
  nativeSha256,
  setNativeSha256,
  sha256,
  sha256Js,
  type Sha256Parts,
  sha256Parts,
} from "../lib/sha256.ts";
import { nativeSha256Parts } from "../lib/net/sha256.ts";
import { seededRandom } from "./_test_utils.ts";
import { tempDir } from "./_e2e.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

test("sha256Js gives the FIPS 180-4 example digests", () => {
  const te = new TextEncoder();
  assert.equal(
    hex(sha256Js(te.encode("abc"))),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
  assert.equal(
    hex(
      sha256Js(
        te.encode("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
      ),
    ),
    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
  );
  assert.equal(
    hex(sha256Js(new Uint8Array(0))),
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  );
  assert.equal(
    hex(sha256Js(new Uint8Array(1_000_000).fill(0x61))),
    "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
  );
});

test("sha256Js and sha256 agree with node:crypto at every length across the block boundaries", () => {
  const random = seededRandom(11);
  for (let n = 0; n <= 1100; n++) {
    const input = new Uint8Array(n);
    for (let i = 0; i < n; i++) input[i] = random(256);
    const want = createHash("sha256").update(input).digest("hex");
    assert.equal(hex(sha256Js(input)), want, `length ${n}`);
    assert.equal(hex(sha256(input)), want, `length ${n}`);
  }
  // A view into a larger buffer hashes only its bytes.
  const big = new Uint8Array(300).fill(7);
  assert.equal(
    hex(sha256Js(big.subarray(5, 150))),
    createHash("sha256").update(big.subarray(5, 150)).digest("hex"),
  );
  assert.ok(jsLimit() === 0 || jsLimit() === 1015);
});

test("sha256Parts, portable and through libcrypto (lib/net/sha256.ts), hashes two ranges as one, also into its own input", () => {
  const random = seededRandom(12);
  const buf = new Uint8Array(700);
  for (let i = 0; i < buf.length; i++) buf[i] = random(256);
  const native = nativeSha256Parts();
  if (process.platform === "linux") {
    // This project's hosts and CI have OpenSSL 3; elsewhere the fallback runs.
    assert.ok(native !== undefined, "libcrypto did not load");
  }
  const runs: [string, (() => Sha256Parts | undefined) | undefined][] = [
    ["portable", undefined],
    ["native", nativeSha256Parts],
  ];
  try {
    for (const [label, load] of runs) {
      setNativeSha256(load);
      for (let k = 0; k < 300; k++) {
        const aStart = random(300);
        const aEnd = aStart + random(150);
        const bStart = random(400);
        const bEnd = bStart + random(300);
        const want = createHash("sha256")
          .update(buf.subarray(aStart, aEnd))
          .update(buf.subarray(bStart, bEnd)).digest("hex");
        const out = new Uint8Array(40).fill(0xee);
        sha256Parts(buf, aStart, aEnd, buf, bStart, bEnd, out, 5);
        assert.equal(hex(out.subarray(5, 37)), want, `${label} ${k}`);
        assert.equal(out[4], 0xee, `${label}: wrote before its place`);
        assert.equal(out[37], 0xee, `${label}: wrote past its place`);
      }
      // Lengths about the 4 KiB past which Deno's path makes a bigint of
      // each length (below it, a table's).
      const long = new Uint8Array(10_000);
      for (let i = 0; i < long.length; i++) long[i] = random(256);
      for (
        const [aEnd, bStart, bEnd] of [[4095, 0, 1], [4096, 9, 4106], [
          4097,
          1,
          9000,
        ], [0, 3, 10_000]]
      ) {
        const want = createHash("sha256")
          .update(long.subarray(0, aEnd))
          .update(long.subarray(bStart, bEnd)).digest("hex");
        const out = new Uint8Array(32);
        sha256Parts(long, 0, aEnd!, long, bStart!, bEnd!, out, 0);
        assert.equal(hex(out), want, `${label} ${aEnd} + ${bEnd! - bStart!}`);
      }
      // The digest over its own input (a chain link is written in place).
      const record = buf.slice(0, 200);
      const want = createHash("sha256").update(record.subarray(4)).digest();
      sha256Parts(record, 4, 200, record, 0, 0, record, 36);
      assert.equal(hex(record.subarray(36, 68)), hex(want), label);
      // Ranges outside their buffers, and fractions (on every path alike),
      // are refused before any native call: a, b and dst's ranges each.
      const out = new Uint8Array(40);
      const refused: [number, number, number, number, number][] = [
        [0, 701, 0, 0, 0],
        [0, 1, 5, 4, 0],
        [0, 1, 0, 0, 9],
        [0, 2.5, 0, 0, 0],
        [0, 1, 0.5, 3, 0],
        [0, 1, 0, 0, 1.5],
      ];
      for (const [aStart, aEnd, bStart, bEnd, at] of refused) {
        assert.throws(
          () => sha256Parts(buf, aStart, aEnd, buf, bStart, bEnd, out, at),
          RangeError,
          `${label}: ${[aStart, aEnd, bStart, bEnd, at]}`,
        );
      }
      assert.equal(
        nativeSha256() !== undefined,
        load !== undefined && native !== undefined,
      );
    }
  } finally {
    setNativeSha256(undefined);
  }
});

test("the libcrypto SHA-256 keeps working after the collector runs (its library stays loaded)", () => {
  // In a process of its own, where this is the library's only loader: Bun
  // unloaded the library with its collected dlopen result, and the next
  // call crashed the process at address 0.
  using tmp = tempDir();
  const script = path.join(tmp.dir, "gc.ts");
  const module = path.resolve(
    import.meta.dirname ?? ".",
    "../lib/net/sha256.ts",
  );
  fs.writeFileSync(
    script,
    `import { nativeSha256Parts } from ${JSON.stringify(module)};
const parts = nativeSha256Parts();
const gc = globalThis.Bun?.gc;
const input = new Uint8Array(300).map((_, i) => i);
const out = new Uint8Array(32);
let hex = "none";
for (let round = 0; round < 3 && parts; round++) {
  let garbage = [];
  for (let i = 0; i < 100000; i++) garbage.push({ i });
  garbage = [];
  gc?.(true);
  parts(input, 0, 100, input, 100, 300, out, 0);
  hex = Buffer.from(out).toString("hex");
}
console.log(hex);
`,
  );
  const deno = navigator.userAgent.startsWith("Deno");
  const run = spawnSync(
    process.execPath,
    deno ? ["run", "-A", script] : [script],
    { encoding: "utf8" },
  );
  assert.equal(run.status, 0, run.stderr);
  const want = createHash("sha256")
    .update(new Uint8Array(300).map((_, i) => i)).digest("hex");
  // "none" where libcrypto does not load (not on Linux, asserted above).
  const expected = process.platform === "linux" ? [want] : [want, "none"];
  assert.ok(expected.includes(run.stdout.trim()), run.stdout);
});
