import { test } from "node:test";
import assert from "node:assert/strict";
import { AuditLog, auditRateLimit } from "../lib/audit.ts";

interface Record_ {
  event: string;
  peer?: string;
  of?: string;
  count?: number;
}

/** An audit log on a hand-driven clock, collecting parsed records. */
function clockedLog(limit: ConstructorParameters<typeof AuditLog>[1] = {}) {
  const records: Record_[] = [];
  const clock = { t: 1_000_000 };
  const log = new AuditLog((l) => records.push(JSON.parse(l)), {
    now: () => clock.t,
    ...limit,
  });
  return { log, records, clock };
}

/** Lines written for `event` plus the counts its summaries report. */
function accounted(records: Record_[], event: string): number {
  let n = 0;
  for (const r of records) {
    if (r.event === event) n++;
    else if (r.event === "suppressed" && r.of === event) n += r.count!;
  }
  return n;
}

test("AuditLog writes every line of a peer up to the burst", () => {
  const { log, records } = clockedLog({ limit: { burst: 5, perSecond: 1 } });
  for (let i = 0; i < 5; i++) {
    assert.equal(log.write("refused", { peer: "127.0.0.2:4000" }), true);
  }
  assert.equal(records.length, 5);
  assert.ok(records.every((r) => r.event === "refused"));
});

test("AuditLog holds back a flooding peer and writes a summary before its next line", () => {
  const { log, records, clock } = clockedLog({
    limit: { burst: 3, perSecond: 1 },
  });
  for (let i = 0; i < 10; i++) log.write("refused", { peer: "127.0.0.2:1" });
  assert.equal(records.length, 3);
  clock.t += 1000; // one token back
  assert.equal(log.write("refused", { peer: "127.0.0.2:9" }), true);
  assert.deepEqual(
    records.slice(3).map((r) => [r.event, r.of, r.peer, r.count]),
    [
      ["suppressed", "refused", "127.0.0.2", 7],
      ["refused", undefined, "127.0.0.2:9", undefined],
    ],
  );
});

test("AuditLog limits each event kind and address separately", () => {
  const { log, records } = clockedLog({ limit: { burst: 2, perSecond: 1 } });
  for (let i = 0; i < 5; i++) {
    log.write("refused", { peer: "127.0.0.2:1" });
    log.write("refused", { peer: "[::1]:1" });
    log.write("chat", { peer: "127.0.0.2:1" });
  }
  assert.equal(records.filter((r) => r.peer === "[::1]:1").length, 2);
  assert.equal(records.filter((r) => r.event === "chat").length, 2);
  assert.equal(records.filter((r) => r.peer === "127.0.0.2:1").length, 4);
});

test("AuditLog never limits events that are not about a peer", () => {
  const { log, records } = clockedLog({ limit: { burst: 1, perSecond: 1 } });
  for (let i = 0; i < 50; i++) log.write("vault_sealed", { epoch: i });
  assert.equal(records.length, 50);
});

test("AuditLog flush summarises quiet keys and forgets full ones", () => {
  const { log, records, clock } = clockedLog({
    limit: { burst: 2, perSecond: 2 },
  });
  for (let i = 0; i < 6; i++) log.write("refused", { peer: "127.0.0.3:1" });
  log.flush(); // no token back yet: nothing to say
  assert.equal(records.length, 2);
  clock.t += 600;
  log.flush();
  assert.deepEqual(records[2], {
    ...records[2],
    event: "suppressed",
    of: "refused",
    count: 4,
  });
  clock.t += 10_000;
  log.flush();
  // The key was forgotten: a new burst is allowed in full.
  log.write("refused", { peer: "127.0.0.3:1" });
  log.write("refused", { peer: "127.0.0.3:1" });
  assert.equal(records.filter((r) => r.event === "refused").length, 4);
});

test("AuditLog caps the lines of one event kind across many addresses", () => {
  const { log, records, clock } = clockedLog({
    limit: { burst: 5, perSecond: 1, globalPerSecond: 50, maxKeys: 100 },
  });
  // 253 addresses, 5 each: every address is within its own burst.
  for (let a = 2; a <= 254; a++) {
    for (let i = 0; i < 5; i++) {
      log.write("refused", { peer: `127.0.0.${a}:1` });
    }
  }
  assert.equal(records.filter((r) => r.event === "refused").length, 50);
  clock.t += 1000;
  log.flush();
  const star = records.filter((r) =>
    r.event === "suppressed" && r.peer === "*"
  );
  assert.equal(star.length, 1);
  assert.equal(accounted(records, "refused"), 253 * 5);
});

test("AuditLog remembers at most maxKeys peers and loses no count on eviction", () => {
  const { log, records, clock } = clockedLog({
    limit: { burst: 1, perSecond: 1, globalPerSecond: 1e9, maxKeys: 8 },
  });
  let written = 0;
  for (let round = 0; round < 3; round++) {
    for (let a = 0; a < 64; a++) {
      for (let i = 0; i < 3; i++) {
        log.write("chat", { peer: `10.0.${round}.${a}:1` });
        written++;
      }
    }
  }
  clock.t += 60_000;
  log.flush();
  assert.equal(accounted(records, "chat"), written);
});

test("AuditLog accounts for every write under a random load", () => {
  const { log, records, clock } = clockedLog({
    limit: { burst: 4, perSecond: 3, globalPerSecond: 40, maxKeys: 16 },
  });
  let seed = 7;
  const rand = (n: number) =>
    (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
  const counts = new Map<string, number>();
  for (let i = 0; i < 20_000; i++) {
    const event = ["refused", "chat", "closed"][rand(3)]!;
    log.write(event, { peer: `127.0.${rand(4)}.${rand(40)}:${rand(60000)}` });
    counts.set(event, (counts.get(event) ?? 0) + 1);
    clock.t += rand(20);
    if (rand(100) === 0) log.flush();
  }
  clock.t += 3_600_000;
  log.flush();
  for (const [event, n] of counts) assert.equal(accounted(records, event), n);
  assert.ok(records.length < 20_000, "the limit held some lines back");
});

test("AuditLog with limit false writes every line", () => {
  const { log, records } = clockedLog({ limit: false });
  for (let i = 0; i < 1000; i++) log.write("refused", { peer: "127.0.0.2:1" });
  assert.equal(records.length, 1000);
});

test("AuditLog flush(true) summarises every key that held lines back", () => {
  const { log, records } = clockedLog({ limit: { burst: 1, perSecond: 1 } });
  for (let i = 0; i < 4; i++) log.write("refused", { peer: "127.0.0.2:1" });
  log.flush();
  assert.equal(records.length, 1, "no token back: a plain flush waits");
  log.flush(true);
  assert.equal(accounted(records, "refused"), 4);
  assert.equal(records.at(-1)!.event, "suppressed");
});

test("auditRateLimit(N) lets a peer write 10 s worth at once, then N a second", () => {
  const { log, records, clock } = clockedLog({ limit: auditRateLimit(2) });
  for (let i = 0; i < 30; i++) log.write("chat", { peer: "10.0.0.5:1" });
  assert.equal(records.filter((r) => r.event === "chat").length, 20);
  clock.t += 1000;
  for (let i = 0; i < 5; i++) log.write("chat", { peer: "10.0.0.5:1" });
  assert.equal(records.filter((r) => r.event === "chat").length, 22);
  log.flush(true);
  assert.equal(accounted(records, "chat"), 35);
});

test("auditRateLimit(N) lets all peers together write 20 N lines of a kind a second", () => {
  const { log, records } = clockedLog({ limit: auditRateLimit(2) });
  for (let p = 0; p < 50; p++) log.write("chat", { peer: `10.0.1.${p}:1` });
  assert.equal(records.filter((r) => r.event === "chat").length, 40);
  log.flush(true);
  assert.equal(accounted(records, "chat"), 50);
});

test("auditRateLimit(0) writes every line", () => {
  const { log, records } = clockedLog({ limit: auditRateLimit(0) });
  for (let i = 0; i < 500; i++) log.write("chat", { peer: "10.0.0.5:1" });
  assert.equal(records.length, 500);
});

test("AuditLog escapes what a terminal acts on, and the line parses to the same value", () => {
  const lines: string[] = [];
  const log = new AuditLog((l) => lines.push(l), { limit: false });
  // DEL, a C1 control, soft hyphen, line separator, RLO, BOM, and plain text.
  const name = "a\x7f\x85\u00ad\u2028\u202e\ufeffé";
  log.write("get_started", { path: name });
  assert.equal(lines.length, 1);
  assert.match(
    lines[0]!,
    /"path":"a\\u007f\\u0085\\u00ad\\u2028\\u202e\\ufeffé"/,
  );
  assert.doesNotMatch(lines[0]!, /[\x7f-\x9f\u00ad\u2028\u202e\ufeff]/);
  assert.equal(JSON.parse(lines[0]!).path, name);
});
