import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { jsLimit, sha256, sha256Js } from "../lib/sha256.ts";
import { seededRandom } from "./_test_utils.ts";

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
  assert.ok(jsLimit() === 0 || jsLimit() === 247);
});
