/**
 * `moat witness` and `moat serve --witness` as processes: lines shipped into
 * the vault are covered by checkpoints the witness cosigns; the witness keeps
 * them across its own restart; and a vault put back from an older copy while
 * the shipper is away is refused by the witness at the next checkpoint,
 * loudly on both sides, while the server serves on.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { parseVerifier, verifyCosignature } from "../lib/checkpoint.ts";
import { readCheckpointLog } from "../lib/vault/_checkpoints.ts";
import { checkWitnessed } from "../lib/witness/verify.ts";
import {
  LineWatcher,
  runMoat,
  spawnMoat,
  startServer,
  tempDir,
} from "./_e2e.ts";

type Event = Record<string, unknown>;

function parse(line: string): Event | undefined {
  try {
    const v = JSON.parse(line);
    return typeof v === "object" && v !== null ? v : undefined;
  } catch {
    return undefined;
  }
}

/** A running `moat witness`, its audit log on stderr. */
async function startWitness(
  state: string,
  args = ["--state", state, "--listen", "127.0.0.1:0"],
) {
  const child = spawnMoat(["witness", ...args]);
  const audit = new LineWatcher(child.stderr!);
  const exited = new Promise<number | null>((resolve) =>
    child.on("close", (code) => resolve(code))
  );
  const listening = parse(
    await Promise.race([
      audit.waitFor((l) => parse(l)?.event === "listening", 20_000),
      exited.then((code) => {
        throw new Error(`moat witness exited with ${code}: ${audit.lines}`);
      }),
    ]),
  )!;
  const addr = (listening.addrs as string[])[0]!;
  return {
    addr,
    audit,
    waitEvent: async (pred: (e: Event) => boolean, what: string) =>
      parse(
        await audit.waitFor(
          (l) => {
            const e = parse(l);
            return e !== undefined && pred(e);
          },
          30_000,
          what,
        ),
      )!,
    stop: () => stop(child, exited),
  };
}

async function stop(child: ChildProcess, exited: Promise<number | null>) {
  if (child.exitCode === null && child.signalCode === null) {
    process.kill(child.pid!, "SIGTERM");
  }
  return await exited;
}

/** `n` numbered lines starting at `from`. */
function lines(from: number, n: number): string {
  let out = "";
  for (let i = from; i < from + n; i++) out += `line ${i}\n`;
  return out;
}

test("moat witness cosigns what moat serve --witness sends, and refuses the vault rolled back while the shipper was away", async () => {
  using tmp = tempDir("moat-e2e-witness-");
  const state = path.join(tmp.dir, "witness");
  const vaultDir = path.join(tmp.dir, "vault");
  const copy = path.join(tmp.dir, "vault-copy");
  const shipState = path.join(tmp.dir, "ship-app.json");

  const init = await runMoat(["witness", "--init", "--state", state]);
  assert.equal(init.code, 0, init.stderr);
  const key = init.stdout.trim();
  assert.equal(parseVerifier(key).type, 0x04);

  let witness = await startWitness(state);
  const serve = (addr: string) =>
    startServer([
      "--vault",
      vaultDir,
      "--seal-interval",
      "1",
      "--witness",
      addr,
      "--witness-key",
      key,
    ]);
  const ship = async (port: number, from: number, n: number) => {
    const r = await runMoat([
      "ship",
      "-",
      "--source",
      "app",
      "--server",
      `127.0.0.1:${port}`,
      // One state whatever port the server gets (its name has the server in it).
      "--state",
      shipState,
    ], { input: lines(from, n) });
    assert.equal(r.code, 0, r.stderr);
  };
  const sizeCosigned = (size: number) =>
    witness.waitEvent(
      (e) => e.event === "witness_cosigned" && e.size === size,
      `witness_cosigned at size ${size}`,
    );

  {
    await using server = await serve(witness.addr);
    await ship(server.port, 1, 10_000);
    const first = await sizeCosigned(10_000);
    assert.equal(first.pinned, true);
    await server.waitEvent((e) => e.event === "cosigned", "cosigned");
  }
  fs.cpSync(vaultDir, copy, { recursive: true });
  {
    await using server = await serve(witness.addr);
    await ship(server.port, 10_001, 10_000);
    const grown = await sizeCosigned(20_000);
    assert.equal(grown.from, 10_000);
  }
  // The vault kept the cosigned checkpoints: its latest is cosigned, as
  // vault verify --witness-key requires.
  const [sourceDir] = fs.readdirSync(path.join(vaultDir, "sources"));
  const logged = await readCheckpointLog(
    path.join(vaultDir, "sources", sourceDir!),
  );
  const report = checkWitnessed(logged, {
    vault: parseVerifier(
      JSON.parse(fs.readFileSync(path.join(vaultDir, "vault.json"), "utf8"))
        .checkpointKey,
    ),
    witnesses: [parseVerifier(key)],
    now: Date.now() + 3_600_000,
    graceMs: 60_000,
  });
  assert.deepEqual(report.problems, []);
  assert.deepEqual(report.witnessed, {
    [parseVerifier(key).name]: 20_000,
  });
  // vault verify --witness-key requires the same, from the command line;
  // a cosignature altered in the vault's log is damage (exit 5).
  const verified = await runMoat([
    "vault",
    "verify",
    vaultDir,
    "--witness-key",
    key,
  ]);
  assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  const logFile = path.join(vaultDir, "sources", sourceDir!, "checkpoints");
  const original = fs.readFileSync(logFile, "utf8");
  const entries = original.trimEnd().split("\n").map((l) => JSON.parse(l));
  const last = entries.at(-1)!;
  const witnessName = parseVerifier(key).name;
  // Flip one base64 digit inside the Ed25519 signature (after the key id
  // and the time), so the line still names the witness.
  last.note = last.note.replace(
    new RegExp(`(\u2014 ${witnessName.replace(/\./g, "\\.")} .{50})(.)`),
    (_: string, head: string, c: string) => head + (c === "A" ? "B" : "A"),
  );
  fs.writeFileSync(
    logFile,
    entries.map((e) => JSON.stringify(e)).join("\n") + "\n",
  );
  const forged = await runMoat([
    "vault",
    "verify",
    vaultDir,
    "--witness-key",
    key,
  ]);
  assert.equal(forged.code, 5, forged.stdout + forged.stderr);
  assert.match(forged.stdout, /DAMAGED: .*cosignature by .* does not verify/);
  fs.writeFileSync(logFile, original);
  const notWitness = await runMoat([
    "vault",
    "verify",
    vaultDir,
    "--witness-key",
    JSON.parse(fs.readFileSync(path.join(vaultDir, "vault.json"), "utf8"))
      .checkpointKey,
  ]);
  assert.equal(notWitness.code, 2, notWitness.stderr);
  assert.match(notWitness.stderr, /not a witness key/);

  // The witness forgets nothing across a restart.
  assert.equal(await witness.stop(), 0);
  const held = fs.readdirSync(path.join(state, "origins"));
  assert.equal(held.length, 1);
  const origin = JSON.parse(
    fs.readFileSync(path.join(state, "origins", held[0]!), "utf8"),
  );
  assert.equal(origin.size, 20_000);
  verifyCosignature(origin.checkpoint, parseVerifier(key));
  witness = await startWitness(state);

  // The intruder puts the older copy back while the shipper is away.
  fs.rmSync(vaultDir, { recursive: true });
  fs.renameSync(copy, vaultDir);
  await using server = await serve(witness.addr);
  const refused = await witness.waitEvent(
    (e) => e.event === "witness_refused",
    "witness_refused",
  );
  assert.equal(refused.reason, "smaller tree: a rollback");
  assert.deepEqual(
    [(refused.held as Event).size, (refused.offered as Event).size],
    [20_000, 10_000],
  );
  const loud = await server.waitEvent(
    (e) => e.event === "cosign_refused",
    "cosign_refused",
  );
  assert.equal(loud.code, "ERR_WITNESS_REFUSED");
  assert.match(String(loud.message), /size 10000 .*rollback.*size 20000/);
  // The checkpoint the witness holds shows the rollback offline too.
  const held20k = path.join(tmp.dir, "held.checkpoint");
  fs.writeFileSync(held20k, origin.checkpoint);
  const rolled = await runMoat([
    "vault",
    "verify",
    vaultDir,
    "--checkpoint",
    held20k,
  ]);
  assert.equal(rolled.code, 5, rolled.stdout + rolled.stderr);
  assert.match(rolled.stdout, /DAMAGED: .*held\.checkpoint/);
  // The server serves on: another source ships and is acknowledged.
  const other = await runMoat([
    "ship",
    "-",
    "--source",
    "other",
    "--server",
    `127.0.0.1:${server.port}`,
    "--state-dir",
    path.join(tmp.dir, "ship-other"),
  ], { input: lines(1, 5) });
  assert.equal(other.code, 0, other.stderr);
  assert.equal(await server.stop(), 0);
  assert.equal(await witness.stop(), 0);
});

test("moat witness --init refuses other options, and moat serve --witness needs a key per witness and a vault", async () => {
  using tmp = tempDir("moat-e2e-witness-");
  const state = path.join(tmp.dir, "w");
  const bad = await runMoat([
    "witness",
    "--init",
    "--state",
    state,
    "--vault-key",
    "x",
  ]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--init takes only --state and --name/);
  const noState = await runMoat(["witness", "--init"]);
  assert.equal(noState.code, 2);
  const init = await runMoat(["witness", "--init", "--state", state]);
  const key = init.stdout.trim();
  for (
    const [args, message] of [
      [["--witness", "127.0.0.1"], /needs --vault/],
      [["--vault", tmp.dir, "--witness", "127.0.0.1"], /one --witness-key per/],
      [["--witness-key", key], /need --witness/],
      [
        ["--vault", tmp.dir, "--witness", "127.0.0.1", "--witness-key", "x"],
        /Invalid --witness-key/,
      ],
    ] as const
  ) {
    const r = await runMoat(["serve", "--port", "0", ...args]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, message);
  }
});

test("README's witness example runs as written, on loopback", async () => {
  using tmp = tempDir("moat-e2e-witness-readme-");
  const readme = fs.readFileSync(
    path.join(import.meta.dirname ?? ".", "..", "README.md"),
    "utf8",
  );
  const at = readme.indexOf("**A witness.**");
  assert.ok(at >= 0, "README has the witness paragraph");
  const block = /```sh\n([\s\S]*?)```/.exec(readme.slice(at))![1]!;
  const commands = block.split("\n").map((l) => l.replace(/\s+#.*$/, "").trim())
    .filter((l) => l !== "");
  assert.equal(commands.length, 3, commands.join(" | "));
  for (const c of commands) {
    assert.doesNotMatch(c, /["'\\$`;&|]/, `plain words only: ${c}`);
  }
  // The README's addresses and paths, moved to loopback and the test's folder.
  let witnessAddr = "";
  let key = "";
  const words = (c: string) =>
    c.split(/\s+/).slice(2).map((w) =>
      w.replace(/^\/var\//, `${tmp.dir}/var/`)
        .replace(/^10\.0\.0\.1$/, "127.0.0.1")
        .replace(/^10\.0\.0\.0\/24$/, "127.0.0.0/8")
        .replace(/^0\.0\.0\.0:4321$/, "127.0.0.1:0")
        .replace(/^10\.0\.0\.9:4321$/, () => witnessAddr)
        .replace(/^KEY$/, () => key)
    );
  const [init, run, serve] = commands as [string, string, string];
  assert.match(init, /^moat witness --init /);
  const made = await runMoat(["witness", ...words(init)]);
  assert.equal(made.code, 0, made.stderr);
  key = made.stdout.trim();
  assert.equal(parseVerifier(key).type, 0x04);
  assert.match(run, /^moat witness --state /);
  const witness = await startWitness("", words(run));
  witnessAddr = witness.addr;
  assert.match(serve, /^moat serve /);
  {
    await using server = await startServer([
      ...words(serve),
      "--seal-interval",
      "1",
    ]);
    const shipped = await runMoat([
      "ship",
      "-",
      "--source",
      "app",
      "--server",
      `127.0.0.1:${server.port}`,
      "--state-dir",
      path.join(tmp.dir, "ship"),
    ], { input: lines(1, 10) });
    assert.equal(shipped.code, 0, shipped.stderr);
    await witness.waitEvent(
      (e) => e.event === "witness_cosigned" && e.size === 10,
      "witness_cosigned at size 10",
    );
    await server.waitEvent((e) => e.event === "cosigned", "cosigned");
  }
  assert.equal(await witness.stop(), 0);
});
