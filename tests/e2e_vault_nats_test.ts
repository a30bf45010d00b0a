/**
 * `moat vault import / export / verify / ls / cat / checkpoint / proof` on a
 * `nats://…` vault, as a separate process against a real nats-server with
 * the account layout of docs/DEPLOY.md; and the refusals (a server that
 * does not answer, a stream that does not exist, prune on a stream) as
 * one-line errors.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { spawn } from "node:child_process";
import process from "node:process";
import { finished, moatCommand, runMoat, tempDir } from "./_e2e.ts";
import {
  createVaultStream,
  freePorts,
  jsPublish,
  noNats,
  rawConnect,
  startNatsCluster,
  waitNoMetaLeader,
  waitNoStreamLeader,
  waitStreamLeader,
} from "./_nats.ts";
import { initVault } from "../lib/vault/init.ts";
import { openVault } from "../lib/vault/store.ts";
import {
  encodeRecordMessage,
  encodeRecordSection,
  sourceId,
} from "../lib/vault/nats/codec.ts";
import { recordBatch } from "../lib/vault/_format.ts";
import { generateKeyPairSync } from "node:crypto";

const KEY = { peer: "10.0.0.5", name: "web" };
const enc = new TextEncoder();

async function sealedVault(dir: string): Promise<string> {
  const { verificationKey } = await initVault(dir);
  const vault = await openVault(dir, { sealIntervalMs: 0 });
  await vault.append(
    KEY,
    Array.from({ length: 30 }, (_, i) => ({
      seq: i + 1,
      ts: Date.now(),
      line: enc.encode(`line ${i + 1}`),
    })),
  );
  await vault.checkpoint(KEY);
  await vault.seal();
  await vault.close();
  return verificationKey;
}

test(
  "moat vault import, export, verify, ls, cat, checkpoint and proof on nats://",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-e2e-nats-");
    await using cluster = await startNatsCluster({ dir: tmp.dir, nodes: 1 });
    await createVaultStream(cluster);
    const src = path.join(tmp.dir, "src");
    const key = await sealedVault(src);
    const url = `nats://${cluster.servers}`;
    const creds = ["--nats-creds", cluster.users.moat.creds];

    const imported = await runMoat(["vault", "import", src, url, ...creds]);
    assert.equal(imported.code, 0, imported.stderr);
    assert.match(
      imported.stdout,
      /: 30 records in 1 messages from 1 source\(s\), 1 checkpoint\(s\), 2 seal\(s\) \(front door [0-9a-f]{32}\)\n$/,
    );

    const verified = await runMoat([
      "vault",
      "verify",
      url,
      "--key",
      key,
      ...creds,
    ]);
    assert.equal(verified.code, 0, verified.stdout + verified.stderr);
    assert.match(verified.stdout, /10\.0\.0\.5\/web: 30 records, 30 sealed/);
    assert.match(verified.stdout, /OK: every record and seal is intact/);

    const ls = await runMoat(["vault", "ls", url, ...creds]);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /^PEER\tSOURCE\tRECORDS/);
    assert.match(ls.stdout, /\n10\.0\.0\.5\tweb\t30\t/);

    const cat = await runMoat([
      "vault",
      "cat",
      url,
      "--source",
      "web",
      ...creds,
    ]);
    assert.equal(cat.code, 0, cat.stderr);
    assert.equal(cat.stdout.split("\n")[29], "line 30");

    const cp = await runMoat([
      "vault",
      "checkpoint",
      url,
      "--source",
      "web",
      ...creds,
    ]);
    assert.equal(cp.code, 0, cp.stderr);
    const local = await runMoat([
      "vault",
      "checkpoint",
      src,
      "--source",
      "web",
    ]);
    assert.equal(cp.stdout, local.stdout);

    const proof = await runMoat([
      "vault",
      "proof",
      url,
      "--source",
      "web",
      "--seq",
      "7",
      ...creds,
    ]);
    assert.equal(proof.code, 0, proof.stderr);
    const proofFile = path.join(tmp.dir, "proof.json");
    fs.writeFileSync(proofFile, proof.stdout);
    const checkpointKey = JSON.parse(
      fs.readFileSync(path.join(src, "vault.json"), "utf8"),
    ).checkpointKey;
    const checked = await runMoat([
      "verify-proof",
      proofFile,
      "--key",
      checkpointKey,
    ]);
    assert.equal(checked.code, 0, checked.stdout + checked.stderr);

    // Export, then verify offline with --cache's twin: the exported DIR.
    const out = path.join(tmp.dir, "exported");
    const exported = await runMoat(["vault", "export", url, out, ...creds]);
    assert.equal(exported.code, 0, exported.stderr);
    assert.match(exported.stdout, /seals of 1 front door\(s\)\) into /);
    const offline = await runMoat(["vault", "verify", out, "--key", key]);
    assert.equal(offline.code, 0, offline.stdout + offline.stderr);
    // Again into the same directory: brought up to date (nothing new);
    // into another directory that is not empty: refused.
    const again = await runMoat(["vault", "export", url, out, ...creds]);
    assert.equal(again.code, 0, again.stderr);
    const busy = await runMoat(["vault", "export", url, src, ...creds]);
    assert.equal(busy.code, 2, busy.stderr);
    assert.match(busy.stderr, /not empty, and no earlier read/);

    // A forged batch that continues the source, published with moat's own
    // credentials but signed by another key than the vault's: verify
    // reports it as stream damage (skipped, never applied), exit 5.
    using conn = await rawConnect(
      cluster.nodes[0]!.clientPort,
      cluster.users.moat,
    );
    const t = Date.now() - 3_600_000;
    const vaultId = JSON.parse(
      fs.readFileSync(path.join(src, "vault.json"), "utf8"),
    ).id;
    const body = encodeRecordMessage(KEY, 31, 1, [
      encodeRecordSection(
        recordBatch([{ seq: 31, ts: t, line: enc.encode("forged") }]),
        t,
      ),
    ], {
      vaultId: Uint8Array.fromHex(vaultId),
      key: generateKeyPairSync("ed25519").privateKey,
    });
    await jsPublish(conn, `moat.moat.rec.${sourceId(KEY)}`, body);
    const damaged = await runMoat([
      "vault",
      "verify",
      url,
      "--key",
      key,
      ...creds,
    ]);
    assert.equal(damaged.code, 5, damaged.stdout + damaged.stderr);
    assert.match(
      damaged.stdout,
      /DAMAGED: .*signature is not the vault's checkpoint key's/,
    );
    // --cache keeps the copy.
    const cache = path.join(tmp.dir, "cache");
    const ls2 = await runMoat(["vault", "ls", url, "--cache", cache, ...creds]);
    assert.equal(ls2.code, 0, ls2.stderr);
    assert.ok(fs.existsSync(path.join(cache, "stream.json")));
  },
);

test(
  "moat vault on nats://: an unreachable server, a missing stream, prune and bad options are one-line errors",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-e2e-nats-");
    const [port] = await freePorts(1);
    const down = await runMoat([
      "vault",
      "ls",
      `nats://127.0.0.1:${port}`,
    ], { timeoutMs: 60_000 });
    assert.notEqual(down.code, 0);
    assert.match(down.stderr, /^moat: Cannot connect to NATS 127\.0\.0\.1:\d+/);
    assert.equal(down.stderr.trim().split("\n").length, 1, down.stderr);

    await using cluster = await startNatsCluster({ dir: tmp.dir, nodes: 1 });
    const url = `nats://${cluster.servers}`;
    const creds = ["--nats-creds", cluster.users.moat.creds];
    const missing = await runMoat(["vault", "ls", url, ...creds]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /^moat: Cannot read stream "MOAT"/);
    assert.equal(missing.stderr.trim().split("\n").length, 1, missing.stderr);

    await createVaultStream(cluster);
    const empty = await runMoat(["vault", "ls", url, ...creds]);
    assert.notEqual(empty.code, 0);
    assert.match(empty.stderr, /holds no vault/);

    const prune = await runMoat(["vault", "prune", url, "--keep", "1d"]);
    assert.equal(prune.code, 2);
    assert.match(prune.stderr, /directory vault only/);

    const follow = await runMoat(["vault", "cat", url, "--follow", ...creds]);
    assert.equal(follow.code, 2);
    assert.match(follow.stderr, /follow a front door's --vault-cache/);

    const tls = await runMoat([
      "vault",
      "ls",
      url,
      "--nats-tls-cert",
      cluster.users.moat.creds,
    ]);
    assert.equal(tls.code, 2);
    assert.match(tls.stderr, /go together/);
  },
);

/** The sh block after "### More than one vault host" in the README. */
function readmeBlock(): string[] {
  const readme = fs.readFileSync(
    path.join(import.meta.dirname!, "..", "README.md"),
    "utf8",
  );
  const at = readme.indexOf("### More than one vault host");
  assert.ok(at >= 0, "README has no More than one vault host section");
  const block = /```sh\n([\s\S]*?)```/.exec(readme.slice(at))![1]!;
  return block.split("\n").map((l) => l.replace(/\s+#\s.*$/, "").trim())
    .filter((l) => l !== "");
}

test(
  "the README's JetStream vault example runs as written: import, verify, export, verify offline",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-e2e-nats-");
    await using cluster = await startNatsCluster({ dir: tmp.dir, nodes: 1 });
    await createVaultStream(cluster);
    const src = path.join(tmp.dir, "vault");
    fs.writeFileSync(path.join(tmp.dir, "vault.key"), await sealedVault(src));
    const lines = readmeBlock();
    assert.equal(lines.length, 4, lines.join("\n"));
    const moat = moatCommand().map((w) => `'${w.replaceAll("'", `'\\''`)}'`)
      .join(" ");
    for (const line of lines) {
      const script = `set -o pipefail\nmoat() { ${moat} "$@"; }\n${
        line
          .replaceAll(
            "nats://10.0.0.11:4222,10.0.0.12:4222",
            `nats://${cluster.servers}`,
          )
          .replaceAll("/etc/moat/nats.creds", cluster.users.moat.creds)
          .replaceAll("/var/lib/moat/vault", src)
          .replaceAll("/srv/moat-copy", path.join(tmp.dir, "copy"))
      }\n`;
      const child = spawn("bash", ["-c", script], {
        cwd: tmp.dir,
        env: { ...process.env, NO_COLOR: "1" },
        stdio: ["ignore", "pipe", "pipe"],
      });
      const r = await finished(child, 60_000);
      assert.equal(r.code, 0, `${line}\n${r.stdout}${r.stderr}`);
    }
    assert.ok(fs.existsSync(path.join(tmp.dir, "copy", "stream.json")));
  },
);

test(
  "moat vault on nats:// with the cluster's quorum lost (two of three nodes down): a one-line error, then it reads again once a node is back",
  { skip: noNats },
  async () => {
    using tmp = tempDir("moat-e2e-nats-");
    await using cluster = await startNatsCluster({ dir: tmp.dir, nodes: 3 });
    await createVaultStream(cluster);
    const src = path.join(tmp.dir, "src");
    await sealedVault(src);
    const url = `nats://${cluster.servers}`;
    const creds = ["--nats-creds", cluster.users.moat.creds];
    const imported = await runMoat(["vault", "import", src, url, ...creds]);
    assert.equal(imported.code, 0, imported.stderr);
    await cluster.kill(1);
    await cluster.kill(2);
    await waitNoMetaLeader(cluster);
    await waitNoStreamLeader(cluster);
    const down = await runMoat(["vault", "ls", url, ...creds]);
    assert.notEqual(down.code, 0);
    assert.match(down.stderr, /^moat: Cannot read stream "MOAT": /);
    assert.equal(down.stderr.trim().split("\n").length, 1, down.stderr);
    await cluster.restart(1);
    await waitStreamLeader(cluster);
    const back = await runMoat(["vault", "ls", url, ...creds]);
    assert.equal(back.code, 0, back.stderr);
    assert.match(back.stdout, /\n10\.0\.0\.5\tweb\t30\t/);
  },
);
