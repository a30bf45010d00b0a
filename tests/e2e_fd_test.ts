/**
 * End-to-end tests of `moat serve` at its file descriptor limit and of the
 * refusal before TLS (issue 13): short versions of the soak's rows
 * (`soak/main.ts`), against a real server process (the script on the
 * runtime running the tests, or MOAT_BIN) whose limit is lowered with
 * prlimit once it listens. The server is exhausted by a refused flood, by
 * allowed idle connections, and by a shipper with many sources; each time
 * it must answer or close every newcomer, report each episode once, and
 * serve a get afterwards without a restart. Loopback only; every wait is
 * bounded, and the asserts wait on audit events.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { runMoat, type RunningServer, startServer, tempDir } from "./_e2e.ts";
import {
  acceptEpisodes,
  answerConnections,
  captureClientHello,
  checkAuditLines,
  holdConnections,
  limitDescriptors,
  openDescriptors,
  refusedAddress,
  shipSources,
  waitUntil,
} from "../soak/hostile.ts";
import { cpuSeconds } from "../bench/_util.ts";

/** The server's descriptor limit: a few dozen of its own, the rest for peers. */
const LIMIT = 128;
/** Bounds every wait: a hang fails the test instead of stalling it. */
const WAIT_MS = 30_000;

/** A root holding `a.txt`. */
function rootWithFile(dir: string): string {
  const root = path.join(dir, "root");
  fs.mkdirSync(root);
  fs.writeFileSync(path.join(root, "a.txt"), "after the storm\n");
  return root;
}

/** `moat get FILE:a.txt` into `dir`; resolves with the exit and what was saved. */
async function getFile(
  server: RunningServer,
  dir: string,
  args: string[] = [],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stderr: string; saved?: string }> {
  const out = path.join(dir, `got-${Math.random().toString(36).slice(2)}`);
  const r = await runMoat([
    "get",
    "FILE:a.txt",
    "-o",
    out,
    "--server",
    `127.0.0.1:${server.port}`,
    ...args,
  ], { env, timeoutMs: WAIT_MS });
  return {
    code: r.code,
    stderr: r.stderr,
    ...(fs.existsSync(out) && { saved: fs.readFileSync(out, "utf8") }),
  };
}

/** The server's stderr: its audit log, one JSON object per line. */
function auditText(server: RunningServer): string {
  return server.audit.lines.join("\n");
}

test("moat serve at its descriptor limit answers a refused flood with ACCESS_DENIED or BUSY, reports the episode once, and serves a get after", async () => {
  using t = tempDir("moat-fd-");
  await using server = await startServer([
    "--allow",
    "127.0.0.1",
    "--root",
    rootWithFile(t.dir),
    "--max-conns",
    "4000",
    "--max-conns-per-peer",
    "4000",
  ]);
  limitDescriptors(server.child.pid!, LIMIT);
  // All at once, and none hanging up after the refusal: each refusal holds
  // a descriptor until its drain deadline (1 s), so 400 arriving together
  // are far more than 128 descriptors can take (and fewer than the listen
  // queue holds, so that the kernel drops none).
  const flood = await answerConnections({
    port: server.port,
    count: 400,
    from: refusedAddress,
    holdMs: 1500,
    timeoutMs: WAIT_MS,
  });
  assert.equal(flood.hung, 0, "every refused peer was answered or closed");
  assert.deepEqual(flood.otherSamples, []);
  assert.equal(flood.tlsRecords, 0);
  assert.equal(flood.connectErrors, 0);
  assert.equal(flood.denied + flood.busy + flood.silentClose, 400);
  assert.ok(flood.denied > 0, JSON.stringify(flood));
  assert.ok(flood.busy > 0, "descriptors ran out: newcomers were told BUSY");

  await server.waitEvent((e) => e.event === "accept_exhausted");
  await server.waitEvent((e) => e.event === "accept_recovered");
  await waitUntil(
    () => {
      const ep = acceptEpisodes(auditText(server));
      return !ep.open;
    },
    WAIT_MS,
    "the last episode to end",
  );
  const episodes = acceptEpisodes(auditText(server));
  assert.ok(episodes.alternate, "one accept_exhausted per episode");
  assert.equal(episodes.exhausted, episodes.recovered);
  assert.ok(episodes.busy >= flood.busy, JSON.stringify(episodes));

  const got = await getFile(server, t.dir);
  assert.equal(got.code, 0, got.stderr);
  assert.equal(got.saved, "after the storm\n");
  const strangers = server.events().filter((e) =>
    e.event === "accepted" && !String(e.peer).startsWith("127.0.0.1:")
  );
  assert.deepEqual(strangers, []);
  // Deno itself, loading the system's CA certificates while descriptors are
  // out, may print one warning to stderr, where the audit log goes without
  // --log: that line is the runtime's, not moat's; every other must be JSON.
  const bad = checkAuditLines(auditText(server)).bad.filter((l) =>
    !/^Warning: Ignoring extra certs from .* Too many open files/.test(l)
  );
  assert.deepEqual(bad, []);
});

test("moat serve at its descriptor limit holds allowed idle connections, tells newcomers BUSY, idles, and recovers when they leave", async () => {
  using t = tempDir("moat-fd-");
  await using server = await startServer([
    "--allow",
    "127.0.0.1",
    "--root",
    rootWithFile(t.dir),
    "--max-conns",
    "4000",
    "--max-conns-per-peer",
    "4000",
    // The held connections leave by themselves at the idle timeout, which
    // also makes the length of the episode the server's to decide.
    "--idle-timeout",
    "3",
  ]);
  const pid = server.child.pid!;
  limitDescriptors(pid, LIMIT);
  const held = holdConnections({ port: server.port, count: 250 });
  try {
    await server.waitEvent((e) => e.event === "accept_exhausted");
    const cpu0 = cpuSeconds(pid);
    // Newcomers while the server is out of descriptors: the BUSY line or a
    // close, never a hang.
    const probes = await answerConnections({
      port: server.port,
      count: 20,
      timeoutMs: WAIT_MS,
    });
    assert.equal(probes.hung, 0);
    assert.deepEqual(probes.otherSamples, []);
    assert.equal(probes.busy + probes.silentClose, 20);

    const recovered = await server.waitEvent(
      (e) => e.event === "accept_recovered",
      "accept_recovered",
      WAIT_MS,
    );
    const cpu = cpuSeconds(pid) - cpu0;
    const exhausted = server.events().find((e) =>
      e.event === "accept_exhausted"
    )!;
    const lasted =
      (Date.parse(String(recovered.ts)) - Date.parse(String(exhausted.ts))) /
      1000;
    // A listener spinning on EMFILE burns a whole CPU for the episode.
    assert.ok(
      cpu < 0.5 * lasted + 0.5,
      `server used ${cpu} s of CPU in a ${lasted} s episode`,
    );

    await waitUntil(() => held.open === 0, WAIT_MS, "the idle timeout");
    assert.equal(held.stats.hung, 0);
    assert.deepEqual(held.stats.otherSamples, []);
    assert.ok(held.stats.busy > 0, "held past the limit: some told BUSY");
    const accepted = server.events().filter((e) =>
      e.event === "accepted"
    ).length;
    assert.ok(accepted < 250, `${accepted} accepted under a limit of 128`);
    assert.equal(
      // Accepted ones hear who joins the chat (presence lines), then are
      // closed at the idle timeout; the others are told BUSY.
      held.stats.busy + held.stats.silentClose + held.stats.presence,
      250,
      JSON.stringify(held.stats),
    );

    const got = await getFile(server, t.dir);
    assert.equal(got.code, 0, got.stderr);
    assert.equal(got.saved, "after the storm\n");
    const episodes = acceptEpisodes(auditText(server));
    assert.ok(episodes.alternate, "one accept_exhausted per episode");
    assert.ok(
      episodes.busy >= held.stats.busy + probes.busy,
      JSON.stringify(episodes),
    );
  } finally {
    await held.release();
  }
});

test("moat serve --vault at its descriptor limit refuses a shipper's sources past --max-sources-per-peer and serves a get after", async () => {
  using t = tempDir("moat-fd-");
  await using server = await startServer([
    "--allow",
    "127.0.0.1",
    "--root",
    rootWithFile(t.dir),
    "--vault",
    path.join(t.dir, "vault"),
    "--max-conns",
    "4000",
    "--max-conns-per-peer",
    "4000",
  ]);
  limitDescriptors(server.child.pid!, LIMIT);
  const shipped = await shipSources({
    port: server.port,
    count: 100,
    prefix: "stream",
    answerMs: WAIT_MS,
  });
  assert.equal(shipped.unanswered, 0);
  assert.equal(shipped.stored, 64, JSON.stringify(shipped));
  assert.deepEqual(shipped.refused, { ERR_TOO_MANY_SOURCES: 36 });
  await waitUntil(
    () =>
      server.events().filter((e) =>
        e.event === "refused" && e.code === "ERR_TOO_MANY_SOURCES"
      ).length === 36,
    WAIT_MS,
    "36 refused sources in the audit log",
  );
  const got = await getFile(server, t.dir);
  assert.equal(got.code, 0, got.stderr);
  assert.equal(got.saved, "after the storm\n");
});

test("moat serve --vault keeps a shipper's 200 sources within a limit of 192 descriptors (the vault's open-segment bound)", async () => {
  using t = tempDir("moat-fd-");
  await using server = await startServer([
    "--allow",
    "127.0.0.1",
    "--root",
    rootWithFile(t.dir),
    "--vault",
    path.join(t.dir, "vault"),
    "--max-sources-per-peer",
    "1000",
    "--max-conns",
    "4000",
    "--max-conns-per-peer",
    "4000",
  ]);
  const pid = server.child.pid!;
  limitDescriptors(pid, 192);
  // More sources than the limit has descriptors: without a bound on open
  // segment files, the vault alone would run out.
  const shipped = await shipSources({
    port: server.port,
    count: 200,
    prefix: "stream",
    answerMs: WAIT_MS,
  });
  assert.deepEqual(shipped, {
    asked: 200,
    stored: 200,
    refused: {},
    unanswered: 0,
  });
  assert.ok(openDescriptors(pid) < 192);
  const got = await getFile(server, t.dir);
  assert.equal(got.code, 0, got.stderr);
  assert.equal(
    server.events().filter((e) => e.event === "accept_exhausted").length,
    0,
  );
});

test("moat serve on a TLS port answers refused ClientHellos without a TLS byte, closes silent peers at --handshake-timeout, and serves a pinned get meanwhile", async () => {
  using t = tempDir("moat-fd-");
  const made = await runMoat([
    "cert",
    "--out",
    path.join(t.dir, "cert"),
    "--name",
    "127.0.0.1",
  ]);
  assert.equal(made.code, 0, made.stderr);
  const pin = made.stdout.trim();
  await using server = await startServer([
    "--allow",
    "127.0.0.1",
    "--root",
    rootWithFile(t.dir),
    "--tls-cert",
    path.join(t.dir, "cert", "moat-cert.pem"),
    "--tls-key",
    path.join(t.dir, "cert", "moat-key.pem"),
    "--handshake-timeout",
    "2",
  ]);
  const tlsGet = () =>
    getFile(server, t.dir, ["--tls", "--pin", pin], {
      MOAT_CONFIG_DIR: path.join(t.dir, "config"),
    });
  const hello = await captureClientHello();
  assert.equal(hello[0], 0x16, "a TLS handshake record");

  // Refused addresses, each sending a real ClientHello, while a get runs.
  const [refused, during] = await Promise.all([
    answerConnections({
      port: server.port,
      count: 200,
      from: refusedAddress,
      payload: hello,
      timeoutMs: WAIT_MS,
    }),
    tlsGet(),
  ]);
  assert.equal(refused.tlsRecords, 0, "no TLS record to a refused peer");
  assert.equal(refused.hung, 0);
  assert.deepEqual(refused.otherSamples, []);
  assert.equal(refused.denied + refused.silentClose, 200);
  assert.ok(refused.denied > 0, JSON.stringify(refused));
  assert.equal(during.code, 0, during.stderr);
  assert.equal(during.saved, "after the storm\n");
  await waitUntil(
    () => (checkAuditLines(auditText(server)).events.refused ?? 0) >= 200,
    WAIT_MS,
    "200 refusals accounted for in the audit log",
  );

  // Allowed but silent: each holds a slot until the handshake deadline.
  const [silent, meanwhile] = await Promise.all([
    answerConnections({ port: server.port, count: 20, timeoutMs: WAIT_MS }),
    tlsGet(),
  ]);
  assert.equal(silent.silentClose, 20, JSON.stringify(silent));
  assert.equal(meanwhile.code, 0, meanwhile.stderr);
  await waitUntil(
    () =>
      server.events().filter((e) =>
        e.event === "refused" && e.reason === "TLS handshake timeout"
      ).length === 20,
    WAIT_MS,
    "20 TLS handshake timeouts",
  );
  const strangers = server.events().filter((e) =>
    e.event === "accepted" && !String(e.peer).startsWith("127.0.0.1:")
  );
  assert.deepEqual(strangers, []);
});
