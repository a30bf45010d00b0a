/**
 * The README's rollback example runs as written, with moat as a process:
 * `vault checkpoint`, `vault proof`, `verify-proof` with the key from
 * vault.json, and `vault verify --checkpoint`, which passes on the vault
 * and fails (exit 5, the README's line) once an older copy is put back.
 * Then `verify-proof` refuses altered proofs.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { openVault } from "../lib/vault/store.ts";
import { finished, moatCommand, type RunResult, tempDir } from "./_e2e.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
const README_VAULT = "/var/lib/moat/vault";
const AUTH = { peer: "10.0.0.5", name: "auth" };

/** The sh block after "**Rollback.**", and the DAMAGED line shown after it. */
function readmeRollback(): { lines: string[]; damaged: string } {
  const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
  const at = readme.indexOf("**Rollback.**");
  assert.ok(at >= 0, "README has no Rollback paragraph");
  const rest = readme.slice(at);
  const block = /```sh\n([\s\S]*?)```/.exec(rest)![1]!;
  const damaged = /\n(DAMAGED: [^\n]*)\n/.exec(rest)![1]!;
  return {
    lines: block.split("\n").map((l) => l.replace(/\s+#\s.*$/, "").trim())
      .filter((l) => l !== ""),
    damaged,
  };
}

function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Runs one line in bash in `cwd`, `moat` being the moat under test. */
function run(line: string, cwd: string, vault: string): Promise<RunResult> {
  const moat = moatCommand().map(shellQuote).join(" ");
  const script = `set -o pipefail\nmoat() { ${moat} "$@"; }\n${
    line.replaceAll(README_VAULT, vault)
  }\n`;
  const child = spawn("bash", ["-c", script], {
    cwd,
    env: { ...process.env, NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return finished(child, 60_000);
}

async function append(dir: string, from: number, to: number): Promise<void> {
  const vault = await openVault(dir, { sealIntervalMs: 0 });
  const records = [];
  for (let seq = from; seq <= to; seq++) {
    records.push({
      seq,
      ts: 1_700_000_000_000 + seq,
      line: new TextEncoder().encode(`sshd[${seq}]: session opened`),
    });
  }
  for (let i = 0; i < records.length; i += 1000) {
    await vault.append(AUTH, records.slice(i, i + 1000));
  }
  await vault.close();
}

test("the README's rollback example: checkpoint, proof, verify-proof, and verify --checkpoint failing on an older copy", async () => {
  using tmp = tempDir();
  const vault = path.join(tmp.dir, "vault");
  const older = path.join(tmp.dir, "older");
  await append(vault, 1, 1200);
  fs.cpSync(vault, older, { recursive: true });
  await append(vault, 1201, 1500);
  const { lines, damaged } = readmeRollback();
  assert.equal(lines.length, 4);
  const [checkpoint, proof, verifyProof, verify] = lines as [
    string,
    string,
    string,
    string,
  ];

  let r = await run(checkpoint, tmp.dir, vault);
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    fs.readFileSync(path.join(tmp.dir, "auth.cp"), "utf8"),
    /\n1500\n/,
  );
  r = await run(proof, tmp.dir, vault);
  assert.equal(r.code, 0, r.stderr);
  r = await run(verifyProof, tmp.dir, vault);
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    /^OK: record 42 is leaf 41 of the tree of 1500 records/,
  );
  assert.match(r.stdout, /sshd\[42\]: session opened/);
  r = await run(verify, tmp.dir, vault);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(
    r.stdout,
    /matches \d+ checkpoint\(s\), 1 of them held outside the vault \(--checkpoint, a witness\)/,
  );

  // The older copy put back.
  fs.rmSync(vault, { recursive: true });
  fs.renameSync(older, vault);
  r = await run(verify, tmp.dir, vault);
  assert.equal(r.code, 5, r.stdout + r.stderr);
  assert.ok(
    r.stdout.split("\n").includes(damaged),
    `README's line not printed:\n${r.stdout}`,
  );

  // Altered proofs and a wrong key are refused.
  const json = JSON.parse(
    fs.readFileSync(path.join(tmp.dir, "proof.json"), "utf8"),
  );
  const key = JSON.parse(
    fs.readFileSync(path.join(vault, "vault.json"), "utf8"),
  ).checkpointKey;
  const altered = [
    { ...json, leaf: json.leaf.slice(0, -2) + "00" },
    { ...json, index: 40 },
    { ...json, path: json.path.slice(1) },
    { ...json, treeSize: 1499 },
    { ...json, checkpoint: json.checkpoint.replace("\n1500\n", "\n1501\n") },
  ];
  for (const [i, bad] of altered.entries()) {
    const file = path.join(tmp.dir, `bad-${i}.json`);
    fs.writeFileSync(file, JSON.stringify(bad));
    r = await run(`moat verify-proof --key '${key}' ${file}`, tmp.dir, vault);
    assert.equal(r.code, 5, `case ${i}: ${r.stdout}${r.stderr}`);
    assert.equal(r.stdout, "");
    assert.equal(r.stderr.split("\n").filter(Boolean).length, 1, r.stderr);
  }
  const other = key.replace(/\+[0-9a-f]{8}\+/, "+00000000+");
  r = await run(
    `moat verify-proof --key '${other}' proof.json`,
    tmp.dir,
    vault,
  );
  assert.equal(r.code, 5, r.stderr);
});
