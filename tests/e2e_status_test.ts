/**
 * End-to-end tests of `moat status` and of source liveness: real `moat
 * serve`, `moat ship` and `moat status` processes on loopback and a Unix
 * socket in a temporary directory.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import {
  finished,
  LineWatcher,
  runMoat,
  spawnMoat,
  startServer,
  tempDir,
} from "./_e2e.ts";

/** A `moat ship` of one file as source "app", its stderr watched. */
function startShipper(log: string, port: number, dir: string) {
  const child = spawnMoat([
    "ship",
    `${log}=app`,
    "--server",
    `127.0.0.1:${port}`,
    "--state-dir",
    path.join(dir, "state"),
  ], { cwd: dir });
  const err = new LineWatcher(child.stderr!);
  const exited = finished(child);
  return { child, err, exited };
}

/** `moat status --json`, parsed. */
async function statusJson(args: string[]): Promise<Record<string, unknown>> {
  const r = await runMoat(["status", "--json", ...args]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split("\n");
  assert.equal(lines.length, 1, "one JSON object on one line");
  return JSON.parse(lines[0]!);
}

test("moat status shows a running server's ship connection and source, as text and as one JSON object", async () => {
  using dir = tempDir();
  const vault = path.join(dir.dir, "vault");
  const log = path.join(dir.dir, "app.log");
  fs.writeFileSync(log, "one\ntwo\nthree\n");
  await using server = await startServer(["--vault", vault]);
  await server.waitEvent((e) => e.event === "status_listening", "status");
  assert.equal(
    fs.lstatSync(path.join(vault, "moat.sock")).mode & 0o777,
    0o600,
  );
  const shipper = startShipper(log, server.port, dir.dir);
  try {
    await server.waitEvent((e) => e.event === "ship_started", "ship_started");
    // The records are acknowledged once fsync'd; ask until all three are.
    let report: Record<string, unknown> = {};
    for (let i = 0; i < 30; i++) {
      report = await statusJson(["--vault", vault]);
      const sources = report.sources as { records: number }[];
      if (sources[0]?.records === 3) break;
    }
    assert.equal(report.pid, server.child.pid);
    assert.equal(report.vault, vault);
    const [conn] = report.connections as Record<string, unknown>[];
    assert.equal(conn?.mode, "ship");
    assert.equal(conn?.source, "app");
    assert.ok((conn?.bytesIn as number) > 0);
    const [source] = report.sources as Record<string, unknown>[];
    assert.equal(source?.name, "app");
    assert.equal(source?.peer, "127.0.0.1");
    assert.equal(source?.records, 3);
    assert.equal(source?.silent, false);
    assert.deepEqual(report.seal, {
      sealed: false,
      epoch: null,
      at: null,
      failed: null,
    });

    const text = await runMoat(["status", "--vault", vault]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /^moat\/\S+ \((deno|bun) [^)]+\), pid \d+, up /);
    assert.match(text.stdout, /^vault .*: unsealed/m);
    assert.match(text.stdout, /^1 connection$/m);
    assert.match(
      text.stdout,
      /^[0-9a-z]{4}-c\d+ +127\.0\.0\.1:\d+ +- +ship +app /m,
    );
    assert.match(text.stdout, /^127\.0\.0\.1 +- +app +3 +1 +.* shipping$/m);
  } finally {
    shipper.child.kill("SIGKILL");
    await shipper.exited;
  }
});

test("moat serve logs source_silent within --silent-after of a SIGKILLed moat ship", async () => {
  using dir = tempDir();
  const vault = path.join(dir.dir, "vault");
  const log = path.join(dir.dir, "app.log");
  fs.writeFileSync(log, "before the intruder\n");
  await using server = await startServer([
    "--vault",
    vault,
    "--silent-after",
    "2",
  ]);
  const shipper = startShipper(log, server.port, dir.dir);
  await server.waitEvent((e) => e.event === "ship_started", "ship_started");
  shipper.child.kill("SIGKILL");
  await shipper.exited;
  const closed = await server.waitEvent(
    (e) => e.event === "ship_finished",
    "ship_finished",
  );
  const silent = await server.waitEvent(
    (e) => e.event === "source_silent",
    "source_silent",
    20_000,
  );
  assert.equal(silent.source, "app");
  assert.equal(silent.peer, "127.0.0.1");
  assert.equal(silent.connected, false);
  assert.ok((silent.silentMs as number) > 2000);
  assert.ok(
    Date.parse(silent.ts as string) >= Date.parse(closed.ts as string) + 2000,
  );
});

test("moat serve refuses a --socket where another server answers, and replaces one left by a killed server", async () => {
  using dir = tempDir();
  const socket = path.join(dir.dir, "s.sock");
  const first = await startServer(["--socket", socket]);
  try {
    await first.waitEvent((e) => e.event === "status_listening", "status");
    const second = await runMoat([
      "serve",
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--socket",
      socket,
    ]);
    assert.equal(second.code, 1, second.stderr);
    assert.match(
      second.stderr,
      /moat: Cannot serve status on ".*s\.sock": another moat serve is using it/,
    );
    assert.equal((await statusJson(["--socket", socket])).pid, first.child.pid);
    first.child.kill("SIGKILL");
  } finally {
    await first.stop();
  }
  // The killed server left its socket file behind.
  assert.ok(fs.lstatSync(socket).isSocket());
  await using third = await startServer(["--socket", socket]);
  await third.waitEvent((e) => e.event === "status_listening", "status");
  assert.equal((await statusJson(["--socket", socket])).pid, third.child.pid);
  await third.stop();
  // A clean stop removes it.
  assert.equal(fs.existsSync(socket), false);
});

test("moat status explains, with exit 6, when no server answers, and refuses contradictory options", async () => {
  using dir = tempDir();
  const missing = path.join(dir.dir, "none.sock");
  const r = await runMoat(["status", "--socket", missing]);
  assert.equal(r.code, 6);
  assert.match(
    r.stderr,
    /^moat: No status socket at ".*none\.sock": is moat serve running\?/,
  );
  const usage = await runMoat(["status", "--socket", missing, "--vault", "v"]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /--socket names the socket itself/);
});
