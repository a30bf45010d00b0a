/**
 * End-to-end tests of what signals do to `moat serve` (cli/serve_signals.ts):
 * SIGHUP reloads the configuration files and reopens the audit log (also
 * under Debian's real logrotate), SIGUSR1 is only logged, SIGTERM ends with
 * the vault's last seal before `shutdown`. Run as a separate process: the
 * script on this runtime, or the binary named by MOAT_BIN.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import * as tls from "node:tls";
import { createSelfSignedCert, fingerprint } from "../lib/cert.ts";
import { moatFlavor, runMoat, tempDir } from "./_e2e.ts";
import {
  type AuditEvent,
  connectFrom,
  listeningPorts,
  type LoggedServer,
  portTaken,
  readAudit,
  startLogged,
  waitAudit,
  waitUntil,
} from "./_audit_file.ts";

/** The fingerprint of the certificate a TLS server on `port` shows. */
function servedFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      rejectUnauthorized: false,
      minVersion: "TLSv1.3",
    });
    socket.on("error", reject);
    socket.once("secureConnect", () => {
      const der = socket.getPeerCertificate(true).raw;
      socket.destroy();
      resolve(fingerprint(new Uint8Array(der)));
    });
  });
}

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");

function fp(pem: string): string {
  return fingerprint(new Uint8Array(new X509Certificate(pem).raw));
}

/** Says a line as a plain chat client from `from` and waits for its audit line. */
async function chatFrom(port: number, from: string, log: string, n = 1) {
  const client = await connectFrom(port, from);
  client.socket.write(`hello from ${from}\n`);
  const chat = await waitAudit(
    log,
    (e) => e.event === "chat" && e.ip === from,
    `chat line ${n} from ${from}`,
    n,
  );
  return { client, name: String(chat.name) };
}

test("moat serve SIGHUP reloads --allow-file, closes what it now refuses, and refuses a bad file with reload_failed", async () => {
  using tmp = tempDir();
  const log = path.join(tmp.dir, "audit.log");
  const allow = path.join(tmp.dir, "allow.txt");
  fs.writeFileSync(allow, "127.0.0.1\n");
  await using server = await startLogged(log, ["--allow-file", allow], tmp.dir);

  const first = await chatFrom(server.port, "127.0.0.1", log);
  const early = await connectFrom(server.port, "127.0.0.2");
  assert.match(await early.ended, /^ERR ACCESS_DENIED /);

  fs.writeFileSync(allow, "# now only .2\n127.0.0.2\n");
  server.signal("SIGHUP");
  const reloaded = await waitAudit(
    log,
    (e) => e.event === "reloaded",
    "reloaded",
  );
  assert.deepEqual(reloaded.changed, ["allowlist"]);
  assert.equal(reloaded.closed, 1);
  assert.equal(reloaded.signal, "SIGHUP");
  const revoked = await waitAudit(
    log,
    (e) => e.event === "closed" && e.name === first.name,
    "the revoked session's closed line",
  );
  assert.equal(revoked.reason, "access revoked by reload");
  await first.client.ended;
  await chatFrom(server.port, "127.0.0.2", log);

  // A rule with host bits set does not load: refused, and the rules in
  // force stay (127.0.0.2 in, 127.0.0.1 out).
  fs.writeFileSync(allow, "10.0.0.5/24\n");
  server.signal("SIGHUP");
  const failed = await waitAudit(
    log,
    (e) => e.event === "reload_failed",
    "reload_failed",
  );
  assert.match(
    String(failed.reason),
    /^Invalid rule: "10\.0\.0\.5\/24" has host bits set/,
  );
  const note = await server.stderr.waitFor(
    (l) => l.startsWith("moat: reload refused: "),
    15_000,
    "the reload refusal on stderr",
  );
  assert.equal(
    note,
    `moat: reload refused: ${failed.reason}; nothing changed`,
  );
  await chatFrom(server.port, "127.0.0.2", log, 2);
  const late = await connectFrom(server.port, "127.0.0.1");
  assert.match(await late.ended, /^ERR ACCESS_DENIED /);
  assert.equal(readAudit(log).filter((e) => e.event === "reloaded").length, 1);

  assert.equal(await server.stop(), 0);
});

test("moat serve SIGHUP reloads --tls-cert, --tls-key, --client-ca and --token-file", async () => {
  using tmp = tempDir();
  const log = path.join(tmp.dir, "audit.log");
  const file = (name: string) => path.join(tmp.dir, name);
  const a = await createSelfSignedCert({ names: ["127.0.0.1"], days: 2 });
  const b = await createSelfSignedCert({ names: ["127.0.0.1"], days: 2 });
  const ca = await createSelfSignedCert({ names: ["ca.example"], days: 2 });
  fs.writeFileSync(file("cert.pem"), a.cert);
  fs.writeFileSync(file("key.pem"), a.key, { mode: 0o600 });
  fs.writeFileSync(file("ca.pem"), a.cert);
  fs.writeFileSync(file("tokens"), "alice alice-secret-0123456789\n", {
    mode: 0o600,
  });
  await using server = await startLogged(log, [
    "--tls-cert",
    file("cert.pem"),
    "--tls-key",
    file("key.pem"),
    "--client-ca",
    file("ca.pem"),
    "--token-file",
    file("tokens"),
  ], tmp.dir);
  assert.equal(await servedFingerprint(server.port), fp(a.cert));

  const reload = async (n: number) => {
    server.signal("SIGHUP");
    return await waitAudit(
      log,
      (e) => e.event === "reloaded" || e.event === "reload_failed",
      `reload ${n}`,
      n,
    );
  };
  fs.writeFileSync(file("cert.pem"), b.cert);
  fs.writeFileSync(file("key.pem"), b.key);
  assert.deepEqual((await reload(1)).changed, ["certificate"]);
  assert.equal(await servedFingerprint(server.port), fp(b.cert));

  fs.writeFileSync(file("ca.pem"), ca.cert);
  fs.writeFileSync(file("tokens"), "bob bob-secret-0123456789ab\n");
  assert.deepEqual((await reload(2)).changed, ["client-ca", "tokens"]);

  // A key that is not the certificate's is refused; B stays in force.
  fs.writeFileSync(file("key.pem"), a.key);
  const refused = await reload(3);
  assert.equal(refused.event, "reload_failed");
  assert.match(String(refused.reason), /is not the key of --tls-cert/);
  assert.equal(await servedFingerprint(server.port), fp(b.cert));
  assert.equal(await server.stop(), 0);
});

test("moat serve keeps writing to a moved --log until SIGHUP, then to a new file at the path", async () => {
  using tmp = tempDir();
  const log = path.join(tmp.dir, "audit.log");
  const moved = `${log}.1`;
  await using server = await startLogged(log, [], tmp.dir);
  fs.renameSync(log, moved);
  const before = await chatFrom(server.port, "127.0.0.1", moved);
  before.client.socket.end();
  await waitAudit(
    moved,
    (e) => e.event === "closed" && e.name === before.name,
    "closed, in the moved file",
  );
  assert.equal(fs.existsSync(log), false);

  server.signal("SIGHUP");
  const reloaded = await waitAudit(
    log,
    (e) => e.event === "reloaded",
    "reloaded",
  );
  assert.equal(reloaded.log, log);
  assert.deepEqual(reloaded.changed, []);
  const after = await chatFrom(server.port, "127.0.0.1", log);
  after.client.socket.end();
  await waitAudit(
    log,
    (e) => e.event === "closed" && e.name === after.name,
    "closed, in the new file",
  );
  assert.equal(await server.stop(), 0);

  // status_* lines are about the status socket, not this connection.
  const old = readAudit(moved).map((e) => e.event).filter((e) =>
    !e.startsWith("status_")
  );
  assert.deepEqual(old, ["listening", "accepted", "chat", "closed"]);
  const fresh = readAudit(log).map((e) => e.event);
  assert.deepEqual(fresh, [
    "reloaded",
    "accepted",
    "chat",
    "closed",
    "signal",
    "shutdown",
  ]);
});

const LOGROTATE = "/usr/sbin/logrotate";

/**
 * The logrotate stanza of docs/DEPLOY.md, with this test's log, its own user
 * and group for `moat`'s, and a `kill -HUP` of the pid in `pidfile` for
 * `systemctl reload moat`.
 */
function deployStanza(paths: { log: string; pidfile: string }): string {
  const doc = fs.readFileSync(
    path.join(import.meta.dirname ?? ".", "..", "docs", "DEPLOY.md"),
    "utf8",
  );
  const stanza = /```conf\n(\/var\/log\/moat\/audit\.log \{\n[\s\S]*?\n\})\n```/
    .exec(doc)?.[1];
  assert.ok(stanza, "docs/DEPLOY.md has the logrotate stanza");
  // id, not os.userInfo(): Bun 1.4.5 names root "unknown" here.
  const id = (flag: string) =>
    spawnSync("id", [flag], { encoding: "utf8" }).stdout.trim();
  const user = id("-un");
  const group = id("-gn");
  const swaps: [string, string][] = [
    ["/var/log/moat/audit.log", paths.log],
    ["su moat moat", `su ${user} ${group}`],
    ["create 0640 moat moat", `create 0640 ${user} ${group}`],
    ["systemctl reload moat", `kill -HUP "$(cat ${paths.pidfile})"`],
  ];
  let out = stanza;
  for (const [from, to] of swaps) {
    assert.ok(out.includes(from), `the stanza has "${from}"`);
    out = out.replace(from, to);
  }
  return out + "\n";
}

test(
  "moat serve under logrotate -f: the old file is rotated, the new one gets every later event, and no line is lost or written twice",
  {
    skip: !fs.existsSync(LOGROTATE) &&
      "logrotate is not installed (scripts/deps.sh installs it)",
  },
  async () => {
    using tmp = tempDir();
    const log = path.join(tmp.dir, "audit.log");
    const pidfile = path.join(tmp.dir, "moat.pid");
    const conf = path.join(tmp.dir, "logrotate.conf");
    fs.writeFileSync(conf, deployStanza({ log, pidfile }), { mode: 0o644 });
    await using server = await startLogged(
      log,
      ["--allow", "127.0.0.1"],
      tmp.dir,
    );
    fs.writeFileSync(pidfile, `${server.child.pid}\n`);

    // Refused peers keep coming while logrotate moves the file and sends
    // SIGHUP; each has its own port, so each line can be found once.
    const ports: number[] = [];
    const refuse = async () => {
      const c = await connectFrom(server.port, "127.0.0.2");
      ports.push(c.port);
      assert.match(await c.ended, /^ERR ACCESS_DENIED /);
    };
    for (let i = 0; i < 20; i++) await refuse();
    const rotating = new Promise<{ code: number | null; stderr: string }>(
      (resolve) => {
        const child = spawn(LOGROTATE, [
          "-f",
          "-s",
          path.join(tmp.dir, "state"),
          conf,
        ]);
        let stderr = "";
        child.stderr.setEncoding("utf8").on("data", (d) => (stderr += d));
        child.on("close", (code) => resolve({ code, stderr }));
      },
    );
    const during = Promise.all(Array.from({ length: 4 }, async () => {
      for (let i = 0; i < 5; i++) await refuse();
    }));
    const rotated = await rotating;
    assert.equal(rotated.code, 0, `logrotate: ${rotated.stderr}`);
    await during;
    await waitAudit(
      log,
      (e) => e.event === "reloaded",
      "reloaded in the new file",
    );
    for (let i = 0; i < 20; i++) {
      await refuse();
    }
    const all = () => [...readAudit(`${log}.1`), ...readAudit(log)];
    await waitUntil(
      () =>
        all().filter((e) => e.event === "refused").length >= ports.length ||
        undefined,
      `${ports.length} refused lines`,
    );
    assert.equal(await server.stop(), 0);

    const old = readAudit(`${log}.1`);
    const fresh = readAudit(log);
    assert.equal(old[0]?.event, "listening");
    assert.equal(old.some((e) => e.event === "reloaded"), false);
    // Nothing reached the new file before moat reopened it.
    assert.equal(fresh[0]?.event, "reloaded");
    assert.equal(fresh.at(-1)?.event, "shutdown");
    const refusedIn = (events: AuditEvent[]) =>
      events.filter((e) => e.event === "refused").length;
    assert.ok(refusedIn(old) >= 20, "the refusals before rotation");
    assert.ok(refusedIn(fresh) >= 20, "the refusals after it");
    const refusedPorts = [...old, ...fresh]
      .filter((e) => e.event === "refused")
      .map((e) => e.port as number);
    assert.deepEqual(
      [...refusedPorts].sort((x, y) => x - y),
      [...ports].sort((x, y) => x - y),
    );
    const oldLines = new Set(fs.readFileSync(`${log}.1`, "utf8").split("\n"));
    const doubled = fs.readFileSync(log, "utf8").split("\n").filter((l) =>
      l !== "" && oldLines.has(l)
    );
    assert.deepEqual(doubled, []);
  },
);

/**
 * Sends SIGUSR1 until the runtime opens its inspector (Deno says so on
 * stderr), at most 50 times: Deno only answers SIGUSR1 half a second after
 * it starts. Each round waits for moat's `signal` line and a chat round
 * trip. With `once`, sends it one time.
 */
async function sendUsr1(
  server: LoggedServer,
  log: string,
  once: boolean,
): Promise<void> {
  const signals = (e: AuditEvent) =>
    e.event === "signal" && e.signal === "SIGUSR1";
  const opened = () =>
    server.stderr.lines.some((l) => l.startsWith("Debugger listening on"));
  for (let round = 1; round <= 50; round++) {
    server.signal("SIGUSR1");
    const line = await waitAudit(log, signals, `SIGUSR1 line ${round}`, round);
    assert.equal(line.action, "ignored");
    const { client } = await chatFrom(server.port, "127.0.0.1", log, round);
    client.socket.end();
    if (once || opened()) return;
  }
  assert.fail("the inspector never opened");
}

// Deno opens its inspector on 127.0.0.1:9229 on SIGUSR1 (moat closes it);
// with that port taken by something else there is nothing to watch.
const DENO_INSPECTOR = moatFlavor() === "deno" && !portTaken(9229);

test("moat serve logs SIGUSR1 and goes on serving, with no debugger port open", async () => {
  using tmp = tempDir();
  const log = path.join(tmp.dir, "audit.log");
  await using server = await startLogged(log, [], tmp.dir);
  await sendUsr1(server, log, !DENO_INSPECTOR);
  if (DENO_INSPECTOR) {
    const closed = await waitAudit(
      log,
      (e) => e.event === "inspector_closed",
      "inspector_closed",
    );
    assert.equal(closed.url, "ws://127.0.0.1:9229");
  }
  const pid = server.child.pid!;
  await waitUntil(
    () => listeningPorts(pid).join() === `${server.port}` || undefined,
    `only port ${server.port} listening (${listeningPorts(pid)})`,
  );
  assert.equal(server.child.exitCode, null);
  assert.equal(await server.stop(), 0);
});

test(
  "moat serve on Deno with narrowed permissions closes the inspector SIGUSR1 opens, unseen",
  {
    skip: !DENO_INSPECTOR &&
      "only Deno opens an inspector on SIGUSR1 (and 127.0.0.1:9229 must be free)",
  },
  async () => {
    using tmp = tempDir();
    const log = path.join(tmp.dir, "audit.log");
    // As the Deno systemd unit runs it: no --allow-sys, so moat may not ask
    // the inspector's address.
    await using server = await startLogged(log, [], tmp.dir, [
      process.execPath,
      "run",
      "--no-prompt",
      "--allow-net=127.0.0.1",
      `--allow-read=${ROOT},${tmp.dir}`,
      `--allow-write=${log}`,
      "--allow-env=MOAT_TOKEN",
      path.join(ROOT, "main.ts"),
    ]);
    await sendUsr1(server, log, false);
    const pid = server.child.pid!;
    await waitUntil(
      () => listeningPorts(pid).join() === `${server.port}` || undefined,
      `only port ${server.port} listening (${listeningPorts(pid)})`,
    );
    assert.equal(
      readAudit(log).some((e) => e.event === "inspector_closed"),
      false,
    );
    assert.equal(await server.stop(), 0);
  },
);

test("moat serve on SIGTERM seals the vault and logs it before shutdown", async () => {
  using tmp = tempDir();
  const log = path.join(tmp.dir, "audit.log");
  const vault = path.join(tmp.dir, "vault");
  const init = await runMoat(["vault", "init", vault]);
  assert.equal(init.code, 0, init.stderr);
  await using server = await startLogged(log, ["--vault", vault], tmp.dir);
  assert.equal(await server.stop(), 0);
  const events = readAudit(log).map((e) => e.event);
  assert.equal(events.at(-1), "shutdown");
  const signal = events.indexOf("signal");
  const sealed = events.lastIndexOf("vault_sealed");
  assert.ok(signal >= 0 && sealed > signal, events.join(" "));
  assert.equal(sealed, events.length - 2, events.join(" "));
  assert.equal(events.includes("vault_unsealed"), false);
});
