import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { AuthThrottle, loadTokens } from "../lib/auth.ts";
import { UsageError } from "../lib/errors.ts";

const SECRET = "0123456789abcdef0123456789abcdef";

function tempDir(): { dir: string } & Disposable {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-auth-"));
  return {
    dir,
    [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

test("loadTokens refuses a token file that group or others may read", () => {
  using t = tempDir();
  const file = path.join(t.dir, "tokens");
  for (const mode of [0o644, 0o640, 0o604, 0o660, 0o601]) {
    fs.writeFileSync(file, `alice ${SECRET}\n`);
    fs.chmodSync(file, mode);
    assert.throws(
      () => loadTokens(file, {}),
      (err: unknown) =>
        err instanceof UsageError &&
        err.message.includes("group or others may access it") &&
        err.message.includes(mode.toString(8)),
      mode.toString(8),
    );
  }
  fs.chmodSync(file, 0o600);
  assert.deepEqual(loadTokens(file, {}), [{ name: "alice", secret: SECRET }]);
  fs.chmodSync(file, 0o400);
  assert.deepEqual(loadTokens(file, {}), [{ name: "alice", secret: SECRET }]);
});

test("loadTokens names a missing token file without an errno code", () => {
  using t = tempDir();
  const file = path.join(t.dir, "absent");
  assert.throws(
    () => loadTokens(file, {}),
    (err: unknown) =>
      err instanceof UsageError &&
      err.message === `Cannot read --token-file "${file}": no such file`,
  );
});

test("loadTokens refuses a token under 128 bits from the environment too", () => {
  assert.throws(
    () => loadTokens(undefined, { MOAT_TOKEN: "bob 0123456789abcdef" }),
    /too short: a secret needs 128 bits/,
  );
  assert.deepEqual(loadTokens(undefined, { MOAT_TOKEN: `bob ${SECRET}` }), [
    { name: "bob", secret: SECRET },
  ]);
});

test("AuthThrottle doubles the wait with each failure up to maxMs", () => {
  const t = 0;
  const throttle = new AuthThrottle({ baseMs: 100, maxMs: 1000, now: () => t });
  const waits: number[] = [];
  for (let i = 0; i < 6; i++) {
    throttle.failed("127.0.0.9");
    waits.push(throttle.wait("127.0.0.9"));
  }
  assert.deepEqual(waits, [100, 200, 400, 800, 1000, 1000]);
  assert.equal(throttle.wait("127.0.0.10"), 0, "other addresses are free");
});

test("AuthThrottle lets an address try again after its wait and forgets it on success", () => {
  let t = 0;
  const throttle = new AuthThrottle({ baseMs: 100, maxMs: 1000, now: () => t });
  throttle.failed("::1");
  throttle.failed("::1");
  t += 150;
  assert.equal(throttle.wait("::1"), 50);
  t += 50;
  assert.equal(throttle.wait("::1"), 0);
  // A third failure right away keeps counting.
  assert.equal(throttle.failed("::1"), 3);
  assert.equal(throttle.wait("::1"), 400);
  throttle.succeeded("::1");
  assert.equal(throttle.wait("::1"), 0);
  assert.equal(throttle.failed("::1"), 1);
});

test("AuthThrottle forgets an address after a quiet spell", () => {
  let t = 0;
  const throttle = new AuthThrottle({ baseMs: 100, maxMs: 1000, now: () => t });
  for (let i = 0; i < 5; i++) throttle.failed("127.0.0.9");
  t += 1000 + 1000;
  assert.equal(throttle.wait("127.0.0.9"), 0);
  assert.equal(throttle.failed("127.0.0.9"), 1);
});

test("AuthThrottle remembers at most maxKeys addresses", () => {
  const t = 0;
  const throttle = new AuthThrottle({ maxKeys: 10, now: () => t });
  for (let i = 0; i < 1000; i++) throttle.failed(`10.0.${i >> 8}.${i & 255}`);
  let remembered = 0;
  for (let i = 0; i < 1000; i++) {
    if (throttle.wait(`10.0.${i >> 8}.${i & 255}`) > 0) remembered++;
  }
  assert.equal(remembered, 10);
  assert.ok(throttle.wait("10.0.3.231") > 0, "the newest are kept");
});
