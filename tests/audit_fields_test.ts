/** Tests for the `ip` and `port` fields `AuditLog` adds after a peer. */

import { test } from "node:test";
import assert from "node:assert/strict";
import { AuditLog } from "../lib/audit.ts";

function written(fields: Record<string, unknown>): Record<string, unknown> {
  const lines: string[] = [];
  new AuditLog((l) => lines.push(l), { limit: false }).write("x", fields);
  return JSON.parse(lines[0]!);
}

test("AuditLog adds ip and port after a host:port peer", () => {
  const rows: [string, string | undefined, number | undefined][] = [
    ["10.0.0.5:4000", "10.0.0.5", 4000],
    ["[::1]:5", "::1", 5],
    ["[2001:DB8::1]:65535", "2001:db8::1", 65535],
    ["[::ffff:127.0.0.2]:9", "127.0.0.2", 9],
    ["[::FFFF:10.1.2.3]:1", "10.1.2.3", 1],
    // Not a peer with a port: left alone.
    ["10.0.0.5", undefined, undefined],
    ["::1", undefined, undefined],
    ["*", undefined, undefined],
    ["10.0.0.5:123456", undefined, undefined],
    ["a:b:1", undefined, undefined],
  ];
  for (const [peer, ip, port] of rows) {
    const r = written({ peer, reason: "r" });
    assert.equal(r.peer, peer, peer);
    assert.equal(r.ip, ip, peer);
    assert.equal(r.port, port, peer);
    if (ip !== undefined) {
      assert.deepEqual(Object.keys(r), [
        "ts",
        "event",
        "peer",
        "ip",
        "port",
        "reason",
      ]);
    }
  }
});

test("AuditLog leaves ip and port alone when the caller set either", () => {
  const r = written({ peer: "10.0.0.5:4000", port: "other" });
  assert.equal(r.port, "other");
  assert.equal(r.ip, undefined);
  assert.equal(written({ peer: "10.0.0.5:4000", ip: "x" }).ip, "x");
  assert.equal(written({ reason: "no peer" }).ip, undefined);
});

test("AuditLog puts the address as ip in a per-peer suppressed summary", () => {
  const lines: string[] = [];
  const log = new AuditLog((l) => lines.push(l), {
    limit: { burst: 1, perSecond: 1 },
    now: () => 0,
  });
  for (let i = 0; i < 3; i++) {
    log.write("refused", { peer: `[::ffff:127.0.0.2]:${i + 1}` });
  }
  log.flush(true);
  const summary = lines.map((l) => JSON.parse(l)).find((r) =>
    r.event === "suppressed" && r.peer !== "*"
  );
  assert.ok(summary, lines.join("\n"));
  assert.equal(summary.peer, "::ffff:127.0.0.2");
  assert.equal(summary.ip, "127.0.0.2");
  assert.equal(summary.count, 2);
});
