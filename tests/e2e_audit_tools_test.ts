/**
 * The tools docs/AUDIT.md points at, run on a real audit log that `moat
 * serve` writes here (refusals from 127.0.0.2, a failed token, a get):
 * Debian's fail2ban-regex with contrib/fail2ban's filter, the jail as
 * fail2ban-client reads it, and the jq recipes exactly as documented.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { runMoat, tempDir } from "./_e2e.ts";
import {
  connectFrom,
  readAudit,
  startLogged,
  waitAudit,
} from "./_audit_file.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
const FILTER = path.join(ROOT, "contrib/fail2ban/filter.d/moat.conf");
const JAIL = path.join(ROOT, "contrib/fail2ban/jail.d/moat.conf");
const has = (cmd: string) =>
  spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0;

/**
 * Runs a server in `dir` that allows 127.0.0.1 and requires a token, and
 * makes it log three refusals of 127.0.0.2, one failed token and one get.
 *
 * @returns The audit log's path.
 */
async function makeAuditLog(dir: string): Promise<string> {
  const log = path.join(dir, "audit.log");
  const root = path.join(dir, "root");
  fs.mkdirSync(root);
  fs.writeFileSync(path.join(root, "report.txt"), "twelve bytes");
  const secret = "alice-secret-0123456789";
  const tokenFile = (name: string, line: string) => {
    fs.writeFileSync(path.join(dir, name), `${line}\n`, { mode: 0o600 });
    return path.join(dir, name);
  };
  const serverTokens = tokenFile("tokens", `alice ${secret}`);
  const good = tokenFile("good", `alice ${secret}`);
  const bad = tokenFile("bad", "alice not-alices-secret-012345");
  await using server = await startLogged(log, [
    "--allow",
    "127.0.0.1",
    "--root",
    root,
    "--token-file",
    serverTokens,
  ], dir);
  for (let i = 0; i < 3; i++) {
    const c = await connectFrom(server.port, "127.0.0.2");
    assert.match(await c.ended, /^ERR ACCESS_DENIED /);
  }
  const srv = `127.0.0.1:${server.port}`;
  const get = (token: string, out: string) =>
    runMoat([
      "get",
      "FILE:report.txt",
      "-o",
      path.join(dir, out),
      "--server",
      srv,
      "--token-file",
      token,
    ], { cwd: dir });
  const ok = await get(good, "copy.txt");
  assert.equal(ok.code, 0, ok.stderr);
  const refused = await get(bad, "never.txt");
  assert.notEqual(refused.code, 0);
  await waitAudit(log, (e) => e.event === "get_finished", "get_finished");
  await waitAudit(
    log,
    (e) => e.event === "refused" && e.reason === "token authentication failed",
    "the failed token",
  );
  assert.equal(await server.stop(), 0);
  return log;
}

test(
  "contrib/fail2ban's filter matches exactly the refusals and the failed token in a real audit log",
  {
    skip: !has("fail2ban-regex") &&
      "fail2ban is not installed (scripts/deps.sh installs it)",
  },
  async () => {
    using tmp = tempDir();
    const log = await makeAuditLog(tmp.dir);
    const lines = fs.readFileSync(log, "utf8").split("\n").filter((l) =>
      l !== ""
    );
    const expected = lines.filter((l) => {
      const e = JSON.parse(l);
      return e.event === "refused" &&
        (e.ip === "127.0.0.2" || e.reason === "token authentication failed");
    });
    assert.equal(expected.length, 4, lines.join("\n"));
    for (
      const event of ["accepted", "authenticated", "get_finished", "closed"]
    ) {
      assert.ok(lines.some((l) => JSON.parse(l).event === event), event);
    }

    const matched = spawnSync("fail2ban-regex", ["--out=msg", log, FILTER], {
      encoding: "utf8",
    });
    assert.equal(matched.status, 0, matched.stderr);
    assert.deepEqual(
      matched.stdout.split("\n").filter((l) => l !== "").sort(),
      [...expected].sort(),
    );
    const ips = spawnSync("fail2ban-regex", ["--out=ip", log, FILTER], {
      encoding: "utf8",
    });
    assert.deepEqual(
      ips.stdout.split("\n").filter((l) => l !== "").sort(),
      ["127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.2"],
    );
    const summary = spawnSync("fail2ban-regex", [log, FILTER], {
      encoding: "utf8",
    });
    assert.match(
      summary.stdout,
      new RegExp(
        `Lines: ${lines.length} lines, 0 ignored, 4 matched, ${
          lines.length - 4
        } missed`,
      ),
    );
    // Every line's time is read from its ts field.
    assert.match(
      summary.stdout,
      new RegExp(`\\[${lines.length}\\] "ts":"Year-`),
    );
  },
);

test(
  "contrib/fail2ban's jail loads in fail2ban-client with the moat filter and its log",
  {
    skip:
      (!has("fail2ban-client") || !fs.existsSync("/etc/fail2ban/jail.conf")) &&
      "fail2ban is not installed (scripts/deps.sh installs it)",
  },
  () => {
    using tmp = tempDir();
    const conf = path.join(tmp.dir, "fail2ban");
    fs.cpSync("/etc/fail2ban", conf, { recursive: true });
    // Only moat's jail: the distribution's (sshd) need a journal.
    fs.rmSync(path.join(conf, "jail.d"), { recursive: true, force: true });
    fs.mkdirSync(path.join(conf, "jail.d"));
    const log = path.join(tmp.dir, "audit.log");
    fs.writeFileSync(log, "");
    fs.copyFileSync(FILTER, path.join(conf, "filter.d", "moat.conf"));
    fs.writeFileSync(
      path.join(conf, "jail.d", "moat.conf"),
      fs.readFileSync(JAIL, "utf8").replace(
        /^logpath .*$/m,
        `logpath = ${log}`,
      ),
    );
    const r = spawnSync("fail2ban-client", ["-c", conf, "-d"], {
      encoding: "utf8",
    });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(r.stdout.includes("['add', 'moat', 'auto']"), r.stdout);
    assert.ok(
      r.stdout.includes(`['set', 'moat', 'addlogpath', '${log}', 'head']`),
      r.stdout,
    );
    assert.ok(r.stdout.includes("['set', 'moat', 'maxretry', 5]"), r.stdout);
    assert.ok(r.stdout.includes("['port', '4320']"), r.stdout);
  },
);

/** The recipes of docs/AUDIT.md: title (its first comment) → command. */
function recipes(): Map<string, string> {
  const doc = fs.readFileSync(path.join(ROOT, "docs/AUDIT.md"), "utf8");
  const section = doc.split(/^## /m).find((s) => s.startsWith("Recipes\n"))!;
  const out = new Map<string, string>();
  for (const m of section.matchAll(/```sh\n# (.+)\n([\s\S]*?)```/g)) {
    out.set(m[1]!, m[2]!.trim());
  }
  return out;
}

test("docs/AUDIT.md's jq recipes answer from a real audit log", {
  skip: !has("jq") && "jq is not installed (scripts/deps.sh installs it)",
}, async () => {
  using tmp = tempDir();
  const log = await makeAuditLog(tmp.dir);
  const all = recipes();
  assert.deepEqual([...all.keys()], [
    "what was refused today",
    "who fetched what",
    "failed auth by address",
  ]);
  const run = (title: string) => {
    const command = all.get(title)!;
    assert.ok(command.includes("/var/log/moat/audit.log"), command);
    const r = spawnSync(
      "bash",
      [
        "-o",
        "pipefail",
        "-c",
        command.replaceAll("/var/log/moat/audit.log", log),
      ],
      { encoding: "utf8" },
    );
    assert.equal(r.status, 0, `${title}: ${r.stderr}`);
    return r.stdout.split("\n").filter((l) => l !== "");
  };
  const events = readAudit(log);

  const today = new Date().toISOString().slice(0, 10);
  const refused = events.filter((e) =>
    e.event === "refused" && String(e.ts).startsWith(today)
  );
  assert.equal(refused.length, 4);
  assert.deepEqual(
    run("what was refused today").map((l) => JSON.parse(l)),
    refused.map((e) => ({
      ts: e.ts,
      ip: e.ip,
      code: e.code ?? null,
      reason: e.reason,
    })),
  );

  const finished = events.find((e) => e.event === "get_finished")!;
  assert.deepEqual(run("who fetched what"), [
    `${finished.ts}\t127.0.0.1\ttoken:alice\treport.txt\t12`,
  ]);

  assert.deepEqual(
    run("failed auth by address").map((l) => l.trim().split(/\s+/)),
    [["1", "127.0.0.1"]],
  );
});
