import { test } from "node:test";
import assert from "node:assert/strict";
import * as path from "node:path";
import { runMoat, spawnMoat, startServer, tempDir } from "./_e2e.ts";

const COMMANDS = ["serve", "get", "cert", "chat", "ship", "vault", "witness"];

test("moat --help lists every command and the environment variables", async () => {
  for (const args of [["--help"], ["-h"], ["help"], []]) {
    const r = await runMoat(args);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "");
    for (const name of [...COMMANDS, "help"]) {
      assert.match(r.stdout, new RegExp(`\\n {2}${name} +\\S`), name);
    }
    for (const name of ["MOAT_SERVER", "MOAT_TOKEN", "MOAT_CONFIG_DIR"]) {
      assert.match(r.stdout, new RegExp(`\\n {2}${name} +read by `), name);
    }
  }
});

test("moat <command> --help lists the options, environment and exit codes", async () => {
  for (const name of COMMANDS) {
    for (const args of [[name, "--help"], ["help", name]]) {
      const r = await runMoat(args);
      assert.equal(r.code, 0, `${args}: ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`^Usage: moat ${name}`));
      assert.match(r.stdout, /\n {2}-h, --help +Show this help\n/);
      assert.match(r.stdout, /\nExit codes:\n {2}0 /);
    }
  }
  const get = await runMoat(["get", "--help"]);
  assert.match(get.stdout, /\n {2}MOAT_SERVER /);
  assert.match(get.stdout, /the port defaults to\s+4320/);
});

test("moat suggests the command meant by a mistyped one", async () => {
  const r = await runMoat(["serv", "--port", "0"]);
  assert.equal(r.code, 2);
  assert.equal(
    r.stderr,
    'moat: Unknown command "serv" (did you mean serve?)\n',
  );
  assert.equal(r.stdout, "");
  const help = await runMoat(["help", "shpi"]);
  assert.equal(help.code, 2);
  assert.equal(
    help.stderr,
    'moat: Unknown command "shpi" (did you mean ship?)\n',
  );
  const vault = await runMoat(["vault", "lss"]);
  assert.equal(vault.code, 2);
  assert.equal(
    vault.stderr,
    'moat: Unknown vault command "lss" (did you mean ls?)\n',
  );
});

test("moat suggests the option meant by a mistyped one and checks values in its own words", async () => {
  const opt = await runMoat(["get", "FILE:x", "--sever", "127.0.0.1"]);
  assert.equal(opt.code, 2);
  assert.equal(
    opt.stderr,
    'moat: Unknown option "--sever" (did you mean --server?)\n',
  );
  const port = await runMoat(["serve", "--port", "-1"]);
  assert.equal(port.code, 2);
  assert.equal(
    port.stderr,
    'moat: Invalid --port "-1": expected an integer ≥ 0 and ≤ 65535\n',
  );
  const timeout = await runMoat(["chat", "--timeout", "-1"]);
  assert.equal(timeout.code, 2);
  assert.equal(
    timeout.stderr,
    'moat: Invalid --timeout "-1": expected an integer ≥ 1\n',
  );
  const missing = await runMoat(["get", "FILE:x", "--server"]);
  assert.equal(missing.code, 2);
  assert.equal(
    missing.stderr,
    "moat: Missing value for --server: expected HOST[:PORT]\n",
  );
});

test("moat names a missing file and its path instead of an errno code", async () => {
  using dir = tempDir();
  const ca = path.join(dir.dir, "nope.pem");
  const r = await runMoat(["get", "FILE:x", "--tls", "--ca", ca]);
  assert.equal(r.code, 2);
  assert.equal(
    r.stderr,
    `moat: Cannot read --ca "${ca}": no such file or directory\n`,
  );
  const allow = await runMoat(["serve", "--allow-file", ca]);
  assert.equal(allow.code, 2);
  assert.equal(
    allow.stderr,
    `moat: Cannot read --allow-file "${ca}": no such file or directory\n`,
  );
  const out = path.join(dir.dir, "no", "f.bin");
  const get = await runMoat(["get", "FILE:x", "-o", out]);
  assert.equal(get.code, 1);
  assert.equal(
    get.stderr,
    `moat: Cannot write "${out}": no such file or directory\n`,
  );
});

test("moat vault cat stops quietly when its reader closes the pipe", async () => {
  using dir = tempDir();
  const vault = path.join(dir.dir, "vault");
  await using server = await startServer(["--vault", vault]);
  // Far more than a pipe holds, so the reader closes it mid-output.
  const input = Array.from(
    { length: 20_000 },
    (_, i) => `line ${i} ${"x".repeat(60)}\n`,
  ).join("");
  const shipped = await runMoat([
    "ship",
    "-",
    "--server",
    `127.0.0.1:${server.port}`,
    "--state",
    path.join(dir.dir, "s.json"),
  ], { input });
  assert.equal(shipped.code, 0, shipped.stderr);
  const cat = spawnMoat(["vault", "cat", vault]);
  cat.stdin!.end();
  let stderr = "";
  cat.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const closed = new Promise<number | null>((resolve) =>
    cat.on("close", (code) => resolve(code))
  );
  await new Promise((resolve) => cat.stdout!.once("data", resolve));
  cat.stdout!.destroy();
  assert.equal(await closed, 141, stderr);
  assert.equal(stderr, "");
});
