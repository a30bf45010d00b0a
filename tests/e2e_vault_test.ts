// moat vault over months, as a process: prune and verify, serve --retain,
// ls, and cat with --json, --follow and an unknown --source. Vaults with
// old records are written through the vault API on a fake clock.
import { test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { initVault } from "../lib/vault/init.ts";
import { openVault } from "../lib/vault/store.ts";
import type { SourceKey } from "../lib/vault/store.ts";
import {
  finished,
  LineWatcher,
  moatCommand,
  runMoat,
  spawnMoat,
  startServer,
  tempDir,
} from "./_e2e.ts";

const DAY = 86_400_000;
const WEB: SourceKey = { peer: "10.0.0.1", name: "web" };
const te = new TextEncoder();

/**
 * A sealed vault holding `days` days of records of WEB (40 a day, sealed
 * daily), the last day ending now. Small segments, so days can be pruned.
 */
async function oldVault(
  dir: string,
  days: number,
): Promise<{ key: string; total: number }> {
  const { verificationKey } = await initVault(dir);
  let t = Date.now() - days * DAY;
  const vault = await openVault(dir, {
    sealIntervalMs: 0,
    segmentBytes: 4096,
    now: () => t,
  });
  let seq = 1;
  for (let day = 0; day < days; day++) {
    for (let batch = 0; batch < 4; batch++) {
      const records = Array.from({ length: 10 }, () => ({
        seq: seq++,
        ts: t,
        line: te.encode(`day ${day} line ${seq - 1} ${"w".repeat(50)}`),
      }));
      await vault.append(WEB, records);
    }
    await vault.seal();
    t += DAY;
  }
  t = Math.min(t, Date.now());
  await vault.close();
  return { key: verificationKey, total: seq - 1 };
}

test("moat vault prune removes old records and verify reports the range; hand deletion still fails", async () => {
  using tmp = tempDir();
  const dir = path.join(tmp.dir, "vault");
  const { key, total } = await oldVault(dir, 10);
  const pruned = await runMoat(["vault", "prune", dir, "--keep", "5d"]);
  assert.equal(pruned.code, 0, pruned.stderr);
  const m =
    /^Pruned (\d+) records \(.*\) first sealed before (\S+) from 1 source\(s\), recorded in seal (\d+):\n {2}10\.0\.0\.1\/web: records 1 to (\d+) are gone/
      .exec(pruned.stdout);
  assert.ok(m, pruned.stdout);
  const through = Number(m[4]);
  assert.equal(Number(m[1]), through);
  // Days 0 to 5 were sealed more than 5 days ago (day 5 just so).
  assert.ok(through >= 4 * 40 && through <= 6 * 40, `${through}`);
  const verified = await runMoat([
    "vault",
    "verify",
    dir,
    "--key",
    key,
    "--min-retain",
    "5d",
  ]);
  assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  assert.match(
    verified.stdout,
    new RegExp(
      `10\\.0\\.0\\.1/web: ${total - through} records, ${total} sealed\\n`,
    ),
  );
  assert.match(
    verified.stdout,
    new RegExp(
      `10\\.0\\.0\\.1/web: records 1 to ${through} pruned \\(first sealed before ${
        m[2]!.replace(/\./g, "\\.")
      }; pruned at .*, recorded in seal ${m[3]}\\)`,
    ),
  );
  // Stricter retention than the prune kept to: the verifier says so.
  const strict = await runMoat([
    "vault",
    "verify",
    dir,
    "--key",
    key,
    "--min-retain",
    "8d",
  ]);
  assert.equal(strict.code, 5);
  assert.match(strict.stdout, /DAMAGED: .*less than the minimum retention/);
  // Nothing more to prune at the same cut-off.
  const again = await runMoat(["vault", "prune", dir, "--keep", "5d"]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /^Nothing to prune/);
  // A kept segment deleted by hand is damage, not a prune.
  const sdir = path.join(dir, "sources");
  const source = path.join(sdir, fs.readdirSync(sdir)[0]!);
  const segments = fs.readdirSync(source).filter((n) => n.endsWith(".seg"))
    .sort();
  fs.rmSync(path.join(source, segments[0]!));
  const broken = await runMoat(["vault", "verify", dir, "--key", key]);
  assert.equal(broken.code, 5);
  assert.match(
    broken.stdout,
    new RegExp(
      `DAMAGED: 10\\.0\\.0\\.1/web: segment starts at record \\d+ where ${
        through + 1
      } is due \\(records 1 to ${through} were pruned\\)`,
    ),
  );
});

test("moat vault prune refuses a damaged vault and removes nothing", async () => {
  using tmp = tempDir();
  const dir = path.join(tmp.dir, "vault");
  const { key } = await oldVault(dir, 6);
  const sdir = path.join(dir, "sources");
  const source = path.join(sdir, fs.readdirSync(sdir)[0]!);
  const names = () =>
    fs.readdirSync(source).filter((n) => n.endsWith(".seg")).sort();
  const before = names();
  const victim = path.join(source, before[1]!);
  const bytes = fs.readFileSync(victim);
  bytes[bytes.length - 1]! ^= 1;
  fs.writeFileSync(victim, bytes);
  const r = await runMoat([
    "vault",
    "prune",
    dir,
    "--keep",
    "1d",
    "--key",
    key,
  ]);
  assert.equal(r.code, 5, r.stdout + r.stderr);
  assert.match(r.stdout, /^DAMAGED: /m);
  assert.match(r.stderr, /failed verification: nothing was pruned\n$/);
  assert.deepEqual(names(), before);
  for (
    const args of [[], ["--keep", "1d", "--before", "2024-01-01"], [
      "--keep",
      "0d",
    ], ["--before", "soon"]]
  ) {
    const bad = await runMoat(["vault", "prune", dir, ...args]);
    assert.equal(bad.code, 2, `${args}: ${bad.stderr}`);
    assert.equal(bad.stderr.split("\n").length, 2, bad.stderr);
  }
});

test("moat serve --retain prunes at start, audits it, and the vault verifies", async () => {
  using tmp = tempDir();
  const dir = path.join(tmp.dir, "vault");
  const { key } = await oldVault(dir, 8);
  const server = await startServer(["--vault", dir, "--retain", "3d"]);
  let event: Record<string, unknown>;
  try {
    event = await server.waitEvent((e) => e.event === "vault_pruned");
  } finally {
    assert.equal(await server.stop(), 0);
  }
  const sources = event.sources as { source: string; through: number }[];
  assert.equal(sources.length, 1);
  assert.equal(sources[0]!.source, "10.0.0.1/web");
  assert.ok(sources[0]!.through >= 4 * 40, JSON.stringify(event));
  assert.equal(typeof event.epoch, "number");
  const verified = await runMoat([
    "vault",
    "verify",
    dir,
    "--key",
    key,
    "--min-retain",
    "3d",
  ]);
  assert.equal(verified.code, 0, verified.stdout);
  assert.match(
    verified.stdout,
    new RegExp(
      `records 1 to ${
        sources[0]!.through
      } pruned .*recorded in seal ${event.epoch}\\)`,
    ),
  );
  const usage = await runMoat(["serve", "--retain", "3d"]);
  assert.equal(usage.code, 2);
  assert.equal(usage.stderr, "moat: --retain needs --vault DIR\n");
});

test("moat vault ls shows records, size on disk, first and last time and last seen", async () => {
  using tmp = tempDir();
  const dir = path.join(tmp.dir, "vault");
  const vault = await openVault(dir);
  await vault.append(WEB, [
    { seq: 1, ts: Date.UTC(2024, 0, 1), line: te.encode("a") },
    { seq: 2, ts: Date.UTC(2024, 0, 2), line: te.encode("b") },
  ], { recvTs: Date.UTC(2024, 0, 3) });
  await vault.close();
  const r = await runMoat(["vault", "ls", dir]);
  assert.equal(r.code, 0, r.stderr);
  const size = fs.statSync(
    path.join(
      dir,
      "sources",
      fs.readdirSync(path.join(dir, "sources"))[0]!,
      "00000000000000000001.seg",
    ),
  ).size;
  assert.equal(
    r.stdout,
    "PEER\tSOURCE\tRECORDS\tSIZE\tFIRST\tLAST\tLAST-SEEN\n" +
      `10.0.0.1\tweb\t2\t${size} B\t2024-01-01T00:00:00.000Z\t` +
      "2024-01-02T00:00:00.000Z\t2024-01-03T00:00:00.000Z\n",
  );
});

test("moat vault cat --json and an unknown --source", async () => {
  using tmp = tempDir();
  const dir = path.join(tmp.dir, "vault");
  const vault = await openVault(dir);
  await vault.append(WEB, [
    { seq: 1, ts: 5, line: Uint8Array.of(0x1b, 0x5b, 0x32, 0x4a, 0xff) },
  ], { recvTs: 7 });
  await vault.close();
  const json = await runMoat(["vault", "cat", dir, "--json"]);
  assert.equal(json.code, 0, json.stderr);
  assert.ok(!json.stdout.includes("\x1b"), json.stdout);
  assert.deepEqual(JSON.parse(json.stdout), {
    source: "10.0.0.1/web",
    peer: "10.0.0.1",
    name: "web",
    seq: 1,
    ts: 5,
    recvTs: 7,
    line: "\x1b[2J\ufffd",
    lineBase64: "G1sySv8=",
  });
  const until = await runMoat(["vault", "cat", dir, "--until", "1970-01-01"]);
  assert.equal(until.code, 0);
  assert.equal(until.stdout, "");
  const missing = await runMoat(["vault", "cat", dir, "--source", "nope"]);
  assert.equal(missing.code, 4);
  assert.equal(missing.stdout, "");
  assert.equal(
    missing.stderr,
    `moat: No source in vault "${dir}" matches --source "nope" (see moat vault ls)\n`,
  );
  const both = await runMoat([
    "vault",
    "cat",
    dir,
    "--follow",
    "--until",
    "1h",
  ]);
  assert.equal(both.code, 2);
});

test("moat vault cat --follow prints new records until SIGTERM, and stops quietly when its reader goes", async () => {
  using tmp = tempDir();
  const dir = path.join(tmp.dir, "vault");
  const vault = await openVault(dir);
  try {
    await vault.append(WEB, [{ seq: 1, ts: 1, line: te.encode("one") }]);
    for (const ending of ["signal", "reader"] as const) {
      const cat = spawnMoat(["vault", "cat", dir, "--follow"]);
      cat.stdin!.end();
      const out = new LineWatcher(cat.stdout!);
      let stderr = "";
      cat.stderr!.setEncoding("utf8").on("data", (d) => (stderr += d));
      const closed = new Promise<number | null>((resolve) =>
        cat.on("close", (code) => resolve(code))
      );
      await out.waitFor((l) => l === "10.0.0.1/web\tone");
      const seq = vault.source(WEB).lastSeq + 1;
      await vault.append(WEB, [{ seq, ts: 1, line: te.encode(`new ${seq}`) }]);
      await out.waitFor((l) => l === `10.0.0.1/web\tnew ${seq}`);
      if (ending === "signal") {
        process.kill(cat.pid!, "SIGTERM");
        assert.equal(await closed, 0, stderr);
      } else {
        cat.stdout!.destroy();
        // Noticed at the next write.
        await vault.append(WEB, [{
          seq: seq + 1,
          ts: 1,
          line: te.encode("after"),
        }]);
        assert.equal(await closed, 141, stderr);
      }
      assert.equal(stderr, "");
    }
  } finally {
    await vault.close();
  }
});

test(
  "moat vault verify shows its progress on a terminal, fitting its width, and none elsewhere",
  {
    skip: spawnSync("script", ["--version"]).status === 0
      ? false
      : "needs script(1)",
  },
  async () => {
    using tmp = tempDir();
    const dir = path.join(tmp.dir, "vault");
    const { key } = await oldVault(dir, 4);
    const quiet = await runMoat(["vault", "verify", dir, "--key", key]);
    assert.equal(quiet.code, 0);
    assert.equal(quiet.stderr, "");
    // script(1) gives moat a terminal 40 columns wide.
    const command = [...moatCommand(), "vault", "verify", dir, "--key", key]
      .map((a) => `'${a}'`).join(" ");
    const typed = spawnInTerminal(`stty cols 40; ${command}`);
    const r = await finished(typed);
    assert.equal(r.code, 0, r.stdout);
    const drawn = r.stdout.split("\r").filter((s) =>
      s.startsWith("verifying:")
    );
    assert.ok(drawn.length > 0, JSON.stringify(r.stdout.slice(0, 400)));
    for (const line of drawn) {
      const text = line.slice(0, line.indexOf("\x1b[K"));
      assert.ok(text.length <= 39, JSON.stringify(text));
    }
    assert.match(r.stdout, /OK: every record and seal is intact/);
  },
);

/** Runs a shell command under script(1): its stdin, stdout and stderr a terminal. */
function spawnInTerminal(command: string): ChildProcess {
  const child = spawn("script", ["-qec", command, "/dev/null"], {
    env: { ...process.env, NO_COLOR: "1" },
    stdio: ["pipe", "pipe", "pipe"],
  });
  child.stdin!.end();
  return child;
}
