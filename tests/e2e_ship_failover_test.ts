/**
 * `moat ship --server A,B` as real processes: door A is SIGKILLed while
 * lines flow, door B starts on the same vault directory (the vault's lock
 * admits one process at a time), and the shipper moves to B, resumes from
 * what the vault holds, and every line is stored once, in order.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import {
  LineWatcher,
  runMoat,
  spawnMoat,
  startServer,
  tempDir,
  waitVaultCount,
} from "./_e2e.ts";
import { quietPort } from "./_test_utils.ts";

function lines(from: number, to: number): string {
  let s = "";
  for (let i = from; i <= to; i++) s += `line ${i} ${"x".repeat(i % 50)}\n`;
  return s;
}

test("moat ship --server A,B: A SIGKILLed mid-stream, B on the same vault: the shipper moves to B and every line is stored once, in order", async () => {
  using dir = tempDir();
  const log = path.join(dir.dir, "app.log");
  const vault = path.join(dir.dir, "vault");
  fs.writeFileSync(log, "");
  const [portA, portB] = [await quietPort(), await quietPort()];
  assert.notEqual(portA, portB);
  const a = await startServer(["--vault", vault, "--port", String(portA)]);
  const shipper = spawnMoat([
    "ship",
    log,
    "--server",
    `127.0.0.1:${portA},127.0.0.1:${portB}`,
    "--state",
    path.join(dir.dir, "ship.json"),
    "--source",
    "app",
  ], { cwd: dir.dir });
  const err = new LineWatcher(shipper.stderr!);
  const exited = new Promise<number | null>((r) =>
    shipper.on("close", (c) => r(c))
  );
  let b: Awaited<ReturnType<typeof startServer>> | undefined;
  let stopped: number | null = null;
  try {
    await err.waitFor(
      (l) => l.includes(`to 127.0.0.1:${portA} as`),
      20_000,
      "shipping to A",
    );
    // Lines keep coming while A dies and B starts.
    const writing = (async () => {
      for (let i = 0; i < 80; i++) {
        fs.appendFileSync(log, lines(i * 500 + 1, (i + 1) * 500));
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    assert.ok(await waitVaultCount(vault, 2_000, 30_000) >= 2_000);
    a.child.kill("SIGKILL");
    await a.stop();
    await err.waitFor(
      (l) =>
        l.includes(`127.0.0.1:${portA}`) &&
        l.includes(`trying 127.0.0.1:${portB}`),
      20_000,
      "the move to B",
    );
    // The killed server's stale lock is taken over.
    b = await startServer(["--vault", vault, "--port", String(portB)]);
    await err.waitFor(
      (l) => l.includes(`to 127.0.0.1:${portB} as`),
      30_000,
      "shipping to B",
    );
    await writing;
    fs.appendFileSync(log, lines(40_001, 50_000));
    assert.equal(await waitVaultCount(vault, 50_000, 60_000), 50_000);
  } finally {
    if (shipper.exitCode === null && shipper.signalCode === null) {
      process.kill(shipper.pid!, "SIGTERM");
    }
    const killer = setTimeout(() => shipper.kill("SIGKILL"), 20_000);
    stopped = await exited;
    clearTimeout(killer);
    await b?.stop();
    await a.stop();
  }
  assert.equal(stopped, 0, err.lines.slice(-5).join(" | "));
  const cat = await runMoat(["vault", "cat", vault], { timeoutMs: 60_000 });
  assert.equal(cat.code, 0, cat.stderr);
  assert.equal(cat.stdout, fs.readFileSync(log, "utf8"));
  // Which door failed and which was tried is said, once per move.
  const moves = err.lines.filter((l) => l.includes("trying 127.0.0.1:"));
  assert.ok(moves.length >= 1, err.lines.join("\n"));
  for (const l of moves) {
    assert.match(
      l,
      /^moat: (connection to 127\.0\.0\.1:\d+ lost|127\.0\.0\.1:\d+ unreachable) \(.*\); trying 127\.0\.0\.1:\d+ (now|in [\d.]+ s); backlog /,
    );
  }
});

test("moat ship refuses a bad door list in one line, exit 2, before reading anything", async () => {
  using dir = tempDir();
  for (
    const [args, env, message] of [
      [["--server", "127.0.0.1:1,"], {}, /an empty entry/],
      [["--server", "a:1", "--server", "a:1"], {}, /a:1 is given twice/],
      [
        [],
        { MOAT_SERVER: "a:1,[::1]:0" },
        /Invalid server address "\[::1\]:0"/,
      ],
    ] as const
  ) {
    const r = await runMoat(
      ["ship", "-", ...args, "--state", path.join(dir.dir, "s.json")],
      { input: "a line\n", timeoutMs: 30_000, env: { ...env } },
    );
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.equal(fs.existsSync(path.join(dir.dir, "s.json")), false);
  }
});

test("moat ship --tls --pin B --server A,B: a door whose certificate does not verify is passed over, loudly, and nothing is sent to it", async () => {
  using dir = tempDir();
  const cert = async (name: string) => {
    const out = path.join(dir.dir, name);
    const r = await runMoat(["cert", "--out", out, "--name", "127.0.0.1"]);
    assert.equal(r.code, 0, r.stderr);
    return {
      fp: r.stdout.trim(),
      args: [
        "--tls-cert",
        path.join(out, "moat-cert.pem"),
        "--tls-key",
        path.join(out, "moat-key.pem"),
      ],
    };
  };
  const [certA, certB] = [await cert("a"), await cert("b")];
  await using a = await startServer([
    "--vault",
    path.join(dir.dir, "vault-a"),
    ...certA.args,
  ]);
  await using b = await startServer([
    "--vault",
    path.join(dir.dir, "vault-b"),
    ...certB.args,
  ]);
  const text = lines(1, 100);
  const r = await runMoat([
    "ship",
    "-",
    "--source",
    "app",
    "--server",
    `127.0.0.1:${a.port},127.0.0.1:${b.port}`,
    "--tls",
    "--pin",
    certB.fp,
    "--state",
    path.join(dir.dir, "ship.json"),
  ], { input: text, timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(
      `^moat: 127\\.0\\.0\\.1:${a.port} unreachable \\(Server 127\\.0\\.0\\.1:${a.port} refused: certificate fingerprint sha256:[0-9a-f]{64} does not match --pin\\); trying 127\\.0\\.0\\.1:${b.port} now; `,
      "m",
    ),
  );
  const cat = await runMoat(["vault", "cat", path.join(dir.dir, "vault-b")]);
  assert.equal(cat.stdout, text);
  const none = await runMoat(["vault", "ls", path.join(dir.dir, "vault-a")]);
  assert.doesNotMatch(none.stdout, /app/);
});
