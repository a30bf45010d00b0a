/**
 * In-process tests of `lib/server/status.ts` and `Server.status()`: the
 * connections, sources and refusals a running server reports, and how
 * `moat status` checks and prints a report.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as path from "node:path";
import { openVault } from "../lib/vault/store.ts";
import { encodeShipBatch, Kind } from "../lib/protocol.ts";
import { ProtocolError } from "../lib/errors.ts";
import {
  decodeStatusReport,
  RecentCount,
  SealTracker,
  type StatusReport,
} from "../lib/server/status.ts";
import { formatAge, formatStatus } from "../cli/status.ts";
import { tempDir } from "./_e2e.ts";
import {
  bytes,
  openFramed,
  readLine,
  startMemoryServer,
  within,
} from "./_server.ts";

test("Server.status reports each connection with its mode, bytes and age, the sources, and refusals by minute and hour", async () => {
  using tmp = tempDir("moat-status-test-");
  const vault = await openVault(path.join(tmp.dir, "vault"), {
    sealIntervalMs: 0,
  });
  try {
    await using t = await startMemoryServer({ vault, silentAfterMs: 60_000 });
    const chatter = await openFramed(t, "chat");
    t.clock.advance(2000);
    const shipper = await openFramed(t, "ship", { hello: { source: "app" } });
    await within(shipper.reader.readFrame(), "ShipReady");
    await shipper.send(
      Kind.ShipBatch,
      encodeShipBatch([{ seq: 1, ts: 5, partial: false, line: bytes("a") }]),
    );
    const ack = await within(shipper.reader.readFrame(), "the ack");
    assert.equal(ack?.type, Kind.ShipAck);
    // Refused before a byte is read: not on the loopback-only allowlist.
    const refused = await t.connect("10.0.0.9");
    assert.match(await readLine(refused), /^ERR ACCESS_DENIED/);
    t.clock.advance(3000);
    t.server.sweep();

    const status = t.server.status();
    assert.equal(status.server, "moat/0.0.0-test");
    assert.equal(status.vault, vault.dir);
    assert.deepEqual(status.listening, [`127.0.0.1:${t.port}`]);
    assert.equal(status.silentAfterMs, 60_000);
    const [chat, ship] = status.connections;
    assert.equal(status.connections.length, 2);
    assert.equal(chat?.name, chatter.welcome.name);
    assert.equal(chat?.mode, "chat");
    assert.equal(chat?.source, null);
    assert.equal(chat?.identity, null);
    assert.equal(chat?.since, new Date(t.clock.now() - 5000).toISOString());
    // The preamble and the Hello in; the preamble and the Welcome out.
    assert.ok(chat!.bytesIn > 8 && chat!.bytesOut > 8);
    assert.equal(ship?.mode, "ship");
    assert.equal(ship?.source, "app");
    assert.equal(ship?.since, new Date(t.clock.now() - 3000).toISOString());
    assert.ok(ship!.bytesOut > chat!.bytesOut, "ShipReady and an ack more");
    assert.deepEqual(status.sources, [{
      peer: "127.0.0.1",
      identity: null,
      name: "app",
      records: 1,
      connections: 1,
      lastSeen: new Date(t.clock.now() - 3000).toISOString(),
      lagSeconds: 0,
      silent: false,
    }]);
    assert.deepEqual(status.refusals, { lastMinute: 1, lastHour: 1 });
    t.clock.advance(61_000);
    assert.equal(t.server.status().sources[0]?.lagSeconds, 61);
    assert.deepEqual(t.server.status().refusals, {
      lastMinute: 0,
      lastHour: 1,
    });
    t.clock.advance(3600_000);
    assert.deepEqual(t.server.status().refusals, {
      lastMinute: 0,
      lastHour: 0,
    });
  } finally {
    await vault.close();
  }
});

test("Server.status without a vault has no sources", async () => {
  await using t = await startMemoryServer();
  const status = t.server.status();
  assert.equal(status.vault, null);
  assert.deepEqual(status.sources, []);
  assert.deepEqual(status.connections, []);
  // Every field survives JSON: the report crosses the status socket as JSON.
  assert.deepEqual(JSON.parse(JSON.stringify(status)), status);
});

test("RecentCount counts the last minute and hour in fixed memory, whatever the clock does", () => {
  const count = new RecentCount();
  for (let i = 0; i < 10_000; i++) count.add(1_000_000);
  count.add(1_030_000);
  assert.equal(count.count(1_030_999, 60), 10_001);
  assert.equal(count.count(1_089_999, 60), 1);
  assert.equal(count.count(1_090_000, 60), 0);
  assert.equal(count.count(1_090_000, 3600), 10_001);
  // A clock that went back counts into the newest second.
  count.add(1_000);
  assert.equal(count.count(1_090_000, 60), 1);
  assert.equal(count.count(1_090_000, 3600), 10_002);
  // An hour and more later, everything is gone.
  assert.equal(count.count(1_090_000 + 3600_000, 3600), 0);
  count.add(5_000_000);
  assert.equal(count.count(5_000_000, 1), 1);
});

test("SealTracker keeps the last seal and the last failure until a seal succeeds", () => {
  const seals = new SealTracker();
  assert.deepEqual(seals.status(true), {
    sealed: true,
    epoch: null,
    at: null,
    failed: null,
  });
  seals.note({ type: "sealed", epoch: 7, time: 1000, sources: 2, records: 9 });
  seals.note({ type: "seal_failed", epoch: 8, message: "disk full" });
  assert.deepEqual(seals.status(true), {
    sealed: true,
    epoch: 7,
    at: "1970-01-01T00:00:01.000Z",
    failed: "disk full",
  });
  seals.note({ type: "sealed", epoch: 8, time: 2000, sources: 2, records: 9 });
  assert.equal(seals.status(true).failed, null);
  assert.equal(seals.status(true).epoch, 8);
});

/** A report as a server on a sealed vault sends it. */
function sampleReport(): StatusReport {
  return {
    server: "moat/1.0.0",
    startedAt: "2026-01-01T00:00:00.000Z",
    now: "2026-01-01T02:05:00.000Z",
    listening: ["127.0.0.1:4320", "[::1]:4320"],
    idleTimeoutMs: 300_000,
    silentAfterMs: 300_000,
    connections: [{
      name: "c3",
      peer: "10.0.0.7:51234",
      identity: "token:web",
      mode: "ship",
      source: "auth",
      bytesIn: 1536,
      bytesOut: 40,
      since: "2026-01-01T02:04:18.000Z",
    }],
    vault: "/srv/vault",
    sources: [{
      peer: "10.0.0.7",
      identity: "token:web",
      name: "auth",
      records: 41_230,
      connections: 1,
      lastSeen: "2026-01-01T02:04:58.000Z",
      lagSeconds: 14,
      silent: false,
    }, {
      peer: "10.0.0.8",
      identity: null,
      name: "evil\u001b[2Jname",
      records: 3,
      connections: 0,
      lastSeen: "2026-01-01T01:00:00.000Z",
      lagSeconds: 3900,
      silent: true,
    }],
    refusals: { lastMinute: 3, lastHour: 41 },
    pid: 4242,
    runtime: "deno 2.9.6",
    seal: {
      sealed: true,
      epoch: 183,
      at: "2026-01-01T02:04:48.000Z",
      failed: null,
    },
  };
}

test("formatStatus prints a summary and two tables, escaping what the server sent", () => {
  const lines = formatStatus(decodeStatusReport(sampleReport()));
  assert.deepEqual(lines, [
    "moat/1.0.0 (deno 2.9.6), pid 4242, up 2h 5m, listening on 127.0.0.1:4320, [::1]:4320",
    "vault /srv/vault: sealed, epoch 183, last seal 12 s ago",
    "refusals: 3 in the last minute, 41 in the last hour",
    "",
    "1 connection",
    "NAME  PEER            IDENTITY   MODE  SOURCE  IN       OUT   SINCE",
    "c3    10.0.0.7:51234  token:web  ship  auth    1.5 KiB  40 B  42 s ago",
    "",
    "2 sources (silent after 5m 0s without a record or heartbeat)",
    "PEER      IDENTITY   SOURCE         RECORDS  CONNS  LAST SEEN  LAG    STATE",
    "10.0.0.7  token:web  auth           41,230   1      2 s ago    14 s   shipping",
    "10.0.0.8  -          evil\\e[2Jname  3        0      1h 5m ago  1h 5m  SILENT",
  ]);
});

test("formatStatus says so when there is no vault, no connection or no seal yet", () => {
  const report = sampleReport();
  const bare = { ...report, vault: null, seal: null, connections: [] };
  assert.deepEqual(formatStatus(decodeStatusReport(bare)).slice(1), [
    "no vault",
    "refusals: 3 in the last minute, 41 in the last hour",
    "",
    "no connections",
  ]);
  const fresh = {
    ...report,
    seal: { sealed: true, epoch: null, at: null, failed: "disk full" },
  };
  assert.equal(
    formatStatus(decodeStatusReport(fresh))[1],
    "vault /srv/vault: sealed, no seal written yet; LAST SEAL FAILED: disk full",
  );
  const unsealed = {
    ...report,
    seal: { sealed: false, epoch: null, at: null, failed: null },
  };
  assert.equal(
    formatStatus(decodeStatusReport(unsealed))[1],
    "vault /srv/vault: unsealed (moat vault init sets up seals)",
  );
});

test("decodeStatusReport names the first field that is missing or of the wrong type", () => {
  const cases: [unknown, string][] = [
    [null, "status must be an object"],
    [{ ...sampleReport(), pid: "1" }, "status.pid must be a non-negative"],
    [
      { ...sampleReport(), connections: [{ name: "c1" }] },
      "status.connections[0].peer must be a string",
    ],
    [
      {
        ...sampleReport(),
        sources: [{ ...sampleReport().sources[0], silent: 1 }],
      },
      "status.sources[0].silent must be true or false",
    ],
    [{ ...sampleReport(), seal: undefined }, "status.seal must be an object"],
    [{ ...sampleReport(), refusals: {} }, "status.refusals.lastMinute"],
    [{ ...sampleReport(), listening: [1] }, "status.listening[0] must be"],
  ];
  for (const [value, message] of cases) {
    assert.throws(
      () => decodeStatusReport(value),
      (error: unknown) => {
        assert.ok(error instanceof ProtocolError);
        assert.ok(error.message.includes(message), error.message);
        return true;
      },
    );
  }
  assert.deepEqual(decodeStatusReport(sampleReport()), sampleReport());
});

test("formatAge uses the two largest units", () => {
  const rows: [number, string][] = [
    [-5, "0 s"],
    [999, "0 s"],
    [59_000, "59 s"],
    [60_000, "1m 0s"],
    [3_599_000, "59m 59s"],
    [3_600_000, "1h 0m"],
    [90_000_000, "1d 1h"],
  ];
  for (const [ms, text] of rows) assert.equal(formatAge(ms), text, `${ms}`);
});
